"""Rewrite composite tfcompress layers as the standard Keras layers they are made of.

`lower_model` turns GhostConv, GhostBottleneck and ShiftConv into the Conv2D,
DepthwiseConv2D, BatchNormalization, ReLU, Concatenate, Add, Multiply, pooling
and `Shift` layers that compute them, with the same weights, so the result
computes exactly what the original did. Quantization works on the lowered model
(BatchNorm folding, fake quantization at every point TFLite requantizes), and
every layer of it maps onto TFLite builtins:

    GhostConv       -> CONV_2D + DEPTHWISE_CONV_2D + CONCATENATION (+ STRIDED_SLICE)
    ShiftConv       -> PAD + STRIDED_SLICE + CONCATENATION (the shift) + CONV_2D
    GhostBottleneck -> the above + DEPTHWISE_CONV_2D, the squeeze-excite as
                       MEAN + CONV_2D + ADD/RELU6/MUL, and the residual ADD
    BinaryConv      -> Sign (GREATER_EQUAL + SELECT_V2) + CONV_2D on the +/-1
                       inputs with per-channel weights +/-alpha (exact in int8)
"""

import keras
from keras import layers, ops

from tfcompress.layers import (
    BinaryConv,
    BinaryDense,
    GhostBottleneck,
    GhostConv,
    ShiftConv,
    Sign,
)
from tfcompress.layers._utils import check_positive_int


@keras.saving.register_keras_serializable(package="tfcompress")
class ChannelSlice(layers.Layer):
    """Keeps the first `channels` channels: `y = x[..., :channels]` (STRIDED_SLICE).

    Args:
        channels: number of leading channels to keep.
        **kwargs: standard Layer arguments.

    Raises:
        ValueError: for a non-positive `channels`.
    """

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = check_positive_int("channels", channels)

    def call(self, inputs):
        return inputs[..., : self.channels]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.channels,)

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels)
        return config


@keras.saving.register_keras_serializable(package="tfcompress")
class ShiftedReLU6(layers.Layer):
    """`relu6(x + 3)`: with `Rescaling(1/6)` after it, the hard-sigmoid gate of
    GhostBottleneck's squeeze-excite. Two layers, because int8 TFLite computes it as
    ADD (with fused RELU6) then MUL, each with its own output scale."""

    def call(self, inputs):
        return ops.relu6(inputs + 3.0)


def _copy(sublayer, prefix):
    """A new layer with `sublayer`'s config under a unique name; weights come later."""
    config = sublayer.get_config()
    config["name"] = f"{prefix}_{sublayer.name}"
    return sublayer.__class__.from_config(config)


def _apply(sublayer, prefix, x):
    new = _copy(sublayer, prefix)
    out = new(x)
    new.set_weights(sublayer.get_weights())
    return out


def _lower_ghost(layer, x, prefix):
    prefix = f"{prefix}_{layer.name}" if prefix else layer.name
    x = _apply(layer.primary_conv, prefix, x)
    x = _apply(layer.primary_bn, prefix, x)
    if layer.relu:
        x = layers.ReLU(name=f"{prefix}_primary_relu")(x)
    if layer.cheap_conv is None:
        return x
    ghosts = _apply(layer.cheap_conv, prefix, x)
    ghosts = _apply(layer.cheap_bn, prefix, ghosts)
    if layer.relu:
        ghosts = layers.ReLU(name=f"{prefix}_cheap_relu")(ghosts)
    out = layers.Concatenate(name=f"{prefix}_concat")([x, ghosts])
    if out.shape[-1] != layer.filters:
        out = ChannelSlice(layer.filters, name=f"{prefix}_slice")(out)
    return out


def _lower_bottleneck(layer, inputs):
    prefix = layer.name
    x = _lower_ghost(layer.ghost1, inputs, prefix)
    if layer.dw_conv is not None:
        x = _apply(layer.dw_bn, prefix, _apply(layer.dw_conv, prefix, x))
    if layer.se_reduce is not None:
        gate = layers.GlobalAveragePooling2D(keepdims=True, name=f"{prefix}_se_pool")(x)
        gate = _apply(layer.se_reduce, prefix, gate)
        gate = layers.ReLU(name=f"{prefix}_se_relu")(gate)
        gate = _apply(layer.se_expand, prefix, gate)
        gate = ShiftedReLU6(name=f"{prefix}_se_relu6")(gate)
        gate = layers.Rescaling(1.0 / 6.0, name=f"{prefix}_se_gate")(gate)
        x = layers.Multiply(name=f"{prefix}_se_scale")([x, gate])
    x = _lower_ghost(layer.ghost2, x, prefix)
    if layer.shortcut_conv is None:
        shortcut = inputs
    else:
        shortcut = _apply(layer.shortcut_dw, prefix, inputs)
        shortcut = _apply(layer.shortcut_dw_bn, prefix, shortcut)
        shortcut = _apply(layer.shortcut_conv, prefix, shortcut)
        shortcut = _apply(layer.shortcut_bn, prefix, shortcut)
    return layers.Add(name=f"{prefix}_add")([x, shortcut])


def _lower_shift_conv(layer, x):
    x = _apply(layer.shift, layer.name, x)
    return _apply(layer.pointwise, layer.name, x)


def _lower_binary(layer, x):
    """BinaryConv/BinaryDense(binarize_input=True) -> Sign + the layer on +/-1 inputs."""
    if not layer.binarize_input:
        return None  # already what the lowered form uses
    x = Sign(layer.ste, name=f"{layer.name}_sign")(x)
    config = layer.get_config()
    config.update(binarize_input=False)
    new = layer.__class__.from_config(config)
    out = new(x)
    new.set_weights(layer.get_weights())
    return out


_LOWERINGS = {
    BinaryConv: _lower_binary,
    BinaryDense: _lower_binary,
    GhostConv: lambda layer, x: _lower_ghost(layer, x, ""),
    GhostBottleneck: _lower_bottleneck,
    ShiftConv: _lower_shift_conv,
}


def lower_model(model):
    """Returns a copy of `model` with composite tfcompress layers expanded.

    Args:
        model: a built functional or Sequential model.

    Returns:
        A functional `keras.Model` computing the same function with the same
        weights, built only from standard Keras layers, `Shift`, `ChannelSlice`
        and `ShiftedReLU6` (plus any layer it did not need to touch).

    Raises:
        ValueError: for a subclassed model (Keras cannot clone it).

    Example:
        >>> flat = lower_model(models.resnet20(conv="ghost"))
        >>> any(isinstance(l, GhostConv) for l in flat.layers)
        False
    """
    if isinstance(model, keras.Sequential) and model.inputs:
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    if not hasattr(model, "_run_through_graph"):
        raise ValueError(
            f"lower_model needs a functional or Sequential model; {model.name!r} is a "
            f"subclassed {type(model).__name__}."
        )
    originals = {layer.name: layer for layer in model.layers}

    def clone(layer):
        return layer.__class__.from_config(layer.get_config())

    def call(new_layer, *args, **kwargs):
        original = originals[new_layer.name]
        lowering = _LOWERINGS.get(type(original))
        out = None if lowering is None else lowering(original, args[0])
        if out is not None:
            return out
        out = new_layer(*args, **kwargs)
        new_layer.set_weights(original.get_weights())
        return out

    return keras.models.clone_model(model, clone_function=clone, call_function=call)
