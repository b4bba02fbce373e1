"""``clipdistill inherit --teacher SPEC --student ARCH --out DIR``: a student initialised from its teacher.

Writes open_clip's ``local-dir:`` layout (the one ``clipdistill export`` writes):

- ``open_clip_config.json``: ``{"model_cfg": <student architecture>, "preprocess_cfg": <teacher's
  normalisation at the student's input size>}``; the inherited weights expect the teacher's mean/std;
- ``open_clip_model.safetensors``: the student's full state_dict, so it also loads alone as
  ``student.model=ARCH student.pretrained=DIR/open_clip_model.safetensors``;
- ``inherit.json``: the teacher, the tokenizer, and every kept teacher index (blocks, residual channels,
  heads, MLP channels, embedding dims).

The student's tokenizer is its architecture's (open_clip's BPE for every ViT config and preset); the
teacher's token embeddings are only meaningful with the teacher's tokenizer, so a different one is refused.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import open_clip
import torch

from clipdistill.atomic import write_atomic, write_text_atomic
from clipdistill.errors import UserError
from clipdistill.inherit.core import Calibration, inherit_weights
from clipdistill.inherit.layers import CHOICES
from clipdistill.inherit.towers import check_config
from clipdistill.models.presets import resolve_architecture
from clipdistill.models.student import build_student, image_spec_of

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
RECORD_FILE = "inherit.json"
LOCAL_DIR = "local-dir:"

log = logging.getLogger(__name__)


def load_open_clip_teacher(spec: str, pretrained: str = ""):
    """(model, tokenizer, preprocess_cfg) of an open_clip teacher: ``local-dir:DIR`` or an architecture
    (open_clip name or clipdistill preset) with an optional pretrained tag or weights file."""
    if spec.startswith(LOCAL_DIR):
        path = Path(spec[len(LOCAL_DIR):])
        if not (path / CONFIG_FILE).is_file():
            raise UserError(f"teacher {spec}: no {CONFIG_FILE} in {path}")
        if not any(next(path.glob(pattern), None) for pattern in ("*.safetensors", "*.bin", "*.pth")):
            # open_clip would only warn and build random weights: a teacher of noise.
            raise UserError(f"teacher {spec}: no weights file (.safetensors, .bin, .pth) in {path}")
        if pretrained:
            raise UserError("--pretrained does not apply to a local-dir: teacher (its weights are in the folder)")
        check_config(open_clip.get_model_config(spec), f"teacher {spec}")
        model = open_clip.create_model(spec)
        return model.eval(), open_clip.get_tokenizer(spec), open_clip.get_model_preprocess_cfg(model)
    check_config(open_clip.get_model_config(resolve_architecture(spec)), f"teacher {spec}")
    built = build_student(spec, pretrained=pretrained)  # presets, open_clip names, tags and files alike
    return built.model.eval(), built.tokenizer, open_clip.get_model_preprocess_cfg(built.model)


def calibration_batch(source: str, samples: int, seed: int, teacher_spec, tokenizer) -> Calibration:
    """The first ``samples`` usable pairs of ``synthetic`` data or of a CSV (``filepath``/``title`` columns,
    tab-separated), preprocessed the teacher's way; unreadable images are skipped, as the loaders do."""
    from clipdistill.data.bad_samples import BadSample
    from clipdistill.data.csv_pairs import CsvPairs
    from clipdistill.data.synthetic import SyntheticPairs
    from clipdistill.data.transforms import eval_transform

    dataset = SyntheticPairs(samples, seed=seed) if source == "synthetic" else CsvPairs(source)
    transform, images, captions, skipped = eval_transform(teacher_spec), [], [], 0
    for index in range(len(dataset)):
        if len(images) == samples:
            break
        try:
            item = dataset[index]
        except BadSample:
            skipped += 1
            continue
        images.append(transform(item["image"]))
        captions.append(item["caption"])
    if not images:
        raise UserError(f"calibration data {source}: no readable sample ({skipped} skipped)")
    if skipped:
        log.warning("calibration: skipped %d unreadable sample(s) of %s", skipped, source)
    return Calibration(images=torch.stack(images), tokens=tokenizer(captions))


def inherit_to_dir(teacher: str, student: str, out: str | Path, *, pretrained: str = "", layers: str = "uniform",
                   image_layers: str | None = None, text_layers: str | None = None, calibration: str = "",
                   calibration_samples: int = 64, seed: int = 0) -> dict:
    """Build the student from the teacher and write it to ``out``; returns the ``inherit.json`` record."""
    check_config(open_clip.get_model_config(resolve_architecture(student)), f"student {student}")
    t_model, t_tokenizer, t_preprocess = load_open_clip_teacher(teacher, pretrained)
    built = build_student(student)
    if _uses_quick_gelu(t_model) != _uses_quick_gelu(built.model):
        log.warning("teacher and student use different GELU variants (quick_gelu): the inherited MLPs will "
                    "compute slightly different functions until trained")
    if not _same_vocabulary(t_tokenizer, built.tokenizer):
        raise UserError(f"the student {student} tokenizes with {type(built.tokenizer).__name__}, the teacher "
                        f"with {type(t_tokenizer).__name__}: inherited token embeddings need the teacher's tokenizer")
    batch = None
    if calibration:
        batch = calibration_batch(calibration, calibration_samples, seed, image_spec_of(t_model), t_tokenizer)
    with torch.no_grad():
        state_dict, selection = inherit_weights(
            t_model, built.model, image_layers=image_layers or layers, text_layers=text_layers or layers,
            calibration=batch, labels=(f"teacher {teacher}", f"student {student}"))
    # The inherited weights expect the teacher's normalisation, at the student's input size.
    preprocess = {**t_preprocess, "size": image_spec_of(built.model).size}
    importance = f"activations ({calibration}, {len(batch.images)} samples)" if batch else "magnitude"
    record = {"teacher": teacher, "pretrained": pretrained, "student": student, "importance": importance,
              "tokenizer": _tokenizer_record(t_tokenizer, built.model_cfg), "selection": selection.as_dict()}
    _write(Path(out), built.model_cfg, preprocess, state_dict, record)
    return record


