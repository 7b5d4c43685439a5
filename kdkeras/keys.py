"""Names of the entries that flow between the data, the tap models and the methods.

One place for the dictionary keys that several modules read or write, so a
method, the `Distiller` and the data pipeline cannot drift apart:

* a batch's `x` is either the images or `{IMAGE: images, INDEX: indices}`, with
  `STRONG_IMAGE` a second, strongly augmented view of the same examples (MLKD);
* a tap model returns `{LOGITS: logits, <layer name>: feature, ...}`;
* a method listing `gradient_keys` reads `grad_key(tap)` (the gradient of the
  network's CE loss w.r.t. that tap, or w.r.t. the images for `INPUT_TAP`);
* a method with `requires_strong_view` reads `strong_key(entry)`: the same entry
  computed on the strong view.
"""

from __future__ import annotations

from typing import Any

#: a tap model's entry holding the network's logits
LOGITS = "logits"
#: the layers of a student with a distillation token (DeiT) holding its two heads' logits:
#: the class head (trained on the labels) and the distillation head (on the teacher)
CLS_HEAD = "cls_logits"
DIST_HEAD = "dist_logits"
#: prefix of the entries holding the gradient of a network's CE loss w.r.t. a tap
GRAD_PREFIX = "grad:"
#: the tap name under which methods ask for the gradient w.r.t. the input images
INPUT_TAP = "input"
#: the images in a dict `x`
IMAGE = "image"
#: the strongly augmented view of the same examples in a dict `x` (`load(..., strong_view=True)`)
STRONG_IMAGE = "image_strong"
#: prefix of the output entries computed on the strong view (`"strong.logits"`)
STRONG_PREFIX = "strong."
#: each sample's dataset index in a dict `x` (memory-bank methods such as CRD)
INDEX = "index"


def strong_key(entry: str) -> str:
    """The output-dict key of `entry` computed on the strong view (`"strong.logits"`)."""
    return STRONG_PREFIX + entry


def grad_key(tap: str) -> str:
    """The output-dict key of the CE-loss gradient w.r.t. `tap` (`"grad:input"`)."""
    return GRAD_PREFIX + tap
#: the teacher's cached outputs in a dict `x` (`{LOGITS: ..., <layer>: ...}`), fed by
#: `kdkeras.data.load(..., teacher_cache=...)` in place of running the teacher
TEACHER = "teacher"


def split_inputs(x: Any) -> tuple[Any, Any]:
    """(images, index or None) of a batch's `x`: the images, or `{IMAGE: images,
    INDEX: indices}` (the index optional); a dict without IMAGE is refused."""
    if isinstance(x, dict):
        if IMAGE not in x:
            raise ValueError(
                f"Dict inputs must have an {IMAGE!r} entry (and optionally {INDEX!r}); "
                f"got keys {sorted(x)}.")
        return x[IMAGE], x.get(INDEX)
    return x, None


def image_part(x: Any) -> Any:
    """The images of a batch's `x` (see `split_inputs`)."""
    return split_inputs(x)[0]
