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
from .experiment_plots import accuracy_bars, bias_variance_bars, student_vs_teacher
from .report import markdown_table, pct, write_report
from .saliency import METHODS, explain, saliency_grid
from .visual_report import SALIENCY_METHODS, write_visual_report

__all__ = [
    "METHODS",
    "SALIENCY_METHODS",
    "accuracy_bars",
    "agreement",
    "agreement_matrix",
    "attention_map",
    "attention_maps",
    "bias_variance_bars",
    "calibration_bins",
    "expected_calibration_error",
    "explain",
    "markdown_table",
    "pct",
    "reliability_diagram",
    "saliency_grid",
    "student_vs_teacher",
    "training_curves",
    "write_report",
    "write_visual_report",
]
