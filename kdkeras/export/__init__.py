"""Export distilled Keras models to LiteRT (TFLite) and evaluate the files."""

from .litert_eval import compare_with_keras, evaluate_tflite
from .size import tflite_size_breakdown
from .tflite import QUANTIZATIONS, export_tflite

__all__ = ["QUANTIZATIONS", "compare_with_keras", "evaluate_tflite", "export_tflite",
           "tflite_size_breakdown"]
