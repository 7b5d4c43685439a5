"""Training helpers shared by the recipes: strategies, optimisers, schedules,
callbacks, supervised training and evaluation.

They keep the recipes thin and make every recipe behave alike: SGD with
momentum and a cosine or step schedule as the published tables use, Keras'
own progress bar, optional TensorBoard logs, and `BackupAndRestore` so a run
that crashes resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import zipfile
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from kdkeras.files import write_json  # noqa: F401  (re-exported: one JSON writer)
from kdkeras.keys import IMAGE, image_part

STRATEGIES = ("default", "mirrored", "multiworker")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "constant")


def _patch_keras_multiworker() -> None:
    """Work around keras-team/keras issue 20585 (tensorflow/tensorflow issue 72388):
    Keras 3's `fit` fails under MultiWorkerMirroredStrategy in two places of
    keras/src/backend/tensorflow/trainer.py. `reduce_per_replica` reduces every
    log with `strategy.reduce("MEAN", v, axis=0)`, which fails on scalar logs
    ("Invalid reduction dimension 0 for input with 0 dimensions"): scalars are
    averaged over the replicas instead (`axis=None`). `_maybe_symbolic_build`
    reduces the whole first (x, y) batch with one `strategy.reduce`, which the
    collective ops cannot take: this worker's own batch is used instead (only
    its shapes and dtypes are read). Single-worker strategies go to Keras as is."""
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = tf_trainer.reduce_per_replica
    if getattr(original, "_kdkeras_patched", False):
        return
    symbolic_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is None or strategy is None or not is_multi_worker(strategy):
            return symbolic_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:
            batch = next(it)
            data_batch = tree.map_structure(
                lambda v: strategy.experimental_local_results(v)[0]
                if isinstance(v, tf.distribute.DistributedValues) else v, batch)
            break
        return symbolic_build(self, data_batch=data_batch)

    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
            def reduce(v):
                local = strategy.experimental_local_results(v)[0] if tf_trainer._is_per_replica_instance(v) else v
                if getattr(local, "shape", None) is not None and local.shape.rank == 0:
                    return strategy.reduce("MEAN", v, axis=None)
                return original(v, strategy, reduction)
            return tree.map_structure(reduce, values)
        return original(values, strategy, reduction)

    reduce_per_replica._kdkeras_patched = True
    tf_trainer.reduce_per_replica = reduce_per_replica


def is_multi_worker(strategy: tf.distribute.Strategy | None = None) -> bool:
    """True under a MultiWorkerMirroredStrategy that spans several workers."""
    strategy = strategy or tf.distribute.get_strategy()
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode())


def worker_role(strategy: tf.distribute.Strategy | None = None) -> tuple[bool, int]:
    """(is_chief, worker index) of this process: the chief (or worker 0 when the
    cluster has no chief) writes results; one process is always the chief."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if not is_multi_worker(strategy) or resolver is None or resolver.task_type is None:
        return True, 0
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    has_chief = "chief" in (resolver.cluster_spec().as_dict() or {})
    chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)
    return chief, task_id


def sync_batchnorm(*layers: keras.layers.Layer, synchronized: bool = True) -> list:
    """Make every BatchNormalization inside `layers` normalise a training batch with
    the statistics of the global batch (summed over the replicas, Keras'
    `synchronized=True`) instead of each replica's share; returns the BatchNorm
    layers it changed (`synchronized=False` on them puts Keras' default back).

    Why: under Mirrored/MultiWorkerMirrored each replica sees B/N examples, so a
    BatchNorm in training mode (a student's, FitNet's regressor's) normalises
    with other means and variances than one device on the batch B: the loss,
    the gradients and the moving statistics all differ, and N replicas no longer
    equal one device. Synchronised, they do (three small all-reduces per
    BatchNorm and step); inference (moving statistics) is unchanged."""
    changed = []
    for layer in layers:
        for sub in layer._flatten_layers(include_self=True, recursive=True):
            if isinstance(sub, keras.layers.BatchNormalization) and sub.synchronized != synchronized:
                sub.synchronized = synchronized
                changed.append(sub)
    return changed


@contextlib.contextmanager
def batchnorm_synced(model: keras.Model, enabled: bool = True):
    """Inside the block, `model`'s BatchNorms are synchronised (`sync_batchnorm`) when
    it trains on several replicas and `enabled`; after it, Keras' default is back, so
    a model saved later is unchanged. Yields the layers it changed."""
    synced = sync_batchnorm(model) if enabled and replicas_of(model) > 1 else []
    try:
        yield synced
    finally:
        sync_batchnorm(*synced, synchronized=False)


def replicas_of(model: keras.Model) -> int:
    """The replicas a model trains on: those of the strategy it was built under."""
    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    return int(strategy.num_replicas_in_sync)


