"""Binary layers in the XNOR-Net / BNN style, with straight-through estimators.

References:
    Rastegari, Ordonez, Redmon, Farhadi. "XNOR-Net: ImageNet Classification Using
    Binary Convolutional Neural Networks", ECCV 2016, arXiv:1603.05279.
    Courbariaux, Hubara, Soudry, El-Yaniv, Bengio. "Binarized Neural Networks",
    NeurIPS 2016 (ste_sign). Liu et al. "Bi-Real Net", ECCV 2018 (approx_sign).
    Li, Ni, Zhang, Yang, Gao. "Performance Guaranteed Network Acceleration via
    High-Order Residual Quantization", ICCV 2017 (HORQ, `input_order`).
"""

import math

import keras
from keras import layers, ops

from tfcompress.core.args import check_choice, check_int
from tfcompress.core.traits import register_layer_traits
from tfcompress.layers._base import Conv2DGeometry, DenseGeometry, KernelLayer
from tfcompress.layers._utils import known_prod
from tfcompress.layers.adder import magnitude

__all__ = [
    "SCALE_CHOICES",
    "STE_CHOICES",
    "BinaryConv",
    "BinaryDense",
    "ChannelMeanAbs",
    "Sign",
    "WeightClip",
    "approx_sign",
    "count_binary_conv",
    "count_binary_dense",
    "horq",
    "mean_abs",
    "sign",
    "ste_sign",
]

STE_CHOICES = ("ste_sign", "approx_sign")
SCALE_CHOICES = ("channel", "none")


def sign(x):
    """Sign with `sign(0) = +1`, so the result is always +1 or -1.

    The two values are scalars that `where` broadcasts: TFLite then runs
    GREATER_EQUAL + SELECT_V2 only. With `ones_like(x)` the converter adds SHAPE and
    two BROADCAST_TO, which made the op about 35x slower in LiteRT (0.32 vs 0.009 ms
    in float, 0.34 vs 0.025 ms in int8, on a 32x32x16 input, 1 thread).
    """
    return ops.where(x >= 0, ops.cast(1, x.dtype), ops.cast(-1, x.dtype))


@ops.custom_gradient
def ste_sign(x):
    """`sign(x)` forward; straight-through gradient `dy * 1{|x| <= 1}` (BNN).

    Args:
        x: a tensor.

    Returns:
        +1/-1 tensor with `sign(0) = +1`.
    """

    def grad(*args, upstream=None):
        if upstream is None:
            (upstream,) = args
        return upstream * ops.cast(ops.abs(x) <= 1.0, upstream.dtype)

    return sign(x), grad


@ops.custom_gradient
def approx_sign(x):
    """`sign(x)` forward; gradient `dy * (2 - 2|x|) * 1{|x| <= 1}` (Bi-Real Net).

    Args:
        x: a tensor.

    Returns:
        +1/-1 tensor with `sign(0) = +1`.
    """

    def grad(*args, upstream=None):
        if upstream is None:
            (upstream,) = args
        ax = ops.abs(x)
        return upstream * ops.where(ax <= 1.0, 2.0 - 2.0 * ax, ops.zeros_like(x))

    return sign(x), grad


@ops.custom_gradient
def _ste_sign_kernel(kernel):
    """`ste_sign` for a weight tensor, with full-shape branches (`ones_like`).

    The kernel has a static shape, so the TFLite converter folds this `where`
    into the constant +/-1 kernel. With `sign`'s scalar branches it keeps
    SELECT_V2 in the graph, and the int8 convolution then has a computed kernel,
    which LiteRT rejects (non-zero weight zero point).
    """

    def grad(*args, upstream=None):
        if upstream is None:
            (upstream,) = args
        return upstream * ops.cast(ops.abs(kernel) <= 1.0, upstream.dtype)

    return ops.where(kernel >= 0, ops.ones_like(kernel), -ops.ones_like(kernel)), grad


_STE = {"ste_sign": ste_sign, "approx_sign": approx_sign}


