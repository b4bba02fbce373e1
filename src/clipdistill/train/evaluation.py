"""Held-out evaluation inside training, through the same code as ``clipdistill eval``.

Tasks: retrieval, zero-shot, linear probe on any dataset spec of :mod:`clipdistill.eval.datasets`
(``synthetic`` by default), plus teacher-student fidelity when a live teacher is given. The teacher's
own scores (for ``fidelity_retained_*``) are computed once: it is frozen.
"""
from __future__ import annotations

from clipdistill.errors import UserError
from clipdistill.eval import evaluate
from clipdistill.eval.datasets import classification_dataset, eval_specs_for, retrieval_dataset
from clipdistill.eval.fidelity import ProjectedEncoder, evaluate_fidelity, projection_of, retained
from clipdistill.eval.linear_probe import evaluate_linear_probe


class Evaluator:
    """Builds the eval sets once (so a bad spec fails at start-up) and evaluates any encoder on them.

    Args:
        retrieval, zero_shot: dataset specs; ``""`` disables; ``auto`` follows ``data_kind`` (the synthetic
            sets for synthetic training data, none for your own: :func:`eval_specs_for`).
        data_kind: the training data's kind (``synthetic``, ``csv``, ``webdataset``).
        linear_probe, linear_probe_train: test and train specs of the linear probe; ``""`` disables.
        classnames, templates: zero-shot class names / prompts (``imagenet``, ``cifar10``, a file, ``""``).
        num_images, seed: size and seed of synthetic sets.
        teacher: a frozen teacher for fidelity metrics, or None.
        objective: the run's objective; its live projection head (FD's, else ICL's) maps the
            student into the teacher's space for the cosine metrics. None: no head.
    """

    def __init__(self, *, retrieval: str, zero_shot: str, num_images: int, seed: int, batch_size: int,
                 linear_probe: str = "", linear_probe_train: str = "", classnames: str = "", templates: str = "",
                 teacher=None, objective=None, data_kind: str = "synthetic"):
        retrieval, zero_shot = eval_specs_for(data_kind, retrieval, zero_shot)
        self.specs = {"retrieval": retrieval, "zero_shot": zero_shot}  # resolved: what a banner should print
        if bool(linear_probe) != bool(linear_probe_train):
            raise UserError("eval.linear_probe and eval.linear_probe_train must be set together")
        sizes = {"num_images": num_images, "seed": seed}
        self.retrieval = retrieval_dataset(retrieval, **sizes) if retrieval else None
        self.zero_shot = classification_dataset(zero_shot, classnames, templates, **sizes) if zero_shot else None
        self.probe_sets = (classification_dataset(linear_probe_train, classnames, templates, **sizes),
                           classification_dataset(linear_probe, classnames, templates, **sizes)) \
            if linear_probe else None
        self.batch_size = batch_size
        self.teacher = teacher
        self.projection = projection_of(objective) if objective is not None else None
        self._teacher_scores = None

    def _task_metrics(self, encoder) -> dict:
        metrics = evaluate(encoder, retrieval=self.retrieval, zero_shot=self.zero_shot, batch_size=self.batch_size)
        if self.probe_sets is not None:
            probe = evaluate_linear_probe(encoder, *self.probe_sets, batch_size=self.batch_size)
            metrics.update({k: v for k, v in probe.items() if k.startswith("lp_")})
        return metrics

    def _fidelity(self, student, metrics: dict) -> dict:
        if self._teacher_scores is None:
            self._teacher_scores = self._task_metrics(self.teacher)
        projected = ProjectedEncoder(student.model, self.projection, student.tokenizer, student.image_spec) \
            if self.projection is not None else None
        return {**evaluate_fidelity(student, self.teacher, retrieval=self.retrieval, zero_shot=self.zero_shot,
                                    projected=projected, batch_size=self.batch_size),
                **retained(metrics, self._teacher_scores)}

    def __call__(self, encoder) -> dict:
        metrics = self._task_metrics(encoder)
        if self.teacher is not None and (self.retrieval is not None or self.zero_shot is not None):
            metrics.update(self._fidelity(encoder, metrics))
        return metrics
