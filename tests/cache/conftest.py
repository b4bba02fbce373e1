"""A tiny checkpoint-backed teacher (so hybrid mode can reload the very same weights) and cache helpers."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # cache_helpers, for this conftest and the test modules
from cache_helpers import NUM_SAMPLES, make_cache  # noqa: E402
from clipdistill.data import SyntheticPairs  # noqa: E402
from clipdistill.models import load_teacher  # noqa: E402


@pytest.fixture(scope="session")
def teacher_file(tmp_path_factory):
    torch.manual_seed(7)
    teacher = load_teacher("openclip", model="tiny-teacher")
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save(teacher.encoder.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def teacher(teacher_file):
    return load_teacher("checkpoint", model="tiny-teacher", path=str(teacher_file))


@pytest.fixture(scope="session")
def dataset():
    return SyntheticPairs(NUM_SAMPLES, seed=3)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory, dataset, teacher):
    directory = tmp_path_factory.mktemp("cache")
    make_cache(directory, dataset, teacher)
    return directory
