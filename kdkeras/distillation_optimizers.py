"""Optimisers that differ from a base one only where a Distiller hands them the task
and distillation gradients apart (DOT), with the settings only they read and those
settings' defaults. One place for the rule, read by the optimiser factory, the
training config, the results table and the results page; no TensorFlow here, so the
page builds without it.
"""

from __future__ import annotations

#: DOT's momentum gap by default (mdistiller's SOLVER.DOT.DELTA)
DOT_DEFAULT_DELTA = 0.075

#: optimiser -> (its base, {setting only it reads: that setting's default}). A network
#: trained on one loss (the student alone, a teacher) trains with the base, so
#: `--optimizer=dot`'s baseline is the plain-SGD one, and the results page sets DOT runs
#: beside the base's runs as a row labelled with the optimiser.
DISTILLATION_OPTIMIZERS: dict[str, tuple[str, dict[str, float]]] = {
    "dot": ("sgd", {"dot_delta": DOT_DEFAULT_DELTA}),
}


def base_optimizer(name: str) -> str | None:
    """The base optimiser of distillation optimiser `name`; None for any other."""
    entry = DISTILLATION_OPTIMIZERS.get(name)
    return entry[0] if entry else None


def own_settings(name: str) -> tuple[str, ...]:
    """The settings only distillation optimiser `name` reads (empty for any other)."""
    entry = DISTILLATION_OPTIMIZERS.get(name)
    return tuple(entry[1]) if entry else ()
