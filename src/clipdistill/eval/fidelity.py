"""KD fidelity: how closely a student reproduces its teacher, beyond its own benchmark scores.

Reported metrics (all on held-out data, keys as written in results and ``metrics.jsonl``):

- ``fidelity_agreement_top1``: fraction of zero-shot images where the student's top-1 class equals
  the teacher's (each with its own text classifier from the same class names and templates).
- ``fidelity_cosine_image`` / ``fidelity_cosine_text``: mean cosine between student and teacher
  embeddings of the same image / caption. Student embeddings go through the run's projection head
  into the teacher's space when the run has one (``ŝ = norm(P(s))``, the FD/ICL head); with equal
  dims and no head, directly. With different dims and no head there is no shared space, so the
  *similarity structures* are compared instead: for each sample, the Pearson correlation (cosine of
  the mean-centered rows) between its similarities to the other samples under the student and under
  the teacher (``fidelity_structure_image`` / ``_text``). Centering matters: raw cosine-similarity
  rows are mostly positive and would look alike for any two models.
- ``fidelity_similarity_kl``: ½[KL(σ(τ_t T_v T_tᵀ) ‖ σ(τ_s S_v S_tᵀ)) + same for text rows] over
  held-out image–caption pairs (the first caption of each image), each model with its own logit
  scale: CRD's quantity, measured on data the student never trained on.
- ``fidelity_retained_<metric>``: student score / teacher score for each task metric both have
  (``retained_acc1 = 0.9``: the student keeps 90 % of the teacher's top-1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipdistill.eval.encode import encode_labeled_images, encode_texts
from clipdistill.eval.zero_shot import zero_shot_classifier
from clipdistill.losses.heads import TeacherSpaceProjection

PREFIX = "fidelity_"
# Task metrics whose teacher ratio is reported (higher is better for all of them).
RETAINED = ("acc1", "acc5", "mean_per_class_recall", "retrieval_mean_recall", "image_retrieval_recall@1",
            "text_retrieval_recall@1", "lp_acc1")


# ---------------------------------------------------------------------------------------- metrics

def prediction_agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    """Fraction of rows whose argmax is the same class."""
    same = student_logits.argmax(dim=1) == teacher_logits.argmax(dim=1)
    return same.sum().item() / len(same)


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over rows of cos(a_i, b_i); rows must have the same dimension."""
    return F.cosine_similarity(a.float(), b.float(), dim=1).mean().item()


def structure_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over samples of the Pearson correlation of their similarity rows (self excluded).

    Works for any two dimensions: only ``a aᵀ`` and ``b bᵀ`` (N x N) are compared.
    """
    n = len(a)
    if n < 3:
        raise ValueError("structure correlation needs at least 3 samples")
    off_diagonal = ~torch.eye(n, dtype=torch.bool)
    rows_a = (F.normalize(a.float(), dim=1) @ F.normalize(a.float(), dim=1).T)[off_diagonal].view(n, n - 1)
    rows_b = (F.normalize(b.float(), dim=1) @ F.normalize(b.float(), dim=1).T)[off_diagonal].view(n, n - 1)
    return mean_cosine(rows_a - rows_a.mean(dim=1, keepdim=True), rows_b - rows_b.mean(dim=1, keepdim=True))


def similarity_kl(student_image, student_text, student_scale: float, teacher_image, teacher_text,
                  teacher_scale: float) -> float:
    """½[KL(teacher ‖ student) over image rows + over text rows] of the paired similarity matrices.

    Features are normalized here; scales are multiplicative (``exp`` of the log-scale).
    """
    def log_probs(image, text, scale):
        logits = scale * F.normalize(image.float(), dim=1) @ F.normalize(text.float(), dim=1).T
        return logits.log_softmax(dim=1), logits.T.log_softmax(dim=1)

    student = log_probs(student_image, student_text, student_scale)
    teacher = log_probs(teacher_image, teacher_text, teacher_scale)
    kl = [F.kl_div(s, t, log_target=True, reduction="batchmean") for s, t in zip(student, teacher)]
    return (0.5 * (kl[0] + kl[1])).item()


def retained(student_metrics: dict, teacher_metrics: dict) -> dict:
    """``fidelity_retained_<m>`` = student / teacher for shared metrics with a positive teacher score."""
    return {f"{PREFIX}retained_{name}": student_metrics[name] / teacher_metrics[name]
            for name in RETAINED if name in student_metrics and teacher_metrics.get(name, 0) > 0}


# -------------------------------------------------------------------------- projected student

class ProjectedEncoder:
    """A student seen through its projection head: ``encode_* = P(raw student embedding)``.

    Args:
        model: the student's open_clip module (raw embeddings via ``normalize=False``).
        projection: the run's :class:`TeacherSpaceProjection` (FD's or ICL's).
        tokenizer, image_spec: the student's.
    """

    def __init__(self, model: nn.Module, projection: TeacherSpaceProjection, tokenizer, image_spec):
        self.model, self.projection = model, projection
        self.tokenizer, self.image_spec = tokenizer, image_spec

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.projection.image(self.model.encode_image(images, normalize=False))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.projection.text(self.model.encode_text(tokens, normalize=False))


def projection_from_state(objective_state: dict) -> TeacherSpaceProjection | None:
    """The FD head of a checkpoint's objective state (else ICL's, else any term's); None if none."""
    for term in ("fd", "icl", *sorted({key.split(".")[1] for key in objective_state if key.startswith("terms.")})):
        prefix = f"terms.{term}.project."
        if f"{prefix}image.weight" in objective_state:
            weight = objective_state[f"{prefix}image.weight"]
            head = TeacherSpaceProjection(weight.shape[1], weight.shape[0], always=True)
            head.load_state_dict({key[len(prefix):]: value for key, value in objective_state.items()
                                  if key.startswith(prefix)})
            return head
    return None


