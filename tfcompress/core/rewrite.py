"""Rebuilding a model from its graph, with layers replaced, inserted or copied.

`rebuild(model, layer_fn=..., node_fn=..., input_fn=...)` walks `ModelGraph(model)` in
topological order and calls new layers on new `keras.Input`s:

- by default every layer is copied (`from_config`, same flat name) and its weights
  are copied once it is built, so the result computes what the model computed;
- `layer_fn(layer, name)` may return a replacement for a layer (e.g. a pruning
  wrapper around a copy of it); it is asked once per layer, and the replacement is
  called wherever the layer was (a shared layer stays shared); it brings its own
  weights;
- `node_fn(node, args, kwargs, rebuild)` may return the outputs of one call
  computed any other way (several layers in place of one: lowering; a layer
  absorbed into the previous one: BatchNorm folding); `rebuild.call(node, args,
  kwargs)` is the default;
- `input_fn(tensor, keras_input)` may put a layer after a model input (the input
  quantizer of QAT).

Nested models come out flattened (their layers are nodes of the graph); the
input and output structures (single tensor, list, dict) are kept. A Sequential
model whose rebuild is still a plain chain of one-to-one replacements comes back
as a Sequential; everything else as a functional `keras.Model`.

Example:
    >>> stripped = rebuild(model, layer_fn=lambda layer, name: None)  # a copy
"""

import inspect

import keras

from tfcompress.core.graph import GraphTensor, ModelGraph

__all__ = ["Rebuild", "built_copy", "fresh_copy", "rebuild"]


def fresh_copy(layer, name=None):
    """A new, unbuilt layer with `layer`'s config (and `name`, if given)."""
    config = layer.get_config()
    if name is not None:
        config["name"] = name
    try:
        return layer.__class__.from_config(config)
    except Exception as error:
        raise ValueError(
            f"Cannot copy layer {layer.name!r} ({type(layer).__name__}) from its config: "
            f"{error}. Give it a get_config() that returns its constructor arguments."
        ) from error


def built_copy(layer, weights=None, name=None):
    """A new layer with `layer`'s config, built, holding `weights` (default: its own).

    Args:
        layer: a layer (built or not).
        weights: a list of NumPy arrays in `layer.get_weights()` order, or None.
        name: a new name, or None to keep the layer's.

    Returns:
        The copy; unbuilt if `layer` is unbuilt.

    Raises:
        ValueError: if a built layer has no build config (input shape) to build from.
    """
    new = fresh_copy(layer, name)
    if layer.built:
        build_config = layer.get_build_config()
        if build_config is None:
            raise ValueError(
                f"Cannot copy layer {layer.name!r}: it has no build config (input shape)."
            )
        new.build_from_config(build_config)
        new.set_weights(layer.get_weights() if weights is None else weights)
    return new


class Rebuild:
    """One rebuild in progress: the new layer of every original layer, and the default call.

    Passed to `node_fn`; `rebuild()` drives it.

    Attributes:
        graph: the `ModelGraph` being rebuilt.
    """

    def __init__(self, graph, layer_fn=None):
        self.graph = graph
        self._layer_fn = layer_fn
        self._new = {}  # id(original layer) -> new layer
        self._weights_due = {}  # id(new layer) -> original, copied after the first call

    def layer(self, original):
        """The new layer standing for `original` (its replacement, or a copy)."""
        key = id(original)
        if key not in self._new:
            name = self.graph.name_of(original)
            new = self._layer_fn(original, name) if self._layer_fn is not None else None
            if new is None:
                new = fresh_copy(original, name)
                self._weights_due[id(new)] = original
            self._new[key] = new
        return self._new[key]

    def call(self, node, args, kwargs):
        """The default for a node: its new layer called on the new arguments."""
        layer = self.layer(node.layer)
        if node.training is not None and "training" not in kwargs and _takes_training(layer):
            kwargs = dict(kwargs, training=node.training)
        outputs = layer(*args, **kwargs)
        original = self._weights_due.pop(id(layer), None)
        # A keras.ops call in a functional graph is an Operation without weights.
        if original is not None and isinstance(layer, keras.layers.Layer):
            layer.set_weights(original.get_weights())
        return outputs


def _takes_training(layer):
    return "training" in inspect.signature(layer.call).parameters


def _new_input(tensor):
    kt = tensor.keras_tensor
    return keras.Input(
        batch_shape=tensor.shape, dtype=tensor.dtype, name=tensor.name,
        sparse=bool(getattr(kt, "sparse", False)),
    )


def rebuild(model, layer_fn=None, node_fn=None, input_fn=None, *, name=None,
            keep_sequential=True):
    """Rebuilds a model from its graph (module docstring).

    Args:
        model: a built functional or Sequential model, or its `ModelGraph`.
        layer_fn: None, or `fn(layer, name) -> new layer or None` (None: copy it).
        node_fn: None, or `fn(node, args, kwargs, rebuild) -> outputs or None`
            (None: `rebuild.call(node, args, kwargs)`).
        input_fn: None, or `fn(graph_tensor, keras_input) -> tensor` for each model
            input.
        name: the new model's name (default: the model's).
        keep_sequential: return a Sequential for a Sequential model whose rebuild is a
            chain of one-to-one layer replacements.

    Returns:
        A new, uncompiled `keras.Model`.

    Raises:
        ValueError: as `ModelGraph`, or when a layer cannot be copied from its config
            or `node_fn` returns the wrong number of outputs.
    """
    graph = model if isinstance(model, ModelGraph) else ModelGraph(model)
    source = graph.model
    name = source.name if name is None else name
    state = Rebuild(graph, layer_fn)
    if (keep_sequential and isinstance(source, keras.Sequential) and node_fn is None
            and input_fn is None and graph.is_chain()):
        return _rebuild_sequential(graph, state, name)
    values = {}
    new_inputs = []
    for tensor in graph.inputs:
        keras_input = _new_input(tensor)
        new_inputs.append(keras_input)
        values[tensor.index] = keras_input if input_fn is None else input_fn(tensor, keras_input)

    def new_value(v):
        return values[v.index] if isinstance(v, GraphTensor) else v

    for node in graph.nodes:
        args = keras.tree.map_structure(new_value, node.args)
        kwargs = keras.tree.map_structure(new_value, node.kwargs)
        outputs = node_fn(node, args, kwargs, state) if node_fn is not None else None
        if outputs is None:
            outputs = state.call(node, args, kwargs)
        flat = keras.tree.flatten(outputs)
        if len(flat) != len(node.outputs):
            raise ValueError(
                f"Rebuilding {node.label!r} gave {len(flat)} outputs; the layer has "
                f"{len(node.outputs)}."
            )
        for tensor, value in zip(node.outputs, flat):
            values[tensor.index] = value
    inputs = keras.tree.map_structure(
        lambda t: new_inputs[graph.inputs.index(t)], graph.input_structure
    )
    outputs = keras.tree.map_structure(new_value, graph.output_structure)
    return keras.Model(inputs, outputs, name=name)


def _rebuild_sequential(graph, state, name):
    layers = [state.layer(node.layer) for node in graph.nodes]
    tensor = graph.inputs[0]
    model = keras.Sequential(
        [keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype)] + layers, name=name
    )
    for new in layers:
        original = state._weights_due.pop(id(new), None)
        if original is not None:
            new.set_weights(original.get_weights())
    return model
