"""kdkeras: knowledge distillation for Keras 3 on TensorFlow.

`Distiller` trains a student from a frozen teacher through `methods`, each
reading the layers `tap_plan.plan_taps` resolves;
`models` is the zoo, `data` the input pipelines, `export` the TFLite/LiteRT
path and `vis` the explanations and plots. Every public name is imported on
first use, so `import kdkeras` (and TF-free parts such as `kdkeras.analysis`)
does not load TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdkeras.lazy_exports import lazy_exports

__version__ = "0.1.0"

_SUBPACKAGES = ("keys", "methods", "tap_plan", "taps", "models", "data", "export", "vis", "training", "analysis",
                "stages", "cache", "experiment", "quantize", "search_space", "tune")

#: public name -> (module, attribute); attribute None: the module itself
_EXPORTS = {
    "Distiller": ("kdkeras.distiller", "Distiller"),
    "NonFiniteLossError": ("kdkeras.nonfinite", "NonFiniteLossError"),
    "Stage": ("kdkeras.stages", "Stage"),
    "run_stages": ("kdkeras.stages", "run_stages"),
    **{name: (f"kdkeras.{name}", None) for name in _SUBPACKAGES},
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # what static tools see; at run time each name is imported on first use
    from kdkeras import analysis, cache, data, experiment, export, keys, methods, models, quantize  # noqa: F401
    from kdkeras import search_space, stages, tap_plan, taps, training, tune, vis  # noqa: F401
    from kdkeras.distiller import Distiller  # noqa: F401
    from kdkeras.nonfinite import NonFiniteLossError  # noqa: F401
    from kdkeras.stages import Stage, run_stages  # noqa: F401
