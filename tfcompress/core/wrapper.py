"""The wrapper that pruning and clustering share: a layer run with computed weight matrices.

`KernelWrapper` holds a layer and runs it with some of its weight matrices replaced
by tensors the subclass computes (`W * mask` for pruning, `C[I]` for weight
sharing), through `Layer.stateless_call`, so the wrapped layer itself is never
modified by a forward pass and no attribute is swapped. State the wrapped layer
updates in a call (e.g. statistics of a custom layer) is written back, kernels
excepted. `stripped_layer()` gives the plain layer with the computed matrices as
its weights.

The drivers `wrap_layers` and `strip_wrappers` rebuild a whole model
(`tfcompress.core.rewrite.rebuild`) with chosen layers wrapped or every wrapper
stripped; `select_layers` turns a per-model or per-layer argument into the layers it
applies to, with errors that name what is wrong.
"""

import inspect

import keras
import numpy as np
from keras import ops

from tfcompress.core import traits
from tfcompress.core.graph import ModelGraph, all_layers, check_model
from tfcompress.core.rewrite import built_copy, rebuild

__all__ = [
    "KernelWrapper",
    "check_layer_names",
    "graph_to_wrap",
    "select_layers",
    "strip_wrappers",
    "to_numpy",
    "wrap_layers",
    "wrappers_in",
]


def to_numpy(x):
    """A NumPy array from an array, Keras variable or eager tensor."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "numpy"):  # Keras variables and eager tensors: no copy warning
        return np.asarray(x.numpy())
    return np.asarray(ops.convert_to_numpy(x))


class KernelWrapper(keras.layers.Wrapper):
    """Runs the wrapped layer with its weight matrices replaced by computed tensors.

    Subclasses implement `computed_kernels()` (one tensor per matrix of
    `kernel_variables()`, same shapes) and create their own state in `build`.

    Args:
        layer: the layer to wrap; it must have weight matrices
            (`tfcompress.core.traits.has_kernels`).
        **kwargs: standard Layer arguments.
    """

    def __init__(self, layer, **kwargs):
        super().__init__(layer, **kwargs)
        self._call_has_training = "training" in inspect.signature(layer.call).parameters

    @classmethod
    def from_config(cls, config, custom_objects=None):
        # Wrapper.from_config pops "layer" from the dict it is given: give it a copy.
        return super().from_config(dict(config), custom_objects=custom_objects)

    def kernel_variables(self):
        """The wrapped layer's weight-matrix variables, in traits order."""
        return traits.kernel_variables(self.layer)

    def computed_kernels(self):
        """The matrices the layer computes with, as tensors (implemented by subclasses)."""
        raise NotImplementedError(f"{type(self).__name__} must implement computed_kernels")

    def computed_kernels_numpy(self):
        """`computed_kernels()` as NumPy arrays (subclasses may compute them exactly in NumPy)."""
        return [to_numpy(kernel) for kernel in self.computed_kernels()]

    def call(self, inputs, training=None, **kwargs):
        kernels = self.kernel_variables()
        computed = self.computed_kernels()

        def substitute(variables):
            values = []
            for v in variables:
                position = next((i for i, k in enumerate(kernels) if k is v), None)
                values.append(v if position is None else computed[position])
            return values

        if self._call_has_training:
            kwargs["training"] = training
        outputs, non_trainable = self.layer.stateless_call(
            substitute(self.layer.trainable_variables),
            substitute(self.layer.non_trainable_variables),
            inputs,
            **kwargs,
        )
        # State updates of the wrapped layer (e.g. moving statistics), kernels excepted.
        for variable, value in zip(self.layer.non_trainable_variables, non_trainable):
            if not any(variable is k for k in kernels):
                variable.assign(value)
        return outputs

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def compute_output_spec(self, inputs, training=None, **kwargs):
        # Substituting kernels changes no shape: ask the wrapped layer (which falls
        # back to a symbolic call when it does not implement compute_output_shape).
        if self._call_has_training:
            kwargs["training"] = training
        return self.layer.compute_output_spec(inputs, **kwargs)

    def compute_mask(self, inputs, mask=None):
        return self.layer.compute_mask(inputs, mask)

    def stripped_layer(self):
        """A built copy of the wrapped layer whose matrices are the computed ones.

        Returns:
            A plain layer (the wrapped layer's class, config and name) computing what
            the wrapper computes.
        """
        inner = self.layer
        computed = {
            id(k): v for k, v in zip(self.kernel_variables(), self.computed_kernels_numpy())
        }
        weights = [computed.get(id(v), w) for v, w in zip(inner.weights, inner.get_weights())]
        return built_copy(inner, weights)


