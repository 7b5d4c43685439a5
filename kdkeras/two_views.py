"""Two views of each batch (MLKD's weak and strong augmentations): each network runs
once on both, concatenated along the batch, and its outputs are split back, the
strong view's under `keys.strong_key(entry)`. Other methods see the weak view's
outputs under the usual keys, as without a strong view."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import tensorflow as tf

from kdkeras.keys import LOGITS, STRONG_IMAGE, strong_key


def strong_view(x: Any, methods: Sequence, required: bool) -> Any:
    """The batch's strong view when one of `methods` reads it (`requires_strong_view`),
    else None. `required` (a training step) refuses a batch without one, naming them."""
    names = [m.name for m in methods if m.requires_strong_view]
    strong = x.get(STRONG_IMAGE) if isinstance(x, dict) else None
    if required and names and strong is None:
        raise ValueError(
            f"Methods {names} train on a weak and a strong view of each batch, but x has no "
            f"{STRONG_IMAGE!r} entry: load the training data with kdkeras.data.load(..., strong_view=True) "
            f"(x = {{'image': weak, {STRONG_IMAGE!r}: strong}}).")
    return strong if names else None


def split_views(out: dict | None, n) -> dict | None:
    """Outputs of a pass over [weak; strong] as one dict: rows [:n] under their own
    keys, rows [n:] under `strong_key(key)`."""
    if out is None:
        return None
    split = {}
    for key, value in out.items():
        split[key], split[strong_key(key)] = value[:n], value[n:]
    return split


def run_on_views(run: Callable[[Any, Any], dict | None], images, strong, y) -> dict | None:
    """`run(images, y)`, or with a strong view one pass over both views (labels repeated)."""
    if strong is None:
        return run(images, y)
    images = tf.convert_to_tensor(images)
    both = tf.concat([images, tf.cast(strong, images.dtype)], axis=0)
    labels = None if y is None else tf.concat([y, y], axis=0)
    return split_views(run(both, labels), tf.shape(images)[0])


def student_loss_on_views(loss: Callable, y, out: dict, sample_weight):
    """The student's supervised loss on each view it ran on, summed (MLKD's CE on both)."""
    total = loss(y, out[LOGITS], sample_weight)
    strong = out.get(strong_key(LOGITS))
    if strong is None or total is None:
        return total
    return total + loss(y, strong, sample_weight)
