"""Accumulator width: how many bits the running sum of an integer layer needs.

An integer convolution or Dense layer computes, for every output element,
`acc = sum_{i<K} w_i * a_i` over its fan-in `K` (`kh*kw*C_in/groups` for a
convolution, `kh*kw` for a depthwise one, `C_in` for Dense) in a signed
two's-complement register before it requantizes. A `b`-bit register holds
`[-2**(b-1), 2**(b-1) - 1]`; every width below is the smallest `b` whose range
holds every value the sum can take.

Operand conventions (`n_w` weight bits, `n_a` activation bits):

- weights: two's complement, `w in [-2**(n_w-1), 2**(n_w-1) - 1]`; 1 bit means
  the binary weights +/-1 (XNOR-Net), not two's complement {-1, 0}.
- activations: `signed_activations=True`: `a in [-2**(n_a-1), 2**(n_a-1) - 1]`;
  `False`: unsigned, `a in [0, 2**n_a - 1]`. 1 bit means +/-1.
- with a zero point `z` (TFLite's asymmetric int8 inputs, which the int8
  export uses) the operand is `q - z` for `q` in that range: for int8 `q` it is
  `[-128 - z, 127 - z]`, up to 255 in magnitude. `zero_point="any"` takes the
  worst case over every zero point (the zero point moves with training and
  calibration, the weights do not), i.e. one of the windows `[0, 255]` (z=-128,
  a ReLU output) or `[-255, 0]` (z=127) for int8. TFLite subtracts the input
  zero point before the multiply (its `input_offset`), so this is the sum the
  kernel accumulates; the weight zero point is 0 (symmetric weights).

The rule (a bound from the widths alone):

    bits_rule = n_w + n_a + ceil(log2(K))            ("2n + log2(c k^2)")

It always suffices: `|w| <= 2**(n_w-1)` and `|a| <= 2**n_a - 1` in every
convention above (unsigned, or after zero-point subtraction; signed inputs give
`<= 2**(n_a-1)`), so `|sum| <= K * 2**(n_w-1) * (2**n_a - 1) < 2**(n_w+n_a-1+ceil(log2 K))`,
which a signed `(n_w + n_a + ceil(log2 K))`-bit register holds. It is tight for
signed x signed operands when K is a power of two: int8 x int8, every
`w = a = -128`, gives `K * 2**14`, a positive power of two that needs
`16 + log2(K)` bits (K=1: 16384 does not fit int15). For other K that worst
case needs one bit less, `n_w + n_a - 1 + ceil(log2 K)`; unsigned or zero-point
inputs (`K * 2**(n_w-1) * (2**n_a - 1)` in magnitude) reach the rule whenever K
is a power of two. Binary x binary (1 x 1 bit, +/-1 x +/-1)
is the exception: the popcount sum spans exactly `[-K, K]`, so

    bits_rule = ceil(log2(K + 1)) + 1.

The exact bound (from the integer kernel, when it is known): the sum is linear
in independent inputs from an interval `[a_lo, a_hi]`, so each term reaches its
extremes on its own. With `P_c` the sum of the positive and `N_c` the sum of
the magnitudes of the negative weights of output channel `c`,

    hi = max_c (a_hi * P_c - a_lo * N_c),   lo = min_c (a_lo * P_c - a_hi * N_c),

both attained by some input, and `bits_exact` is the smallest two's-complement
width holding `[lo, hi]`: `1 + max(bitlen(hi), bitlen(-lo - 1))` (`bitlen(v)`
the bits of v >= 0, 0 for v <= 0). It never exceeds the l1 bound
`max_c sum_i |w_i| * max|a|` (A2Q's); with `zero_point="any"` and
`D = 2**n_a - 1` (255 for int8) it is `hi = -lo = D * max_c max(P_c, N_c)`: one
zero point serves all inputs, so the inputs sit in `[0, D]` or in `[-D, 0]` together.

`layer_accumulator(layer)` applies this to a layer: `profile` reports its
fields in every row of a layer that accumulates products (see
`register_accumulator` for which layers, at which widths).

References:
    Jacob et al. "Quantization and Training of Neural Networks for Efficient
    Integer-Arithmetic-Only Inference", CVPR 2018, arXiv:1712.05877 (int8 x int8
    products summed in int32; zero points, sec. 2.3).
    Rastegari et al. "XNOR-Net", ECCV 2016, arXiv:1603.05279 (XNOR-popcount sums).
    Colbert, Pappalardo, Petri-Koenig. "A2Q: Accumulator-Aware Quantization with
    Guaranteed Overflow Avoidance", ICCV 2023, arXiv:2308.13504 (accumulator
    bounds from the data types, and the tighter l1-norm bound of the weights).
"""

