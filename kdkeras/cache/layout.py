"""How one teacher output is stored: float32, float16, or (logits only, of either view) top-k.

Each cached entry (the logits, or a tapped feature) is one or more columns,
one file each, with a fixed number of bytes per example. Top-k keeps the k
largest logits, their class indices and the probability mass of the other
classes; decoding spreads that mass evenly over the other classes, as FKD's
soft labels do (so with k = the number of classes it is exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from kdkeras.keys import LOGITS, strong_key

STORAGES = ("float32", "float16", "topk")
#: the smallest probability a spread class gets when the other classes hold no mass
_TINY_MASS = 1e-30


@dataclass(frozen=True)
class Column:
    """One file of an entry: `dtype` values of `shape` per example."""

    entry: str
    name: str
    dtype: str
    shape: tuple

    @property
    def key(self) -> str:
        return f"{self.entry}.{self.name}"

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def _is_logits(entry: str) -> bool:
    """The logits, of the weak view or of the strong one (MLKD), which top-k can store."""
    return entry in (LOGITS, strong_key(LOGITS))


def check_storage(storage: str, top_k: int | None, num_classes: int | None = None) -> None:
    if storage not in STORAGES:
        raise ValueError(f"Unknown teacher-cache storage {storage!r}; accepted: {list(STORAGES)}.")
    if storage == "topk":
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"storage='topk' needs top_k, a positive int; got {top_k!r}.")
        if num_classes is not None and top_k > num_classes:
            raise ValueError(f"top_k={top_k} is more than the {num_classes} classes.")


def columns(entry: str, shape: tuple, storage: str, top_k: int | None) -> list[Column]:
    """The columns that store `entry` (per-example `shape`) in `storage`."""
    shape = tuple(int(d) for d in shape)
    if _is_logits(entry) and storage == "topk":
        index_dtype = "int16" if shape[-1] < 2**15 else "int32"
        return [Column(entry, "values", "float32", (top_k,)),
                Column(entry, "classes", index_dtype, (top_k,)),
                Column(entry, "rest", "float32", ())]
    return [Column(entry, "values", "float16" if storage == "float16" else "float32", shape)]


def encode(entry: str, array: np.ndarray, storage: str, top_k: int | None) -> dict[str, np.ndarray]:
    """A batch of `entry` (B, *shape) as its columns' arrays, by column name."""
    array = np.asarray(array, np.float32)
    if _is_logits(entry) and storage == "topk":
        classes = np.argsort(-array, axis=-1, kind="stable")[:, :top_k]
        values = np.take_along_axis(array, classes, axis=-1)
        z = array.astype(np.float64)
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        rest = np.clip(1.0 - np.take_along_axis(p, classes, axis=-1).sum(-1), 0.0, 1.0)
        index_dtype = "int16" if array.shape[-1] < 2**15 else "int32"
        return {"values": values, "classes": classes.astype(index_dtype), "rest": rest.astype(np.float32)}
    return {"values": array.astype(np.float16 if storage == "float16" else np.float32)}


def decode(entry: str, cols: dict[str, tf.Tensor], storage: str, shape: tuple) -> tf.Tensor:
    """The float32 batch of `entry` back from its columns (TF ops, in the input pipeline)."""
    if not (_is_logits(entry) and storage == "topk"):
        return tf.cast(cols["values"], tf.float32)
    values, classes, rest = cols["values"], tf.cast(cols["classes"], tf.int32), cols["rest"]
    num_classes, k = int(shape[-1]), int(values.shape[-1])
    if k == num_classes:  # every class kept: the logits exactly
        return tf.gather(values, tf.argsort(classes, axis=-1), batch_dims=1)
    # log-sum-exp of all logits from the kept ones and the mass of the rest,
    # then each other class gets logit lse + log(rest / (K - k)).
    mass = tf.clip_by_value(rest, 0.0, 1.0 - 1e-7)
    lse = tf.reduce_logsumexp(values, axis=-1) - tf.math.log1p(-mass)
    fill = lse + tf.math.log(tf.maximum(mass / float(num_classes - k), _TINY_MASS))
    batch = tf.shape(values)[0]
    full = tf.tile(fill[:, None], [1, num_classes])
    rows = tf.tile(tf.range(batch)[:, None], [1, k])
    return tf.tensor_scatter_nd_update(full, tf.stack([rows, classes], axis=-1), values)
