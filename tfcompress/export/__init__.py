"""Export Keras 3 models to TFLite and check the file against Keras.

Modules: `convert` (to_tflite), `int16_layers` (16x8 operators of the layers
annotated 16 written into an int8 file), `checks` (check_integer_only), `runners` (the
runtime interface: LiteRT, LiteRT's reference kernels; run_tflite), `micro`
(TensorFlow Lite Micro: MicroRunner, check_micro, micro_arena_size), `c_source`
(to_c_source: the file as a C array for firmware), `verify` (file vs Keras),
`latency` (measure_latency: LiteRT batch latency on random inputs).
"""

from tfcompress.export.c_source import to_c_source
from tfcompress.export.checks import check_integer_only
from tfcompress.export.convert import MODES, to_tflite
from tfcompress.export.latency import measure_latency
from tfcompress.export.micro import MicroRunner, check_micro, micro_arena_size
from tfcompress.export.runners import (
    LiteRTReferenceRunner,
    LiteRTRunner,
    Runner,
    get_runner,
    register_runner,
    run_tflite,
)
from tfcompress.export.verify import verify

__all__ = [
    "MODES",
    "LiteRTReferenceRunner",
    "LiteRTRunner",
    "MicroRunner",
    "Runner",
    "check_integer_only",
    "check_micro",
    "get_runner",
    "measure_latency",
    "micro_arena_size",
    "register_runner",
    "run_tflite",
    "to_c_source",
    "to_tflite",
    "verify",
]
