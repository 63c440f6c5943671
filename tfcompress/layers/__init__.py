"""Compact Keras 3 layers: Ghost, Shift, Adder, Binary (XNOR / HORQ) and Ternary (TWN)
convolutions, HashedDense."""

from tfcompress.layers.adder import (
    AdderConv,
    AdderDense,
    adaptive_gradient_scale,
    adder_distance,
)
from tfcompress.layers.binary import (
    BinaryConv,
    BinaryDense,
    ChannelMeanAbs,
    Sign,
    WeightClip,
    approx_sign,
    horq,
    ste_sign,
)
from tfcompress.layers.ghost import GhostBottleneck, GhostConv, make_divisible
from tfcompress.layers.hashed import HashedDense, hash_indices
from tfcompress.layers.shift import Shift, ShiftConv, shift_offsets
from tfcompress.layers.ternary import TernaryConv, TernaryDense, ternarize

__all__ = [
    "AdderConv",
    "AdderDense",
    "BinaryConv",
    "BinaryDense",
    "ChannelMeanAbs",
    "GhostBottleneck",
    "GhostConv",
    "HashedDense",
    "Shift",
    "ShiftConv",
    "Sign",
    "TernaryConv",
    "TernaryDense",
    "WeightClip",
    "adaptive_gradient_scale",
    "adder_distance",
    "approx_sign",
    "hash_indices",
    "horq",
    "make_divisible",
    "shift_offsets",
    "ste_sign",
    "ternarize",
]
