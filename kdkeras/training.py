"""Training helpers shared by the recipes: strategies, optimisers, schedules,
callbacks, supervised training and evaluation.

They keep the recipes thin and make every recipe behave alike: SGD with
momentum and a cosine or step schedule as the published tables use, Keras'
own progress bar, optional TensorBoard logs, and `BackupAndRestore` so a run
that crashes resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from kdkeras.keys import IMAGE

STRATEGIES = ("default", "mirrored", "multiworker")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "constant")


def get_strategy(name: str = "default") -> tf.distribute.Strategy:
    """`default` (one device), `mirrored` (all local GPUs, or the CPU), or
    `multiworker` (MultiWorkerMirroredStrategy, configured by TF_CONFIG)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"Unknown strategy {name!r}; accepted: {list(STRATEGIES)}.")


def make_schedule(
    lr: float, schedule: str, total_steps: int, milestones: tuple[float, ...] = (0.625, 0.75, 0.875)
):
    """A learning-rate schedule over `total_steps`.

    `step` multiplies by 0.1 at the given fractions of training (150/180/210 of
    240 epochs in the published CIFAR recipe); `cosine` decays to zero.
    """
    total_steps = max(int(total_steps), 1)
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=total_steps)
    if schedule == "step":
        # Keras keeps the old rate at a boundary step itself: the last step before each milestone
        bounds = sorted({max(0, int(f * total_steps) - 1) for f in milestones})
        values = [lr * (0.1**i) for i in range(len(bounds) + 1)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(bounds, values)
    raise ValueError(f"Unknown schedule {schedule!r}; accepted: {list(SCHEDULES)}.")


def make_optimizer(
    name: str = "sgd",
    lr: float = 0.05,
    total_steps: int = 1,
    schedule: str = "cosine",
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
) -> keras.optimizers.Optimizer:
    """SGD (momentum, weight decay), Adam or AdamW with a schedule."""
    rate = make_schedule(lr, schedule, total_steps)
    wd = weight_decay or None
    if name == "sgd":
        return keras.optimizers.SGD(rate, momentum=momentum, nesterov=False, weight_decay=wd)
    if name == "adam":
        return keras.optimizers.Adam(rate, weight_decay=wd)
    if name == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=weight_decay)
    raise ValueError(f"Unknown optimizer {name!r}; accepted: {list(OPTIMIZERS)}.")


def callbacks_for(
    output_dir: str | None, tensorboard: bool = False, backup: bool = True, tag: str = "run"
) -> list[keras.callbacks.Callback]:
    """Crash-safe training (BackupAndRestore) and optional TensorBoard logs."""
    cbs: list[keras.callbacks.Callback] = []
    if output_dir:
        if backup:
            cbs.append(
                keras.callbacks.BackupAndRestore(os.path.join(output_dir, "backup", tag))
            )
        if tensorboard:
            cbs.append(keras.callbacks.TensorBoard(os.path.join(output_dir, "tensorboard", tag)))
    return cbs


def steps_in(dataset) -> int:
    """Number of batches of a finite dataset (counted if unknown)."""
    n = int(tf.data.experimental.cardinality(dataset))
    if n == tf.data.INFINITE_CARDINALITY:
        raise ValueError("The dataset repeats forever; give a finite one (or steps_per_epoch).")
    if n >= 0:
        return n
    return sum(1 for _ in dataset)


def images_of(x):
    """The image tensor of a batch's `x` (which may be `{IMAGE: ..., INDEX: ...}`)."""
    return x[IMAGE] if isinstance(x, dict) else x


def predict_logits(model: keras.Model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of a whole dataset of `(x, y)` batches."""
    logits, labels = [], []
    for x, y in dataset:
        logits.append(np.asarray(model.predict_on_batch(images_of(x))))
        labels.append(np.asarray(y))
    return np.concatenate(logits), np.concatenate(labels).reshape(-1)


def evaluate_top1(model: keras.Model, dataset) -> float:
    """Top-1 accuracy (0..1) of a logits model on a dataset of `(x, y)`."""
    logits, labels = predict_logits(model, dataset)
    return float(np.mean(logits.argmax(-1) == labels))


@dataclass
class TrainConfig:
    """What every recipe's training run shares."""

    epochs: int = 10
    lr: float = 0.05
    optimizer: str = "sgd"
    schedule: str = "cosine"
    weight_decay: float = 5e-4
    momentum: float = 0.9
    strategy: str = "default"
    tensorboard: bool = False
    verbose: int | str = "auto"
    #: run Keras steps eagerly: for debugging, and faster on tiny runs where tracing dominates
    run_eagerly: bool = False


def compile_and_fit(
    model: keras.Model,
    train_ds,
    test_ds,
    config: TrainConfig,
    output_dir: str | None = None,
    tag: str = "run",
    compile_kwargs: dict[str, Any] | None = None,
) -> tuple[dict, float]:
    """Compile `model` with the config's optimiser, fit it, return (history, seconds)."""
    steps = steps_in(train_ds)
    optimizer = make_optimizer(
        config.optimizer,
        config.lr,
        total_steps=steps * config.epochs,
        schedule=config.schedule,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    kwargs = {"metrics": ["accuracy"], "run_eagerly": config.run_eagerly}
    if not hasattr(model, "student"):
        kwargs["loss"] = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    kwargs.update(compile_kwargs or {})
    model.compile(optimizer=optimizer, **kwargs)
    start = time.perf_counter()
    history = model.fit(
        train_ds,
        validation_data=test_ds,
        epochs=config.epochs,
        callbacks=callbacks_for(output_dir, config.tensorboard, tag=tag),
        verbose=config.verbose,
    )
    seconds = time.perf_counter() - start
    if output_dir:  # BackupAndRestore deletes its checkpoint on success; drop the empty folder
        _remove_empty_dirs(os.path.join(output_dir, "backup"))
    return history.history, seconds


def _remove_empty_dirs(path: str) -> None:
    if not os.path.isdir(path):
        return
    for root, _, _ in sorted(os.walk(path), key=lambda item: -len(item[0])):
        if not os.listdir(root):
            os.rmdir(root)


def train_supervised(
    model: keras.Model,
    train_ds,
    test_ds,
    config: TrainConfig,
    output_dir: str | None = None,
    tag: str = "supervised",
) -> dict:
    """Train a logits model with cross-entropy; return its history, time and top-1."""
    history, seconds = compile_and_fit(model, drop_index(train_ds), drop_index(test_ds), config, output_dir, tag)
    return {"history": history, "train_seconds": seconds, "top1": evaluate_top1(model, test_ds)}


def drop_index(dataset):
    """Plain (image, label) batches for models that do not read the index."""
    spec = dataset.element_spec[0]
    if isinstance(spec, dict):
        return dataset.map(lambda x, y: (x[IMAGE], y))
    return dataset


def load_model(path: str) -> keras.Model:
    """Load a `.keras` model saved by kdkeras (its custom objects registered)."""
    import kdkeras  # noqa: F401  (registers custom layers and methods)

    if not os.path.exists(path):
        raise FileNotFoundError(f"No model file at {path!r}.")
    return keras.models.load_model(path, compile=False)


def write_json(path: str, payload: dict) -> str:
    """Write `payload` as indented JSON (NumPy scalars converted)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def default(o):
        if isinstance(o, (np.floating, np.integer)):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=default)
    return path


def seeded(seed: int | None) -> None:
    """Seed Python, NumPy and TensorFlow (`keras.utils.set_random_seed`)."""
    if seed is not None:
        keras.utils.set_random_seed(int(seed))


def timed(fn: Callable, *args, **kwargs):
    """(result, seconds) of one call."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start
