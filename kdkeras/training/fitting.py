"""Training a model or a Distiller: the settings every fit shares (`TrainConfig`),
`compile_and_fit` with the standard callbacks, and the small helpers around it
(loading a saved model, seeding, timing)."""

from __future__ import annotations

import dataclasses
import os
import time
import zipfile
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import keras
import numpy as np

from kdkeras.distiller import Distiller
from kdkeras.settings import setting
from kdkeras.training.callbacks import HistoryKeeper, StopOnNonFiniteLoss, callbacks_for
from kdkeras.training.evaluation import steps_in
from kdkeras.distillation_optimizers import base_optimizer, own_settings
from kdkeras.training.optimizers import DEFAULT_DELTA, OPTIMIZERS, SCHEDULES, make_optimizer
from kdkeras.training.strategy import STRATEGIES, batchnorm_synced


@dataclass
class TrainConfig:
    """What every recipe's training run shares (each field's help is its flag's)."""

    epochs: int = setting(10, help="Training epochs.", group="train", lower_bound=1)
    lr: float = setting(0.05, help="Peak learning rate.", group="train", lower_bound=0.0)
    optimizer: str = setting("sgd", help="Optimizer (SGD uses momentum 0.9).", group="train",
                             choices=OPTIMIZERS)
    schedule: str = setting(
        "cosine", group="train", choices=SCHEDULES,
        help="Learning-rate schedule: cosine, or step (x0.1 at 62.5/75/87.5% of training, as 150/180/210 "
             "of 240).")
    weight_decay: float = setting(5e-4, help="Weight decay.", group="train", lower_bound=0.0)
    momentum: float = setting(0.9, help="SGD momentum.")
    dot_delta: float | None = setting(
        None, group="train", lower_bound=0.0,
        help="--optimizer=dot: the distillation gradient's momentum is the momentum (0.9) plus this, the "
             f"task gradient's the momentum minus it (default {DEFAULT_DELTA}, the paper's). A network trained "
             "on one loss (--baseline's student alone, a teacher) has no distillation gradient: it trains with "
             "plain SGD at the same momentum and weight decay.")
    strategy: str = setting("default", help="tf.distribute strategy.", group="train", choices=STRATEGIES,
                            fingerprint=False)
    tensorboard: bool = setting(False, help="Write TensorBoard logs under output_dir/tensorboard.",
                                group="train", fingerprint=False)
    verbose: int | str = setting("auto", help="Keras' fit verbosity (0, 1, 2 or 'auto').", fingerprint=False)
    run_eagerly: bool = setting(
        False, group="train", fingerprint=False,
        help="Run Keras steps eagerly: for debugging, and faster on tiny smoke runs where tracing dominates.")
    backup: bool = setting(
        True, fingerprint=False,
        help="Back up each epoch under output_dir/backup (weights and history) so that a killed fit resumes; "
             "off for fits that are never resumed (a tuner's trials: a killed one is failed and replaced).")
    sync_batchnorm: bool = setting(
        True, group="train", fingerprint=False,  # acts only under several replicas, like the strategy
        help="Under --strategy=mirrored/multiworker, BatchNorm normalises with the global batch's "
             "statistics, so N replicas train as one device; --nosync_batchnorm keeps each replica's own "
             "(less communication, other results).")

    def __post_init__(self):
        check_train_settings(self.epochs, self.lr, self.weight_decay)
        self._check_dot_delta()

    def one_loss(self) -> "TrainConfig":
        """The settings for a network trained on one loss, with no distillation
        gradient to keep apart: a distillation optimiser (DOT) gives way to its base
        (SGD at the same momentum and weight decay; `kdkeras.distillation_optimizers`)."""
        base = base_optimizer(self.optimizer)
        if base is None:
            return self
        return dataclasses.replace(self, optimizer=base, **{k: None for k in own_settings(self.optimizer)})

    def _check_dot_delta(self) -> None:
        if self.dot_delta is not None and self.optimizer != "dot":
            raise ValueError(f"dot_delta={self.dot_delta!r} applies to optimizer='dot' only, got "
                             f"optimizer={self.optimizer!r}; leave dot_delta None or choose 'dot'.")