def get_strategy(name: str = "default") -> tf.distribute.Strategy:
    """`default` (one device), `mirrored` (all local GPUs, or the CPU), or
    `multiworker` (MultiWorkerMirroredStrategy, configured by TF_CONFIG)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        _patch_keras_multiworker()
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


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss (bad input data, or a diverging rate)."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stop `fit` at the first batch whose loss is NaN or infinite, put back the
    weights the model had when that epoch began (the last known good ones) and
    raise `NonFiniteLossError` naming the epoch and batch: unlike Keras'
    `TerminateOnNaN` the run fails instead of saving a model of NaNs."""

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._good = self.model.get_weights()

    def on_train_batch_end(self, batch, logs=None):
        value = (logs or {}).get("loss")
        if value is None or np.all(np.isfinite(np.asarray(value, dtype="float64"))):
            return
        self.model.set_weights(self._good)
        self.model.stop_training = True
        raise NonFiniteLossError(
            f"The training loss became {float(np.asarray(value))} at epoch {self._epoch + 1}, batch "
            f"{batch + 1} (1-based): a NaN/inf in the data (check the images and labels of that batch) "
            "or a learning rate that diverges (try a smaller --lr). The model's weights were put back "
            "to those at the start of that epoch; nothing was saved as finished.")


class SafeBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' `BackupAndRestore`, written atomically: Keras writes the weights, then
    the epoch, in place, so a crash between the two resumes epoch k's weights as
    epoch k-1 (a silently wrong model). Here each backup is written whole into
    `DIR.partial` and swapped in by renames; an interrupted write leaves the
    previous complete backup (or none), never a mixed one."""

    def on_train_begin(self, logs=None):
        backup = self.backup_dir
        if not os.path.exists(backup) and os.path.exists(backup + ".old"):
            os.rename(backup + ".old", backup)  # crashed between the two renames
        for leftover in (backup + ".partial", backup + ".old"):
            shutil.rmtree(leftover, ignore_errors=True)
        super().on_train_begin(logs)

    def _save_model(self):
        backup, partial, old = self.backup_dir, self.backup_dir + ".partial", self.backup_dir + ".old"
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        self.model.save_weights(os.path.join(partial, os.path.basename(self._weights_path)), overwrite=True)
        meta = os.path.join(partial, os.path.basename(self._training_metadata_path))
        with open(meta, "w") as f:
            json.dump({"epoch": self._current_epoch, "batch": self._last_batch_seen}, f)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(backup):
            os.rename(backup, old)
        os.rename(partial, backup)
        shutil.rmtree(old, ignore_errors=True)


class HistoryKeeper(keras.callbacks.Callback):
    """Records each finished epoch's logs and the seconds spent so far in `path`
    (beside the backup), so a resumed `fit` can report the whole run's history
    and time, not only the epochs of the last process (`merged`)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.first_epoch, self._epochs, self._prior_seconds = None, {}, 0.0
        self._start = time.perf_counter()

    def _records(self) -> dict:
        if not os.path.exists(self.path):
            return {"epochs": {}, "seconds": 0.0}
        with open(self.path) as f:
            return json.load(f)

    def on_train_begin(self, logs=None):
        self.first_epoch, self._epochs, self._prior_seconds = None, {}, 0.0
        self._start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        if self.first_epoch is None:
            self.first_epoch = epoch
            records = self._records()
            kept = {k: v for k, v in records["epochs"].items() if int(k) < epoch}
            self._prior_seconds = records["seconds"] if kept else 0.0
            self._epochs = kept

    def on_epoch_end(self, epoch, logs=None):
        self._epochs[str(epoch)] = {k: float(np.asarray(v)) for k, v in (logs or {}).items()}
        seconds = self._prior_seconds + time.perf_counter() - self._start
        write_json(self.path, {"epochs": self._epochs, "seconds": seconds}, atomic=True)

    def merged(self, history: dict, seconds: float) -> tuple[dict, float]:
        """`history`/`seconds` of this fit with the epochs an earlier process finished
        before the resume put in front; then forget the record."""
        earlier = [self._epochs[k] for k in sorted(self._epochs, key=int)
                   if self.first_epoch is not None and int(k) < self.first_epoch]
        if os.path.exists(self.path):
            os.remove(self.path)
        if not earlier:
            return history, seconds
        merged = {key: [e.get(key) for e in earlier] + list(values) for key, values in history.items()}
        return merged, seconds + self._prior_seconds


def callbacks_for(
    output_dir: str | None, tensorboard: bool = False, backup: bool = True, tag: str = "run"
) -> list[keras.callbacks.Callback]:
    """Crash-safe training (an atomic BackupAndRestore) and optional TensorBoard logs."""
    cbs: list[keras.callbacks.Callback] = []
    if output_dir:
        if backup:
            cbs.append(SafeBackupAndRestore(os.path.join(output_dir, "backup", tag)))
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


def predict_logits(model: keras.Model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of a whole dataset of `(x, y)` batches."""
    logits, labels = [], []
    # predict_on_batch under several workers concatenates every replica's copy of the
    # batch (N times the rows): call the model itself, on this worker only, instead.
    local = is_multi_worker(getattr(model, "distribute_strategy", None))
    for x, y in dataset:
        out = model(image_part(x), training=False) if local else model.predict_on_batch(image_part(x))
        logits.append(np.asarray(out))
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
    #: under a strategy of several replicas, BatchNorm normalises with the global
    #: batch's statistics (`sync_batchnorm`), so N replicas equal one device; False
    #: keeps Keras' per-replica statistics (less communication, other results)
    sync_batchnorm: bool = True

    def __post_init__(self):
        check_train_settings(self.epochs, self.lr, self.weight_decay)


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
    keeper = HistoryKeeper(os.path.join(output_dir, "backup", f"{tag}.history.json")) if output_dir else None
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
            + callbacks_for(output_dir, config.tensorboard, tag=tag) + list(callbacks),
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
