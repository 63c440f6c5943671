"""How `quantize_model` treats each layer type: the `quantization` layer trait.

    "weights"    a Conv2D / DepthwiseConv2D / Dense (binary, ternary) layer: fused with a
                 following BatchNormalization and ReLU into one `QuantizeWrapper`
    "adder"      AdderConv / AdderDense: `QuantizeAdderWrapper`, step by step
    "batchnorm"  a BatchNormalization with nothing to fold into: `QuantizeBatchNorm`
    "output"     a layer whose output TFLite requantizes (Add, Concatenate, pooling,
                 activations...): an `ActivationQuantizer` after it

Layers with `value_preserving` traits (max pooling, reshapes, padding, Shift...)
keep their input's int8 scale and get no quantizer. A custom layer joins with
`tfcompress.core.register_layer_traits(MyLayer, quantization="output")`.
"""

from keras import layers

from tfcompress.core.traits import layer_traits, register_layer_traits
from tfcompress.layers import (
    AdderConv,
    AdderDense,
    BinaryConv,
    BinaryDense,
    Sign,
    TernaryConv,
    TernaryDense,
)
from tfcompress.lowering import ShiftedReLU6

__all__ = ["is_scale_preserving", "quantization_role", "supported_layer_names"]

_ROLES = {
    "weights": (layers.Conv2D, layers.DepthwiseConv2D, layers.Dense, BinaryConv, BinaryDense,
                TernaryConv, TernaryDense),
    "adder": (AdderConv, AdderDense),
    "batchnorm": (layers.BatchNormalization,),
    "output": (
        layers.Add, layers.Subtract, layers.Multiply, layers.Average, layers.Concatenate,
        layers.GlobalAveragePooling1D, layers.GlobalAveragePooling2D,
        layers.AveragePooling1D, layers.AveragePooling2D,
        layers.ReLU, layers.Activation, layers.Softmax, layers.Rescaling,
        ShiftedReLU6, Sign,
    ),
}
for _role, _classes in _ROLES.items():
    for _cls in _classes:
        register_layer_traits(_cls, quantization=_role)
del _role, _classes, _cls

# Kept by value-preserving traits; listed for the "Supported:" message.
_SCALE_PRESERVING_EXAMPLES = (
    "MaxPooling1D", "MaxPooling2D", "GlobalMaxPooling2D", "Flatten", "Reshape", "Dropout",
    "ZeroPadding2D", "Cropping2D", "Permute", "Identity", "Shift", "ChannelSlice",
)


def quantization_role(layer):
    """The layer's `quantization` trait ("weights", "adder", "batchnorm", "output") or None."""
    return layer_traits(layer).quantization


def is_scale_preserving(layer):
    """True if every output element is an input element or zero (same int8 scale)."""
    return layer_traits(layer).value_preserving


def supported_layer_names():
    """Names of the layer types `quantize_model` supports, for error messages."""
    names = {cls.__name__ for classes in _ROLES.values() for cls in classes}
    return sorted(names | set(_SCALE_PRESERVING_EXAMPLES))
