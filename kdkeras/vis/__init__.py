"""Figures and reports for distillation runs (matplotlib Agg, PNG output).

Names are imported on first use: the plots and tables need only NumPy and
matplotlib, the saliency maps and the visual report TensorFlow and tf-keras-vis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdkeras.lazy_exports import lazy_exports

_MODULES = {
    "plots": ("agreement", "agreement_matrix", "attention_map", "attention_maps", "calibration_bins",
              "expected_calibration_error", "reliability_diagram", "training_curves"),
    "experiment_plots": ("accuracy_bars", "bias_variance_bars", "student_vs_teacher"),
    "report": ("markdown_table", "pct", "write_report"),
    "saliency": ("METHODS", "explain", "saliency_grid"),
    "visual_report": ("SALIENCY_METHODS", "write_visual_report"),
}

#: public name -> (module, attribute)
_EXPORTS = {name: (f"{__name__}.{module}", name) for module, names in _MODULES.items() for name in names}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # what static tools see; at run time each name is imported on first use
    from .experiment_plots import accuracy_bars, bias_variance_bars, student_vs_teacher  # noqa: F401
    from .plots import (  # noqa: F401
        agreement, agreement_matrix, attention_map, attention_maps, calibration_bins, expected_calibration_error,
        reliability_diagram, training_curves,
    )
    from .report import markdown_table, pct, write_report  # noqa: F401
    from .saliency import METHODS, explain, saliency_grid  # noqa: F401
    from .visual_report import SALIENCY_METHODS, write_visual_report  # noqa: F401
