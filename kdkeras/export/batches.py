"""Numpy batches from whatever a user passes as data (a tf.data dataset of
`(x, y)` or `x`, `{"image": ...}` inputs, arrays, iterables): the one reader
behind int8 calibration and LiteRT evaluation."""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import tensorflow as tf

from kdkeras.keys import image_part


def to_numpy(t: Any) -> np.ndarray:
    return t.numpy() if hasattr(t, "numpy") else np.asarray(t)


def labels_of(y: Any) -> np.ndarray | None:
    """Integer labels of shape (N,) from sparse or one-hot `y` (None stays None)."""
    if y is None:
        return None
    y = to_numpy(y)
    if y.ndim > 1 and y.shape[-1] > 1:  # one-hot / soft targets
        y = y.argmax(-1)
    return y.reshape(-1).astype(np.int64)


def iter_batches(data: Any, max_batches: int | None = None,
                 batch_size: int = 64) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Yield (x float32, y int labels or None) numpy batches of `data`.

    Accepts a tf.data dataset or any iterable of (x, y) / (x, y, w) / x
    batches (x may be {"image": ...}), a numpy array of images, or a pair of
    numpy arrays (x, y); arrays are cut into batches of `batch_size`.
    """
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], np.ndarray):
        x_all, y_all = data
        elements: Any = ((x_all[i:i + batch_size], y_all[i:i + batch_size])
                         for i in range(0, len(x_all), batch_size))
    elif isinstance(data, np.ndarray):
        elements = (data[i:i + batch_size] for i in range(0, len(data), batch_size))
    elif isinstance(data, tf.data.Dataset):
        elements = data.as_numpy_iterator()
    else:
        elements = iter(data)
    for n, element in enumerate(elements):
        if max_batches is not None and n >= max_batches:
            return
        if isinstance(element, (tuple, list)) and len(element) in (2, 3):
            x, y = element[0], element[1]
        else:
            x, y = element, None
        yield np.asarray(to_numpy(image_part(x)), dtype=np.float32), labels_of(y)
