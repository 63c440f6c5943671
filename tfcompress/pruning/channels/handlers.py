"""How structured pruning follows and removes the channels of each layer type.

One `ChannelHandler` per layer type, registered in the layer-traits registry
(`tfcompress.core.traits`, field `channels`); a custom layer joins with
`register_layer_traits(MyLayer, channels=MyHandler())`. A handler answers four
questions about a layer, in the terms of the channel analysis (`groups`): every
tensor's last axis is a list of channel units, and units that must be removed
together share one class (DepGraph's rules, Fang et al., CVPR 2023):

- `propagate`: which units the layer's outputs carry, given its inputs'. A producer
  (Conv, Dense, ...) makes a new space of units; a channel-preserving layer
  (BatchNormalization, activations, pooling, depthwise convolution) passes its
  input's units on; an element-wise merge (Add, Multiply, ...) makes the units of
  its inputs one; a concatenation lays its inputs' units side by side; Flatten
  repeats each unit over the spatial positions. A layer it cannot follow pins the
  units it touches (they cannot be removed) and says why.
- `slices`: the weights that belong to each channel (a producer's filters, a
  consumer's input slices, BatchNorm's per-channel values), which importance
  criteria score and pruning cuts.
- `zero` / `neutral`: whether an output channel is exactly zero whatever the input
  (a zero filter and bias), and whether removing an all-zero input channel leaves
  the layer's output unchanged; channels that are zero everywhere go first.
- `prune`: the layer's config and weights with only the kept channels.
"""

import math

import keras
import numpy as np
from keras import layers

from tfcompress.core.traits import layer_traits, register_layer_traits
from tfcompress.layers import (
    AdderConv,
    AdderDense,
    BinaryConv,
    BinaryDense,
    Shift,
    Sign,
)
from tfcompress.lowering import ChannelSlice, ShiftedReLU6

__all__ = [
    "ChannelHandler",
    "ConcatHandler",
    "DepthwiseHandler",
    "ElementwiseHandler",
    "FlattenHandler",
    "MergeHandler",
    "PinHandler",
    "ProducerHandler",
    "ReshapeHandler",
    "SeparableHandler",
    "Slice",
    "handler_for",
]


class Slice:
    """Weights of one layer that belong to channels along one axis.

    Attributes:
        attr: the layer attribute holding the variable ("kernel", "gamma", ...).
        axis: the channel axis of the variable.
        role: "out" (aligned with the layer's output channels) or "in" (with its
            input's channels).
        tag: "kernel", "bias", "gamma", "beta", "stat" or "alpha": what the values
            are (criteria choose by tag).
        block: how many consecutive entries of the axis one channel owns (a
            separable convolution's pointwise kernel: the depth multiplier).
    """

    def __init__(self, attr, axis, role, tag, block=1):
        self.attr, self.axis, self.role, self.tag, self.block = attr, axis, role, tag, block

    def variable(self, layer):
        return getattr(layer, self.attr, None)

    def __repr__(self):
        return f"Slice({self.attr!r}, axis={self.axis}, {self.role}, {self.tag})"


def _keep_axis(array, axis, keep, block=1):
    keep = np.asarray(keep, dtype=np.int64)
    if block > 1:
        keep = (keep[:, None] * block + np.arange(block)[None, :]).ravel()
    return np.take(array, keep, axis=axis)


