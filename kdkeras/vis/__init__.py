"""Figures and reports for distillation runs (matplotlib Agg, PNG output)."""

from .plots import (
    agreement,
    agreement_matrix,
    attention_map,
    attention_maps,
    calibration_bins,
    expected_calibration_error,
    reliability_diagram,
    training_curves,
)
from .report import write_report
from .saliency import METHODS, explain, saliency_grid

__all__ = [
    "METHODS",
    "agreement",
    "agreement_matrix",
    "attention_map",
    "attention_maps",
    "calibration_bins",
    "expected_calibration_error",
    "explain",
    "reliability_diagram",
    "saliency_grid",
    "training_curves",
    "write_report",
]
