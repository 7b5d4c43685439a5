"""The two configs of a run, each setting declared once: `RunConfig` (data, budget,
output folder) and `DistillSpec` (teacher, student, methods, teacher cache).

Each field is a `kdkeras.settings.setting`: its help and bounds make the recipes'
flag of the same name (`recipe_utils`), `parse` turns the flag's text into the
field's value, and `fingerprint=False` leaves it out of the settings a resumed run
must share (`run_settings`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from kdkeras import training
from kdkeras.cache.layout import STORAGES
from kdkeras.data.sources.validation import check_validation_size
from kdkeras.methods.registry import parse_kwargs
from kdkeras.settings import setting

#: teacher specs that mean "no teacher" (teacher-free methods)
NO_TEACHER = ("", "none")
#: --augment's text -> RunConfig.augment
AUGMENT = {"auto": None, "on": True, "off": False}


def _channels(text: str | None) -> int | None:
    return None if text is None else int(text)


def _split_size(text: str | float | int | None) -> float | int:
    """--validation_split's text -> a fraction (float) or a count (int); 0 for none."""
    if text is None or isinstance(text, (int, float)):
        return text or 0
    try:
        value = float(text) if any(ch in text for ch in ".eE") else int(text)
    except ValueError:
        raise ValueError(f"--validation_split={text!r} is not a number; accepted: a fraction in (0, 1) "
                         "(e.g. 0.1) or a count of examples (e.g. 2000); 0 for none.") from None
    return check_validation_size(value) or 0


def _joined(names: list | None) -> str:
    return ",".join(names or [])


