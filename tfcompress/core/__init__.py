"""The graph core every technique shares.

- `graph`: `ModelGraph`, the flat graph of any functional or Sequential model (nodes
  per call, producers and consumers of every tensor, nested models expanded); the
  only module of tfcompress that reads private Keras attributes.
- `traits`: one registry per layer type (weight matrices, channel axes, kind, and the
  fields techniques register: profile counters, lowerings, quantization roles).
- `rewrite`: `rebuild`, a model rebuilt from its graph with layers replaced or
  inserted and weights copied.
- `wrapper`: `KernelWrapper`, the base of the pruning and clustering wrappers, and
  their wrap / strip drivers.
- `args`: argument checks shared by every module.
"""

from tfcompress.core import args, graph, rewrite, traits, wrapper
from tfcompress.core.graph import (
    GraphNode,
    GraphTensor,
    ModelGraph,
    all_layers,
    check_model,
    is_graph_model,
    layer_call_inputs,
)
from tfcompress.core.rewrite import Rebuild, built_copy, fresh_copy, rebuild
from tfcompress.core.traits import (
    LayerTraits,
    has_kernels,
    kernel_variables,
    layer_traits,
    register_layer_traits,
)
from tfcompress.core.wrapper import KernelWrapper

__all__ = [
    "GraphNode",
    "GraphTensor",
    "KernelWrapper",
    "LayerTraits",
    "ModelGraph",
    "Rebuild",
    "all_layers",
    "args",
    "built_copy",
    "check_model",
    "fresh_copy",
    "graph",
    "has_kernels",
    "is_graph_model",
    "kernel_variables",
    "layer_call_inputs",
    "layer_traits",
    "rebuild",
    "register_layer_traits",
    "rewrite",
    "traits",
    "wrapper",
]
