"""Adder layers: convolution and dense layers built on the L1 distance (AdderNet).

Reference: Chen, Wang, Xu, Shi, Xu, Xu, Tian, Xu. "AdderNet: Do We Really Need
Multiplications in Deep Learning?", CVPR 2020, arXiv:1912.13200.
"""

import contextlib
import math
import threading

import keras
from keras import ops

from tfcompress.core.traits import register_layer_traits
from tfcompress.layers._base import Conv2DGeometry, DenseGeometry, KernelLayer
from tfcompress.layers._utils import output_length, same_pads

__all__ = [
    "AdderConv",
    "AdderDense",
    "adaptive_gradient_scale",
    "adder_distance",
    "in_tflite_graph",
    "magnitude",
    "tflite_distance",
    "tflite_graph",
    "unit_channel_sum",
]

# Largest number of elements of the (rows, C_in, C_out_chunk) difference tensor
# built per sample and kernel position; bounds memory whatever the batch size.
_ELEMENTS_PER_ROW_CHUNK = 1 << 20


def _output_channel_chunks(rows_per_sample, in_channels, out_channels):
    per_channel = max(1, rows_per_sample * in_channels)
    chunk = max(1, min(out_channels, _ELEMENTS_PER_ROW_CHUNK // per_channel))
    return [(start, min(start + chunk, out_channels)) for start in range(0, out_channels, chunk)]


_TRACING = threading.local()


@contextlib.contextmanager
def tflite_graph():
    """Within this context the adder layers trace as integer-only TFLite should run them.

    `magnitude` is LEAKY_RELU(alpha=-1), not ABS, and AdderConv / AdderDense sum
    with one rounding (`tflite_distance`: all kernel positions in one fully
    connected reduction).

    `tfcompress.export.to_tflite` traces the model inside it. LiteRT's XNNPACK
    delegate runs an int8 LEAKY_RELU but not an int8 ABS, which falls back to a
    builtin kernel about 100 times slower (benchmarks/RESULTS.md, "op ABS" and
    "op LEAKY_RELU(-1)"). Training keeps ABS: under XLA it is faster than the
    select that leaky_relu compiles to.

    Example:
        >>> with tflite_graph():
        ...     model.export(path, format="tf_saved_model")
    """
    previous = getattr(_TRACING, "tflite", False)
    _TRACING.tflite = True
    try:
        yield
    finally:
        _TRACING.tflite = previous


def in_tflite_graph():
    """True inside `tflite_graph()` (the model is being traced for TFLite)."""
    return getattr(_TRACING, "tflite", False)


def unit_channel_sum(x, w, weight=1.0):
    """`weight * sum_c |x[..., c] - w[c, o]|` with every reduction a 1x1 convolution.

        d[n, p, o, c] = x[n, p, c] - w[c, o]               SUB
        y[n, p, o]    = weight * sum_c |d[n, p, o, c]|     LEAKY_RELU(-1), CONV_2D 1x1

    The convolution has one output channel of constant weights (+1 or -1: exact
    in int8 at scale 1/127), so the sum is accumulated in int32 and rounded once,
    the same on every runtime; int8 SUM kernels round differently on LiteRT's
    optimized kernels, its reference kernels and TFLM. Every reshape keeps the
    batch axis apart (TFLM plans tensors with the file's static batch of 1).

    Args:
        x: tensor of shape (N, ..., C_in).
        w: tensor of shape (C_in, C_out).
        weight: the constant of the reduction (-1.0 for the adder's negated sum).

    Returns:
        (d, sum): the (N, P, C_out, C_in) difference (P = the positions of `...`),
        so a caller can quantize it, and a function of |d| giving (N, ..., C_out).
    """
    in_channels, out_channels = w.shape
    positions = math.prod(x.shape[1:-1])
    rows = ops.reshape(x, (-1, positions, 1, in_channels))
    ones = ops.full((1, 1, in_channels, 1), weight, dtype=x.dtype)

    def reduce(magnitudes):
        summed = ops.conv(magnitudes, ones)  # (N, P, C_out, 1)
        return ops.reshape(summed, (-1, *x.shape[1:-1], out_channels))

    return rows - ops.transpose(w), reduce


def magnitude(x):
    """`|x|`: `ops.abs(x)`, or inside `tflite_graph()` `leaky_relu(x, negative_slope=-1)`.

    The two are equal in float (values; zero may come out as -0.0), so a model
    exported for TFLite computes what it trained with.

    Args:
        x: a tensor.

    Returns:
        `|x|`, same shape and dtype.
    """
    if in_tflite_graph():
        return ops.leaky_relu(x, negative_slope=-1.0)
    return ops.abs(x)


def adder_distance(x, w, rows_per_sample=1):
    """Negative L1 distance between every row of `x` and every column of `w`.

        y[..., o] = -sum_c |x[..., c] - w[c, o]|

    Backward pass (AdderNet eq. 5 and eq. 8):

        dL/dw[c, o] = sum_rows (x[..., c] - w[c, o]) * g[..., o]      (full precision)
        dL/dx[..., c] = sum_o HardTanh(w[c, o] - x[..., c]) * g[..., o]

    where `HardTanh(z) = clip(z, -1, 1)`. The weight gradient reduces to two matrix
    products, `x^T g - w * sum(g)`. Forward and input gradient are evaluated in
    chunks of output channels so that the broadcast difference tensor holds at
    most about 2**20 elements per sample (`rows_per_sample * C_in * chunk`).

    Args:
        x: tensor of shape (..., C_in).
        w: tensor of shape (C_in, C_out).
        rows_per_sample: rows of `x` that belong to one batch element (e.g. the
            output pixels of a convolution); only used to size the chunks.

    Returns:
        Tensor of shape (..., C_out).
    """
    in_channels, out_channels = w.shape
    chunks = _output_channel_chunks(rows_per_sample, in_channels, out_channels)

    @ops.custom_gradient
    def _distance(x, w):
        # Eager tf.custom_gradient runs the forward under the recording tape;
        # without stop_gradient every chunk's difference tensor would be kept
        # alive until tape.gradient (twice the full tensor for a conv layer).
        x_const, w_const = ops.stop_gradient(x), ops.stop_gradient(w)
        outs = []
        for start, stop in chunks:
            diff = ops.expand_dims(x_const, -1) - w_const[:, start:stop]
            # x * -1 rather than -x: TFLite has an int8 MUL but no int8 NEG.
            outs.append(ops.sum(magnitude(diff), axis=-2) * -1.0)
        y = outs[0] if len(outs) == 1 else ops.concatenate(outs, axis=-1)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            g = upstream
            x_rows = ops.reshape(x, (-1, in_channels))
            g_rows = ops.reshape(g, (-1, out_channels))
            grad_w = ops.matmul(ops.transpose(x_rows), g_rows) - w * ops.sum(
                g_rows, axis=0, keepdims=True
            )
            grad_x = 0.0
            for start, stop in chunks:
                diff = w[:, start:stop] - ops.expand_dims(x, -1)
                grad_x = grad_x + ops.sum(
                    ops.clip(diff, -1.0, 1.0) * ops.expand_dims(g[..., start:stop], -2),
                    axis=-1,
                )
            return grad_x, grad_w

        return y, grad

    return _distance(x, w)


def tflite_distance(x, w, rows_per_sample=1):
    """`adder_distance` as integer-only TFLite should run it: one rounding per sum.

    `-sum_c |x - w|` by `unit_channel_sum` (SUB, LEAKY_RELU(-1), a 1x1 CONV_2D with
    weights -1), in chunks of output channels as `adder_distance` (the difference
    tensor of one chunk holds about 2**20 elements per sample). Only used inside
    `tflite_graph()`; no gradient is defined through it.

    Args:
        x: tensor of shape (N, ..., C_in).
        w: tensor of shape (C_in, C_out).
        rows_per_sample: rows of `x` per batch element; sizes the chunks.

    Returns:
        Tensor of shape (N, ..., C_out).
    """
    in_channels, out_channels = w.shape
    outs = []
    for start, stop in _output_channel_chunks(rows_per_sample, in_channels, out_channels):
        diff, reduce = unit_channel_sum(x, w[:, start:stop], weight=-1.0)
        outs.append(reduce(magnitude(diff)))
    return outs[0] if len(outs) == 1 else ops.concatenate(outs, axis=-1)


def adaptive_gradient_scale(w, eta):
    """Identity on `w` whose backward rescales the gradient to AdderNet's local rate.

        g  ->  eta * sqrt(k) * g / ||g||_2,    k = number of elements of w

    (AdderNet eq. 12-13). Because it rewrites the gradient before the optimizer
    sees it, it works with any Keras optimizer, `model.fit` or a custom loop, and
    needs no callback. Gradients that reach `w` by other paths (for example the
    regularizer's) are not rescaled, as in the reference code.

    Args:
        w: the weight tensor.
        eta: the paper's eta (0.2 in the paper).

    Returns:
        `w`, unchanged in the forward pass.
    """
    scale = float(eta) * math.sqrt(math.prod(w.shape))

    @ops.custom_gradient
    def _scaled(w):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            norm = ops.sqrt(ops.sum(ops.square(upstream)))
            return upstream * (scale / ops.maximum(norm, 1e-12))

        return ops.copy(w), grad

    return _scaled(w)


class _AdderBase(KernelLayer):
    """Shared `eta` handling of AdderConv and AdderDense."""

    def __init__(self, eta, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if eta is not None and (
            isinstance(eta, bool) or not isinstance(eta, (int, float)) or eta <= 0
        ):
            raise ValueError(
                f"`eta` must be a positive number, or None to disable the adaptive "
                f"learning rate. Received: eta={eta!r}"
            )
        self.eta = None if eta is None else float(eta)

    def _kernel_for_call(self):
        # ops.copy reads the variable into a tensor: custom gradients take tensors.
        kernel = ops.copy(self.kernel)
        if self.eta is not None:
            kernel = adaptive_gradient_scale(kernel, self.eta)
        return kernel

    def get_config(self):
        config = super().get_config()
        config.update(eta=self.eta)
        return config


@keras.saving.register_keras_serializable(package="tfcompress")
class AdderConv(Conv2DGeometry, _AdderBase):
    """2D adder convolution: the negative L1 distance replaces cross-correlation.

        Y[n, h, w, o] = -sum_{i, j, c} |X[n, h*s + i, w*s + j, c] - W[i, j, c, o]|

    over the (zero-padded, for "same") receptive field. Training follows AdderNet:
    the weight gradient is the full-precision `X - W`, the input gradient is
    `HardTanh(W - X)`, and (unless `eta=None`) the layer's whole weight gradient is
    rescaled to `eta * sqrt(k) / ||g||_2` with `k = kh*kw*C_in*filters` inside the
    backward pass, so any optimizer and `model.fit` apply the paper's adaptive
    learning rate unchanged. Outputs are <= 0 with a large variance: follow every
    AdderConv by BatchNormalization, as the paper does.

    Cost: `2 * kh*kw*C_in` additions (one subtraction, one accumulation) and no
    multiplications per output element. Memory: the difference tensor is built one
    kernel position and one chunk of output channels at a time (at most about
    2**20 elements per sample), never the full (N, H, W, kh*kw*C_in, C_out)
    tensor. Compiling the model with `jit_compile=True` fuses the chunks and is
    several times faster on CPU.

    Args:
        filters: output channels.
        kernel_size: int or 2-tuple.
        strides: int or 2-tuple.
        padding: "same" (zero padding, as TensorFlow pads) or "valid".
        eta: AdderNet's eta for the adaptive learning rate (0.2 in the paper), or
            None for the plain gradient.
        use_bias: whether to add a bias (off by default, as in the paper).
        kernel_initializer: defaults to N(0, 1), the reference code's init.
        bias_initializer, kernel_regularizer, bias_regularizer: as in Conv2D.
        **kwargs: standard Layer arguments.

    Raises:
        ValueError: for non-positive filters/kernel/strides, unknown padding or a
            non-positive eta.

    Example:
        >>> layer = AdderConv(16, 3)
        >>> layer(keras.ops.ones((2, 8, 8, 4))).shape
        (2, 8, 8, 16)
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        padding="same",
        eta=0.2,
        use_bias=False,
        kernel_initializer=None,
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        if kernel_initializer is None:
            kernel_initializer = keras.initializers.RandomNormal(stddev=1.0)
        super().__init__(
            eta,
            use_bias,
            kernel_initializer,
            bias_initializer,
            kernel_regularizer,
            bias_regularizer,
            **kwargs,
        )
        self.init_geometry(filters, kernel_size, strides, padding)

    def build(self, input_shape):
        self.add_kernel_and_bias(self.check_input_shape(input_shape, need_spatial=True))

    def kernel_patches(self, inputs):
        """What each kernel position sees: `[((i, j), patch), ...]` in row-major order.

        `patch[n, h, w, c] = X_pad[n, h*s_h + i, w*s_w + j, c]` for every output pixel
        (h, w), X_pad zero-padded as TensorFlow pads "same"; the layer's output is
        `sum_{i,j} -sum_c |patch_ij[..., c] - W[i, j, c, :]|`. The int8 QAT wrapper
        computes the same sum step by step.

        Args:
            inputs: a (N, H, W, C_in) tensor.

        Returns:
            A list of `kh * kw` pairs; each patch has shape (N, H_out, W_out, C_in).
        """
        kh, kw = self.kernel_size
        sh, sw = self.strides
        height, width = inputs.shape[1], inputs.shape[2]
        if self.padding == "same":
            pad_h, pad_w = same_pads(height, kh, sh), same_pads(width, kw, sw)
            inputs = ops.pad(inputs, [[0, 0], list(pad_h), list(pad_w), [0, 0]])
        out_h = output_length(height, kh, sh, self.padding)
        out_w = output_length(width, kw, sw, self.padding)
        return [
            ((i, j), inputs[:, i : i + sh * (out_h - 1) + 1 : sh, j : j + sw * (out_w - 1) + 1 : sw, :])
            for i in range(kh) for j in range(kw)
        ]

    def call(self, inputs):
        kernel = self._kernel_for_call()
        if in_tflite_graph():
            # Every kernel position in one sum: taps side by side on the channel axis,
            # the kernel flattened in the same (i, j, c) order.
            patches = [patch for _, patch in self.kernel_patches(inputs)]
            rows = patches[0].shape[1] * patches[0].shape[2]
            stacked = patches[0] if len(patches) == 1 else ops.concatenate(patches, axis=-1)
            flat = ops.reshape(kernel, (-1, kernel.shape[-1]))
            return self.add_bias(tflite_distance(stacked, flat, rows_per_sample=rows))
        outputs = None
        for (i, j), patch in self.kernel_patches(inputs):
            rows = patch.shape[1] * patch.shape[2]
            part = adder_distance(patch, kernel[i, j], rows_per_sample=rows)
            outputs = part if outputs is None else outputs + part
        return self.add_bias(outputs)


@keras.saving.register_keras_serializable(package="tfcompress")
class AdderDense(DenseGeometry, _AdderBase):
    """Fully connected adder layer: `y[o] = -sum_i |x[i] - W[i, o]| (+ b[o])`.

    Same training rules as AdderConv (full-precision weight gradient, HardTanh
    input gradient, adaptive learning rate with `eta`).

    Args:
        units: output features.
        eta: adaptive learning rate eta, or None.
        use_bias: whether to add a bias (off by default).
        kernel_initializer: defaults to N(0, 1).
        bias_initializer, kernel_regularizer, bias_regularizer: as in Dense.
        **kwargs: standard Layer arguments.

    Raises:
        ValueError: for non-positive units or eta.

    Example:
        >>> AdderDense(10)(keras.ops.ones((4, 64))).shape
        (4, 10)
    """

    def __init__(
        self,
        units,
        eta=0.2,
        use_bias=False,
        kernel_initializer=None,
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        if kernel_initializer is None:
            kernel_initializer = keras.initializers.RandomNormal(stddev=1.0)
        super().__init__(
            eta,
            use_bias,
            kernel_initializer,
            bias_initializer,
            kernel_regularizer,
            bias_regularizer,
            **kwargs,
        )
        self.init_geometry(units)

    def build(self, input_shape):
        self.add_kernel_and_bias(self.check_input_shape(input_shape))

    def call(self, inputs):
        if in_tflite_graph():
            return self.add_bias(tflite_distance(inputs, self._kernel_for_call()))
        return self.add_bias(adder_distance(inputs, self._kernel_for_call()))


# -sum |x - w| makes new channels from a kernel (C_in, C_out) like a convolution.
for _cls in (AdderConv, AdderDense):
    register_layer_traits(_cls, kind="weighted", kernels=("kernel",), kernel_axes=((-2, -1),),
                          bias="bias")
del _cls
