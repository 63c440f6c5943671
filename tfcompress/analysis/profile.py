"""Per-layer parameters, multiply-accumulates, additions, binary operations and bits.

`profile(model)` walks a built functional or Sequential Keras 3 model (nested
models included) and counts, for every layer and for the whole model, the cost
of one input example:

- `params`: weight elements the layer holds, trainable and non-trainable
  (`non_trainable_params` are mostly BatchNormalization moving mean/variance,
  which inference folds into the preceding convolution). For a plain model the
  total equals `model.count_params()`. A pruning, clustering or QAT wrapper counts
  what the exported file holds: the wrapped layer's parameters once, and no
  masks, step counters, centroid indices or quantizer ranges.
- `macs`: multiply-accumulates for one example (batch size 1). Convolutions and
  Dense layers by the standard formulas; biases, BatchNormalization (foldable),
  activations, pooling, element-wise adds and reshapes count 0.
- `adds`: additions that replace multiplications: AdderNet layers count
  `2 * kh*kw*C_in` per output element (one subtraction and one accumulation,
  AdderNet's count), binary-weight layers with real inputs count `kh*kw*C_in`.
- `binary_ops`: XNOR-popcount operations of binary layers (`kh*kw*C_in` per
  output element).
- `param_bits`: storage of the weights: the bit width of every variable's dtype
  (32 for float32), except binary kernels at 1 bit per weight (their latent
  float copy only exists for training) plus 32 bits per output channel for the
  XNOR scale alpha, which inference must store. Wrapped layers count bits as
  stored: a pruned matrix its non-zeros, a clustered one log2 of its codebook size
  per weight plus the codebook, a QAT layer 8 bits per weight and 32 per bias.
- accumulator width, in the rows of layers that sum products (Conv, Dense and
  the layers built from them, binary layers, QAT wrappers): "fan_in" (products
  per output), "weight_bits", "activation_bits", "accumulator_bits_rule"
  (`n_w + n_a + ceil(log2 fan_in)`; `ceil(log2(fan_in + 1)) + 1` for binary x
  binary), "accumulator_bits_exact" (from the integer kernel when it is known:
  QAT and binary layers; None otherwise) and "overflows_16bit" (the exact bits,
  else the rule's, above 16). Float layers are reported at the int8 export's
  widths (8 x 8, inputs with any zero point). Conventions and proofs:
  `tfcompress.analysis.accumulator`.

How each layer type is counted lives in the layer-traits registry
(`tfcompress.core.traits`, field `counter`): `register_counter` adds a counter
for a new layer class (the pruning, clustering and QAT wrappers register theirs),
and `count_layer` counts one call of any layer, so a wrapper's counter can
delegate to the layer it wraps. Layers without a counter count 0 operations;
when they hold weights the row gets a note saying so.

References:
    Han, Mao, Dally. "Deep Compression", ICLR 2016, arXiv:1510.00149 (the
    params/MACs tables this reproduces for LeNet-300-100 and LeNet-5).
    Chen et al. "AdderNet: Do We Really Need Multiplications in Deep Learning?",
    CVPR 2020, arXiv:1912.13200 (additions of adder layers).
    Rastegari et al. "XNOR-Net", ECCV 2016, arXiv:1603.05279 (binary operations).
    Han et al. "GhostNet", CVPR 2020, arXiv:1911.11907 (Ghost module cost, eq. 4).
    Wu et al. "Shift: A Zero FLOP, Zero Parameter Alternative to Spatial
    Convolutions", CVPR 2018, arXiv:1711.08141.
"""

import math
import numbers
import re

import keras
from keras import layers

from tfcompress.analysis.accumulator import ACCUMULATOR_KEYS, layer_accumulator
from tfcompress.core.graph import ModelGraph, check_model, is_graph_model
from tfcompress.core.traits import layer_traits, register_layer_traits
from tfcompress.layers import (
    AdderConv,
    AdderDense,
    GhostBottleneck,
    GhostConv,
    HashedDense,
    Shift,
    ShiftConv,
)
from tfcompress.layers._utils import known_prod

