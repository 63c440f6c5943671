"""`decompose_model`: layers replaced by chains of smaller plain Keras layers."""

import dataclasses

import keras
import numpy as np

from tfcompress.core.graph import ModelGraph, check_model
from tfcompress.core.rewrite import rebuild
from tfcompress.decomposition import factor

__all__ = ["METHODS", "DecompositionReport", "decompose_model"]

METHODS = ("auto", "svd", "tucker2", "cp")
RANK_SELECTIONS = ("vbmf",)


@dataclasses.dataclass
class DecompositionReport:
    """What `decompose_model` did, one dict per considered layer.

    Each row: "layer", "method", "ranks", "params" (before, after), "macs" (before,
    after, per example), "error" (relative Frobenius reconstruction error of the
    weight), "replaced" (False when the chain would not have had fewer MACs).
    """

    layers: list

    def __str__(self):
        lines = [(f"{'layer':<28} {'method':<8} {'ranks':<10} {'params':>19} {'MACs':>23} "
                 f"{'error':>7}")]
        for row in self.layers:
            ranks = "x".join(str(r) for r in row["ranks"])
            lines.append(
                f"{row['layer']:<28} {row['method']:<8} {ranks:<10} "
                f"{row['params'][0]:>9,}->{row['params'][1]:<9,} "
                f"{row['macs'][0]:>11,}->{row['macs'][1]:<11,} {row['error']:>7.4f}"
                + ("" if row["replaced"] else "  (kept: no fewer MACs)")
            )
        return "\n".join(lines)


def _check_fraction(name, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"`{name}` must be a fraction in (0, 1]. Received: {name}={value!r}")
    return float(value)


def _decomposable(layer):
    """'dense', 'pointwise', 'conv' or None."""
    if type(layer) is keras.layers.Dense:
        return "dense"
    if type(layer) is keras.layers.Conv2D and layer.groups == 1 and (
            layer.data_format == "channels_last"):
        return "pointwise" if tuple(layer.kernel_size) == (1, 1) else "conv"
    return None


def _positions(shape):
    """Spatial positions of a (batch, ..., channels) shape (1 for a vector)."""
    return int(np.prod([d for d in shape[1:-1]])) if len(shape) > 2 else 1


