"""The int8 grids of TFLite, as fake quantization in Keras 3 (Jacob et al., CVPR 2018).

* weights: symmetric int8 in [-127, 127], one scale per output channel or per
  tensor, `s = max|w| / 127` (`fake_quant_weights`);
* activations: asymmetric int8, `x ~ s * (q - z)`, the range an exponential moving
  average of the batch min/max seen in training, zero always inside
  (`ActivationQuantizer`);
* constant operands of ADD / MUL: one asymmetric scale over [min(v, 0), max(v, 0)]
  (`fake_quant_constant`).
"""

import keras
from keras import layers, ops

from tfcompress.analysis.profile import register_counter

__all__ = [
    "FIXED_RANGE",
    "FIXED_RANGE_ACTIVATIONS",
    "FUSABLE_ACTIVATIONS",
    "SIGN_RANGE",
    "ActivationQuantizer",
    "activation_name",
    "check_range",
    "fake_quant_constant",
    "fake_quant_weights",
    "weight_bound",
]

FUSABLE_ACTIVATIONS = ("linear", "relu", "relu6", "softmax", "sigmoid")
# Outputs TFLite gives a fixed int8 range: scale 1/256, zero point -128.
FIXED_RANGE_ACTIVATIONS = ("softmax", "sigmoid")
FIXED_RANGE = (0.0, 255.0 / 256.0)
# Range whose int8 grid (scale 1/127, zero point 0 in int8) holds -1 and +1 exactly.
SIGN_RANGE = (-128.0 / 127.0, 1.0)


def activation_name(activation):
    """The name of a Keras activation (a string, a function or None for linear)."""
    if activation is None:
        return "linear"
    if isinstance(activation, str):
        return activation
    name = getattr(activation, "__name__", None)
    return name or str(activation)


def weight_bound(kernel, per_channel, channel_axis=-1):
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
    bound = weight_bound(kernel, per_channel, channel_axis)
    return keras.quantizers.fake_quant_with_min_max_vars(
        kernel,
        -bound,
        bound,
        num_bits=8,
        narrow_range=True,
        axis=channel_axis if per_channel else None,
    )


def check_range(name, value):
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


def fake_quant_constant(values):
    """int8 fake quantization of a constant operand of ADD / MUL, as the converter
    stores it: one asymmetric scale over [min(v, 0), max(v, 0)]; straight-through."""
    values = ops.convert_to_tensor(values)
    lo = ops.stop_gradient(ops.minimum(ops.min(values), 0.0))
    hi = ops.stop_gradient(ops.maximum(ops.max(values), lo + 1e-6))
    return keras.quantizers.fake_quant_with_min_max_vars(values, lo, hi, num_bits=8)


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
        self.fixed_range = check_range("fixed_range", fixed_range)
        self.init_range = check_range("init_range", init_range)
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


# A range is no parameter of the file: the scales live in the tensors' quantization.
register_counter(ActivationQuantizer, lambda layer, input_shape, output_shape: {
    "params": 0, "trainable_params": 0, "param_bits": 0,
})
