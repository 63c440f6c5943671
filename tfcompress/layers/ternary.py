"""Ternary-weight layers (TWN): kernels in {-alpha, 0, +alpha}, straight-through training.

Reference:
    Li, Zhang, Liu. "Ternary Weight Networks", 2016, arXiv:1605.04711.
    The threshold Delta = 0.7 * mean |W| and alpha = mean |W| over the weights
    kept (|W| > Delta) are the paper's approximate solution of
    min ||W - alpha * W_t||^2 (its eq. 9 and 10).
"""

import math
import numbers

import keras
from keras import ops

from tfcompress.core.traits import register_layer_traits
from tfcompress.layers._base import Conv2DGeometry, DenseGeometry, KernelLayer
from tfcompress.layers._utils import known_prod

__all__ = [
    "DEFAULT_THRESHOLD",
    "TernaryConv",
    "TernaryDense",
    "count_ternary_conv",
    "count_ternary_dense",
    "ternarize",
]

DEFAULT_THRESHOLD = 0.7  # TWN's Delta = 0.7 * mean |W|


def _check_threshold(threshold):
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, numbers.Real)
        or not 0.0 < float(threshold) < 1.0
    ):
        raise ValueError(
            "`threshold` must be a number in (0, 1), the factor of mean |W| below which "
            f"a weight becomes 0 (TWN: 0.7). Received: threshold={threshold!r}"
        )
    return float(threshold)


def ternarize(w, threshold=DEFAULT_THRESHOLD, axis=None):
    """TWN's ternary approximation `W ~ alpha * W_t` (Li & Liu 2016, eq. 9-10).

        Delta = threshold * mean |W|,   W_t = sign(W) * 1{|W| > Delta},
        alpha = mean of |W| over the kept weights (|W| > Delta)

    The means run over `axis` (None: the whole tensor, the paper's per-layer
    scale; all axes but the last: one Delta and alpha per output channel). A
    group of zeros keeps no weight and gets alpha = 0. No gradient is defined
    here: the layers pass theirs straight through.

    Args:
        w: a weight tensor.
        threshold: the factor of mean |W|, a number in (0, 1).
        axis: int, tuple of ints or None, the axes each Delta and alpha cover.

    Returns:
        `(alpha, w_t)`: alpha with `w`'s rank (size 1 on the reduced axes) and
        w_t in {-1, 0, +1} with `w`'s shape, both of `w`'s dtype.

    Raises:
        ValueError: for a threshold outside (0, 1).

    Example:
        >>> alpha, w_t = ternarize(keras.ops.convert_to_tensor([0.1, -0.2, 0.5, -1.0]))
        >>> keras.ops.convert_to_numpy(w_t)  # Delta = 0.7 * 0.45 = 0.315
        array([ 0., -0.,  1., -1.], dtype=float32)
        >>> float(alpha[0])  # (0.5 + 1.0) / 2
        0.75
    """
    threshold = _check_threshold(threshold)
    w = ops.convert_to_tensor(w)
    magnitude = ops.abs(w)
    delta = threshold * ops.mean(magnitude, axis=axis, keepdims=True)
    # `where`, not a cast of the mask: TensorFlow's constant folding stops at a
    # bool -> float Cast, and TFLite's converter then cannot fold a QAT model's
    # weight range (REDUCE_MAX) over a ternary kernel of a few thousand weights.
    kept = magnitude > delta
    zeros = ops.zeros_like(w)
    w_t = ops.where(kept, ops.sign(w), zeros)
    count = ops.sum(ops.where(kept, ops.ones_like(w), zeros), axis=axis, keepdims=True)
    alpha = ops.sum(ops.where(kept, magnitude, zeros), axis=axis, keepdims=True) / ops.maximum(
        count, 1.0)
    return alpha, w_t


def _ternary_ste(kernel, threshold):
    """`alpha * W_t` per output channel forward; identity gradient to `kernel`.

    A custom gradient rather than `w + stop_gradient(q - w)`, whose float sum
    can be an ulp off `q`. The kernel has a static shape, so the TFLite converter
    folds all of this into one constant kernel.
    """
    axes = tuple(range(len(kernel.shape) - 1))

    @ops.custom_gradient
    def quantize(w):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            return upstream

        alpha, w_t = ternarize(w, threshold, axes)
        return alpha * w_t, grad

    return quantize(kernel)


