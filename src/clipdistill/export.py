"""``clipdistill export RUN_CHECKPOINT DIR``: a trained student as a plain open_clip model.

Writes open_clip's own local/hub layout, which ``open_clip.create_model_and_transforms('local-dir:DIR')``
(and ``hf-hub:`` once uploaded) loads with no clipdistill installed:

- ``open_clip_config.json``: ``{"model_cfg": <the resolved architecture>, "preprocess_cfg": {...}}``;
- ``open_clip_model.safetensors``: the student's weights only. Distillation-only parts (projection
  heads, fusion heads, learnable KD scales, cluster centroids) live in the run's objective, never in
  the student, and are left behind. The student is open_clip's own module, loaded strictly, so its
  ``state_dict`` holds exactly the keys open_clip expects.

Only safetensors is written (loading it never runs code). `--format hf` writes a transformers
``CLIPModel`` directory instead (see :mod:`clipdistill.export_hf`).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from clipdistill.atomic import ensure_writable_dir, write_atomic, write_text_atomic
from clipdistill.errors import UserError
from clipdistill.models.load_any import load_run_checkpoint
from clipdistill.models.student import trained_student

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"


def _preprocess_cfg(image_spec) -> dict:
    return {"size": image_spec.size, "mean": list(image_spec.mean), "std": list(image_spec.std),
            "interpolation": image_spec.interpolation, "resize_mode": image_spec.resize_mode}


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage and views: give it one contiguous copy per tensor.
    return {key: value.detach().cpu().contiguous().clone() for key, value in model.state_dict().items()}


def load_student(checkpoint: str | Path):
    """The run checkpoint's student (open_clip model, architecture, image spec), weights loaded strictly."""
    return trained_student(load_run_checkpoint(checkpoint), checkpoint)


def export_run(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Export a run checkpoint's student to ``out_dir`` (created); returns the directory."""
    from safetensors.torch import save

    student = load_student(checkpoint)
    weights = _weights(student.model)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"could not create {out_dir}: {err.strerror or err}") from None
    config = {"model_cfg": student.model_cfg, "preprocess_cfg": _preprocess_cfg(student.image_spec)}
    # Both atomic: a full disk or a kill leaves the previous export's files or the new ones, never half a file.
    write_text_atomic(out_dir / CONFIG_FILE, json.dumps(config, indent=2))
    blob = save(weights, metadata={"format": "pt", "source": str(checkpoint)})  # in memory: a student is small
    write_atomic(out_dir / WEIGHTS_FILE, lambda file: file.write(blob))
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipdistill export",
                                     description="Export a run's student as an open_clip model directory.")
    parser.add_argument("checkpoint", help="run checkpoint (runs/NAME/checkpoints/step_*.pt)")
    parser.add_argument("out_dir", help="directory to write open_clip_config.json + open_clip_model.safetensors")
    parser.add_argument("--format", default="openclip", choices=["openclip", "hf"],
                        help="openclip (default), or hf: a transformers CLIPModel directory (ViT students with "
                             "open_clip's default text tower; needs clipdistill[hf])")
    args = parser.parse_args(argv)
    ensure_writable_dir(args.out_dir, what="export directory")  # before loading the checkpoint
    if args.format == "hf":
        from clipdistill.export_hf import write_hf

        out = write_hf(load_student(args.checkpoint), args.out_dir)
        print(f"exported to {out}: load with transformers.CLIPModel.from_pretrained('{out}') "
              f"(and CLIPProcessor), or clipdistill eval --model hf:{out}")
        return 0
    out = export_run(args.checkpoint, args.out_dir)
    print(f"exported to {out}: load with open_clip.create_model_and_transforms('local-dir:{out}')")
    return 0
