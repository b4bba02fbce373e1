"""A student trained with a sigmoid loss keeps its logit bias through evaluation loading and export."""
import open_clip
import torch

from clipdistill import config as config_lib
from clipdistill.export import export_run
from clipdistill.models.load_any import load_model
from clipdistill.train import checkpoint
from clipdistill.train.loop import run


def test_siglip_student_exports_with_its_bias(tmp_path):
    run(config_lib.load(None, ["student.model=tiny", "data.num_samples=32", "data.workers=0", "train.batch_size=16",
                               "train.steps=2", "train.progress=false", "eval.retrieval=", "eval.zero_shot=",
                               "losses.clip=null", "losses.siglip.weight=1.0"]), tmp_path / "run")
    ckpt = checkpoint.list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    trained_bias = checkpoint.load(ckpt)["student"]["logit_bias"]
    assert trained_bias.ndim == 0 and trained_bias.item() != -10.0  # learned, not the init
    out = export_run(ckpt, tmp_path / "export")
    exported = open_clip.create_model(f"local-dir:{out}")
    assert torch.equal(exported.logit_bias.detach(), trained_bias)
    loaded = load_model(str(ckpt), device="cpu")
    assert torch.equal(loaded.encoder.model.logit_bias.detach(), trained_bias)
