"""Quantization-aware training (QAT) with BatchNorm folding, in TFLite's int8 scheme.

The scheme is the one TFLite executes (Jacob et al., "Quantization and Training of
Neural Networks for Efficient Integer-Arithmetic-Only Inference", CVPR 2018):

* weights: symmetric int8 in [-127, 127], one scale per output channel
  (`per_channel=True`) or per tensor, `s = max|w| / 127`;
* activations: asymmetric int8, `x ~ s * (q - z)`, range from an exponential
  moving average of the batch min/max seen in training (zero always inside);
* bias: int32 at scale `s_in * s_w` (the converter rounds it; the QAT model's
  inference rounds it the same way, with the scale of its input's quantizer).

Fake quantization sits where TFLite quantizes: on the model input, on the folded
weights, and after the fused conv + bias + activation (never between them), so
the Keras QAT model and the exported file compute the same thing.

BatchNorm folding (Jacob et al. sec. 3.2; Krishnamoorthi 2018, sec. 3.2.2): a
Conv2D / DepthwiseConv2D / Dense followed by BatchNormalization trains as one
layer whose weights are `w * gamma / sigma` (moving sigma) quantized, with the
output corrected by `sigma / sigma_B` and the bias `beta - gamma * mu_B / sigma_B`
while training, so the forward pass equals conv-then-BN with batch statistics;
at inference it uses the moving statistics, exactly what is exported. The
gradient flows through the batch statistics `mu_B`, `sigma_B` (computed from an
unquantized pass), so with the straight-through weight quantizer it is exactly
the gradient of conv-then-BN in training mode.

Supported layers: Conv2D, DepthwiseConv2D, Dense (activation linear, relu,
relu6, softmax or sigmoid), BatchNormalization (folded, or `QuantizeBatchNorm`
where there is nothing to fold into), Add, Subtract, Multiply, Average,
Concatenate, GlobalAveragePooling, AveragePooling, Rescaling, standalone ReLU /
Activation / Softmax, the scale-preserving MaxPooling, Flatten, Reshape,
Dropout, ZeroPadding, Cropping, Permute, and every tfcompress layer: GhostConv, GhostBottleneck and ShiftConv
(lowered first, see `tfcompress.lowering`), Shift, BinaryConv/BinaryDense (Sign
+ a conv on +/-1 inputs) and AdderConv/AdderDense (`QuantizeAdderWrapper`).
Functional and Sequential models only; subclassed models cannot be cloned by
Keras and raise a ValueError.
"""

import weakref

import keras
from keras import layers, ops

from tfcompress.layers.adder import magnitude

_KERAS_WEIGHTED = (layers.Conv2D, layers.DepthwiseConv2D, layers.Dense)
_FUSABLE_ACTIVATIONS = ("linear", "relu", "relu6", "softmax", "sigmoid")
# Outputs TFLite gives a fixed int8 range: scale 1/256, zero point -128.
_FIXED_RANGE_ACTIVATIONS = ("softmax", "sigmoid")
_FIXED_RANGE = (0.0, 255.0 / 256.0)
# Range whose int8 grid (scale 1/127, zero point 0 in int8) holds -1 and +1 exactly.
_SIGN_RANGE = (-128.0 / 127.0, 1.0)


def _weighted_types():
    from tfcompress.layers import BinaryConv, BinaryDense

    return _KERAS_WEIGHTED + (BinaryConv, BinaryDense)


def _binary_types():
    from tfcompress.layers import BinaryConv, BinaryDense

    return (BinaryConv, BinaryDense)


def _activation_name(activation):
    if activation is None:
        return "linear"
    if isinstance(activation, str):
        return activation
    name = getattr(activation, "__name__", None)
    return name or str(activation)


def _weight_bound(kernel, per_channel, channel_axis=-1):
    """`max |w|` per slice along `channel_axis` (or over all), at least 1e-8."""
    if per_channel:
        axes = [a for a in range(len(kernel.shape)) if a != channel_axis % len(kernel.shape)]
        bound = ops.max(ops.abs(kernel), axis=axes)
    else:
        bound = ops.max(ops.abs(kernel))
    return ops.maximum(bound, 1e-8)