@dataclass
class RunConfig(training.TrainConfig):
    """Data, training budget and output folder shared by every run of a recipe:
    the optimiser and schedule settings of `TrainConfig` (epochs, lr, optimizer,
    schedule, weight_decay, momentum, strategy, tensorboard, verbose,
    run_eagerly, sync_batchnorm) plus the data and where results go.

    `validation_split` (a fraction in (0, 1) or a count; 0: none) carves a
    validation split out of the (limited) training data, seeded by `seed`;
    `train_part_limit` then trains on a stratified subset of what is left (a tuning
    trial's data), the validation split unchanged.
    `augment=None` takes the data set's default (on, except (fashion_)mnist);
    `image_size`/`channels` of `None` keep the data's own unless a model fixes
    the input.
    """

    dataset: str = setting(
        "fashion_mnist", group="data",
        help="A tensorflow-datasets name (cifar100, ...), 'fashion_mnist' (offline from Debian's "
             "dataset-fashion-mnist when tfds cannot download) or folder:/path (root/split/class/*.jpg|png, "
             "or root/class/*.jpg|png).")
    data_dir: str | None = setting(None, help="tfds data_dir (or the IDX folder for fashion_mnist).", group="data")
    train_limit: int | None = setting(None, help="Use only the first N training examples (quick runs).",
                                      group="data", lower_bound=1)
    test_limit: int | None = setting(None, help="Use only the first N test examples.", group="data",
                                     lower_bound=1)
    validation_split: float | int = setting(
        0, group="data", kind="string", flag_default="0", parse=_split_size,
        help="Carve a validation split out of the training data (after --train_limit): a fraction in (0, 1) "
             "or a count of examples, stratified by class and seeded by --seed. Per-epoch val_* numbers, the "
             "weak-teacher check and tuning then read it; the test split is read once, at the end. 0: none.")
    train_part_limit: int | None = setting(
        None, group="data", lower_bound=1,
        help="Train on only N examples of the training part left after --validation_split (stratified by "
             "class, the same N on every run), scoring on the whole validation split: a tuning trial's data "
             "(--trial_train_limit sets it). Needs --validation_split.")
    batch_size: int = setting(64, help="Global batch size (split across replicas).", group="data",
                              lower_bound=1)
    image_size: int | None = setting(
        None, help="Resize images to this square size (default: the data's, or the teacher's input).",
        group="data", lower_bound=1)
    channels: int | None = setting(None, help="Convert images to 1 or 3 channels (default: the data's).",
                                   group="data", choices=("1", "3"), parse=_channels)
    augment: bool | None = setting(
        None, group="data", choices=tuple(AUGMENT), flag_default="auto", parse=AUGMENT.__getitem__,
        help="Pad-4 random crop + flip on the training split; auto = on except for (fashion_)mnist.")
    seed: int = setting(0, help="Random seed (weights, shuffling, augmentation).", group="data")
    output_dir: str = setting("runs/out", help="Where models, metrics and reports are written.", group="train",
                              fingerprint=False)
    overwrite: bool = setting(
        False, group="train", fingerprint=False,
        help="Start fresh in a reused --output_dir: drop the backups and finished stages an earlier run left "
             "there (without it, a resume with other settings is refused).")
    deterministic: bool = setting(
        False, group="train", fingerprint=False,
        help="Deterministic TensorFlow kernels (tf.config.experimental.enable_op_determinism): the same "
             "command and seed give the same weights on GPU too, at some speed. CPU runs are deterministic "
             "without it.")

    def __post_init__(self):
        super().__post_init__()
        self.validation_split = check_validation_size(self.validation_split) or 0
        if self.train_part_limit is not None and not self.validation_split:
            raise ValueError(f"train_part_limit={self.train_part_limit!r} caps the training part of a validation "
                             "split, but validation_split is 0: give --validation_split (a fraction or a count) "
                             "or drop --train_part_limit (--train_limit limits all the training data).")

    def train_config(self, epochs: int | None = None) -> training.TrainConfig:
        """The optimiser/schedule settings for a run of `epochs` (default: this config's)."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(training.TrainConfig)}
        return training.TrainConfig(**{**shared, "epochs": self.epochs if epochs is None else int(epochs)})

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)


@dataclass
class DistillSpec:
    """Who teaches whom, how: the part of a distillation run beyond data and budget.

    `teacher`: a `.keras` path, a zoo name (trained for `teacher_epochs`, or
    found in `saved_dir`), or "none". `method`: a registry name or a `+` mix,
    `method_args` per-method overrides (`"kd.temperature=2"` or a dict).
    `input_shape` (H, W, C) fixes both networks' input (the teacher is
    adapted to it); by default a saved teacher's input is used.
    """

    teacher: str | None = setting(None, help="Path to a .keras teacher, a zoo name to train first, or 'none'.",
                                  group="distill")
    student: str = setting("resnet8", help="Zoo name of the student.", group="distill")
    student_args: dict = setting(
        default_factory=dict, group="distill", kind="string", flag_default="", parse=parse_kwargs,
        help="Zoo kwargs for the student, e.g. 'width_multiplier=0.5,dropout=0.1'.")
    method: str = setting("kd", help="Method name or '+' combination, e.g. kd, kd+at, crd.", group="method")
    method_args: str | dict = setting("", help="Per-method overrides: 'kd.temperature=2,at.weight=500'.",
                                      group="method", kind="string")
    student_loss_weight: float | None = setting(
        None, group="method", lower_bound=0.0,
        help="Weight of the student's cross-entropy; default: the methods' own (KD 0.1, LSR 0, others 1; a "
             "mix takes the smallest).")
    teacher_epochs: int = setting(10, help="Epochs when --teacher is a zoo name trained here.", group="distill",
                                  lower_bound=1)
    teacher_args: dict = setting(default_factory=dict, help="Zoo kwargs of a teacher trained here.")
    init_epochs: int | None = setting(
        None, group="distill", lower_bound=1,
        help="Epochs of the initialisation stage of FT/AB/FSP/KTA/SSKD/PAD-L2 (default: a quarter of --epochs, "
             "at least 1).")
    baseline: bool = setting(
        False, group="distill", fingerprint=False,
        help="Also train the student alone on the same budget and initial weights (baseline_top1).")
    bn_momentum: float | None = setting(None, help="Momentum of every BatchNorm of both networks (None: "
                                                   "the models' own).")
    input_shape: tuple | None = setting(None, help="(H, W, C) of both networks (None: a saved teacher's).")
    saved_dir: str | None = setting(None, help="Folder of trained zoo teachers, <dataset>_<name>/model.keras.",
                                    fingerprint=False)
    teacher_cache: str | None = setting(
        None, group="cache",
        help="Folder of a teacher-output cache: built when missing (the teacher runs once per example and "
             "view), reused when it matches the teacher, data and taps, refused when stale. Training then "
             "runs no teacher.")
    teacher_cache_views: int | None = setting(
        None, group="cache", lower_bound=1,
        help="Views (epochs' batches) cached per example (default: --epochs, exact; 1 is cheaper for "
             "un-augmented data, and within float rounding of the online teacher); fewer than the epochs "
             "cycle.")
    teacher_cache_storage: str = setting(
        "float32", group="cache", choices=STORAGES,
        help="float32, float16, or topk (logits only: the k largest, the rest's mass spread evenly; taps "
             "stay float32).")
    teacher_cache_top_k: int | None = setting(None, help="k of --teacher_cache_storage=topk.", group="cache",
                                              lower_bound=1)
    teacher_cache_max_gb: float | None = setting(
        None, help="Refuse to build a cache larger than this (GiB).", group="cache", lower_bound=0.0,
        fingerprint=False)
    rebuild_teacher_cache: bool = setting(
        False, help="Replace a stale teacher cache instead of refusing it.", group="cache", fingerprint=False)
    teacher_cache_methods: str = setting(
        "", group="cache", kind="list", flag_default=[], parse=_joined, fingerprint=False,
        help="More methods whose teacher taps the cache also holds (e.g. at,fitnet,rkd): the first run of a "
             "sweep builds one cache that every later run of it reads.")
