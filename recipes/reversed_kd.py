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
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

import kdkeras  # noqa: E402
from kdkeras import recipe_utils, training  # noqa: E402
from kdkeras.vis.plots import new_figure, save_figure  # noqa: E402
from kdkeras.vis.report import write_report  # noqa: E402

BAR_LABELS = {
    "weak alone": "weak alone\n{weak}",
    "strong alone": "strong alone\n{strong}",
    "Re-KD": "Re-KD: strong\nfrom weak",
    "normal KD": "KD: weak\nfrom strong",
}

FLAGS = flags.FLAGS
flags.DEFINE_string("weak", "resnet8", "Zoo name of the weaker model (the Re-KD teacher).")
flags.DEFINE_string("weak_args", "", "Zoo kwargs of the weak model, e.g. 'width_multiplier=0.5'.")
flags.DEFINE_string("strong", "resnet20", "Zoo name of the stronger model (the Re-KD student).")
flags.DEFINE_string("strong_args", "", "Zoo kwargs of the strong model.")
flags.DEFINE_float("kd_temperature", 4.0, "KD temperature.")
flags.DEFINE_float("kd_alpha", 0.9, "KD weight alpha (CE weight 1 - alpha).")
flags.DEFINE_bool("normal_kd", True, "Also train the weak model from the strong one (normal KD).")
recipe_utils.define_data_flags()
recipe_utils.define_train_flags(epochs=10, lr=0.05)


def distil(teacher, student, data, config, tag) -> dict:
    """Plain KD into `student`; return its top-1, time and history."""
    kd = kdkeras.methods.KD(temperature=FLAGS.kd_temperature, weight=FLAGS.kd_alpha)
    distiller = kdkeras.Distiller(teacher, student, [kd], student_loss_weight=1.0 - FLAGS.kd_alpha)
    return recipe_utils.fit(distiller, data.train, data.test, config, FLAGS.output_dir, tag=tag)


def plot(rows: list[tuple[str, float]], path: str) -> str:
    names = [r[0] for r in rows]
    values = [100 * r[1] for r in rows]
    colors = {"alone": "#888888", "KD": "#4c72b0"}
    fig, axes = new_figure(1, 1, max(4.5, 1.6 * len(rows)), 3.6)
    ax = axes[0, 0]
    bars = ax.bar(range(len(rows)), values,
                  color=[colors["alone"] if "alone" in n else colors["KD"] for n in names])
    ax.set_xticks(range(len(rows)), names, fontsize=8)
    for bar, v in zip(bars, values):
        ax.annotate(f"{v:.2f}", (bar.get_x() + bar.get_width() / 2, v), ha="center",
                    va="bottom", fontsize=8)
    ax.set_ylim(max(0.0, min(values) - 5.0), min(100.0, max(values) + 3.0))
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"Reversed KD on {FLAGS.dataset}: {FLAGS.weak} teaches {FLAGS.strong}")
    return save_figure(fig, path)


def main(argv):
    del argv
    strategy = recipe_utils.start_run()
    data = recipe_utils.setup_data()
    config = recipe_utils.train_config()
    weak_kwargs, strong_kwargs = recipe_utils.zoo_kwargs(FLAGS.weak_args), recipe_utils.zoo_kwargs(FLAGS.strong_args)

    def build(role):
        name, kwargs, seed = ((FLAGS.weak, weak_kwargs, FLAGS.seed) if role == "weak"
                              else (FLAGS.strong, strong_kwargs, FLAGS.seed + 1))
        return recipe_utils.build_model(name, data, seed=seed, **kwargs)

    steps = ["weak alone", "strong alone", "Re-KD"] + (["normal KD"] if FLAGS.normal_kd else [])
    results: dict[str, dict] = {}
    models = {}
    for i, step in enumerate(steps, 1):
        print(f"[{i}/{len(steps)}] {step}")
        with strategy.scope():
            if step == "weak alone":
                models["weak"] = build("weak")
                out = recipe_utils.fit(models["weak"], data.train, data.test, config,
                          FLAGS.output_dir, tag="weak")
            elif step == "strong alone":
                models["strong"] = build("strong")
                out = recipe_utils.fit(models["strong"], data.train, data.test, config,
                          FLAGS.output_dir, tag="strong")
            elif step == "Re-KD":
                out = distil(models["weak"], build("strong"), data, config, "rekd")
            else:
                out = distil(models["strong"], build("weak"), data, config, "normal_kd")
        results[step] = out
        print(f"    {step} top1={out['top1']:.4f}")

    weak, strong = results["weak alone"]["top1"], results["strong alone"]["top1"]
    labels = {
        "weak alone": (f"{FLAGS.weak} (weak)", "-", "cross-entropy", None),
        "strong alone": (f"{FLAGS.strong} (strong)", "-", "cross-entropy", None),
        "Re-KD": (f"{FLAGS.strong} (strong)", f"{FLAGS.weak} ({100 * weak:.2f}%)", "KD", strong),
        "normal KD": (f"{FLAGS.weak} (weak)", f"{FLAGS.strong} ({100 * strong:.2f}%)", "KD", weak),
    }
    rows, bars = [], []
    for step, r in results.items():
        model, teacher, loss, ref = labels[step]
        gain = "-" if ref is None else f"{100 * (r['top1'] - ref):+.2f}"
        rows.append([step, model, teacher, loss, recipe_utils.pct(r["top1"]), gain])
        bars.append((BAR_LABELS[step].format(weak=FLAGS.weak, strong=FLAGS.strong), r["top1"]))
    table = recipe_utils.markdown_table(["run", "trained model", "teacher (top-1)", "loss", "top-1 (%)",
                            "vs the same model alone"], rows)
    png = plot(bars, os.path.join(FLAGS.output_dir, "reversed_kd.png"))
    command = "python " + " ".join(sys.argv)
    write_report(os.path.join(FLAGS.output_dir, "reversed_kd.md"),
                 f"Reversed KD on {FLAGS.dataset}",
                 [("Results", [table, f"{data.num_train} training examples, {FLAGS.epochs} epochs, "
                               f"KD T={FLAGS.kd_temperature}, alpha={FLAGS.kd_alpha}; each model "
                               "starts from the same initial weights in every run."]),
                  ("Plot", png), ("Command", f"`{command}`")])
    payload = {
        "dataset": FLAGS.dataset, "weak": FLAGS.weak, "strong": FLAGS.strong,
        "epochs": FLAGS.epochs, "train_limit": FLAGS.train_limit, "seed": FLAGS.seed,
        "kd_temperature": FLAGS.kd_temperature, "kd_alpha": FLAGS.kd_alpha, "command": command,
        "weak_top1": weak, "strong_top1": strong,
        "rekd_top1": results["Re-KD"]["top1"],
        "rekd_gain": results["Re-KD"]["top1"] - strong,
        "results": {k: {"top1": r["top1"], "train_seconds": r["train_seconds"],
                        "history": r["history"]} for k, r in results.items()},
    }
    training.write_json(os.path.join(FLAGS.output_dir, "reversed_kd.json"), payload)
    print(table)
    print(f"RESULT weak_top1={weak:.4f} strong_top1={strong:.4f} "
          f"rekd_top1={results['Re-KD']['top1']:.4f}")


if __name__ == "__main__":
    app.run(main)
