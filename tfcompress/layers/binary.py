"""Binary layers in the XNOR-Net / BNN style, with straight-through estimators.

References:
    Rastegari, Ordonez, Redmon, Farhadi. "XNOR-Net: ImageNet Classification Using
    Binary Convolutional Neural Networks", ECCV 2016, arXiv:1603.05279.
    Courbariaux, Hubara, Soudry, El-Yaniv, Bengio. "Binarized Neural Networks",
    NeurIPS 2016 (ste_sign). Liu et al. "Bi-Real Net", ECCV 2018 (approx_sign).
"""

import keras
from keras import layers, ops

from tfcompress.core.args import check_choice
from tfcompress.core.traits import register_layer_traits
from tfcompress.layers._base import Conv2DGeometry, DenseGeometry, KernelLayer

__all__ = [
    "SCALE_CHOICES",
    "STE_CHOICES",
    "BinaryConv",
    "BinaryDense",
    "Sign",
    "WeightClip",
    "approx_sign",
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

    def __init__(self, binarize_input, scale, ste, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.binarize_input = bool(binarize_input)
        self.scale = check_choice("scale", scale, SCALE_CHOICES)
        self.ste = check_choice("ste", ste, STE_CHOICES)

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
        return _STE[self.ste](inputs) if self.binarize_input else inputs

    def get_config(self):
        config = super().get_config()
        config.update(
            binarize_input=self.binarize_input,
            scale=self.scale,
            ste=self.ste,
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
        **kwargs: standard Layer arguments.

    Raises:
        ValueError: for invalid sizes, padding, scale or ste.

    Example:
        >>> BinaryConv(8, 3)(keras.ops.ones((1, 6, 6, 4))).shape
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
        **kwargs,
    ):
        super().__init__(
            binarize_input,
            scale,
            ste,
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

    Same options and training rules as BinaryConv.

    Args:
        units: output features.
        binarize_input: sign() the inputs or not.
        scale: "channel" (alpha per output unit) or "none".
        ste: "ste_sign" or "approx_sign".
        use_bias: whether to add a bias (off by default).
        kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer:
            as in Dense.
        **kwargs: standard Layer arguments.

    Raises:
        ValueError: for a non-positive `units`, an unknown scale or ste.

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
        **kwargs,
    ):
        super().__init__(
            binarize_input,
            scale,
            ste,
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


# Binary kernels are weighted layers, but not prunable or clusterable: sign(0) = +1, so a
# zeroed latent weight is still a +/-alpha weight, and two values need no codebook.
register_layer_traits(Sign, kind="pass_through")
for _cls in (BinaryConv, BinaryDense):
    register_layer_traits(_cls, kind="weighted", bias="bias")
del _cls
