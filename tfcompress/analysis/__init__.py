"""Analysis of models: per-layer parameters, operations and bits (`profile`) and energy
estimates (`estimate_energy`). Pruning sensitivity is `tfcompress.sensitivity_analysis`
(`tfcompress.pruning.sensitivity`)."""

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
    "count_layer",
    "dtype_bits",
    "estimate_energy",
    "format_profile",
    "get_counter",
    "profile",
    "register_counter",
]
