"""Analysis of models: per-layer parameters, operations and bits (`profile`), energy
estimates (`estimate_energy`) and pruning sensitivity (`sensitivity_analysis`)."""

from tfcompress.analysis.energy import HOROWITZ_45NM_PJ, estimate_energy
from tfcompress.analysis.profile import (
    count_layer,
    dtype_bits,
    format_profile,
    get_counter,
    profile,
    register_counter,
)
from tfcompress.analysis.sensitivity import SensitivityResult, sensitivity_analysis

__all__ = [
    "HOROWITZ_45NM_PJ",
    "SensitivityResult",
    "count_layer",
    "dtype_bits",
    "estimate_energy",
    "format_profile",
    "get_counter",
    "profile",
    "register_counter",
    "sensitivity_analysis",
]