def check_train_settings(epochs: Any, lr: Any, weight_decay: Any = 0.0) -> None:
    """Refuse a budget that trains nothing or diverges silently: epochs an int >= 1,
    lr a finite number > 0, weight_decay finite and >= 0 (each named with its value)."""
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}.")
    for name, value, low_ok in (("lr", lr, False), ("weight_decay", weight_decay, True)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if not np.isfinite(number) or number < 0 or (number == 0 and not low_ok):
            accepted = "a finite number >= 0" if low_ok else "a finite number > 0"
            raise ValueError(f"{name} must be {accepted}, got {value!r}.")


def is_distiller(model: Any) -> bool:
    """True for a `Distiller` (it brings its own loss and trains its `student`)."""
    return isinstance(model, Distiller)


def compile_and_fit(
    model: keras.Model,
    train_ds,
    test_ds,
    config: TrainConfig,
    output_dir: str | None = None,
    tag: str = "run",
    compile_kwargs: dict[str, Any] | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> tuple[dict, float]:
    """Compile `model` with the config's optimiser, fit it, return (history, seconds).
    A plain model (one loss) takes `config.one_loss()`: DOT gives way to SGD."""
    if not is_distiller(model):
        config = config.one_loss()
    steps = steps_in(train_ds)
    optimizer = make_optimizer(
        config.optimizer,
        config.lr,
        total_steps=steps * config.epochs,
        schedule=config.schedule,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        dot_delta=config.dot_delta,
    )
    kwargs = {"metrics": ["accuracy"], "run_eagerly": config.run_eagerly}
    if not is_distiller(model):
        kwargs["loss"] = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    kwargs.update(compile_kwargs or {})
    backup = bool(output_dir) and config.backup
    keeper = HistoryKeeper(os.path.join(output_dir, "backup", f"{tag}.history.json")) if backup else None
    with batchnorm_synced(model, config.sync_batchnorm):
        model.compile(optimizer=optimizer, **kwargs)
        start = time.perf_counter()
        history = model.fit(
            train_ds,
            validation_data=test_ds,
            epochs=config.epochs,
            # the keeper records an epoch before its backup is written: a crash between the
            # two redoes that epoch (and replaces its record) instead of losing it from the history
            callbacks=[StopOnNonFiniteLoss()] + ([keeper] if keeper else [])
            + callbacks_for(output_dir, config.tensorboard, backup=backup, tag=tag) + list(callbacks),
            verbose=config.verbose,
        )
    seconds = time.perf_counter() - start
    history = history.history
    if keeper is not None:  # a resumed fit: put the earlier process's epochs and time in front
        history, seconds = keeper.merged(history, seconds)
    if output_dir:  # BackupAndRestore deletes its checkpoint on success; drop the empty folder
        _remove_empty_dirs(os.path.join(output_dir, "backup"))
    return history, seconds


def _remove_empty_dirs(path: str) -> None:
    if not os.path.isdir(path):
        return
    for root, _, _ in sorted(os.walk(path), key=lambda item: -len(item[0])):
        if not os.listdir(root):
            os.rmdir(root)


def load_model(path: str) -> keras.Model:
    """Load a `.keras` model saved by kdkeras (its custom objects registered)."""
    from kdkeras import distiller, methods  # noqa: F401  (registers the Distiller and the methods)

    if not os.path.exists(path):
        raise FileNotFoundError(f"No model file at {path!r}.")
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path!r} exists but is not a Keras model file (a .keras file is a zip archive written by "
            "model.save('x.keras')); it may be truncated, or another format renamed. Accepted: a "
            ".keras file saved by Keras 3 (a SavedModel folder or .h5 needs its own loader).")
    return keras.models.load_model(path, compile=False)


def seeded(seed: int | None) -> None:
    """Seed Python, NumPy and TensorFlow (`keras.utils.set_random_seed`)."""
    if seed is not None:
        keras.utils.set_random_seed(int(seed))


def timed(fn: Callable, *args, **kwargs):
    """(result, seconds) of one call."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start
