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
                       inputs with per-channel weights +/-alpha (exact in int8);
                       with input_order=n > 1 (HORQ) n x [Sign, ChannelMeanAbs
                       (LEAKY_RELU(-1) + MEAN), Multiply] with Subtract between
                       and Add after, then the conv on their sum
"""

import threading

import keras
from keras import layers, ops

from tfcompress.core.args import check_positive_int
from tfcompress.core.graph import ModelGraph, check_model
from tfcompress.core.rewrite import rebuild
from tfcompress.core.traits import layer_traits, register_layer_traits
from tfcompress.layers import (
    BinaryConv,
    BinaryDense,
    ChannelMeanAbs,
    GhostBottleneck,
    GhostConv,
    HashedDense,
    ShiftConv,
    Sign,
)

__all__ = ["ChannelSlice", "ShiftedReLU6", "lower_model", "lower_model_with_sources"]


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


# A slice keeps input elements (one int8 scale); relu6(x + 3) acts per element.
register_layer_traits(ChannelSlice, kind="other", value_preserving=True)
register_layer_traits(ShiftedReLU6, kind="pass_through")


def _copy(sublayer, prefix):
    """A new layer with `sublayer`'s config under a unique name; weights come later."""
    config = sublayer.get_config()
    config["name"] = f"{prefix}_{sublayer.name}"
    return sublayer.__class__.from_config(config)


# While `lower_model_with_sources` runs: {new layer name: the sublayer it copies}.
_SOURCES = threading.local()


def _apply(sublayer, prefix, x):
    new = _copy(sublayer, prefix)
    out = new(x)
    new.set_weights(sublayer.get_weights())
    record = getattr(_SOURCES, "names", None)
    if record is not None:
        record[new.name] = sublayer
    return out


def _lower_ghost(layer, x, prefix):
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


def _lower_bottleneck(layer, inputs, prefix):
    x = _lower_ghost(layer.ghost1, inputs, f"{prefix}_{layer.ghost1.name}")
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
    x = _lower_ghost(layer.ghost2, x, f"{prefix}_{layer.ghost2.name}")
    if layer.shortcut_conv is None:
        shortcut = inputs
    else:
        shortcut = _apply(layer.shortcut_dw, prefix, inputs)
        shortcut = _apply(layer.shortcut_dw_bn, prefix, shortcut)
        shortcut = _apply(layer.shortcut_conv, prefix, shortcut)
        shortcut = _apply(layer.shortcut_bn, prefix, shortcut)
    return layers.Add(name=f"{prefix}_add")([x, shortcut])


def _lower_shift_conv(layer, x, prefix):
    x = _apply(layer.shift, prefix, x)
    return _apply(layer.pointwise, prefix, x)


def _lower_horq(layer, x, prefix):
    """HORQ's x_hat = sum_i beta_i * H_i as layers, in the order `horq` computes it."""
    residual, total = x, None
    for i in range(1, layer.input_order + 1):
        signs = Sign(layer.ste, name=f"{prefix}_sign{i}")(residual)
        beta = ChannelMeanAbs(name=f"{prefix}_beta{i}")(residual)
        term = layers.Multiply(name=f"{prefix}_term{i}")([beta, signs])
        total = term if total is None else layers.Add(name=f"{prefix}_sum{i}")([total, term])
        if i < layer.input_order:
            residual = layers.Subtract(name=f"{prefix}_residual{i}")([residual, term])
    return total


def _lower_binary(layer, x, prefix):
    """BinaryConv/BinaryDense(binarize_input=True) -> Sign (or HORQ's terms) + the
    layer on the binarized inputs."""
    if not layer.binarize_input:
        return None  # already what the lowered form uses
    if layer.input_order == 1:
        x = Sign(layer.ste, name=f"{prefix}_sign")(x)
    else:
        x = _lower_horq(layer, x, prefix)
    config = layer.get_config()
    config.update(binarize_input=False, input_order=1, name=prefix)
    new = layer.__class__.from_config(config)
    out = new(x)
    new.set_weights(layer.get_weights())
    return out


