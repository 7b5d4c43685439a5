"""Build a teacher-output cache: run the teacher once per (view, example), store
what the methods read, atomically and resumably.

The build writes into `<path>.partial/`, one view at a time; a finished view
is recorded (with its files' CRC-32) in `progress.json`, so an interrupted
build continues at the first unfinished view. Only when every view is done
is the folder renamed to `<path>` with its `manifest.json`: nothing that an
interrupted build leaves looks like a valid cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from kdkeras import taps as taps_lib
from kdkeras.cache.layout import check_storage, columns, encode
from kdkeras.cache.store import (
    FORMAT,
    MANIFEST,
    CacheError,
    CacheMismatchError,
    TeacherCache,
    column_specs,
    differences,
    file_crc32,
    view_dir,
)
from kdkeras.files import write_json
from kdkeras.keys import IMAGE, INDEX, LOGITS, STRONG_IMAGE, strong_key
from kdkeras.tap_plan import plan_taps, uncacheable_reason

PROGRESS = "progress.json"


def weights_fingerprint(model: keras.Model) -> str:
    """SHA-256 over the shapes and values of every weight of `model` (its identity)."""
    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        digest.update(str((value.shape, value.dtype.str)).encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def teacher_taps(teacher: keras.Model, methods: Sequence) -> tuple[list[str], dict[str, list[str]]]:
    """The teacher layers `methods` read, by their tap plan on `teacher` (defaults
    resolved, before pairing with a student): in total, and per method name as the
    cache records them. Methods that read gradients or the teacher's weights cannot be cached."""
    check_cacheable(methods)
    per_method = plan_taps(methods, teacher).method_taps
    union = list(dict.fromkeys(name for names in per_method.values() for name in names))
    return union, per_method


def check_cacheable(methods: Sequence) -> None:
    """Refuse methods that read the teacher's CE gradients (computed online in every
    step) or its weights (OFD's BN margins): they cannot come from a cache (a
    `CacheError`, a ValueError, naming them)."""
    for method in methods:
        reason = uncacheable_reason(method)
        if reason:
            raise CacheError(reason)


def cache_plan(entries: dict[str, tuple], num_examples: int, views: int, storage: str,
               top_k: int | None) -> dict:
    """Bytes per example per view, per entry and in total, before anything is built."""
    per_entry = {e: sum(c.row_bytes for c in columns(e, s, storage, top_k)) for e, s in entries.items()}
    row = sum(per_entry.values())
    return {"bytes_per_entry": per_entry, "bytes_per_example_view": row,
            "total_bytes": row * num_examples * views, "num_examples": num_examples, "views": views}


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


