"""Distillation methods, one class per method; `get("kd")` builds one by name.

Families: `logits` (KD, DIST), `multilevel` (MLKD, on a weak and a strong view), `soft_labels` (LSR,
VirtualTeacher, WSL, DKD), `normalized` (NKD and its teacher-free form USKD), `curriculum` (CTKD, CTDKD:
KD and DKD at a learned temperature), `hints` (FitNet, AT, NST, VID),
`staged` (the hint methods with an initialisation stage: FSP, FT, AB),
`regression` (OFD, PADL2 with its first-stage term PADL2Regression, SRD: feature regression through a
trained connector), `svd` (KDSVD),
`relations` (RKD, PKT, SP, CC), `affinity` (ICKD, Affinity, KTA with its paraphraser term
KTAParaphraser), `contrastive` (CRD, its memory banks in `memory_bank`),
`self_supervised` (SSKD: rotated copies of the batch, its heads and init stage), `review` (ReviewKD and
its ABF fusion modules), `token` (DeiT, for vision-transformer students with a distillation token);
`features` holds
`FeatureMethod` and the tensor helpers the hint and relational methods share,
`connectors` the small trainable adapters they use, `paraphrased` the paraphraser
stage FT and KTA share, `standardize` logit
standardisation (`LogitMethod`, the base of the logits methods that take
`standardize`). `base` defines the contract every method follows (`Method`, `StepContext`, `InitStage`);
`registry` the names methods are built by (`get`, `from_spec`, `registered_methods`).
"""

from kdkeras.methods import connectors
from kdkeras.methods.affinity import ICKD, KTA, Affinity, KTAParaphraser
from kdkeras.methods.base import (
    InitStage,
    Method,
    StepContext,
    default_student_loss_weight,
    method_settings,
)
from kdkeras.methods.contrastive import CRD
from kdkeras.methods.curriculum import CTDKD, CTKD, CurriculumTemperature
from kdkeras.methods.features import FeatureMethod
from kdkeras.methods.hints import AT, NST, VID, FitNet
from kdkeras.methods.logits import DIST, KD
from kdkeras.methods.memory_bank import ContrastMemory
from kdkeras.methods.multilevel import MLKD
from kdkeras.methods.normalized import NKD, USKD
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
from kdkeras.methods.regression import OFD, PADL2, SRD, PADL2Regression
from kdkeras.methods.relations import CC, PKT, RKD, SP
from kdkeras.methods.review import ABF, ReviewKD
from kdkeras.methods.self_supervised import SSKD, ProjectionHead, SSKDTeacherHead
from kdkeras.methods.soft_labels import DKD, LSR, WSL, VirtualTeacher
from kdkeras.methods.staged import AB, FSP, FT, FTParaphraser
from kdkeras.methods.standardize import LogitMethod, standardize_logits
from kdkeras.methods.svd import KDSVD
from kdkeras.methods.token import DeiT

__all__ = [
    "Method", "StepContext", "InitStage", "FeatureMethod", "default_student_loss_weight",
    "from_spec", "get", "method_class", "method_names", "method_settings", "parse_kwargs",
    "parse_method_args", "register_method", "registered_methods",
    "LogitMethod", "standardize_logits",
    "KD", "DIST", "MLKD", "LSR", "VirtualTeacher", "WSL", "DKD", "FitNet", "AT", "NST", "FSP", "VID", "FT", "FTParaphraser", "AB", "RKD", "PKT", "SP", "CC",
    "CRD", "ContrastMemory", "SSKD", "SSKDTeacherHead", "ProjectionHead", "connectors",
    "NKD", "USKD", "CTKD", "CTDKD", "CurriculumTemperature",
    "ICKD", "Affinity", "KTA", "KTAParaphraser",
    "OFD", "PADL2", "PADL2Regression", "SRD", "KDSVD",
    "ReviewKD", "ABF",
    "DeiT",
]
