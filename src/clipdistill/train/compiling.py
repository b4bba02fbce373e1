"""``train.compile``: torch.compile for the student (``student``) or the student and the objective (``all``).

The *functions* are compiled, not the modules: ``Distiller.embed`` (both towers of the student) and the
objective's ``forward``. Module names and state_dict keys stay what they are, so checkpoints, resume,
export and DDP (which wraps the distiller as before) do not know that anything was compiled. The
objective's cross-rank gather is a graph break that dynamo handles (no ``fullgraph``).

Where torch cannot compile (no C compiler for inductor, an unsupported op), the first call fails: the
run says so in one warning line and goes on eagerly. The first call's time, compilation included, is
logged, so the cost of compiling is visible next to the steps it speeds up.
"""
from __future__ import annotations

import logging
import time

import torch

log = logging.getLogger("clipdistill.train")

MODES = ("off", "student", "all")
BACKEND = "inductor"  # tests use "aot_eager": the same graph capture, without code generation


class CompiledOrEager:
    """``fn`` compiled; if its first call fails to compile, ``fn`` itself from then on (one warning)."""

    def __init__(self, fn, name: str):
        self.eager, self.name = fn, name
        self.compiled = torch.compile(fn, backend=BACKEND)
        self.calls = 0
        self.failed = False

    def __call__(self, *args, **kwargs):
        if self.failed:
            return self.eager(*args, **kwargs)
        if self.calls:
            self.calls += 1
            return self.compiled(*args, **kwargs)
        started = time.perf_counter()
        try:
            out = self.compiled(*args, **kwargs)
            if _lost_gradient(args, out):
                raise RuntimeError("the compiled result has no gradient although its inputs do")
        except Exception as err:  # noqa: BLE001 - any compiler failure: fall back, the run must go on
            self.failed = True
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            log.warning("train.compile: torch could not compile %s (%s); running it eagerly", self.name, reason)
            return self.eager(*args, **kwargs)
        self.calls = 1
        log.info("train.compile: %s compiled in %.1f s (first call)", self.name, time.perf_counter() - started)
        return out


def _lost_gradient(args, out) -> bool:
    """A compiled function whose tensor inputs need a gradient but whose result has none: seen with inductor on
    a CLIP-only objective (torch 2.14, CPU), where backward then fails. Checked on the first call only."""
    if not torch.is_grad_enabled():
        return False
    inputs = [t for a in args for t in _tensors(a)]
    outputs = list(_tensors(out))
    return any(t.requires_grad for t in inputs) and bool(outputs) and not any(t.requires_grad for t in outputs)


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif hasattr(value, "image") and hasattr(value, "text"):  # Embeddings
        yield value.image
        yield value.text


def compile_distiller(distiller, mode: str) -> None:
    """Compile in place what ``mode`` names (see the module docstring)."""
    if mode not in MODES:
        from clipdistill.errors import UserError

        raise UserError(f"unknown train.compile '{mode}' (choose from {', '.join(MODES)})")
    if mode in ("student", "all"):
        distiller.embed = CompiledOrEager(distiller.embed, "the student")
    if mode == "all":
        distiller.objective.forward = CompiledOrEager(distiller.objective.forward, "the objective")