def projection_of(objective: nn.Module) -> TeacherSpaceProjection | None:
    """The live FD head of a training objective (else ICL's, else any term's with a head)."""
    terms = getattr(objective, "terms", {})
    for name in ("fd", "icl", *terms):
        project = getattr(terms[name], "project", None) if name in terms else None
        if isinstance(project, TeacherSpaceProjection) and project.image is not None:
            return project
    return None


# --------------------------------------------------------------------------------- evaluation

class _FirstCaption(torch.utils.data.Dataset):
    """A retrieval set as image–caption pairs: each image with its first caption (read lazily)."""

    def __init__(self, retrieval):
        self.retrieval = retrieval

    def __len__(self) -> int:
        return len(self.retrieval)

    def __getitem__(self, index: int):
        image, captions = self.retrieval[index]
        return image, captions if isinstance(captions, str) else captions[0]


def _logit_scale(encoder) -> float:
    model = getattr(encoder, "model", encoder)
    scale = getattr(encoder, "logit_scale", None)
    if callable(scale):  # a Teacher: the multiplicative scale
        return float(scale())
    return float(model.logit_scale.detach().exp())


def _embedding_metrics(student_features, projected, teacher_features, modality: str) -> dict:
    if projected is not None:
        return {f"{PREFIX}cosine_{modality}": mean_cosine(projected, teacher_features)}
    if student_features.shape[1] == teacher_features.shape[1]:
        return {f"{PREFIX}cosine_{modality}": mean_cosine(student_features, teacher_features)}
    return {f"{PREFIX}structure_{modality}": structure_correlation(student_features, teacher_features)}


def pair_fidelity(student, teacher, retrieval, projected=None, batch_size: int = 256) -> dict:
    """Cosine (or structure) and similarity-KL metrics on the first caption of each held-out image."""
    pairs = _FirstCaption(retrieval)
    encoded = {}
    for name, encoder in (("student", student), ("teacher", teacher), ("projected", projected)):
        if encoder is not None:
            image_features, captions = encode_labeled_images(encoder, pairs, batch_size=batch_size)
            encoded[name] = (image_features, encode_texts(encoder, captions, batch_size=batch_size))
    (s_img, s_txt), (t_img, t_txt) = encoded["student"], encoded["teacher"]
    p_img, p_txt = encoded.get("projected", (None, None))
    metrics = {**_embedding_metrics(s_img, p_img, t_img, "image"), **_embedding_metrics(s_txt, p_txt, t_txt, "text")}
    metrics[f"{PREFIX}similarity_kl"] = similarity_kl(s_img, s_txt, _logit_scale(student),
                                                      t_img, t_txt, _logit_scale(teacher))
    return metrics


def zero_shot_agreement(student, teacher, dataset, batch_size: int = 256) -> dict:
    """Top-1 agreement of the two models' zero-shot predictions on ``dataset``."""
    logits = []
    for encoder in (student, teacher):
        classifier = zero_shot_classifier(encoder, dataset.classnames, dataset.templates, batch_size=batch_size)
        features, _ = encode_labeled_images(encoder, dataset, batch_size=batch_size)
        logits.append(features @ classifier)
    return {f"{PREFIX}agreement_top1": prediction_agreement(*logits)}


def evaluate_fidelity(student, teacher, *, retrieval=None, zero_shot=None, projected=None,
                      batch_size: int = 256) -> dict:
    """All fidelity metrics the given held-out sets allow (either may be None)."""
    metrics = {}
    if retrieval is not None:
        metrics.update(pair_fidelity(student, teacher, retrieval, projected, batch_size=batch_size))
    if zero_shot is not None:
        metrics.update(zero_shot_agreement(student, teacher, zero_shot, batch_size=batch_size))
    return metrics