def mean_abs(x):
    """HORQ's scale of one binarization: `mean_c |x[..., c]|`, one value per position.

    Args:
        x: a tensor, channels last.

    Returns:
        `mean(|x|, axis=-1, keepdims=True)`. Traced for TFLite (`tflite_graph`),
        `|x|` is LEAKY_RELU(alpha=-1) (XNNPACK runs it in int8; ABS it does not).
    """
    return ops.mean(magnitude(x), axis=-1, keepdims=True)


def horq(x, order=2, ste="ste_sign"):
    """High-order residual quantization of `x` (HORQ, Li et al. 2017).

        R_0 = x;  for i = 1..order:  H_i = sign(R_{i-1}),  beta_i = mean_c |R_{i-1}|,
                                     R_i = R_{i-1} - beta_i * H_i
        x_hat = sum_i beta_i * H_i

    `beta_i` is one value per position (the mean over the last axis, channels):
    per example for a (batch, features) input, per pixel for an image. Every sign
    has `sign(0) = +1` and the straight-through gradient `ste`; the gradient
    reaches `x` through every sign and every beta (autodiff of `mean |R|`).
    `beta_i` is the least-squares scale of `H_i`, so at every position
    `||R_i||^2 = ||R_{i-1}||^2 - C * beta_i^2` (C channels): the error never grows.

    Args:
        x: a tensor, channels last.
        order: the number of binary terms, an integer >= 1.
        ste: "ste_sign" or "approx_sign", the estimator of every sign.

    Returns:
        `x_hat`, same shape as `x`.

    Raises:
        ValueError: for an order below 1 or an unknown ste.

    Example:
        >>> x = keras.ops.convert_to_tensor([[1.5, -0.5, 0.5, -1.5]])
        >>> keras.ops.convert_to_numpy(horq(x, 1))  # beta_1 = 1
        array([[ 1., -1.,  1., -1.]], dtype=float32)
        >>> keras.ops.convert_to_numpy(horq(x, 2))  # + beta_2 = 0.5 times [1, 1, -1, -1]
        array([[ 1.5, -0.5,  0.5, -1.5]], dtype=float32)
    """
    order = check_int("order", order, minimum=1)
    quantize = _STE[check_choice("ste", ste, STE_CHOICES)]
    residual, total = x, None
    for i in range(order):
        term = mean_abs(residual) * quantize(residual)
        total = term if total is None else total + term
        if i + 1 < order:
            residual = residual - term
    return total


