"""Replayable epochs: shuffle order and augmentation as functions of (seed, epoch, index).

A replayed pipeline counts its own passes with a `ReplayClock`: pass k is
epoch `start_epoch + k`, its shuffle order is drawn from (seed, epoch) and
each example's crop and flip from (seed, view, index), where the view is the
epoch itself or, with `views=K`, the epoch modulo K. So epoch e of a run can
be rebuilt exactly in another process (a resumed run, or a teacher-output
cache that stored the teacher's answer to every (view, example)).
"""

from __future__ import annotations

import keras
import tensorflow as tf

_SHUFFLE, _AUGMENT = 0, 1


class ReplayClock:
    """The epoch of a replayed pipeline: each pass over it advances the clock by one.

    Keras creates the iterator of the next epoch before `on_epoch_begin` runs,
    so the pipeline advances the clock itself when a pass starts; `callback()`
    only aligns it with the first epoch of a `fit` (a resumed run's
    `initial_epoch`).
    """

    def __init__(self, start_epoch: int = 0):
        with tf.device("/cpu:0"):
            self.variable = tf.Variable(int(start_epoch) - 1, dtype=tf.int64, trainable=False,
                                        name="replay_epoch")

    def next_epoch(self) -> tf.Tensor:
        """Advance and return the epoch of the pass that starts now (called by the pipeline)."""
        return self.variable.assign_add(1)

    def start_at(self, epoch: int) -> None:
        """Make the next pass epoch `epoch`."""
        self.variable.assign(int(epoch) - 1)

    @property
    def epoch(self) -> int:
        """The epoch of the pass that started last (-1 before any)."""
        return int(self.variable.numpy())

    def callback(self) -> keras.callbacks.Callback:
        """A Keras callback that starts the clock at the first epoch of each `fit`."""
        return _StartClock(self)


class _StartClock(keras.callbacks.Callback):
    def __init__(self, clock: ReplayClock):
        super().__init__()
        self.clock = clock
        self._started = False

    def on_train_begin(self, logs=None):
        self._started = False

    def on_epoch_begin(self, epoch, logs=None):
        # Only the first epoch of a fit: later passes start (and advance the
        # clock) before this callback runs.
        if not self._started:
            self.clock.start_at(epoch)
            self._started = True


def _derived(seed: int | None, *parts) -> tf.Tensor:
    """A stateless seed pair (shape [2], int64) folded from `seed` and each part."""
    key = tf.constant([0 if seed is None else int(seed), 0x6B646B], tf.int64)
    for part in parts:
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(part, tf.int64))
    return key


def shuffle_seed(seed: int | None, epoch) -> tf.Tensor:
    """The int64 shuffle seed of an epoch."""
    pair = _derived(seed, _SHUFFLE, epoch)
    return tf.random.stateless_uniform([], pair, minval=None, maxval=None, dtype=tf.int64)


def epoch_shuffle(ds: tf.data.Dataset, buffer_size: int, seed: int | None, epoch) -> tf.data.Dataset:
    """`ds` shuffled in the order of (seed, epoch); call it where `epoch` is a
    tensor (inside `flat_map`).

    With a global TF seed set (`keras.utils.set_random_seed`), `Dataset.shuffle`
    compares its seed pair with (0, 0) in Python, which a tensor seed cannot
    be; the graph seed is lifted while the op is made (the seed is ours).
    """
    graph = tf.compat.v1.get_default_graph()
    global_seed, graph.seed = graph.seed, None
    try:
        return ds.shuffle(buffer_size, seed=shuffle_seed(seed, epoch), reshuffle_each_iteration=False)
    finally:
        graph.seed = global_seed


def augment_seed(seed: int | None, view, index) -> tf.Tensor:
    """The stateless seed pair of one example's augmentation in one view."""
    return _derived(seed, _AUGMENT, view, index)


def view_of(epoch, views: int | None):
    """The augmentation view of an epoch: the epoch itself, or epoch mod `views`."""
    return epoch if not views else tf.math.floormod(epoch, tf.cast(views, tf.int64))