def _tokenizer_record(tokenizer, model_cfg: dict) -> dict:
    # open_clip picks the tokenizer from the written model_cfg; this records which one the weights were cut for.
    return {"class": type(tokenizer).__name__, "context_length": model_cfg["text_cfg"].get("context_length", 77),
            "vocab_size": model_cfg["text_cfg"].get("vocab_size", 49408)}


def _uses_quick_gelu(model) -> bool:
    # OpenAI-trained weights use QuickGELU; a name without -quickgelu builds nn.GELU: a silent mismatch.
    return isinstance(model.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)


def _same_vocabulary(teacher_tokenizer, student_tokenizer) -> bool:
    # Context length may differ (position embeddings are cut or interpolated); the token ids may not.
    if type(teacher_tokenizer) is not type(student_tokenizer):
        return False
    if isinstance(teacher_tokenizer, open_clip.tokenizer.SimpleTokenizer):
        return teacher_tokenizer.encoder == student_tokenizer.encoder
    return True  # same non-BPE tokenizer class: its vocabulary size is checked with the token embedding


def _write(out: Path, model_cfg: dict, preprocess: dict, state_dict: dict, record: dict) -> None:
    from safetensors.torch import save

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"could not create {out}: {err.strerror or err}") from None
    config = {"model_cfg": model_cfg, "preprocess_cfg": _jsonable(preprocess)}
    write_text_atomic(out / CONFIG_FILE, json.dumps(config, indent=2))
    tensors = {key: value.detach().cpu().contiguous().clone() for key, value in state_dict.items()}
    blob = save(tensors, metadata={"format": "pt", "source": f"clipdistill inherit from {record['teacher']}"})
    write_atomic(out / WEIGHTS_FILE, lambda file: file.write(blob))
    write_text_atomic(out / RECORD_FILE, json.dumps(record, indent=1))


def _jsonable(preprocess: dict) -> dict:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in preprocess.items()}


def _summary(record: dict, out: str) -> str:
    lines = [f"inherited {record['student']} from {record['teacher']} (importance: {record['importance']})"]
    for tower in ("image", "text"):
        chosen = record["selection"][tower]
        lines.append(f"  {tower}: teacher blocks {chosen['layers']}, width {len(chosen['width'])}, "
                     f"heads {len(chosen['heads'][0]) if chosen['heads'] else 0}, "
                     f"mlp {len(chosen['mlp'][0]) if chosen['mlp'] else 0}")
    lines.append(f"  embed dims: {len(record['selection']['embed_dims'])}")
    lines.append(f"wrote {out}: open_clip.create_model('local-dir:{out}'), or student.model={record['student']} "
                 f"student.pretrained={Path(out) / WEIGHTS_FILE}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipdistill inherit",
                                     description="Initialise a student from a teacher's weights (TinyCLIP-style "
                                                 "manual inheritance) and write an open_clip local-dir model.")
    parser.add_argument("--teacher", required=True,
                        help="open_clip architecture or clipdistill preset (with --pretrained), or local-dir:DIR")
    parser.add_argument("--pretrained", default="", help="the teacher's open_clip pretrained tag or weights file")
    parser.add_argument("--student", required=True, help="student architecture: open_clip name or clipdistill preset")
    parser.add_argument("--out", required=True, help="directory to write (open_clip local-dir layout)")
    layer_help = f"{' | '.join(CHOICES)} | i,j,k (teacher block indices)"
    parser.add_argument("--layers", default="uniform", help=f"teacher blocks for both towers: {layer_help}")
    parser.add_argument("--image-layers", default=None, help="override --layers for the image tower")
    parser.add_argument("--text-layers", default=None, help="override --layers for the text tower")
    parser.add_argument("--calibration", default="",
                        help="rank heads/channels/dims by activations on 'synthetic' data or a CSV of "
                             "filepath<TAB>title rows (default: by weight magnitude)")
    parser.add_argument("--calibration-samples", type=int, default=64, help="calibration batch size")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic calibration data")
    args = parser.parse_args(argv)
    if args.calibration_samples <= 0:
        raise UserError(f"--calibration-samples must be positive, got {args.calibration_samples}")
    record = inherit_to_dir(args.teacher, args.student, args.out, pretrained=args.pretrained, layers=args.layers,
                            image_layers=args.image_layers, text_layers=args.text_layers,
                            calibration=args.calibration, calibration_samples=args.calibration_samples,
                            seed=args.seed)
    print(_summary(record, args.out))
    return 0
