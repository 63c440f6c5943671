"""Energy of one inference, estimated per layer from its operations and memory traffic.

Yang, Chen, Sze, "Designing Energy-Efficient Convolutional Neural Networks using
Energy-Aware Pruning", CVPR 2017, estimate a layer's energy from its computation
and its data movement. This module uses the 45 nm figures of Horowitz (ISSCC 2014),
as Han et al. quote them in "Learning both Weights and Connections" (NeurIPS 2015):

    operation             pJ       operation              pJ
    32-bit float MULT     3.7      32-bit int MULT        3.1
    32-bit float ADD      0.9      32-bit int ADD         0.1
     8-bit int MULT       0.2       8-bit int ADD         0.03
    32-bit SRAM read      5        32-bit DRAM read       640

and, per layer and example:

    compute = MACs * (MULT + ADD) + adds * ADD
    weights = (weight bits / 32) * DRAM          (every weight read once from DRAM)
    activations = (input + output elements) * (bits / 32) * SRAM

Binary operations (XNOR + popcount) are counted as 8-bit additions. This is an
estimate for comparing models and layers, not a measurement of any chip.

Example:
    >>> energy = estimate_energy(model)
    >>> energy["total"]["total_pj"]
"""

import math

from tfcompress.analysis.profile import profile
from tfcompress.core.graph import ModelGraph

__all__ = ["HOROWITZ_45NM_PJ", "PRECISIONS", "estimate_energy", "layer_energy"]

HOROWITZ_45NM_PJ = {
    "float32_mult": 3.7,
    "float32_add": 0.9,
    "int32_mult": 3.1,
    "int32_add": 0.1,
    "int8_mult": 0.2,
    "int8_add": 0.03,
    "sram_32bit": 5.0,
    "dram_32bit": 640.0,
}
PRECISIONS = ("float32", "int8")


def _check_precision(precision):
    if precision not in PRECISIONS:
        raise ValueError(
            f"`precision` must be one of {', '.join(map(repr, PRECISIONS))}. "
            f"Received: precision={precision!r}"
        )
    return precision


def layer_energy(macs, adds, binary_ops, weight_bits, activations, precision="float32"):
    """Energy in pJ of one layer: (compute, weight memory, activation memory).

    Args:
        macs, adds, binary_ops: the layer's operations for one example.
        weight_bits: bits of its weights as stored.
        activations: input plus output elements it reads and writes.
        precision: "float32" or "int8" (arithmetic and activation width).
    """
    precision = _check_precision(precision)
    table = HOROWITZ_45NM_PJ
    mult, add = table[f"{precision}_mult"], table[f"{precision}_add"]
    bits = 32 if precision == "float32" else 8
    compute = macs * (mult + add) + adds * add + binary_ops * table["int8_add"]
    weights = weight_bits / 32.0 * table["dram_32bit"]
    memory = activations * bits / 32.0 * table["sram_32bit"]
    return compute, weights, memory


def estimate_energy(model, precision="float32"):
    """Per-layer energy estimate of one inference (module docstring).

    Args:
        model: a built functional or Sequential model (what `profile` takes).
        precision: "float32" or "int8".

    Returns:
        {"model", "precision", "layers": [row, ...], "total": {...}}; every row has
        "name", "compute_pj", "weights_pj", "activations_pj", "total_pj".

    Raises:
        ValueError: as `profile`, or for an unknown precision.
    """
    precision = _check_precision(precision)
    result = profile(model)
    graph = ModelGraph(model)
    elements = {}
    for layer in graph.layers:
        nodes = graph.nodes_of(layer)
        count = 0
        for node in nodes:
            for tensor in node.inputs + node.outputs:
                count += math.prod(d for d in tensor.shape[1:] if d is not None)
        elements["/".join(nodes[0].path + (layer.name,))] = count
    rows, total = [], {"compute_pj": 0.0, "weights_pj": 0.0, "activations_pj": 0.0}
    for row in result["layers"]:
        compute, weights, memory = layer_energy(
            row["macs"], row["adds"], row["binary_ops"], row["param_bits"],
            elements.get(row["name"], 0), precision,
        )
        rows.append({"name": row["name"], "compute_pj": compute, "weights_pj": weights,
                     "activations_pj": memory, "total_pj": compute + weights + memory})
        total["compute_pj"] += compute
        total["weights_pj"] += weights
        total["activations_pj"] += memory
    total["total_pj"] = total["compute_pj"] + total["weights_pj"] + total["activations_pj"]
    return {"model": model.name, "precision": precision, "layers": rows, "total": total}
