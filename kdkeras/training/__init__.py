"""Training helpers shared by the recipes, one module per job: `strategy` (tf.distribute,
multi-worker roles, synchronised BatchNorm), `optimizers` (optimisers and schedules),
`dot` (DOT: separate task and distillation momenta), `callbacks` (non-finite loss stop,
crash-safe backups, history across resumes),
`evaluation` (logits, top-1) and `fitting` (`TrainConfig`, `compile_and_fit`).

They keep the recipes thin and make every recipe behave alike: SGD with momentum and
a cosine or step schedule as the published tables use, Keras' own progress bar,
optional TensorBoard logs, and a `BackupAndRestore` so a run that crashes resumes
where it stopped.
"""

from kdkeras.files import write_json
from kdkeras.training.callbacks import (
    HistoryKeeper,
    NonFiniteLossError,
    SafeBackupAndRestore,
    StopOnNonFiniteLoss,
    callbacks_for,
)
from kdkeras.training.dot import DOT
from kdkeras.training.evaluation import drop_index, evaluate_top1, predict_logits, steps_in
from kdkeras.training.fitting import (
    TrainConfig,
    check_train_settings,
    compile_and_fit,
    is_distiller,
    load_model,
    seeded,
    timed,
)
from kdkeras.training.optimizers import OPTIMIZERS, SCHEDULES, make_optimizer, make_schedule
from kdkeras.training.strategy import (
    STRATEGIES,
    batchnorm_synced,
    get_strategy,
    is_multi_worker,
    replicas_of,
    sync_batchnorm,
    worker_role,
)

__all__ = [
    "write_json", "HistoryKeeper", "NonFiniteLossError", "SafeBackupAndRestore", "StopOnNonFiniteLoss",
    "callbacks_for", "DOT", "drop_index", "evaluate_top1", "predict_logits", "steps_in", "TrainConfig",
    "check_train_settings", "compile_and_fit", "is_distiller", "load_model", "seeded", "timed",
    "OPTIMIZERS", "SCHEDULES", "make_optimizer", "make_schedule", "STRATEGIES", "batchnorm_synced",
    "get_strategy", "is_multi_worker", "replicas_of", "sync_batchnorm", "worker_role",
]
