"""Groups of coupled channels: which channels of a model must be removed together.

Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023: removing a
producer's output channel removes the matching input channel of every consumer, and
passes through channel-preserving layers (BatchNormalization, activations, pooling,
depthwise convolutions) to the consumers behind them; an element-wise merge (a
residual Add) makes its inputs' channels one, so every branch loses the same ones;
a concatenation keeps each input's channels at an offset; Flatten -> Dense loses a
block of H*W rows per channel.

`ChannelAnalysis` walks the model's `ModelGraph` once. Every tensor's last axis is a
list of channel units; each layer's `ChannelHandler` (`handlers`) says how its
outputs' units follow from its inputs'; units that must go together are joined
(union-find). A group is the set of units that one or more producers' output
channels are joined into: one channel of a group is one class of joined units.
Units that cannot be removed (a model input or output, a layer the analysis cannot
follow) pin their group, and the group says why.

Composite tfcompress layers (GhostConv, GhostBottleneck, ShiftConv, binarized
BinaryConv) are analysed in their lowered form (`tfcompress.lowering`), where their
convolutions, depthwise convolutions and concatenations are ordinary layers.
"""

import dataclasses

import numpy as np

from tfcompress.core.graph import ModelGraph
from tfcompress.pruning.channels.handlers import handler_for

__all__ = ["ChannelAnalysis", "ChannelGroup"]


@dataclasses.dataclass
class ChannelGroup:
    """Channels of a model that are removed together.

    Attributes:
        name: the group's name: its first producer's layer name.
        channels: how many channels it has (each may span several layers).
        producers: the layers whose output channels these are.
        members: (layer name, role) of every layer the channels touch: "out" (a
            producer's output channels), "in" (a consumer's input channels) or
            "through" (a channel-preserving layer).
        prunable: whether channels of this group can be removed.
        reason: why not, or None.
    """

    name: str
    channels: int
    producers: list
    members: list
    prunable: bool
    reason: str | None
    units: list = dataclasses.field(default_factory=list, repr=False)

    def __str__(self):
        state = "prunable" if self.prunable else f"not prunable: {self.reason}"
        return (f"{self.name}: {self.channels} channels, producers {self.producers}, "
                f"{len(self.members)} members ({state})")


class _UnionFind:
    def __init__(self):
        self.parent = []

    def add(self, n):
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return start

    def find(self, a):
        parent = self.parent
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:
            parent[a], a = root, parent[a]
        return root

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if rb < ra:
                ra, rb = rb, ra
            self.parent[rb] = ra
        return ra


