"""The QAT layers: a weighted layer with its BatchNorm folded, an adder layer step by
step, and a BatchNormalization on its own, each in int8 exactly as the exported
TFLite operators compute it.

BatchNorm folding (Jacob et al., CVPR 2018, sec. 3.2; Krishnamoorthi 2018, sec.
3.2.2): a Conv2D / DepthwiseConv2D / Dense followed by BatchNormalization trains as
one layer whose weights are `w * gamma / sigma` (moving sigma) quantized, with the
output corrected by `sigma / sigma_B` and the bias `beta - gamma * mu_B / sigma_B`
while training, so the forward pass equals conv-then-BN with batch statistics; at
inference it uses the moving statistics, exactly what is exported. The gradient
flows through the batch statistics `mu_B`, `sigma_B`. By default they come from
the quantized pass itself (`z = op(x, Q_w(w f))`, `f = gamma / sigma`:
`mu_B = mean(z) / f + b`, `sigma_B^2 = var(z) / f^2`), one convolution per
training step; `batch_statistics="float"` takes them from an extra float pass
(Krishnamoorthi's scheme), so the forward pass and, with the straight-through
weight quantizer, the gradient are exactly conv-then-BN's in training mode, at
the cost of a second convolution (the QAT epoch times of both are in
benchmarks/RESULTS.md, bits benchmark part 3). At inference each wrapper rounds its bias to int32
at `s_in * s_w`, as the converter stores it, with the scale of its input's
quantizer (`input_quantizer_of`).
"""

import math
import weakref

import keras
from keras import layers, ops

from tfcompress.analysis.profile import count_layer, register_counter
from tfcompress.core.graph import layer_call_inputs
from tfcompress.layers import (
    AdderConv,
    AdderDense,
    BinaryConv,
    BinaryDense,
    TernaryConv,
    TernaryDense,
)
from tfcompress.layers.adder import in_tflite_graph, magnitude, unit_channel_sum
from tfcompress.quantization.quantizers import (
    ACTIVATION_BITS,
    FIXED_RANGE,
    FIXED_RANGE_ACTIVATIONS,
    FUSABLE_ACTIVATIONS,
    INT8_TO_INT16,
    WEIGHT_BITS,
    ActivationQuantizer,
    activation_name,
    check_bits,
    check_range,
    fake_quant_constant,
    fake_quant_weights,
    weight_bound,
    weight_levels,
)
from tfcompress.quantization.roles import is_scale_preserving, quantization_role

__all__ = [
    "QuantizeAdderWrapper",
    "QuantizeBatchNorm",
    "QuantizeWrapper",
    "input_quantizer_of",
]


BATCH_STATISTICS = ("float", "quantized")


def _gamma_beta(bn):
    """A BatchNormalization's (gamma, beta), ones / zeros where it has none."""
    gamma = bn.gamma if bn.scale else ops.ones_like(bn.moving_mean)
    beta = bn.beta if bn.center else ops.zeros_like(bn.moving_mean)
    return gamma, beta


def _fused_relu(outputs, activation):
    """ReLU / ReLU6 for activation "relu" / "relu6" (TFLite fuses them into the
    op before); "linear" passes the values through."""
    if activation == "relu":
        return ops.relu(outputs)
    if activation == "relu6":
        return ops.relu6(outputs)
    return outputs


def _moments(values):
    """(mean, variance) of `values` over all axes but the last."""
    return ops.moments(values, axes=list(range(len(values.shape) - 1)))


def _update_moving_statistics(bn, mean, var):
    """Moves `bn`'s moving statistics towards a batch's, with its momentum, as
    BatchNormalization trains."""
    m = bn.momentum
    bn.moving_mean.assign(m * bn.moving_mean + (1.0 - m) * mean)
    bn.moving_variance.assign(m * bn.moving_variance + (1.0 - m) * var)


def _batch_statistics(bn, values):
    """(mean, variance) of `values` over all axes but the last, also moved into
    `bn`'s moving statistics."""
    mean, var = _moments(values)
    _update_moving_statistics(bn, mean, var)
    return mean, var


