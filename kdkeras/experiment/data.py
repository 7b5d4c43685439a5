"""The data of a run: train, validation and test pipelines at one input size (a saved
teacher's input wins over --image_size/--channels, said aloud), the training split
replayed epoch by epoch so that a resume or a teacher cache rebuilds any epoch exactly.
With --validation_split the validation pipeline is carved out of the training data and
is what every fit watches; the test split is then only read for the final top-1s."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

from kdkeras import data as data_lib
from kdkeras import training
from kdkeras.experiment.config import RunConfig


#: the parts of a run's data: what is trained on, the validation split carved from it, the test split
PARTS = ("train", "validation", "test")


@dataclass
class DataSetup:
    """The train/validation/test pipelines and what models need to know about them."""

    info: data_lib.DatasetInfo
    train: Any
    test: Any
    input_shape: tuple
    num_train: int
    config: RunConfig
    #: the epoch clock of the replayed training pipeline (None for other data)
    clock: data_lib.ReplayClock | None = None
    #: the validation split carved from the training data (None without --validation_split)
    validation: Any = None
    num_validation: int = 0
    #: the training part carries a strong view of each batch (a method reads it: MLKD)
    strong_view: bool = False

    @property
    def validation_data(self):
        """What a fit watches each epoch (its `val_*` numbers): the validation split,
        else the test split (without a validation split, as always)."""
        return self.test if self.validation is None else self.validation

    def part(self, name: str) -> tuple[str, dict]:
        """(split, `load` options) of one of `PARTS`: "train" as trained on (augmented,
        shuffled), "validation" and "test" as evaluation reads them."""
        c, train_split = self.config, self.info.train_split
        carve = {"validation_split": c.validation_split} if c.validation_split else {}
        if name == "train":
            subset = {"subset": "training", **training_cap(c)} if carve else {}
            strong = {"strong_view": True} if self.strong_view else {}
            return train_split, dict(augment=self.train_augment, limit=c.train_limit, shuffle=True, **carve,
                                     **subset, **strong)
        if name == "validation" and carve:
            return train_split, dict(augment=False, limit=c.train_limit, shuffle=False, subset="validation",
                                     **carve)
        if name == "test":
            return self.info.test_split, dict(augment=False, limit=c.test_limit, shuffle=False)
        accepted = list(PARTS) if carve else ["train", "test"]
        raise ValueError(f"No part {name!r} of this run's data; accepted: {accepted}.")

    def callbacks(self) -> list:
        """What `fit` needs to keep the training pipeline's epochs in step (resumes)."""
        return [self.clock.callback()] if self.clock is not None else []

    @property
    def train_augment(self) -> bool:
        """Whether the training split is augmented."""
        c = self.config
        return data_lib.default_augment(self.info, self.info.train_split) if c.augment is None else c.augment

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    def load(self, split: str | None = None, **overrides: Any):
        """Another pipeline of this data at the same size and channels (e.g. the
        training split un-augmented for int8 calibration, or with its index)."""
        c = self.config
        split = split or self.info.train_split
        kwargs = dict(
            batch_size=c.batch_size, image_size=self.input_shape[:2], channels=self.input_shape[2],
            data_dir=c.data_dir, seed=c.seed, augment=c.augment, limit=c.train_limit,
        )
        if c.validation_split and split == self.info.train_split:  # what is trained on, by default
            kwargs.update(validation_split=c.validation_split, subset="training", **training_cap(c))
        kwargs.update(overrides)
        return data_lib.load(c.dataset, split, **kwargs)


def training_cap(config: RunConfig) -> dict:
    """`load`'s cap on the training part (`RunConfig.train_part_limit`), {} without one."""
    return {} if config.train_part_limit is None else {"train_part_limit": config.train_part_limit}