class ChannelHandler:
    """How structured pruning treats one layer type (module docstring). The default
    follows nothing: it pins every unit the layer touches."""

    def propagate(self, ctx, node, in_maps):
        """The output maps (one list of unit keys per output tensor).

        Args:
            ctx: the analysis (`groups.ChannelAnalysis`): `new_space`, `union`, `pin`.
            node: the `GraphNode`.
            in_maps: one list of unit keys per input tensor.
        """
        reason = (f"layer {node.name!r} ({type(node.layer).__name__}) is not handled by "
                  "channel pruning")
        for keys in in_maps:
            ctx.pin(keys, reason)
        return [ctx.new_space(node, t.shape[-1] if t.shape else 1, output=i, pinned=reason)
                for i, t in enumerate(node.outputs)]

    def slices(self, layer):
        """The layer's channel weights (a list of `Slice`)."""
        return []

    def zero(self, layer, node, in_zero):
        """Per output tensor, a bool array: is the channel exactly 0 for any input?

        `in_zero` holds, per input tensor, whether each channel is exactly zero."""
        return [np.zeros(t.shape[-1] if t.shape else 1, bool) for t in node.outputs]

    def neutral(self, layer):
        """True if dropping an all-zero input channel leaves the output unchanged."""
        return False

    def prune(self, layer, node, keep_in, keep_out):
        """(config, weights or None) of the layer with the kept channels.

        Args:
            layer: the layer.
            node: one of its `GraphNode`s.
            keep_in: per input tensor, the kept channel indices.
            keep_out: per output tensor, the kept channel indices.
        """
        return layer.get_config(), self._weights(layer, keep_in, keep_out)

    def _weights(self, layer, keep_in, keep_out):
        slices = self.slices(layer)
        if not layer.weights:
            return None
        by_var = {}
        for s in slices:
            var = s.variable(layer)
            if var is not None:
                by_var.setdefault(id(var), []).append(s)
        arrays = []
        for var in layer.weights:
            value = np.asarray(var.numpy())
            for s in by_var.get(id(var), ()):
                keep = keep_out[0] if s.role == "out" else keep_in[0]
                value = _keep_axis(value, s.axis, keep, s.block)
            arrays.append(value)
        return arrays


class PinHandler(ChannelHandler):
    """The default: a layer structured pruning cannot follow."""


def _width(node, i=0):
    return node.outputs[i].shape[-1]


class ProducerHandler(ChannelHandler):
    """A layer that makes new channels from its input's (Conv*, Dense, AdderConv, ...).

    Args:
        count_key: the config key of the output channel count ("filters", "units").
        kernel_axes: (input-channel axis, output-channel axis) of the kernel.
        zero_filters: a zero filter and bias give a zero output channel (False for
            AdderConv, whose output is -sum |x - w|).
        neutral: an all-zero input channel contributes nothing (False for AdderConv
            and for layers that binarize their input: sign(0) = +1).
    """

    def __init__(self, count_key, kernel_axes=(-2, -1), zero_filters=True, neutral=True):
        self.count_key = count_key
        self.in_axis, self.out_axis = kernel_axes
        self.zero_filters = zero_filters
        self._neutral = neutral

    def _supported(self, layer):
        return getattr(layer, "groups", 1) == 1 and getattr(
            layer, "data_format", "channels_last") == "channels_last"

    def propagate(self, ctx, node, in_maps):
        if not self._supported(node.layer):
            return super().propagate(ctx, node, in_maps)
        ctx.consume(node, 0)
        return [ctx.new_space(node, _width(node))]

    def slices(self, layer):
        out = [Slice("kernel", self.in_axis, "in", "kernel"),
               Slice("kernel", self.out_axis, "out", "kernel")]
        if getattr(layer, "bias", None) is not None:
            out.append(Slice("bias", 0, "out", "bias"))
        return out

    def zero(self, layer, node, in_zero):
        width = _width(node)
        if not self.zero_filters:
            return [np.zeros(width, bool)]
        kernel = np.asarray(layer.kernel.numpy())
        axes = tuple(a for a in range(kernel.ndim) if a != self.out_axis % kernel.ndim)
        zero = np.all(kernel == 0, axis=axes)
        bias = getattr(layer, "bias", None)
        if bias is not None:
            zero &= np.asarray(bias.numpy()) == 0
        return [zero]

    def neutral(self, layer):
        if isinstance(layer, (BinaryConv, BinaryDense)):
            return not layer.binarize_input
        return self._neutral

    def prune(self, layer, node, keep_in, keep_out):
        config = layer.get_config()
        config[self.count_key] = len(keep_out[0])
        return config, self._weights(layer, keep_in, keep_out)


class BinaryHandler(ProducerHandler):
    """BinaryConv / BinaryDense: a zero latent filter has alpha = 0 (a zero output
    channel) only with the per-channel scale."""

    def zero(self, layer, node, in_zero):
        if layer.scale != "channel":
            return [np.zeros(_width(node), bool)]
        return super().zero(layer, node, in_zero)


