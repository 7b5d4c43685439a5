"""What a tuning sweep costs against training the student alone, measured in one run.

Trains (or loads) a teacher, builds the teacher-output cache once (timed apart:
`cache_build_seconds`), then times, on the same data at the trial fidelity:

- one sweep of N trials of `kdkeras.tune` from that cache (no pruning, no retrain),
  as a user runs it: the study opened once, the trials table and plot written once,
- N student-alone runs on a trial's data (data, model, fit, evaluation: what a
  trial does without a teacher): the trial's training examples (`--trial_train_limit`
  of the training part), the whole validation split evaluated each epoch, its
  top-1 and one test batch at the end. One runs at the start of each trial (run
  by the sweep's runner, so that load on the machine hits both alike, and their
  time taken out of the sweep's); their mean is taken.

Prints `tune_sweep_over_student_runs` = sweep seconds / (N x student-alone seconds);
the issue's target is <= 1.2. `trial_over_student_run_median` is the median trial run
over the median student-alone run: what one trial costs, robust to one run slowed by the
machine. The sweep runs as a user's does, with its student-alone reference
(`TuneOptions.reference`: one CE-only run at trial fidelity before the trials); the
ratio stays defined over the N trials, so the reference's seconds are taken out of the
sweep's and printed as their own key, `reference_seconds`.
`--json PATH` writes the numbers.

    python benchmarks/tune_speed.py --trials=6 --train_limit=5000 --trial_epochs=2
    python benchmarks/tune_speed.py --trials=4 --train_limit=20000 --trial_train_limit=4000 --trial_epochs=2
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from kdkeras import experiment, training  # noqa: E402
from kdkeras.experiment.fitting import fit_data  # noqa: E402
from kdkeras.tune import TuneOptions, trial_inputs, tune_distillation  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "fashion_mnist", "Data set (kdkeras name).")
flags.DEFINE_string("teacher", "resnet20", "A .keras teacher, or a zoo name trained here for --teacher_epochs.")
flags.DEFINE_integer("teacher_epochs", 1, "Epochs of a teacher trained here.")
flags.DEFINE_string("student", "resnet8", "Zoo name of the student.")
flags.DEFINE_string("method", "kd", "Method (or --method=auto with --candidates) the sweep tunes.")
flags.DEFINE_list("candidates", ["kd", "dkd"], "Candidates of --method=auto.")
flags.DEFINE_integer("trials", 6, "N, the trials of the sweep.")
flags.DEFINE_integer("trial_epochs", 2, "Epochs of a trial (and of the student-alone run).")
flags.DEFINE_integer("train_limit", 5000, "Training examples (the validation split is carved from them).")
flags.DEFINE_integer("trial_train_limit", None, "Training examples of a trial (and of a student-alone run): a "
                     "subset of the training part (default: all of it); both score on the whole validation split.")
flags.DEFINE_integer("test_limit", 1000, "Test examples.")
flags.DEFINE_float("validation_split", 0.1, "Validation split: a fraction in (0, 1), or a count (>= 1).")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_string("json", None, "Write the numbers to this JSON file.")


def student_alone(config: experiment.RunConfig, student: str) -> float:
    """Seconds of one student-alone run at `config`'s fidelity: data, model, fit, evaluation."""
    start = time.perf_counter()
    data = experiment.setup_data(config)
    model = experiment.build_model(student, data, seed=config.seed)
    fit_data(model, data, config.train_config(), None, tag="student")
    return time.perf_counter() - start