import math
import numbers

import keras
import numpy as np
from keras import layers

from tfcompress.layers import (
    BinaryConv,
    BinaryDense,
    GhostBottleneck,
    GhostConv,
    HashedDense,
    ShiftConv,
    TernaryConv,
    TernaryDense,
)
from tfcompress.layers.ternary import ternarize

__all__ = [
    "ACCUMULATOR_KEYS",
    "FLOAT_LAYER_BITS",
    "accumulator_bits",
    "accumulator_range",
    "get_accumulator",
    "layer_accumulator",
    "register_accumulator",
    "signed_width",
]

# The per-layer fields `layer_accumulator` returns (and `profile` rows carry).
ACCUMULATOR_KEYS = (
    "fan_in",
    "weight_bits",
    "activation_bits",
    "accumulator_bits_rule",
    "accumulator_bits_exact",
    "overflows_16bit",
)

# Widths a float layer is reported at: those of the int8 export (int8 weights,
# int8 activations with a zero point), the package's integer target.
FLOAT_LAYER_BITS = (8, 8)


# --------------------------------------------------------------------------- checks


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(
            f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}"
        )
    return int(value)


def _check_activation_bits(activation_bits, signed_activations, zero_point):
    activation_bits = _check_int("activation_bits", activation_bits, 1)
    if not isinstance(signed_activations, (bool, np.bool_)):
        raise ValueError(  # noqa: TRY004 - the library raises ValueError for bad arguments
            "`signed_activations` must be True or False. "
            f"Received: signed_activations={signed_activations!r}"
        )
    if activation_bits == 1:
        if zero_point is not None:
            raise ValueError(
                "1-bit activations are the binary values +/-1 and have no zero point. "
                f"Received: zero_point={zero_point!r} with activation_bits=1"
            )
        return activation_bits, (-1, 1)
    if signed_activations:
        q_lo, q_hi = -(2 ** (activation_bits - 1)), 2 ** (activation_bits - 1) - 1
    else:
        q_lo, q_hi = 0, 2**activation_bits - 1
    if zero_point is None or (isinstance(zero_point, str) and zero_point == "any"):
        return activation_bits, (q_lo, q_hi)
    if (
        isinstance(zero_point, bool)
        or not isinstance(zero_point, numbers.Integral)
        or not q_lo <= zero_point <= q_hi
    ):
        raise ValueError(
            f"`zero_point` must be None, 'any' or an integer in [{q_lo}, {q_hi}] (the "
            f"{'signed' if signed_activations else 'unsigned'} {activation_bits}-bit range). "
            f"Received: zero_point={zero_point!r}"
        )
    return activation_bits, (q_lo, q_hi)


def _numpy(value):
    """A Keras variable or backend tensor as a NumPy array."""
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


def _plain(value):
    """A NumPy scalar as the Python number it holds (for messages)."""
    return value.item() if hasattr(value, "item") else value


