"""tfcompress: make Keras 3 models small and fast, and prove the exported file matches.

Public API:
    layers     compact layers (GhostConv, GhostBottleneck, Shift, ShiftConv,
               AdderConv, AdderDense, BinaryConv, BinaryDense)
    models     reference models (lenet_300_100, lenet5, small_cnn, ghostnet, resnet20)
    datasets   load("digits" | "mnist" | "fashion_mnist", data_dir=None), random_shift
    export     to_tflite (int8 / dynamic / float16 / float32), run_tflite, verify
    quantization  quantize_model (QAT, BatchNorm folding), quantize_annotate_layer
    lowering   lower_model: composite layers as the standard layers they are made of
    profile    per-layer parameters, multiply-adds, additions, binary ops, bits
    pruning    prune_low_magnitude, ConstantSparsity, PolynomialDecay, strip_pruning
    clustering cluster_weights (k-means weight sharing), strip_clustering
    coding     Huffman + sparse coding, save_compressed / load_compressed container
    deep_compression  the prune -> cluster -> code pipeline (Han et al. 2016)
"""

__version__ = "0.1.0"

from tfcompress import (
    clustering,
    coding,
    datasets,
    deep_compression,
    export,
    layers,
    lowering,
    models,
    profiling,
    pruning,
    quantization,
)
from tfcompress.clustering import cluster_weights, strip_clustering
from tfcompress.coding import compression_report, load_compressed, save_compressed
from tfcompress.profiling import count_layer, format_profile, profile, register_counter
from tfcompress.pruning import prune_low_magnitude, strip_pruning
from tfcompress.quantization import quantize_annotate_layer, quantize_model

__all__ = [
    "__version__",
    "cluster_weights",
    "clustering",
    "coding",
    "compression_report",
    "count_layer",
    "datasets",
    "deep_compression",
    "export",
    "format_profile",
    "layers",
    "load_compressed",
    "lowering",
    "models",
    "profile",
    "profiling",
    "prune_low_magnitude",
    "pruning",
    "quantization",
    "quantize_annotate_layer",
    "quantize_model",
    "register_counter",
    "save_compressed",
    "strip_clustering",
    "strip_pruning",
]