def fake_quant_weights(kernel, per_channel=True, channel_axis=-1):
    """Symmetric int8 fake quantization of a weight tensor, as TFLite stores it.

        s_c = max |w_c| / 127,   w_q = s_c * clip(round(w / s_c), -127, 127)

    Args:
        kernel: weight tensor.
        per_channel: one scale per slice along `channel_axis`, else one scale.
        channel_axis: the output-channel axis.

    Returns:
        The fake-quantized kernel (float, on the int8 grid), with a
        straight-through gradient. It stays a FakeQuant op in the graph, which
        is how the TFLite converter takes this grid (not its own per-channel
        one) for the file. A weight that rounding puts a hair outside the
        nudged range passes its gradient through the range, `max |w|`, back
        to itself, so every weight gets the identity gradient.
    """
    bound = _weight_bound(kernel, per_channel, channel_axis)
    return keras.quantizers.fake_quant_with_min_max_vars(
        kernel,
        -bound,
        bound,
        num_bits=8,
        narrow_range=True,
        axis=channel_axis if per_channel else None,
    )


def _check_range(name, value):
    """None, or `value` as a (min, max) pair of floats with min <= 0 <= max, min < max."""
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        lo = hi = float("nan")
    if not lo <= 0.0 <= hi or lo == hi:
        raise ValueError(
            f"`{name}` must be (min, max) with min <= 0 <= max and min < max. "
            f"Received: {name}={value!r}"
        )
    return (lo, hi)


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


def _batch_statistics(bn, values):
    """(mean, variance) of `values` over all axes but the last, also moved into
    `bn`'s moving statistics with its momentum, as BatchNormalization trains."""
    mean, var = ops.moments(values, axes=list(range(len(values.shape) - 1)))
    m = bn.momentum
    bn.moving_mean.assign(m * bn.moving_mean + (1.0 - m) * mean)
    bn.moving_variance.assign(m * bn.moving_variance + (1.0 - m) * var)
    return mean, var