# Per-call counts: summed over the calls of a shared layer. Every other numeric
# key a counter returns (`param_bits`, or e.g. "nonzero_params" from a pruning
# wrapper) describes the layer's weights and is taken once. A counter that adds
# a new per-call count (e.g. "sparse_macs") adds its name to PER_CALL_KEYS.
__all__ = [
    "COUNT_KEYS",
    "OP_KEYS",
    "PER_CALL_KEYS",
    "ROW_KEYS",
    "count_layer",
    "dtype_bits",
    "format_profile",
    "get_counter",
    "profile",
    "register_counter",
]

OP_KEYS = ("macs", "adds", "binary_ops")
PER_CALL_KEYS = set(OP_KEYS)
COUNT_KEYS = OP_KEYS + ("param_bits",)
ROW_KEYS = (
    "name",
    "type",
    "output_shape",
    "params",
    "trainable_params",
    "non_trainable_params",
    "macs",
    "adds",
    "binary_ops",
    "param_bits",
)

# --------------------------------------------------------------------------- registry


def register_counter(layer_class, fn=None):
    """Registers how `profile` counts the operations of a layer class.

    The counter is used for `layer_class` and its subclasses (the most specific
    registered class wins), and replaces any earlier counter of that class.

    `fn(layer, input_shape, output_shape)` receives the layer, the shape of one
    call's input (a tuple with the batch axis, or a list of tuples for several
    inputs) and of its output, and returns a dict with any of:

    - "macs", "adds", "binary_ops": operations of this call for one example
      (the batch axis is not multiplied in); missing keys count 0.
    - "param_bits": bits needed to store the layer's weights; missing, it is
      the bit width of every weight's dtype times its size.
    - "note": a string shown in the row.
    - any other key with a numeric value (e.g. "nonzero_params" for a pruning
      wrapper): copied into the layer's row and summed into the total. Such
      keys describe the layer and are taken from its first call, unless their
      name is added to `PER_CALL_KEYS` (then they are summed over calls, like
      "macs").

    Args:
        layer_class: a subclass of `keras.layers.Layer`.
        fn: the counter. Leave it out to use `register_counter` as a decorator.

    Returns:
        `fn` (or, without `fn`, a decorator that registers and returns it).

    Raises:
        ValueError: if `layer_class` is not a Layer subclass or `fn` is not callable.

    Example:
        >>> def count_my_layer(layer, input_shape, output_shape):
        ...     return {"macs": count_layer(layer.inner, input_shape)["macs"]}
        >>> register_counter(MyWrapper, count_my_layer)
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, layers.Layer)):
        raise ValueError(  # noqa: TRY004 - the library raises ValueError for bad arguments
            "`layer_class` must be a subclass of keras.layers.Layer. "
            f"Received: layer_class={layer_class!r}"
        )
    if fn is None:
        def decorator(f):
            return register_counter(layer_class, f)

        return decorator
    if not callable(fn):
        raise ValueError(  # noqa: TRY004
            "`fn` must be a callable fn(layer, input_shape, output_shape) -> dict. "
            f"Received: fn={fn!r}"
        )
    register_layer_traits(layer_class, counter=fn)
    return fn


def get_counter(layer_class):
    """The counter `profile` uses for `layer_class`, or None if there is none.

    Args:
        layer_class: a layer class.

    Returns:
        The registered function of the closest class in `layer_class.__mro__`,
        or None.
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, layers.Layer)):
        return None
    return layer_traits(layer_class).counter


# --------------------------------------------------------------------------- helpers


def _shape_tuple(shape):
    return tuple(None if d is None else int(d) for d in shape)


def _is_multi(shape):
    return isinstance(shape, (list, tuple)) and bool(shape) and isinstance(
        shape[0], (list, tuple)
    )


def _spatial(shape, layer):
    """Product of the spatial dims of a channels-last or channels-first shape."""
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        dims = shape[2:]
    else:
        dims = shape[1:-1]
    return known_prod(dims, layer, "output shape")