class DepthwiseHandler(ChannelHandler):
    """DepthwiseConv2D / 1D: each input channel gives `depth_multiplier` output channels
    (c * m + k); input and output shrink together."""

    def propagate(self, ctx, node, in_maps):
        layer = node.layer
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            return super().propagate(ctx, node, in_maps)
        m = layer.depth_multiplier
        ctx.consume(node, 0)
        return [[key for key in in_maps[0] for _ in range(m)]]

    def slices(self, layer):
        out = [Slice("kernel", -2, "in", "kernel")]
        if getattr(layer, "bias", None) is not None:
            out.append(Slice("bias", 0, "out", "bias"))
        return out

    def zero(self, layer, node, in_zero):
        kernel = np.asarray(layer.kernel.numpy())  # (..., C, m): output channel c * m + k
        zero = np.all(kernel == 0, axis=tuple(range(kernel.ndim - 2)))
        zero = (zero | np.asarray(in_zero[0])[:, None]).reshape(-1)
        if layer.bias is not None:
            zero &= np.asarray(layer.bias.numpy()) == 0
        return [zero]

    def neutral(self, layer):
        return True


class SeparableHandler(ProducerHandler):
    """SeparableConv2D / 1D: a depthwise convolution (input channels) then a pointwise
    one (new output channels)."""

    def __init__(self):
        super().__init__("filters")

    def slices(self, layer):
        m = layer.depth_multiplier
        out = [Slice("depthwise_kernel", -2, "in", "kernel"),
               Slice("pointwise_kernel", -2, "in", "kernel", block=m),
               Slice("pointwise_kernel", -1, "out", "kernel")]
        if getattr(layer, "bias", None) is not None:
            out.append(Slice("bias", 0, "out", "bias"))
        return out

    def zero(self, layer, node, in_zero):
        pointwise = np.asarray(layer.pointwise_kernel.numpy())
        zero = np.all(pointwise == 0, axis=tuple(range(pointwise.ndim - 1)))
        if layer.bias is not None:
            zero &= np.asarray(layer.bias.numpy()) == 0
        return [zero]


def _zero_map(layer, node):
    """Which output channels an element-wise layer maps an all-zero input to zero (the
    layer run once on zeros, inference mode); all False if it cannot be run so."""
    shape = tuple(1 if d is None else d for d in node.inputs[0].shape)
    try:
        out = np.asarray(layer(np.zeros(shape, np.float32)))
    except (ValueError, TypeError):
        return np.zeros(node.outputs[0].shape[-1], bool)
    return np.all(out.reshape(-1, out.shape[-1]) == 0, axis=0)


class ElementwiseHandler(ChannelHandler):
    """A layer that keeps its single input's channels one to one (activations,
    pooling, dropout, padding, BatchNormalization, PReLU, ...).

    Args:
        slices: the layer's per-channel weights (`Slice`s, role "out").
    """

    def __init__(self, slices=()):
        self._slices = tuple(slices)

    def propagate(self, ctx, node, in_maps):
        if len(in_maps) != 1:
            return super().propagate(ctx, node, in_maps)
        ctx.through(node)
        return [list(in_maps[0])]

    def slices(self, layer):
        return [s for s in self._slices if s.variable(layer) is not None]

    def zero(self, layer, node, in_zero):
        return [np.asarray(in_zero[0]) & _zero_map(layer, node)]

    def neutral(self, layer):
        return True


class PReLUHandler(ElementwiseHandler):
    """PReLU: its alpha is per channel unless the channel axis is shared."""

    def slices(self, layer):
        shared = layer.shared_axes or []
        if -1 in shared or (layer.alpha.shape and layer.alpha.shape[-1] == 1):
            return []
        return [Slice("alpha", -1, "out", "alpha")]


class ChannelSliceHandler(ElementwiseHandler):
    """`ChannelSlice(n)` keeps the first n channels: a channel past n is dropped."""

    def propagate(self, ctx, node, in_maps):
        ctx.through(node)
        return [list(in_maps[0][: node.layer.channels])]

    def zero(self, layer, node, in_zero):
        return [np.asarray(in_zero[0])[: layer.channels]]

    def prune(self, layer, node, keep_in, keep_out):
        config = layer.get_config()
        config["channels"] = len(keep_out[0])
        return config, None


