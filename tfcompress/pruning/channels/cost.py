"""What removing channels saves: a model's MACs or energy as a function of the channels
kept in every tensor, from `tfcompress.profile`'s counts of the unpruned model.

A convolution's or Dense layer's multiply-adds and weights scale with (kept input
channels / input channels) * (kept output channels / output channels), a depthwise
convolution's with its channels, a bias or BatchNormalization with the output
channels, and activations with the channels of every tensor; energy combines them
with `tfcompress.analysis.energy` (Horowitz's 45 nm table).
"""

import math

from tfcompress.analysis.energy import layer_energy
from tfcompress.analysis.profile import count_layer, dtype_bits
from tfcompress.pruning.channels.handlers import (
    DepthwiseHandler,
    ProducerHandler,
    SeparableHandler,
    handler_for,
)

__all__ = ["METRICS", "CostModel"]

METRICS = ("macs", "energy")


class _Term:
    """The cost of one call of a layer, as a function of its tensors' kept channels."""

    def __init__(self, analysis, node):
        layer = node.layer
        handler = handler_for(layer)
        counts = count_layer(layer, node.input_shapes(), node.output_shapes())
        self.inputs = [t.index for t in node.inputs]
        self.outputs = [t.index for t in node.outputs]
        self.ops = {key: float(counts.get(key, 0)) for key in ("macs", "adds", "binary_ops")}
        self.kind = ("depthwise" if isinstance(handler, DepthwiseHandler)
                     else "producer" if isinstance(handler, ProducerHandler) else "other")
        self.depthwise_macs = 0.0
        if isinstance(handler, SeparableHandler):
            shape = node.outputs[0].shape
            kernel = layer.depthwise_kernel.shape
            self.depthwise_macs = float(math.prod(shape[1:-1]) * math.prod(kernel))
            self.ops["macs"] -= self.depthwise_macs
        # Weight bits, each with the roles of the channel axes it has.
        self.weights = []
        slices = handler.slices(layer)
        for var in layer.weights:
            roles = [s.role for s in slices if s.variable(layer) is var]
            self.weights.append((math.prod(var.shape) * dtype_bits(var.dtype), roles))
        self.elements = [(t.index, math.prod(d for d in t.shape[1:] if d is not None))
                         for t in node.inputs + node.outputs]

    def value(self, ratio, metric):
        r_in = ratio(self.inputs[0]) if self.inputs else 1.0
        r_out = ratio(self.outputs[0]) if self.outputs else 1.0
        scale = r_in if self.kind == "depthwise" else r_in * r_out if self.kind == "producer" else 1.0
        macs = self.ops["macs"] * scale + self.depthwise_macs * r_in
        if metric == "macs":
            return macs
        adds, binary = self.ops["adds"] * scale, self.ops["binary_ops"] * scale
        bits = 0.0
        for size, roles in self.weights:
            factor = 1.0
            for role in roles:
                factor *= r_in if role == "in" else r_out
            bits += size * factor
        elements = sum(n * ratio(index) for index, n in self.elements)
        return sum(layer_energy(macs, adds, binary, bits, elements))


class CostModel:
    """MACs ("macs") or estimated energy in pJ ("energy") of the analysed model.

    Args:
        analysis: a `ChannelAnalysis`.
        metric: "macs" or "energy".
    """

    def __init__(self, analysis, metric="macs"):
        if metric not in METRICS:
            raise ValueError(
                f"The target must be one of {', '.join(map(repr, METRICS))}. "
                f"Received: {metric!r}"
            )
        self.metric = metric
        self.analysis = analysis
        graph = analysis.graph
        self.full = {t.index: len(analysis.maps[t.index]) for t in graph.tensors}
        self.terms = [_Term(analysis, node) for node in graph.nodes]
        self.by_tensor = {}
        for i, term in enumerate(self.terms):
            for index in set(term.inputs + term.outputs):
                self.by_tensor.setdefault(index, []).append(i)

    def _ratio(self, counts):
        return lambda index: counts.get(index, self.full[index]) / max(self.full[index], 1)

    def total(self, counts=None):
        """The cost with `counts` {tensor index: kept channels} (default: nothing removed)."""
        ratio = self._ratio(counts or {})
        return sum(term.value(ratio, self.metric) for term in self.terms)

    def saving(self, counts, change):
        """How much cost goes when `change` {tensor index: channels removed} is applied."""
        before, after = self._ratio(counts), dict(counts)
        for index, n in change.items():
            after[index] = counts.get(index, self.full[index]) - n
        after_ratio = self._ratio(after)
        terms = {i for index in change for i in self.by_tensor.get(index, ())}
        return sum(self.terms[i].value(before, self.metric)
                   - self.terms[i].value(after_ratio, self.metric) for i in terms)
