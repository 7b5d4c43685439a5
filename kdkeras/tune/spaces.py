"""A candidate's search space (its methods' own, prefixed with their names, and the
student's CE weight) and its sampling as Optuna suggestions.

Every parameter of a trial is named `<candidate>/<setting>` (`kd/kd.temperature`,
`kd+at/student_loss_weight`): each candidate of `--method=auto` keeps its own
dimensions in one study, and a setting reads back as `method_args` text.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from kdkeras.methods.registry import method_class, registered_methods
from kdkeras.search_space import (
    Choice, Dimension, Float, Int, describe, describe_dimension, method_space, student_loss_weight_space,
)

#: the trial parameter that holds the candidate method of `--method=auto`
METHOD_PARAM = "method"
#: the setting name of the student's CE weight in a candidate's space
CE_WEIGHT = "student_loss_weight"


def member_names(candidate: str) -> list[str]:
    """The methods of a `+` candidate, lower case (`"KD+at"` -> ["kd", "at"])."""
    names = [n.strip().lower() for n in str(candidate).split("+") if n.strip()]
    if not names:
        raise ValueError(f"Empty candidate method {candidate!r}.")
    return names


def candidate_space(candidate: str, tune_ce_weight: bool = True) -> dict[str, Dimension]:
    """{`method.arg` or `student_loss_weight`: dimension} of a method or `+` mix."""
    space: dict[str, Dimension] = {}
    classes = [method_class(name) for name in member_names(candidate)]
    for name, cls in zip(member_names(candidate), classes):
        space.update({f"{name}.{arg}": dim for arg, dim in method_space(cls).items()})
    if tune_ce_weight:
        space[CE_WEIGHT] = student_loss_weight_space(min(c.default_student_loss_weight for c in classes))
    return space


def _clamp(value: Any, dim: Dimension) -> Any:
    """`value` moved into `dim`'s range (None when it is not one of a Choice's values)."""
    if isinstance(dim, Choice):
        return value if value in dim.values else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = min(max(value, dim.low), dim.high)
    return int(round(value)) if isinstance(dim, Int) else float(value)


def default_settings(candidate: str, tune_ce_weight: bool = True) -> dict[str, Any]:
    """The published defaults of a candidate's space (each moved into its dimension's
    range): the method's `default_weight`, its constructor's defaults and the mix's
    default CE weight. A sweep's first trial of each candidate runs them, so the choice
    is never worse on the validation split than the defaults."""
    from kdkeras.methods.registry import from_spec

    names = member_names(candidate)
    classes = [method_class(name) for name in names]
    defaults: dict[str, Any] = {}
    for name, cls in zip(names, classes):
        bare = None
        for arg, dim in method_space(cls).items():
            if arg == "weight":
                value = getattr(cls, "default_weight", None)
            elif arg in getattr(cls, "run_length_defaults", {}):
                value = cls.run_length_defaults[arg]
            else:  # what an instance built with no arguments holds
                bare = bare or from_spec(name, num_examples=64)[0]
                value = getattr(bare, arg, None)
            value = None if value is None else _clamp(value, dim)
            if value is not None:
                defaults[f"{name}.{arg}"] = value
    if tune_ce_weight:
        ce = min(float(c.default_student_loss_weight) for c in classes)
        defaults[CE_WEIGHT] = _clamp(ce, student_loss_weight_space(ce))
    return defaults


def suggest(trial, name: str, dim: Dimension) -> Any:
    """One Optuna suggestion of `dim` under the parameter `name`."""
    if isinstance(dim, Float):
        return trial.suggest_float(name, dim.low, dim.high, log=dim.log)
    if isinstance(dim, Int):
        return trial.suggest_int(name, dim.low, dim.high, log=dim.log)
    if isinstance(dim, Choice):
        return trial.suggest_categorical(name, list(dim.values))
    raise TypeError(f"Unknown dimension {dim!r} for {name!r}: expected Float, Int or Choice.")


def sample(trial, candidates: list[str], tune_ce_weight: bool = True,
           fixed: Sequence[str] = ()) -> tuple[str, dict[str, Any]]:
    """The candidate (a categorical choice when there are several) and its settings
    sampled for `trial`: (method spec, {`method.arg` / `student_loss_weight`: value});
    names in `fixed` (the user's own `method_args`) are not searched."""
    candidate = (trial.suggest_categorical(METHOD_PARAM, list(candidates)) if len(candidates) > 1
                 else candidates[0])
    settings = {name: suggest(trial, f"{candidate}/{name}", dim)
                for name, dim in candidate_space(candidate, tune_ce_weight).items() if name not in fixed}
    return candidate, settings


def settings_of(params: Mapping[str, Any], candidates: list[str]) -> tuple[str, dict[str, Any]]:
    """(method spec, settings) of a finished trial's parameters (the inverse of `sample`)."""
    candidate = params.get(METHOD_PARAM, candidates[0] if len(candidates) == 1 else None)
    if candidate is None:
        raise ValueError(f"Trial parameters {dict(params)} name no {METHOD_PARAM!r} of {candidates}.")
    prefix = f"{candidate}/"
    return candidate, {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def split_settings(settings: Mapping[str, Any]) -> tuple[dict[str, Any], float | None]:
    """(method_args dict `{"kd.temperature": 2.0}`, student_loss_weight or None) of settings."""
    args = {k: v for k, v in settings.items() if k != CE_WEIGHT}
    return args, settings.get(CE_WEIGHT)


def method_args_text(args: Mapping[str, Any]) -> str:
    """`{"kd.temperature": 2.0}` -> `"kd.temperature=2.0"` (the `--method_args` form)."""
    return ",".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in args.items())


def space_table() -> str:
    """kdkeras' own methods' spaces and CE-weight ranges as a Markdown table (docs/methods.md);
    methods a user (or a test) registers elsewhere are left out."""
    lines = ["| method | its space | student CE weight |", "|---|---|---|"]
    for name in registered_methods():
        cls = method_class(name)
        if not cls.__module__.startswith("kdkeras."):
            continue
        ce = student_loss_weight_space(cls.default_student_loss_weight)
        lines.append(f"| `{name}` | {describe(method_space(cls))} | {describe_dimension(ce)} |")
    return "\n".join(lines) + "\n"
