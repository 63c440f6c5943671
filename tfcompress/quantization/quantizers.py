"""The int8 grids of TFLite, as fake quantization in Keras 3 (Jacob et al., CVPR 2018).

* weights: symmetric int8 in [-127, 127], one scale per output channel or per
  tensor, `s = max|w| / 127` (`fake_quant_weights`);
* activations: asymmetric int8, `x ~ s * (q - z)`, the range an exponential moving
  average of the batch min/max seen in training, zero always inside
  (`ActivationQuantizer`);
* constant operands of ADD / MUL: one asymmetric scale over [min(v, 0), max(v, 0)]
  (`fake_quant_constant`).
"""

import contextlib
import math

import keras
from keras import layers, ops

from tfcompress.analysis.profile import register_counter

__all__ = [
    "ACTIVATION_BITS",
    "FIXED_RANGE",
    "FIXED_RANGE_ACTIVATIONS",
    "FUSABLE_ACTIVATIONS",
    "INT8_TO_INT16",
    "RANGE_LEARNING",
    "SIGN_RANGE",
    "WEIGHT_BITS",
    "ActivationQuantizer",
    "activation_name",
    "check_bits",
    "check_range",
    "exported_as_identity",
    "fake_quant_constant",
    "fake_quant_weights",
    "weight_bound",
    "weight_levels",
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


# Bit widths quantize_model trains with: weights (int8, int4) and activations
# (int8, int16 as in TFLite's 16x8 mode).
WEIGHT_BITS = (8, 4)
ACTIVATION_BITS = (8, 16)
# A 16-bit layer in an int8 file reads its int8 input requantized to int16 at this
# fraction of the int8 scale: q16 = 128 (q8 - z8) is exact and within int16.
INT8_TO_INT16 = 128
# How an activation range is found: a moving average of the batches' min / max, or
# learned by gradient descent (LSQ's step size, PACT's clipping level).
RANGE_LEARNING = ("ema", "lsq", "pact")


def check_bits(name, value, allowed):
    """`value` if it is one of `allowed` bit widths, else ValueError naming both."""
    if isinstance(value, bool) or value not in allowed:
        raise ValueError(
            f"`{name}` must be one of {', '.join(map(str, allowed))}. Received: {name}={value!r}"
        )
    return int(value)


def weight_levels(num_bits):
    """The largest integer of a symmetric `num_bits` weight: 127 (int8), 7 (int4)."""
    return 2 ** (num_bits - 1) - 1


def fake_quant_weights(kernel, per_channel=True, channel_axis=-1, num_bits=8):
    """Symmetric int8 (or int4) fake quantization of a weight tensor, as TFLite stores it.

        L = 2**(bits - 1) - 1 (127, or 7 for 4 bits),
        s_c = max |w_c| / L,   w_q = s_c * clip(round(w / s_c), -L, L)

    Four-bit weights use the 15 symmetric levels -7..7 of int4 (the code -8 stays
    unused, as -128 does for int8), so zero is exact and the scale is symmetric.

    Args:
        kernel: weight tensor.
        per_channel: one scale per slice along `channel_axis`, else one scale.
        channel_axis: the output-channel axis.
        num_bits: 8 or 4.

    Returns:
        The fake-quantized kernel (float, on the int8 grid), with a
        straight-through gradient. It stays a FakeQuant op in the graph, which
        is how the TFLite converter takes this grid (not its own per-channel
        one) for the file. A weight that rounding puts a hair outside the
        nudged range passes its gradient through the range, `max |w|`, back
        to itself, so every weight gets the identity gradient.
    """
    num_bits = check_bits("num_bits", num_bits, WEIGHT_BITS)
    bound = weight_bound(kernel, per_channel, channel_axis)
    return keras.quantizers.fake_quant_with_min_max_vars(
        kernel,
        -bound,
        bound,
        num_bits=num_bits,
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


_EXPORTED_AS_IDENTITY = set()  # ids of quantizers `exported_as_identity` holds


@contextlib.contextmanager
def exported_as_identity(quantizers):
    """Within the block the given ActivationQuantizers pass their inputs through.

    For a mixed-precision export: the quantizer after a float layer is left out
    of the traced graph (TFLite's quantizer would otherwise quantize the float
    layer too) and its range is written into the calibrated file instead.
    """
    ids = {id(q) for q in quantizers} - _EXPORTED_AS_IDENTITY
    _EXPORTED_AS_IDENTITY.update(ids)
    try:
        yield
    finally:
        _EXPORTED_AS_IDENTITY.difference_update(ids)


@keras.saving.register_keras_serializable(package="tfcompress")
class ActivationQuantizer(layers.Layer):
    """Asymmetric int8 (or symmetric int16) fake quantization with a moving-average range.

    In training the range follows `r <- decay * r + (1 - decay) * r_batch`,
    always widened to contain 0 so that zero is exact. The first batch sets it,
    or, with `init_range=(lo, hi)`, it starts there (TF's and tfmot's QAT start
    at (-6, 6) with decay 0.999, which keeps ranges wide through a short
    fine-tuning; `quantize_model` does the same by default).
    `fixed_range=(lo, hi)` pins the range (softmax/sigmoid outputs, which TFLite
    quantizes with scale 1/256 and zero point -128).

    With `num_bits=16` the quantization is TFLite's int16 activations (16x8
    mode): symmetric, zero point 0, `s = m / 32767` with `m = max(-min, max)`
    of the same moving-average range, 65535 levels -32767..32767.

    `range_learning` chooses how the range is found:

    - "ema": the moving average above.
    - "lsq": Learned Step Size Quantization (Esser et al., ICLR 2020,
      arXiv:1902.08153). A trainable step `s`; the range is `[-Q_n s, Q_p s]` with
      (Q_n, Q_p) = (128, 127) for signed inputs, (0, 255) for non-negative ones
      (int8) or (32767, 32767) (int16). Forward `s * round(clip(x / s, -Q_n,
      Q_p))`; gradients (paper eq. 3, with its scale g = 1 / sqrt(N Q_p), N the
      features per example): `dy/dx = 1` inside the range, 0 outside;
      `dy/ds = round(x/s) - x/s` inside, `-Q_n` below, `Q_p` above, times g.
      `s` starts at the first training batch at `2 mean|x| / sqrt(Q_p)`.
    - "pact": PACT (Choi et al., 2018, arXiv:1805.06085). A trainable clipping
      level `alpha`; the range is `[0, alpha]` for non-negative inputs,
      `[-alpha, alpha]` otherwise, and `dy/dalpha = 1` where `x >= alpha` (and
      -1 where `x <= -alpha`), 0 elsewhere; `alpha` starts at the first training
      batch's max |x| and has PACT's L2 penalty `pact_decay * alpha^2`.

    Whether the inputs are signed is decided at the first training batch (any
    value < 0). Either way the exported range is a FakeQuant op the converter
    reads, as for "ema".

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
        num_bits: 8 (asymmetric int8) or 16 (symmetric int16).
        range_learning: "ema", "lsq" or "pact" (above). A fixed range learns
            nothing whatever this says.
        pact_decay: PACT's L2 coefficient on alpha (the paper's 2e-4).
        **kwargs: standard Layer arguments.

    Raises:
        ValueError: for a decay outside [0, 1), an invalid fixed or initial range,
            bits other than 8 and 16, an unknown range_learning or a negative
            pact_decay.

    Example:
        >>> q = ActivationQuantizer(range_learning="lsq")
        >>> y = q(x, training=True)   # s starts at 2 mean|x| / sqrt(Q_p)
    """

    def __init__(
        self, ema_decay=0.99, fixed_range=None, quantize_in_training=True, init_range=None,
        num_bits=8, range_learning="ema", pact_decay=2e-4, **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_bits = check_bits("num_bits", num_bits, ACTIVATION_BITS)
        if range_learning not in RANGE_LEARNING:
            raise ValueError(
                f"`range_learning` must be one of {', '.join(map(repr, RANGE_LEARNING))}. "
                f"Received: range_learning={range_learning!r}"
            )
        if isinstance(pact_decay, bool) or not isinstance(pact_decay, (int, float)) or (
                pact_decay < 0):
            raise ValueError(f"`pact_decay` must be >= 0. Received: pact_decay={pact_decay!r}")
        self.range_learning = range_learning
        self.pact_decay = float(pact_decay)
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
            initializer=keras.initializers.Constant(  # learned ranges start at the data
                1.0 if (self.fixed_range or self.init_range) and not self.learns else 0.0
            ),
            trainable=False,
        )
        if self.learns:
            # Non-negative inputs until the first training batch says otherwise.
            self.signed = self.add_weight(
                name="signed", shape=(), initializer=keras.initializers.Constant(
                    1.0 if lo < 0 else 0.0), trainable=False,
            )
            if self.range_learning == "lsq":
                self.step = self.add_weight(
                    name="step", shape=(), trainable=True,
                    initializer=keras.initializers.Constant((hi - lo) / 255.0),
                )
            else:
                self.alpha = self.add_weight(
                    name="alpha", shape=(), trainable=True,
                    initializer=keras.initializers.Constant(max(-lo, hi)),
                    regularizer=keras.regularizers.L2(self.pact_decay) if self.pact_decay
                    else None,
                )

    @property
    def learns(self):
        """True when the range is trained by gradient descent (LSQ or PACT)."""
        return self.range_learning != "ema" and self.fixed_range is None

    def _levels(self):
        """(Q_n, Q_p) of the integer grid: the range is [-Q_n s, Q_p s]."""
        if self.num_bits == 16:
            return 32767.0, 32767.0
        signed = self.signed > 0.0
        return ops.where(signed, 128.0, 0.0), ops.where(signed, 127.0, 255.0)

    def _first_batch(self, inputs):
        """Starts a learned range at the first training batch (LSQ's / PACT's init)."""
        seen = self.initialized > 0.0
        signed = ops.cast(ops.min(inputs) < 0.0, "float32")
        self.signed.assign(ops.where(seen, self.signed, signed))
        if self.range_learning == "lsq":
            _, q_p = self._levels()
            start = 2.0 * ops.mean(ops.abs(inputs)) / ops.sqrt(q_p)
            self.step.assign(ops.where(seen, self.step, ops.maximum(start, 1e-8)))
        else:
            start = ops.max(ops.abs(inputs))
            self.alpha.assign(ops.where(seen, self.alpha, ops.maximum(start, 1e-6)))
        self.initialized.assign(1.0)

    def call(self, inputs, training=None, update_range=True):
        """Fake-quantizes `inputs`; in training also updates the range first.

        `update_range=False` only applies the current range: a second call of
        the same quantizer on another tensor that must share its int8 scale
        (a tensor that feeds a Concatenate and other layers)."""
        if training and not self.quantize_in_training or id(self) in _EXPORTED_AS_IDENTITY:
            return inputs
        if self.learns:
            if training and update_range:
                self._first_batch(inputs)
            if training and self.range_learning == "lsq":
                return self._lsq(inputs)
        elif training and update_range and self.fixed_range is None:
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
        return keras.quantizers.fake_quant_with_min_max_vars(
            inputs, lo, hi, num_bits=self.num_bits, narrow_range=self.num_bits == 16
        )

    def _lsq(self, inputs):
        """LSQ's forward (the FakeQuant op) with its step-size gradient (paper eq. 3)."""
        q_n, q_p = self._levels()
        features = max(1, math.prod(d for d in inputs.shape[1:] if d is not None))
        narrow = self.num_bits == 16

        @ops.custom_gradient
        def quantize(x, step):
            step = ops.maximum(step, 1e-8)
            y = keras.quantizers.fake_quant_with_min_max_vars(
                x, -q_n * step, q_p * step, num_bits=self.num_bits, narrow_range=narrow
            )

            def grad(*args, upstream=None):
                if upstream is None:
                    (upstream,) = args
                v = x / step
                inside = ops.logical_and(v > -q_n, v < q_p)
                d_step = ops.where(inside, ops.round(v) - v, ops.where(v <= -q_n, -q_n, q_p))
                scale = 1.0 / ops.sqrt(features * q_p)
                return (upstream * ops.cast(inside, upstream.dtype),
                        ops.sum(upstream * d_step) * scale)

            return y, grad

        return quantize(inputs, self.step * 1.0)  # a tensor, not the variable

    def _bounds(self):
        if self.learns:
            if self.range_learning == "lsq":
                q_n, q_p = self._levels()
                step = ops.maximum(self.step, 1e-8)
                return -q_n * step, q_p * step
            alpha = ops.maximum(self.alpha, 1e-6)
            signed = ops.logical_or(self.signed > 0.0, self.num_bits == 16)
            return ops.where(signed, -alpha, 0.0), alpha
        lo = ops.minimum(self.range_min, 0.0)
        hi = ops.maximum(self.range_max, lo + 1e-6)
        if self.num_bits == 16:  # symmetric: zero point 0
            bound = ops.maximum(-lo, hi)
            return -bound, bound
        return lo, hi

    def scale(self):
        """The scale of the current range as TFLite takes it: `(max - min) / 255`
        (int8), `max(-min, max) / 32767` (int16)."""
        lo, hi = self._bounds()
        return (hi - lo) / (255.0 if self.num_bits == 8 else 65534.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            ema_decay=self.ema_decay,
            fixed_range=self.fixed_range,
            quantize_in_training=self.quantize_in_training,
            init_range=self.init_range,
            num_bits=self.num_bits,
            range_learning=self.range_learning,
            pact_decay=self.pact_decay,
        )
        return config


# A range is no parameter of the file: the scales live in the tensors' quantization.
register_counter(ActivationQuantizer, lambda layer, input_shape, output_shape: {
    "params": 0, "trainable_params": 0, "param_bits": 0,
})
