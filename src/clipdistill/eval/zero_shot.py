"""Zero-shot classification, as open_clip builds the classifier and CLIP_benchmark scores it."""
from __future__ import annotations

from typing import Callable, Mapping, Sequence, Union

import torch
import torch.nn.functional as F

from clipdistill.errors import UserError
from clipdistill.eval.encode import encode_labeled_images, encode_texts

Template = Union[str, Callable[[str], str]]


def _prompt(template: Template, classname: str) -> str:
    if callable(template):
        return template(classname)
    # Accepts both template styles: open_clip's "a photo of a {}." and CLIP_benchmark's "{c}".
    return template.format(classname, c=classname)


def _prompts_for(classname: str, templates) -> list[str]:
    # A mapping gives each class its own prompts (CuPL style, as CLIP_benchmark allows).
    if isinstance(templates, Mapping):
        return list(templates[classname])
    return [_prompt(template, classname) for template in templates]


def zero_shot_classifier(encoder, classnames: Sequence[str], templates, batch_size: int = 256) -> torch.Tensor:
    """``(D, C)`` class weights: per class, the normalized mean of its normalized prompt embeddings.

    Args:
        classnames: the C class names, in label order.
        templates: strings with ``{}`` or ``{c}``, callables ``classname -> prompt``, or a mapping
            ``classname -> list of prompts``.
        batch_size: prompts encoded per forward pass.
    """
    if len(classnames) == 0 or len(templates) == 0:
        raise ValueError("zero-shot classification needs at least one class name and one template")
    prompts, owner = [], []
    for class_index, classname in enumerate(classnames):
        class_prompts = _prompts_for(classname, templates)
        prompts.extend(class_prompts)
        owner.extend([class_index] * len(class_prompts))
    prompt_features = encode_texts(encoder, prompts, batch_size=batch_size)
    # Summing instead of averaging changes only the length, which the normalization removes.
    sums = torch.zeros(len(classnames), prompt_features.shape[1]).index_add_(
        0, torch.tensor(owner, dtype=torch.long), prompt_features)
    return F.normalize(sums, dim=-1).T


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """CLIP_benchmark's metrics: ``acc1``, ``acc5``, ``mean_per_class_recall`` (fractions).

    ``acc5`` uses the top ``min(5, C)`` (so it is 1.0 with fewer than 5 classes, where
    CLIP_benchmark reports NaN). ``mean_per_class_recall`` is balanced accuracy: the recall of each
    class that occurs in ``labels``, averaged (scikit-learn's ``balanced_accuracy_score``).
    """
    num_samples, num_classes = logits.shape
    labels = labels.to(device=logits.device, dtype=torch.long)
    if labels.shape != (num_samples,):
        raise ValueError(f"labels must be ({num_samples},), got {tuple(labels.shape)}")
    if num_samples == 0:
        raise ValueError("no samples to score")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes})")
    top = logits.topk(min(5, num_classes), dim=1).indices
    hits = top == labels.unsqueeze(1)
    predicted = top[:, 0]
    per_class_total = torch.bincount(labels, minlength=num_classes).double()
    per_class_correct = torch.bincount(labels[predicted == labels], minlength=num_classes).double()
    present = per_class_total > 0
    # Hit counts divided in Python: exact fractions, no float32 rounding (0.04, not 0.03999999).
    return {
        "acc1": hits[:, 0].sum().item() / num_samples,
        "acc5": hits.any(dim=1).sum().item() / num_samples,
        "mean_per_class_recall": (per_class_correct[present] / per_class_total[present]).mean().item(),
    }


def evaluate_zero_shot(encoder, dataset, batch_size: int = 256, workers: int = 0,
                       progress: bool = False) -> dict[str, float]:
    """Zero-shot accuracy on ``dataset[i] -> (PIL image, int label)``.

    The dataset names its classes and prompts: ``dataset.classnames`` and ``dataset.templates``.
    """
    for attribute in ("classnames", "templates"):
        if not hasattr(dataset, attribute):
            raise UserError(f"zero-shot dataset {type(dataset).__name__} has no '{attribute}' attribute")
    if len(dataset) == 0:
        raise UserError("the zero-shot dataset is empty")
    classifier = zero_shot_classifier(encoder, dataset.classnames, dataset.templates, batch_size=batch_size)
    image_features, labels = encode_labeled_images(encoder, dataset, batch_size=batch_size,
                                                   workers=workers, progress=progress)
    return classification_metrics(image_features @ classifier, torch.as_tensor(labels, dtype=torch.long))
