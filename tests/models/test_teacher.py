"""The teacher: loads from every checkpoint format, gives the original's embeddings, stays frozen."""
import pytest
import torch

from clipdistill.embeddings import Embeddings
from clipdistill.errors import UserError
from clipdistill.losses.fd import FDLoss
from clipdistill.losses.icl import ICLLoss
from clipdistill.models import build_student, file_sha256, load_teacher

CAPTIONS = ["a large red circle left of a small blue square", "a green triangle", "two blue squares"]


@pytest.fixture(scope="module")
def original():
    torch.manual_seed(0)
    model = build_student("tiny-teacher").model.eval()
    with torch.no_grad():
        model.logit_scale.fill_(2.0)  # not the init value, so loading it is checked too
    return model


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 32, 32, generator=generator)
    tokens = build_student("tiny-teacher").tokenizer(CAPTIONS)
    return images, tokens


def _expected(model, images, tokens):
    with torch.no_grad():
        return model.encode_image(images, normalize=True), model.encode_text(tokens, normalize=True)


@pytest.mark.parametrize("layout", ["raw", "state_dict", "module"])
def test_checkpoint_teacher_reproduces_the_original(tmp_path, original, batch, layout):
    state = original.state_dict()
    saved = {"raw": state, "state_dict": {"state_dict": state, "epoch": 32},
             "module": {"state_dict": {f"module.{k}": v for k, v in state.items()}}}[layout]
    path = tmp_path / "teacher.pt"
    torch.save(saved, path)
    teacher = load_teacher("checkpoint", model="tiny-teacher", path=str(path))
    out = teacher(*batch)
    image, text = _expected(original, *batch)
    assert isinstance(out, Embeddings) and out.normalized
    torch.testing.assert_close(out.image, image, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.text, text, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.logit_scale, torch.tensor(2.0).exp())
    assert out.image.dtype == out.text.dtype == torch.float32
    assert teacher.embed_dim == 96 and teacher.image_spec.size == 32
    assert teacher.identity == {"source": "checkpoint", "model": "tiny-teacher", "pretrained": "",
                                "path": str(path.resolve()), "weights_sha256": file_sha256(path)}


def test_openclip_source_accepts_a_local_file_as_pretrained(tmp_path, original, batch):
    path = tmp_path / "teacher.safetensors"
    from safetensors.torch import save_file
    save_file(original.state_dict(), str(path))
    teacher = load_teacher("openclip", model="tiny-teacher", pretrained=str(path))
    image, text = _expected(original, *batch)
    torch.testing.assert_close(teacher.encode_image(batch[0]), image, rtol=0, atol=1e-6)
    torch.testing.assert_close(teacher.encode_text(batch[1]), text, rtol=0, atol=1e-6)
    assert teacher.identity["pretrained"] == str(path) and teacher.identity["weights_sha256"] == file_sha256(path)


def test_teacher_is_frozen_by_construction(tmp_path, original, batch):
    torch.save(original.state_dict(), tmp_path / "t.pt")
    teacher = load_teacher("checkpoint", model="tiny-teacher", path=str(tmp_path / "t.pt"))
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not any(module.training for module in teacher.modules())
    images = batch[0].clone().requires_grad_(True)
    out = teacher(images, batch[1])
    assert out.image.grad_fn is None and out.text.grad_fn is None and not out.logit_scale.requires_grad


@pytest.mark.parametrize("loss", [FDLoss(student_dim=64, teacher_dim=96), ICLLoss(student_dim=64, teacher_dim=96)],
                         ids=["fd", "icl"])
def test_teacher_targets_enter_a_student_loss_that_backpropagates(batch, loss):
    teacher = load_teacher("openclip", model="tiny-teacher")  # random weights: enough for shapes/grad
    student = build_student("tiny")
    targets = teacher(*batch)
    raw = Embeddings(image=student.model.encode_image(batch[0]), text=student.model.encode_text(batch[1]),
                     logit_scale=student.model.logit_scale.exp())
    # ICL's ŝ tᵀ saves the teacher tensors for backward: inference tensors would fail right here.
    loss(raw, targets).backward()
    assert student.model.visual.conv1.weight.grad.abs().sum() > 0


def test_teacher_outputs_are_not_inference_tensors(batch):
    out = load_teacher("openclip", model="tiny-teacher")(*batch)
    assert not any(t.is_inference() for t in (out.image, out.text, out.logit_scale))
    weight = torch.ones(96, requires_grad=True)
    (out.image * weight).sum().backward()  # mul saves out.image for the weight's gradient
    torch.testing.assert_close(weight.grad, out.image.sum(0))


def test_auto_precision_is_fp32_on_cpu(tmp_path, original, batch):
    torch.save(original.state_dict(), tmp_path / "t.pt")
    teacher = load_teacher("checkpoint", model="tiny-teacher", path=str(tmp_path / "t.pt"), precision="auto")
    image, _ = _expected(original, *batch)
    assert teacher.compute_precision == "fp32"
    torch.testing.assert_close(teacher.encode_image(batch[0]), image, rtol=0, atol=1e-6)


def test_bf16_on_cpu_runs_under_autocast_and_gives_float32_close_to_fp32(tmp_path, original, batch):
    torch.save(original.state_dict(), tmp_path / "t.pt")
    teacher = load_teacher("checkpoint", model="tiny-teacher", path=str(tmp_path / "t.pt"), precision="bf16")
    out = teacher(*batch)
    image, text = _expected(original, *batch)
    assert teacher.compute_precision == "bf16" and out.image.dtype == out.text.dtype == torch.float32
    assert (out.image - image).abs().max() > 1e-4  # bf16 rounding shows: autocast really ran
    torch.testing.assert_close(out.image, image, rtol=0, atol=5e-2)
    torch.testing.assert_close(out.text, text, rtol=0, atol=5e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_on_cuda_gives_float32_outputs_close_to_fp32(tmp_path, original, batch):
    torch.save(original.state_dict(), tmp_path / "t.pt")
    teacher = load_teacher("checkpoint", model="tiny-teacher", path=str(tmp_path / "t.pt"), device="cuda",
                           precision="bf16")
    out = teacher(*batch)
    image, text = _expected(original, *batch)
    assert out.image.dtype == torch.float32 and out.image.device.type == "cuda"
    torch.testing.assert_close(out.image.cpu(), image, rtol=0, atol=5e-2)
    torch.testing.assert_close(out.text.cpu(), text, rtol=0, atol=5e-2)


def test_user_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="unknown teacher source 'hugface'"):
        load_teacher("hugface", model="tiny-teacher")
    with pytest.raises(UserError, match="teacher checkpoint file not found: .*missing.pt"):
        load_teacher("checkpoint", model="tiny-teacher", path=str(tmp_path / "missing.pt"))
    with pytest.raises(UserError, match="needs teacher.path"):
        load_teacher("checkpoint", model="tiny-teacher")
    with pytest.raises(UserError, match="needs teacher.model"):
        load_teacher("openclip")
    with pytest.raises(UserError, match="unknown teacher precision 'fp8'"):
        load_teacher("openclip", model="tiny-teacher", precision="fp8")
    torch.save(build_student("tiny").model.state_dict(), tmp_path / "student.pt")
    with pytest.raises(UserError, match="do not fit the model"):
        load_teacher("checkpoint", model="tiny-teacher", path=str(tmp_path / "student.pt"))
