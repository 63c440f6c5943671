"""Ghost module and Ghost bottleneck (GhostNet).

Reference: Han, Wang, Tian, Guo, Xu, Xu. "GhostNet: More Features from Cheap
Operations", CVPR 2020, arXiv:1911.11907.
"""

import math

import keras
from keras import layers, ops

from tfcompress.core.args import check_padding, check_positive_int, normalize_tuple
from tfcompress.core.traits import register_layer_traits
from tfcompress.layers._utils import clone_initializer

__all__ = [
    "GhostBottleneck",
    "GhostConv",
    "make_divisible",
]


def make_divisible(value, divisor=4, min_value=None):
    """Rounds `value` to the nearest multiple of `divisor`, never below 90% of it.

    This is the channel rounding that GhostNet and MobileNet use for width
    multipliers and squeeze-excite reductions.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@keras.saving.register_keras_serializable(package="tfcompress")
class GhostConv(layers.Layer):
    """Ghost module: a few ordinary feature maps plus cheap depthwise "ghosts".

    With `m = ceil(filters / ratio)` intrinsic channels:

        primary = ReLU(BN(Conv2D(m, kernel_size, strides)(x)))
        ghosts  = ReLU(BN(DepthwiseConv2D(dw_kernel_size, depth_multiplier=ratio-1)(primary)))
        y       = concat([primary, ghosts], axis=-1)[..., :filters]

    The stride is applied by the primary convolution only; the cheap depthwise
    operation is always stride 1 with "same" padding. Ghost channels are ordered
    intrinsic-channel-major: channel `m + c*(ratio-1) + j` is the j-th ghost of
    intrinsic channel `c`. `relu=False` drops both ReLUs (the "linear" Ghost
    module of a bottleneck). With `ratio=1` the layer is Conv2D + BN (+ ReLU).

    Multiply-adds per output pixel: `m*k*k*C_in + m*(ratio-1)*d*d`, about
    `1/ratio` of a Conv2D with the same output (paper eq. 4).

    Args:
        filters: number of output channels.
        kernel_size: kernel size of the primary convolution (int or 2-tuple).
        ratio: `s` in the paper, output channels per intrinsic channel (>= 1).
        dw_kernel_size: kernel size `d` of the cheap depthwise convolution (odd).
        strides: stride of the primary convolution.
        relu: whether to apply ReLU after both batch normalizations.
        padding: "same" or "valid" for the primary convolution.
        kernel_initializer: initializer of both convolution kernels.
        kernel_regularizer: regularizer of both convolution kernels.
        bn_momentum: momentum of both BatchNormalization layers.
        bn_epsilon: epsilon of both BatchNormalization layers.
        **kwargs: standard Layer arguments (name, dtype, ...).

    Raises:
        ValueError: for a non-positive `filters`, `ratio`, kernel size or stride,
            an even `dw_kernel_size`, or an unknown padding.

    Example:
        >>> layer = GhostConv(32, kernel_size=3, ratio=2)
        >>> layer(keras.ops.ones((1, 8, 8, 16))).shape
        (1, 8, 8, 32)
    """

    def __init__(
        self,
        filters,
        kernel_size=1,
        ratio=2,
        dw_kernel_size=3,
        strides=1,
        relu=True,
        padding="same",
        kernel_initializer="he_normal",
        kernel_regularizer=None,
        bn_momentum=0.99,
        bn_epsilon=1e-3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = check_positive_int("filters", filters)
        self.kernel_size = normalize_tuple("kernel_size", kernel_size)
        self.ratio = check_positive_int("ratio", ratio)
        self.dw_kernel_size = check_positive_int("dw_kernel_size", dw_kernel_size)
        if dw_kernel_size % 2 == 0:
            raise ValueError(
                "`dw_kernel_size` must be odd so the cheap operation keeps the "
                f"spatial size. Received: dw_kernel_size={dw_kernel_size!r}"
            )
        self.strides = normalize_tuple("strides", strides)
        self.relu = bool(relu)
        self.padding = check_padding(padding)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bn_momentum = float(bn_momentum)
        self.bn_epsilon = float(bn_epsilon)

        self.intrinsic_channels = math.ceil(self.filters / self.ratio)
        self.primary_conv = layers.Conv2D(
            self.intrinsic_channels,
            self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            use_bias=False,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            kernel_regularizer=self.kernel_regularizer,
            name="primary_conv",
        )
        self.primary_bn = layers.BatchNormalization(
            momentum=self.bn_momentum, epsilon=self.bn_epsilon, name="primary_bn"
        )
        if self.ratio > 1:
            self.cheap_conv = layers.DepthwiseConv2D(
                self.dw_kernel_size,
                padding="same",
                depth_multiplier=self.ratio - 1,
                use_bias=False,
                depthwise_initializer=clone_initializer(self.kernel_initializer),
                depthwise_regularizer=self.kernel_regularizer,
                name="cheap_conv",
            )
            self.cheap_bn = layers.BatchNormalization(
                momentum=self.bn_momentum, epsilon=self.bn_epsilon, name="cheap_bn"
            )
        else:
            self.cheap_conv = None
            self.cheap_bn = None

    def build(self, input_shape):
        self.primary_conv.build(input_shape)
        primary_shape = self.primary_conv.compute_output_shape(input_shape)
        self.primary_bn.build(primary_shape)
        if self.cheap_conv is not None:
            self.cheap_conv.build(primary_shape)
            self.cheap_bn.build(self.cheap_conv.compute_output_shape(primary_shape))

    def call(self, inputs, training=None):
        x = self.primary_bn(self.primary_conv(inputs), training=training)
        if self.relu:
            x = ops.relu(x)
        if self.cheap_conv is None:
            return x
        ghosts = self.cheap_bn(self.cheap_conv(x), training=training)
        if self.relu:
            ghosts = ops.relu(ghosts)
        out = ops.concatenate([x, ghosts], axis=-1)
        if out.shape[-1] != self.filters:
            out = out[..., : self.filters]
        return out

    def compute_output_shape(self, input_shape):
        shape = self.primary_conv.compute_output_shape(input_shape)
        return tuple(shape[:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            ratio=self.ratio,
            dw_kernel_size=self.dw_kernel_size,
            strides=self.strides,
            relu=self.relu,
            padding=self.padding,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
        )
        return config


@keras.saving.register_keras_serializable(package="tfcompress")
class GhostBottleneck(layers.Layer):
    """Ghost bottleneck: two Ghost modules with a residual connection.

        h = GhostConv(mid_channels, relu=True)(x)
        h = BN(DepthwiseConv2D(kernel_size, strides)(h))       # only if strides > 1
        h = h * hard_sigmoid(W2 ReLU(W1 mean_hw(h) + b1) + b2)  # only if se_ratio > 0
        h = GhostConv(out_channels, relu=False)(h)
        y = h + shortcut(x)                                      # no activation after add

    The shortcut is the identity when the input already has `out_channels`
    channels and `strides == 1`, otherwise
    `BN(Conv2D(out_channels, 1)(BN(DepthwiseConv2D(kernel_size, strides)(x))))`.
    The squeeze-excite gate uses `hard_sigmoid(z) = relu6(z + 3) / 6` with
    `make_divisible(mid_channels * se_ratio, 4)` reduced channels (the PyTorch
    GhostNet release; the TensorFlow release clips to [0, 1] instead).

    Args:
        mid_channels: channels of the expansion Ghost module.
        out_channels: output channels.
        kernel_size: depthwise kernel size of the strided and shortcut paths.
        strides: 1 or 2.
        se_ratio: squeeze-excite reduction ratio in [0, 1); 0 disables SE.
        kernel_initializer: initializer of every convolution kernel.
        kernel_regularizer: regularizer of every convolution kernel.
        bn_momentum: momentum of every BatchNormalization inside the block.
        bn_epsilon: epsilon of every BatchNormalization inside the block.
        **kwargs: standard Layer arguments.

    Raises:
        ValueError: for non-positive channels or kernel size, a stride other
            than 1 or 2, or `se_ratio` outside [0, 1).

    Example:
        >>> block = GhostBottleneck(48, 24, kernel_size=3, strides=2)
        >>> block(keras.ops.ones((1, 16, 16, 16))).shape
        (1, 8, 8, 24)
    """

    def __init__(
        self,
        mid_channels,
        out_channels,
        kernel_size=3,
        strides=1,
        se_ratio=0.0,
        kernel_initializer="he_normal",
        kernel_regularizer=None,
        bn_momentum=0.99,
        bn_epsilon=1e-3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.mid_channels = check_positive_int("mid_channels", mid_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.kernel_size = check_positive_int("kernel_size", kernel_size)
        if strides not in (1, 2) or isinstance(strides, bool):
            raise ValueError(f"`strides` must be 1 or 2. Received: strides={strides!r}")
        self.strides = strides
        if not isinstance(se_ratio, (int, float)) or not 0.0 <= se_ratio < 1.0:
            raise ValueError(
                f"`se_ratio` must be in [0, 1). Received: se_ratio={se_ratio!r}"
            )
        self.se_ratio = float(se_ratio)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bn_momentum = float(bn_momentum)
        self.bn_epsilon = float(bn_epsilon)

        self.ghost1 = GhostConv(
            mid_channels, relu=True, name="ghost1", bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            **self._conv_args(),
        )
        if strides > 1:
            self.dw_conv = layers.DepthwiseConv2D(
                kernel_size, strides=strides, padding="same", use_bias=False,
                name="dw_conv", **self._dw_args(),
            )
            self.dw_bn = layers.BatchNormalization(name="dw_bn", **self._bn_args())
        else:
            self.dw_conv = self.dw_bn = None
        if self.se_ratio > 0:
            reduced = make_divisible(mid_channels * self.se_ratio, 4)
            self.se_pool = layers.GlobalAveragePooling2D(keepdims=True, name="se_pool")
            self.se_reduce = layers.Conv2D(reduced, 1, name="se_reduce", **self._conv_args())
            self.se_expand = layers.Conv2D(mid_channels, 1, name="se_expand", **self._conv_args())
        else:
            self.se_pool = self.se_reduce = self.se_expand = None
        self.ghost2 = GhostConv(
            out_channels, relu=False, name="ghost2", bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            **self._conv_args(),
        )
        # The shortcut layers depend on the input channels, known only in build.
        self.shortcut_dw = self.shortcut_dw_bn = None
        self.shortcut_conv = self.shortcut_bn = None

    def _bn_args(self):
        return {"momentum": self.bn_momentum, "epsilon": self.bn_epsilon}

    def _conv_args(self):
        return {
            "kernel_initializer": clone_initializer(self.kernel_initializer),
            "kernel_regularizer": self.kernel_regularizer,
        }

    def _dw_args(self):
        return {
            "depthwise_initializer": clone_initializer(self.kernel_initializer),
            "depthwise_regularizer": self.kernel_regularizer,
        }

    def build(self, input_shape):
        in_channels = input_shape[-1]
        self.ghost1.build(input_shape)
        shape = self.ghost1.compute_output_shape(input_shape)
        if self.dw_conv is not None:
            self.dw_conv.build(shape)
            shape = self.dw_conv.compute_output_shape(shape)
            self.dw_bn.build(shape)
        if self.se_reduce is not None:
            pooled = (shape[0], 1, 1, shape[-1])
            self.se_reduce.build(pooled)
            self.se_expand.build(self.se_reduce.compute_output_shape(pooled))
        self.ghost2.build(shape)
        if in_channels != self.out_channels or self.strides != 1:
            self.shortcut_dw = layers.DepthwiseConv2D(
                self.kernel_size, strides=self.strides, padding="same",
                use_bias=False, name="shortcut_dw", **self._dw_args(),
            )
            self.shortcut_dw_bn = layers.BatchNormalization(
                name="shortcut_dw_bn", **self._bn_args()
            )
            self.shortcut_conv = layers.Conv2D(
                self.out_channels, 1, use_bias=False, name="shortcut_conv",
                **self._conv_args(),
            )
            self.shortcut_bn = layers.BatchNormalization(name="shortcut_bn", **self._bn_args())
            self.shortcut_dw.build(input_shape)
            sc_shape = self.shortcut_dw.compute_output_shape(input_shape)
            self.shortcut_dw_bn.build(sc_shape)
            self.shortcut_conv.build(sc_shape)
            self.shortcut_bn.build(self.shortcut_conv.compute_output_shape(sc_shape))

    def call(self, inputs, training=None):
        x = self.ghost1(inputs, training=training)
        if self.dw_conv is not None:
            x = self.dw_bn(self.dw_conv(x), training=training)
        if self.se_reduce is not None:
            gate = self.se_expand(ops.relu(self.se_reduce(self.se_pool(x))))
            x = x * (ops.relu6(gate + 3.0) / 6.0)
        x = self.ghost2(x, training=training)
        if self.shortcut_conv is None:
            shortcut = inputs
        else:
            shortcut = self.shortcut_dw_bn(self.shortcut_dw(inputs), training=training)
            shortcut = self.shortcut_bn(self.shortcut_conv(shortcut), training=training)
        return x + shortcut

    def compute_output_shape(self, input_shape):
        shape = self.ghost1.compute_output_shape(input_shape)
        if self.strides > 1:
            shape = (shape[0],) + tuple(
                None if s is None else -(-s // self.strides) for s in shape[1:3]
            ) + (shape[3],)
        return self.ghost2.compute_output_shape(shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            mid_channels=self.mid_channels,
            out_channels=self.out_channels,
            kernel_size=self.kernel_size,
            strides=self.strides,
            se_ratio=self.se_ratio,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
        )
        return config


# Composite layers: lowering expands them into the standard layers they are made of.
register_layer_traits(GhostConv, kind="other")
register_layer_traits(GhostBottleneck, kind="other")