def _size(variable):
    return math.prod(variable.shape)


def dtype_bits(dtype):
    """Bits of one element of a dtype: 32 for "float32", 8 for "int8", 1 for "bool".

    Args:
        dtype: a dtype name or object.

    Returns:
        The bit width (32 when it cannot be read from the name).
    """
    name = keras.backend.standardize_dtype(dtype)
    if name == "bool":
        return 1
    match = re.search(r"(\d+)$", name)
    return int(match.group(1)) if match else 32


def _default_param_bits(layer):
    return sum(_size(w) * dtype_bits(w.dtype) for w in layer.weights)


def _validated(result, layer):
    if result is None:
        return {}
    if not isinstance(result, dict):
        raise TypeError(
            f"The counter of {type(layer).__name__} must return a dict. "
            f"Received: {result!r}"
        )
    clean = {}
    for key, value in result.items():
        if key == "note":
            clean[key] = str(value)
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or value < 0:
            raise ValueError(
                f"The counter of {type(layer).__name__} returned {key}={value!r}; "
                "counts must be non-negative numbers."
            )
        clean[key] = int(value) if float(value).is_integer() else float(value)
    return clean


def count_layer(layer, input_shape, output_shape=None):
    """Counts one call of `layer` on an input of `input_shape`, for one example.

    Looks up the registered counter of the layer's class; a layer without one
    counts 0 operations (and, if it holds weights, gets a note).

    Args:
        layer: a built Keras layer.
        input_shape: the input shape of the call, with the batch axis (or a
            list of shapes for layers with several inputs).
        output_shape: the output shape; computed with
            `layer.compute_output_shape(input_shape)` when left out.

    Returns:
        A dict with "macs", "adds", "binary_ops", "param_bits", "counted"
        (False when no counter is registered), plus whatever else the counter
        returned.

    Raises:
        ValueError: when a counter needs a dimension that is unknown.

    Example:
        >>> conv = keras.layers.Conv2D(8, 3, padding="same")
        >>> conv.build((None, 4, 4, 2))
        >>> count_layer(conv, (None, 4, 4, 2))["macs"]  # 3*3*2*8 * 4*4
        2304
    """
    if _is_multi(input_shape):
        input_shape = [_shape_tuple(s) for s in input_shape]
    else:
        input_shape = _shape_tuple(input_shape)
    if output_shape is None:
        output_shape = layer.compute_output_shape(input_shape)
    if _is_multi(output_shape):
        output_shape = [_shape_tuple(s) for s in output_shape]
    else:
        output_shape = _shape_tuple(output_shape)
    fn = get_counter(type(layer))
    counts = {key: 0 for key in OP_KEYS}
    counts["param_bits"] = _default_param_bits(layer)
    counts["counted"] = fn is not None
    if fn is not None:
        counts.update(_validated(fn(layer, input_shape, output_shape), layer))
    return counts


def _sum_counts(parts):
    """Adds up count dicts of sublayers (all numeric keys)."""
    total = {key: 0 for key in COUNT_KEYS}
    for part in parts:
        for key, value in part.items():
            if key in ("counted", "note"):
                continue
            total[key] = total.get(key, 0) + value
    return total


def _chain(calls, input_shape):
    """Counts sublayers applied one after another; returns (counts list, output shape)."""
    parts, shape = [], input_shape
    for sub in calls:
        if sub is None:
            continue
        out = sub.compute_output_shape(shape)
        parts.append(count_layer(sub, shape, out))
        shape = out
    return parts, shape


# --------------------------------------------------------------------------- counters


def _count_conv(layer, input_shape, output_shape):
    # kernel (k..., C_in / groups, C_out): k*C_in/groups MACs per output element.
    return {"macs": _size(layer.kernel) * _spatial(output_shape, layer)}


def _count_conv_transpose(layer, input_shape, output_shape):
    # Every input pixel is scattered through the whole (k..., C_out, C_in) kernel.
    return {"macs": _size(layer.kernel) * _spatial(input_shape, layer)}


