"""tfcompress: make Keras 3 models small and fast, and prove the exported file matches.

Public API:
    layers     compact layers (GhostConv, GhostBottleneck, Shift, ShiftConv,
               AdderConv, AdderDense, BinaryConv, BinaryDense)
    models     reference models (lenet_300_100, lenet5, small_cnn, ghostnet, resnet20)
    datasets   load("digits" | "mnist" | "fashion_mnist", data_dir=None)
    export     to_tflite, run_tflite, verify (LiteRT parity)
    profile    per-layer parameters, multiply-adds, additions, binary ops, bits
"""

__version__ = "0.1.0"

from tfcompress import datasets, export, layers, models, profiling
from tfcompress.profiling import count_layer, format_profile, profile, register_counter

__all__ = [
    "__version__",
    "count_layer",
    "datasets",
    "export",
    "format_profile",
    "layers",
    "models",
    "profile",
    "profiling",
    "register_counter",
]