@keras.saving.register_keras_serializable(package="tfcompress")
class QuantizeWrapper(layers.Layer):
    """A Conv2D / DepthwiseConv2D / Dense with folded BatchNorm, activation and int8 fake quant.

    Computes `Q_a(act(op(x, Q_w(w_fold)) + b_fold))`, where `op` is the wrapped
    layer's operation, `Q_w` symmetric int8 (per output channel or per tensor),
    `Q_a` an `ActivationQuantizer`, and, with a `batchnorm`,
    `w_fold = w * gamma / sqrt(var + eps)`. See the module docstring for the
    training-time correction. softmax/sigmoid activations quantize the logits
    first, then the output with TFLite's fixed range.

    Args:
        layer: the Conv2D, DepthwiseConv2D or Dense layer (or its serialized config).
        batchnorm: a BatchNormalization following it (or config), or None.
        activation: "linear", "relu", "relu6", "softmax" or "sigmoid", applied
            after the folded BN (the wrapped layer's own activation must be linear
            when a batchnorm is given).
        per_channel: per-output-channel weight scales (else per tensor). Dense
            layers always use one scale: TFLite's FULLY_CONNECTED kernels do.
        ema_decay: decay of the output range's moving average.
        quantize_output: False when the output feeds only a concatenation, which
            quantizes it (TFLite gives concatenation inputs the output's scale).
        init_range: where the output range starts (`ActivationQuantizer`).
        activation_bits: 8, or 16 for TFLite's 16x8 mode (int16 activations,
            int64 biases).
        weight_bits: 8, or 4 (int4 weights, levels -7..7).
        range_learning: how the output range is found: "ema", "lsq" or "pact"
            (`ActivationQuantizer`).
        batch_statistics: where training takes a folded BatchNorm's batch
            statistics from: "float" (an extra pass with the float kernel,
            Krishnamoorthi 2018 sec. 3.2.2: the forward pass is exactly
            conv-then-BN in training mode) or "quantized" (the one quantized
            pass: `z = op(x, Q_w(w * f))`, `f = gamma / sigma`, so `mu_B = mean(z) / f + b`
            and `sigma_B^2 = var(z) / f^2`, one convolution per step instead of
            two; the statistics carry the weights' rounding). Inference and
            the exported file are the same either way.
        **kwargs: standard Layer arguments.

    Raises:
        ValueError: for an unsupported layer type, activation, bit width or
            batch_statistics.
    """

    def __init__(
        self, layer, batchnorm=None, activation="linear", per_channel=True, ema_decay=0.99,
        quantize_output=True, init_range=None, activation_bits=8, weight_bits=8,
        range_learning="ema", batch_statistics="quantized", **kwargs,
    ):
        super().__init__(**kwargs)
        if batch_statistics not in BATCH_STATISTICS:
            raise ValueError(
                f"`batch_statistics` must be one of {', '.join(map(repr, BATCH_STATISTICS))}. "
                f"Received: batch_statistics={batch_statistics!r}"
            )
        self.batch_statistics = batch_statistics
        self.range_learning = range_learning
        self.activation_bits = check_bits("activation_bits", activation_bits, ACTIVATION_BITS)
        self.weight_bits = check_bits("weight_bits", weight_bits, WEIGHT_BITS)
        if isinstance(layer, dict):
            layer = keras.saving.deserialize_keras_object(layer)
        if isinstance(batchnorm, dict):
            batchnorm = keras.saving.deserialize_keras_object(batchnorm)
        if quantization_role(layer) != "weights" or getattr(layer, "binarize_input", False):
            raise ValueError(
                "QuantizeWrapper wraps Conv2D, DepthwiseConv2D, Dense, TernaryConv / "
                "TernaryDense, or BinaryConv / BinaryDense with binarize_input=False. "
                f"Received: layer={layer!r}"
            )
        inner_activation = activation_name(getattr(layer, "activation", None))
        if batchnorm is not None and inner_activation != "linear":
            raise ValueError(
                f"Cannot fold {batchnorm.name!r} after {layer.name!r}: the layer already "
                f"applies activation={inner_activation!r} before the BatchNormalization."
            )
        if activation == "linear":
            activation = inner_activation
        if activation not in FUSABLE_ACTIVATIONS:
            raise ValueError(
                f"Unsupported activation {activation!r} in {layer.name!r}; supported: "
                f"{', '.join(FUSABLE_ACTIVATIONS)}."
            )
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise ValueError(f"{layer.name!r}: only data_format='channels_last' is supported.")
        self.layer = layer
        self.batchnorm = batchnorm
        self.activation = activation
        self.per_channel = bool(per_channel)
        self.ema_decay = float(ema_decay)
        self.quantize_output = bool(quantize_output)
        self.init_range = check_range("init_range", init_range)
        fixed = activation in FIXED_RANGE_ACTIVATIONS
        self.output_quantizer = ActivationQuantizer(
            ema_decay, fixed_range=FIXED_RANGE if fixed else None,
            quantize_in_training=not fixed, init_range=None if fixed else self.init_range,
            num_bits=self.activation_bits, range_learning=range_learning,
            name="output_quantizer",
        )
        self.logits_quantizer = (
            ActivationQuantizer(ema_decay, init_range=self.init_range,
                                num_bits=self.activation_bits, range_learning=range_learning,
                                name="logits_quantizer")
            if fixed else None
        )
        self._input_quantizer_ref = None  # weakref, set when called in a functional graph

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        out_shape = self.layer.compute_output_shape(input_shape)
        if self.batchnorm is not None and not self.batchnorm.built:
            self.batchnorm.build(out_shape)
        self.output_quantizer.build(out_shape)
        if self.logits_quantizer is not None:
            self.logits_quantizer.build(out_shape)

    # -- the wrapped operation, with any kernel
    def _op(self, x, kernel):
        layer = self.layer
        if len(kernel.shape) == 2:  # Dense, BinaryDense
            return ops.matmul(x, kernel)
        if isinstance(layer, layers.DepthwiseConv2D):
            return ops.depthwise_conv(
                x, kernel, strides=layer.strides, padding=layer.padding,
                dilation_rate=layer.dilation_rate,
            )
        return ops.conv(
            x, kernel, strides=layer.strides, padding=layer.padding,
            dilation_rate=getattr(layer, "dilation_rate", 1),
        )

    def _per_output(self, values):
        """Reshapes a per-output-channel vector to broadcast against the kernel."""
        if isinstance(self.layer, layers.DepthwiseConv2D):
            _, _, cin, mult = self.layer.kernel.shape
            return ops.reshape(values, (1, 1, cin, mult))
        return values

    def _kernel_as_stored(self, kernel):
        """(kernel with TFLite's output channels last, per_channel) for the weight grid."""
        if isinstance(self.layer, layers.DepthwiseConv2D):
            # TFLite's depthwise output channel is c * multiplier + m.
            kh, kw, cin, mult = kernel.shape
            return ops.reshape(kernel, (kh, kw, 1, cin * mult)), self.per_channel
        # TFLite's FULLY_CONNECTED takes one weight scale (per-tensor), as in its PTQ.
        return kernel, self.per_channel and len(kernel.shape) != 2

    def _quantized_kernel(self, kernel):
        stored, per_channel = self._kernel_as_stored(kernel)
        return ops.reshape(
            fake_quant_weights(stored, per_channel, num_bits=self.weight_bits), kernel.shape
        )

    def _bias_on_int32_grid(self, bias, kernel):
        """The bias as the file stores it: int32 at scale `s_in * s_w`.

        TFLite rounds the bias to that grid; a bias half a step from it moves an
        output sitting at a rounding boundary by one int8 step, which flips a Sign
        behind it (a BinaryConv's input). Needs the input's quantizer, found when
        the layer is called in a functional graph; without one (an unquantized
        input) the bias stays as it is.
        """
        quantizer = self.input_quantizer
        if quantizer is None:
            return bias
        stored, per_channel = self._kernel_as_stored(kernel)
        step = quantizer.scale() * weight_bound(stored, per_channel) / weight_levels(
            self.weight_bits)
        if self.activation_bits == 16 and quantizer.num_bits == 8:
            # A 16-bit layer in an int8 file: its int8 input is requantized exactly to
            # int16 at 1/128 of the int8 scale (`export.int16_layers`).
            step = step / INT8_TO_INT16
        return ops.round(bias / step) * step

    def __call__(self, inputs, *args, **kwargs):
        # In a functional graph (built by quantize_model, or rebuilt when a .keras
        # file loads) the input's history names the quantizer of its int8 grid.
        if isinstance(inputs, keras.KerasTensor):
            producer = input_quantizer_of(inputs)
            self._input_quantizer_ref = None if producer is None else weakref.ref(producer)
        return super().__call__(inputs, *args, **kwargs)

    @property
    def input_quantizer(self):
        """The ActivationQuantizer whose int8 grid the input is on (None if unquantized).

        Found from the functional graph the layer is called in, through
        scale-preserving layers; the inference bias is rounded with its scale.
        """
        ref = self._input_quantizer_ref
        return None if ref is None else ref()

    def folded_weights(self):
        """(kernel, bias) with the BatchNorm folded in, moving statistics, unquantized.

            w_fold = w * gamma / sigma,   b_fold = beta + (b - mu) * gamma / sigma,
            sigma = sqrt(moving_variance + epsilon)

        so that `op(x, w_fold) + b_fold == BN(op(x, w) + b)` at inference.
        """
        layer, bn = self.layer, self.batchnorm
        kernel = self._kernel()
        bias = layer.bias if layer.use_bias else ops.zeros((self.output_channels,))
        if bn is None:
            return kernel, bias
        gamma, beta = _gamma_beta(bn)
        scale = gamma / ops.sqrt(bn.moving_variance + bn.epsilon)
        return kernel * self._per_output(scale), beta + (bias - bn.moving_mean) * scale

    def _kernel(self):
        """The kernel the wrapped layer computes with (alpha * sign(W) if binary,
        alpha * W_t if ternary; both straight-through to the latent kernel)."""
        if isinstance(self.layer, (BinaryConv, BinaryDense)):
            return self.layer.binary_kernel()
        if isinstance(self.layer, (TernaryConv, TernaryDense)):
            return self.layer.ternary_kernel()
        return ops.convert_to_tensor(self.layer.kernel)

    @property
    def output_channels(self):
        shape = self.layer.kernel.shape
        if isinstance(self.layer, layers.DepthwiseConv2D):
            return shape[2] * shape[3]
        return shape[-1]

    def call(self, inputs, training=None):
        layer, bn = self.layer, self.batchnorm
        folded, folded_bias = self.folded_weights()
        outputs = self._op(inputs, self._quantized_kernel(folded))
        if not training:
            outputs = outputs + self._bias_on_int32_grid(folded_bias, folded)
        elif bn is None:
            outputs = outputs + folded_bias
        else:
            bias = layer.bias if layer.use_bias else 0.0
            gamma, beta = _gamma_beta(bn)
            sigma = ops.sqrt(bn.moving_variance + bn.epsilon)
            if self.batch_statistics == "float":  # from a float pass
                mean_b, var_b = _moments(self._op(inputs, self._kernel()) + bias)
            else:  # from this pass: op(x, w) = z / f up to the weights' rounding
                f = gamma / sigma
                f = ops.where(ops.abs(f) > 1e-12, f, 1e-12)
                mean_z, var_z = _moments(outputs)
                mean_b, var_b = mean_z / f + bias, var_z / (f * f)
            _update_moving_statistics(bn, mean_b, var_b)
            sigma_b = ops.sqrt(var_b + bn.epsilon)
            # No stop_gradient: sigma_B carries BN's gradient (module docstring).
            outputs = outputs * (ops.stop_gradient(sigma) / sigma_b)
            outputs = outputs + beta + (bias - mean_b) * gamma / sigma_b
        act = self.activation
        if act in FIXED_RANGE_ACTIVATIONS:
            outputs = self.logits_quantizer(outputs, training=training)
            # keras.activations keep the logits on the output for the loss.
            outputs = getattr(keras.activations, act)(outputs)
        else:
            outputs = _fused_relu(outputs, act)
        if not self.quantize_output:
            return outputs
        return self.output_quantizer(outputs, training=training)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            layer=keras.saving.serialize_keras_object(self.layer),
            batchnorm=(
                None if self.batchnorm is None
                else keras.saving.serialize_keras_object(self.batchnorm)
            ),
            activation=self.activation,
            per_channel=self.per_channel,
            ema_decay=self.ema_decay,
            quantize_output=self.quantize_output,
            init_range=self.init_range,
            activation_bits=self.activation_bits,
            weight_bits=self.weight_bits,
            range_learning=self.range_learning,
            batch_statistics=self.batch_statistics,
        )
        return config


