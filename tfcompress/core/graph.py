"""The graph of a Keras model: every call of every layer, with the tensors between them.

`ModelGraph(model)` reads a built functional or Sequential Keras 3 model into one flat
graph that every technique of tfcompress walks (lowering, quantization planning,
profiling, the pruning and clustering drivers, coding), and that `rebuild` turns
back into a model:

- a `GraphNode` per call of a layer, in a topological order (Keras' own: by depth,
  inputs first); a layer called twice (a shared layer) has two nodes;
- a `GraphTensor` per tensor, with its producer node (None for a model input) and
  its consumers;
- nested functional and Sequential models are expanded into their layers, so the
  graph has no model nodes: an inner model's inputs are the tensors the outer model
  passed to it, its outputs are what the outer model received. A `training=` the
  outer model passed to the inner one is kept on the inner nodes. A nested
  subclassed model stays one opaque node (Keras has no graph of it);
- every layer gets a flat name, unique in the graph: its own name, or, if another
  layer of another nested model has that name too, the nested models' names and its
  own joined with "_".

A subclassed model has no graph of its own: `traced_model(model, what)` gives the
functional model its `call()` builds on `keras.Input`s of its build shape (the same
layer objects; the calls it records are removed again afterwards), which `rebuild`
then copies like any other. `all_layers` follows every tracked sublayer of a
subclassed model, custom layers' included.

This is the only module of tfcompress that reads private Keras attributes
(`_keras_history`, `_inbound_nodes`, `_outbound_nodes`, `_nodes_by_depth`,
`_functional`, `_run_through_graph`, `_layers`): Keras 3 has no public API for a
model's nodes. Two more private calls serve `tfcompress.distribute`:
`symbolic_build` (`Model._symbolic_build`, how `fit` builds a model from its data's
shapes) and `optimizer_strategy` (`optimizer._distribution_strategy`). Everything else uses the graph.

Example:
    >>> graph = ModelGraph(model)
    >>> [node.name for node in graph.nodes]
    ['conv1', 'bn1', 'relu1', 'fc']
    >>> graph.edges()
    [('input', 'conv1'), ('conv1', 'bn1'), ('bn1', 'relu1'), ('relu1', 'fc')]
"""

import collections
import contextlib
import inspect

import keras

__all__ = [
    "GraphNode",
    "GraphTensor",
    "ModelGraph",
    "all_layers",
    "check_model",
    "is_graph_model",
    "is_subclassed",
    "layer_call_inputs",
    "optimizer_strategy",
    "subclassed_input_shape",
    "symbolic_build",
    "traced_model",
]


def _functional_of(model):
    """The functional graph of a functional or Sequential model, or None."""
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    if hasattr(model, "_run_through_graph") and hasattr(model, "_nodes_by_depth"):
        return model
    return None


def is_graph_model(model):
    """True for a built functional or Sequential model (one whose graph can be read).

    Args:
        model: anything.

    Returns:
        False for subclassed models, unbuilt Sequential models and non-models.
    """
    return isinstance(model, keras.Model) and _functional_of(model) is not None


def is_subclassed(model):
    """True for a subclassed `keras.Model` (neither functional nor Sequential).

    Args:
        model: anything.

    Returns:
        True for an instance of a `keras.Model` subclass whose layers are attributes
        set in `__init__` and called in `call()` (Keras has no graph of it).
    """
    return (
        isinstance(model, keras.Model) and not isinstance(model, keras.Sequential)
        and not hasattr(model, "_run_through_graph")
    )


