"""Compact Keras 3 layers: Ghost, Shift, Adder and Binary convolutions, HashedDense."""

from tfcompress.layers.adder import (
    AdderConv,
    AdderDense,
    adaptive_gradient_scale,
    adder_distance,
)
from tfcompress.layers.binary import (
    BinaryConv,
    BinaryDense,
    Sign,
    WeightClip,
    approx_sign,
    ste_sign,
)
from tfcompress.layers.ghost import GhostBottleneck, GhostConv, make_divisible
from tfcompress.layers.hashed import HashedDense, hash_indices
from tfcompress.layers.shift import Shift, ShiftConv, shift_offsets

__all__ = [
    "AdderConv",
    "AdderDense",
    "BinaryConv",
    "BinaryDense",
    "GhostBottleneck",
    "GhostConv",
    "HashedDense",
    "Shift",
    "ShiftConv",
    "Sign",
    "WeightClip",
    "adaptive_gradient_scale",
    "adder_distance",
    "approx_sign",
    "hash_indices",
    "make_divisible",
    "shift_offsets",
    "ste_sign",
]
