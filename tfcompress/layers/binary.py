"""Binary layers in the XNOR-Net / BNN style, with straight-through estimators.

References:
    Rastegari, Ordonez, Redmon, Farhadi. "XNOR-Net: ImageNet Classification Using
    Binary Convolutional Neural Networks", ECCV 2016, arXiv:1603.05279.
    Courbariaux, Hubara, Soudry, El-Yaniv, Bengio. "Binarized Neural Networks",
    NeurIPS 2016 (ste_sign). Liu et al. "Bi-Real Net", ECCV 2018 (approx_sign).
"""

import keras
from keras import layers, ops

from tfcompress.layers._utils import (
    check_choice,
    check_padding,
    check_positive_int,
    normalize_tuple,
    output_length,
)

STE_CHOICES = ("ste_sign", "approx_sign")
SCALE_CHOICES = ("channel", "none")


def sign(x):
    """Sign with `sign(0) = +1`, so the result is always +1 or -1."""
    return ops.where(x >= 0, ops.ones_like(x), -ops.ones_like(x))


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


_STE = {"ste_sign": ste_sign, "approx_sign": approx_sign}


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


class _BinaryBase(layers.Layer):
    """Shared arguments, weights and quantizers of BinaryConv and BinaryDense."""

    def __init__(
        self,
        binarize_input,
        scale,
        ste,
        use_bias,
        kernel_initializer,
        bias_initializer,
        kernel_regularizer,
        bias_regularizer,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.binarize_input = bool(binarize_input)
        self.scale = check_choice("scale", scale, SCALE_CHOICES)
        self.ste = check_choice("ste", ste, STE_CHOICES)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)

    def _build_weights(self, kernel_shape, units):
        self.kernel = self.add_weight(
            name="kernel",
            shape=kernel_shape,
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=WeightClip(1.0),
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(units,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
            )

    def binary_kernel(self):
        """The kernel the layer computes with: `alpha * sign(W)` (or `sign(W)`).

        `alpha = mean |W|` over every axis but the last (one value per output
        channel) when `scale="channel"`. The gradient reaches the latent weights
        through `sign` (straight-through, `1{|W| <= 1}`) and through `alpha`.
        """
        kernel = ops.copy(self.kernel)  # a tensor, as custom gradients require
        binary = ste_sign(kernel)
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
            use_bias=self.use_bias,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
            bias_regularizer=keras.regularizers.serialize(self.bias_regularizer),
        )
        return config


@keras.saving.register_keras_serializable(package="tfcompress")
class BinaryConv(_BinaryBase):
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
        self.filters = check_positive_int("filters", filters)
        self.kernel_size = normalize_tuple("kernel_size", kernel_size)
        self.strides = normalize_tuple("strides", strides)
        self.padding = check_padding(padding)

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                "BinaryConv expects 4D (batch, height, width, channels) inputs with "
                f"a known channel count. Received: input_shape={input_shape}"
            )
        self._build_weights(self.kernel_size + (input_shape[-1], self.filters), self.filters)

    def call(self, inputs):
        outputs = ops.conv(
            self._binarize_inputs(inputs),
            self.binary_kernel(),
            strides=self.strides,
            padding=self.padding,
        )
        if self.bias is not None:
            outputs = outputs + self.bias
        return outputs

    def compute_output_shape(self, input_shape):
        return (
            input_shape[0],
            output_length(input_shape[1], self.kernel_size[0], self.strides[0], self.padding),
            output_length(input_shape[2], self.kernel_size[1], self.strides[1], self.padding),
            self.filters,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            padding=self.padding,
        )
        return config


@keras.saving.register_keras_serializable(package="tfcompress")
class BinaryDense(_BinaryBase):
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
        self.units = check_positive_int("units", units)

    def build(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError(
                f"BinaryDense needs a known last dimension. Received: input_shape={input_shape}"
            )
        self._build_weights((input_shape[-1], self.units), self.units)

    def call(self, inputs):
        outputs = ops.matmul(self._binarize_inputs(inputs), self.binary_kernel())
        if self.bias is not None:
            outputs = outputs + self.bias
        return outputs

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units)
        return config
