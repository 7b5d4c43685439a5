"""Names of the entries that flow between the data, the tap models and the methods.

One place for the dictionary keys that several modules read or write, so a
method, the `Distiller` and the data pipeline cannot drift apart:

* a batch's `x` is either the images or `{IMAGE: images, INDEX: indices}`;
* a tap model returns `{LOGITS: logits, <layer name>: feature, ...}`;
* a method listing `gradient_keys` reads `grad_key(tap)` (the gradient of the
  network's CE loss w.r.t. that tap, or w.r.t. the images for `INPUT_TAP`).
"""

from __future__ import annotations

#: a tap model's entry holding the network's logits
LOGITS = "logits"
#: prefix of the entries holding the gradient of a network's CE loss w.r.t. a tap
GRAD_PREFIX = "grad:"
#: the tap name under which methods ask for the gradient w.r.t. the input images
INPUT_TAP = "input"
#: the images in a dict `x`
IMAGE = "image"
#: each sample's dataset index in a dict `x` (memory-bank methods such as CRD)
INDEX = "index"


def grad_key(tap: str) -> str:
    """The output-dict key of the CE-loss gradient w.r.t. `tap` (`"grad:input"`)."""
    return GRAD_PREFIX + tap
#: the teacher's cached outputs in a dict `x` (`{LOGITS: ..., <layer>: ...}`), fed by
#: `kdkeras.data.load(..., teacher_cache=...)` in place of running the teacher
TEACHER = "teacher"