def check_model(model, what):
    """Raises a ValueError unless `model` is a built functional or Sequential model.

    Args:
        model: the value received.
        what: the caller's name, for the message (e.g. "prune_low_magnitude").

    Raises:
        ValueError: for a non-model, a subclassed model (Keras has no graph of it:
            rebuild it with the functional API) or an unbuilt model.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"{what} needs a keras.Model. Received: {model!r}")  # noqa: TRY004
    if is_subclassed(model):
        raise ValueError(
            f"{what} needs a functional or Sequential model; {model.name!r} is a subclassed "
            f"{type(model).__name__}, which Keras cannot clone. Rebuild it with the "
            "functional API."
        )
    if not model.built or _functional_of(model) is None:
        raise ValueError(
            f"{what} needs a built model; {model.name!r} is not built. Give it an input "
            "shape (keras.Input) or call it on data first."
        )


def _sublayers(layer):
    """The layers `layer` tracks as attributes (Keras' `_layers`), in assignment order."""
    tracked = getattr(layer, "_layers", None) or []
    return [sub for sub in tracked if isinstance(sub, keras.layers.Layer)]


def all_layers(model_or_layer, wrapped=True, sublayers=False):
    """`model_or_layer` and every layer inside it, depth first, each once.

    Follows the layers of nested models and, with `wrapped`, the layer a wrapper
    holds (`layer.layer`: pruning and clustering wrappers, QAT wrappers). Inside a
    subclassed model (which has no graph) it follows every tracked sublayer: the
    layers set as attributes in `__init__`, also those of custom layers nested in
    it (a wrapper's only through `layer.layer`, as above).

    Args:
        model_or_layer: a model or a layer.
        wrapped: also yield the layers inside wrappers.
        sublayers: follow the tracked sublayers of every layer (custom layers of
            functional models too), not only inside subclassed models.

    Yields:
        Layers (the argument first).

    Example:
        >>> # a subclassed "net": a pruned conv, a Flatten, a custom block holding a pruned fc
        >>> [layer.name for layer in all_layers(net, wrapped=False)]
        ['net', 'prune_low_magnitude_conv', 'flat', 'block', 'prune_low_magnitude_fc']
    """
    seen, stack = set(), [(model_or_layer, sublayers)]
    while stack:
        layer, deep = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer
        subclassed = is_subclassed(layer)
        deep = deep or subclassed
        if isinstance(layer, keras.Model) and not subclassed:
            children = list(getattr(layer, "layers", None) or [])
        elif deep and not isinstance(layer, keras.layers.Wrapper):
            children = _sublayers(layer)
        else:
            children = []
        inner = getattr(layer, "layer", None) if wrapped else None
        if isinstance(inner, keras.layers.Layer):
            children.append(inner)
        stack.extend((child, deep) for child in reversed(children))


def _is_shape(value):
    return isinstance(value, (tuple, list)) and all(
        d is None or isinstance(d, int) for d in value
    )


def subclassed_input_shape(model):
    """The input shape a subclassed model was built with (its first call), or None.

    Args:
        model: a subclassed `keras.Model`.

    Returns:
        `model.get_build_config()["input_shape"]` with the batch axis: a tuple of
        ints / None for one input tensor, else a list or dict of such tuples; None
        when the model has not been built by a call (or was built with several
        keyword arguments).
    """
    config = model.get_build_config() if model.built else None
    shape = (config or {}).get("input_shape")
    if shape is None:
        return None

    def plain(value):
        if _is_shape(value):
            return tuple(value)
        if isinstance(value, dict):
            return {key: plain(v) for key, v in value.items()}
        return [plain(v) for v in value]

    return plain(shape)


def _own_weights(layer):
    """The weights of `layer` that none of its sublayers holds."""
    held = {id(w) for sub in _sublayers(layer) for w in sub.weights}
    return [w for w in layer.weights if id(w) not in held]


def _inline(functional, inline):
    """`functional` with every node whose layer `inline(layer)` marks replaced by the
    calls its `call()` makes (on the same layer objects), or None if there is none."""
    graph = ModelGraph(functional)

    def marked(layer):
        return (isinstance(layer, keras.layers.Layer)
                and not isinstance(layer, keras.layers.Wrapper) and not is_graph_model(layer)
                and not _own_weights(layer) and inline(layer))

    if not any(marked(node.layer) for node in graph.nodes):
        return None
    values = {}
    inputs = [
        keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name) for t in graph.inputs
    ]
    for tensor, keras_input in zip(graph.inputs, inputs):
        values[tensor.index] = keras_input

    def value(v):
        return values[v.index] if isinstance(v, GraphTensor) else v

    for node in graph.nodes:
        args = keras.tree.map_structure(value, node.args)
        kwargs = keras.tree.map_structure(value, node.kwargs)
        call = node.layer.call if marked(node.layer) else node.layer
        outputs = keras.tree.flatten(call(*args, **kwargs))
        for tensor, output in zip(node.outputs, outputs):
            values[tensor.index] = output
    return keras.Model(
        keras.tree.map_structure(lambda t: inputs[graph.inputs.index(t)], graph.input_structure),
        keras.tree.map_structure(value, graph.output_structure),
        name=functional.name,
    )


