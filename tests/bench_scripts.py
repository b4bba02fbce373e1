"""Loading a bench/ script as a module in the tests (bench/ is not a package)."""
import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench_script(name):
    """A bench script as a module. Its siblings (throughput, ablation...) import from bench/ while it loads;
    bench/ leaves sys.path afterwards, or bench/curate.py would shadow the tests' own curate helpers."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        while str(BENCH) in sys.path:
            sys.path.remove(str(BENCH))
    return module
