"""What the absl recipes share: common flags, data set-up and model loading.

Kept in the package (not in `recipes/`) so every recipe defines the same
flags with the same meaning, and tests can import it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import keras
from absl import flags

from kdkeras import data as data_lib
from kdkeras import models as models_lib
from kdkeras import training

FLAGS = flags.FLAGS


def define_data_flags(default_dataset: str = "fashion_mnist") -> None:
    flags.DEFINE_string(
        "dataset", default_dataset,
        "A tensorflow-datasets name (cifar100, ...), 'fashion_mnist' (offline from "
        "Debian's dataset-fashion-mnist when tfds cannot download) or folder:/path "
        "(root/split/class/*.jpg|png).")
    flags.DEFINE_string("data_dir", None, "tfds data_dir (or the IDX folder for fashion_mnist).")
    flags.DEFINE_integer("train_limit", None, "Use only the first N training examples (quick runs).")
    flags.DEFINE_integer("test_limit", None, "Use only the first N test examples.")
    flags.DEFINE_integer("batch_size", 64, "Global batch size (split across replicas).")
    flags.DEFINE_integer("image_size", None, "Resize images to this square size (default: the data's, or the teacher's input).")
    flags.DEFINE_integer("channels", None, "Convert images to 1 or 3 channels (default: the data's).")
    flags.DEFINE_enum("augment", "auto", ["auto", "on", "off"],
                      "Pad-4 random crop + flip on the training split; auto = on except for (fashion_)mnist.")
    flags.DEFINE_integer("seed", 0, "Random seed (weights, shuffling, augmentation).")


def define_train_flags(epochs: int = 10, lr: float = 0.05) -> None:
    flags.DEFINE_integer("epochs", epochs, "Training epochs.")
    flags.DEFINE_float("lr", lr, "Peak learning rate.")
    flags.DEFINE_enum("optimizer", "sgd", list(training.OPTIMIZERS), "Optimizer (SGD uses momentum 0.9).")
    flags.DEFINE_enum("schedule", "cosine", list(training.SCHEDULES),
                      "Learning-rate schedule: cosine, or step (x0.1 at 62.5/75/87.5% of training, as 150/180/210 of 240).")
    flags.DEFINE_float("weight_decay", 5e-4, "Weight decay.")
    flags.DEFINE_enum("strategy", "default", list(training.STRATEGIES), "tf.distribute strategy.")
    flags.DEFINE_bool("tensorboard", False, "Write TensorBoard logs under output_dir/tensorboard.")
    flags.DEFINE_string("output_dir", "runs/out", "Where models, metrics and reports are written.")
    flags.DEFINE_bool("run_eagerly", False,
                      "Run Keras steps eagerly: for debugging, and faster on tiny smoke runs where "
                      "tracing dominates.")


def start_run():
    """Seed everything from --seed, create --output_dir and return the --strategy to train under."""
    training.seeded(FLAGS.seed)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    return training.get_strategy(FLAGS.strategy)


def train_config(epochs: int | None = None) -> training.TrainConfig:
    return training.TrainConfig(
        epochs=FLAGS.epochs if epochs is None else epochs,
        lr=FLAGS.lr,
        optimizer=FLAGS.optimizer,
        schedule=FLAGS.schedule,
        weight_decay=FLAGS.weight_decay,
        strategy=FLAGS.strategy,
        tensorboard=FLAGS.tensorboard,
    )


@dataclass
class DataSetup:
    """The train/test pipelines and what models need to know about them."""

    info: data_lib.DatasetInfo
    train: object
    test: object
    input_shape: tuple
    num_train: int

    @property
    def num_classes(self) -> int:
        return self.info.num_classes


def setup_data(
    input_shape: tuple | None = None, with_index: bool = False, shuffle_train: bool = True
) -> DataSetup:
    """Build train/test pipelines from the data flags.

    `input_shape` (H, W, C) of an existing model wins over the data's own shape
    so a loaded teacher gets the images it was trained on.
    """
    info = data_lib.info(FLAGS.dataset, data_dir=FLAGS.data_dir)
    h, w, c = info.image_shape
    if FLAGS.image_size:
        h = w = FLAGS.image_size
    if FLAGS.channels:
        c = FLAGS.channels
    if input_shape is not None:
        h, w, c = input_shape
    if h is None or w is None:
        raise ValueError(
            f"Images of {FLAGS.dataset!r} vary in size; pass --image_size=N to resize them."
        )
    augment = {"auto": None, "on": True, "off": False}[FLAGS.augment]
    common = dict(
        batch_size=FLAGS.batch_size, image_size=(h, w), channels=c,
        data_dir=FLAGS.data_dir, seed=FLAGS.seed,
    )
    train = data_lib.load(
        FLAGS.dataset, info.train_split, augment=augment, limit=FLAGS.train_limit,
        with_index=with_index, shuffle=shuffle_train, **common,
    )
    test = data_lib.load(FLAGS.dataset, info.test_split, limit=FLAGS.test_limit, **common)
    num_train = info.splits.get(info.train_split) or training.steps_in(train) * FLAGS.batch_size
    if FLAGS.train_limit:
        num_train = min(num_train, FLAGS.train_limit)
    return DataSetup(info, train, test, (h, w, c), int(num_train))


def is_model_path(spec: str) -> bool:
    return spec.endswith(".keras") or os.path.sep in spec or os.path.exists(spec)


def model_input_shape(path: str) -> tuple:
    return tuple(training.load_model(path).input_shape[1:])


def build_model(name: str, data: DataSetup, seed: int | None = None, **kwargs) -> keras.Model:
    """A zoo model for the data's input shape and classes, seeded for a fair baseline."""
    training.seeded(seed)
    return models_lib.get(name, data.input_shape, data.num_classes, **kwargs)


def zoo_kwargs(text: str) -> dict:
    """`'width_multiplier=0.5,dropout=0.1'` -> kwargs for `kdkeras.models.get`."""
    from kdkeras.methods.base import _parse_value

    out = {}
    for item in filter(None, (p.strip() for p in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"Bad model argument {item!r}: expected KEY=VALUE.")
        out[key.strip()] = _parse_value(value)
    return out


def pct(v: float) -> str:
    """A 0..1 fraction as a percentage with two decimals."""
    return f"{100 * v:.2f}"


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table; floats with four decimals."""

    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fit(model, train_ds, test_ds, config, output_dir=None, tag="run") -> dict:
    """Compile and fit a logits model or a Distiller (Keras progress bar); return
    the trained network's history, time and test top-1."""
    history, seconds = training.compile_and_fit(
        model, train_ds, test_ds, config, output_dir, tag=tag,
        compile_kwargs={"run_eagerly": FLAGS.run_eagerly},
    )
    network = getattr(model, "student", model)
    return {"history": history, "train_seconds": seconds,
            "top1": training.evaluate_top1(network, test_ds)}
