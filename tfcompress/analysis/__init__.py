"""Analysis of models: per-layer parameters, operations and bits (`profile`), accumulator
widths (`accumulator_bits`, `layer_accumulator`) and energy estimates (`estimate_energy`).
Pruning sensitivity is `tfcompress.sensitivity_analysis` (`tfcompress.pruning.sensitivity`);
quantization sensitivity, `quantization_sensitivity`, lives in
`tfcompress.quantization.sensitivity` (which imports this package) and is loaded on first
use."""

from tfcompress.analysis.accumulator import (
    accumulator_bits,
    accumulator_range,
    get_accumulator,
    layer_accumulator,
    register_accumulator,
    signed_width,
)
from tfcompress.analysis.energy import HOROWITZ_45NM_PJ, estimate_energy
from tfcompress.analysis.profile import (
    count_layer,
    dtype_bits,
    format_profile,
    get_counter,
    profile,
    register_counter,
)

__all__ = [
    "HOROWITZ_45NM_PJ",
    "accumulator_bits",
    "accumulator_range",
    "count_layer",
    "dtype_bits",
    "estimate_energy",
    "format_profile",
    "get_accumulator",
    "get_counter",
    "layer_accumulator",
    "profile",
    "quantization_sensitivity",
    "register_accumulator",
    "register_counter",
    "signed_width",
]


def __getattr__(name):
    # tfcompress.quantization imports this package (profile counters): loaded lazily.
    if name == "quantization_sensitivity":
        from tfcompress.quantization.sensitivity import quantization_sensitivity

        return quantization_sensitivity
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