@keras.saving.register_keras_serializable(package="tfcompress")
class QuantizeAdderWrapper(layers.Layer):
    """AdderConv / AdderDense in int8, step for step as integer-only TFLite runs it.

    The exported layer is, per kernel position, SUB (input - int8 weights),
    LEAKY_RELU with alpha -1 (the absolute value, see `layers.adder.magnitude`),
    SUM over input channels, MUL by -1, and an ADD accumulating the positions;
    every one of those int8 tensors gets its own scale. This wrapper fake-quantizes
    each of them (one moving-average range per kind of step, shared by the
    positions; the partial sums' range follows the full sum), so the QAT model
    computes what the file computes. Weights are
    symmetric int8 with one scale (SUB takes a per-tensor constant). Training uses
    plain straight-through gradients (AdderNet's HardTanh rule is for training
    from scratch; this is for fine-tuning).

    Args:
        layer: the AdderConv or AdderDense (or its serialized config).
        ema_decay: decay of the ranges' moving averages.
        init_range: where the ranges start (`ActivationQuantizer`).
        **kwargs: standard Layer arguments.

    Raises:
        ValueError: for a layer that is not AdderConv/AdderDense.
    """

    # "magnitude" is kept for files saved before 0.3 (its range is no longer used:
    # |difference| is quantized on the difference's grid).
    _STEPS = ("difference", "magnitude", "sum", "negated", "accumulated", "biased")

    def __init__(self, layer, ema_decay=0.99, init_range=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(layer, dict):
            layer = keras.saving.deserialize_keras_object(layer)
        if not isinstance(layer, (AdderConv, AdderDense)):
            raise ValueError(  # noqa: TRY004
                f"QuantizeAdderWrapper wraps AdderConv or AdderDense. Received: layer={layer!r}"
            )
        self.layer = layer
        self.ema_decay = float(ema_decay)
        self.init_range = check_range("init_range", init_range)
        self.quantizers = {
            step: ActivationQuantizer(ema_decay, init_range=self.init_range, name=f"{step}_quantizer")
            for step in self._STEPS
        }

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        for quantizer in self.quantizers.values():
            quantizer.build(())

    @property
    def output_quantizer(self):
        """The quantizer of the last step, whose int8 grid the output is on."""
        if self.layer.bias is not None:
            return self.quantizers["biased"]
        kernel_shape = self.layer.kernel.shape
        positions = 1 if len(kernel_shape) == 2 else kernel_shape[0] * kernel_shape[1]
        return self.quantizers["accumulated" if positions > 1 else "negated"]

    def _inputs_and_kernels(self, inputs):
        """(input slice, kernel slice) per kernel position, as AdderConv computes them."""
        layer = self.layer
        kernel = fake_quant_weights(ops.convert_to_tensor(layer.kernel), per_channel=False)
        if len(kernel.shape) == 2:
            return [(inputs, kernel)]
        return [(patch, kernel[i, j]) for (i, j), patch in layer.kernel_patches(inputs)]

    def call(self, inputs, training=None):
        q = {step: (lambda t, quantizer=quantizer: quantizer(t, training=training))
             for step, quantizer in self.quantizers.items()}
        parts = []
        for patch, kernel in self._inputs_and_kernels(inputs):
            if in_tflite_graph():
                # The same values, summed by a 1x1 convolution of ones that rounds
                # once on every runtime (int8 SUM kernels disagree by many steps).
                diff, reduce = unit_channel_sum(patch, kernel)
            else:
                diff, reduce = ops.expand_dims(patch, -1) - kernel, None
            diff = q["difference"](diff)
            # |diff| on the difference's own grid (scale s, zero point -128): every
            # value of |diff| is exactly representable, so LEAKY_RELU(-1) needs no
            # rounding in any kernel. With a range of its own (scale about s / 2)
            # XNNPACK, whose int8 LEAKY_RELU has an 8-bit multiplier, rounded 0.5% of
            # the magnitudes one step away from the exact kernels and from Keras.
            step = self.quantizers["difference"].scale()
            mag = keras.quantizers.fake_quant_with_min_max_vars(
                magnitude(diff), 0.0, 255.0 * step, num_bits=8
            )
            part = q["sum"](ops.sum(mag, axis=-2) if reduce is None else reduce(mag))
            parts.append(q["negated"](part * -1.0))
        accumulated = self.quantizers["accumulated"]
        if len(parts) > 1 and training:
            # The partial sums share one int8 scale. They grow with each position, so
            # the range follows the full sum, which holds every earlier one. It is
            # taken from the sum of the parts before any of them is rounded: the
            # rounded chain clips at the current range, so a range that followed it
            # could grow by only one position's part per step (measured: -63 where
            # the sums reach -330, and 10% accuracy).
            full = parts[0]
            for part in parts[1:]:
                full = full + part
            accumulated(full, training=training)
        outputs = parts[0]
        for part in parts[1:]:
            outputs = accumulated(outputs + part, training=training, update_range=False)
        if self.layer.bias is not None:
            outputs = q["biased"](outputs + self.layer.bias)
        return outputs

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(layer=keras.saving.serialize_keras_object(self.layer),
                      ema_decay=self.ema_decay, init_range=self.init_range)
        return config


@keras.saving.register_keras_serializable(package="tfcompress")
class QuantizeBatchNorm(layers.Layer):
    """A BatchNormalization that is not folded, in int8 as the exported ADD and MUL run it.

        BN(x) = (x + d) * m,   m = gamma / sqrt(var + eps),   d = beta / m - mean

    per channel. `d` and `m` are int8 constants (`_fake_quant_constant`) and the sum
    between the ADD and the MUL is an int8 tensor with its own moving-average range,
    so the QAT model computes what the file computes. Adding first keeps that tensor
    centred on the data's spread. The other order, Keras' `x * m + (beta - mean * m)`,
    which the converter would emit with a range it calibrates itself, rounds `x * m`
    before a large offset cancels it, e.g. behind an AdderConv, whose outputs
    -sum |x - w| sit far from zero: tens of output steps of error.
    Training uses the batch statistics and updates the moving ones with the layer's
    momentum, as `BatchNormalization` does. A channel with |m| < 1e-6 (gamma of 0)
    computes with m = 1e-6.

    Args:
        layer: the BatchNormalization (or its serialized config), normalizing the last axis.
        activation: "linear", "relu" or "relu6" after it (TFLite fuses it into the MUL).
        ema_decay: decay of the ranges' moving averages.
        quantize_output: False when the output feeds only a concatenation, which
            quantizes it (as in `QuantizeWrapper`).
        init_range: where the ranges start (`ActivationQuantizer`).
        **kwargs: standard Layer arguments.

    Raises:
        ValueError: for a layer that is not a BatchNormalization over the last axis.
    """

    def __init__(
        self, layer, activation="linear", ema_decay=0.99, quantize_output=True, init_range=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(layer, dict):
            layer = keras.saving.deserialize_keras_object(layer)
        if not isinstance(layer, layers.BatchNormalization):
            raise ValueError(  # noqa: TRY004
                f"QuantizeBatchNorm wraps a BatchNormalization. Received: layer={layer!r}"
            )
        if activation not in ("linear", "relu", "relu6"):
            raise ValueError(
                "QuantizeBatchNorm fuses activation 'linear', 'relu' or 'relu6'. "
                f"Received: activation={activation!r}"
            )
        self.activation = activation
        self.layer = layer
        self.ema_decay = float(ema_decay)
        self.quantize_output = bool(quantize_output)
        self.init_range = check_range("init_range", init_range)
        self.sum_quantizer = ActivationQuantizer(
            ema_decay, init_range=self.init_range, name="sum_quantizer"
        )
        self.output_quantizer = ActivationQuantizer(
            ema_decay, init_range=self.init_range, name="output_quantizer"
        )

    def build(self, input_shape):
        if self.layer.axis not in (-1, len(input_shape) - 1):
            raise ValueError(
                f"{self.layer.name!r}: only a BatchNormalization over the last axis can be "
                f"quantized. Received: axis={self.layer.axis!r} for inputs of rank "
                f"{len(input_shape)}"
            )
        if not self.layer.built:
            self.layer.build(input_shape)
        self.sum_quantizer.build(input_shape)
        self.output_quantizer.build(input_shape)

    def call(self, inputs, training=None, mask=None):
        del mask  # quantize_model passes none through: Keras' functional API adds it
        bn = self.layer
        if training:
            mean, var = _batch_statistics(bn, inputs)
        else:
            mean, var = bn.moving_mean, bn.moving_variance
        gamma, beta = _gamma_beta(bn)
        scale = gamma / ops.sqrt(var + bn.epsilon)
        scale = ops.where(ops.abs(scale) < 1e-6, 1e-6, scale)
        shift = beta / scale - mean
        outputs = self.sum_quantizer(inputs + fake_quant_constant(shift), training=training)
        outputs = _fused_relu(outputs * fake_quant_constant(scale), self.activation)
        if not self.quantize_output:
            return outputs
        return self.output_quantizer(outputs, training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            layer=keras.saving.serialize_keras_object(self.layer),
            activation=self.activation,
            ema_decay=self.ema_decay,
            quantize_output=self.quantize_output,
            init_range=self.init_range,
        )
        return config


def input_quantizer_of(tensor):
    """The ActivationQuantizer whose int8 grid a KerasTensor is on, or None.

    Follows the tensor back through scale-preserving layers (MaxPooling,
    Reshape, Shift, ...) to the quantizer that produced it: a standalone one or
    a wrapper's output quantizer. None for an unquantized tensor.
    """
    while True:
        source = layer_call_inputs(tensor)
        if source is None:
            return None
        op, inputs = source
        if isinstance(op, ActivationQuantizer):
            return op
        if isinstance(op, (QuantizeWrapper, QuantizeBatchNorm)):
            return op.output_quantizer if op.quantize_output else None
        if isinstance(op, QuantizeAdderWrapper):
            return op.output_quantizer
        if not is_scale_preserving(op) or len(inputs) != 1:
            return None
        tensor = inputs[0]


def _count_int8(layer, kernel, biases, input_shape, output_shape, weight_bits=8, bias_bits=32):
    """Operations of the wrapped layer; int8 (or int4) weights and int32 (int64 in 16x8)
    biases, as the file holds them (folded BatchNorm statistics and quantizer ranges
    are no parameters)."""
    counts = count_layer(layer, input_shape, output_shape)
    size = math.prod(kernel.shape)
    return {
        "macs": counts["macs"], "adds": counts["adds"], "binary_ops": counts["binary_ops"],
        "params": size + biases, "trainable_params": size + biases,
        "param_bits": weight_bits * size + bias_bits * biases,
    }


def _count_quantize_wrapper(wrapper, input_shape, output_shape):
    layer = wrapper.layer
    has_bias = bool(getattr(layer, "use_bias", False)) or wrapper.batchnorm is not None
    biases = wrapper.output_channels if has_bias else 0
    return _count_int8(layer, layer.kernel, biases, input_shape, output_shape,
                       weight_bits=wrapper.weight_bits,
                       bias_bits=64 if wrapper.activation_bits == 16 else 32)


def _count_adder_wrapper(wrapper, input_shape, output_shape):
    layer = wrapper.layer
    biases = 0 if layer.bias is None else int(layer.bias.shape[0])
    return _count_int8(layer, layer.kernel, biases, input_shape, output_shape)


def _count_batchnorm(wrapper, input_shape, output_shape):
    # The file's ADD and MUL: one int8 constant each per channel.
    channels = int(wrapper.layer.moving_mean.shape[0])
    return {"params": 2 * channels, "trainable_params": 2 * channels, "param_bits": 16 * channels}


register_counter(QuantizeWrapper, _count_quantize_wrapper)
register_counter(QuantizeAdderWrapper, _count_adder_wrapper)
register_counter(QuantizeBatchNorm, _count_batchnorm)
