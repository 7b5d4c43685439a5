"""Reversed KD (Re-KD, Yuan et al. 2020): a weaker model teaches a stronger one.

    python recipes/reversed_kd.py --weak=resnet8 --strong=resnet20 \
        --dataset=fashion_mnist --epochs=5 --output_dir=runs/reversed_kd

Trains the weak model with cross-entropy first, then the strong model twice
on the same budget and from the same initial weights: alone (the baseline)
and with plain KD from the frozen weak model. With `--normal_kd` (default) it
also trains the weak model from the strong one, the usual direction. The
Tf-KD paper finds that Re-KD still helps: the teacher's soft labels act as a
learned label smoothing. Writes DIR/reversed_kd.md (table),
DIR/reversed_kd.png (bar plot) and DIR/reversed_kd.json.
"""

from __future__ import annotations

import os

from absl import flags

from kdkeras import experiment, recipe_utils, vis
from kdkeras.methods import KD

BAR_LABELS = {"weak alone": "weak alone\n{weak}", "strong alone": "strong alone\n{strong}",
              "Re-KD": "Re-KD: strong\nfrom weak", "normal KD": "KD: weak\nfrom strong"}



def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("weak", "resnet8", "Zoo name of the weaker model (the Re-KD teacher).",
                        flag_values=fv)
    flags.DEFINE_string("weak_args", "", "Zoo kwargs of the weak model, e.g. 'width_multiplier=0.5'.",
                        flag_values=fv)
    flags.DEFINE_string("strong", "resnet20", "Zoo name of the stronger model (the Re-KD student).",
                        flag_values=fv)
    flags.DEFINE_string("strong_args", "", "Zoo kwargs of the strong model.", flag_values=fv)
    flags.DEFINE_float("kd_temperature", 4.0, "KD temperature.", lower_bound=0.0, flag_values=fv)
    flags.DEFINE_float("kd_alpha", 0.9, "KD weight alpha (CE weight 1 - alpha).", lower_bound=0.0,
                       upper_bound=1.0, flag_values=fv)
    flags.DEFINE_bool("normal_kd", True, "Also train the weak model from the strong one (normal KD).",
                      flag_values=fv)
    recipe_utils.define_run_flags(fv, epochs=10, lr=0.05)


def run(fv: flags.FlagValues):
    """Run the recipe on parsed flags; returns what it measured (tests read it)."""
    config = recipe_utils.run_config(fv)
    strategy = experiment.start(config)
    data = experiment.setup_data(config)
    specs = {"weak": (fv.weak, recipe_utils.parse_kwargs(fv.weak_args), config.seed),
             "strong": (fv.strong, recipe_utils.parse_kwargs(fv.strong_args), config.seed + 1)}

    def build(role):
        name, kwargs, seed = specs[role]
        with strategy.scope():
            return experiment.build_model(name, data, seed=seed, **kwargs)

    def kd(teacher, student, tag):
        return experiment.distill(teacher, student, [KD(temperature=fv.kd_temperature, weight=fv.kd_alpha)],
                                  data, config, student_loss_weight=1.0 - fv.kd_alpha, tag=tag,
                                  strategy=strategy)

    steps = ["weak alone", "strong alone", "Re-KD"] + (["normal KD"] if fv.normal_kd else [])
    results, models = {}, {}
    for i, step in enumerate(steps, 1):
        print(f"[{i}/{len(steps)}] {step}")
        if step.endswith("alone"):
            role = step.split()[0]
            models[role] = build(role)
            with strategy.scope():  # watching the validation split when there is one, as KD does
                out = experiment.fit_data(models[role], data, config.train_config(), config.output_dir, tag=role)
        elif step == "Re-KD":
            out = kd(models["weak"], build("strong"), "rekd")
        else:
            out = kd(models["strong"], build("weak"), "normal_kd")
        results[step] = out
        print(f"    {step} top1={out['top1']:.4f}")

    weak, strong = results["weak alone"]["top1"], results["strong alone"]["top1"]
    described = {  # trained model, teacher (top-1), loss, the same model alone
        "weak alone": (f"{fv.weak} (weak)", "-", "cross-entropy", None),
        "strong alone": (f"{fv.strong} (strong)", "-", "cross-entropy", None),
        "Re-KD": (f"{fv.strong} (strong)", f"{fv.weak} ({vis.pct(weak)}%)", "KD", strong),
        "normal KD": (f"{fv.weak} (weak)", f"{fv.strong} ({vis.pct(strong)}%)", "KD", weak),
    }
    rows = []
    for step, r in results.items():
        model, teacher, loss, alone = described[step]
        gain = "-" if alone is None else f"{100 * (r['top1'] - alone):+.2f}"
        rows.append([step, model, teacher, loss, vis.pct(r["top1"]), gain])
    table = vis.markdown_table(["run", "trained model", "teacher (top-1)", "loss", "top-1 (%)",
                                "vs the same model alone"], rows, align="llllrr")
    png = vis.accuracy_bars(
        [BAR_LABELS[s].format(weak=fv.weak, strong=fv.strong) for s in results],
        [r["top1"] for r in results.values()], os.path.join(config.output_dir, "reversed_kd.png"),
        f"Reversed KD on {config.dataset}: {fv.weak} teaches {fv.strong}",
        highlight=["alone" not in s for s in results])
    command = experiment.command_line()
    experiment.write_results(
        config.output_dir, "reversed_kd", f"Reversed KD on {config.dataset}",
        [("Results", [table, f"{data.num_train} training examples, {config.epochs} epochs, "
                             f"KD T={fv.kd_temperature}, alpha={fv.kd_alpha}; each model "
                             "starts from the same initial weights in every run."]),
         ("Plot", png), ("Command", f"`{command}`")],
        {"dataset": config.dataset, "weak": fv.weak, "strong": fv.strong, "epochs": config.epochs,
         "train_limit": config.train_limit, "seed": config.seed, "kd_temperature": fv.kd_temperature,
         "kd_alpha": fv.kd_alpha, "command": command, "weak_top1": weak, "strong_top1": strong,
         "rekd_top1": results["Re-KD"]["top1"], "rekd_gain": results["Re-KD"]["top1"] - strong,
         **experiment.validation_keys(data, **{f"{key}_val_top1": results[step].get("val_top1") for key, step in (
             ("weak", "weak alone"), ("strong", "strong alone"), ("rekd", "Re-KD"))}),
         "results": {k: {**{key: r[key] for key in ("top1", "val_top1", "train_seconds") if key in r},
                         "history": r["history"]} for k, r in results.items()}})
    print(table)
    print(experiment.result_line({"weak_top1": weak, "strong_top1": strong,
                                  "rekd_top1": results["Re-KD"]["top1"]}))
    return results


if __name__ == "__main__":
    recipe_utils.run_main(define_flags, run)
