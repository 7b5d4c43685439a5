"""From raw examples to training batches: index, shuffle, decode, preprocess, augment, batch.

Order of operations (per split):
    `limit` examples (stratified by class, seeded) -> the training or validation part of
    them (`validation_split`, stratified, seeded by `seed`) -> enumerate (index 0..N-1, before any shuffling)
    -> shuffle (raw elements: cheap) -> repeat -> decode -> float32 [0, 1]
    -> resize (bilinear) -> channel conversion -> augment -> batch -> prefetch
"""

from __future__ import annotations

import numbers

import tensorflow as tf

from kdkeras.data.replay import ReplayClock, augment_seed, epoch_shuffle, view_of
from kdkeras.data.sources import DatasetInfo, ValidationSplit, check_validation_size, get_source, split_base
from kdkeras.data.strong_augment import strong_augment_image, strong_seed
from kdkeras.keys import IMAGE, INDEX, STRONG_IMAGE

AUGMENT_PAD = 4
# Flips change the meaning of these (or their images are tiny greyscale digits/clothes).
NO_AUGMENT_BY_DEFAULT = frozenset({"fashion_mnist", "mnist"})


# ------------------------------------------------------------------ image functions
def convert_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
    """Converts an (..., C) float image to `channels`: 1->3 repeats, 3/4->1 greyscale, 4->3 drops alpha."""
    current = image.shape[-1]
    if current == channels:
        return image
    if current == 1 and channels == 3:
        return tf.repeat(image, 3, axis=-1)
    if current in (3, 4) and channels == 1:
        return tf.image.rgb_to_grayscale(image[..., :3])
    if current == 4 and channels == 3:
        return image[..., :3]
    raise ValueError(f"Cannot convert images with {current} channels to channels={channels}; "
                     f"accepted conversions: 1->3, 3->1, 4->3, 4->1")


def fit_images(images, shape) -> tf.Tensor:
    """A batch of float images resized (bilinear) and channel-converted to a
    model's (H, W, C) input, e.g. to feed one pipeline to networks of other sizes."""
    h, w, c = shape
    x = tf.convert_to_tensor(images, tf.float32)
    if tuple(x.shape[1:3]) != (h, w):
        x = tf.image.resize(x, (h, w))
    return convert_channels(x, c)


def preprocess_image(
    image: tf.Tensor,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
) -> tf.Tensor:
    """uint8 (or float) HWC image -> float32 in [0, 1], resized (bilinear) and channel-converted."""
    image = tf.image.convert_image_dtype(image, tf.float32)
    if image_size is not None and tuple(image.shape[-3:-1]) != tuple(image_size):
        image = tf.image.resize(image, image_size, method="bilinear")
        image = tf.clip_by_value(image, 0.0, 1.0)
    if channels is not None:
        image = convert_channels(image, channels)
    return image


def augment_image(image: tf.Tensor, seed: tf.Tensor, pad: int = AUGMENT_PAD) -> tf.Tensor:
    """Standard CIFAR-style augmentation of one HWC image, deterministic given `seed` (shape [2]).

    Pads `pad` pixels per side with REFLECT padding (zero padding if the image is
    not larger than `pad`), random-crops back to the original size, then flips
    left-right with probability 1/2. Values stay in the input range.
    """
    height, width = image.shape[0], image.shape[1]
    tiny = height is not None and width is not None and min(height, width) <= pad
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="CONSTANT" if tiny else "REFLECT")
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = tf.image.stateless_random_crop(padded, tf.shape(image), seed=crop_seed)
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


# -------------------------------------------------------------------- validation
def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_args(batch_size, image_size, channels, limit, seed) -> tuple[int, int] | None:
    """Validates load()'s scalar arguments; returns image_size as a tuple (or None)."""
    if not _is_int(batch_size) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if channels is not None and channels not in (1, 3):
        raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")
    if limit is not None and (not _is_int(limit) or limit <= 0):
        raise ValueError(f"limit must be None or a positive int, got {limit!r}")
    if seed is not None and not _is_int(seed):
        raise ValueError(f"seed must be None or an int, got {seed!r}")
    if image_size is None:
        return None
    if (
        not isinstance(image_size, (tuple, list))
        or len(image_size) != 2
        or not all(_is_int(v) and v > 0 for v in image_size)
    ):
        raise ValueError(
            f"image_size must be None or a (height, width) pair of positive ints, got {image_size!r}"
        )
    return int(image_size[0]), int(image_size[1])


