"""The run layer: what every recipe does, driven by config objects, no absl flags.

A recipe parses its flags into a `RunConfig` (data, budget, output folder)
and, for distillation, a `DistillSpec` (teacher, student, methods), then makes
one call: `run_distillation(config, spec)` loads or trains the teacher,
builds the student, distils (with the methods' init stages when they have
any), trains the baseline from the same initial weights, evaluates, and
writes `student.keras`, `baseline.keras` and `metrics.json`. The smaller
pieces (`setup_data`, `get_teacher`, `fit`, `distill`, `write_results`) are
public so that experiments with several runs (Re-KD, De-KD, teacher-free,
bias-variance) compose them the same way.

    config = RunConfig(dataset="fashion_mnist", epochs=5, train_limit=10000,
                       output_dir="runs/kd")
    spec = DistillSpec(teacher="saved_models/fashion_mnist_resnet20/model.keras",
                       student="resnet8", method="kd", baseline=True)
    run = run_distillation(config, spec)
    print(run.metrics["student_top1"], run.metrics["baseline_top1"])
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import keras
import tensorflow as tf

from kdkeras import cache as cache_lib
from kdkeras import data as data_lib
from kdkeras import methods as methods_lib
from kdkeras import models as models_lib
from kdkeras import training
from kdkeras.distiller import Distiller
from kdkeras.stages import default_stages, needs_init_stage, run_stages
from kdkeras.tap_plan import plan_taps
from kdkeras.weak_teacher import (  # noqa: F401  (part of the run layer's API)
    MOSTLY_DISTILLED_CE_WEIGHT, WEAK_TEACHER_MARGIN, teacher_margin, weak_teacher_warning,
)

#: teacher specs that mean "no teacher" (teacher-free methods)
NO_TEACHER = ("", "none")


@dataclass
class RunConfig(training.TrainConfig):
    """Data, training budget and output folder shared by every run of a recipe:
    the optimiser and schedule settings of `TrainConfig` (epochs, lr, optimizer,
    schedule, weight_decay, momentum, strategy, tensorboard, verbose,
    run_eagerly) plus the data and where results go.

    `augment=None` takes the data set's default (on, except (fashion_)mnist);
    `image_size`/`channels` of `None` keep the data's own unless a model fixes
    the input.
    """

    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    batch_size: int = 64
    image_size: int | None = None
    channels: int | None = None
    augment: bool | None = None
    seed: int = 0
    output_dir: str = "runs/out"
    #: start fresh in a reused output_dir (drop its backups and finished stages)
    #: instead of refusing a resume of other settings
    overwrite: bool = False
    #: ask TensorFlow for deterministic kernels (`enable_op_determinism`): bit-exact
    #: reruns on GPU too, at some speed; CPU runs are deterministic without it
    deterministic: bool = False

    def train_config(self, epochs: int | None = None) -> training.TrainConfig:
        """The optimiser/schedule settings for a run of `epochs` (default: this config's)."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(training.TrainConfig)}
        return training.TrainConfig(**{**shared, "epochs": self.epochs if epochs is None else int(epochs)})

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)


