"""Logit standardisation (Sun et al., CVPR 2024) as a modifier of the logits methods.

`standardize_logits` z-scores each sample's logit vector over its classes; `LogitMethod`
is the base of every method that compares teacher and student logits through a
tempered softmax (KD, DKD, WSL, DIST): its `standardize=True` argument makes
`logit_pair` hand the method standardised logits, and the arguments the user leaves
out take the settings the reference trains standardised runs with
(`standardized_defaults`), so `kd.standardize=true` alone is the published KD+LS.
"""

from __future__ import annotations

from typing import Any

from keras import ops

from kdkeras.keys import LOGITS
from kdkeras.methods.base import Method, as_float32

#: added to the standard deviation, as in the reference code
STANDARDIZE_EPS = 1e-7


def standardize_logits(logits, eps: float = STANDARDIZE_EPS):
    """`(z - mean(z)) / (eps + std(z))` per sample over the classes, in float32.

    `std` is the unbiased one (divided by `K - 1`), as `torch.Tensor.std` in the
    reference code computes it; `eps` keeps a constant logit vector finite (it maps to 0).
    """
    z = as_float32(logits)
    k = z.shape[-1]
    if k is not None and k < 2:
        raise ValueError(f"Logit standardisation needs at least 2 classes, got logits of shape {z.shape}.")
    mean = ops.mean(z, axis=-1, keepdims=True)
    centred = z - mean
    var = ops.sum(centred * centred, axis=-1, keepdims=True) / (ops.cast(ops.shape(z)[-1], "float32") - 1.0)
    return centred / (eps + ops.sqrt(var))


class LogitMethod(Method):
    """A method on the teacher's and the student's logits that takes `standardize`.

    Subclasses read their logits with `logit_pair` (float32, standardised when
    `standardize` is on) and resolve each argument that has a standardised default
    with `setting(name, given, plain)`; `weight` is resolved here.

    Args:
        standardize: z-score each sample's teacher and student logits (over the
            classes) before the method's temperature, as logit standardisation does.
    """

    #: what the logit-standardisation reference trains this method with when it
    #: standardises (arguments the user leaves as None take them); {} where it has none
    standardized_defaults: dict = {}

    def __init__(self, standardize: bool = False, weight: float | None = None, **kwargs: Any):
        if not isinstance(standardize, bool):
            raise ValueError(f"standardize must be True or False, got {standardize!r}.")
        self.standardize = standardize
        if weight is None and standardize:
            weight = self.standardized_defaults.get("weight")
        super().__init__(weight=weight, **kwargs)

    def setting(self, name: str, given, plain):
        """`given`, else the standardised default of `name` when standardising, else `plain`."""
        if given is not None:
            return given
        if self.standardize and name in self.standardized_defaults:
            return self.standardized_defaults[name]
        return plain

    def logit_pair(self, teacher, student):
        """(teacher logits, student logits) in float32, standardised when `standardize`."""
        z_t, z_s = as_float32(teacher[LOGITS]), as_float32(student[LOGITS])
        if self.standardize:
            return standardize_logits(z_t), standardize_logits(z_s)
        return z_t, z_s

    def get_config(self) -> dict:
        return {**super().get_config(), "standardize": self.standardize}
