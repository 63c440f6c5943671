"""Shift operation and shift convolution (ShiftNet).

Reference: Wu, Wan, Yue, Jin, Zhao, Golmant, Gholaminejad, Gonzalez, Keutzer.
"Shift: A Zero FLOP, Zero Parameter Alternative to Spatial Convolutions",
CVPR 2018, arXiv:1711.08141.
"""

import keras
from keras import layers, ops

from tfcompress.core.args import check_positive_int, normalize_tuple
from tfcompress.core.traits import register_layer_traits

__all__ = [
    "Shift",
    "ShiftConv",
    "shift_offsets",
]


def shift_offsets(channels, kernel_size):
    """The (dy, dx) offset of every channel, as `Shift` assigns them.

    Channels are split into `kernel_size**2` contiguous groups of
    `G = channels // kernel_size**2` channels. Group `g` (channels
    `g*G ... (g+1)*G - 1`) gets `dy = g // kernel_size - kernel_size // 2` and
    `dx = g % kernel_size - kernel_size // 2`, so group 0 reads from the top-left
    neighbour, the middle group is unshifted and the last group reads from the
    bottom-right. The `channels - G*kernel_size**2` remaining channels are not
    shifted.

    Args:
        channels: number of input channels.
        kernel_size: odd shift kernel size `k`.

    Returns:
        A list of `channels` (dy, dx) integer pairs.
    """
    group = channels // (kernel_size * kernel_size)
    half = kernel_size // 2
    offsets = []
    for g in range(kernel_size * kernel_size):
        offsets += [(g // kernel_size - half, g % kernel_size - half)] * group
    offsets += [(0, 0)] * (channels - len(offsets))
    return offsets


@keras.saving.register_keras_serializable(package="tfcompress")
class Shift(layers.Layer):
    """Moves each channel group by a fixed spatial offset: zero parameters, zero FLOPs.

        y[n, h, w, c] = x[n, h + dy(c), w + dx(c), c]   (0 outside the image)

    with `(dy, dx)` given by `shift_offsets(C, kernel_size)`: contiguous groups of
    `C // kernel_size**2` channels, one group per offset of the `k x k` window in
    row-major order; leftover channels pass through unchanged. Output shape
    equals input shape. The paper's grouping; the official CUDA kernel interleaves
    channels instead (channel c gets offset c mod k^2), which is equivalent when
    the shift sits between 1x1 convolutions and only matters when porting weights.

    Args:
        kernel_size: odd size `k` of the shift window (k*k offsets).
        **kwargs: standard Layer arguments.

    Raises:
        ValueError: for an even or non-positive `kernel_size`, or (in build) fewer
            input channels than `kernel_size**2`, which would shift nothing.

    Example:
        >>> Shift(3)(keras.ops.ones((1, 5, 5, 9))).shape
        (1, 5, 5, 9)
    """

    def __init__(self, kernel_size=3, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = check_positive_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(
                f"`kernel_size` must be odd. Received: kernel_size={kernel_size!r}"
            )

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"Shift expects 4D (batch, height, width, channels) inputs. "
                f"Received: input_shape={input_shape}"
            )
        channels = input_shape[-1]
        if channels is None or channels < self.kernel_size**2:
            raise ValueError(
                f"Shift(kernel_size={self.kernel_size}) needs at least "
                f"{self.kernel_size**2} input channels (one per offset). "
                f"Received: input_shape={input_shape}"
            )

    def call(self, inputs):
        k = self.kernel_size
        if k == 1:
            return inputs
        half = k // 2
        channels = inputs.shape[-1]
        group = channels // (k * k)
        height, width = ops.shape(inputs)[1], ops.shape(inputs)[2]
        padded = ops.pad(inputs, [[0, 0], [half, half], [half, half], [0, 0]])
        parts = []
        for g in range(k * k):
            dy, dx = g // k - half, g % k - half
            parts.append(
                padded[
                    :,
                    half + dy : half + dy + height,
                    half + dx : half + dx + width,
                    g * group : (g + 1) * group,
                ]
            )
        if group * k * k < channels:
            parts.append(inputs[..., group * k * k :])
        return ops.concatenate(parts, axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(kernel_size=self.kernel_size)
        return config


@keras.saving.register_keras_serializable(package="tfcompress")
class ShiftConv(layers.Layer):
    """Shift followed by a 1x1 convolution: a spatial convolution without k*k MACs.

        y = Conv2D(filters, 1, strides)(Shift(kernel_size)(x))

    The 1x1 convolution carries the stride and all parameters
    (`C_in*filters (+ filters)` instead of `k*k*C_in*filters`).

    Args:
        filters: output channels.
        kernel_size: odd shift window size.
        strides: stride of the 1x1 convolution (int or 2-tuple).
        use_bias: whether the 1x1 convolution has a bias.
        kernel_initializer, bias_initializer: initializers of the 1x1 convolution.
        kernel_regularizer, bias_regularizer: regularizers of the 1x1 convolution.
        **kwargs: standard Layer arguments.

    Raises:
        ValueError: for invalid `filters`, `kernel_size` or `strides`.

    Example:
        >>> ShiftConv(16, strides=2)(keras.ops.ones((1, 8, 8, 9))).shape
        (1, 4, 4, 16)
    """

    def __init__(
        self,
        filters,
        kernel_size=3,
        strides=1,
        use_bias=True,
        kernel_initializer="he_normal",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = check_positive_int("filters", filters)
        self.kernel_size = kernel_size
        self.strides = normalize_tuple("strides", strides)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.shift = Shift(kernel_size, name="shift")
        self.pointwise = layers.Conv2D(
            self.filters,
            1,
            strides=self.strides,
            use_bias=self.use_bias,
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            kernel_regularizer=self.kernel_regularizer,
            bias_regularizer=self.bias_regularizer,
            name="pointwise",
        )

    def build(self, input_shape):
        self.shift.build(input_shape)
        self.pointwise.build(input_shape)

    def call(self, inputs):
        return self.pointwise(self.shift(inputs))

    def compute_output_shape(self, input_shape):
        return self.pointwise.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            use_bias=self.use_bias,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
            bias_regularizer=keras.regularizers.serialize(self.bias_regularizer),
        )
        return config


# Every output element of Shift is an input element or a zero of the padding.
register_layer_traits(Shift, kind="pass_through", value_preserving=True)
register_layer_traits(ShiftConv, kind="other")