def start(config: RunConfig):
    """Seed everything from `config.seed` (and turn on deterministic kernels when
    `config.deterministic`), create the output folder, return the strategy."""
    training.seeded(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    os.makedirs(config.output_dir, exist_ok=True)
    return training.get_strategy(config.strategy)


def worker_config(config: RunConfig, strategy) -> RunConfig:
    """`config` for this process: the chief (and any single process) writes into
    `output_dir`; another worker of a multi-worker run writes its models, backups
    and stages into its own `output_dir/.worker<i>` (TensorFlow has every worker
    save; only the chief's files are the results), removed by `finish_worker`."""
    chief, index = training.worker_role(strategy)
    if chief:
        return config
    private = os.path.join(config.output_dir, f".worker{index}")
    os.makedirs(private, exist_ok=True)
    return config.replace(output_dir=private)


def finish_worker(config: RunConfig, strategy) -> None:
    """Remove a non-chief worker's private folder once its run has succeeded."""
    if not training.worker_role(strategy)[0] and os.path.basename(config.output_dir).startswith(".worker"):
        shutil.rmtree(config.output_dir, ignore_errors=True)


#: what `check_output_dir` compares: everything that changes the trained model
#: (sync_batchnorm acts only under several replicas, like the strategy itself)
_NOT_SETTINGS = ("output_dir", "verbose", "tensorboard", "run_eagerly", "overwrite", "strategy",
                 "deterministic", "sync_batchnorm", "baseline", "saved_dir", "cache_max_bytes", "rebuild_cache", "cache_methods")
#: what a run leaves in its output_dir to be resumed
RESUMABLE = ("backup", "stages", "distill_done.json")


def run_settings(*parts: Any) -> dict:
    """The settings of a run (dataclasses or dicts merged) as JSON values, minus
    those that do not change the model (output folder, logging, strategy)."""
    merged: dict = {}
    for part in parts:
        merged.update(dataclasses.asdict(part) if dataclasses.is_dataclass(part) else dict(part))
    return json.loads(json.dumps({k: v for k, v in merged.items() if k not in _NOT_SETTINGS},
                                 default=str))


def check_output_dir(output_dir: str, settings: dict, overwrite: bool = False) -> None:
    """Record `settings` in `output_dir/run_config.json`, and refuse to resume
    backups or finished stages left there by a run of other settings (naming
    each difference); `overwrite` deletes them and starts fresh instead."""
    path = os.path.join(output_dir, "run_config.json")
    leftovers = [n for n in RESUMABLE if os.path.exists(os.path.join(output_dir, n))]
    if overwrite:
        for name in leftovers:
            target = os.path.join(output_dir, name)
            shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
    elif leftovers and os.path.exists(path):
        with open(path) as f:
            before = json.load(f)
        differ = {k: (before.get(k), settings.get(k)) for k in sorted(set(before) | set(settings))
                  if before.get(k) != settings.get(k)}
        if differ:
            listed = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in differ.items())
            raise ValueError(
                f"{output_dir!r} holds {leftovers} of an unfinished run with other settings ({listed}); "
                "resuming would mix the two. Rerun with the same settings to resume, pass "
                "--overwrite (RunConfig(overwrite=True)) to start fresh, or use another --output_dir.")
    training.write_json(path, settings, atomic=True)


def command_line(argv: Sequence[str] | None = None) -> str:
    """The shell command that started this process (for reports)."""
    return " ".join(shlex.quote(a) for a in ["python", *(sys.argv if argv is None else argv)])


# -- data ----------------------------------------------------------------------------
@dataclass
class DataSetup:
    """The train/test pipelines and what models need to know about them."""

    info: data_lib.DatasetInfo
    train: Any
    test: Any
    input_shape: tuple
    num_train: int
    config: RunConfig
    #: the epoch clock of the replayed training pipeline (None for other data)
    clock: data_lib.ReplayClock | None = None

    def callbacks(self) -> list:
        """What `fit` needs to keep the training pipeline's epochs in step (resumes)."""
        return [self.clock.callback()] if self.clock is not None else []

    @property
    def train_augment(self) -> bool:
        """Whether the training split is augmented."""
        c = self.config
        return data_lib.default_augment(self.info, self.info.train_split) if c.augment is None else c.augment

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    def load(self, split: str | None = None, **overrides: Any):
        """Another pipeline of this data at the same size and channels (e.g. the
        training split un-augmented for int8 calibration, or with its index)."""
        c = self.config
        kwargs = dict(
            batch_size=c.batch_size, image_size=self.input_shape[:2], channels=self.input_shape[2],
            data_dir=c.data_dir, seed=c.seed, augment=c.augment, limit=c.train_limit,
        )
        kwargs.update(overrides)
        return data_lib.load(c.dataset, split or self.info.train_split, **kwargs)


