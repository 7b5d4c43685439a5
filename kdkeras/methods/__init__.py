"""Distillation methods, one class per method; `get("kd")` builds one by name.

Families: `logits` (KD, DIST), `soft_labels` (LSR, VirtualTeacher, WSL, DKD), `hints` (FitNet, AT, NST, VID),
`staged` (the hint methods with an initialisation stage: FSP, FT, AB),
`relations` (RKD, PKT, SP, CC), `contrastive` (CRD, its memory banks in `memory_bank`), `token` (DeiT,
for vision-transformer students with a distillation token); `features` holds
`FeatureMethod` and the tensor helpers the hint and relational methods share,
`connectors` the small trainable adapters they use, `standardize` logit
standardisation (`LogitMethod`, the base of the logits methods that take
`standardize`). `base` defines the contract every method follows (`Method`, `StepContext`, `InitStage`);
`registry` the names methods are built by (`get`, `from_spec`, `registered_methods`).
"""

from kdkeras.methods import connectors
from kdkeras.methods.base import (
    InitStage,
    Method,
    StepContext,
    default_student_loss_weight,
    method_settings,
)
from kdkeras.methods.contrastive import CRD
from kdkeras.methods.features import FeatureMethod
from kdkeras.methods.hints import AT, NST, VID, FitNet
from kdkeras.methods.logits import DIST, KD
from kdkeras.methods.memory_bank import ContrastMemory
from kdkeras.methods.registry import (
    from_spec,
    get,
    method_class,
    method_names,
    parse_kwargs,
    parse_method_args,
    register_method,
    registered_methods,
)
from kdkeras.methods.relations import CC, PKT, RKD, SP
from kdkeras.methods.soft_labels import DKD, LSR, WSL, VirtualTeacher
from kdkeras.methods.staged import AB, FSP, FT, FTParaphraser
from kdkeras.methods.standardize import LogitMethod, standardize_logits
from kdkeras.methods.token import DeiT

__all__ = [
    "Method", "StepContext", "InitStage", "FeatureMethod", "default_student_loss_weight",
    "from_spec", "get", "method_class", "method_names", "method_settings", "parse_kwargs",
    "parse_method_args", "register_method", "registered_methods",
    "LogitMethod", "standardize_logits",
    "KD", "DIST", "LSR", "VirtualTeacher", "WSL", "DKD", "FitNet", "AT", "NST", "FSP", "VID", "FT", "FTParaphraser", "AB", "RKD", "PKT", "SP", "CC",
    "CRD", "ContrastMemory", "DeiT", "connectors",
]
