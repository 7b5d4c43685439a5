"""Export distilled Keras models to LiteRT (TFLite) and evaluate the files."""

from .edge_report import (
    QAT_VARIANT,
    VARIANTS,
    EdgeOptions,
    EdgeTargets,
    edge_checks,
    edge_report_markdown,
    export_qat_variant,
    export_variants,
    keras_latency_ms,
    qat_checks,
)
from .granularity import WEIGHT_GRANULARITIES, mixed_granularity
from .litert_eval import compare_with_keras, evaluate_tflite, logit_agreement
from .size import strip_tensor_names, tflite_size_breakdown
from .tflite import QUANTIZATIONS, export_saved_model, export_tflite

__all__ = [
    "VARIANTS", "EdgeOptions", "EdgeTargets", "edge_checks", "edge_report_markdown",
    "export_variants", "keras_latency_ms", "QAT_VARIANT", "export_qat_variant", "qat_checks",
    "QUANTIZATIONS", "WEIGHT_GRANULARITIES", "compare_with_keras", "evaluate_tflite",
    "export_saved_model", "export_tflite", "logit_agreement", "mixed_granularity", "strip_tensor_names",
    "tflite_size_breakdown",
]