def wrappers_in(model_or_layer, wrapper_class):
    """Every `wrapper_class` layer in a model (nested models included) or the layer itself."""
    return [
        layer for layer in all_layers(model_or_layer, wrapped=False)
        if isinstance(layer, wrapper_class)
    ]


def graph_to_wrap(model, what, wrapper_class, done, strip):
    """The `ModelGraph` of a model about to be wrapped, after checking it can be.

    Args:
        model: the model received.
        what: the caller's name ("prune_low_magnitude").
        wrapper_class: the wrapper it adds; a model holding one already is refused.
        done: what such a model is ("pruned").
        strip: the function that removes the wrappers ("strip_pruning").

    Raises:
        ValueError: as `check_model`, or for a model that is already wrapped (the
            wrapper layers are named).
    """
    check_model(model, what)
    wrapped = [layer.name for layer in wrappers_in(model, wrapper_class)]
    if wrapped:
        raise ValueError(
            f"Model {model.name!r} is already {done} ({wrapper_class.__name__} layers: "
            f"{', '.join(wrapped)}). Call {strip} first."
        )
    return ModelGraph(model)


def check_layer_names(graph, names):
    """Raises a ValueError naming every entry of `names` that is not a layer of the graph."""
    known = [layer.name for layer in graph.input_layers]
    known += [graph.name_of(layer) for layer in graph.layers]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(
            f"No layer named {', '.join(map(repr, unknown))} in model {graph.model.name!r}. "
            f"Its layers: {', '.join(known)}."
        )


def select_layers(graph, value, unsupported, nothing, supports=traits.has_kernels):
    """{flat layer name: value} of the layers a per-model or per-layer argument covers.

    Args:
        graph: the model's `ModelGraph`.
        value: one value for every supported layer, or a dict {layer name: value}
            for the named layers only.
        unsupported: `fn(layer) -> ValueError` for a named layer that is not supported.
        nothing: the ValueError to raise when one value covers no layer.
        supports: `fn(layer) -> bool`, which layers the technique acts on.

    Returns:
        The dict, in graph order.

    Raises:
        ValueError: for a name that is not a layer (the layers are listed), a named
            layer that is not supported, or no supported layer at all.
    """
    if isinstance(value, dict):
        check_layer_names(graph, value)
        for name in value:
            layer = graph.layer_named(name)
            if isinstance(layer, keras.Model) or not supports(layer):
                raise unsupported(layer)
        return {
            graph.name_of(layer): value[graph.name_of(layer)] for layer in graph.layers
            if graph.name_of(layer) in value
        }
    selected = {
        graph.name_of(layer): value for layer in graph.layers
        if not isinstance(layer, keras.Model) and supports(layer)
    }
    if not selected:
        raise nothing
    return selected


def wrap_layers(graph, wrap):
    """Rebuilds the model of `graph` with layers wrapped.

    Args:
        graph: a `ModelGraph` (or a model).
        wrap: {flat layer name: fn(built copy of the layer) -> wrapper}.

    Returns:
        The new model (same kind, see `rebuild`); unwrapped layers are copies.
    """
    graph = graph if isinstance(graph, ModelGraph) else ModelGraph(graph)

    def layer_fn(layer, name):
        make = wrap.get(name)
        return None if make is None else make(built_copy(layer, name=name))

    return rebuild(graph, layer_fn=layer_fn)


def strip_wrappers(model, wrapper_class, what="strip_wrappers", source=None):
    """Rebuilds a model with every `wrapper_class` replaced by its `stripped_layer()`.

    Args:
        model: a functional or Sequential model.
        wrapper_class: the wrapper type to strip.
        what: the public function's name, for the error.
        source: the model the user passed (named in the error), default `model`.

    Raises:
        ValueError: naming the wrappers the rebuild could not reach (inside a
            custom layer or nested subclassed model with weights of its own,
            which the rebuild copies as one layer).
    """

    def layer_fn(layer, name):
        return layer.stripped_layer() if isinstance(layer, wrapper_class) else None

    stripped = rebuild(model, layer_fn=layer_fn)
    left = [
        layer.name for layer in all_layers(stripped, wrapped=False, sublayers=True)
        if isinstance(layer, wrapper_class)
    ]
    if left:
        raise ValueError(
            f"{what} cannot reach {wrapper_class.__name__} layer(s) {', '.join(left)} of "
            f"model {(source or model).name!r}: they are inside a custom layer or nested "
            "subclassed model with weights of its own, which the rebuild copies as one "
            "layer. Call the wrapped layers directly in the model's call(), or strip each "
            f"wrapper itself with {what}(wrapper) (the plain layer with its final weights)."
        )
    return stripped
