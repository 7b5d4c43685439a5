"""Teacher-output caches: distil at the cost of training the student alone.

`build_teacher_cache` runs the teacher once over every (view, example) of a
split and stores the logits and the taps the methods read; training then
reads them back with the batches (`kdkeras.data.load(..., teacher_cache=)`)
instead of running the teacher, with the same crops and flips replayed for
each view (`kdkeras.data.replay`).
"""

from kdkeras.cache.build import (
    build_teacher_cache,
    cache_plan,
    check_cacheable,
    teacher_taps,
    warn_views,
    weights_fingerprint,
)
from kdkeras.cache.layout import STORAGES
from kdkeras.cache.store import CacheCorruptError, CacheError, CacheMismatchError, TeacherCache

__all__ = [
    "STORAGES", "CacheCorruptError", "CacheError", "CacheMismatchError", "TeacherCache",
    "build_teacher_cache", "cache_plan", "check_cacheable", "teacher_taps", "warn_views", "weights_fingerprint",
]