def default_augment(info: DatasetInfo, split: str) -> bool:
    """Augment the train split, except datasets where flips are wrong (mnist, fashion_mnist)."""
    return split_base(split) == info.train_split and info.name not in NO_AUGMENT_BY_DEFAULT


# ------------------------------------------------------------------------- load
def _attach_augment_seeds(ds: tf.data.Dataset, augment: bool, seed: int | None) -> tf.data.Dataset:
    """Pairs each element with an int64 that seeds its augmentation (fresh stream each epoch)."""
    if not augment:
        return ds.map(lambda index, item: ((index, item), tf.constant(0, tf.int64)))
    noise = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    return tf.data.Dataset.zip(ds, noise)


def load(
    name: str,
    split: str = "train",
    *,
    batch_size: int = 64,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    augment: bool | None = None,
    shuffle: bool | None = None,
    limit: int | None = None,
    with_index: bool = False,
    seed: int | None = None,
    data_dir: str | None = None,
    drop_remainder: bool = False,
    repeat: bool = False,
    replay: bool | ReplayClock = False,
    views: int | None = None,
    strong_view: bool = False,
    teacher_cache=None,
    validation_split: float | int | None = None,
    subset: str | None = None,
    train_part_limit: int | None = None,
) -> tf.data.Dataset:
    """Batches `(x, y)` of one split: x float32 NHWC in [0, 1], y int32 of shape (B,).

    With `with_index`, x is {"image": x, "index": int64}, where index is the
    example's position among the `limit` examples kept of the unshuffled split
    (0..N-1), assigned before shuffling so it is stable across epochs. A `limit`
    keeps every class in proportion, the same subset on every run (a fixed seed,
    `sources.stratified_positions`), never just the first N examples.
    shuffle/augment default to True on the train split only (augment: never for
    mnist/fashion_mnist); augmentation is reflect-pad 4 + random crop + random
    horizontal flip (see `augment_image`). `seed` makes shuffling and
    augmentation reproducible.

    `replay` (True, or a `ReplayClock` to share) makes every epoch rebuildable:
    its shuffle order a function of (seed, epoch) and each example's crop and
    flip of (seed, view, index), the view being the epoch or, with `views=K`,
    the epoch mod K (see `kdkeras.data.replay`). `strong_view` adds
    `x["image_strong"]` (x becomes a dict): a second, strongly augmented view of
    each example (`kdkeras.data.strong_augment`, MLKD's), its seed folded from the
    example's crop/flip seed, so it is replayed with it. `teacher_cache`, a
    `kdkeras.cache.TeacherCache` of this very data, adds `x["teacher"]`: the
    teacher's cached outputs for each example's view (replay and the index
    are then on; data other than the cache's is refused).

    `validation_split` (a fraction in (0, 1) or a count; 0/None: none) carves a
    validation split out of the `limit` examples, stratified by class and seeded
    by `seed` (None: 0), and `subset` picks its part: "training" (the rest, the
    default) or "validation" (never augmented or shuffled unless asked). Indices
    then count the examples of that part (see `sources.validation`).
    `train_part_limit` keeps only that many examples of the training part (stratified,
    the same on every call; a tuning trial's), leaving the validation part whole.
    """
    image_size = _check_args(batch_size, image_size, channels, limit, seed)
    validation = _validation(validation_split, subset, seed, train_part_limit)
    source = get_source(name, data_dir)
    info = source.info
    split = source.resolve_split(split)
    held_out = validation is not None and validation.subset == "validation"
    augment = default_augment(info, split) and not held_out if augment is None else bool(augment)
    shuffle = split_base(split) == info.train_split and not held_out if shuffle is None else bool(shuffle)
    if image_size is None and None in info.image_shape[:2]:
        raise ValueError(
            f"Images of {info.name!r} have varying sizes; pass image_size=(height, width)"
        )
    raw = source.raw(split, limit, validation)
    if teacher_cache is not None:
        teacher_cache.check_data(**data_spec(info, split, image_size, channels, augment, limit, seed,
                                             validation, strong_view))
        if raw.num_examples is not None and raw.num_examples != teacher_cache.num_examples:
            raise ValueError(f"The split has {raw.num_examples} examples, the teacher cache "
                             f"{teacher_cache.num_examples}.")
        with_index, views = True, teacher_cache.views
        replay = replay or True

    def example(index, raw_x, label, aug_seed):
        image = plain = preprocess_image(raw.decode(raw_x), image_size, channels)
        if augment:
            image = augment_image(image, aug_seed)
        x = {IMAGE: image, INDEX: index} if with_index else image
        if strong_view:
            x = {**(x if with_index else {IMAGE: image}),
                 STRONG_IMAGE: strong_augment_image(plain, strong_seed(aug_seed))}
        return x, tf.cast(label, tf.int32)

    if not (replay or views):
        ds = raw.dataset.enumerate()  # (index, (raw, label)): index before any shuffling
        if shuffle:
            ds = ds.shuffle(raw.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
        ds = _attach_augment_seeds(ds, augment or strong_view, seed)
        ds = ds.map(lambda indexed, s: example(indexed[0], *indexed[1], tf.stack([s, indexed[0]])),
                    num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        return ds.prefetch(tf.data.AUTOTUNE)

    clock = replay if isinstance(replay, ReplayClock) else ReplayClock()

    def one_epoch(epoch):
        view = view_of(epoch, views)
        ds = raw.dataset.enumerate()
        if shuffle:
            ds = epoch_shuffle(ds, raw.shuffle_buffer, seed, epoch)
        ds = ds.map(lambda i, item: example(i, *item, augment_seed(seed, view, i)),
                    num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        if teacher_cache is not None:
            ds = ds.map(lambda x, y: (teacher_cache.attach(x, view), y))
        return ds

    starts = tf.data.Dataset.from_tensors(tf.constant(0, tf.int64))
    ds = (starts.repeat() if repeat else starts).map(lambda _: clock.next_epoch()).flat_map(one_epoch)
    if not repeat and raw.num_examples is not None:  # flat_map hides the length: restate it
        full, extra = divmod(raw.num_examples, batch_size)
        ds = ds.apply(tf.data.experimental.assert_cardinality(full + (extra > 0 and not drop_remainder)))
    return ds.prefetch(tf.data.AUTOTUNE)


def _validation(size, subset: str | None, seed: int | None,
                train_part_limit: int | None = None) -> ValidationSplit | None:
    """load()'s validation part, or None without a validation split."""
    size = check_validation_size(size)
    if size is None:
        if subset is not None or train_part_limit is not None:
            given = f"subset={subset!r}" if subset is not None else f"train_part_limit={train_part_limit!r}"
            raise ValueError(f"{given} needs a validation_split (a fraction or a count) to pick from.")
        return None
    return ValidationSplit(size, 0 if seed is None else int(seed), subset or "training", train_part_limit)


def data_spec(info: DatasetInfo, split: str, image_size, channels, augment: bool, limit, seed,
              validation: ValidationSplit | None = None, strong_view: bool = False) -> dict:
    """What identifies the images a pipeline yields (a teacher cache's data
    fingerprint): source, split, examples, size, channels and augmentation;
    the seed only where it changes the images (with augmentation). A limit is
    marked stratified: caches of the first-N subsets of older versions are refused.
    A validation split adds its size, part and seed (each seed carves its own); a
    strong view (MLKD) adds itself, and the seed, which then changes the images."""
    h, w, c = info.image_shape
    spec = {"dataset": info.name, "split": split, "limit": limit,
            "limit_subset": "stratified" if limit else None,
            "image_size": list(image_size) if image_size else [h, w],
            "channels": int(channels or c), "augment": bool(augment),
            "seed": seed if augment or strong_view else None}
    if strong_view:
        spec["strong_view"] = True
    return spec if validation is None else {**spec, **validation.spec()}