class ChannelAnalysis:
    """The channel units of every tensor of a model, joined into groups.

    Args:
        model: a built functional or Sequential model of plain layers (lowered,
            without pruning / clustering / QAT wrappers).

    Attributes:
        graph: the model's `ModelGraph`.
        maps: tensor index -> list of unit ids, one per channel of its last axis.
        groups: the `ChannelGroup`s, in graph order of their first producer.
        roles: (node, role, input index) of every layer that touches channels.
        consumer_nodes: (node, input index) of every call that takes channels as input
            channels (its weights have an input-channel axis).
    """

    def __init__(self, model):
        self.graph = ModelGraph(model)
        self.model = model
        self._units = _UnionFind()
        self._spaces = _UnionFind()
        self._unit_space = []
        self._space_info = []  # per space: (node or None, output index, pinned reason)
        self._layer_spaces = {}  # (id(layer), output index) -> first unit of its space
        self._pins = {}  # unit -> reason
        self.maps = {}
        self.roles = []
        self.consumer_nodes = []  # (node, input index)
        self._first_call = {}  # id(layer) -> its first node in graph order
        for tensor in self.graph.inputs:
            self.maps[tensor.index] = self._allocate(
                tensor.shape[-1] if tensor.shape else 1, None, 0,
                f"its channels are those of model input {tensor.name!r}",
            )
        for node in self.graph.nodes:
            in_maps = [self.maps[t.index] for t in node.inputs]
            handler = handler_for(node.layer)
            first = self._first_call.setdefault(id(node.layer), node)
            out_maps = handler.propagate(self, node, in_maps)
            if first is not node and handler.slices(node.layer):
                # Shared weights: every call of the layer keeps the same channels.
                for t_first, t_now in zip(first.inputs, node.inputs):
                    for a, b in zip(self.maps[t_first.index], self.maps[t_now.index]):
                        self.union(a, b)
            for tensor, keys in zip(node.outputs, out_maps):
                if len(keys) != (tensor.shape[-1] if tensor.shape else 1):
                    raise ValueError(
                        f"The channel handler of {node.name!r} gave {len(keys)} channels for "
                        f"an output of shape {tensor.shape}."
                    )
                self.maps[tensor.index] = list(keys)
        for tensor in self.graph.outputs:
            self.pin(self.maps[tensor.index], f"its channels are model output {tensor.name!r}")
        self.groups = self._make_groups()

    # ----------------------------------------------------------- for the handlers

    def _allocate(self, size, node, output, pinned):
        start = self._units.add(size)
        space = self._spaces.add(1)
        self._unit_space.extend([space] * size)
        self._space_info.append((node, output, pinned))
        keys = list(range(start, start + size))
        if pinned:
            self.pin(keys, pinned)
        return keys

    def new_space(self, node, size, output=0, pinned=None):
        """New channel units for output `output` of `node` (the same ones for every call
        of a shared layer); `pinned` gives the reason they cannot be removed."""
        key = (id(node.layer), output)
        if key not in self._layer_spaces:
            self._layer_spaces[key] = self._allocate(size, node, output, pinned)[0]
            self.roles.append((node, "out", None))
        start = self._layer_spaces[key]
        return list(range(start, start + size))

    def union(self, a, b):
        """Makes units a and b one (they must be removed together)."""
        self._units.union(a, b)
        self._spaces.union(self._unit_space[a], self._unit_space[b])

    def pin(self, keys, reason):
        """Marks units as not removable, with the reason."""
        for key in keys:
            self._pins.setdefault(key, reason)

    def consume(self, node, input_index):
        """Records that `node` takes the channels of input `input_index` as input channels."""
        if self._first_call.get(id(node.layer)) is node:
            self.roles.append((node, "in", input_index))
        self.consumer_nodes.append((node, input_index))

    def through(self, node):
        """Records that `node` passes its input channels on."""
        if self._first_call.get(id(node.layer)) is node:
            self.roles.append((node, "through", 0))

    # ----------------------------------------------------------- queries

    def find(self, unit):
        """The class (root unit) of a unit: units of one class go together."""
        return self._units.find(unit)

    def roots(self, tensor):
        """The class of every channel of a `GraphTensor`."""
        return [self.find(k) for k in self.maps[tensor.index]]

    def kept(self, tensor, removed):
        """Indices of the channels of `tensor` whose class is not in `removed`."""
        return [i for i, k in enumerate(self.maps[tensor.index]) if self.find(k) not in removed]

    def group_of(self, unit):
        return self._group_index.get(self._spaces.find(self._unit_space[unit]))

    def _make_groups(self):
        components = {}
        for space, (node, output, pinned) in enumerate(self._space_info):
            if node is None:
                continue  # a model input's channels: no group of their own
            components.setdefault(self._spaces.find(space), []).append(space)
        groups, self._group_index = [], {}
        order = sorted(components.items(), key=lambda item: min(
            self._space_info[s][0].index for s in item[1]))
        for component, spaces in order:
            producers = [self._space_info[s][0] for s in spaces]
            producers.sort(key=lambda n: n.index)
            units, seen = [], set()
            for node in producers:
                start = self._layer_spaces[(id(node.layer), 0)]
                size = node.outputs[0].shape[-1]
                for unit in range(start, start + size):
                    root = self.find(unit)
                    if root not in seen:
                        seen.add(root)
                        units.append(root)
            self._group_index[component] = len(groups)
            groups.append(ChannelGroup(
                name=producers[0].name, channels=len(units),
                producers=[n.name for n in producers], members=[], prunable=True, reason=None,
                units=units,
            ))
        for unit, reason in self._pins.items():
            index = self.group_of(unit)
            if index is not None and groups[index].prunable:
                groups[index].prunable = False
                groups[index].reason = reason
        for node, role, input_index in self.roles:
            tensors = node.outputs if role == "out" else [node.inputs[input_index or 0]]
            touched = {self.group_of(k) for t in tensors for k in self.maps[t.index]}
            for index in sorted(i for i in touched if i is not None):
                entry = (node.name, role)
                if entry not in groups[index].members:
                    groups[index].members.append(entry)
        return groups

    def zero_classes(self):
        """The classes that are exactly zero everywhere, and whose removal changes no
        output (every consumer ignores an all-zero input channel)."""
        zeros = {}
        for tensor in self.graph.inputs:
            zeros[tensor.index] = np.zeros(len(self.maps[tensor.index]), bool)
        for node in self.graph.nodes:
            handler = handler_for(node.layer)
            in_zero = [zeros[t.index] for t in node.inputs]
            for tensor, zero in zip(node.outputs, handler.zero(node.layer, node, in_zero)):
                zeros[tensor.index] = np.asarray(zero, bool)
        candidate = {}
        for index, keys in self.maps.items():
            for key, zero in zip(keys, zeros[index]):
                root = self.find(key)
                candidate[root] = candidate.get(root, True) and bool(zero)
        for node, input_index in self.consumer_nodes:
            if not handler_for(node.layer).neutral(node.layer):
                for root in self.roots(node.inputs[input_index]):
                    candidate[root] = False
        return {root for root, zero in candidate.items() if zero}

    def tensors_of(self, root):
        """{tensor index: how many of its channels are in class `root`}."""
        out = {}
        for index, keys in self.maps.items():
            count = sum(1 for k in keys if self.find(k) == root)
            if count:
                out[index] = count
        return out
