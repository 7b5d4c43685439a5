"""Reading a model's predictions over a dataset: batches counted, logits and labels
gathered (each worker on its own under several workers), top-1 accuracy."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from kdkeras.keys import IMAGE, image_part
from kdkeras.training.strategy import is_multi_worker


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


def drop_index(dataset):
    """Plain (image, label) batches for models that do not read the index."""
    spec = dataset.element_spec[0]
    if isinstance(spec, dict):
        return dataset.map(lambda x, y: (x[IMAGE], y))
    return dataset