def _count_depthwise(layer, input_shape, output_shape):
    # kernel (k..., C_in, multiplier): k MACs per output element.
    return {"macs": _size(layer.kernel) * _spatial(output_shape, layer)}


def _count_separable(layer, input_shape, output_shape):
    size = _size(layer.depthwise_kernel) + _size(layer.pointwise_kernel)
    return {"macs": size * _spatial(output_shape, layer)}


def _count_dense(layer, input_shape, output_shape):
    rows = known_prod(output_shape[1:-1], layer, "output shape")
    return {"macs": _size(layer.kernel) * rows}


def _count_hashed_dense(layer, input_shape, output_shape):
    # The virtual matrix's multiply-adds; only the buckets are stored.
    rows = known_prod(output_shape[1:-1], layer, "output shape")
    return {"macs": int(input_shape[-1]) * layer.units * rows,
            "note": f"{layer.buckets} shared weights"}


def _count_nothing(layer, input_shape, output_shape):
    return {}


def _count_adder_conv(layer, input_shape, output_shape):
    # -sum |x - w|: one subtraction and one accumulation per kernel element.
    pixels = known_prod(output_shape[1:3], layer, "output shape")
    return {"adds": 2 * _size(layer.kernel) * pixels}


def _count_adder_dense(layer, input_shape, output_shape):
    rows = known_prod(output_shape[1:-1], layer, "output shape")
    return {"adds": 2 * _size(layer.kernel) * rows}


def _count_shift_conv(layer, input_shape, output_shape):
    # The shift is free; the 1x1 convolution on the (same-shaped) shifted input.
    return _sum_counts([count_layer(layer.shift, input_shape, input_shape),
                        count_layer(layer.pointwise, input_shape)])


def _count_ghost_conv(layer, input_shape, output_shape):
    # m*k*k*C_in*H*W (primary) + m*(s-1)*d*d*H*W (cheap depthwise), paper eq. 4.
    parts, _ = _chain(
        [layer.primary_conv, layer.primary_bn, layer.cheap_conv, layer.cheap_bn], input_shape
    )
    return _sum_counts(parts)


def _count_ghost_bottleneck(layer, input_shape, output_shape):
    parts, shape = _chain([layer.ghost1, layer.dw_conv, layer.dw_bn], input_shape)
    if layer.se_reduce is not None:
        # The SE gate's pooling and the gating product are element-wise: 0.
        se_parts, _ = _chain([layer.se_reduce, layer.se_expand], (shape[0], 1, 1, shape[-1]))
        parts += se_parts
    parts += _chain([layer.ghost2], shape)[0]
    if layer.shortcut_conv is not None:
        parts += _chain(
            [layer.shortcut_dw, layer.shortcut_dw_bn, layer.shortcut_conv, layer.shortcut_bn],
            input_shape,
        )[0]
    return _sum_counts(parts)


for _cls in (layers.Conv1D, layers.Conv2D, layers.Conv3D):
    register_counter(_cls, _count_conv)
for _cls in (layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose):
    register_counter(_cls, _count_conv_transpose)
for _cls in (layers.DepthwiseConv1D, layers.DepthwiseConv2D):
    register_counter(_cls, _count_depthwise)
for _cls in (layers.SeparableConv1D, layers.SeparableConv2D):
    register_counter(_cls, _count_separable)
register_counter(layers.Dense, _count_dense)
# Normalizations fold into the neighbouring linear layer at inference; an
# embedding is a table look-up.
for _cls in (
    layers.BatchNormalization,
    layers.LayerNormalization,
    layers.GroupNormalization,
    layers.Embedding,
    Shift,
):
    register_counter(_cls, _count_nothing)
register_counter(AdderConv, _count_adder_conv)
register_counter(AdderDense, _count_adder_dense)
register_counter(HashedDense, _count_hashed_dense)
register_counter(ShiftConv, _count_shift_conv)
register_counter(GhostConv, _count_ghost_conv)
register_counter(GhostBottleneck, _count_ghost_bottleneck)


# --------------------------------------------------------------------------- model walk