def setup_data(
    config: RunConfig,
    input_shape: Sequence[int] | None = None,
    with_index: bool = False,
    shuffle_train: bool = True,
) -> DataSetup:
    """Train/test pipelines for `config`; an `input_shape` (H, W, C), e.g. a
    loaded teacher's, wins over the data's own size and channels."""
    info = data_lib.info(config.dataset, data_dir=config.data_dir)
    h, w, c = info.image_shape
    if config.image_size:
        h = w = config.image_size
    if config.channels:
        c = config.channels
    if input_shape is not None:
        _warn_overridden(config, input_shape)
        h, w, c = input_shape
    if h is None or w is None:
        raise ValueError(
            f"Images of {config.dataset!r} vary in size; set image_size (--image_size=N) to resize them."
        )
    common = dict(
        batch_size=config.batch_size, image_size=(h, w), channels=c,
        data_dir=config.data_dir, seed=config.seed,
    )
    # Replayed epochs: shuffle order and crops are functions of (seed, epoch, index),
    # so a resumed run or a teacher cache rebuilds any epoch exactly.
    clock = data_lib.ReplayClock()
    train = data_lib.load(
        config.dataset, info.train_split, augment=config.augment, limit=config.train_limit,
        with_index=with_index, shuffle=shuffle_train, replay=clock, **common,
    )
    test = data_lib.load(config.dataset, info.test_split, limit=config.test_limit, **common)
    num_train = info.splits.get(info.train_split) or training.steps_in(train) * config.batch_size
    if config.train_limit:
        num_train = min(num_train, config.train_limit)
    return DataSetup(info, train, test, (h, w, c), int(num_train), config, clock)


def _warn_overridden(config: RunConfig, input_shape: Sequence[int]) -> None:
    """Say so when image_size/channels asked for are replaced by a model's input."""
    h, w, c = input_shape
    asked = []
    if config.image_size and (config.image_size, config.image_size) != (h, w):
        asked.append(f"image_size={config.image_size}")
    if config.channels and config.channels != c:
        asked.append(f"channels={config.channels}")
    if asked:
        warnings.warn(
            f"{' and '.join(asked)} ignored: the model (a saved teacher) fixes the input to "
            f"{h}x{w}x{c}, so the data is read at {h}x{w} with {c} channel(s). Drop the flag, or give "
            "a teacher built for that input.", stacklevel=3)
        print(f"WARNING: {' and '.join(asked)} ignored; the teacher's input {h}x{w}x{c} is used.")


# -- models ------------------------------------------------------------------------------
def is_model_path(spec: str) -> bool:
    """True when `spec` names a saved model file rather than a zoo name."""
    return spec.endswith(".keras") or os.path.sep in spec or os.path.exists(spec)


def model_input_shape(path: str) -> tuple:
    """The (H, W, C) input of a saved model."""
    return tuple(training.load_model(path).input_shape[1:])


def build_model(
    name: str, data: DataSetup, seed: int | None = None, bn_momentum: float | None = None,
    **kwargs: Any,
) -> keras.Model:
    """A zoo model for the data's input and classes, seeded (equal seeds give equal
    initial weights, for fair baselines); `bn_momentum` set on every BatchNorm."""
    training.seeded(seed)
    model = models_lib.get(name, data.input_shape, data.num_classes, **kwargs)
    return models_lib.set_bn_momentum(model, bn_momentum)


@dataclass
class Teacher:
    """A loaded or freshly trained teacher: the model, its test top-1 and its file."""

    model: keras.Model | None
    #: None until known (a cached run reads it from its test-split cache)
    top1: float | None
    source: str
    trained_epochs: int | None = None
    params: int | None = None
    input_shape: tuple | None = None

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
    `output_dir/teacher.keras`. `evaluate=False` leaves its top-1 unknown (None),
    e.g. for a run whose teacher cache already records it.
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
            teacher = models_lib.adapt_input(training.load_model(spec), data.input_shape)
            source = spec
        else:
            seed = config.seed + 1000 if seed is None else seed
            teacher = build_model(spec, data, seed=seed, bn_momentum=bn_momentum, **(build_kwargs or {}))
            print(f"Training teacher {spec} ({teacher.count_params():,} params) for {epochs} epochs")
            fit(teacher, data.train, data.test, config.train_config(epochs), config.output_dir,
                tag="teacher", callbacks=data.callbacks())
            source = os.path.join(config.output_dir, "teacher.keras")
            teacher.save(source)
            trained_epochs = epochs
    top1 = None
    if evaluate:
        top1 = training.evaluate_top1(teacher, data.test)
        print(f"teacher top1={top1:.4f}")
    return Teacher(teacher, top1, source, trained_epochs, teacher.count_params(), tuple(data.input_shape))


