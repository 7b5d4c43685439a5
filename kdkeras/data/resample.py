"""Changed copies of a training set, for experiments that train many models:
bootstrap resamples or halves (bias-variance), and labels made noisy (De-KD).

Both read the dataset index (`load(..., with_index=True)`), so the same
examples are chosen or corrupted in every epoch and for every method.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from kdkeras.keys import IMAGE, INDEX

RESAMPLES = ("bootstrap", "half", "seed")


def resampled(indexed: tf.data.Dataset, num_examples: int, how: str, seed: int,
              batch_size: int) -> tf.data.Dataset:
    """`(image, label)` batches of one resample of an indexed training set.

    `bootstrap` repeats example i `counts[i]` times (counts ~ Multinomial(N, 1/N)),
    `half` keeps a random half, `seed` keeps every example (only the seed of
    the model trained on it differs).
    """
    if how not in RESAMPLES:
        raise ValueError(f"Unknown resample {how!r}; accepted: {list(RESAMPLES)}.")
    rng = np.random.default_rng(seed)
    ds = indexed.unbatch()
    size = (num_examples + 1) // 2 if how == "half" else num_examples
    if how == "bootstrap":
        counts = tf.constant(np.bincount(rng.integers(0, num_examples, num_examples),
                                         minlength=num_examples), tf.int64)

        def repeat(x, y):
            return tf.data.Dataset.from_tensors((x[IMAGE], y)).repeat(tf.gather(counts, x[INDEX]))

        ds = ds.flat_map(repeat).shuffle(4096, seed=seed, reshuffle_each_iteration=True)
    elif how == "half":
        keep = tf.constant(rng.permutation(num_examples) < size)
        ds = ds.filter(lambda x, y: tf.gather(keep, x[INDEX])).map(lambda x, y: (x[IMAGE], y))
    else:
        ds = ds.map(lambda x, y: (x[IMAGE], y))
    # Known length: clean progress bars and schedules from the first epoch.
    ds = ds.apply(tf.data.experimental.assert_cardinality(size))
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def noisy_labels(indexed: tf.data.Dataset, num_examples: int, num_classes: int, fraction: float,
                 seed: int) -> tf.data.Dataset:
    """`(image, label)` batches where a fixed `fraction` of the examples (chosen
    once by index) carry a uniformly random class instead of their label."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction!r}.")
    rng = np.random.default_rng(seed)
    flip = tf.constant(rng.random(num_examples) < fraction)
    random_class = tf.constant(rng.integers(0, num_classes, num_examples), tf.int32)

    def relabel(x, y):
        index = x[INDEX]
        return x[IMAGE], tf.where(tf.gather(flip, index), tf.gather(random_class, index), y)

    return indexed.map(relabel, num_parallel_calls=tf.data.AUTOTUNE)