@contextlib.contextmanager
def traced_model(model, what, inline=None):
    """The functional model a subclassed model's `call()` builds, for the `with` block.

    `model.call` runs once on `keras.Input`s of `subclassed_input_shape(model)`
    (batch axis None), so every layer it calls becomes a node of a functional
    model over the same layer objects (a layer called twice is shared). Nested
    functional and Sequential models expand as usual (`ModelGraph`); a custom
    layer or nested subclassed model stays one node, unless `inline(layer)` is
    true and it holds no weights of its own: then its `call()` is traced in its
    place (its sublayers become nodes), again for the layers that brings in. The
    calls this records on the model's layers are removed when the block ends, so
    the model is left as it was: use the functional model only inside the block
    (`rebuild` it into a copy). A functional or Sequential model is yielded as it
    is.

    Args:
        model: a built functional, Sequential or subclassed model.
        what: the caller's name, for the messages ("strip_pruning").
        inline: None, or `fn(layer) -> bool`: which custom layers of a subclassed
            model to trace through (e.g. those holding pruning wrappers).

    Yields:
        A built functional or Sequential `keras.Model`.

    Raises:
        ValueError: for a non-model or unbuilt model (as `check_model`), a
            subclassed model never called on data (no build shape), or one whose
            `call()` cannot run on symbolic inputs (the error is named).

    Example:
        >>> with traced_model(subclassed, "strip_pruning") as functional:
        ...     copy = rebuild(functional)
    """
    if not is_subclassed(model):
        check_model(model, what)
        yield model
        return
    shape = subclassed_input_shape(model)
    if shape is None:
        raise ValueError(
            f"{what} reads subclassed model {model.name!r} by calling its call() on "
            "symbolic inputs of the shape it was built with, but it has no build "
            "shape (it was never called on data, or Keras could not run its call() "
            "symbolically to record one): call it once on a batch of data first."
        )
    parameters = list(inspect.signature(model.call).parameters)
    base = parameters[0] if parameters else "inputs"
    leaves = [0]

    def new_input(value):
        if _is_shape(value):
            name = base if _is_shape(shape) else f"{base}_{leaves[0]}"
            leaves[0] += 1
            return keras.Input(batch_shape=(None,) + tuple(value[1:]), name=name)
        if isinstance(value, dict):
            return {key: new_input(v) for key, v in value.items()}
        return [new_input(v) for v in value]

    layers = list(all_layers(model))[1:]
    recorded = [(layer, len(layer._inbound_nodes), len(layer._outbound_nodes))
                for layer in layers]
    try:
        inputs = new_input(shape)
        try:
            outputs = model.call(inputs)
            functional = keras.Model(inputs, outputs, name=model.name)
            for _ in range(len(layers)):  # each pass opens one more level of custom layers
                opened = _inline(functional, inline) if inline is not None else None
                if opened is None:
                    break
                functional = opened
        except Exception as error:
            raise ValueError(
                f"{what} reads subclassed model {model.name!r} ({type(model).__name__}) "
                f"by calling its call() on keras.Input of shape {shape}, which failed: "
                f"{type(error).__name__}: {error}. call() must be built from layer calls "
                "and keras.ops (no Python branching on tensor values)."
            ) from error
        yield functional
    finally:
        for layer, inbound, outbound in recorded:
            del layer._inbound_nodes[inbound:]
            del layer._outbound_nodes[outbound:]


def layer_call_inputs(tensor):
    """The layer that produced a KerasTensor and the tensors it was called on.

    Args:
        tensor: a `keras.KerasTensor` of a functional graph.

    Returns:
        `(layer, input_tensors)` for the call that produced `tensor`, or None for a
        model input (an InputLayer's tensor) or a tensor with no history.
    """
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None
    op = history.operation
    if op is None or isinstance(op, keras.layers.InputLayer):
        return None
    node = op._inbound_nodes[history.node_index]
    return op, list(node.input_tensors)