def _lower_hashed(layer, x, prefix):
    """HashedDense -> Dense with the expanded virtual matrix (the file stores it dense)."""
    new = layers.Dense(layer.units, activation=layer.activation, use_bias=layer.use_bias,
                       name=prefix)
    out = new(x)
    weights = [ops.convert_to_numpy(layer.virtual_kernel())]
    new.set_weights(weights + ([ops.convert_to_numpy(layer.bias)] if layer.use_bias else []))
    return out


register_layer_traits(HashedDense, lowering=_lower_hashed)
register_layer_traits(BinaryConv, lowering=_lower_binary)
register_layer_traits(BinaryDense, lowering=_lower_binary)
register_layer_traits(GhostConv, lowering=_lower_ghost)
register_layer_traits(GhostBottleneck, lowering=_lower_bottleneck)
register_layer_traits(ShiftConv, lowering=_lower_shift_conv)


def lower_model(model):
    """Returns a copy of `model` with composite tfcompress layers expanded.

    Every layer whose traits carry a `lowering` (GhostConv, GhostBottleneck,
    ShiftConv, BinaryConv/BinaryDense with binarized inputs; a custom layer joins
    with `register_layer_traits(cls, lowering=fn)`, `fn(layer, inputs, name)`
    returning the outputs, or None to keep the layer) is replaced by the layers it
    is made of, named `<layer>_<sublayer>`. Nested models come out flattened.

    Args:
        model: a built functional or Sequential model (nested models and shared
            layers included).

    Returns:
        A functional `keras.Model` computing the same function with the same
        weights, built only from standard Keras layers, `Shift`, `ChannelSlice`
        and `ShiftedReLU6` (plus any layer it did not need to touch), with the
        model's input and output structure.

    Raises:
        ValueError: for a subclassed or unbuilt model.

    Example:
        >>> flat = lower_model(models.resnet20(conv="ghost"))
        >>> any(isinstance(l, GhostConv) for l in flat.layers)
        False
    """
    check_model(model, "lower_model")
    graph = ModelGraph(model)
    blocks = {}  # id(composite layer called several times) -> its lowered block model

    def node_fn(node, args, kwargs, state):
        lowering = layer_traits(node.layer).lowering
        if lowering is None or len(node.inputs) != 1:
            return None
        if len(graph.nodes_of(node.layer)) == 1:
            return lowering(node.layer, args[0], node.name)
        # A shared composite layer: its layers once, as a block called at every call
        # (flattened below, so the calls share the lowered layers).
        key = id(node.layer)
        if key not in blocks:
            block_input = keras.Input(batch_shape=node.inputs[0].shape)
            out = lowering(node.layer, block_input, node.name)
            blocks[key] = None if out is None else keras.Model(
                block_input, out, name=f"{node.name}_lowered"
            )
        return None if blocks[key] is None else blocks[key](args[0])

    lowered = rebuild(graph, node_fn=node_fn, keep_sequential=False)
    return rebuild(lowered, keep_sequential=False) if any(blocks.values()) else lowered


def lower_model_with_sources(model):
    """`lower_model(model)`, and where each layer of the result comes from.

    Args:
        model: as `lower_model`.

    Returns:
        `(lowered, sources)`: the lowered model and a dict {id(lowered layer): the
        layer of `model` it copies}, where that is a sublayer of a composite layer
        (e.g. GhostConv's `primary_bn`) for the layers lowering made, and the
        model's own layer (found by flat name) for the others. Lets a technique run
        on the lowered graph and write its result back (`recalibrate_batchnorm`).

    Raises:
        ValueError: as `lower_model`.
    """
    graph = ModelGraph(model)
    previous = getattr(_SOURCES, "names", None)
    _SOURCES.names = {}
    try:
        lowered = lower_model(model)
        made = _SOURCES.names
    finally:
        _SOURCES.names = previous
    sources = {}
    for layer in ModelGraph(lowered).layers:
        source = made.get(layer.name)
        if source is None:
            source = graph.layer_named(layer.name)
        if source is not None:
            sources[id(layer)] = source
    return lowered, sources
