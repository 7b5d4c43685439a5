"""Copies of each batch that a method asks both networks to run on (SSKD's rotations).

A method declares them by overriding `Method.batch_copies(images)`. The Distiller
then stacks the batch and its copies along the batch axis, runs each network once
on the stack, and hands that method the outputs of the whole stack (the batch's own
rows first, then each copy's rows, copy after copy); the CE, the metrics and every
other method read the batch's own rows only. The copies are made inside the step,
on the device: the data pipeline, its transfers and the teacher cache never see them.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from kdkeras.tap_plan import uncacheable_reason

__all__ = ["copying_method", "stack", "own_rows"]


def copying_method(methods: Sequence, teacher_cache=None, gradient_keys: Sequence[str] = ()):
    """The one method of `methods` that makes copies of the batch, or None.

    Refuses two such methods (one Distiller runs each network on one stack), a teacher
    cache (it holds the teacher's outputs on the batch's own images only) and methods
    reading CE gradients alongside (their gradients would be taken over the copies too).
    """
    copying = [m for m in methods if m.has_batch_copies]
    if not copying:
        return None
    names = [m.name for m in copying]
    if len(copying) > 1:
        raise ValueError(f"Methods {names} each make copies of the batch, but a Distiller runs each network "
                         "on one stack: train them in separate Distillers (or stages).")
    if teacher_cache is not None:
        raise ValueError(uncacheable_reason(copying[0]))
    views = [m.name for m in methods if getattr(m, "requires_strong_view", False)]
    if views:
        raise ValueError(f"Method {names[0]!r} runs the networks on copies of the batch and {views} on a strong "
                         "view of it: one Distiller runs one of the two; train them in separate Distillers.")
    if gradient_keys:
        raise ValueError(f"Method {names[0]!r} runs the networks on copies of the batch, and other methods read "
                         f"CE gradients ({list(gradient_keys)}), which would then be taken over the copies too: "
                         "train them in separate Distillers.")
    return copying[0]


def stack(images, method):
    """`images` followed by `method.batch_copies(images)` along the batch axis
    (`images` itself when `method` is None); each copy must have the images' shape."""
    if method is None:
        return images
    images = tf.convert_to_tensor(images)
    copies = list(method.batch_copies(images))
    for copy in copies:
        if tuple(copy.shape[1:]) != tuple(images.shape[1:]):
            raise ValueError(f"Method {method.name!r} made a copy of the batch of shape {tuple(copy.shape)}, "
                             f"but the images have shape {tuple(images.shape)}: copies must keep the image shape.")
    return tf.concat([images, *copies], axis=0)


def own_rows(outputs, method, y):
    """The outputs' rows of the batch itself (the first `len(y)`), without the copies;
    `outputs` as they are when no method makes copies (or when they are None)."""
    if method is None or outputs is None:
        return outputs
    n = tf.shape(y)[0]
    return {k: v[:n] for k, v in outputs.items()}
