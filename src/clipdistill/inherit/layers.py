"""Which teacher blocks a student's blocks start from.

The student architecture fixes how many blocks it has; a *layer choice* says which teacher blocks fill
them, in order:

- ``uniform`` (default): evenly spaced, first and last block included (``all`` when depths match);
- ``all``: every teacher block (the depths must match);
- ``every_other``: blocks 0, 2, 4, ... (the student must have exactly that many: ceil(L / 2));
- ``first_k``: the first blocks, as many as the student has;
- ``i,j,k``: explicit teacher block indices, strictly increasing, one per student block.
"""
from __future__ import annotations

from clipdistill.errors import UserError

CHOICES = ("uniform", "all", "every_other", "first_k")


def choose_layers(choice: str, teacher_layers: int, student_layers: int, tower: str) -> list[int]:
    """Teacher block index for each student block; one-line UserError when the choice cannot fit."""
    choice = choice.strip()
    if choice == "uniform":
        return _uniform(teacher_layers, student_layers)
    if choice == "all":
        picked = list(range(teacher_layers))
    elif choice == "every_other":
        picked = list(range(0, teacher_layers, 2))
    elif choice == "first_k":
        picked = list(range(student_layers))
    else:
        picked = _explicit(choice, teacher_layers, tower)
    if len(picked) != student_layers:
        raise UserError(f"{tower} layers '{choice}' keeps {len(picked)} of the teacher's {teacher_layers} blocks "
                        f"({_show(picked)}) but the student has {student_layers}; use an explicit list of "
                        f"{student_layers} indices or 'uniform'")
    return picked


def _uniform(teacher_layers: int, student_layers: int) -> list[int]:
    if student_layers == 1:
        return [teacher_layers - 1]  # a one-block student starts from the block closest to the output
    step = (teacher_layers - 1) / (student_layers - 1)
    return [round(i * step) for i in range(student_layers)]


def _explicit(choice: str, teacher_layers: int, tower: str) -> list[int]:
    try:
        picked = [int(part) for part in choice.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"{tower} layers '{choice}': expected {', '.join(CHOICES)} or comma-separated block "
                        f"indices like 0,2,5") from None
    if any(not 0 <= index < teacher_layers for index in picked):
        raise UserError(f"{tower} layers '{choice}': indices must lie in 0..{teacher_layers - 1} "
                        f"(the teacher has {teacher_layers} blocks)")
    if any(later <= earlier for earlier, later in zip(picked, picked[1:])):
        raise UserError(f"{tower} layers '{choice}': indices must be strictly increasing")
    return picked


def _show(picked: list[int]) -> str:
    return ",".join(map(str, picked)) or "none"
