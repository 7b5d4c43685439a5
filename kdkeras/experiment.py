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
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import keras

from kdkeras import data as data_lib
from kdkeras import methods as methods_lib
from kdkeras import models as models_lib
from kdkeras import training
from kdkeras.distiller import Distiller
from kdkeras.stages import default_stages, needs_init_stage, run_stages

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

    def train_config(self, epochs: int | None = None) -> training.TrainConfig:
        """The optimiser/schedule settings for a run of `epochs` (default: this config's)."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(training.TrainConfig)}
        return training.TrainConfig(**{**shared, "epochs": self.epochs if epochs is None else int(epochs)})

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)


def start(config: RunConfig):
    """Seed everything from `config.seed`, create the output folder, return the strategy."""
    training.seeded(config.seed)
    os.makedirs(config.output_dir, exist_ok=True)
    return training.get_strategy(config.strategy)


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
        h, w, c = input_shape
    if h is None or w is None:
        raise ValueError(
            f"Images of {config.dataset!r} vary in size; set image_size (--image_size=N) to resize them."
        )
    common = dict(
        batch_size=config.batch_size, image_size=(h, w), channels=c,
        data_dir=config.data_dir, seed=config.seed,
    )
    train = data_lib.load(
        config.dataset, info.train_split, augment=config.augment, limit=config.train_limit,
        with_index=with_index, shuffle=shuffle_train, **common,
    )
    test = data_lib.load(config.dataset, info.test_split, limit=config.test_limit, **common)
    num_train = info.splits.get(info.train_split) or training.steps_in(train) * config.batch_size
    if config.train_limit:
        num_train = min(num_train, config.train_limit)
    return DataSetup(info, train, test, (h, w, c), int(num_train), config)


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

    model: keras.Model
    top1: float
    source: str
    trained_epochs: int | None = None


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
) -> Teacher | None:
    """Load or train the teacher named by `spec`; `None` for "none".

    `spec` is a saved `.keras` path (fed the data's images, resized and
    channel-converted inside the model when its input differs) or a zoo name:
    with `saved_dir`, `saved_dir/<dataset>_<name>/model.keras` is used when it
    exists; otherwise the zoo model is trained for `epochs` and saved as
    `output_dir/teacher.keras`.
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
                tag="teacher")
            source = os.path.join(config.output_dir, "teacher.keras")
            teacher.save(source)
            trained_epochs = epochs
    top1 = training.evaluate_top1(teacher, data.test)
    print(f"teacher top1={top1:.4f}")
    return Teacher(teacher, top1, source, trained_epochs)


# -- training --------------------------------------------------------------------------------
def fit(model: keras.Model, train_ds, test_ds, config: training.TrainConfig,
        output_dir: str | None = None, tag: str = "run") -> dict:
    """Compile and fit a logits model or a Distiller; return the trained network's
    `history`, `train_seconds` and test `top1`."""
    history, seconds = training.compile_and_fit(
        model, training.drop_index(train_ds) if not isinstance(model, Distiller) else train_ds,
        training.drop_index(test_ds) if not isinstance(model, Distiller) else test_ds,
        config, output_dir, tag=tag,
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
) -> dict:
    """Distil `student` from `teacher` through `methods` on `data`.

    `student_loss_weight=None` takes the methods' own default (KD 0.1, LSR 0,
    ...). Methods with an initialisation stage (FT, AB, FSP) get it first, for
    `init_epochs` (default a quarter of the epochs, at least 1), each stage
    saved under `output_dir/stages` and skipped when rerun. Returns `history`
    (with `stages` when staged), `train_seconds`, `top1` and the
    `student_loss_weight` used.
    """
    strategy = strategy or training.get_strategy("default")
    methods = list(methods)
    weight = (methods_lib.default_student_loss_weight(methods)
              if student_loss_weight is None else float(student_loss_weight))
    train_config = config.train_config()
    if not needs_init_stage(methods):
        with strategy.scope():
            distiller = Distiller(teacher, student, methods, student_loss_weight=weight)
            out = fit(distiller, data.train, data.test, train_config, config.output_dir, tag=tag)
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
        start_time = time.perf_counter()
        histories = run_stages(
            teacher, student, stages, data.train, data.test, optimizer_fn, config.output_dir,
            verbose=config.verbose, compile_kwargs={"run_eagerly": config.run_eagerly},
        )
        seconds = time.perf_counter() - start_time
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


