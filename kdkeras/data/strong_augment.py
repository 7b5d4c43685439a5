"""The strong view of an example (MLKD's second view): a random resized crop, a flip,
colour jitter and greyscale, each drawn from a stateless seed so a replayed epoch
rebuilds it exactly.

What it stands for: the torchvision pipeline `RandomResizedCrop(size)` (area 8-100 %,
aspect 3/4-4/3), `RandomHorizontalFlip`, `ColorJitter(0.4, 0.4, 0.4, 0.1)` applied with
probability 0.8, `RandomGrayscale(0.2)`. Greyscale images get the crop, the flip and
the brightness/contrast part of the jitter only.
"""

from __future__ import annotations

import tensorflow as tf

#: folded into an example's weak-view seed to give its strong-view seed
STRONG_SALT = 0x5742
AREA = (0.08, 1.0)
ASPECT = (3.0 / 4.0, 4.0 / 3.0)
#: brightness, contrast, saturation (factors 1 +- each) and hue (+- of a turn)
JITTER = (0.4, 0.4, 0.4, 0.1)
JITTER_PROB = 0.8
GREY_PROB = 0.2


def strong_seed(seed: tf.Tensor) -> tf.Tensor:
    """The strong view's seed pair from the example's weak-view (crop/flip) seed pair."""
    return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), STRONG_SALT)


def _resized_crop(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """A crop of random area and aspect, resized (bilinear) back to the image's size."""
    size = tf.shape(image)
    begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
        size, tf.zeros([1, 0, 4], tf.float32), seed=seed, min_object_covered=0.0,
        aspect_ratio_range=ASPECT, area_range=AREA, max_attempts=10, use_image_if_no_bounding_boxes=True)
    crop = tf.slice(image, begin, extent)
    return tf.image.resize(crop[None], size[:2], method="bilinear")[0]


def _jitter(image: tf.Tensor, seeds) -> tf.Tensor:
    brightness, contrast, saturation, hue = JITTER
    factor = tf.random.stateless_uniform([], seeds[0], 1.0 - brightness, 1.0 + brightness)
    image = tf.clip_by_value(image * factor, 0.0, 1.0)
    image = tf.image.stateless_random_contrast(image, 1.0 - contrast, 1.0 + contrast, seeds[1])
    image = tf.clip_by_value(image, 0.0, 1.0)
    if image.shape[-1] == 3:
        image = tf.image.stateless_random_saturation(image, 1.0 - saturation, 1.0 + saturation, seeds[2])
        image = tf.image.stateless_random_hue(image, hue, seeds[3])
    return tf.clip_by_value(image, 0.0, 1.0)


def strong_augment_image(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """The strong view of one HWC float image in [0, 1], deterministic given `seed` (shape [2])."""
    seeds = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 8))
    shape = image.shape
    image = _resized_crop(image, seeds[0])
    image = tf.image.stateless_random_flip_left_right(image, seed=seeds[1])
    apply = tf.random.stateless_uniform([], seeds[2]) < JITTER_PROB
    image = tf.where(apply, _jitter(image, seeds[3:7]), image)
    if image.shape[-1] == 3:
        grey = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))
        image = tf.where(tf.random.stateless_uniform([], seeds[7]) < GREY_PROB, grey, image)
    return tf.ensure_shape(image, shape)