class GraphTensor:
    """One tensor of a `ModelGraph`.

    Attributes:
        index: position in `ModelGraph.tensors`.
        shape: the static shape, with the batch axis (a tuple, None where unknown).
        dtype: the dtype name.
        name: the model input's name for an input, else the producer's flat name
            (with ":i" for its i-th output when it has several).
        producer: the `GraphNode` computing it, or None for a model input.
        output_index: which output of the producer it is.
        consumers: the nodes that take it, one entry per use (a node taking it
            twice is listed twice).
        keras_tensor: the KerasTensor it was read from.
    """

    def __init__(self, index, keras_tensor, producer, output_index, name):
        self.index = index
        self.keras_tensor = keras_tensor
        self.shape = tuple(None if d is None else int(d) for d in keras_tensor.shape)
        self.dtype = keras.backend.standardize_dtype(keras_tensor.dtype)
        self.producer = producer
        self.output_index = output_index
        self.name = name
        self.consumers = []

    @property
    def is_input(self):
        return self.producer is None

    def __repr__(self):
        return f"<GraphTensor {self.name} shape={self.shape}>"


class GraphNode:
    """One call of a layer in a `ModelGraph`.

    Attributes:
        index: position in the topological order `ModelGraph.nodes`.
        layer: the layer called.
        name: the layer's flat name in the graph (unique per layer).
        path: names of the nested models the call is inside (outermost first).
        call_index: 0 for the layer's first call in the graph, 1 for its second...
        args, kwargs: the call's arguments, with `GraphTensor`s where the call had
            tensors (the structure of the original call).
        inputs: the `GraphTensor`s of the call, flat.
        outputs: the `GraphTensor`s it returns, flat.
        training: the `training=` a nested model's call passed on, or None.
    """

    def __init__(self, index, layer, name, path, call_index, args, kwargs, inputs, training):
        self.index = index
        self.layer = layer
        self.name = name
        self.path = path
        self.call_index = call_index
        self.args = args
        self.kwargs = kwargs
        self.inputs = inputs
        self.outputs = []
        self.training = training

    @property
    def input(self):
        """The only input tensor, or None when the call takes several."""
        return self.inputs[0] if len(self.inputs) == 1 else None

    @property
    def output(self):
        """The only output tensor, or None when the call returns several."""
        return self.outputs[0] if len(self.outputs) == 1 else None

    @property
    def label(self):
        """The flat name, with "[i]" for the i-th call when the layer is called again."""
        calls = self._calls
        return self.name if calls == 1 else f"{self.name}[{self.call_index}]"

    def input_shapes(self):
        """The input shape (a tuple) or, for several inputs, a list of shapes."""
        shapes = [t.shape for t in self.inputs]
        return shapes[0] if len(shapes) == 1 else shapes

    def output_shapes(self):
        """The output shape (a tuple) or, for several outputs, a list of shapes."""
        shapes = [t.shape for t in self.outputs]
        return shapes[0] if len(shapes) == 1 else shapes

    def __repr__(self):
        return f"<GraphNode {self.label} ({type(self.layer).__name__})>"


def _map_structure(fn, structure):
    return keras.tree.map_structure(
        lambda v: fn(v) if isinstance(v, keras.KerasTensor) else v, structure
    )