@dataclass
class DistillRun:
    """What `run_distillation` made: its metrics (as in metrics.json) and models."""

    metrics: dict
    data: DataSetup
    teacher: Teacher | None
    student: keras.Model
    baseline: keras.Model | None
    methods: list


def run_distillation(config: RunConfig, spec: DistillSpec) -> DistillRun:
    """Teacher, student, distillation, optional baseline; writes student.keras,
    baseline.keras and metrics.json into `config.output_dir`."""
    strategy = start(config)
    probe = methods_lib.from_spec(spec.method, spec.method_args, num_examples=1)
    with_index = any(m.requires_index for m in probe)
    shape = spec.input_shape
    if shape is None and spec.teacher and is_model_path(spec.teacher):
        shape = model_input_shape(spec.teacher)
    data = setup_data(config, shape, with_index=with_index)
    teacher = get_teacher(
        spec.teacher, data, epochs=spec.teacher_epochs, build_kwargs=spec.teacher_args,
        bn_momentum=spec.bn_momentum, saved_dir=spec.saved_dir, strategy=strategy,
    )
    with strategy.scope():
        student = build_model(spec.student, data, seed=config.seed, bn_momentum=spec.bn_momentum,
                              **spec.student_args)
        initial = student.get_weights()
        methods = methods_lib.from_spec(spec.method, spec.method_args, num_examples=data.num_train)
    weight = (methods_lib.default_student_loss_weight(methods)
              if spec.student_loss_weight is None else spec.student_loss_weight)
    print(f"Distilling {spec.student} ({student.count_params():,} params) with "
          f"{[m.name for m in methods]}, student_loss_weight={weight}, {config.epochs} epochs")
    result = distill(teacher.model if teacher else None, student, methods, data, config,
                     student_loss_weight=weight, init_epochs=spec.init_epochs, strategy=strategy)
    student.save(os.path.join(config.output_dir, "student.keras"))
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
        "batch_size": config.batch_size,
        "lr": config.lr,
        "seed": config.seed,
        "student_loss_weight": weight,
        "train_seconds": result["train_seconds"],
        "history": result["history"],
    }
    if "init_epochs" in result:
        metrics["init_epochs"] = result["init_epochs"]
    baseline = None
    if spec.baseline:
        with strategy.scope():
            baseline = build_model(spec.student, data, seed=config.seed,
                                   bn_momentum=spec.bn_momentum, **spec.student_args)
            baseline.set_weights(initial)
            out = fit(baseline, data.train, data.test, config.train_config(), config.output_dir,
                      tag="baseline")
        baseline.save(os.path.join(config.output_dir, "baseline.keras"))
        metrics.update(baseline_top1=out["top1"], baseline_train_seconds=out["train_seconds"],
                       baseline_history=out["history"])
        print(f"baseline top1={out['top1']:.4f}")
    training.write_json(os.path.join(config.output_dir, "metrics.json"), metrics)
    return DistillRun(metrics, data, teacher, student, baseline, methods)


def result_line(values: dict) -> str:
    """`RESULT k=v ...` with four decimals, the line recipes end on (for scripts)."""
    return "RESULT " + " ".join(f"{k}={v:.4f}" for k, v in values.items() if v is not None)


# -- reports ------------------------------------------------------------------------------------
def write_results(output_dir: str, stem: str, title: str, sections: list, payload: dict) -> str:
    """Write `stem.md` (sections as `kdkeras.vis.write_report` takes them) and
    `stem.json` (the payload) into `output_dir`; returns the Markdown path."""
    from kdkeras.vis.report import write_report

    training.write_json(os.path.join(output_dir, f"{stem}.json"), payload)
    return write_report(os.path.join(output_dir, f"{stem}.md"), title, sections)
