"""Base classes shared by the layers that own a kernel (Adder*, Binary*)."""

import keras
from keras import layers

from tfcompress.core.args import check_padding, check_positive_int, normalize_tuple
from tfcompress.layers._utils import output_length

__all__ = ["Conv2DGeometry", "DenseGeometry", "KernelLayer"]


class KernelLayer(layers.Layer):
    """A layer with a `kernel` and an optional `bias`, Dense/Conv2D style arguments."""

    def __init__(
        self,
        use_bias,
        kernel_initializer,
        bias_initializer,
        kernel_regularizer,
        bias_regularizer,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)

    def add_kernel_and_bias(self, kernel_shape, kernel_constraint=None):
        """Creates `self.kernel` and, with `use_bias`, `self.bias` (last kernel axis)."""
        self.kernel = self.add_weight(
            name="kernel",
            shape=kernel_shape,
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=kernel_constraint,
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(kernel_shape[-1],),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
            )

    def add_bias(self, outputs):
        return outputs if self.bias is None else outputs + self.bias

    def get_config(self):
        config = super().get_config()
        config.update(
            use_bias=self.use_bias,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
            bias_regularizer=keras.regularizers.serialize(self.bias_regularizer),
        )
        return config


class Conv2DGeometry:
    """Mixin: filters / kernel_size / strides / padding of a 2D convolution."""

    def init_geometry(self, filters, kernel_size, strides, padding):
        self.filters = check_positive_int("filters", filters)
        self.kernel_size = normalize_tuple("kernel_size", kernel_size)
        self.strides = normalize_tuple("strides", strides)
        self.padding = check_padding(padding)

    def check_input_shape(self, input_shape, need_spatial=False):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                f"{type(self).__name__} expects 4D (batch, height, width, channels) "
                f"inputs with a known channel count. Received: input_shape={input_shape}"
            )
        if need_spatial and None in input_shape[1:3]:
            raise ValueError(
                f"{type(self).__name__} needs a known spatial input size. "
                f"Received: input_shape={input_shape}"
            )
        return self.kernel_size + (input_shape[-1], self.filters)

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


class DenseGeometry:
    """Mixin: `units` of a fully connected layer."""

    def init_geometry(self, units):
        self.units = check_positive_int("units", units)

    def check_input_shape(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError(
                f"{type(self).__name__} needs a known last dimension. "
                f"Received: input_shape={input_shape}"
            )
        return (input_shape[-1], self.units)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units)
        return config
