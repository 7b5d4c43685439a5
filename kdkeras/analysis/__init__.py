"""Measurements on trained models: the bias-variance decomposition of the error."""

from kdkeras.analysis.bias_variance import (
    Decomposition,
    compare_methods,
    cross_entropy_per_sample,
    decompose,
    regularization_samples,
    regularization_share,
    split_by_mask,
    summary_table,
)

__all__ = [
    "Decomposition",
    "compare_methods",
    "cross_entropy_per_sample",
    "decompose",
    "regularization_samples",
    "regularization_share",
    "split_by_mask",
    "summary_table",
]
