"""Train a zoo model with cross-entropy (a teacher, or a baseline student).

    python recipes/train_teacher.py --model=resnet20 --dataset=fashion_mnist \
        --epochs=5 --output_dir=saved_models/fashion_mnist_resnet20

Writes DIR/model.keras and DIR/metrics.json (`top1` on the test split, 0..1).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from kdkeras import recipe_utils, training  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "resnet20", "Zoo model name (see kdkeras.models.available()).")
recipe_utils.define_data_flags()
recipe_utils.define_train_flags(epochs=10, lr=0.05)


def main(argv):
    del argv
    strategy = recipe_utils.start_run()
    data = recipe_utils.setup_data()
    with strategy.scope():
        model = recipe_utils.build_model(FLAGS.model, data, seed=FLAGS.seed)
    print(f"Training {FLAGS.model} ({model.count_params():,} params) on {FLAGS.dataset} "
          f"{data.input_shape}, {data.num_train} examples, {FLAGS.epochs} epochs")
    with strategy.scope():
        result = training.train_supervised(
            model, data.train, data.test, recipe_utils.train_config(), FLAGS.output_dir, tag="teacher"
        )
    path = os.path.join(FLAGS.output_dir, "model.keras")
    model.save(path)
    metrics = {
        "model": FLAGS.model,
        "dataset": FLAGS.dataset,
        "top1": result["top1"],
        "epochs": FLAGS.epochs,
        "train_limit": FLAGS.train_limit,
        "train_seconds": result["train_seconds"],
        "params": model.count_params(),
        "input_shape": list(data.input_shape),
        "seed": FLAGS.seed,
        "history": result["history"],
    }
    training.write_json(os.path.join(FLAGS.output_dir, "metrics.json"), metrics)
    print(f"top1={result['top1']:.4f}  saved {path}")


if __name__ == "__main__":
    app.run(main)
