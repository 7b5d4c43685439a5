"""The weak-teacher rule: when a teacher barely better than the student alone is
given most of the loss, say so. Plain numbers, no TensorFlow (reports read it).
"""

from __future__ import annotations


#: the teacher's top-1 margin over the student trained alone below which it is "barely better"
WEAK_TEACHER_MARGIN = 0.01
#: the student's CE weight below which the distillation terms carry most of the loss (KD's 0.1;
#: the methods' own weights are on their terms' scales, AT's 1000, so only the CE weight says this)
MOSTLY_DISTILLED_CE_WEIGHT = 0.5


def teacher_margin(teacher_top1: float | None, baseline_top1: float | None) -> float | None:
    """How much better the teacher is than the student trained alone (top-1 fraction), or None."""
    if teacher_top1 is None or baseline_top1 is None:
        return None
    return float(teacher_top1) - float(baseline_top1)


def weak_teacher_warning(teacher_top1: float | None, baseline_top1: float | None,
                         student_loss_weight: float, split: str | None = None) -> str | None:
    """A warning when a teacher barely better than the student alone (margin below
    WEAK_TEACHER_MARGIN) is given most of the loss (CE weight below
    MOSTLY_DISTILLED_CE_WEIGHT), else None: the student then mostly copies a teacher
    it could almost match alone (KD lost 1.8 points so at a 0.7-point margin).
    `split` names where the top-1s were measured (the run's validation split)."""
    margin = teacher_margin(teacher_top1, baseline_top1)
    if margin is None or margin >= WEAK_TEACHER_MARGIN or student_loss_weight >= MOSTLY_DISTILLED_CE_WEIGHT:
        return None
    return (f"The teacher is only {100 * margin:+.2f} points better than the student trained alone "
            f"(top-1 {100 * teacher_top1:.2f}% vs {100 * baseline_top1:.2f}%"
            f"{f' on the {split} split' if split else ''}), yet the student's own "
            f"cross-entropy has weight {student_loss_weight:g}, so the distillation terms carry most of the "
            f"loss: expect little gain or a loss. Use a stronger teacher, or raise --student_loss_weight "
            f"(e.g. 0.5 or 1).")
