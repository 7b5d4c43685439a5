"""The run layer: what every recipe does, driven by config objects, no absl flags.

A recipe parses its flags into a `RunConfig` (data, budget, output folder)
and, for distillation, a `DistillSpec` (teacher, student, methods), then makes
one call: `run_distillation(config, spec)` loads or trains the teacher,
builds the student, distils (with the methods' init stages when they have
any), trains the baseline from the same initial weights, evaluates, and
writes `student.keras`, `baseline.keras` and `metrics.json`. With
`RunConfig(validation_split=0.1)` every fit watches a validation split carved
from the training data (and metrics.json records `student_val_top1`, ...); the
test split is read once, at the end. The smaller
pieces (`setup_data`, `get_teacher`, `fit`, `fit_data`, `distill`, `write_results`) are
public so that experiments with several runs (Re-KD, De-KD, teacher-free,
bias-variance) compose them the same way.

    config = RunConfig(dataset="fashion_mnist", epochs=5, train_limit=10000,
                       output_dir="runs/kd")
    spec = DistillSpec(teacher="saved_models/fashion_mnist_resnet20/model.keras",
                       student="resnet8", method="kd", baseline=True)
    run = run_distillation(config, spec)
    print(run.metrics["student_top1"], run.metrics["baseline_top1"])

Modules: `config` (the two configs, each setting declared once), `output` (the
output folder: start, workers' folders, the resume check, reports), `data`,
`teacher` (models and the teacher), `fitting` (`fit`, `distill`), `cache` (the
teacher-output cache of a run), `run_length` (arguments scaled with the run) and
`run` (`run_distillation`, its steps).
"""

from kdkeras.experiment.cache import (
    CachedRun,
    cache_view_pipeline,
    cached_data,
    sweep_methods,
    teacher_cache_for,
    with_teacher_cache,
)
from kdkeras.experiment.config import AUGMENT, NO_TEACHER, DistillSpec, RunConfig
from kdkeras.experiment.data import PARTS, DataSetup, setup_data, validation_keys, validation_top1s
from kdkeras.experiment.fitting import distill, fit, fit_data, top1s
from kdkeras.experiment.output import (
    RESUMABLE,
    check_output_dir,
    command_line,
    finish_worker,
    result_line,
    run_settings,
    start,
    worker_config,
    write_results,
)
from kdkeras.experiment.run import DistillRun, Student, run_distillation
from kdkeras.experiment.run_length import run_length_args, run_length_note
from kdkeras.experiment.teacher import Teacher, build_model, get_teacher, is_model_path, model_input_shape
from kdkeras.weak_teacher import (
    MOSTLY_DISTILLED_CE_WEIGHT,
    WEAK_TEACHER_MARGIN,
    teacher_margin,
    weak_teacher_warning,
)

__all__ = [
    "CachedRun", "cache_view_pipeline", "cached_data", "sweep_methods", "teacher_cache_for",
    "with_teacher_cache", "AUGMENT", "NO_TEACHER", "DistillSpec", "RunConfig", "DataSetup", "PARTS", "setup_data", "validation_keys",
    "validation_top1s",
    "distill", "fit", "fit_data", "top1s", "RESUMABLE", "check_output_dir", "command_line", "finish_worker", "result_line",
    "run_settings", "start", "worker_config", "write_results", "DistillRun", "Student", "run_distillation",
    "run_length_args", "run_length_note", "Teacher", "build_model", "get_teacher", "is_model_path",
    "model_input_shape", "MOSTLY_DISTILLED_CE_WEIGHT", "WEAK_TEACHER_MARGIN", "teacher_margin",
    "weak_teacher_warning",
]