class ModelGraph:
    """The flat graph of a built functional or Sequential model (module docstring).

    Args:
        model: a built `keras.Model`, functional or Sequential, nested models and
            shared layers included.

    Attributes:
        model: the model.
        nodes: every call of a layer, topologically ordered (no InputLayer and no
            model nodes: nested models are expanded).
        tensors: every tensor, model inputs first.
        inputs: the model's input tensors, flat (in `model.inputs` order).
        input_layers: the InputLayer of each input, in the same order.
        outputs: the model's output tensors, flat (in `model.outputs` order).
        input_structure, output_structure: the model's input / output structure
            (a tensor, a list or a dict, as `model.input` / `model.output`) with
            `GraphTensor`s as leaves.

    Raises:
        ValueError: as `check_model` (not a built functional or Sequential model).

    Example:
        >>> graph = ModelGraph(model)
        >>> conv = graph.nodes_of(model.get_layer("conv"))[0]
        >>> [c.name for c in graph.consumers(conv.output)]
        ['bn']
    """

    def __init__(self, model):
        check_model(model, "ModelGraph")
        self.model = model
        self.nodes = []
        self.tensors = []
        self._names = {}  # id(layer) -> flat name
        self._nodes_of = collections.defaultdict(list)  # id(layer) -> nodes
        self._layers = []
        fn = _functional_of(model)
        tensor_map = {}
        self.input_layers = [kt._keras_history.operation for kt in fn.inputs]
        for kt, input_layer in zip(fn.inputs, self.input_layers):
            tensor_map[id(kt)] = self._new_tensor(kt, None, 0, input_layer.name)
        self.inputs = [tensor_map[id(kt)] for kt in fn.inputs]
        self._claimed_names = set()
        layers = []
        self._collect_layers(fn, (), layers)
        self._assign_names(layers)
        self._order = {}  # id(node) -> creation key, for the call indices
        self._expand(fn, tensor_map, (), None, ())
        self.outputs = [tensor_map[id(kt)] for kt in fn.outputs]
        self.input_structure = _map_structure(lambda kt: tensor_map[id(kt)], fn.input)
        self.output_structure = _map_structure(lambda kt: tensor_map[id(kt)], fn.output)
        # Calls of a layer are numbered in the order they were made (for a layer inside
        # a nested model called twice: in the order of the nested model's calls).
        for calls in self._nodes_of.values():
            calls.sort(key=lambda node: self._order[id(node)])
            for i, node in enumerate(calls):
                node.call_index = i
                node._calls = len(calls)

    # ----------------------------------------------------------------- construction

    def _new_tensor(self, keras_tensor, producer, output_index, name):
        tensor = GraphTensor(len(self.tensors), keras_tensor, producer, output_index, name)
        self.tensors.append(tensor)
        return tensor

    @staticmethod
    def _nodes_in_order(fn):
        """The nodes of one functional graph, inputs first (Keras' depth order)."""
        by_depth = fn._nodes_by_depth
        for depth in sorted(by_depth, reverse=True):
            for node in by_depth[depth]:
                if not isinstance(node.operation, keras.layers.InputLayer):
                    yield node

    def _collect_layers(self, fn, path, out):
        """(layer, path) of every layer the graph will hold, for naming."""
        for node in self._nodes_in_order(fn):
            op = node.operation
            inner = _functional_of(op) if isinstance(op, keras.Model) else None
            if inner is not None:
                self._collect_layers(inner, path + (op.name,), out)
            else:
                out.append((op, path))

    def _assign_names(self, layers):
        seen = {}
        for layer, path in layers:
            if id(layer) not in seen:
                seen[id(layer)] = (layer, path)
        counts = collections.Counter(layer.name for layer, _ in seen.values())
        for layer, path in seen.values():
            name = layer.name
            if counts[name] > 1 and path:
                name = "_".join(path + (layer.name,))
            base, i = name, 1
            while name in self._claimed_names:
                name, i = f"{base}_{i}", i + 1
            self._claimed_names.add(name)
            self._names[id(layer)] = name

    def _expand(self, fn, tensor_map, path, training, key):
        for kn in self._nodes_in_order(fn):
            op = kn.operation
            node_key = key + (op._inbound_nodes.index(kn),)

            def graph_tensor(kt, op=op):
                if id(kt) not in tensor_map:
                    raise ValueError(
                        f"Cannot read the graph of {self.model.name!r}: layer {op.name!r} "
                        "takes a tensor that is neither a model input nor the output of a "
                        "layer of the model."
                    )
                return tensor_map[id(kt)]

            args = _map_structure(graph_tensor, kn.arguments.args)
            kwargs = _map_structure(graph_tensor, kn.arguments.kwargs)
            inner = _functional_of(op) if isinstance(op, keras.Model) else None
            if inner is not None:
                call_inputs = kn.arguments.args[0] if kn.arguments.args else kn.arguments.kwargs.get("inputs")
                flat = keras.tree.flatten(call_inputs)
                if len(flat) != len(inner.inputs):
                    raise ValueError(
                        f"Cannot expand nested model {op.name!r}: it takes "
                        f"{len(inner.inputs)} inputs and was called on {len(flat)}."
                    )
                inner_map = {id(i): graph_tensor(t) for i, t in zip(inner.inputs, flat)}
                inner_training = kn.arguments.kwargs.get("training", training)
                if inner_training is None:
                    inner_training = training
                self._expand(inner, inner_map, path + (op.name,), inner_training, node_key)
                for outer_kt, inner_kt in zip(kn.outputs, inner.outputs):
                    tensor_map[id(outer_kt)] = inner_map[id(inner_kt)]
                continue
            inputs = [graph_tensor(kt) for kt in kn.input_tensors]
            calls = self._nodes_of[id(op)]
            if not calls:
                self._layers.append(op)
            node = GraphNode(
                len(self.nodes), op, self._names[id(op)], path, len(calls), args, kwargs,
                inputs, training,
            )
            calls.append(node)
            self._order[id(node)] = node_key
            self.nodes.append(node)
            for tensor in inputs:
                tensor.consumers.append(node)
            outputs = list(kn.outputs)
            for i, kt in enumerate(outputs):
                name = node.name if len(outputs) == 1 else f"{node.name}:{i}"
                tensor = self._new_tensor(kt, node, i, name)
                node.outputs.append(tensor)
                tensor_map[id(kt)] = tensor

    # ----------------------------------------------------------------- queries

    @property
    def layers(self):
        """Every layer called in the graph, once each, in the order of first call."""
        return list(self._layers)

    def nodes_of(self, layer):
        """The calls of `layer` in the graph (empty if it is not called)."""
        return list(self._nodes_of.get(id(layer), ()))

    def name_of(self, layer):
        """The flat name of a layer of the graph (see the module docstring)."""
        if id(layer) not in self._names:
            raise ValueError(f"Layer {layer.name!r} is not a layer of {self.model.name!r}.")
        return self._names[id(layer)]

    def layer_named(self, name):
        """The layer (or InputLayer) with flat name `name`, or None."""
        for layer in self.input_layers:
            if layer.name == name:
                return layer
        for layer in self._layers:
            if self._names[id(layer)] == name:
                return layer
        return None

    def consumers(self, tensor):
        """The nodes taking `tensor`, one entry per use."""
        return list(tensor.consumers)

    def producer(self, tensor):
        """The node computing `tensor`, or None for a model input."""
        return tensor.producer

    def is_output(self, tensor):
        """True if `tensor` is one of the model's outputs."""
        return any(tensor is t for t in self.outputs)

    def sole_consumer(self, node):
        """The only node taking `node`'s only output, or None.

        None also when the output is a model output (something outside the model
        uses it too) or when the node has several outputs.
        """
        out = node.output
        if out is None or self.is_output(out) or len(out.consumers) != 1:
            return None
        return out.consumers[0]

    def is_chain(self):
        """True if the graph is a plain chain: one input, one output, every layer
        called once on the previous one's only output (what a Sequential holds)."""
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            return False
        previous = self.inputs[0]
        for node in self.nodes:
            if node._calls != 1 or len(node.inputs) != 1 or node.inputs[0] is not previous:
                return False
            if len(node.outputs) != 1 or len(previous.consumers) != 1:
                return False
            previous = node.outputs[0]
        return previous is self.outputs[0]

    def edges(self):
        """Every edge, as (producer, consumer) labels in node order.

        A model input is labelled by its name, a node by `GraphNode.label` (the flat
        name, with "[i]" for the i-th call of a layer called more than once). An edge
        appears once per use.
        """
        out = []
        for node in self.nodes:
            for tensor in node.inputs:
                source = tensor.name if tensor.is_input else tensor.producer.label
                out.append((source, node.label))
        return out

    def __repr__(self):
        return (
            f"<ModelGraph {self.model.name!r}: {len(self.nodes)} nodes, "
            f"{len(self._layers)} layers, {len(self.inputs)} inputs, "
            f"{len(self.outputs)} outputs>"
        )


def symbolic_build(model, data_spec):
    """Builds the model, its compiled loss / metrics and optimizer from data shapes.

    What `model.fit` does before its first step (`Model._symbolic_build`), from
    a `tf.data` element spec instead of a batch of data.

    Args:
        model: a compiled `keras.Model`.
        data_spec: the structure of one batch, e.g. `dataset.element_spec`.
    """
    model._symbolic_build(data_batch=data_spec)


def optimizer_strategy(optimizer, default=None):
    """The `tf.distribute` strategy an optimizer was created under, or `default`."""
    return getattr(optimizer, "_distribution_strategy", default)

