"""Measurements on trained models: the bias-variance decomposition of the error."""

from kdkeras.analysis.bias_variance import (
    Decomposition,
    cross_entropy_per_sample,
    decompose,
    regularization_samples,
    regularization_share,
    split_by_mask,
)

__all__ = [
    "Decomposition",
    "cross_entropy_per_sample",
    "decompose",
    "regularization_samples",
    "regularization_share",
    "split_by_mask",
]
