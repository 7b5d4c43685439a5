"""Models of a run: zoo models built for the data and seeded, and the teacher
loaded (adapted to the data's input) or trained here."""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from dataclasses import dataclass
from typing import Any, Iterator

import keras

from kdkeras import models as models_lib
from kdkeras import training
from kdkeras.experiment.config import NO_TEACHER
from kdkeras.experiment.data import DataSetup
from kdkeras.experiment.fitting import fit_data


def is_model_path(spec: str) -> bool:
    """True when `spec` names a saved model file rather than a zoo name."""
    return spec.endswith(".keras") or os.path.sep in spec or os.path.exists(spec)


def model_input_shape(path: str) -> tuple:
    """The (H, W, C) input of a saved model: read from the `.keras` file's config when
    it is a one-input functional model (no layers built, no weights read: every run of
    a sweep asks it), else from the model loaded."""
    shape = _saved_input_shape(path)
    return shape if shape is not None else tuple(training.load_model(path).input_shape[1:])


def _saved_input_shape(path: str) -> tuple | None:
    """The input shape recorded in a `.keras` file's config.json (None when it is not
    a readable one-input functional model: the caller loads the model instead)."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
        inner = config["config"]
        names = inner["input_layers"]
        names = names[0] if isinstance(names[0], list) and len(names) == 1 else names
        if not isinstance(names[0], str):
            return None
        layer = next(l for l in inner["layers"] if l["class_name"] == "InputLayer" and l["name"] == names[0])
        shape = layer["config"]["batch_shape"][1:]
    except (OSError, KeyError, IndexError, TypeError, StopIteration, ValueError, zipfile.BadZipFile):
        return None
    return tuple(shape) if shape and all(isinstance(d, int) for d in shape) else None


def build_model(
    name: str, data: DataSetup, seed: int | None = None, bn_momentum: float | None = None,
    **kwargs: Any,
) -> keras.Model:
    """A zoo model for the data's input and classes, seeded (equal seeds give equal
    initial weights, for fair baselines); `bn_momentum` set on every BatchNorm."""
    training.seeded(seed)
    model = models_lib.get(name, data.input_shape, data.num_classes, **kwargs)
    return models_lib.set_bn_momentum(model, bn_momentum)


#: saved teachers loaded once while `shared_teachers()` is open: (file version, input) -> model
_SHARED: dict | None = None


@contextlib.contextmanager
def shared_teachers() -> Iterator[None]:
    """Within it, a saved teacher is loaded once per file version and input shape and
    the same (frozen) model handed to every run: a sweep's trials, which loaded it
    each (0.6 s a trial) to check the cache's fingerprint. Reentrant."""
    global _SHARED
    outer = _SHARED
    _SHARED = {} if outer is None else outer
    try:
        yield
    finally:
        _SHARED = outer


def _load_teacher_file(path: str, input_shape) -> keras.Model:
    """The saved teacher at `path` fed `input_shape` images (shared while `shared_teachers()`)."""
    if _SHARED is None:
        return models_lib.adapt_input(training.load_model(path), input_shape)
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_mtime_ns, stat.st_size, tuple(input_shape))
    if key not in _SHARED:
        _SHARED[key] = models_lib.adapt_input(training.load_model(path), input_shape)
    return _SHARED[key]


@dataclass
class Teacher:
    """A loaded or freshly trained teacher: the model, its test (and validation) top-1 and its file."""

    model: keras.Model | None
    #: None until known (a cached run reads it from its test-split cache)
    top1: float | None
    source: str
    trained_epochs: int | None = None
    params: int | None = None
    input_shape: tuple | None = None
    #: top-1 on the run's validation split (None without one, or until known)
    val_top1: float | None = None

    def require_model(self) -> keras.Model:
        """The teacher model, loaded again from its file when a teacher cache let it go."""
        if self.model is None:
            model = training.load_model(self.source)
            self.model = models_lib.adapt_input(model, self.input_shape) if self.input_shape else model
        return self.model


def get_teacher(
    spec: str | None,
    data: DataSetup,
    *,
    epochs: int = 10,
    seed: int | None = None,
    build_kwargs: dict | None = None,
    bn_momentum: float | None = None,
    saved_dir: str | None = None,
    strategy=None,
    evaluate: bool = True,
) -> Teacher | None:
    """Load or train the teacher named by `spec`; `None` for "none".

    `spec` is a saved `.keras` path (fed the data's images, resized and
    channel-converted inside the model when its input differs) or a zoo name:
    with `saved_dir`, `saved_dir/<dataset>_<name>/model.keras` is used when it
    exists; otherwise the zoo model is trained for `epochs` and saved as
    `output_dir/teacher.keras`. `evaluate=False` leaves its top-1s unknown (None),
    e.g. for a run whose teacher cache already records them.
    """
    if spec is None or spec.strip().lower() in NO_TEACHER:
        return None
    config = data.config
    strategy = strategy or training.get_strategy("default")
    saved = os.path.join(saved_dir, f"{config.dataset}_{spec}", "model.keras") if saved_dir else None
    if saved and os.path.exists(saved):
        spec = saved
    trained_epochs = None
    with strategy.scope():
        if is_model_path(spec):
            print(f"Loading teacher {spec}")
            teacher = _load_teacher_file(spec, data.input_shape)
            source = spec
        else:
            seed = config.seed + 1000 if seed is None else seed
            teacher = build_model(spec, data, seed=seed, bn_momentum=bn_momentum, **(build_kwargs or {}))
            print(f"Training teacher {spec} ({teacher.count_params():,} params) for {epochs} epochs")
            fit_data(teacher, data, config.train_config(epochs), config.output_dir, tag="teacher")
            source = os.path.join(config.output_dir, "teacher.keras")
            teacher.save(source)
            trained_epochs = epochs
    top1 = val_top1 = None
    if evaluate:
        top1 = training.evaluate_top1(teacher, data.test)
        if data.validation is not None:
            val_top1 = training.evaluate_top1(teacher, data.validation)
        print(f"teacher top1={top1:.4f}" + ("" if val_top1 is None else f", validation top1={val_top1:.4f}"))
    return Teacher(teacher, top1, source, trained_epochs, teacher.count_params(), tuple(data.input_shape),
                   val_top1)