def _new_params(layer, seen):
    """(params, trainable params, bits) of `layer`'s weights not counted before."""
    trainable_ids = {id(w) for w in layer.trainable_weights}
    params = trainable = bits = 0
    for w in layer.weights:
        if id(w) in seen:
            continue
        seen.add(id(w))
        params += _size(w)
        bits += _size(w) * dtype_bits(w.dtype)
        if id(w) in trainable_ids:
            trainable += _size(w)
    return params, trainable, bits


def _layer_row(graph, layer, seen):
    nodes = graph.nodes_of(layer)
    per_call = {key: 0 for key in OP_KEYS}
    first = None
    for node in nodes:
        counts = count_layer(layer, node.input_shapes(), node.output_shapes())
        if first is None:
            first = counts
        for key, value in counts.items():
            if key in PER_CALL_KEYS:
                per_call[key] = per_call.get(key, 0) + value
    if "params" in first:
        # The counter says what the exported file holds (a wrapper's masks, indices or
        # ranges are no parameters): take its numbers, and the weights as counted.
        params = first["params"]
        trainable = first.get("trainable_params", params)
        seen.update(id(w) for w in layer.weights)
    else:
        params, trainable, _ = _new_params(layer, seen)
    counts = {
        key: value
        for key, value in first.items()
        if key not in PER_CALL_KEYS
        and key not in ("counted", "note", "params", "trainable_params")
    }
    counts.update(per_call)
    note = first.get("note", "")
    if not first["counted"] and layer.weights:
        note = "no counter registered: operations not counted"
    if len(nodes) > 1:
        note = (note + "; " if note else "") + f"called {len(nodes)} times"
    name = "/".join(nodes[0].path + (layer.name,))
    row = _row(name, layer, nodes[0].output_shapes(), params, trainable, counts)
    accumulator = layer_accumulator(layer)
    if accumulator is not None:
        row.update(accumulator)
    if note:
        row["note"] = note
    return row


def _row(name, layer, output_shape, params, trainable, counts):
    row = {
        "name": name,
        "type": type(layer).__name__,
        "output_shape": output_shape,
        "params": params,
        "trainable_params": trainable,
        "non_trainable_params": params - trainable,
        "macs": counts.get("macs", 0),
        "adds": counts.get("adds", 0),
        "binary_ops": counts.get("binary_ops", 0),
        "param_bits": counts.get("param_bits", 0),
    }
    for key, value in counts.items():
        row.setdefault(key, value)
    return row