def build_teacher_cache(
    path: str,
    teacher: keras.Model,
    dataset_for_view: Callable[[int], object],
    *,
    num_examples: int,
    views: int = 1,
    data: dict | None = None,
    taps: Sequence[str] = (),
    method_taps: dict[str, list[str]] | None = None,
    storage: str = "float32",
    top_k: int | None = None,
    max_bytes: int | None = None,
    rebuild: bool = False,
    verbose: bool = True,
) -> TeacherCache:
    """Cache `teacher`'s logits and `taps` for every example of every view.

    `dataset_for_view(v)` yields batches `({"image", "index"}, y)` covering
    examples 0..num_examples-1 of view `v` (e.g. `kdkeras.data.load(...,
    teacher_cache_view=v)`); `data` describes that data (name, split, limit,
    size, augmentation, seed) for the fingerprint. Data with a strong view
    (`data["strong_view"]`, MLKD's) caches the teacher's outputs on it too, as
    `keys.strong_key(entry)` entries, which the batches then carry with the rest.
    A complete cache of the same fingerprint is reused; one of another is
    refused (`rebuild=True` replaces it); an interrupted build is continued. Above `max_bytes` the
    build is refused before it starts, naming the size and the taps.
    """
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views!r}.")
    taps = [t for t in dict.fromkeys(taps) if t != LOGITS]
    tap_model = taps_lib.build_tap_model(teacher, taps)
    entries = {name: tuple(int(d) for d in shape[1:])
               for name, shape in ((k, v.shape) for k, v in tap_model.output.items())}
    strong = bool((data or {}).get("strong_view"))  # the data's strong views are cached too (MLKD)
    if strong:
        entries.update({strong_key(e): shape for e, shape in list(entries.items())})
    check_storage(storage, top_k, entries[LOGITS][-1])
    fingerprint = {
        "format": FORMAT, "teacher": teacher.name, "teacher_weights": weights_fingerprint(teacher),
        "data": dict(data or {}), "num_examples": int(num_examples), "views": int(views),
        "taps": sorted(taps), "storage": storage, "top_k": top_k if storage == "topk" else None,
    }
    if os.path.exists(os.path.join(path, MANIFEST)):
        try:
            cache = TeacherCache.open(path, expect=_with_their_taps(fingerprint, path))
            print(f"[cache] reusing {path} ({cache.num_examples} examples x {cache.views} views)")
            return cache
        except CacheError as err:
            if not rebuild:
                raise
            print(f"[cache] rebuilding {path}: {err}")
            shutil.rmtree(path)
    elif os.path.exists(path) and os.listdir(path):
        raise CacheError(f"{path!r} exists but holds no teacher cache (no {MANIFEST}); refusing to overwrite it.")

    plan = cache_plan(entries, num_examples, views, storage, top_k)
    described = ", ".join(f"{e} {list(s)}" for e, s in entries.items())
    print(f"[cache] {path}: {num_examples} examples x {views} views x "
          f"{plan['bytes_per_example_view']} bytes ({described}; {storage}) = {_human(plan['total_bytes'])}")
    size = (f"{_human(plan['total_bytes'])} ({plan['total_bytes']} bytes: {plan['bytes_per_example_view']} "
            f"per example per view for {described}, x {num_examples} examples x {views} views)")
    if max_bytes is not None and plan["total_bytes"] > max_bytes:
        raise CacheError(
            f"The teacher cache would take {size}, above max_bytes={max_bytes}. Cache fewer taps or views, "
            "or use storage='float16'/'topk'.")

    partial = path + ".partial"
    _refuse_if_disk_short(path, partial, plan["total_bytes"], size)
    progress = _load_progress(partial, fingerprint)
    for view in range(views):
        if str(view) in progress["views"]:
            continue
        files, top1 = _build_view(partial, view, tap_model, dataset_for_view(view),
                                  entries, num_examples, storage, top_k, verbose, strong)
        progress["views"][str(view)] = {"files": files, "teacher_top1": top1}
        write_json(os.path.join(partial, PROGRESS), progress, atomic=True)
    manifest = {
        "format": FORMAT, "num_examples": int(num_examples), "views": int(views),
        "fingerprint": fingerprint, "entries": column_specs(entries, storage, top_k),
        "method_taps": method_taps or {},
        "files": {rel: crc for v in progress["views"].values() for rel, crc in v["files"].items()},
        "teacher_top1": progress["views"]["0"]["teacher_top1"], "plan": plan,
    }
    write_json(os.path.join(partial, MANIFEST), manifest, atomic=True)
    os.remove(os.path.join(partial, PROGRESS))
    if os.path.exists(path):
        os.rmdir(path)  # an empty folder given as the destination
    os.rename(partial, path)
    return TeacherCache.open(path, verify=False)


def _refuse_if_disk_short(path: str, partial: str, total_bytes: int, size: str) -> None:
    """Refuse a build that the disk cannot hold before writing anything: a disk that
    fills mid-build takes the rest of the machine's work down with it."""
    written = sum(os.path.getsize(os.path.join(root, name))
                  for root, _, names in os.walk(partial) for name in names) if os.path.isdir(partial) else 0
    needed = total_bytes - written
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise CacheError(
            f"The teacher cache at {path!r} would take {size}, but the disk holding it has "
            f"{_human(free)} ({free} bytes) free, {_human(needed)} still to write. Free space or put the cache "
            "elsewhere, cache fewer taps (teacher_cache_methods) or views, use storage='float16'/'topk' "
            "(--teacher_cache_storage), or train without a cache (--teacher_cache=none).")


