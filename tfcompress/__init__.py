"""tfcompress: make Keras 3 models small and fast, and prove the exported file matches.

Public API:
    layers     compact layers (GhostConv, GhostBottleneck, Shift, ShiftConv,
               AdderConv, AdderDense, BinaryConv, BinaryDense (input_order=2: HORQ),
               TernaryConv, TernaryDense)
    models     reference models (lenet_300_100, lenet5, small_cnn, ghostnet, resnet20)
    datasets   load("digits" | "mnist" | "fashion_mnist", data_dir=None), random_shift
    pruning    prune_low_magnitude, ConstantSparsity, PolynomialDecay, strip_pruning;
               prune_channels (channels removed for real), GroupLasso,
               sensitivity_analysis
    analysis   profile, estimate_energy, accumulator_bits (the accumulator width a
               layer's bit widths and fan-in need; profile reports it per layer)
    clustering cluster_weights (k-means weight sharing), strip_clustering
    quantization  quantize_model (QAT, BatchNorm folding), quantize_annotate_layer
    lowering   lower_model: composite layers as the standard layers they are made of
    recalibration  recalibrate_batchnorm: moving statistics recomputed over data
    decomposition  decompose_model: SVD / Tucker-2 / CP low-rank chains, EVBMF ranks
    distillation   on keras.distillation: LogitsDistillation (right for every loss),
               HintDistillation + fitnets_stage, EnsembleTeacher, MutualLearning,
               data_distillation
    coding     Huffman + sparse coding, save_compressed / load_compressed container
    export     to_tflite (int8 / dynamic / float16 / float32), run_tflite, verify;
               TensorFlow Lite Micro (runner="micro", check_micro,
               micro_arena_size), to_c_source
    distribute fit: pruning / clustering / QAT training under MirroredStrategy and
               MultiWorkerMirroredStrategy (where Keras 3's fit fails)
    pipelines  deep_compression: the prune -> cluster -> code pipeline (Han et al. 2016)
    core       the model graph, layer traits and rebuild helper every technique uses

`tfcompress.profiling` and `tfcompress.deep_compression` keep their import paths.
"""

__version__ = "0.2.0"

from tfcompress import (
    analysis,
    clustering,
    coding,
    core,
    datasets,
    decomposition,
    deep_compression,
    distillation,
    distribute,
    export,
    layers,
    lowering,
    models,
    pipelines,
    profiling,
    pruning,
    quantization,
    recalibration,
)
from tfcompress.analysis import (
    accumulator_bits,
    count_layer,
    estimate_energy,
    format_profile,
    profile,
    register_counter,
)
from tfcompress.clustering import cluster_weights, strip_clustering
from tfcompress.coding import compression_report, load_compressed, save_compressed
from tfcompress.export import to_tflite, verify
from tfcompress.pruning import (
    prune_channels,
    prune_low_magnitude,
    sensitivity_analysis,
    strip_pruning,
)
from tfcompress.quantization import quantize_annotate_layer, quantize_model
from tfcompress.recalibration import recalibrate_batchnorm

__all__ = [
    "__version__",
    "accumulator_bits",
    "analysis",
    "cluster_weights",
    "clustering",
    "coding",
    "compression_report",
    "core",
    "count_layer",
    "datasets",
    "decomposition",
    "deep_compression",
    "distillation",
    "distribute",
    "estimate_energy",
    "export",
    "format_profile",
    "layers",
    "load_compressed",
    "lowering",
    "models",
    "pipelines",
    "profile",
    "profiling",
    "prune_channels",
    "prune_low_magnitude",
    "pruning",
    "quantization",
    "quantize_annotate_layer",
    "quantize_model",
    "recalibrate_batchnorm",
    "recalibration",
    "register_counter",
    "save_compressed",
    "sensitivity_analysis",
    "strip_clustering",
    "strip_pruning",
    "to_tflite",
    "verify",
]