def profile(model, print_table=False):
    """Parameters, MACs, additions, binary operations and weight bits of a model.

    Counts are for one input example. See the module docstring for the exact
    definitions; in short, per layer:

    - Conv / Depthwise / Separable / Dense: the standard MAC formulas, e.g.
      Conv2D `kh*kw*C_in*C_out*H_out*W_out` (biases not counted).
    - BatchNormalization: 0 MACs (folded at inference); its 4*C weights are in
      `params`, 2*C of them (moving mean and variance) in `non_trainable_params`.
    - AdderConv / AdderDense: 0 MACs, `adds = 2 * kh*kw*C_in * outputs`.
    - BinaryConv / BinaryDense: `binary_ops = kh*kw*C_in * outputs` (XNOR +
      popcount; `adds` instead when `binarize_input=False`), `macs = outputs`
      for the alpha scaling when `scale="channel"`; kernels stored at 1 bit.
    - Shift: 0 of everything; ShiftConv: its 1x1 convolution.
    - GhostConv / GhostBottleneck: the sum of their inner convolutions, e.g.
      GhostConv `m*k*k*C_in*H*W + m*(s-1)*d*d*H*W` with `m = ceil(filters/s)`.
    - Nested models are expanded ("inner/conv1"); a layer or model called
      several times counts its operations once per call and its weights once.
    - PruneLowMagnitude / ClusterWeights / QuantizeWrapper...: the wrapped
      layer's operations and parameters; bits as the exported file stores them
      (non-zeros; log2(k) bits per index plus the codebook; int8 weights and
      int32 biases); masks, indices and ranges are no parameters.
    - Anything else: 0 operations (pooling, activations, reshapes, adds...);
      a layer with weights but no registered counter gets a "note".

    Args:
        model: a built functional or Sequential `keras.Model` whose input shape
            is fully known (height and width included).
        print_table: also print `format_profile(result)`.

    Returns:
        A dict `{"model": name, "layers": [row, ...], "total": {...}}`. Every
        row has "name", "type", "output_shape" (tuple with the batch axis, a
        list of tuples for several outputs), "params", "trainable_params",
        "non_trainable_params", "macs", "adds", "binary_ops", "param_bits",
        and optionally "note" and keys added by registered counters. Rows of
        layers that sum products also have the accumulator fields "fan_in",
        "weight_bits", "activation_bits", "accumulator_bits_rule",
        "accumulator_bits_exact" (None unless the integer kernel is known) and
        "overflows_16bit" (`tfcompress.analysis.accumulator_bits`). "total"
        sums every other numeric key; `total["params"] == model.count_params()`
        for a model without wrappers.

    Raises:
        ValueError: if `model` is not a Keras model, is not built, is a
            subclassed model (no layer graph to walk), or has an unknown
            dimension where an operation count needs it.

    Example:
        >>> model = tfcompress.models.lenet_300_100()
        >>> result = profile(model)
        >>> result["total"]["params"], result["total"]["macs"]
        (266610, 266200)
        >>> print(format_profile(result))
        >>> result["layers"][1]["fan_in"], result["layers"][1]["accumulator_bits_rule"]
        (784, 26)

    Reference:
        Han, Mao, Dally, "Deep Compression", ICLR 2016 (params/MACs tables);
        Chen et al., "AdderNet", CVPR 2020 (2 additions per adder MAC);
        Rastegari et al., "XNOR-Net", ECCV 2016 (binary operations);
        Jacob et al., CVPR 2018, and Colbert et al., "A2Q", ICCV 2023
        (accumulator widths).
    """
    if not isinstance(model, keras.Model):
        raise ValueError(  # noqa: TRY004
            f"`model` must be a keras.Model. Received: model={model!r}"
        )
    if not model.built or (isinstance(model, keras.Sequential) and not is_graph_model(model)):
        raise ValueError(
            f"Model {model.name!r} is not built, so its layer shapes are unknown. "
            "Give it an input shape: start it with `keras.Input(shape=...)`, or call "
            "`model.build((None, *input_shape))` before profiling."
        )
    try:
        check_model(model, "profile")
    except ValueError as error:
        if "subclassed" not in str(error):
            raise
        raise ValueError(
            f"Model {model.name!r} is a subclassed {type(model).__name__}: it has no "
            "layer graph to profile. Profile a functional or Sequential model, e.g. "
            "`inputs = keras.Input(shape); keras.Model(inputs, model(inputs))` "
            "counts it as one layer."
        ) from None
    graph = ModelGraph(model)
    seen = set()
    rows = [_layer_row(graph, layer, seen) for layer in graph.layers]
    # Weights the model holds outside its layers (rare), so the total matches.
    params, trainable, bits = _new_params(model, seen)
    if params:
        rows.append(
            _row("(model weights)", model, None, params, trainable, {"param_bits": bits})
        )
    total = {}
    for row in rows:
        for key, value in row.items():
            if key in ("name", "type", "output_shape", "note") or key in ACCUMULATOR_KEYS:
                continue
            total[key] = total.get(key, 0) + value
    for key in ROW_KEYS[3:]:
        total.setdefault(key, 0)
    result = {"model": model.name, "layers": rows, "total": total}
    if print_table:
        print(format_profile(result))
    return result


# --------------------------------------------------------------------------- table