def _with_their_taps(fingerprint: dict, path: str) -> dict:
    """`fingerprint` with the taps of the cache at `path` when those include every
    tap asked for: a cache built for a sweep serves a run that reads fewer."""
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            found = json.load(f).get("fingerprint", {})
    except (OSError, ValueError):
        return fingerprint  # opening it says what is wrong
    if set(fingerprint["taps"]) <= set(found.get("taps") or ()):
        return {**fingerprint, "taps": found["taps"]}
    return fingerprint


def _load_progress(partial: str, fingerprint: dict) -> dict:
    """The finished views of an earlier, interrupted build of the same cache."""
    progress_path = os.path.join(partial, PROGRESS)
    if os.path.exists(progress_path):
        with open(progress_path) as f:
            progress = json.load(f)
        if not differences(fingerprint, progress["fingerprint"]):
            done = sorted(int(v) for v in progress["views"])
            if done:
                print(f"[cache] continuing an interrupted build: views {done} are done")
            return progress
        print("[cache] an interrupted build of other inputs is discarded")
    if os.path.exists(partial):
        shutil.rmtree(partial)
    os.makedirs(partial)
    progress = {"fingerprint": fingerprint, "views": {}}
    write_json(progress_path, progress, atomic=True)
    return progress


def _build_view(partial, view, tap_model, dataset, entries, num_examples, storage, top_k, verbose,
                strong=False):
    """Run the teacher over one view (and, with `strong`, over each batch's strong view
    too) and write its rows at their indices."""
    folder = os.path.join(partial, view_dir(view))
    os.makedirs(folder, exist_ok=True)
    cols = [c for e, s in entries.items() for c in columns(e, s, storage, top_k)]
    fds = {c.key: os.open(os.path.join(folder, f"{c.key}.bin"), os.O_RDWR | os.O_CREAT | os.O_TRUNC)
           for c in cols}
    written = np.zeros(num_examples, bool)
    correct = 0
    infer = tf.function(lambda images: tap_model(images, training=False), reduce_retracing=True)
    bar = keras.utils.Progbar(num_examples, unit_name="example", verbose=1 if verbose else 0)
    try:
        for x, y in dataset:
            if not isinstance(x, dict) or INDEX not in x:
                raise CacheError("The data for a teacher cache must carry each example's index: "
                                 "x = {'image': ..., 'index': ...} (kdkeras.data.load(..., with_index=True)).")
            index = np.asarray(x[INDEX], np.int64)
            if index.size and (index.min() < 0 or index.max() >= num_examples):
                raise CacheError(f"Example index {int(index.max())} is outside 0..{num_examples - 1}.")
            out = infer(x[IMAGE])
            if strong:
                out = {**out, **{strong_key(k): v for k, v in infer(x[STRONG_IMAGE]).items()}}
            for entry in entries:
                for name, array in encode(entry, np.asarray(out[entry]), storage, top_k).items():
                    column = next(c for c in cols if c.entry == entry and c.name == name)
                    fd, size = fds[column.key], column.row_bytes
                    data = np.ascontiguousarray(array).tobytes()
                    for row, i in enumerate(index):
                        os.pwrite(fd, data[row * size:(row + 1) * size], int(i) * size)
            written[index] = True
            y = np.asarray(y).reshape(-1)
            correct += int(np.sum(np.argmax(np.asarray(out[LOGITS]), -1) == y))
            bar.add(len(index))
        for fd in fds.values():
            os.fsync(fd)
    finally:
        for fd in fds.values():
            os.close(fd)
    if not written.all():
        raise CacheError(f"View {view} covered {int(written.sum())} of {num_examples} examples: the data "
                         "must yield every index 0..num_examples-1 once per pass.")
    files = {os.path.join(view_dir(view), f"{c.key}.bin"): file_crc32(os.path.join(folder, f"{c.key}.bin"))
             for c in cols}
    return files, correct / num_examples


def warn_views(views: int, epochs: int, augment: bool) -> None:
    """Say how the teacher's views relate to the training epochs."""
    if not augment:
        return
    if views == 1:
        warnings.warn("The teacher cache holds one view of augmented data: the teacher sees one fixed "
                      "crop/flip of each image for every epoch (set views to the number of epochs for "
                      "the online teacher's answers).", stacklevel=2)
    elif views < epochs:
        print(f"[cache] {views} views for {epochs} epochs: epoch e replays view e mod {views} "
              "(the same crops and flips, and the teacher's answers to them)")
