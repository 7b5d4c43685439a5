"""A run's teacher-output cache: each part of its data (train, test, and the
validation split when there is one) built or reused (with the taps of a sweep's
other methods too), then read with the batches so that training runs no teacher. The methods are left as they are: the cache a run trains from names each
method's teacher taps (`TeacherCache.method_taps`), which the Distiller reads."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Sequence

import keras

from kdkeras import cache as cache_lib
from kdkeras import data as data_lib
from kdkeras import methods as methods_lib
from kdkeras.experiment.config import DistillSpec, RunConfig
from kdkeras.experiment.data import DataSetup
from kdkeras.experiment.teacher import Teacher


def _part(data: DataSetup, split: str | None, part: str | None) -> str:
    """The part of `data` (`experiment.data.PARTS`) a cache is for: `part`, else the
    training split's name means "train" and any other split "test"."""
    return part or ("train" if split == data.info.train_split else "test")


def teacher_cache_for(
    path: str, teacher: keras.Model, methods: Sequence, data: DataSetup, split: str | None = None, *,
    part: str | None = None, views: int = 1, storage: str = "float32", top_k: int | None = None,
    max_bytes: int | None = None, rebuild: bool = False,
) -> cache_lib.TeacherCache:
    """The teacher cache of one part of `data` (`part`: "train", "validation" or "test";
    else named by its `split`) for `methods` at `path`: reused when it matches (the
    validation split included), else built (views of the training split's augmentation
    replayed)."""
    c = data.config
    split, options = data.part(_part(data, split, part))
    image_size, channels = tuple(data.input_shape[:2]), data.input_shape[2]
    taps, method_taps = cache_lib.teacher_taps(teacher, methods)
    carved = (data_lib.ValidationSplit(options["validation_split"], c.seed, options["subset"],
                                       options.get("train_part_limit"))
              if options.get("validation_split") else None)
    spec = data_lib.data_spec(data.info, split, image_size, channels, options["augment"], options["limit"],
                              c.seed, carved, options.get("strong_view", False))
    num_examples = data_lib.num_examples(c.dataset, split, options["limit"], c.data_dir, carved)
    return cache_lib.build_teacher_cache(
        path, teacher, lambda v: cache_view_pipeline(data, split, v, views, part=part),
        num_examples=num_examples, views=views, data=spec, taps=taps, method_taps=method_taps,
        storage=storage, top_k=top_k, max_bytes=max_bytes, rebuild=rebuild)


def cache_view_pipeline(data: DataSetup, split: str | None, view: int, views: int, part: str | None = None):
    """The batches a teacher cache's `view` of one part of `data` is built from: the
    training part as epoch `view` yields them (its order, crops and batch size), the
    validation and test parts as evaluation reads them. The cached outputs then equal
    the online ones bit for bit: some CPU kernels round an image differently at the end
    of a partial batch."""
    split, options = data.part(_part(data, split, part))
    return data.load(split, **options, with_index=True, replay=data_lib.ReplayClock(view), views=views)


def cached_data(data: DataSetup, train_cache, test_cache, validation_cache=None) -> DataSetup:
    """`data` read with teacher caches: its batches carry the teacher's outputs (the
    validation split's too, given its cache)."""
    clock = data_lib.ReplayClock()

    def read(part, cache, **extra):
        split, options = data.part(part)
        return data.load(split, **options, teacher_cache=cache, **extra)

    train = read("train", train_cache, replay=clock)
    test = read("test", test_cache)
    validation = data.validation if validation_cache is None else read("validation", validation_cache)
    return dataclasses.replace(data, train=train, test=test, clock=clock, validation=validation)


def for_methods(cache: cache_lib.TeacherCache, taps: Sequence[str],
                method_taps: dict[str, list[str]]) -> cache_lib.TeacherCache:
    """`cache` reading only `taps` (and the logits), naming each method's teacher taps
    as resolved on the teacher now: a cache a sweep built serves a method whose
    layers it holds even when the sweep did not name that method."""
    selected = cache.select(taps)  # refuses taps the cache lacks, naming them
    manifest = {**selected.manifest, "method_taps": {**selected.manifest.get("method_taps", {}), **method_taps}}
    return cache_lib.TeacherCache(selected.path, manifest, only=list(taps))


@dataclass
class CachedRun:
    """What a run trains from when its teacher is cached."""

    #: the run's data, its batches carrying the teacher's outputs
    data: DataSetup
    train_cache: cache_lib.TeacherCache
    #: seconds spent building or opening both caches
    seconds: float


def with_teacher_cache(spec: DistillSpec, config: RunConfig, teacher: Teacher, methods: Sequence,
                       data: DataSetup) -> CachedRun:
    """Build or reuse the caches of each part of the data (with the taps of
    `spec.teacher_cache_methods` too), read only what `methods` need, then forget the
    teacher model."""
    views = spec.teacher_cache_views or config.epochs
    cache_lib.warn_views(views, config.epochs, data.train_augment)
    max_bytes = None if spec.teacher_cache_max_gb is None else int(spec.teacher_cache_max_gb * 2**30)
    options = dict(storage=spec.teacher_cache_storage, top_k=spec.teacher_cache_top_k, max_bytes=max_bytes,
                   rebuild=spec.rebuild_teacher_cache)
    extra = sweep_methods(spec.teacher_cache_methods, data.num_train)
    start_time = time.perf_counter()
    parts = [("train", views), ("test", 1)] + ([("validation", 1)] if data.validation is not None else [])
    caches = [teacher_cache_for(os.path.join(spec.teacher_cache, part), teacher.model, [*extra, *methods],
                                data, part=part, views=v, **options)
              for part, v in parts]
    seconds = time.perf_counter() - start_time
    needed, method_taps = cache_lib.teacher_taps(teacher.model, methods)
    train_cache, test_cache, *validation_cache = (for_methods(c, needed, method_taps) for c in caches)
    validation_cache = validation_cache[0] if validation_cache else None
    if teacher.top1 is None:
        teacher.top1 = test_cache.teacher_top1
        print(f"teacher top1={teacher.top1:.4f} (from the teacher cache)")
    if validation_cache is not None and teacher.val_top1 is None:
        teacher.val_top1 = validation_cache.teacher_top1
    teacher.model = None  # training reads the cache: the teacher need not stay in memory
    return CachedRun(cached_data(data, train_cache, test_cache, validation_cache), train_cache, seconds)


def sweep_methods(spec: str, num_examples: int) -> list:
    """The methods of `DistillSpec.teacher_cache_methods` ("at,fitnet" or "at+fitnet"), built
    only to name their teacher taps; those that cannot be cached are refused."""
    names = [n.strip() for n in spec.replace("+", ",").split(",") if n.strip()]
    return [m for name in names for m in methods_lib.from_spec(name, num_examples=num_examples)]