class ReshapeHandler(ElementwiseHandler):
    """Reshape that keeps the last dimension: every element keeps its channel."""

    def propagate(self, ctx, node, in_maps):
        if node.inputs[0].shape[-1] != node.outputs[0].shape[-1]:
            return ChannelHandler.propagate(self, ctx, node, in_maps)
        return super().propagate(ctx, node, in_maps)

    def zero(self, layer, node, in_zero):
        return [np.asarray(in_zero[0])]

    def prune(self, layer, node, keep_in, keep_out):
        config = layer.get_config()
        config["target_shape"] = tuple(config["target_shape"][:-1]) + (len(keep_out[0]),)
        return config, None


class FlattenHandler(ChannelHandler):
    """Flatten (channels last): each channel becomes one row of every spatial position,
    `p * C + c`, so a Dense behind it loses blocks of H*W rows."""

    def propagate(self, ctx, node, in_maps):
        shape = node.inputs[0].shape
        if any(d is None for d in shape[1:]) or getattr(
                node.layer, "data_format", "channels_last") == "channels_first":
            return super().propagate(ctx, node, in_maps)
        ctx.through(node)
        positions = math.prod(shape[1:-1])
        return [list(in_maps[0]) * positions]

    def zero(self, layer, node, in_zero):
        positions = math.prod(node.inputs[0].shape[1:-1])
        return [np.tile(np.asarray(in_zero[0]), positions)]

    def neutral(self, layer):
        return True


class MergeHandler(ChannelHandler):
    """Add, Subtract, Multiply, Average, Maximum, Minimum: every input keeps the same
    channels, so their units are one (an input broadcast along the channel axis,
    width 1, takes no part).

    Args:
        zero_if: "all" (the output is zero where every input is) or "any" (Multiply).
    """

    def __init__(self, zero_if="all"):
        self.zero_if = zero_if

    def propagate(self, ctx, node, in_maps):
        width = _width(node)
        full = [keys for keys in in_maps if len(keys) == width]
        for keys in full[1:]:
            for a, b in zip(full[0], keys):
                ctx.union(a, b)
        ctx.through(node)
        return [list(full[0])]

    def zero(self, layer, node, in_zero):
        width = _width(node)
        out = np.full(width, self.zero_if == "all")
        for z in in_zero:  # a broadcast input (width 1) is zero for every channel or none
            z = np.asarray(z) if len(z) == width else np.full(width, bool(np.all(z)))
            out = out & z if self.zero_if == "all" else out | z
        return [out]

    def neutral(self, layer):
        return True


class ConcatHandler(ChannelHandler):
    """Concatenate: along the channel axis the inputs' units lie side by side (each
    input keeps its offset); along another axis it is a merge."""

    def _on_channels(self, layer, node):
        rank = len(node.outputs[0].shape)
        return layer.axis in (-1, rank - 1)

    def propagate(self, ctx, node, in_maps):
        if not self._on_channels(node.layer, node):
            return MergeHandler().propagate(ctx, node, in_maps)
        ctx.through(node)
        return [[key for keys in in_maps for key in keys]]

    def zero(self, layer, node, in_zero):
        if not self._on_channels(layer, node):
            return MergeHandler().zero(layer, node, in_zero)
        return [np.concatenate([np.asarray(z) for z in in_zero])]

    def neutral(self, layer):
        return True


class ShiftHandler(ChannelHandler):
    """Shift gives each channel an offset by its position among the channels: removing
    one would move every later channel's offset, so its input cannot be pruned."""

    def propagate(self, ctx, node, in_maps):
        ctx.pin(in_maps[0], f"layer {node.name!r} (Shift) assigns offsets by channel position")
        return [list(in_maps[0])]

    def zero(self, layer, node, in_zero):
        return [np.asarray(in_zero[0])]


