"""The flags every recipe shares, generated from the run layer's configs, and the
parsed flags turned back into configs.

Each flag is a field of `RunConfig` or `DistillSpec` declared once with
`kdkeras.settings.setting` (name, help, bounds, choices, how the flag's text
becomes the field's value); the `define_*_flags` below define a group of them.
Recipes define these on absl's `FlagValues` (the global `flags.FLAGS` when run
as scripts, a fresh `flags.FlagValues()` in tests, so several recipes can run
in one process) and hand the parsed values to `run_config`/`distill_spec`:
only these two functions read flag values, and only those they are given.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable

from absl import app, flags

from kdkeras.experiment.config import AUGMENT, DistillSpec, RunConfig  # noqa: F401  (AUGMENT: --augment's values)
from kdkeras.methods.registry import parse_kwargs  # noqa: F401  (the recipes' zoo kwargs parser)
from kdkeras.settings import SAME, field_default, flag_fields, flag_kind

_DEFINE = {
    "string": flags.DEFINE_string, "integer": flags.DEFINE_integer, "float": flags.DEFINE_float,
    "bool": flags.DEFINE_bool, "enum": flags.DEFINE_enum, "list": flags.DEFINE_list,
}


def define_settings(fv: flags.FlagValues, cls: type, group: str, **defaults: Any) -> None:
    """Define the flag of each field of `cls` in `group`, named as the field, with its
    setting's help, bounds and choices; `defaults` replace flags' defaults (flag text)."""
    fields = flag_fields(cls, group)
    unknown = sorted(set(defaults) - {f.name for f, _ in fields})
    if unknown:
        raise ValueError(f"No {group!r} flags {unknown} in {cls.__name__}; "
                         f"accepted: {[f.name for f, _ in fields]}.")
    for f, meta in fields:
        if f.name in defaults:
            default = defaults[f.name]
        else:
            default = field_default(f) if meta.flag_default is SAME else meta.flag_default
        kind = flag_kind(cls, f)
        kwargs: dict[str, Any] = {"flag_values": fv}
        if kind in ("integer", "float") and meta.lower_bound is not None:
            kwargs["lower_bound"] = meta.lower_bound
        if kind == "enum":
            _DEFINE[kind](f.name, default, list(meta.choices), meta.help, **kwargs)
        else:
            _DEFINE[kind](f.name, default, meta.help, **kwargs)


def define_data_flags(fv: flags.FlagValues = flags.FLAGS, default_dataset: str = "fashion_mnist") -> None:
    """--dataset, --data_dir, --train_limit, --test_limit, --batch_size, --image_size,
    --channels, --augment, --seed."""
    define_settings(fv, RunConfig, "data", dataset=default_dataset)


def define_train_flags(fv: flags.FlagValues = flags.FLAGS, epochs: int = 10, lr: float = 0.05) -> None:
    """--epochs, --lr, --optimizer, --schedule, --weight_decay, --strategy,
    --sync_batchnorm, --tensorboard, --run_eagerly, --output_dir, --overwrite, --deterministic."""
    define_settings(fv, RunConfig, "train", epochs=epochs, lr=lr)


def define_run_flags(fv: flags.FlagValues = flags.FLAGS, epochs: int = 10, lr: float = 0.05) -> None:
    """The data and training flags together (what `run_config` reads)."""
    define_data_flags(fv)
    define_train_flags(fv, epochs=epochs, lr=lr)


def define_distill_flags(fv: flags.FlagValues = flags.FLAGS, teacher: str | None = None,
                         student: str = "resnet8") -> None:
    """The flags of a distillation run (`DistillSpec`): teacher, student, methods,
    init stage, baseline and the teacher cache."""
    define_settings(fv, DistillSpec, "distill", teacher=teacher, student=student)
    define_method_flags(fv)
    define_cache_flags(fv)


def define_method_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """--method, --method_args and --student_loss_weight: which methods, and how strong."""
    define_settings(fv, DistillSpec, "method")


def define_cache_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """--teacher_cache and its options (see kdkeras.cache)."""
    define_settings(fv, DistillSpec, "cache")


def define_tune_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """--trials, --timeout_minutes, --storage, --study_name, --pruner, --trial_epochs,
    --trial_train_limit, --candidates, ... (`kdkeras.tune.TuneOptions`)."""
    from kdkeras.tune.options import TuneOptions

    define_settings(fv, TuneOptions, "tune")


def tune_options(fv: flags.FlagValues, **overrides: Any):
    """The `kdkeras.tune.TuneOptions` of parsed tune flags."""
    from kdkeras.tune.options import TuneOptions

    return from_flags(TuneOptions, fv, **overrides)


def from_flags(cls: type, fv: flags.FlagValues, **overrides: Any):
    """A `cls` config of the parsed flags `fv` defines for its fields (each flag's
    value turned into the field's by its setting), then `overrides`; fields without a
    defined flag keep their defaults. An override that is no field of `cls` is refused."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise TypeError(f"Unknown {cls.__name__} setting(s) {unknown}; accepted: {names}.")
    values = {}
    for f, meta in flag_fields(cls):
        if f.name in fv and f.name not in overrides:
            value = fv[f.name].value
            values[f.name] = meta.parse(value) if meta.parse is not None else value
    return dataclasses.replace(cls(**values), **overrides)


def run_config(fv: flags.FlagValues, **overrides: Any) -> RunConfig:
    """The `RunConfig` of parsed data and training flags; `overrides` set fields
    directly (e.g. a recipe's fixed train_limit)."""
    return from_flags(RunConfig, fv, **overrides)


def distill_spec(fv: flags.FlagValues, **overrides: Any) -> DistillSpec:
    """The `DistillSpec` of parsed distillation flags; `overrides` set the rest
    (e.g. a recipe's fixed input shape)."""
    return from_flags(DistillSpec, fv, **overrides)


def run_main(define_flags: Callable[[flags.FlagValues], None], run: Callable[[flags.FlagValues], object]) -> None:
    """Run a recipe as a script: its flags on absl's global FLAGS, parsed from the command line
    (and listed by --helpshort as the script's own, wherever they are defined)."""
    before = set(flags.FLAGS)
    define_flags(flags.FLAGS)
    for name in sorted(set(flags.FLAGS) - before):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])

    def main(argv):
        del argv
        run(flags.FLAGS)

    app.run(main)