class _TernaryBase(KernelLayer):
    """The threshold and the ternary kernel of TernaryConv and TernaryDense."""

    def __init__(self, threshold, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.threshold = _check_threshold(threshold)

    def ternary_kernel(self):
        """The kernel the layer computes with: `alpha * W_t`, one alpha per output channel.

        Delta and alpha are taken over every axis but the last (each filter its
        own, as BinaryConv's `scale="channel"`; an int8 per-channel file then
        stores the kernel exactly as -127 / 0 / +127 times alpha / 127). The
        gradient is passed straight through to the latent float kernel (TWN).
        """
        return _ternary_ste(ops.copy(self.kernel), self.threshold)

    def get_config(self):
        config = super().get_config()
        config.update(threshold=self.threshold)
        return config


@keras.saving.register_keras_serializable(package="tfcompress")
class TernaryConv(Conv2DGeometry, _TernaryBase):
    """Ternary-weight convolution (TWN, Li & Liu 2016): real inputs, 2-bit weights.

        Y = conv(X, alpha * W_t),   W_t = sign(W) * 1{|W| > Delta},
        Delta_o = threshold * mean |W[..., o]|,   alpha_o = mean_{|W| > Delta_o} |W[..., o]|

    Delta and alpha are per output channel (the paper uses one per layer; see
    `ternarize(w, threshold, axis=None)`). Training keeps a float kernel; the
    forward pass uses `alpha * W_t` and the gradient goes straight through
    (`dL/dW = dL/d(alpha * W_t)`), no weight clipping. The int8 TFLite file is one
    CONV_2D with the constant ternary kernel, three values per channel.

    Args:
        filters: output channels.
        kernel_size: int or 2-tuple.
        strides: int or 2-tuple.
        padding: "same" or "valid".
        threshold: Delta's factor of mean |W|, in (0, 1) (TWN: 0.7).
        use_bias: whether to add a bias (off by default: BatchNormalization follows).
        kernel_initializer: defaults to glorot_uniform.
        bias_initializer, kernel_regularizer, bias_regularizer: as in Conv2D.
        **kwargs: standard Layer arguments.

    Raises:
        ValueError: for invalid sizes or padding, or a threshold outside (0, 1).

    Example:
        >>> TernaryConv(8, 3)(keras.ops.ones((1, 6, 6, 4))).shape
        (1, 6, 6, 8)
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        padding="same",
        threshold=DEFAULT_THRESHOLD,
        use_bias=False,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        super().__init__(
            threshold,
            use_bias,
            kernel_initializer,
            bias_initializer,
            kernel_regularizer,
            bias_regularizer,
            **kwargs,
        )
        self.init_geometry(filters, kernel_size, strides, padding)

    def build(self, input_shape):
        self.add_kernel_and_bias(self.check_input_shape(input_shape))

    def call(self, inputs):
        outputs = ops.conv(
            inputs, self.ternary_kernel(), strides=self.strides, padding=self.padding
        )
        return self.add_bias(outputs)


@keras.saving.register_keras_serializable(package="tfcompress")
class TernaryDense(DenseGeometry, _TernaryBase):
    """Ternary-weight fully connected layer (TWN): `y = x @ (alpha * W_t)`.

    Delta and alpha per output unit; same training rule as TernaryConv. In the
    int8 file FULLY_CONNECTED has one weight scale, so the per-unit alphas are
    rounded to it (still at most three values per unit).

    Args:
        units: output features.
        threshold: Delta's factor of mean |W|, in (0, 1) (TWN: 0.7).
        use_bias: whether to add a bias (off by default).
        kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer:
            as in Dense.
        **kwargs: standard Layer arguments.

    Raises:
        ValueError: for a non-positive `units` or a threshold outside (0, 1).

    Example:
        >>> TernaryDense(10)(keras.ops.ones((4, 64))).shape
        (4, 10)
    """

    def __init__(
        self,
        units,
        threshold=DEFAULT_THRESHOLD,
        use_bias=False,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        super().__init__(
            threshold,
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
        return self.add_bias(ops.matmul(inputs, self.ternary_kernel()))


# ------------------------------------------------------------------ profile counters


def _ternary_counts(layer, kernel_uses, outputs):
    from tfcompress.analysis.profile import dtype_bits  # profile imports this module

    size = math.prod(layer.kernel.shape)
    bits = 2 * size + 32 * layer.kernel.shape[-1]  # 2 bits per weight, alpha per channel
    if layer.bias is not None:
        bits += math.prod(layer.bias.shape) * dtype_bits(layer.bias.dtype)
    _, w_t = ternarize(layer.kernel, layer.threshold, tuple(range(len(layer.kernel.shape) - 1)))
    zeros = 1.0 - float(ops.convert_to_numpy(ops.mean(ops.abs(w_t))))
    return {
        "adds": kernel_uses,  # +-x accumulation (zero weights included: a dense kernel)
        "macs": outputs,  # alpha * sum, once per output element
        "param_bits": bits,
        "note": f"ternary kernel, {zeros:.0%} zeros",
    }


def count_ternary_conv(layer, input_shape, output_shape):
    """`tfcompress.profile`'s counter of TernaryConv, for one example.

    `adds = kh*kw*C_in * outputs` (every weight is -1, 0 or +1 times alpha: the
    input is added or subtracted; zeros are counted too, as a dense CONV_2D
    computes them), `macs = outputs` (the alpha scaling), kernel at 2 bits per
    weight plus 32 bits per output channel for alpha; the row's note gives the
    share of zero weights.

    Args:
        layer: a built TernaryConv.
        input_shape: the call's input shape, batch axis included.
        output_shape: the call's output shape.

    Returns:
        A dict with "adds", "macs", "param_bits" and "note".

    Raises:
        ValueError: when a dimension the count needs is unknown.
    """
    pixels = known_prod(output_shape[1:3], layer)
    return _ternary_counts(layer, math.prod(layer.kernel.shape) * pixels,
                           pixels * output_shape[-1])


def count_ternary_dense(layer, input_shape, output_shape):
    """`tfcompress.profile`'s counter of TernaryDense: as `count_ternary_conv`, per row.

    Args:
        layer: a built TernaryDense.
        input_shape: the call's input shape, batch axis included.
        output_shape: the call's output shape.

    Returns:
        A dict with "adds", "macs", "param_bits" and "note".

    Raises:
        ValueError: when a dimension the count needs is unknown.
    """
    rows = known_prod(output_shape[1:-1], layer)
    return _ternary_counts(layer, math.prod(layer.kernel.shape) * rows, rows * output_shape[-1])


# Weighted, with a bias; not prunable or clusterable through `kernels` (its zeros and
# three levels come from the threshold, recomputed at every step).
register_layer_traits(TernaryConv, kind="weighted", bias="bias", counter=count_ternary_conv)
register_layer_traits(TernaryDense, kind="weighted", bias="bias", counter=count_ternary_dense)
