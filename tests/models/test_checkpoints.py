"""Weights files: every common wrapper loads; code-carrying pickles and bad files are refused."""
import hashlib
import os

import pytest
import torch
from safetensors.torch import save_file

from clipdistill.errors import UserError
from clipdistill.models.checkpoints import file_sha256, load_state_dict_file, load_weights

STATE = {"visual.weight": torch.arange(6.0).reshape(2, 3), "logit_scale": torch.tensor(2.5)}


def _assert_same_tensors(loaded, expected=STATE):
    assert sorted(loaded) == sorted(expected)
    for key in expected:
        torch.testing.assert_close(loaded[key], expected[key], rtol=0, atol=0)


def _prefixed(state, keys=None):
    return {("module." + k if keys is None or k in keys else k): v for k, v in state.items()}


@pytest.mark.parametrize("wrap", [
    lambda s: s,                                                  # raw state_dict
    lambda s: {"state_dict": s, "epoch": 3},                      # open_clip / CLIP-KD teachers
    lambda s: {"model": s, "optimizer": {"lr": 0.1}},             # other trainers
    lambda s: {"state_dict": _prefixed(s)},                       # CLIP-KD's released files: DDP prefix
    lambda s: _prefixed(s, keys={"logit_scale"}),                 # prefix on some keys only
    lambda s: {"state_dict": {"module.module." + k: v for k, v in s.items()}},  # wrapped twice
], ids=["raw", "state_dict", "model", "state_dict+module", "partial-module", "double-module"])
def test_torch_files_in_every_wrapper_load(tmp_path, wrap):
    path = tmp_path / "weights.pt"
    torch.save(wrap(dict(STATE)), path)
    _assert_same_tensors(load_state_dict_file(path))


def test_safetensors_load(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file(_prefixed(STATE), str(path))
    _assert_same_tensors(load_state_dict_file(path))


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling would create the marker file


def test_pickle_that_would_run_code_is_refused(tmp_path):
    path, marker = tmp_path / "evil.pt", tmp_path / "was_executed"
    torch.save({"state_dict": dict(STATE), "payload": _RunsCode(str(marker))}, path)
    with pytest.raises(UserError, match=f"refusing to load checkpoint {path}: it holds pickled code"):
        load_state_dict_file(path)
    assert not marker.exists()


def test_missing_corrupt_and_non_state_dict_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="checkpoint file not found: .*absent.pt"):
        load_state_dict_file(tmp_path / "absent.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="cannot load checkpoint"):
        load_state_dict_file(tmp_path / "garbage.pt")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(UserError, match="cannot read safetensors"):
        load_state_dict_file(tmp_path / "garbage.safetensors")
    torch.save({"epoch": 3, "visual.weight": torch.zeros(1)}, tmp_path / "mixed.pt")
    with pytest.raises(UserError, match=r"not a state_dict: entries \['epoch'\]"):
        load_state_dict_file(tmp_path / "mixed.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(UserError, match="holds no state_dict"):
        load_state_dict_file(tmp_path / "tensor.pt")


def test_file_sha256_streams_to_the_same_digest(tmp_path):
    data = os.urandom(10_000)
    path = tmp_path / "blob"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert file_sha256(path) == expected
    assert file_sha256(path, chunk_bytes=333) == expected  # many chunks, a ragged last one


def test_load_weights_names_missing_unexpected_and_misshapen_keys():
    model = torch.nn.Linear(3, 2)
    with pytest.raises(UserError, match=r"1 missing \['bias'\]; 1 unexpected \['extra'\]"):
        load_weights(model, {"weight": torch.zeros(2, 3), "extra": torch.zeros(1)}, "f.pt")
    with pytest.raises(UserError, match=r"1 wrong shape \['weight'\]"):
        load_weights(model, {"weight": torch.zeros(3, 3), "bias": torch.zeros(2)}, "f.pt")
    load_weights(model, {"weight": torch.ones(2, 3), "bias": torch.ones(2)}, "f.pt")
    assert model.weight.sum().item() == 6.0
