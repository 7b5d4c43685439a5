"""`Stage`: one training stage of a multi-stage run (see `kdkeras.stages`).

Kept apart from `kdkeras.stages` (which imports the Distiller) so that methods
can build the stages they need before the main one (`Method.init_stages`)
without a circular import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from kdkeras.methods.base import Method


@dataclass
class Stage:
    """One training stage.

    Args:
        name: folder name of the stage's checkpoint (unique within a run).
        methods: the methods whose terms are trained in this stage.
        epochs: epochs of this stage.
        student_loss_weight: weight of the student's own CE in this stage
            (0 for a pure initialisation stage).
        train_student: False to train only the methods' parts (e.g. FT's
            paraphraser, which learns from the teacher alone).
        frozen: methods whose parts are used but not trained in this stage.
        setup: called before the stage starts (or is restored), e.g. to switch
            FT between its paraphraser and transfer stages.
    """

    name: str
    methods: Sequence["Method"]
    epochs: int
    student_loss_weight: float = 1.0
    train_student: bool = True
    frozen: Sequence["Method"] = field(default_factory=tuple)
    setup: Callable[[], None] | None = None

    def __post_init__(self):
        if self.epochs < 0:
            raise ValueError(f"Stage {self.name!r}: epochs must be >= 0, got {self.epochs}.")