def _shape_text(shape):
    if shape is None:
        return "-"
    if _is_multi(shape):
        return ", ".join(_shape_text(s) for s in shape)
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def _human(n):
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def format_profile(result):
    """Formats a `profile` result as an aligned text table.

    One line per layer (name, type, output shape, params, non-trainable params,
    MACs, adds, binary ops, bits, then the accumulator bits by the rule and
    exactly, "-" where the integer weights are not known), a total line, a
    summary with the weight size in bytes at the counted bit widths, and a line
    naming the layers whose accumulator needs more than 16 bits (the exact bits
    when known, else the rule's).

    Args:
        result: the dict returned by `profile`.

    Returns:
        The table as a string (no trailing newline).

    Raises:
        ValueError: if `result` is not a `profile` result.

    Example:
        >>> print(format_profile(profile(model)))
    """
    if not isinstance(result, dict) or "layers" not in result or "total" not in result:
        raise ValueError(
            "`result` must be the dict returned by profile(model), with 'layers' "
            f"and 'total'. Received: {type(result).__name__}"
        )
    columns = [
        ("Layer", "name", "<"),
        ("Type", "type", "<"),
        ("Output shape", "output_shape", "<"),
        ("Params", "params", ">"),
        ("Non-train", "non_trainable_params", ">"),
        ("MACs", "macs", ">"),
        ("Adds", "adds", ">"),
        ("Binary ops", "binary_ops", ">"),
        ("Bits", "param_bits", ">"),
        ("Acc rule", "accumulator_bits_rule", ">"),
        ("Acc exact", "accumulator_bits_exact", ">"),
    ]

    def cell(row, key):
        value = row.get(key, "")
        if key == "output_shape":
            return _shape_text(value)
        if key == "accumulator_bits_exact" and value is None:
            return "-"
        if isinstance(value, numbers.Number) and not isinstance(value, bool):
            return f"{value:,}"
        return str(value)

    total_row = dict(result["total"], name="Total", type="", output_shape="")
    body = [[cell(row, key) for _, key, _ in columns] for row in result["layers"]]
    notes = [row.get("note", "") for row in result["layers"]]
    total_cells = [cell(total_row, key) for _, key, _ in columns]
    total_cells[2] = ""
    widths = [
        max(len(title), len(total_cells[i]), *(len(line[i]) for line in body))
        for i, (title, _, _) in enumerate(columns)
    ]

    def fmt(cells):
        return "  ".join(
            f"{text:{align}{width}}" for text, (_, _, align), width in zip(cells, columns, widths)
        ).rstrip()

    rule = "-" * len(fmt(["x" * w for w in widths]))
    lines = [f"Model: {result.get('model', '')}", rule, fmt([c[0] for c in columns]), rule]
    for cells, note in zip(body, notes):
        lines.append(fmt(cells) + (f"  # {note}" if note else ""))
    lines += [rule, fmt(total_cells), rule]
    total = result["total"]
    lines.append(
        f"Params: {total.get('params', 0):,} ({total.get('non_trainable_params', 0):,} "
        f"non-trainable, e.g. BN moving mean/variance)  MACs: {_human(total.get('macs', 0))}  "
        f"Adds: {_human(total.get('adds', 0))}  "
        f"Binary ops: {_human(total.get('binary_ops', 0))}"
    )
    lines.append(
        f"Weights: {total.get('param_bits', 0) / 8 / 1024:,.1f} KiB at the counted bit widths "
        "(dtype bits; binary kernels 1 bit). Counts per example; BN folded: 0 MACs."
    )
    lines.append(_overflow_line(result["layers"]))
    return "\n".join(lines)


def _overflow_line(rows, shown=8):
    """The summary line of the layers whose accumulator needs more than 16 bits."""
    summing = [row for row in rows if "overflows_16bit" in row]
    over = []
    for row in summing:
        if row["overflows_16bit"]:
            exact = row.get("accumulator_bits_exact")
            bits = row["accumulator_bits_rule"] if exact is None else exact
            over.append(f"{row['name']} ({bits})")
    head = (
        f"Accumulators over 16 bits (exact when known, else the rule): {len(over)} of "
        f"{len(summing)} layers"
    )
    if not over:
        return head + "."
    more = f", ... {len(over) - shown} more" if len(over) > shown else ""
    return head + ": " + ", ".join(over[:shown]) + more