@keras.saving.register_keras_serializable(package="tfcompress")
class Sign(layers.Layer):
    """Binarizes activations: `y = +1 if x >= 0 else -1`, straight-through gradient.

    The input binarization of BinaryConv/BinaryDense as a layer of its own (it is
    what `lower_model` splits them into; int8 TFLite computes it as
    GREATER_EQUAL + SELECT_V2).

    Args:
        ste: "ste_sign" (`1{|x| <= 1}`) or "approx_sign" (`(2 - 2|x|) 1{|x| <= 1}`).
        **kwargs: standard Layer arguments.

    Raises:
        ValueError: for an unknown ste.
    """

    def __init__(self, ste="ste_sign", **kwargs):
        super().__init__(**kwargs)
        self.ste = check_choice("ste", ste, STE_CHOICES)

    def call(self, inputs):
        return _STE[self.ste](inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(ste=self.ste)
        return config


@keras.saving.register_keras_serializable(package="tfcompress")
class ChannelMeanAbs(layers.Layer):
    """`y = mean_c |x[..., c]|` (keepdims): the scale beta of one HORQ order.

    What `lower_model` splits a `BinaryConv(input_order > 1)` into, with `Sign`,
    Multiply, Subtract and Add (int8 TFLite: LEAKY_RELU(-1) + MEAN).

    Args:
        **kwargs: standard Layer arguments.

    Example:
        >>> ChannelMeanAbs()(keras.ops.ones((2, 4, 4, 3))).shape
        (2, 4, 4, 1)
    """

    def call(self, inputs):
        return mean_abs(inputs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (1,)


@keras.saving.register_keras_serializable(package="tfcompress")
class WeightClip(keras.constraints.Constraint):
    """Clips latent weights to [-clip_value, clip_value] after every update.

    Args:
        clip_value: positive bound (1.0 for binary layers).

    Raises:
        ValueError: for a non-positive clip_value.
    """

    def __init__(self, clip_value=1.0):
        if isinstance(clip_value, bool) or not isinstance(clip_value, (int, float)) or clip_value <= 0:
            raise ValueError(
                f"`clip_value` must be a positive number. Received: clip_value={clip_value!r}"
            )
        self.clip_value = float(clip_value)

    def __call__(self, w):
        return ops.clip(w, -self.clip_value, self.clip_value)

    def get_config(self):
        return {"clip_value": self.clip_value}


class _BinaryBase(KernelLayer):
    """Shared options and quantizers of BinaryConv and BinaryDense."""

    def __init__(self, binarize_input, scale, ste, input_order, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.binarize_input = bool(binarize_input)
        self.scale = check_choice("scale", scale, SCALE_CHOICES)
        self.ste = check_choice("ste", ste, STE_CHOICES)
        self.input_order = check_int("input_order", input_order, minimum=1)
        if self.input_order > 1 and not self.binarize_input:
            raise ValueError(
                "`input_order` > 1 approximates binarized inputs (HORQ); it needs "
                f"binarize_input=True. Received: input_order={input_order!r}, "
                f"binarize_input={binarize_input!r}"
            )

    def add_kernel_and_bias(self, kernel_shape, kernel_constraint=None):
        super().add_kernel_and_bias(kernel_shape, kernel_constraint or WeightClip(1.0))

    def binary_kernel(self):
        """The kernel the layer computes with: `alpha * sign(W)` (or `sign(W)`).

        `alpha = mean |W|` over every axis but the last (one value per output
        channel) when `scale="channel"`. The gradient reaches the latent weights
        through `sign` (straight-through, `1{|W| <= 1}`) and through `alpha`.
        """
        kernel = ops.copy(self.kernel)  # a tensor, as custom gradients require
        binary = _ste_sign_kernel(kernel)
        if self.scale == "channel":
            axes = tuple(range(len(kernel.shape) - 1))
            binary = binary * ops.mean(ops.abs(kernel), axis=axes)
        return binary

    def _binarize_inputs(self, inputs):
        if not self.binarize_input:
            return inputs
        if self.input_order == 1:
            return _STE[self.ste](inputs)
        return horq(inputs, self.input_order, self.ste)

    def get_config(self):
        config = super().get_config()
        config.update(
            binarize_input=self.binarize_input,
            scale=self.scale,
            ste=self.ste,
            input_order=self.input_order,
        )
        return config


@keras.saving.register_keras_serializable(package="tfcompress")
class BinaryConv(Conv2DGeometry, _BinaryBase):
    """XNOR-Net convolution: binary weights with a per-channel scale, binary inputs.

        Y = conv(sign(X), alpha * sign(W)),   alpha_o = mean |W[..., o]|

    `binarize_input=False` keeps real-valued inputs (Binary-Weight-Network);
    `scale="none"` drops alpha (plain BNN). `sign(0) = +1`. "same" padding pads the
    binarized input with zeros. Latent weights are kept in float, clipped to
    [-1, 1] after each update (`WeightClip`). The input sign's backward pass is
    the chosen straight-through estimator: "ste_sign" `1{|x| <= 1}` or
    "approx_sign" `(2 - 2|x|) 1{|x| <= 1}`; the weight sign always uses
    "ste_sign". Put BatchNormalization before a BinaryConv, and no ReLU between
    them (a ReLU would make every input sign +1).

    `input_order=n > 1` binarizes the input with n residual terms (HORQ, Li et
    al. 2017, see `horq`):

        X ~ X_hat = sum_{i<=n} beta_i * H_i,   H_i = sign(R_{i-1}),
        beta_i = mean_c |R_{i-1}| per pixel,  R_0 = X,  R_i = R_{i-1} - beta_i * H_i
        Y = conv(X_hat, alpha * sign(W)) = sum_i conv(beta_i * H_i, alpha * sign(W))

    so each order is one binary convolution of `H_i` whose taps are weighted by
    their pixel's beta_i (for a 1x1 kernel exactly `beta_i * conv(H_i, ...)`).
    `input_order=1` is the layer above unchanged: `sign(X)` without XNOR's beta
    (XNOR-Net's released code and Larq Zoo drop it too; the BatchNormalization
    after it takes the scale), so order 2 is about beta_1 times larger than
    order 1, not order 1 plus a small correction. Every sign uses the `ste`
    estimator and the gradient also flows through every beta.

    Args:
        filters: output channels.
        kernel_size: int or 2-tuple.
        strides: int or 2-tuple.
        padding: "same" or "valid".
        binarize_input: sign() the inputs (XNOR) or not (BWN).
        scale: "channel" (XNOR alpha per output channel) or "none".
        ste: "ste_sign" or "approx_sign", the input gradient estimator.
        use_bias: whether to add a bias (off by default).
        kernel_initializer: defaults to glorot_uniform.
        bias_initializer, kernel_regularizer, bias_regularizer: as in Conv2D.
        input_order: binary terms of the input, an integer >= 1 (1: XNOR's
            sign(X); n > 1: HORQ of order n, needs binarize_input=True).
        **kwargs: standard Layer arguments.

    Raises:
        ValueError: for invalid sizes, padding, scale, ste, an input_order below
            1, or an input_order above 1 with binarize_input=False.

    Example:
        >>> BinaryConv(8, 3)(keras.ops.ones((1, 6, 6, 4))).shape
        (1, 6, 6, 8)
        >>> BinaryConv(8, 3, input_order=2)(keras.ops.ones((1, 6, 6, 4))).shape
        (1, 6, 6, 8)
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        padding="same",
        binarize_input=True,
        scale="channel",
        ste="ste_sign",
        use_bias=False,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        input_order=1,
        **kwargs,
    ):
        super().__init__(
            binarize_input,
            scale,
            ste,
            input_order,
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
            self._binarize_inputs(inputs),
            self.binary_kernel(),
            strides=self.strides,
            padding=self.padding,
        )
        return self.add_bias(outputs)


@keras.saving.register_keras_serializable(package="tfcompress")
class BinaryDense(DenseGeometry, _BinaryBase):
    """XNOR-Net fully connected layer: `y = sign(x) @ (alpha * sign(W))`.

    Same options and training rules as BinaryConv. With `input_order=n > 1`
    (HORQ) beta_i is one value per input row (the mean over its features, as in
    the paper's fully connected case): `y = sum_i beta_i * (H_i @ (alpha * sign(W)))`.

    Args:
        units: output features.
        binarize_input: sign() the inputs or not.
        scale: "channel" (alpha per output unit) or "none".
        ste: "ste_sign" or "approx_sign".
        use_bias: whether to add a bias (off by default).
        kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer:
            as in Dense.
        input_order: binary terms of the input, an integer >= 1 (see BinaryConv).
        **kwargs: standard Layer arguments.

    Raises:
        ValueError: for a non-positive `units`, an unknown scale or ste, an
            input_order below 1, or above 1 with binarize_input=False.

    Example:
        >>> BinaryDense(10)(keras.ops.ones((4, 64))).shape
        (4, 10)
    """

    def __init__(
        self,
        units,
        binarize_input=True,
        scale="channel",
        ste="ste_sign",
        use_bias=False,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        input_order=1,
        **kwargs,
    ):
        super().__init__(
            binarize_input,
            scale,
            ste,
            input_order,
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
        outputs = ops.matmul(self._binarize_inputs(inputs), self.binary_kernel())
        return self.add_bias(outputs)


# ------------------------------------------------------------------ profile counters


def _binary_counts(layer, input_shape, kernel_uses, outputs, taps):
    from tfcompress.analysis.profile import dtype_bits  # profile imports this module

    order = layer.input_order
    counts = {}
    if layer.binarize_input:
        counts["binary_ops"] = order * kernel_uses  # XNOR + popcount, once per order
    else:
        counts["adds"] = kernel_uses  # binary weights, real inputs: +-x accumulation
    macs = outputs if layer.scale == "channel" else 0  # alpha * popcount
    if order > 1:
        macs += order * taps * outputs  # every tap's popcount times its pixel's beta_i
        # per order the channel sum of |R| (beta), and n - 1 residual updates
        counts["adds"] = (2 * order - 1) * known_prod(input_shape[1:], layer, "input shape")
    if macs:
        counts["macs"] = macs
    bits = math.prod(layer.kernel.shape)  # 1 bit per binary weight
    if layer.scale == "channel":
        bits += 32 * layer.kernel.shape[-1]  # alpha, stored at inference
    if layer.bias is not None:
        bits += math.prod(layer.bias.shape) * dtype_bits(layer.bias.dtype)
    counts["param_bits"] = bits
    return counts


def count_binary_conv(layer, input_shape, output_shape):
    """`tfcompress.profile`'s counter of BinaryConv, for one example.

    `input_order=1`: `binary_ops = kh*kw*C_in * outputs` (XNOR + popcount; `adds`
    instead with `binarize_input=False`), `macs = outputs` for alpha when
    `scale="channel"`. `input_order=n > 1` (HORQ): n times the binary
    operations, plus `n * kh*kw * outputs` MACs (each tap's popcount times its
    pixel's beta_i) and `(2n - 1) * input elements` additions (the channel sum
    of |R_{i-1}| for every beta_i, and the n - 1 residual updates; the 1/C of
    each mean is not counted). Kernels at 1 bit per weight, alpha at 32 bits.

    Args:
        layer: a built BinaryConv.
        input_shape: the call's input shape, batch axis included.
        output_shape: the call's output shape.

    Returns:
        A dict with "binary_ops" or "adds", "macs" and "param_bits".

    Raises:
        ValueError: when a dimension the count needs is unknown.
    """
    pixels = known_prod(output_shape[1:3], layer)
    kernel_uses = math.prod(layer.kernel.shape) * pixels
    taps = math.prod(layer.kernel.shape[:2])
    return _binary_counts(layer, input_shape, kernel_uses, pixels * output_shape[-1], taps)


def count_binary_dense(layer, input_shape, output_shape):
    """`tfcompress.profile`'s counter of BinaryDense: as `count_binary_conv` with
    one tap per row (HORQ: `n * outputs` MACs for the betas).

    Args:
        layer: a built BinaryDense.
        input_shape: the call's input shape, batch axis included.
        output_shape: the call's output shape.

    Returns:
        A dict with "binary_ops" or "adds", "macs" and "param_bits".

    Raises:
        ValueError: when a dimension the count needs is unknown.
    """
    rows = known_prod(output_shape[1:-1], layer)
    kernel_uses = math.prod(layer.kernel.shape) * rows
    return _binary_counts(layer, input_shape, kernel_uses, rows * output_shape[-1], 1)


# Binary kernels are weighted layers, but not prunable or clusterable: sign(0) = +1, so a
# zeroed latent weight is still a +/-alpha weight, and two values need no codebook.
register_layer_traits(Sign, kind="pass_through")
# One value per position from C: no channel flows through (int8: a new scale).
register_layer_traits(ChannelMeanAbs, kind="other", quantization="output")
register_layer_traits(BinaryConv, kind="weighted", bias="bias", counter=count_binary_conv)
register_layer_traits(BinaryDense, kind="weighted", bias="bias", counter=count_binary_dense)