def measure() -> dict:
    """Build the cache, time the sweep and the student-alone runs; print and return the numbers."""
    work = tempfile.mkdtemp(prefix="tune_speed_")
    split = FLAGS.validation_split if FLAGS.validation_split < 1 else int(FLAGS.validation_split)
    config = experiment.RunConfig(
        dataset=FLAGS.dataset, train_limit=FLAGS.train_limit, test_limit=FLAGS.test_limit, validation_split=split,
        batch_size=FLAGS.batch_size, epochs=FLAGS.trial_epochs, verbose=0, output_dir=os.path.join(work, "run"))
    teacher = FLAGS.teacher
    if not teacher.endswith(".keras"):  # a zoo teacher trained once here, outside the timings
        data = experiment.setup_data(config)
        model = experiment.build_model(teacher, data, seed=1)
        fit_data(model, data, config.train_config(FLAGS.teacher_epochs), None, tag="teacher")
        teacher = os.path.join(work, "teacher.keras")
        model.save(teacher)
    candidates = FLAGS.candidates if FLAGS.method == "auto" else [FLAGS.method]
    spec = experiment.DistillSpec(teacher=teacher, student=FLAGS.student, method=FLAGS.method,
                                  teacher_cache=os.path.join(work, "cache"))
    options = TuneOptions(trials=FLAGS.trials, pruner="none", retrain=False, candidates=tuple(candidates),
                          trial_train_limit=FLAGS.trial_train_limit)
    # the cache, built by a run of the first candidate exactly as a trial reads it (also warms TensorFlow up)
    warm_config, warm_spec = trial_inputs(config, spec, options, candidates, candidates[0], {}, 0)
    warm = experiment.run_distillation(warm_config.replace(output_dir=os.path.join(work, "warm")), warm_spec)
    cache_seconds = warm.metrics["teacher_cache_seconds"]
    # a trial's data (its training subset, the whole validation split each epoch, one test batch), no teacher
    alone = warm_config.replace(output_dir=os.path.join(work, "alone"))
    sweep_config = config.replace(output_dir=os.path.join(work, "sweep"))
    student, trials = [], []

    def runner(trial_config, trial_spec, callbacks=()):
        """Interleaved: a student-alone run (timed apart), then the trial (its run timed too)."""
        student.append(student_alone(alone, FLAGS.student))
        start = time.perf_counter()
        try:
            return experiment.run_distillation(trial_config, trial_spec, callbacks=callbacks)
        finally:
            trials.append(time.perf_counter() - start)

    start = time.perf_counter()
    result = tune_distillation(sweep_config, spec, options, runner=runner)
    reference = result.report["student_alone_seconds"]  # the student-alone reference, before the trials
    # the sweep alone: its N trials, study and report
    sweep = time.perf_counter() - start - sum(student) - reference
    per_student = sum(student) / len(student)
    out = {"tune_sweep_over_student_runs": sweep / (FLAGS.trials * per_student),
           # the typical trial's run against the typical student-alone run: one slow run moves neither
           "trial_over_student_run_median": statistics.median(trials) / statistics.median(student),
           "trial_run_seconds": trials,
           "cache_build_seconds": cache_seconds, "sweep_seconds": sweep, "reference_seconds": reference,
           "student_run_seconds": student,
           "trials": FLAGS.trials, "config": {k: FLAGS[k].value for k in (
               "dataset", "student", "method", "trial_epochs", "train_limit", "trial_train_limit", "test_limit",
               "validation_split", "batch_size")}}
    print(f"\ncache build {cache_seconds:.1f}s; sweep of {FLAGS.trials} trials {sweep:.1f}s; "
          f"student alone {', '.join(f'{s:.1f}s' for s in student)}; the sweep's student-alone reference "
          f"{reference:.1f}s (not in the sweep's)")
    print(f"{'tune_sweep_over_student_runs':<34}{out['tune_sweep_over_student_runs']:.3f}")
    print(f"{'trial_over_student_run_median':<34}{out['trial_over_student_run_median']:.3f}")
    print(f"{'cache_build_seconds':<34}{cache_seconds:.3f}")
    print(f"{'reference_seconds':<34}{reference:.3f}")
    if FLAGS.json:
        training.write_json(FLAGS.json, out)
    return out


def main(argv) -> None:
    del argv
    measure()


if __name__ == "__main__":
    app.run(main)
