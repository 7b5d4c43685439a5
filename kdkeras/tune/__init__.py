"""Tuning a distillation's settings on the validation split with Optuna.

`tune_distillation(config, spec, TuneOptions(...))` runs a study of trials at a lower
fidelity (fewer epochs and/or examples, bad ones pruned early) reading one shared
teacher-output cache, then retrains the winner at the full budget. `spec.method="auto"`
chooses among `TuneOptions.candidates`, each in its own space (`Method.search_space`).

Modules: `spaces` (a candidate's space, sampled as suggestions), `study` (storage,
sampler, pruner, resume, the sweep; no TensorFlow), `objective` (a trial), `final`
(the winner retrained), `reference` (the student alone at the trial fidelity, which
the choice must beat), `report` (trials table and plot), `options`, `tuner` (the
whole sweep). Names are imported on first use, so a process that only shares a
study (`kdkeras.tune.study`) loads no TensorFlow.
"""

from __future__ import annotations

from kdkeras.lazy_exports import lazy_exports

_NAMES = {
    "final": ("best_choice", "final_inputs", "retrain"),
    "objective": ("PruningCallback", "distillation_objective", "require_validation", "trial_fidelity",
                  "trial_inputs", "validation_score"),
    "options": ("AUTO_CANDIDATES", "TuneOptions"),
    "reference": ("StudentAloneRun", "ensure_reference", "final_check", "reference_inputs", "run_student_alone",
                  "stored_reference"),
    "report": ("plot_trials", "trial_rows", "trials_markdown", "write_trials"),
    "spaces": ("candidate_space", "sample", "settings_of"),
    "study": ("PRUNERS", "finished_trials", "make_pruner", "open_study", "progress_line", "run_sweep",
              "storage_url"),
    "tuner": ("AUTO", "TuneResult", "candidates_of", "tune_distillation"),
}
#: public name -> (module, attribute)
_EXPORTS = {name: (f"kdkeras.tune.{module}", name) for module, names in _NAMES.items() for name in names}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

__all__ = list(_EXPORTS)
