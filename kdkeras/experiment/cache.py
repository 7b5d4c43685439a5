"""A run's teacher-output cache: both splits built or reused (with the taps of a
sweep's other methods too), then read with the batches so that training runs no
teacher. The methods are left as they are: the cache a run trains from names each
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


def teacher_cache_for(
    path: str, teacher: keras.Model, methods: Sequence, data: DataSetup, split: str, *,
    views: int = 1, storage: str = "float32", top_k: int | None = None,
    max_bytes: int | None = None, rebuild: bool = False,
) -> cache_lib.TeacherCache:
    """The teacher cache of one split of `data` for `methods` at `path`: reused when
    it matches, else built (views of the training split's augmentation replayed)."""
    c = data.config
    train = split == data.info.train_split
    augment = data.train_augment if train else False
    limit = c.train_limit if train else c.test_limit
    image_size, channels = tuple(data.input_shape[:2]), data.input_shape[2]
    taps, method_taps = cache_lib.teacher_taps(teacher, methods)
    spec = data_lib.data_spec(data.info, split, image_size, channels, augment, limit, c.seed)
    num_examples = data_lib.num_examples(c.dataset, split, limit, c.data_dir)
    return cache_lib.build_teacher_cache(
        path, teacher, lambda v: cache_view_pipeline(data, split, v, views), num_examples=num_examples,
        views=views, data=spec, taps=taps, method_taps=method_taps, storage=storage, top_k=top_k,
        max_bytes=max_bytes, rebuild=rebuild)


def cache_view_pipeline(data: DataSetup, split: str, view: int, views: int):
    """The batches a teacher cache's `view` of `split` is built from: the training split
    as epoch `view` yields them (its order, crops and batch size), other splits as
    evaluation reads them. The cached outputs then equal the online ones bit for bit:
    some CPU kernels round an image differently at the end of a partial batch."""
    c = data.config
    train = split == data.info.train_split
    return data.load(split, augment=data.train_augment if train else False,
                     limit=c.train_limit if train else c.test_limit, shuffle=train, with_index=True,
                     replay=data_lib.ReplayClock(view), views=views)


def cached_data(data: DataSetup, train_cache, test_cache) -> DataSetup:
    """`data` read with teacher caches: its batches carry the teacher's outputs."""
    clock = data_lib.ReplayClock()
    train = data.load(data.info.train_split, augment=data.train_augment, replay=clock,
                      teacher_cache=train_cache)
    test = data.load(data.info.test_split, augment=False, limit=data.config.test_limit,
                     teacher_cache=test_cache)
    return dataclasses.replace(data, train=train, test=test, clock=clock)


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
    """Build or reuse the caches of both splits (with the taps of `spec.teacher_cache_methods`
    too), read only what `methods` need, then forget the teacher model."""
    views = spec.teacher_cache_views or config.epochs
    cache_lib.warn_views(views, config.epochs, data.train_augment)
    max_bytes = None if spec.teacher_cache_max_gb is None else int(spec.teacher_cache_max_gb * 2**30)
    options = dict(storage=spec.teacher_cache_storage, top_k=spec.teacher_cache_top_k, max_bytes=max_bytes,
                   rebuild=spec.rebuild_teacher_cache)
    extra = sweep_methods(spec.teacher_cache_methods, data.num_train)
    start_time = time.perf_counter()
    caches = [teacher_cache_for(os.path.join(spec.teacher_cache, name), teacher.model, [*extra, *methods],
                                data, split, views=v, **options)
              for name, split, v in (("train", data.info.train_split, views),
                                     ("test", data.info.test_split, 1))]
    seconds = time.perf_counter() - start_time
    needed, method_taps = cache_lib.teacher_taps(teacher.model, methods)
    train_cache, test_cache = (for_methods(c, needed, method_taps) for c in caches)
    if teacher.top1 is None:
        teacher.top1 = test_cache.teacher_top1
        print(f"teacher top1={teacher.top1:.4f} (from the teacher cache)")
    teacher.model = None  # training reads the cache: the teacher need not stay in memory
    return CachedRun(cached_data(data, train_cache, test_cache), train_cache, seconds)


def sweep_methods(spec: str, num_examples: int) -> list:
    """The methods of `DistillSpec.teacher_cache_methods` ("at,fitnet" or "at+fitnet"), built
    only to name their teacher taps; those that cannot be cached are refused."""
    names = [n.strip() for n in spec.replace("+", ",").split(",") if n.strip()]
    return [m for name in names for m in methods_lib.from_spec(name, num_examples=num_examples)]
