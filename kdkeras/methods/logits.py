"""Response (logit) methods: the student matches the teacher's outputs."""

from __future__ import annotations

from keras import ops

from kdkeras.keys import LOGITS
from kdkeras.methods.base import Method, StepContext, kl_div, log_softmax_t
from kdkeras.methods.registry import register_method
from kdkeras.search_space import Float


@register_method("kd")
class KD(Method):
    """Hinton et al. (2015): `T^2 * KL(softmax(z_t / T) || softmax(z_s / T))`.

    Summed over classes and averaged over the batch; the `T^2` keeps the
    gradient scale independent of the temperature.

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

    def __init__(self, temperature: float = 4.0, **kwargs):
        super().__init__(**kwargs)
        if temperature <= 0:
            raise ValueError(f"KD temperature must be > 0, got {temperature!r}.")
        self.temperature = float(temperature)

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        t = self.temperature
        log_pt = log_softmax_t(teacher[LOGITS], t)
        log_ps = log_softmax_t(student[LOGITS], t)
        return ops.mean(kl_div(log_pt, log_ps)) * (t * t)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}