def _check_kernel(integer_kernel, weight_bits=None, fan_in=None):
    """The kernel as an int64 (object for weights over 32 bits) array of shape (K, C).

    `weight_bits` None: any integers; `fan_in` None: whatever the shape says."""
    try:
        kernel = np.asarray(integer_kernel)
    except Exception:  # noqa: BLE001 - anything that is not array-like
        kernel = None
    if kernel is None or kernel.ndim == 0 or kernel.size == 0 or not (
        np.issubdtype(kernel.dtype, np.integer)
        or np.issubdtype(kernel.dtype, np.floating)
        or kernel.dtype == np.bool_
    ):
        raise ValueError(
            "`integer_kernel` must be a non-empty numeric array, shape (..., channels). "
            f"Received: integer_kernel of type {type(integer_kernel).__name__}"
            + ("" if kernel is None else f", shape {kernel.shape}, dtype {kernel.dtype}")
        )
    if kernel.dtype == np.bool_:
        kernel = kernel.astype(np.int64)
    if np.issubdtype(kernel.dtype, np.floating):
        bad = ~np.isfinite(kernel) | (kernel != np.round(kernel))
        if bad.any():
            raise ValueError(
                "`integer_kernel` must hold integers. Received: a value of "
                f"{_plain(kernel[bad].flat[0])!r} at index {tuple(np.argwhere(bad)[0].tolist())}"
            )
    per_channel = kernel.shape[0] if kernel.ndim == 1 else math.prod(kernel.shape[:-1])
    if fan_in is not None and per_channel != fan_in:
        raise ValueError(
            "`integer_kernel` must hold `fan_in` weights per output channel (every axis "
            f"but the last). Received: integer_kernel of shape {kernel.shape} "
            f"({per_channel} per channel) with fan_in={fan_in}"
        )
    kernel = kernel.reshape(per_channel, -1)
    wide = weight_bits is not None and weight_bits > 32
    if not wide and weight_bits is None and kernel.size:
        wide = float(np.max(np.abs(kernel.astype(np.float64)))) >= 2.0**31
    kernel = np.array([[int(v) for v in row] for row in kernel], dtype=object) if wide \
        else kernel.astype(np.int64)
    if weight_bits is None:
        return kernel
    if weight_bits == 1:
        bad = (kernel != 1) & (kernel != -1)
        allowed = "-1 or +1 (binary weights)"
    else:
        w_lo, w_hi = -(2 ** (weight_bits - 1)), 2 ** (weight_bits - 1) - 1
        bad = (kernel < w_lo) | (kernel > w_hi)
        allowed = f"integers in [{w_lo}, {w_hi}] (signed {weight_bits}-bit)"
    if bad.any():
        raise ValueError(
            f"`integer_kernel` values must be {allowed}. Received: a value of "
            f"{_plain(kernel[bad].flat[0])!r} at (fan-in index, channel) "
            f"{tuple(np.argwhere(bad)[0].tolist())}"
        )
    return kernel


# --------------------------------------------------------------------------- widths


