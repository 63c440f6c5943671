"""Export Keras 3 models to TFLite and check the file against Keras.

Modules: `convert` (to_tflite), `checks` (check_integer_only), `runners` (the
runtime interface, LiteRT behind it, run_tflite), `verify` (file vs Keras),
`latency` (measure_latency: LiteRT batch latency on random inputs).
"""

from tfcompress.export.checks import check_integer_only
from tfcompress.export.convert import MODES, to_tflite
from tfcompress.export.latency import measure_latency
from tfcompress.export.runners import (
    LiteRTRunner,
    Runner,
    get_runner,
    register_runner,
    run_tflite,
)
from tfcompress.export.verify import verify

__all__ = [
    "MODES",
    "LiteRTRunner",
    "Runner",
    "check_integer_only",
    "get_runner",
    "measure_latency",
    "register_runner",
    "run_tflite",
    "to_tflite",
    "verify",
]