def validation_keys(data: DataSetup, **top1s: float | None) -> dict:
    """The validation split's keys of a run's metrics: the setting, its size, and each
    top-1 on it given by name (`student_val_top1=...`; None ones left out). Empty
    without a validation split, so a run without one records what it always did.
    Every recipe that trains records the split through this one function."""
    if data.validation is None:
        return {}
    cap = {} if data.config.train_part_limit is None else {"train_part_limit": data.config.train_part_limit,
                                                           "train_examples": data.num_train}
    return {"validation_split": data.config.validation_split, "validation_examples": data.num_validation, **cap,
            **validation_top1s(data, **top1s)}


def validation_top1s(data: DataSetup, **top1s: float | None) -> dict:
    """Each top-1 on the validation split given by name, None ones left out; empty
    without a split: `validation_keys` without the setting (for a run's rows or points)."""
    if data.validation is None:
        return {}
    return {name: float(value) for name, value in top1s.items() if value is not None}


def setup_data(
    config: RunConfig,
    input_shape: Sequence[int] | None = None,
    with_index: bool = False,
    shuffle_train: bool = True,
    strong_view: bool = False,
) -> DataSetup:
    """Train/test pipelines for `config`; an `input_shape` (H, W, C), e.g. a
    loaded teacher's, wins over the data's own size and channels."""
    info = data_lib.info(config.dataset, data_dir=config.data_dir)
    h, w, c = info.image_shape
    if config.image_size:
        h = w = config.image_size
    if config.channels:
        c = config.channels
    if input_shape is not None:
        _warn_overridden(config, input_shape)
        h, w, c = input_shape
    if h is None or w is None:
        raise ValueError(
            f"Images of {config.dataset!r} vary in size; set image_size (--image_size=N) to resize them."
        )
    common = dict(
        batch_size=config.batch_size, image_size=(h, w), channels=c,
        data_dir=config.data_dir, seed=config.seed,
    )
    # Replayed epochs: shuffle order and crops are functions of (seed, epoch, index),
    # so a resumed run or a teacher cache rebuilds any epoch exactly.
    clock = data_lib.ReplayClock()
    carve = {"validation_split": config.validation_split} if config.validation_split else {}
    train = data_lib.load(
        config.dataset, info.train_split, augment=config.augment, limit=config.train_limit,
        with_index=with_index, shuffle=shuffle_train, replay=clock, strong_view=strong_view, **carve,
        **(training_cap(config) if carve else {}), **common,
    )
    test = data_lib.load(config.dataset, info.test_split, limit=config.test_limit, **common)
    num_train = info.splits.get(info.train_split) or training.steps_in(train) * config.batch_size
    if config.train_limit:
        num_train = min(num_train, config.train_limit)
    validation, num_validation = None, 0
    if carve:  # stratified, seeded by --seed, out of the (limited) training data
        validation = data_lib.load(config.dataset, info.train_split, augment=False, shuffle=False,
                                   limit=config.train_limit, subset="validation", **carve, **common)
        num_validation = data_lib.num_examples(
            config.dataset, info.train_split, config.train_limit, config.data_dir,
            data_lib.ValidationSplit(config.validation_split, config.seed, "validation"))
        num_train -= num_validation
        if config.train_part_limit is not None:  # a stratified subset of the training part
            num_train = min(num_train, config.train_part_limit)
    return DataSetup(info, train, test, (h, w, c), int(num_train), config, clock, validation, num_validation,
                     strong_view)


def _warn_overridden(config: RunConfig, input_shape: Sequence[int]) -> None:
    """Say so when image_size/channels asked for are replaced by a model's input."""
    h, w, c = input_shape
    asked = []
    if config.image_size and (config.image_size, config.image_size) != (h, w):
        asked.append(f"image_size={config.image_size}")
    if config.channels and config.channels != c:
        asked.append(f"channels={config.channels}")
    if asked:
        warnings.warn(
            f"{' and '.join(asked)} ignored: the model (a saved teacher) fixes the input to "
            f"{h}x{w}x{c}, so the data is read at {h}x{w} with {c} channel(s). Drop the flag, or give "
            "a teacher built for that input.", stacklevel=3)
        print(f"WARNING: {' and '.join(asked)} ignored; the teacher's input {h}x{w}x{c} is used.")