def signed_width(lo, hi):
    """Smallest two's-complement width whose range `[-2**(b-1), 2**(b-1) - 1]` holds
    both `lo` and `hi`.

        b = 1 + max(bitlen(hi), bitlen(-lo - 1)),   bitlen(v) = v.bit_length() (0 if v <= 0)

    Args:
        lo: the smallest value (an integer).
        hi: the largest value (an integer, `hi >= lo`).

    Returns:
        The width in bits (at least 1).

    Raises:
        ValueError: if `lo` or `hi` is not an integer or `lo > hi`.

    Example:
        >>> signed_width(-128, 127), signed_width(0, 128), signed_width(-129, 0)
        (8, 9, 9)
    """
    for name, value in (("lo", lo), ("hi", hi)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(  # noqa: TRY004
                f"`{name}` must be an integer. Received: {name}={value!r}"
            )
    lo, hi = int(lo), int(hi)
    if lo > hi:
        raise ValueError(f"`lo` must be <= `hi`. Received: lo={lo}, hi={hi}")
    return 1 + max(max(hi, 0).bit_length(), max(-lo - 1, 0).bit_length())


def accumulator_range(integer_kernel, activation_bits, signed_activations=True,
                      zero_point=None):
    """The exact `(lo, hi)` the sums `sum_i w_i * a_i` of an integer kernel reach over
    every input in the activation range (and every zero point, for `"any"`).

    Per output channel c, with `P_c` the sum of its positive weights and `N_c`
    the sum of the magnitudes of its negative ones, and inputs in `[a_lo, a_hi]`:

        hi = max_c (a_hi * P_c - a_lo * N_c),   lo = min_c (a_lo * P_c - a_hi * N_c)

    `[a_lo, a_hi]` is the activation range of the module docstring: signed
    `[-2**(n-1), 2**(n-1) - 1]`, unsigned `[0, 2**n - 1]`, +/-1 for 1 bit, minus
    `zero_point` when it is an integer; `zero_point="any"` takes the union over
    every zero point `z` of the range, whose extremes are at its two ends
    (`[0, D]` and `[-D, 0]`, `D = 2**n - 1`), so `hi = -lo = D * max_c max(P_c, N_c)`.

    Args:
        integer_kernel: integer array, output channels on the last axis, the fan-in
            on the others (a Keras kernel `(kh, kw, C_in, C_out)` or `(C_in, units)`
            as is; a 1-D array is one channel): the integers the file stores,
            without their scale. Any integer values are accepted.
        activation_bits: bits `n` of the activations (>= 1; 1 means +/-1).
        signed_activations: True for two's complement activations, False for unsigned.
        zero_point: None (the operand is the activation integer itself), an integer
            inside the activation range (the operand is `q - zero_point`), or "any".

    Returns:
        `(lo, hi)`, Python integers.

    Raises:
        ValueError: for a kernel that is not a non-empty array of integers, bad
            bits, or a zero point outside the activation range.

    Example:
        >>> accumulator_range([[3], [-2]], 4)  # a in [-8, 7]
        (-38, 37)
        >>> accumulator_range([[3], [-2]], 8, zero_point="any")  # 255 * max(3, 2)
        (-765, 765)
    """
    activation_bits, (q_lo, q_hi) = _check_activation_bits(
        activation_bits, signed_activations, zero_point
    )
    return _range(_check_kernel(integer_kernel), (q_lo, q_hi), zero_point)


def _range(kernel, q_range, zero_point):
    zeros = np.zeros((), dtype=kernel.dtype)
    positive = [int(v) for v in np.sum(np.maximum(kernel, zeros), axis=0)]
    negative = [int(v) for v in np.sum(np.maximum(-kernel, zeros), axis=0)]
    q_lo, q_hi = q_range
    if isinstance(zero_point, str):  # "any": the windows [0, D] and [-D, 0]
        span = q_hi - q_lo
        hi = span * max(max(p, n) for p, n in zip(positive, negative))
        return -hi, hi
    shift = 0 if zero_point is None else int(zero_point)
    a_lo, a_hi = q_lo - shift, q_hi - shift
    hi = max(a_hi * p - a_lo * n for p, n in zip(positive, negative))
    lo = min(a_lo * p - a_hi * n for p, n in zip(positive, negative))
    return lo, hi


def accumulator_bits(weight_bits, activation_bits, fan_in, integer_kernel=None,
                     signed_activations=True, zero_point=None):
    """Accumulator bits of a layer: by the rule, and exactly from its integer kernel.

    Rule (module docstring for the proof): two's complement `n_w`-bit weights and
    `n_a`-bit activations summed over `K = fan_in` terms need at most

        n_w + n_a + ceil(log2(K))          (signed result; "2n + log2(c k^2)")

    bits, for signed or unsigned activations or activations minus a zero point
    alike; binary x binary (`n_w = n_a = 1`, +/-1 x +/-1) needs
    `ceil(log2(K + 1)) + 1`. E.g. int8 x int8 over a 3x3x16 kernel: K = 144,
    `8 + 8 + 8 = 24`; for K = 1 the rule gives 16, and (-128) * (-128) = 2**14
    needs exactly that (int15 stops at 16383).

    Exact: with the integer kernel, the smallest signed width holding every sum
    over every input (`accumulator_range`): `signed_width(lo, hi)`, i.e.
    `ceil(log2(max|sum| + 1)) + 1` when the extreme is positive.

    Args:
        weight_bits: bits `n_w` of the weights, an integer >= 1 (1 means +/-1).
        activation_bits: bits `n_a` of the activations, an integer >= 1 (1 means +/-1).
        fan_in: `K`, the products summed per output, an integer >= 1
            (`kh*kw*C_in/groups` for a convolution, `kh*kw` depthwise, `C_in` Dense).
        integer_kernel: None, or the integer weights (output channels on the last
            axis, `fan_in` values per channel; `signed n_w-bit` integers, or +/-1
            for 1 bit).
        signed_activations: True: `a in [-2**(n_a-1), 2**(n_a-1) - 1]`; False:
            `a in [0, 2**n_a - 1]`. Used by the exact bound only.
        zero_point: None, an integer in the activation range (the operand is
            `q - zero_point`), or "any" (the worst zero point: what the int8
            export's inputs can be; `profile` uses it for int8 layers).

    Returns:
        `(rule_bits, exact_bits)`; `exact_bits` is None without `integer_kernel`.

    Raises:
        ValueError: if a width or `fan_in` is not an integer >= 1 (the message
            names the value), or the kernel or zero point do not fit the widths.

    Example:
        >>> accumulator_bits(8, 8, 144)
        (24, None)
        >>> accumulator_bits(1, 1, 144, integer_kernel=np.ones((144, 4)))
        (9, 9)
        >>> accumulator_bits(8, 8, 2, integer_kernel=[[127], [1]], zero_point="any")
        (17, 16)

    Reference:
        Jacob et al., CVPR 2018 (int8 products in int32, zero points); Colbert et
        al., "A2Q", ICCV 2023 (the `n_w + n_a + log2 K` bound and the l1 bound).
    """
    weight_bits = _check_int("weight_bits", weight_bits, 1)
    fan_in = _check_int("fan_in", fan_in, 1)
    activation_bits, q_range = _check_activation_bits(
        activation_bits, signed_activations, zero_point
    )
    if weight_bits == 1 and activation_bits == 1:
        rule = fan_in.bit_length() + 1  # ceil(log2(K + 1)) + 1
    else:
        rule = weight_bits + activation_bits + (fan_in - 1).bit_length()  # ceil(log2 K)
    if integer_kernel is None:
        return rule, None
    kernel = _check_kernel(integer_kernel, weight_bits, fan_in)
    return rule, signed_width(*_range(kernel, q_range, zero_point))


# --------------------------------------------------------------------------- layers

_REGISTRY = {}
_SPEC_KEYS = ("weight_bits", "activation_bits", "fan_in", "integer_kernel",
              "signed_activations", "zero_point")
_WRAPPERS_REGISTERED = []


def register_accumulator(layer_class, fn):
    """Registers how `layer_accumulator` (and so `profile`) finds a layer's accumulator.

    `fn(layer)` returns None (nothing accumulates products), a dict of
    `accumulator_bits` arguments (`weight_bits`, `activation_bits`, `fan_in`, and
    optionally `integer_kernel`, `signed_activations`, `zero_point`), or a list
    of such dicts for a layer made of several operations (the one needing the
    most bits is reported). The most specific registered class wins.

    Built in: Conv1D/2D/3D, Depthwise, Separable (both stages), the transposed
    convolutions and Dense at the int8 export's widths (8 x 8, zero point "any",
    no integer kernel: their integers only exist after BatchNorm folding and
    export); HashedDense likewise; BinaryConv / BinaryDense at 1-bit weights
    (+/-1, kernel known) and 1-bit inputs (8-bit when `binarize_input=False`);
    ShiftConv, GhostConv, GhostBottleneck through their convolutions; the QAT
    `QuantizeWrapper` at its weight / activation bits with its integer kernel;
    pruning and clustering wrappers as the layer they wrap. Adder layers sum
    |x - w|, not products, and get no entry.

    Args:
        layer_class: a subclass of `keras.layers.Layer`.
        fn: a callable `fn(layer) -> dict | list | None`.

    Returns:
        `fn`.

    Raises:
        ValueError: if `layer_class` is not a Layer subclass or `fn` is not callable.

    Example:
        >>> register_accumulator(MyInt4Dense, lambda layer: {
        ...     "weight_bits": 4, "activation_bits": 8, "fan_in": layer.kernel.shape[0]})
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, layers.Layer)):
        raise ValueError(  # noqa: TRY004 - the library raises ValueError for bad arguments
            "`layer_class` must be a subclass of keras.layers.Layer. "
            f"Received: layer_class={layer_class!r}"
        )
    if not callable(fn):
        raise ValueError(  # noqa: TRY004
            f"`fn` must be a callable fn(layer) -> dict, list or None. Received: fn={fn!r}"
        )
    _REGISTRY[layer_class] = fn
    return fn


def get_accumulator(layer_class):
    """The function registered for `layer_class` (closest class in its MRO), or None.

    Args:
        layer_class: a layer class.

    Returns:
        The registered `fn(layer)`, or None.
    """
    _register_wrappers()
    if not isinstance(layer_class, type):
        return None
    for cls in layer_class.__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
    return None


def layer_accumulator(layer):
    """The accumulator fields of one built layer, or None if it sums no products.

    Args:
        layer: a built Keras layer.

    Returns:
        None, or a dict with "fan_in", "weight_bits", "activation_bits",
        "accumulator_bits_rule", "accumulator_bits_exact" (None when the integer
        weights are not known), "overflows_16bit" (exact bits > 16 when known,
        else rule bits > 16). For several operations, those of the one needing
        the most bits (then the larger fan-in).

    Raises:
        ValueError: if a registered function returns something malformed.

    Example:
        >>> conv = keras.layers.Conv2D(8, 3)
        >>> conv.build((None, 6, 6, 16))
        >>> layer_accumulator(conv)["accumulator_bits_rule"]  # 8 + 8 + ceil(log2 144)
        24
    """
    fn = get_accumulator(type(layer))
    if fn is None:
        return None
    specs = fn(layer)
    if specs is None:
        return None
    if isinstance(specs, dict):
        specs = [specs]
    entries = []
    for spec in specs:
        if spec is None:
            continue
        if not isinstance(spec, dict):
            raise ValueError(  # noqa: TRY004
                f"The accumulator function of {type(layer).__name__} must return a dict, "
                f"a list of dicts or None. Received: {spec!r}"
            )
        unknown = sorted(set(spec) - set(_SPEC_KEYS))
        missing = sorted(set(_SPEC_KEYS[:3]) - set(spec))
        if unknown or missing:
            raise ValueError(
                f"The accumulator function of {type(layer).__name__} returned keys "
                f"{sorted(spec)}; it must give {list(_SPEC_KEYS[:3])} and may give "
                f"{list(_SPEC_KEYS[3:])}. Unknown: {unknown}, missing: {missing}"
            )
        entries.append(_entry(**spec))
    if not entries:
        return None
    return max(entries, key=lambda e: (_flag_bits(e), e["fan_in"]))


def _flag_bits(entry):
    exact = entry["accumulator_bits_exact"]
    return entry["accumulator_bits_rule"] if exact is None else exact


def _entry(weight_bits, activation_bits, fan_in, integer_kernel=None,
           signed_activations=True, zero_point=None):
    rule, exact = accumulator_bits(
        weight_bits, activation_bits, fan_in, integer_kernel, signed_activations, zero_point
    )
    entry = {
        "fan_in": int(fan_in),
        "weight_bits": int(weight_bits),
        "activation_bits": int(activation_bits),
        "accumulator_bits_rule": rule,
        "accumulator_bits_exact": exact,
    }
    entry["overflows_16bit"] = _flag_bits(entry) > 16
    return entry


def _float_spec(fan_in):
    weight_bits, activation_bits = FLOAT_LAYER_BITS
    return {"weight_bits": weight_bits, "activation_bits": activation_bits,
            "fan_in": int(fan_in), "zero_point": "any"}


def _conv_spec(layer):
    # kernel (k..., C_in / groups, C_out): every axis but the last is summed.
    return _float_spec(math.prod(layer.kernel.shape[:-1]))


def _depthwise_spec(layer):
    # kernel (k..., C_in, multiplier): each output channel sums one input channel.
    return _float_spec(math.prod(layer.kernel.shape[:-2]))


def _separable_spec(layer):
    depthwise = math.prod(layer.depthwise_kernel.shape[:-2])
    pointwise = math.prod(layer.pointwise_kernel.shape[:-1])
    return [_float_spec(depthwise), _float_spec(pointwise)]


def _taps(kernel, stride, dilation):
    """Most kernel taps `t*dilation` that land on one output of a strided scatter."""
    counts = {}
    for t in range(kernel):
        residue = (t * dilation) % stride
        counts[residue] = counts.get(residue, 0) + 1
    return max(counts.values())


def _conv_transpose_spec(layer):
    # kernel (k..., C_out, C_in): an output sums the taps of its stride phase.
    kernel = layer.kernel.shape
    spatial = kernel[:-2]
    strides = tuple(layer.strides) if len(layer.strides) == len(spatial) else (
        layer.strides[0],) * len(spatial)
    dilation = tuple(getattr(layer, "dilation_rate", (1,) * len(spatial)))
    if len(dilation) != len(spatial):
        dilation = (dilation[0],) * len(spatial)
    taps = math.prod(_taps(k, s, d) for k, s, d in zip(spatial, strides, dilation))
    return _float_spec(taps * kernel[-1])


def _dense_spec(layer):
    return _float_spec(layer.kernel.shape[0])


def _hashed_dense_spec(layer):
    return _float_spec(int(keras.ops.shape(layer.virtual_kernel())[0]))


def _binary_spec(layer):
    latent = _numpy(layer.kernel)
    signs = np.where(latent >= 0, 1, -1).astype(np.int64)  # sign(0) = +1, as the layer
    fan_in = math.prod(latent.shape[:-1])
    if layer.binarize_input and getattr(layer, "input_order", 1) > 1:
        # HORQ: the conv sees X_hat = sum_i beta_i H_i, an int8 tensor in the file.
        return {"weight_bits": 1, "activation_bits": FLOAT_LAYER_BITS[1], "fan_in": fan_in,
                "integer_kernel": signs, "zero_point": "any"}
    if layer.binarize_input:  # XNOR-popcount: +/-1 x +/-1
        return {"weight_bits": 1, "activation_bits": 1, "fan_in": fan_in,
                "integer_kernel": signs}
    # Binary weights, real inputs (BWN): the inputs at the int8 export's width.
    return {"weight_bits": 1, "activation_bits": FLOAT_LAYER_BITS[1], "fan_in": fan_in,
            "integer_kernel": signs, "zero_point": "any"}


def _sublayers(*subs):
    def fn(layer):
        specs = []
        for name in subs:
            sub = getattr(layer, name, None)
            if sub is None:
                continue
            inner = get_accumulator(type(sub))
            found = None if inner is None else inner(sub)
            if isinstance(found, dict):
                specs.append(found)
            elif found:
                specs.extend(found)
        return specs or None

    return fn


def _quantize_wrapper_spec(wrapper):
    """The QAT layer's integer kernel: the folded kernel on its symmetric weight grid
    (per output channel, or one scale for Dense, as the file stores it)."""
    from tfcompress.quantization.quantizers import fake_quant_weights, weight_bound

    weight_bits = int(getattr(wrapper, "weight_bits", 8))
    activation_bits = int(getattr(wrapper, "activation_bits", 8))
    folded, _ = wrapper.folded_weights()
    folded = _numpy(folded)
    if isinstance(wrapper.layer, (layers.DepthwiseConv1D, layers.DepthwiseConv2D)):
        # TFLite's depthwise output channel c * multiplier + m; fan-in the window.
        kernel2d = folded.reshape(math.prod(folded.shape[:-2]), -1)
    else:
        kernel2d = folded.reshape(-1, folded.shape[-1])
    per_channel = bool(wrapper.per_channel) and folded.ndim != 2
    extra = {} if weight_bits == 8 else {"num_bits": weight_bits}
    grid = _numpy(fake_quant_weights(kernel2d, per_channel, **extra))
    step = _numpy(weight_bound(kernel2d, per_channel)) / (
        2 ** (weight_bits - 1) - 1
    )
    integers = np.rint(grid / step).astype(np.int64)
    spec = {"weight_bits": weight_bits, "activation_bits": activation_bits,
            "fan_in": kernel2d.shape[0], "integer_kernel": integers}
    # int8 inputs are asymmetric (any zero point); int16 ones symmetric, zero point 0
    # (TFLite's 16x8 levels are -32767..32767; counting -32768 too only ever adds).
    spec["zero_point"] = "any" if activation_bits == 8 else 0
    return spec


def _wrapped_spec(wrapper):
    inner = get_accumulator(type(wrapper.layer))
    return None if inner is None else inner(wrapper.layer)


def _register_wrappers():
    """Registers the pruning, clustering and QAT wrappers on first use (their modules
    import `tfcompress.analysis`, so they cannot be imported when this one loads)."""
    if _WRAPPERS_REGISTERED:
        return
    _WRAPPERS_REGISTERED.append(True)
    from tfcompress.clustering.wrapper import ClusterWeights
    from tfcompress.pruning.wrapper import PruneLowMagnitude
    from tfcompress.quantization.wrappers import QuantizeWrapper

    _REGISTRY.setdefault(QuantizeWrapper, _quantize_wrapper_spec)
    _REGISTRY.setdefault(PruneLowMagnitude, _wrapped_spec)
    _REGISTRY.setdefault(ClusterWeights, _wrapped_spec)


for _cls in (layers.Conv1D, layers.Conv2D, layers.Conv3D):
    register_accumulator(_cls, _conv_spec)
for _cls in (layers.DepthwiseConv1D, layers.DepthwiseConv2D):
    register_accumulator(_cls, _depthwise_spec)
for _cls in (layers.SeparableConv1D, layers.SeparableConv2D):
    register_accumulator(_cls, _separable_spec)
for _cls in (layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose):
    register_accumulator(_cls, _conv_transpose_spec)
register_accumulator(layers.Dense, _dense_spec)
register_accumulator(HashedDense, _hashed_dense_spec)
def _ternary_spec(layer):
    """TWN: 2-bit weights -1 / 0 / +1 (times alpha per channel), int8 inputs."""
    latent = _numpy(layer.kernel)
    _, ternary = ternarize(latent, layer.threshold, axis=tuple(range(latent.ndim - 1)))
    return {"weight_bits": 2, "activation_bits": FLOAT_LAYER_BITS[1],
            "fan_in": math.prod(latent.shape[:-1]),
            "integer_kernel": np.asarray(ternary).astype(np.int64), "zero_point": "any"}


register_accumulator(TernaryConv, _ternary_spec)
register_accumulator(TernaryDense, _ternary_spec)
register_accumulator(BinaryConv, _binary_spec)
register_accumulator(BinaryDense, _binary_spec)
register_accumulator(ShiftConv, _sublayers("pointwise"))
register_accumulator(GhostConv, _sublayers("primary_conv", "cheap_conv"))
register_accumulator(
    GhostBottleneck,
    _sublayers("ghost1", "dw_conv", "se_reduce", "se_expand", "ghost2", "shortcut_dw",
               "shortcut_conv"),
)
