"""kdkeras: knowledge distillation for Keras 3 on TensorFlow.

`Distiller` trains a student from a frozen teacher through `methods`, each
reading the layers `tap_plan.plan_taps` resolves; `models` is the zoo, `data`
the input pipelines, `export` the TFLite/LiteRT path and `vis` the
explanations and plots. Subpackages that pull in heavy optional libraries are
imported on first use.
"""

import importlib

from kdkeras import keys, methods, tap_plan, taps
from kdkeras.distiller import Distiller
from kdkeras.stages import Stage, run_stages

__version__ = "0.1.0"

_LAZY = ("models", "data", "export", "vis", "training", "analysis", "stages", "cache", "experiment", "quantize")


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(f"kdkeras.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'kdkeras' has no attribute {name!r}")


__all__ = ["Distiller", "Stage", "run_stages", "keys", "methods", "tap_plan", "taps", *_LAZY]
