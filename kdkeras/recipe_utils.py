"""The flags every recipe shares, and their translation into the run layer's configs.

Recipes define these on absl's `FlagValues` (the global `flags.FLAGS` when run
as scripts, a fresh `flags.FlagValues()` in tests, so several recipes can run
in one process) and hand the parsed values to `run_config`/`distill_spec`:
only these two functions read flag values, and only those they are given.
"""

from __future__ import annotations

import sys
from typing import Callable

from absl import app, flags

from kdkeras import training
from kdkeras.cache.layout import STORAGES
from kdkeras.experiment import DistillSpec, RunConfig
from kdkeras.methods.registry import parse_kwargs

AUGMENT = {"auto": None, "on": True, "off": False}


def define_data_flags(fv: flags.FlagValues = flags.FLAGS, default_dataset: str = "fashion_mnist") -> None:
    """--dataset, --data_dir, --train_limit, --test_limit, --batch_size, --image_size,
    --channels, --augment, --seed."""
    flags.DEFINE_string(
        "dataset", default_dataset,
        "A tensorflow-datasets name (cifar100, ...), 'fashion_mnist' (offline from "
        "Debian's dataset-fashion-mnist when tfds cannot download) or folder:/path "
        "(root/split/class/*.jpg|png, or root/class/*.jpg|png).", flag_values=fv)
    flags.DEFINE_string("data_dir", None, "tfds data_dir (or the IDX folder for fashion_mnist).",
                        flag_values=fv)
    flags.DEFINE_integer("train_limit", None, "Use only the first N training examples (quick runs).",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("test_limit", None, "Use only the first N test examples.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("batch_size", 64, "Global batch size (split across replicas).",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("image_size", None,
                         "Resize images to this square size (default: the data's, or the teacher's input).",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_enum("channels", None, ["1", "3"], "Convert images to 1 or 3 channels (default: the data's).",
                      flag_values=fv)
    flags.DEFINE_enum("augment", "auto", list(AUGMENT),
                      "Pad-4 random crop + flip on the training split; auto = on except for (fashion_)mnist.",
                      flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Random seed (weights, shuffling, augmentation).", flag_values=fv)


def define_train_flags(fv: flags.FlagValues = flags.FLAGS, epochs: int = 10, lr: float = 0.05) -> None:
    """--epochs, --lr, --optimizer, --schedule, --weight_decay, --strategy,
    --sync_batchnorm, --tensorboard, --output_dir, --overwrite, --run_eagerly."""
    flags.DEFINE_integer("epochs", epochs, "Training epochs.", lower_bound=1, flag_values=fv)
    flags.DEFINE_float("lr", lr, "Peak learning rate.", lower_bound=0.0, flag_values=fv)
    flags.DEFINE_enum("optimizer", "sgd", list(training.OPTIMIZERS), "Optimizer (SGD uses momentum 0.9).",
                      flag_values=fv)
    flags.DEFINE_enum("schedule", "cosine", list(training.SCHEDULES),
                      "Learning-rate schedule: cosine, or step (x0.1 at 62.5/75/87.5% of training, "
                      "as 150/180/210 of 240).", flag_values=fv)
    flags.DEFINE_float("weight_decay", 5e-4, "Weight decay.", lower_bound=0.0, flag_values=fv)
    flags.DEFINE_enum("strategy", "default", list(training.STRATEGIES), "tf.distribute strategy.",
                      flag_values=fv)
    flags.DEFINE_bool("sync_batchnorm", True,
                      "Under --strategy=mirrored/multiworker, BatchNorm normalises with the global "
                      "batch's statistics, so N replicas train as one device; --nosync_batchnorm keeps "
                      "each replica's own (less communication, other results).", flag_values=fv)
    flags.DEFINE_bool("tensorboard", False, "Write TensorBoard logs under output_dir/tensorboard.",
                      flag_values=fv)
    flags.DEFINE_string("output_dir", "runs/out", "Where models, metrics and reports are written.",
                        flag_values=fv)
    flags.DEFINE_bool("overwrite", False,
                      "Start fresh in a reused --output_dir: drop the backups and finished stages an "
                      "earlier run left there (without it, a resume with other settings is refused).",
                      flag_values=fv)
    flags.DEFINE_bool("run_eagerly", False,
                      "Run Keras steps eagerly: for debugging, and faster on tiny smoke runs where "
                      "tracing dominates.", flag_values=fv)
    flags.DEFINE_bool("deterministic", False,
                      "Deterministic TensorFlow kernels (tf.config.experimental.enable_op_determinism): "
                      "the same command and seed give the same weights on GPU too, at some speed. CPU "
                      "runs are deterministic without it.", flag_values=fv)


def define_run_flags(fv: flags.FlagValues = flags.FLAGS, epochs: int = 10, lr: float = 0.05) -> None:
    """The data and training flags together (what `run_config` reads)."""
    define_data_flags(fv)
    define_train_flags(fv, epochs=epochs, lr=lr)


def define_distill_flags(fv: flags.FlagValues = flags.FLAGS, teacher: str | None = None,
                         student: str = "resnet8") -> None:
    """The flags of a distillation run (`DistillSpec`): teacher, student, method, baseline."""
    flags.DEFINE_string("teacher", teacher,
                        "Path to a .keras teacher, a zoo name to train first, or 'none'.", flag_values=fv)
    flags.DEFINE_integer("teacher_epochs", 10, "Epochs when --teacher is a zoo name trained here.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_string("student", student, "Zoo name of the student.", flag_values=fv)
    flags.DEFINE_string("student_args", "",
                        "Zoo kwargs for the student, e.g. 'width_multiplier=0.5,dropout=0.1'.",
                        flag_values=fv)
    define_method_flags(fv)
    flags.DEFINE_integer("init_epochs", None,
                         "Epochs of the initialisation stage of FT/AB/FSP (default: a quarter of "
                         "--epochs, at least 1).", lower_bound=1, flag_values=fv)
    flags.DEFINE_bool("baseline", False,
                      "Also train the student alone on the same budget and initial weights (baseline_top1).",
                      flag_values=fv)
    define_cache_flags(fv)


def define_method_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """--method, --method_args and --student_loss_weight: which methods, and how strong."""
    flags.DEFINE_string("method", "kd", "Method name or '+' combination, e.g. kd, kd+at, crd.",
                        flag_values=fv)
    flags.DEFINE_string("method_args", "", "Per-method overrides: 'kd.temperature=2,at.weight=500'.",
                        flag_values=fv)
    flags.DEFINE_float("student_loss_weight", None,
                       "Weight of the student's cross-entropy; default: the methods' own (KD 0.1, "
                       "LSR 0, others 1; a mix takes the smallest).", lower_bound=0.0, flag_values=fv)


def define_cache_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """--teacher_cache and its options (see kdkeras.cache)."""
    flags.DEFINE_string("teacher_cache", None,
                        "Folder of a teacher-output cache: built when missing (the teacher runs once per "
                        "example and view), reused when it matches the teacher, data and taps, refused "
                        "when stale. Training then runs no teacher.", flag_values=fv)
    flags.DEFINE_integer("teacher_cache_views", None,
                         "Views (epochs' batches) cached per example (default: --epochs, exact; 1 is "
                         "cheaper for un-augmented data, and within float rounding of the online teacher); "
                         "fewer than the epochs cycle.", lower_bound=1, flag_values=fv)
    flags.DEFINE_enum("teacher_cache_storage", "float32", list(STORAGES),
                      "float32, float16, or topk (logits only: the k largest, the rest's mass spread "
                      "evenly; taps stay float32).", flag_values=fv)
    flags.DEFINE_integer("teacher_cache_top_k", None, "k of --teacher_cache_storage=topk.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_float("teacher_cache_max_gb", None, "Refuse to build a cache larger than this (GiB).",
                       lower_bound=0.0, flag_values=fv)
    flags.DEFINE_bool("rebuild_teacher_cache", False, "Replace a stale teacher cache instead of refusing it.",
                      flag_values=fv)
    flags.DEFINE_list("teacher_cache_methods", [],
                      "More methods whose teacher taps the cache also holds (e.g. at,fitnet,rkd): the first "
                      "run of a sweep builds one cache that every later run of it reads.", flag_values=fv)


def run_config(fv: flags.FlagValues) -> RunConfig:
    """The `RunConfig` of parsed data and training flags."""
    return RunConfig(
        dataset=fv.dataset, data_dir=fv.data_dir, train_limit=fv.train_limit,
        test_limit=fv.test_limit, batch_size=fv.batch_size, image_size=fv.image_size,
        channels=int(fv.channels) if fv.channels else None, augment=AUGMENT[fv.augment],
        seed=fv.seed, epochs=fv.epochs, lr=fv.lr, optimizer=fv.optimizer, schedule=fv.schedule,
        weight_decay=fv.weight_decay, strategy=fv.strategy, tensorboard=fv.tensorboard,
        run_eagerly=fv.run_eagerly, output_dir=fv.output_dir, overwrite=fv.overwrite,
        sync_batchnorm=fv.sync_batchnorm, deterministic=fv.deterministic,
    )


def distill_spec(fv: flags.FlagValues, **overrides) -> DistillSpec:
    """The `DistillSpec` of parsed distillation flags; `overrides` set the rest
    (e.g. a recipe's fixed input shape)."""
    spec = DistillSpec(
        teacher=fv.teacher, student=fv.student, student_args=parse_kwargs(fv.student_args),
        method=fv.method, method_args=fv.method_args, student_loss_weight=fv.student_loss_weight,
        teacher_epochs=fv.teacher_epochs, init_epochs=fv.init_epochs, baseline=fv.baseline,
        teacher_cache=fv.teacher_cache, cache_views=fv.teacher_cache_views,
        cache_storage=fv.teacher_cache_storage, cache_top_k=fv.teacher_cache_top_k,
        cache_max_bytes=None if fv.teacher_cache_max_gb is None else int(fv.teacher_cache_max_gb * 2**30),
        rebuild_cache=fv.rebuild_teacher_cache, cache_methods=",".join(fv.teacher_cache_methods),
    )
    for key, value in overrides.items():
        setattr(spec, key, value)
    return spec


def run_main(define_flags: Callable[[flags.FlagValues], None], run: Callable[[flags.FlagValues], object]) -> None:
    """Run a recipe as a script: its flags on absl's global FLAGS, parsed from the command line
    (and listed by --helpshort as the script's own, wherever they are defined)."""
    before = set(flags.FLAGS)
    define_flags(flags.FLAGS)
    for name in sorted(set(flags.FLAGS) - before):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])

    def main(argv):
        del argv
        run(flags.FLAGS)

    app.run(main)