@keras.saving.register_keras_serializable(package="tfcompress")
class ActivationQuantizer(layers.Layer):
    """Asymmetric int8 fake quantization with a moving-average range.

    In training the range follows `r <- decay * r + (1 - decay) * r_batch`,
    always widened to contain 0 so that zero is exact. The first batch sets it,
    or, with `init_range=(lo, hi)`, it starts there (TF's and tfmot's QAT start
    at (-6, 6) with decay 0.999, which keeps ranges wide through a short
    fine-tuning; `quantize_model` does the same by default).
    `fixed_range=(lo, hi)` pins the range (softmax/sigmoid outputs, which TFLite
    quantizes with scale 1/256 and zero point -128).

    `quantize_in_training=False` passes the values through unchanged in
    training (inference still quantizes). Probability outputs use it: Keras
    computes cross-entropy from the logits behind a softmax/sigmoid output, and a
    fake-quantized output hides them, so the loss would fall back to clipped
    probabilities on a 1/256 grid, where every example whose true-class
    probability rounds to 0 gets no gradient. A fixed range has nothing to learn,
    so training loses nothing else (tfmot likewise leaves softmax outputs float).

    Args:
        ema_decay: decay of the moving average, in [0, 1).
        fixed_range: None or a (min, max) pair with min <= 0 <= max.
        quantize_in_training: False to skip fake quantization in training.
        init_range: None (the first training batch sets the range) or the
            (min, max) the moving average starts from, min <= 0 <= max.
        **kwargs: standard Layer arguments.

    Raises:
        ValueError: for a decay outside [0, 1) or an invalid fixed or initial range.
    """

    def __init__(
        self, ema_decay=0.99, fixed_range=None, quantize_in_training=True, init_range=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(ema_decay, (int, float)) or not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must be in [0, 1). Received: ema_decay={ema_decay!r}")
        self.ema_decay = float(ema_decay)
        self.fixed_range = _check_range("fixed_range", fixed_range)
        self.init_range = _check_range("init_range", init_range)
        self.quantize_in_training = bool(quantize_in_training)

    def build(self, input_shape):
        lo, hi = self.fixed_range or self.init_range or (-6.0, 6.0)
        self.range_min = self.add_weight(
            name="range_min", shape=(), initializer=keras.initializers.Constant(lo),
            trainable=False,
        )
        self.range_max = self.add_weight(
            name="range_max", shape=(), initializer=keras.initializers.Constant(hi),
            trainable=False,
        )
        self.initialized = self.add_weight(
            name="initialized", shape=(),
            initializer=keras.initializers.Constant(
                1.0 if self.fixed_range or self.init_range else 0.0
            ),
            trainable=False,
        )

    def call(self, inputs, training=None, update_range=True):
        """Fake-quantizes `inputs`; in training also updates the range first.

        `update_range=False` only applies the current range: a second call of
        the same quantizer on another tensor that must share its int8 scale
        (a tensor that feeds a Concatenate and other layers)."""
        if training and not self.quantize_in_training:
            return inputs
        if training and update_range and self.fixed_range is None:
            batch_min = ops.minimum(ops.min(inputs), 0.0)
            batch_max = ops.maximum(ops.max(inputs), 0.0)
            seen = self.initialized > 0.0
            d = self.ema_decay
            self.range_min.assign(
                ops.where(seen, d * self.range_min + (1.0 - d) * batch_min, batch_min)
            )
            self.range_max.assign(
                ops.where(seen, d * self.range_max + (1.0 - d) * batch_max, batch_max)
            )
            self.initialized.assign(1.0)
        lo, hi = self._bounds()
        return keras.quantizers.fake_quant_with_min_max_vars(inputs, lo, hi, num_bits=8)

    def _bounds(self):
        lo = ops.minimum(self.range_min, 0.0)
        return lo, ops.maximum(self.range_max, lo + 1e-6)

    def scale(self):
        """The int8 scale of the current range, `(max - min) / 255`, as TFLite takes it."""
        lo, hi = self._bounds()
        return (hi - lo) / 255.0

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            ema_decay=self.ema_decay,
            fixed_range=self.fixed_range,
            quantize_in_training=self.quantize_in_training,
            init_range=self.init_range,
        )
        return config


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
        **kwargs: standard Layer arguments.

    Raises:
        ValueError: for an unsupported layer type or activation.
    """

    def __init__(
        self, layer, batchnorm=None, activation="linear", per_channel=True, ema_decay=0.99,
        quantize_output=True, init_range=None, **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(layer, dict):
            layer = keras.saving.deserialize_keras_object(layer)
        if isinstance(batchnorm, dict):
            batchnorm = keras.saving.deserialize_keras_object(batchnorm)
        if not isinstance(layer, _weighted_types()) or getattr(layer, "binarize_input", False):
            raise ValueError(
                "QuantizeWrapper wraps Conv2D, DepthwiseConv2D, Dense, or BinaryConv / "
                f"BinaryDense with binarize_input=False. Received: layer={layer!r}"
            )
        inner_activation = _activation_name(getattr(layer, "activation", None))
        if batchnorm is not None and inner_activation != "linear":
            raise ValueError(
                f"Cannot fold {batchnorm.name!r} after {layer.name!r}: the layer already "
                f"applies activation={inner_activation!r} before the BatchNormalization."
            )
        if activation == "linear":
            activation = inner_activation
        if activation not in _FUSABLE_ACTIVATIONS:
            raise ValueError(
                f"Unsupported activation {activation!r} in {layer.name!r}; supported: "
                f"{', '.join(_FUSABLE_ACTIVATIONS)}."
            )
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise ValueError(f"{layer.name!r}: only data_format='channels_last' is supported.")
        self.layer = layer
        self.batchnorm = batchnorm
        self.activation = activation
        self.per_channel = bool(per_channel)
        self.ema_decay = float(ema_decay)
        self.quantize_output = bool(quantize_output)
        self.init_range = _check_range("init_range", init_range)
        fixed = activation in _FIXED_RANGE_ACTIVATIONS
        self.output_quantizer = ActivationQuantizer(
            ema_decay, fixed_range=_FIXED_RANGE if fixed else None,
            quantize_in_training=not fixed, init_range=None if fixed else self.init_range,
            name="output_quantizer",
        )
        self.logits_quantizer = (
            ActivationQuantizer(ema_decay, init_range=self.init_range, name="logits_quantizer")
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
        return ops.reshape(fake_quant_weights(stored, per_channel), kernel.shape)

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
        step = quantizer.scale() * _weight_bound(stored, per_channel) / 127.0
        return ops.round(bias / step) * step

    def __call__(self, inputs, *args, **kwargs):
        # In a functional graph (built by quantize_model, or rebuilt when a .keras
        # file loads) the input's history names the quantizer of its int8 grid.
        if isinstance(inputs, keras.KerasTensor):
            producer = _input_quantizer_of(inputs)
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
        """The kernel the wrapped layer computes with (alpha * sign(W) if binary)."""
        if isinstance(self.layer, _binary_types()):
            return self.layer.binary_kernel()
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
            kernel = self._kernel()
            bias = layer.bias if layer.use_bias else 0.0
            gamma, beta = _gamma_beta(bn)
            sigma = ops.sqrt(bn.moving_variance + bn.epsilon)
            # Batch statistics from a float pass; BN's moving statistics update.
            mean_b, var_b = _batch_statistics(bn, self._op(inputs, kernel) + bias)
            sigma_b = ops.sqrt(var_b + bn.epsilon)
            # No stop_gradient: sigma_B carries BN's gradient (module docstring).
            outputs = outputs * (ops.stop_gradient(sigma) / sigma_b)
            outputs = outputs + beta + (bias - mean_b) * gamma / sigma_b
        act = self.activation
        if act in _FIXED_RANGE_ACTIVATIONS:
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

    _STEPS = ("difference", "magnitude", "sum", "negated", "accumulated", "biased")

    def __init__(self, layer, ema_decay=0.99, init_range=None, **kwargs):
        super().__init__(**kwargs)
        from tfcompress.layers import AdderConv, AdderDense

        if isinstance(layer, dict):
            layer = keras.saving.deserialize_keras_object(layer)
        if not isinstance(layer, (AdderConv, AdderDense)):
            raise ValueError(  # noqa: TRY004
                f"QuantizeAdderWrapper wraps AdderConv or AdderDense. Received: layer={layer!r}"
            )
        self.layer = layer
        self.ema_decay = float(ema_decay)
        self.init_range = _check_range("init_range", init_range)
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
        from tfcompress.layers._utils import output_length, same_pads

        kh, kw = layer.kernel_size
        sh, sw = layer.strides
        height, width = inputs.shape[1], inputs.shape[2]
        if layer.padding == "same":
            pads = [[0, 0], list(same_pads(height, kh, sh)), list(same_pads(width, kw, sw)),
                    [0, 0]]
            inputs = ops.pad(inputs, pads)
        out_h = output_length(height, kh, sh, layer.padding)
        out_w = output_length(width, kw, sw, layer.padding)
        return [
            (inputs[:, i : i + sh * (out_h - 1) + 1 : sh, j : j + sw * (out_w - 1) + 1 : sw, :],
             kernel[i, j])
            for i in range(kh) for j in range(kw)
        ]

    def call(self, inputs, training=None):
        q = {step: (lambda t, quantizer=quantizer: quantizer(t, training=training))
             for step, quantizer in self.quantizers.items()}
        outputs = None
        pairs = self._inputs_and_kernels(inputs)
        for i, (patch, kernel) in enumerate(pairs):
            diff = q["difference"](ops.expand_dims(patch, -1) - kernel)
            part = q["sum"](ops.sum(q["magnitude"](magnitude(diff)), axis=-2))
            part = q["negated"](part * -1.0)
            if outputs is None:
                outputs = part
            else:
                # The partial sums share one int8 scale. They grow with each position, so
                # the range follows the last, full sum, which holds every earlier one;
                # following all of them would clip the full sum.
                outputs = self.quantizers["accumulated"](
                    outputs + part, training=training, update_range=i == len(pairs) - 1
                )
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


def _fake_quant_constant(values):
    """int8 fake quantization of a constant operand of ADD / MUL, as the converter
    stores it: one asymmetric scale over [min(v, 0), max(v, 0)]; straight-through."""
    values = ops.convert_to_tensor(values)
    lo = ops.stop_gradient(ops.minimum(ops.min(values), 0.0))
    hi = ops.stop_gradient(ops.maximum(ops.max(values), lo + 1e-6))
    return keras.quantizers.fake_quant_with_min_max_vars(values, lo, hi, num_bits=8)


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
        self.init_range = _check_range("init_range", init_range)
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
        outputs = self.sum_quantizer(inputs + _fake_quant_constant(shift), training=training)
        outputs = _fused_relu(outputs * _fake_quant_constant(scale), self.activation)
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


# --------------------------------------------------------------------------- annotation

_ANNOTATIONS = weakref.WeakKeyDictionary()
QUANTIZE_CHOICES = ("per_channel", "per_tensor", "float")


def quantize_annotate_layer(layer, scheme="per_channel"):
    """Chooses how `quantize_model` treats one layer.

    Args:
        layer: a layer of the model that will be passed to `quantize_model`.
        scheme: "per_channel" or "per_tensor" weight scales, or "float" to keep
            the layer unquantized (its inputs/outputs then stay float, which an
            integer-only export reports as an error naming the layer).

    Returns:
        The same layer, annotated.

    Raises:
        ValueError: for an unknown scheme.
    """
    if scheme not in QUANTIZE_CHOICES:
        raise ValueError(
            f"`scheme` must be one of {', '.join(repr(c) for c in QUANTIZE_CHOICES)}. "
            f"Received: scheme={scheme!r}"
        )
    _ANNOTATIONS[layer] = scheme
    return layer


# --------------------------------------------------------------------------- model

_QUANTIZE_OUTPUT = (
    layers.Add, layers.Subtract, layers.Multiply, layers.Average, layers.Concatenate,
    layers.GlobalAveragePooling1D, layers.GlobalAveragePooling2D,
    layers.AveragePooling1D, layers.AveragePooling2D, layers.BatchNormalization,
    layers.ReLU, layers.Activation, layers.Softmax, layers.Rescaling,
)
_PASS_THROUGH = (
    layers.MaxPooling1D, layers.MaxPooling2D, layers.GlobalMaxPooling2D, layers.Flatten,
    layers.Reshape, layers.Dropout, layers.ZeroPadding2D, layers.Cropping2D,
    layers.Permute, layers.Identity, layers.InputLayer,
)


def _layer_types():
    """(pass-through types, quantize-output types), including tfcompress layers."""
    from tfcompress.layers import Shift, Sign
    from tfcompress.lowering import ChannelSlice, ShiftedReLU6

    return _PASS_THROUGH + (Shift, ChannelSlice), _QUANTIZE_OUTPUT + (ShiftedReLU6, Sign)


def _single_input(layer):
    try:
        inputs = layer.input
    except (AttributeError, ValueError):
        return None
    return inputs if not isinstance(inputs, (list, tuple)) else None


def _consumers(model):
    """Maps id(output KerasTensor) -> list of layers consuming it (single-call layers)."""
    consumers = {}
    for layer in model.layers:
        try:
            inputs = layer.input
        except (AttributeError, ValueError):
            continue
        for tensor in keras.tree.flatten(inputs):
            consumers.setdefault(id(tensor), []).append(layer)
    return consumers


def _activation_of(layer):
    """Activation name a standalone activation layer applies, or None."""
    if isinstance(layer, layers.ReLU):
        cfg = layer.get_config()
        if cfg.get("negative_slope", 0.0) == 0.0 and cfg.get("threshold", 0.0) == 0.0:
            if cfg.get("max_value") is None:
                return "relu"
            if float(cfg["max_value"]) == 6.0:
                return "relu6"
        return None
    if isinstance(layer, layers.Activation):
        name = _activation_name(layer.activation)
        return name if name in ("relu", "relu6", "softmax", "sigmoid") else None
    if isinstance(layer, layers.Softmax):
        return "softmax" if layer.axis in (-1, [-1]) else None
    return None


def _plan_fusions(model, fold_batchnorm, schemes):
    """Finds weighted layer -> [BatchNormalization] -> [activation] chains to fuse.

    Returns:
        (plan, absorbed, concat_fed, concat_shared, batchnorm_activations): plan
        maps a weighted layer's name to its (batchnorm, activation,
        quantize_output); absorbed names the BN and activation layers merged
        into it; concat_fed names the layers whose
        only consumer is a Concatenate, directly or through scale-preserving
        layers (a MaxPooling, a Reshape). TFLite gives a concatenation's inputs
        the output's scale, and those layers pass it back to their input, so
        such a tensor is quantized once, by the concatenation, not twice.
        concat_shared maps the layers whose output feeds a
        Concatenate and other layers too (GhostConv's primary convolution) to
        that Concatenate: they are quantized with the concatenation's quantizer
        (same range, so the same int8 scale), which spares TFLite a
        requantization (QUANTIZE) that LiteRT's XNNPACK rounds differently from
        Keras. batchnorm_activations maps a BatchNormalization left standing
        (nothing to fold into) to the ReLU / ReLU6 it fuses (TFLite's MUL does).
    """
    consumers = _consumers(model)
    weighted = _weighted_types()
    plan, absorbed, concat_fed, concat_shared = {}, set(), set(), {}

    outputs = {id(t) for t in keras.tree.flatten(model.outputs)}

    def sole_consumer(layer):
        try:
            out = layer.output
        except (AttributeError, ValueError):
            return None
        users = consumers.get(id(out), [])
        return users[0] if len(users) == 1 and id(out) not in outputs else None

    pass_through = _layer_types()[0]

    def concat_behind(layer):
        """The Concatenate that is the layer's sole consumer, directly or through
        scale-preserving pass-through layers (MaxPooling, Reshape, ...), or None."""
        nxt = sole_consumer(layer)
        while isinstance(nxt, pass_through) and not isinstance(nxt, layers.InputLayer):
            nxt = sole_consumer(nxt)
        return nxt if isinstance(nxt, layers.Concatenate) else None

    for layer in model.layers:
        if concat_behind(layer) is not None:
            concat_fed.add(layer.name)
            continue
        try:
            out = layer.output
        except (AttributeError, ValueError):
            continue
        concats = [c for c in consumers.get(id(out), []) if isinstance(c, layers.Concatenate)]
        if len(concats) == 1 and id(out) not in outputs:
            concat_shared[layer.name] = concats[0].name
    for layer in model.layers:
        if not isinstance(layer, weighted) or schemes.get(layer.name) == "float":
            continue
        if _single_input(layer) is None:
            continue
        bn, act, tail = None, "linear", layer
        if _activation_name(getattr(layer, "activation", None)) == "linear":
            nxt = sole_consumer(tail)
            if fold_batchnorm and isinstance(nxt, layers.BatchNormalization) and (
                nxt.axis in (-1, [-1], len(layer.output.shape) - 1)
            ):
                bn, tail = nxt, nxt
                nxt = sole_consumer(tail)
            if nxt is not None and _activation_of(nxt) is not None:
                act, tail = _activation_of(nxt), nxt
        if tail.name in concat_shared:
            concat = concat_shared.pop(tail.name)
            if act not in _FIXED_RANGE_ACTIVATIONS:  # softmax / sigmoid keep their fixed range
                concat_shared[layer.name] = concat
        shared = layer.name in concat_shared
        plan[layer.name] = (bn, act, tail.name not in concat_fed and not shared)
        absorbed.update(x.name for x in (bn, tail) if x is not None and x is not layer)
    batchnorm_activations = {}
    for layer in model.layers:
        if (not isinstance(layer, layers.BatchNormalization) or layer.name in absorbed
                or schemes.get(layer.name) == "float"):
            continue
        nxt = sole_consumer(layer)
        act = None if nxt is None else _activation_of(nxt)
        if act not in ("relu", "relu6") or schemes.get(nxt.name) == "float":
            continue
        batchnorm_activations[layer.name] = act
        absorbed.add(nxt.name)
        if nxt.name in concat_fed:
            concat_fed.add(layer.name)
        if nxt.name in concat_shared:
            concat_shared[layer.name] = concat_shared.pop(nxt.name)
    return plan, absorbed, concat_fed, concat_shared, batchnorm_activations


def _input_quantizer_of(tensor):
    """The ActivationQuantizer whose int8 grid a KerasTensor is on, or None.

    Follows the tensor back through scale-preserving layers (MaxPooling,
    Reshape, Shift, ...) to the quantizer that produced it: a standalone one or
    a wrapper's output quantizer. None for an unquantized tensor.
    """
    pass_through = _layer_types()[0]
    while True:
        history = getattr(tensor, "_keras_history", None)
        op = None if history is None else history.operation
        if isinstance(op, ActivationQuantizer):
            return op
        if isinstance(op, (QuantizeWrapper, QuantizeBatchNorm)):
            return op.output_quantizer if op.quantize_output else None
        if isinstance(op, QuantizeAdderWrapper):
            return op.output_quantizer
        if not isinstance(op, pass_through) or isinstance(op, layers.InputLayer):
            return None
        inputs = op._inbound_nodes[history.node_index].input_tensors
        if len(inputs) != 1:
            return None
        tensor = inputs[0]


def _copy_weights(source, target):
    target.set_weights(source.get_weights())


def quantize_model(
    model, per_channel=True, fold_batchnorm=True, ema_decay=0.999, init_range=(-6.0, 6.0),
):
    """Returns a trainable quantization-aware copy of a functional/Sequential model.

    The copy has int8 fake quantization on its input, on every weighted layer's
    (BatchNorm-folded) weights and after every fused conv + bias + activation,
    add, concat, pooling, ... exactly where an integer-only TFLite file quantizes.
    It trains with `model.fit` (and under `tf.distribute` strategies), saves to
    `.keras`, and `tfcompress.export.to_tflite(qat_model, mode="int8")` turns it
    into the int8 file using the learned ranges. The original model is unchanged.

    Args:
        model: a built functional or Sequential `keras.Model`.
        per_channel: per-output-channel weight scales (TFLite's default) or per tensor;
            `quantize_annotate_layer` overrides it per layer.
        fold_batchnorm: fold BatchNormalization into the preceding weighted layer.
        ema_decay: decay of the activation ranges' moving averages.
        init_range: (min, max) where every activation range but the model
            input's and AdderConv's steps starts; the default (-6, 6) with
            ema_decay=0.999 is TF's and tfmot's QAT start, which keeps the ranges
            wide through a one-epoch fine-tuning (on MNIST LeNet-5 it gave 8.2 /
            4.6 more correct test images out of 10,000 than first-batch ranges,
            two seeds of four runs; benchmarks/RESULTS.md). None: each range
            starts at its first training batch's min/max (with ema_decay=0.99 it
            settles within a few dozen steps). The input's range always starts at
            the first batch: it is the data's range (tfmot tracks its min/max).
            So do an AdderConv's: -sum |x - w| grows with the fan-in, far past
            (-6, 6), which would clip nearly every output (and zero its gradient).

    Returns:
        A new `keras.Model` (uncompiled) whose weights start equal to `model`'s.

    Raises:
        ValueError: for a subclassed or unbuilt model, or a layer that cannot be
            quantized (named, with the supported list).

    Example:
        >>> qat = quantize_model(model)
        >>> qat.compile("adam", "sparse_categorical_crossentropy")
        >>> qat.fit(x, y, epochs=1)
        >>> tflite = tfcompress.export.to_tflite(qat, mode="int8")
    """
    if isinstance(model, keras.Sequential):
        if not model.built or not model.inputs:
            raise ValueError(
                f"Model {model.name!r} has no defined input shape: build it with "
                "`keras.Input(shape=...)` before quantize_model."
            )
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    if not hasattr(model, "_run_through_graph") or not model.inputs:
        raise ValueError(
            f"quantize_model needs a functional or Sequential model; {model.name!r} is "
            f"a subclassed {type(model).__name__}, which Keras cannot clone. Rebuild it "
            "with the functional API."
        )
    from tfcompress.lowering import lower_model

    # Annotations are looked up by name: lowering clones the layers.
    schemes = {layer.name: _ANNOTATIONS[layer] for layer in model.layers if layer in _ANNOTATIONS}
    model = lower_model(model)
    if len(model.inputs) != 1:
        raise ValueError(
            f"quantize_model supports one model input; {model.name!r} has {len(model.inputs)}."
        )
    plan, absorbed, concat_fed, concat_shared, batchnorm_activations = _plan_fusions(
        model, fold_batchnorm, schemes
    )
    shared_quantizers = {}  # Concatenate name -> its ActivationQuantizer

    def concat_quantizer(concat_name):
        if concat_name not in shared_quantizers:
            shared_quantizers[concat_name] = ActivationQuantizer(
                ema_decay, init_range=init_range, name=f"quant_{concat_name}"
            )
        return shared_quantizers[concat_name]

    def share(name, out):
        """Quantizes a tensor that also feeds a Concatenate with that concat's range."""
        return concat_quantizer(concat_shared[name])(out, update_range=False)
    pass_through, output_types = _layer_types()
    from tfcompress.layers import AdderConv, AdderDense

    adder_types = (AdderConv, AdderDense)
    originals = {layer.name: layer for layer in model.layers}

    def clone(layer):
        if isinstance(layer, keras.Model):
            raise ValueError(  # noqa: TRY004
                f"Nested model {layer.name!r}: flatten it into the outer functional "
                "model before quantize_model."
            )
        return layer.__class__.from_config(layer.get_config())

    def call(new_layer, *args, **kwargs):
        name = new_layer.name
        original = originals[name]
        scheme = schemes.get(name)
        if name in absorbed:
            return args[0]
        if name in plan:
            bn, act, quantize_output = plan[name]
            wrapper = QuantizeWrapper(
                clone(original),
                batchnorm=None if bn is None else clone(bn),
                activation=act,
                quantize_output=quantize_output,
                per_channel=per_channel if scheme is None else scheme == "per_channel",
                ema_decay=ema_decay,
                init_range=init_range,
                name=f"quant_{name}",
            )
            out = wrapper(*args, **kwargs)
            _copy_weights(original, wrapper.layer)
            if bn is not None:
                _copy_weights(bn, wrapper.batchnorm)
            return share(name, out) if name in concat_shared else out
        if isinstance(original, adder_types) and scheme != "float":
            wrapper = QuantizeAdderWrapper(  # ranges from the data (init_range above)
                clone(original), ema_decay, init_range=None, name=f"quant_{name}"
            )
            out = wrapper(*args, **kwargs)
            _copy_weights(original, wrapper.layer)
            return out
        if isinstance(original, layers.BatchNormalization) and scheme != "float":
            wrapper = QuantizeBatchNorm(
                clone(original), batchnorm_activations.get(name, "linear"), ema_decay,
                init_range=init_range, name=f"quant_{name}",
                quantize_output=name not in concat_fed and name not in concat_shared,
            )
            out = wrapper(*args, **kwargs)
            _copy_weights(original, wrapper.layer)
            return share(name, out) if name in concat_shared else out
        out = new_layer(*args, **kwargs)
        _copy_weights(original, new_layer)
        if scheme == "float" or isinstance(original, pass_through) or name in concat_fed:
            return out
        if isinstance(original, output_types):
            act = _activation_of(original)
            fixed = _FIXED_RANGE if act in _FIXED_RANGE_ACTIVATIONS else None
            if type(original).__name__ == "Sign":
                fixed = _SIGN_RANGE
            if isinstance(original, layers.Concatenate):
                return concat_quantizer(name)(out)
            if name in concat_shared and fixed is None:
                return share(name, out)
            return ActivationQuantizer(
                ema_decay, fixed_range=fixed, name=f"quant_{name}",
                quantize_in_training=act not in _FIXED_RANGE_ACTIVATIONS,
                init_range=init_range,
            )(out)
        supported = ", ".join(
            sorted({t.__name__ for t in _weighted_types() + output_types + pass_through})
        )
        raise ValueError(
            f"Cannot quantize layer {name!r} of type {type(original).__name__}. "
            f"Supported: {supported}. Keep it float with "
            "quantize_annotate_layer(layer, 'float') or replace it."
        )

    inputs = keras.Input(batch_shape=model.inputs[0].shape, name=model.inputs[0].name)
    quantized = []  # the model input, fake-quantized once for all its consumers

    def quantize_inputs(tensor):
        if tensor is not inputs:
            return tensor
        if not quantized:
            # The input's range is the data's: it starts at the first batch either way.
            quantized.append(ActivationQuantizer(ema_decay, name="quant_input")(inputs))
        return quantized[0]

    def call_on_quantized_inputs(new_layer, *args, **kwargs):
        args = keras.tree.map_structure(quantize_inputs, args)
        return call(new_layer, *args, **kwargs)

    qat = keras.models.clone_model(
        model, input_tensors=inputs, clone_function=clone,
        call_function=call_on_quantized_inputs,
    )
    outputs = qat.outputs[0] if len(qat.outputs) == 1 else qat.outputs
    return keras.Model(inputs, outputs, name=f"{model.name}_qat")
