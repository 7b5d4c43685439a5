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
