"""Export distilled Keras models to LiteRT (TFLite) and evaluate the files."""

from .granularity import WEIGHT_GRANULARITIES, mixed_granularity
from .litert_eval import compare_with_keras, evaluate_tflite
from .size import strip_tensor_names, tflite_size_breakdown
from .tflite import QUANTIZATIONS, export_saved_model, export_tflite

__all__ = [
    "QUANTIZATIONS", "WEIGHT_GRANULARITIES", "compare_with_keras", "evaluate_tflite",
    "export_saved_model", "export_tflite", "mixed_granularity", "strip_tensor_names",
    "tflite_size_breakdown",
]
