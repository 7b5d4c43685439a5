"""Response (logit) methods: the student matches the teacher's outputs.

`KD` matches the tempered class distributions sample by sample; `DIST` matches
their relations instead (Pearson correlations within each sample and within each
class across the batch). Both take `standardize=True` (logit standardisation,
`kdkeras.methods.standardize`).
"""

from __future__ import annotations

import math

from keras import ops

from kdkeras.methods.base import StepContext, check_weight, kl_div
from kdkeras.methods.registry import register_method
from kdkeras.methods.standardize import LogitMethod
from kdkeras.replicas import gather_batch
from kdkeras.search_space import Float


def _check_positive(owner: str, name: str, value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
        raise ValueError(f"{owner} {name} must be > 0, got {value!r} (a finite number is accepted).")
    return number


def kd_loss(z_t, z_s, temperature):
    """`T^2 * mean_b KL(softmax(z_t / T) || softmax(z_s / T))` on float32 logits; `temperature`
    a number or a scalar tensor (CTKD's learned one)."""
    log_pt = ops.log_softmax(z_t / temperature, axis=-1)
    log_ps = ops.log_softmax(z_s / temperature, axis=-1)
    return ops.mean(kl_div(log_pt, log_ps)) * (temperature * temperature)


@register_method("kd")
class KD(LogitMethod):
    """Hinton et al. (2015): `T^2 * KL(softmax(z_t / T) || softmax(z_s / T))`.

    Summed over classes and averaged over the batch; the `T^2` keeps the
    gradient scale independent of the temperature. `temperature=None` is 4, or
    with `standardize=True` the logit-standardisation reference's 2 (and weight 9).

    Example:

    >>> import numpy as np
    >>> kd = KD(temperature=4.0)
    >>> z = np.array([[1.0, 2.0, 3.0]], "float32")
    >>> float(kd.compute_loss({"logits": z}, {"logits": z}, None))
    0.0
    """

    default_weight = 0.9
    search_space = {"temperature": Float(1.0, 10.0, log=True)}
    #: Hinton's CIFAR recipe: CE 0.1, KD 0.9
    default_student_loss_weight = 0.1
    #: the reference's KD+LS: base temperature 2, KD weight 9 (CE stays 0.1)
    standardized_defaults = {"temperature": 2.0, "weight": 9.0}

    def __init__(self, temperature: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.temperature = _check_positive("KD", "temperature", self.setting("temperature", temperature, 4.0))

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        z_t, z_s = self.logit_pair(teacher, student)
        return kd_loss(z_t, z_s, self.temperature)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


def pearson_rows(a, b, eps: float = 1e-8):
    """Per-row Pearson correlation of two (N, M) matrices, shape (N,): the cosine of
    the rows after removing each row's mean, with `eps` added to the norms' product."""
    a = a - ops.mean(a, axis=1, keepdims=True)
    b = b - ops.mean(b, axis=1, keepdims=True)
    norms = ops.sqrt(ops.sum(a * a, axis=1)) * ops.sqrt(ops.sum(b * b, axis=1))
    return ops.sum(a * b, axis=1) / (norms + eps)


@register_method("dist")
class DIST(LogitMethod):
    """DIST (Huang et al., NeurIPS 2022): relations instead of exact matches.

    With `y = softmax(z / tau)` (B, K) for both networks:
    `inter = tau^2 * (1 - mean_b pearson(y_s[b], y_t[b]))` (each sample's class
    relations) and `intra = tau^2 * (1 - mean_k pearson(y_s[:, k], y_t[:, k]))` (each
    class's scores across the batch, a batch statistic: under several replicas, the
    global batch's, gathered from every replica); the term is
    `beta * inter + gamma * intra`, returned as `{"inter", "intra"}`.

    Example:

    >>> import numpy as np
    >>> z = np.array([[1.0, 2.0, 3.0], [3.0, 1.0, 0.0]], "float32")
    >>> parts = DIST().compute_loss({"logits": z}, {"logits": z}, None)
    >>> round(float(parts["inter"]), 6), round(float(parts["intra"]), 6)
    (0.0, 0.0)
    """

    #: torchdistill's ImageNet recipe for DIST: CE 1, DIST 2
    default_weight = 2.0
    default_student_loss_weight = 1.0
    search_space = {"tau": Float(0.5, 8.0, log=True)}
    log_keys = ("inter", "intra")

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, tau: float = 1.0, eps: float = 1e-8, **kwargs):
        super().__init__(**kwargs)
        self.beta = check_weight(beta, "DIST beta")
        self.gamma = check_weight(gamma, "DIST gamma")
        self.tau = _check_positive("DIST", "tau", tau)
        self.eps = _check_positive("DIST", "eps", eps)

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        z_t, z_s = self.logit_pair(teacher, student)
        y_t = ops.softmax(z_t / self.tau, axis=-1)
        y_s = ops.softmax(z_s / self.tau, axis=-1)
        scale = self.tau * self.tau
        inter = 1.0 - ops.mean(pearson_rows(y_s, y_t, self.eps))
        # over the global batch: N replicas give one device's term and gradients
        y_s, y_t = gather_batch(y_s), gather_batch(y_t)
        intra = 1.0 - ops.mean(pearson_rows(ops.transpose(y_s), ops.transpose(y_t), self.eps))
        return {"inter": self.beta * scale * inter, "intra": self.gamma * scale * intra}

    def get_config(self):
        return {**super().get_config(), "beta": self.beta, "gamma": self.gamma, "tau": self.tau, "eps": self.eps}
