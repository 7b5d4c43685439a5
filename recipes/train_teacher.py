"""Train a zoo model with cross-entropy (a teacher, or a baseline student).

    python recipes/train_teacher.py --model=resnet20 --dataset=fashion_mnist \
        --epochs=5 --output_dir=saved_models/fashion_mnist_resnet20

Writes DIR/model.keras and DIR/metrics.json (`top1` on the test split, 0..1).
"""

from __future__ import annotations

import os

from absl import flags

from kdkeras import experiment, recipe_utils, training



def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("model", "resnet20", "Zoo model name (see kdkeras.models.available()).",
                        flag_values=fv)
    flags.DEFINE_string("model_args", "", "Zoo kwargs, e.g. 'width_multiplier=0.5,dropout=0.1'.",
                        flag_values=fv)
    recipe_utils.define_run_flags(fv, epochs=10, lr=0.05)


def run(fv: flags.FlagValues):
    """Run the recipe on parsed flags; returns what it measured (tests read it)."""
    config = recipe_utils.run_config(fv)
    strategy = experiment.start(config)
    config = experiment.worker_config(config, strategy)  # other workers than the chief: a private folder
    experiment.check_output_dir(config.output_dir, experiment.run_settings(
        config, {"model": fv.model, "model_args": fv.model_args}), config.overwrite)
    data = experiment.setup_data(config)
    with strategy.scope():
        model = experiment.build_model(fv.model, data, seed=config.seed,
                                       **recipe_utils.parse_kwargs(fv.model_args))
        print(f"Training {fv.model} ({model.count_params():,} params) on {config.dataset} "
              f"{data.input_shape}, {data.num_train} examples, {config.epochs} epochs")
        result = experiment.fit_data(model, data, config.train_config(), config.output_dir, tag="teacher")
    path = os.path.join(config.output_dir, "model.keras")
    model.save(path)
    metrics = {
        "model": fv.model, "model_args": fv.model_args, "dataset": config.dataset,
        "top1": result["top1"], "epochs": config.epochs, "train_limit": config.train_limit,
        "train_seconds": result["train_seconds"], "params": model.count_params(),
        "input_shape": list(data.input_shape), "seed": config.seed, "history": result["history"],
    }
    # with a validation split the epochs watched it; the test split is read once, here
    metrics.update(experiment.validation_keys(data, val_top1=result.get("val_top1")))
    training.write_json(os.path.join(config.output_dir, "metrics.json"), metrics)
    print(f"top1={result['top1']:.4f}  saved {path}")
    experiment.finish_worker(config, strategy)
    return metrics


if __name__ == "__main__":
    recipe_utils.run_main(define_flags, run)
