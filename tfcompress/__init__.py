"""tfcompress: make Keras 3 models small and fast, and prove the exported file matches.

Public API:
    layers     compact layers (GhostConv, GhostBottleneck, Shift, ShiftConv,
               AdderConv, AdderDense, BinaryConv, BinaryDense)
    models     reference models (lenet_300_100, lenet5, small_cnn, ghostnet, resnet20)
    datasets   load("digits" | "mnist" | "fashion_mnist", data_dir=None)
    export     to_tflite (int8 / dynamic / float16 / float32), run_tflite, verify
    quantization  quantize_model (QAT, BatchNorm folding), quantize_annotate_layer
    lowering   lower_model: composite layers as the standard layers they are made of
    profile    per-layer parameters, multiply-adds, additions, binary ops, bits
"""

__version__ = "0.1.0"

from tfcompress import (
    datasets,
    export,
    layers,
    lowering,
    models,
    profiling,
    quantization,
)
from tfcompress.profiling import count_layer, format_profile, profile, register_counter
from tfcompress.quantization import quantize_annotate_layer, quantize_model

__all__ = [
    "__version__",
    "count_layer",
    "datasets",
    "export",
    "format_profile",
    "layers",
    "lowering",
    "models",
    "profile",
    "profiling",
    "quantization",
    "quantize_annotate_layer",
    "quantize_model",
    "register_counter",
]
