"""Where training runs: tf.distribute strategies, each process's multi-worker role,
and BatchNorm synchronised across replicas (so N replicas train as one device)."""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multiworker")


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
