"""Per-replica loss scaling under `tf.distribute`: each replica's term divided by the
replica count, as `keras.losses.Loss` does, so N replicas give one device's update."""

from __future__ import annotations

import tensorflow as tf


def num_replicas() -> int:
    """Replicas of the current strategy (1 outside any)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def replica_scale(value):
    """Divide by the replica count, as `keras.losses.Loss` does."""
    n = num_replicas()
    return value if n == 1 else value * (1.0 / n)


def global_batch_size(local):
    """The global batch's size from this replica's `local` row count: `local` times
    the replica count (equal shares, as `keras.losses.Loss` scaling assumes). A term
    divided by the batch size beyond its mean over samples (ICKD's `/ B^2`) divides
    by this once, so the replicas' scaled terms sum to one device's."""
    return local * num_replicas()


def gather_batch(x):
    """The global batch of `x`: every replica's rows along axis 0, in replica order
    (identical on every replica). A term that is a statistic over the batch (DIST's
    per-class correlation) computed on it equals one device's on the global batch; the
    gradient of the gather sums the replicas' gradients and hands each replica its own
    rows', so N replicas, each scaled by 1/N, step as one device. Outside a replicated
    step, or on one replica, `x` itself."""
    if num_replicas() == 1 or tf.distribute.in_cross_replica_context():
        return x
    context = tf.distribute.get_replica_context()
    return x if context is None else context.all_gather(x, axis=0)