# -- training --------------------------------------------------------------------------------
def fit(model: keras.Model, train_ds, test_ds, config: training.TrainConfig,
        output_dir: str | None = None, tag: str = "run", callbacks: Sequence = ()) -> dict:
    """Compile and fit a logits model or a Distiller; return the trained network's
    `history`, `train_seconds` and test `top1`."""
    history, seconds = training.compile_and_fit(
        model, training.drop_index(train_ds) if not isinstance(model, Distiller) else train_ds,
        training.drop_index(test_ds) if not isinstance(model, Distiller) else test_ds,
        config, output_dir, tag=tag, callbacks=callbacks,
    )
    network = model.student if isinstance(model, Distiller) else model
    return {"history": history, "train_seconds": seconds,
            "top1": training.evaluate_top1(network, test_ds)}


def distill(
    teacher: keras.Model | None,
    student: keras.Model,
    methods: Sequence[methods_lib.Method],
    data: DataSetup,
    config: RunConfig,
    *,
    student_loss_weight: float | None = None,
    init_epochs: int | None = None,
    tag: str = "distill",
    strategy=None,
    teacher_cache: cache_lib.TeacherCache | None = None,
) -> dict:
    """Distil `student` from `teacher` through `methods` on `data`.

    `student_loss_weight=None` takes the methods' own default (KD 0.1, LSR 0,
    ...). Methods with an initialisation stage (FT, AB, FSP) get it first, for
    `init_epochs` (default a quarter of the epochs, at least 1), each stage
    saved under `output_dir/stages` and skipped when rerun. With a
    `teacher_cache` (and `data` read with it) `teacher` may be None. Returns `history`
    (with `stages` when staged), `train_seconds`, `top1` and the
    `student_loss_weight` used.
    """
    strategy = strategy or training.get_strategy("default")
    methods = list(methods)
    weight = (methods_lib.default_student_loss_weight(methods)
              if student_loss_weight is None else float(student_loss_weight))
    train_config = config.train_config()
    if init_epochs is not None and (isinstance(init_epochs, bool) or not isinstance(init_epochs, int)
                                    or init_epochs < 1):
        raise ValueError(f"init_epochs must be None (a quarter of the epochs) or an int >= 1, "
                         f"got {init_epochs!r}.")
    if not needs_init_stage(methods):
        with strategy.scope():
            distiller = Distiller(teacher, student, methods, student_loss_weight=weight,
                                  teacher_cache=teacher_cache)
            out = fit(distiller, data.train, data.test, train_config, config.output_dir, tag=tag,
                      callbacks=data.callbacks())
        return {**out, "student_loss_weight": weight}
    init_epochs = init_epochs or max(1, config.epochs // 4)
    stages = default_stages(methods, init_epochs, config.epochs, weight)
    steps = training.steps_in(data.train)

    def optimizer_fn(stage):
        return training.make_optimizer(
            train_config.optimizer, train_config.lr, steps * max(stage.epochs, 1),
            train_config.schedule, train_config.momentum, train_config.weight_decay,
        )

    with strategy.scope():
        histories = run_stages(
            teacher, student, stages, data.train, data.test, optimizer_fn, config.output_dir,
            verbose=config.verbose, compile_kwargs={"run_eagerly": config.run_eagerly},
            callbacks=data.callbacks() + [training.StopOnNonFiniteLoss()], teacher_cache=teacher_cache,
            sync_batchnorm=train_config.sync_batchnorm,
        )
    seconds = histories.total_seconds  # every stage, over every process (a resumed run counts both)
    history = histories["main"]
    history["stages"] = {k: v for k, v in histories.items() if k != "main"}
    return {"history": history, "train_seconds": seconds,
            "top1": training.evaluate_top1(student, data.test), "student_loss_weight": weight,
            "init_epochs": init_epochs}


# -- the whole distillation run ---------------------------------------------------------------
@dataclass
class DistillSpec:
    """Who teaches whom, how: the part of a distillation run beyond data and budget.

    `teacher`: a `.keras` path, a zoo name (trained for `teacher_epochs`, or
    found in `saved_dir`), or "none". `method`: a registry name or a `+` mix,
    `method_args` per-method overrides (`"kd.temperature=2"` or a dict).
    `input_shape` (H, W, C) fixes both networks' input (the teacher is
    adapted to it); by default a saved teacher's input is used.
    """

    teacher: str | None = None
    student: str = "resnet8"
    student_args: dict = field(default_factory=dict)
    method: str = "kd"
    method_args: str | dict = ""
    student_loss_weight: float | None = None
    teacher_epochs: int = 10
    teacher_args: dict = field(default_factory=dict)
    init_epochs: int | None = None
    baseline: bool = False
    bn_momentum: float | None = None
    input_shape: tuple | None = None
    saved_dir: str | None = None
    #: a folder for the teacher-output cache (`train/` and `test/` below it):
    #: built when missing, reused when it matches, refused when stale
    teacher_cache: str | None = None
    #: epochs' views cached (default: the epochs, so every epoch reads exactly what
    #: the online teacher computes; 1 view of un-augmented data is cheaper, and later
    #: epochs may then differ in the last digits of an image or two)
    cache_views: int | None = None
    cache_storage: str = "float32"
    cache_top_k: int | None = None
    cache_max_bytes: int | None = None
    #: replace a stale cache instead of refusing it
    rebuild_cache: bool = False
    #: more methods (a registry spec, e.g. "at,fitnet,rkd") whose teacher taps the cache
    #: also holds: one cache built by a sweep's first run serves all of its runs
    cache_methods: str = ""


@dataclass
class DistillRun:
    """What `run_distillation` made: its metrics (as in metrics.json) and models."""

    metrics: dict
    data: DataSetup
    teacher: Teacher | None
    student: keras.Model
    baseline: keras.Model | None
    methods: list


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
    for method in methods:  # fix the taps now, while the teacher is here to resolve them
        if method.name in method_taps and method.teacher_layers is None:
            method.teacher_layers = list(method_taps[method.name])
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


def _with_teacher_cache(spec: DistillSpec, config: RunConfig, teacher: Teacher, methods, data):
    """Build or reuse the caches of both splits (with the taps of `spec.cache_methods`
    too), read only what `methods` need, then forget the teacher model."""
    views = spec.cache_views or config.epochs
    cache_lib.warn_views(views, config.epochs, data.train_augment)
    options = dict(storage=spec.cache_storage, top_k=spec.cache_top_k,
                   max_bytes=spec.cache_max_bytes, rebuild=spec.rebuild_cache)
    extra = sweep_methods(spec.cache_methods, data.num_train)
    start_time = time.perf_counter()
    caches = [teacher_cache_for(os.path.join(spec.teacher_cache, name), teacher.model, [*extra, *methods],
                                data, split, views=v, **options)
              for name, split, v in (("train", data.info.train_split, views),
                                     ("test", data.info.test_split, 1))]
    seconds = time.perf_counter() - start_time
    needed = cache_lib.teacher_taps(teacher.model, methods)[0]
    train_cache, test_cache = (c.select(needed) for c in caches)
    if teacher.top1 is None:
        teacher.top1 = test_cache.teacher_top1
        print(f"teacher top1={teacher.top1:.4f} (from the teacher cache)")
    teacher.model = None  # training reads the cache: the teacher need not stay in memory
    return cached_data(data, train_cache, test_cache), train_cache, seconds


def sweep_methods(spec: str, num_examples: int) -> list:
    """The methods of `DistillSpec.cache_methods` ("at,fitnet" or "at+fitnet"), built
    only to name their teacher taps; those that cannot be cached are refused."""
    names = [n.strip() for n in spec.replace("+", ",").split(",") if n.strip()]
    return [m for name in names for m in methods_lib.from_spec(name, num_examples=num_examples)]


def run_distillation(config: RunConfig, spec: DistillSpec, command: str | None = None) -> DistillRun:
    """Teacher, student, distillation, optional baseline; writes student.keras,
    baseline.keras and metrics.json into `config.output_dir`. metrics.json records
    `command` (default: this process's command line) so a results table can cite it."""
    strategy = start(config)
    config = worker_config(config, strategy)
    check_output_dir(config.output_dir, run_settings(config, spec), config.overwrite)
    probe = methods_lib.from_spec(spec.method, spec.method_args, num_examples=1)
    with_index = any(m.requires_index for m in probe)
    shape = spec.input_shape
    if shape is None and spec.teacher and is_model_path(spec.teacher):
        shape = model_input_shape(spec.teacher)
    data = setup_data(config, shape, with_index=with_index)
    teacher = get_teacher(
        spec.teacher, data, epochs=spec.teacher_epochs, build_kwargs=spec.teacher_args,
        bn_momentum=spec.bn_momentum, saved_dir=spec.saved_dir, strategy=strategy,
        evaluate=not spec.teacher_cache,  # a cache records the teacher's top-1 on the test split
    )
    with strategy.scope():
        student = build_model(spec.student, data, seed=config.seed, bn_momentum=spec.bn_momentum,
                              **spec.student_args)
        initial = student.get_weights()
        method_args, scaled = run_length_args(spec.method, spec.method_args)
        methods = methods_lib.from_spec(spec.method, method_args, num_examples=data.num_train)
    for name, args in scaled.items():
        print(f"{name}: scaled to the run's length ({config.epochs} epochs): {args} "
              f"(set {name}.{' or '.join(RUN_LENGTH_DEFAULTS[name][1])} to fix it instead)")
    weight = (methods_lib.default_student_loss_weight(methods)
              if spec.student_loss_weight is None else spec.student_loss_weight)
    plain, train_cache, cache_seconds = data, None, None
    if spec.teacher_cache:
        if teacher is None:
            raise ValueError("teacher_cache needs a teacher (--teacher): there is nothing to cache.")
        data, train_cache, cache_seconds = _with_teacher_cache(spec, config, teacher, methods, data)
    print(f"Distilling {spec.student} ({student.count_params():,} params) with "
          f"{[m.name for m in methods]}, student_loss_weight={weight}, {config.epochs} epochs")
    student_path = os.path.join(config.output_dir, "student.keras")
    done_path = os.path.join(config.output_dir, "distill_done.json")
    if os.path.exists(done_path) and os.path.exists(student_path):
        # a crash after the distillation (during the baseline): keep what finished
        print(f"Distillation already finished in {config.output_dir}: reusing {student_path}")
        with open(done_path) as f:
            result = json.load(f)
        student.set_weights(training.load_model(student_path).get_weights())
    else:
        result = distill(teacher.model if teacher else None, student, methods, data, config,
                         student_loss_weight=weight, init_epochs=spec.init_epochs, strategy=strategy,
                         teacher_cache=train_cache)
        student.save(student_path)
        training.write_json(done_path, result, atomic=True)
    print(f"student top1={result['top1']:.4f} ({result['train_seconds']:.0f}s)")
    metrics = {
        "method": spec.method,
        "method_args": spec.method_args,
        "dataset": config.dataset,
        "teacher": teacher.source if teacher else spec.teacher,
        "student": spec.student,
        "student_args": spec.student_args,
        "student_top1": result["top1"],
        "teacher_top1": teacher.top1 if teacher else None,
        "teacher_epochs": teacher.trained_epochs if teacher else None,
        "epochs": config.epochs,
        "train_limit": config.train_limit,
        "test_limit": config.test_limit,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "seed": config.seed,
        "student_loss_weight": weight,
        "method_settings": methods_lib.method_settings(
            methods, plan_taps(methods, teacher.model if teacher else None, student, train_cache)),
        "train_seconds": result["train_seconds"],
        "history": result["history"],
        "command": command or command_line(),
    }
    if scaled:
        metrics["run_length_defaults"] = scaled
    if "init_epochs" in result:
        metrics["init_epochs"] = result["init_epochs"]
    if train_cache is not None:
        metrics.update(teacher_cache=spec.teacher_cache, teacher_cache_views=train_cache.views,
                       teacher_cache_storage=train_cache.storage, teacher_cache_seconds=cache_seconds)
    baseline = None
    if spec.baseline:
        with strategy.scope():
            baseline = build_model(spec.student, data, seed=config.seed,
                                   bn_momentum=spec.bn_momentum, **spec.student_args)
            baseline.set_weights(initial)
            out = fit(baseline, plain.train, plain.test, config.train_config(), config.output_dir,
                      tag="baseline", callbacks=plain.callbacks())
        baseline.save(os.path.join(config.output_dir, "baseline.keras"))
        metrics.update(baseline_top1=out["top1"], baseline_train_seconds=out["train_seconds"],
                       baseline_history=out["history"])
        margin = teacher_margin(metrics["teacher_top1"], out["top1"])
        print(f"baseline top1={out['top1']:.4f}"
              + ("" if margin is None else f"; teacher margin over it {100 * margin:+.2f} points"))
        if margin is not None:
            metrics["teacher_margin"] = margin
            warning = weak_teacher_warning(metrics["teacher_top1"], out["top1"], weight)
            if warning:
                metrics["warnings"] = [warning]
                warnings.warn(warning, stacklevel=2)
    training.write_json(os.path.join(config.output_dir, "metrics.json"), metrics)
    os.remove(done_path)  # finished: a rerun trains again (as it always did)
    finish_worker(config, strategy)
    return DistillRun(metrics, data, teacher, student, baseline, methods)


def result_line(values: dict) -> str:
    """`RESULT k=v ...` with four decimals, the line recipes end on (for scripts)."""
    return "RESULT " + " ".join(f"{k}={v:.4f}" for k, v in values.items() if v is not None)


#: epoch-counted defaults the recipes scale with the run instead: method name ->
#: (arguments set, the arguments whose presence in --method_args leaves them unset).
#: DKD's published warm-up is 20 of 240 epochs; the class counts it in epochs (20 by
#: default, so a 5-epoch run would end at a quarter of the term), the recipes in
#: twelfths of the run.
RUN_LENGTH_DEFAULTS: dict[str, tuple[dict, tuple[str, ...]]] = {
    "dkd": ({"warmup_fraction": 20 / 240}, ("warmup_epochs", "warmup_fraction")),
}


def run_length_args(method: str, method_args: str | dict | None) -> tuple[dict, dict]:
    """(`method_args` as a per-method dict with the run-length defaults added,
    {method: the defaults added}): what the recipes build their methods from, so
    that warm-ups scale with the run unless the user fixed them."""
    args = (methods_lib.parse_method_args(method_args) if not isinstance(method_args, dict)
            else {k: dict(v) for k, v in method_args.items()})
    names = [n.strip().lower() for n in str(method).split("+") if n.strip()]
    added = {}
    for name, (defaults, unless) in RUN_LENGTH_DEFAULTS.items():
        own = args.get(name, {})
        if name in names and not any(key in own for key in unless):
            args[name] = {**own, **defaults}
            added[name] = dict(defaults)
    return args, added


# -- reports ------------------------------------------------------------------------------------
def write_results(output_dir: str, stem: str, title: str, sections: list, payload: dict) -> str:
    """Write `stem.md` (sections as `kdkeras.vis.write_report` takes them) and
    `stem.json` (the payload) into `output_dir`; returns the Markdown path."""
    from kdkeras.vis.report import write_report

    training.write_json(os.path.join(output_dir, f"{stem}.json"), payload)
    return write_report(os.path.join(output_dir, f"{stem}.md"), title, sections)