def decompose_model(model, *, method="auto", rank=None, energy=None, ratio=None,
                    rank_selection="vbmf", exclude=(), only_if_fewer_macs=True, seed=0):
    """A new model with Dense / Conv2D layers replaced by low-rank chains of plain layers.

    - Dense and 1x1 Conv2D: truncated SVD, W (m x n) ~= U_r S_r V_r^T as Dense(r, no
      bias) -> Dense(n) (or two 1x1 convolutions, the first with the stride).
    - Conv2D k x k: Tucker-2 (Kim et al. 2016), 1x1 (C_in -> R1) -> k x k (R1 -> R2,
      same strides / padding / dilation) -> 1x1 (R2 -> C_out, bias, activation); or,
      with method="cp", CP (Lebedev et al. 2015): 1x1 (C_in -> R) -> depthwise
      k_h x 1 -> depthwise 1 x k_w -> 1x1 (R -> C_out).

    A layer is replaced only when the chain has fewer multiply-adds than the layer.
    Weights come from the decomposition; the model is ready for fine-tuning, pruning,
    QAT and int8 export. At full rank the chain computes what the layer computed.

    Args:
        model: a built functional or Sequential model (nested models flattened).
        method: "auto" (SVD for Dense / 1x1, Tucker-2 for k x k), "svd" (only Dense and
            1x1 convolutions), "tucker2" or "cp" (only k x k convolutions).
        rank: an int for every layer, or {layer name: int or (R1, R2)}; layers not in
            the dict are kept.
        energy: keep the smallest rank whose singular values hold this fraction of
            the squared spectrum (per unfolding for Tucker-2), in (0, 1].
        ratio: keep about this fraction of each layer's parameters, in (0, 1].
        rank_selection: with none of rank / energy / ratio, "vbmf": empirical
            variational Bayesian matrix factorization (Nakajima et al. 2013) on the
            weight matrix or the two mode unfoldings, as Kim et al. do.
        exclude: layer names to keep as they are.
        only_if_fewer_macs: replace a layer only when its chain has fewer
            multiply-adds (False: replace every chosen layer, e.g. to check that a
            full-rank chain computes what the layer computed).
        seed: seed of the Tucker iterations.

    Returns:
        A new `keras.Model`; its `decomposition_report` attribute is a
        `DecompositionReport`. The input model is not modified.

    Raises:
        ValueError: for an unknown method or rank_selection, two of rank / energy /
            ratio, an energy or ratio outside (0, 1], a rank <= 0 or above what the
            layer allows, a layer name (in rank or exclude) that is not in the model,
            or a subclassed model.

    Example:
        >>> small = decompose_model(model, energy=0.9)
        >>> print(small.decomposition_report)
    """
    check_model(model, "decompose_model")
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {', '.join(METHODS)}. Received: "
                         f"method={method!r}")
    given = [f"{name}={v!r}" for name, v in (("rank", rank), ("energy", energy),
                                              ("ratio", ratio)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"Give one of rank, energy and ratio. Received: {', '.join(given)}")
    energy, ratio = _check_fraction("energy", energy), _check_fraction("ratio", ratio)
    if not given and rank_selection not in RANK_SELECTIONS:
        raise ValueError(f"`rank_selection` must be one of {', '.join(RANK_SELECTIONS)}. "
                         f"Received: rank_selection={rank_selection!r}")
    graph = ModelGraph(model)
    names = {graph.name_of(layer): layer for layer in graph.layers}
    exclude = set(exclude)
    for name in sorted(exclude | (set(rank) if isinstance(rank, dict) else set())):
        if name not in names:
            raise ValueError(f"No layer named {name!r} in model {model.name!r}. Layers: "
                             f"{', '.join(names)}.")
    if rank is not None and not isinstance(rank, dict):
        _check_rank_value(rank, "rank")

    plans, rows = {}, []
    for name, layer in names.items():
        kind = _decomposable(layer)
        if kind is None or name in exclude:
            continue
        if (method == "svd" and kind == "conv") or (method in ("tucker2", "cp")
                                                      and kind != "conv"):
            continue
        layer_rank = rank.get(name) if isinstance(rank, dict) else rank
        if isinstance(rank, dict) and layer_rank is None:
            continue
        node = graph.nodes_of(layer)[0]
        plan = _plan(layer, name, "cp" if method == "cp" and kind == "conv" else kind, node,
                     layer_rank, energy, ratio, seed)
        rows.append(plan["row"])
        if not only_if_fewer_macs:
            plan["row"]["replaced"] = True
        if plan["row"]["replaced"]:
            plans[id(layer)] = plan

    built = {}  # id(original layer) -> its chain, built once (a shared layer stays shared)

    def node_fn(node, args, kwargs, state):
        plan = plans.get(id(node.layer))
        if plan is None:
            return None
        first_call = id(node.layer) not in built
        if first_call:
            built[id(node.layer)] = [cls(**config) for cls, config in plan["configs"]]
        x = args[0]
        for new in built[id(node.layer)]:
            x = new(x)
        if first_call:
            for new, weights in zip(built[id(node.layer)], plan["weights"]):
                new.set_weights(weights)
        return x

    result = rebuild(graph, node_fn=node_fn)
    result.decomposition_report = DecompositionReport(rows)
    return result


def _check_rank_value(value, what):
    values = value if isinstance(value, tuple) else (value,)
    if not values or len(values) > 2 or any(
            isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0
            for v in values):
        raise ValueError(f"`{what}` must be a positive integer or a pair (R1, R2) of them. "
                         f"Received: {what}={value!r}")


def _plan(layer, name, kind, node, layer_rank, energy, ratio, seed):
    """Ranks, replacement layer configs and weights, and the report row of one layer."""
    kernel = np.asarray(layer.kernel)
    bias = [np.asarray(layer.bias)] if layer.use_bias else []
    in_shape, out_shape = node.inputs[0].shape, node.outputs[0].shape
    p_in, p_out = _positions(in_shape), _positions(out_shape)
    activation = layer.activation
    if kind in ("dense", "pointwise"):
        matrix = kernel.reshape(kernel.shape[-2], kernel.shape[-1])
        m, n = matrix.shape
        r = _svd_rank(matrix, name, layer_rank, energy, ratio)
        a, b, error = factor.svd_factors(matrix, r)
        second = {"activation": activation, "use_bias": layer.use_bias,
                  "name": f"{name}_svd_u"}
        if kind == "dense":
            configs = [
                (keras.layers.Dense, {"units": r, "use_bias": False, "name": f"{name}_svd_v"}),
                (keras.layers.Dense, {"units": n, **second}),
            ]
            weights = [[a], [b] + bias]
        else:
            configs = [
                (keras.layers.Conv2D, {"filters": r, "kernel_size": 1, "strides": layer.strides,
                                       "padding": layer.padding, "use_bias": False,
                                       "name": f"{name}_svd_v"}),
                (keras.layers.Conv2D, {"filters": n, "kernel_size": 1, **second}),
            ]
            weights = [[a[None, None]], [b[None, None]] + bias]
        macs = (m * n * p_out, r * (m + n) * p_out)
        params = (m * n + len(bias) * n, r * (m + n) + len(bias) * n)
        ranks, method = (r,), "svd"
    elif kind == "cp":
        kh, kw, c_in, c_out = kernel.shape
        r = _cp_rank(kernel, name, layer_rank, energy, ratio)
        first, vertical, horizontal, last, error = factor.cp_factors(kernel, r, seed)
        (sh, sw), (dh, dw) = layer.strides, layer.dilation_rate
        configs = [
            (keras.layers.Conv2D, {"filters": r, "kernel_size": 1, "use_bias": False,
                                   "name": f"{name}_cp_in"}),
            (keras.layers.DepthwiseConv2D, {"kernel_size": (kh, 1), "strides": (sh, 1),
                                            "padding": layer.padding,
                                            "dilation_rate": (dh, 1), "use_bias": False,
                                            "name": f"{name}_cp_vertical"}),
            (keras.layers.DepthwiseConv2D, {"kernel_size": (1, kw), "strides": (1, sw),
                                            "padding": layer.padding,
                                            "dilation_rate": (1, dw), "use_bias": False,
                                            "name": f"{name}_cp_horizontal"}),
            (keras.layers.Conv2D, {"filters": c_out, "kernel_size": 1,
                                   "activation": activation, "use_bias": layer.use_bias,
                                   "name": f"{name}_cp_out"}),
        ]
        weights = [[first], [vertical], [horizontal], [last] + bias]
        h_mid = in_shape[2]  # after the vertical pass: output rows, input columns
        p_mid = (out_shape[1] or 1) * (h_mid or 1)
        macs = (kh * kw * c_in * c_out * p_out,
                c_in * r * p_in + kh * r * p_mid + kw * r * p_out + r * c_out * p_out)
        nb = len(bias) * c_out
        params = (kh * kw * c_in * c_out + nb, r * (c_in + kh + kw + c_out) + nb)
        ranks, method = (r,), "cp"
    else:
        kh, kw, c_in, c_out = kernel.shape
        r1, r2 = _tucker_ranks(kernel, name, layer_rank, energy, ratio)
        first, core, last, error = factor.tucker2_factors(kernel, (r1, r2), seed)
        configs = [
            (keras.layers.Conv2D, {"filters": r1, "kernel_size": 1, "use_bias": False,
                                   "name": f"{name}_tucker_in"}),
            (keras.layers.Conv2D, {"filters": r2, "kernel_size": (kh, kw),
                                   "strides": layer.strides, "padding": layer.padding,
                                   "dilation_rate": layer.dilation_rate, "use_bias": False,
                                   "name": f"{name}_tucker_core"}),
            (keras.layers.Conv2D, {"filters": c_out, "kernel_size": 1,
                                   "activation": activation, "use_bias": layer.use_bias,
                                   "name": f"{name}_tucker_out"}),
        ]
        weights = [[first], [core], [last] + bias]
        macs = (kh * kw * c_in * c_out * p_out,
                c_in * r1 * p_in + kh * kw * r1 * r2 * p_out + r2 * c_out * p_out)
        nb = len(bias) * c_out
        params = (kh * kw * c_in * c_out + nb, c_in * r1 + kh * kw * r1 * r2 + r2 * c_out + nb)
        ranks, method = (r1, r2), "tucker2"
    row = {"layer": name, "method": method, "ranks": ranks, "params": params, "macs": macs,
               "error": float(error), "replaced": macs[1] < macs[0]}
    return {"row": row, "configs": configs, "weights": weights}


def _svd_rank(matrix, name, layer_rank, energy, ratio):
    limit = min(matrix.shape)
    if layer_rank is not None:
        _check_rank_value(layer_rank, f"rank[{name!r}]")
        if isinstance(layer_rank, tuple):
            raise ValueError(f"Layer {name!r} is decomposed by SVD: give one rank, not a "
                             f"pair. Received: {layer_rank!r}")
        if layer_rank > limit:
            raise ValueError(f"rank {layer_rank} for layer {name!r} is larger than its "
                             f"weight matrix {matrix.shape} allows (at most {limit}).")
        return int(layer_rank)
    if energy is not None:
        return factor.svd_rank_for_energy(matrix, energy)
    if ratio is not None:
        return min(limit, factor.svd_rank_for_ratio(matrix.shape, ratio))
    from tfcompress.decomposition.vbmf import evbmf_rank

    return max(1, min(limit, evbmf_rank(matrix)))


def _cp_rank(kernel, name, layer_rank, energy, ratio):
    if layer_rank is not None:
        _check_rank_value(layer_rank, f"rank[{name!r}]")
        if isinstance(layer_rank, tuple):
            raise ValueError(f"Layer {name!r} is decomposed by CP: give one rank, not a "
                             f"pair. Received: {layer_rank!r}")
        return int(layer_rank)
    if ratio is not None:
        return factor.cp_rank_for_ratio(kernel.shape, ratio)
    if energy is not None:  # CP has no spectrum: the energy rank of the output unfolding
        return factor.svd_rank_for_energy(factor.unfold(kernel, 3), energy)
    from tfcompress.decomposition.vbmf import evbmf_rank

    return max(1, evbmf_rank(factor.unfold(kernel, 3)))


def _tucker_ranks(kernel, name, layer_rank, energy, ratio):
    c_in, c_out = kernel.shape[2], kernel.shape[3]
    if layer_rank is not None:
        _check_rank_value(layer_rank, f"rank[{name!r}]")
        r1, r2 = layer_rank if isinstance(layer_rank, tuple) else (layer_rank, layer_rank)
        if r1 > c_in or r2 > c_out:
            raise ValueError(f"ranks ({r1}, {r2}) for layer {name!r} are larger than its "
                             f"channels allow (at most ({c_in}, {c_out})).")
        return int(r1), int(r2)
    if energy is not None:
        return factor.tucker2_ranks_for_energy(kernel, energy)
    if ratio is not None:
        return factor.tucker2_ranks_for_ratio(kernel.shape, ratio)
    from tfcompress.decomposition.vbmf import evbmf_rank

    return tuple(max(1, min(limit, evbmf_rank(factor.unfold(kernel, mode))))
                 for mode, limit in ((2, c_in), (3, c_out)))