def handler_for(layer):
    """The `ChannelHandler` of a layer (a `PinHandler` for types without one)."""
    handler = layer_traits(layer).channels
    return handler if handler is not None else PinHandler()


# -------------------------------------------------------------------------- registry

_CONV_COUNT = "filters"
for _cls in (layers.Conv1D, layers.Conv2D, layers.Conv3D):
    register_layer_traits(_cls, channels=ProducerHandler(_CONV_COUNT))
for _cls in (layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose):
    register_layer_traits(_cls, channels=ProducerHandler(_CONV_COUNT, kernel_axes=(-1, -2)))
register_layer_traits(layers.Dense, channels=ProducerHandler("units"))
for _cls in (layers.DepthwiseConv1D, layers.DepthwiseConv2D):
    register_layer_traits(_cls, channels=DepthwiseHandler())
for _cls in (layers.SeparableConv1D, layers.SeparableConv2D):
    register_layer_traits(_cls, channels=SeparableHandler())
register_layer_traits(AdderConv, channels=ProducerHandler(
    _CONV_COUNT, zero_filters=False, neutral=False))
register_layer_traits(AdderDense, channels=ProducerHandler(
    "units", zero_filters=False, neutral=False))
register_layer_traits(BinaryConv, channels=BinaryHandler(_CONV_COUNT))
register_layer_traits(BinaryDense, channels=BinaryHandler("units"))

_BN_SLICES = (
    Slice("gamma", 0, "out", "gamma"), Slice("beta", 0, "out", "beta"),
    Slice("moving_mean", 0, "out", "stat"), Slice("moving_variance", 0, "out", "stat"),
)


class BatchNormHandler(ElementwiseHandler):
    """BatchNormalization over the last axis: a zero channel stays zero where
    `beta - gamma * mean / sqrt(var + eps)` is exactly zero."""

    def __init__(self):
        super().__init__(_BN_SLICES)

    def propagate(self, ctx, node, in_maps):
        axis = node.layer.axis
        rank = len(node.inputs[0].shape)
        if (axis[0] if isinstance(axis, (list, tuple)) else axis) not in (-1, rank - 1):
            return ChannelHandler.propagate(self, ctx, node, in_maps)
        return super().propagate(ctx, node, in_maps)

    def zero(self, layer, node, in_zero):
        return [np.asarray(in_zero[0]) & _zero_map(layer, node)]


register_layer_traits(layers.BatchNormalization, channels=BatchNormHandler())
for _cls in (
    layers.ReLU, layers.LeakyReLU, layers.ELU, layers.Softmax, layers.Activation,
    layers.Rescaling, layers.Dropout, layers.SpatialDropout1D, layers.SpatialDropout2D,
    layers.Identity, layers.AveragePooling1D, layers.AveragePooling2D, layers.AveragePooling3D,
    layers.MaxPooling1D, layers.MaxPooling2D, layers.MaxPooling3D,
    layers.GlobalAveragePooling1D, layers.GlobalAveragePooling2D, layers.GlobalAveragePooling3D,
    layers.GlobalMaxPooling1D, layers.GlobalMaxPooling2D, layers.GlobalMaxPooling3D,
    layers.ZeroPadding1D, layers.ZeroPadding2D, layers.ZeroPadding3D,
    layers.Cropping1D, layers.Cropping2D, layers.Cropping3D, Sign, ShiftedReLU6,
):
    register_layer_traits(_cls, channels=ElementwiseHandler())
register_layer_traits(layers.PReLU, channels=PReLUHandler())
register_layer_traits(ChannelSlice, channels=ChannelSliceHandler())
register_layer_traits(layers.Reshape, channels=ReshapeHandler())
register_layer_traits(layers.Flatten, channels=FlattenHandler())
for _cls in (layers.Add, layers.Subtract, layers.Average, layers.Maximum, layers.Minimum):
    register_layer_traits(_cls, channels=MergeHandler("all"))
register_layer_traits(layers.Multiply, channels=MergeHandler("any"))
register_layer_traits(layers.Concatenate, channels=ConcatHandler())
register_layer_traits(Shift, channels=ShiftHandler())
register_layer_traits(keras.layers.InputLayer, channels=PinHandler())
del _cls
