"""Pruning a whole model: wrap, strip, and report the sparsity of every weight matrix.

`prune_low_magnitude(model, schedule)` rebuilds any functional or Sequential model
(nested models flattened, shared layers kept shared) with every layer that has
weight matrices wrapped in `PruneLowMagnitude`; `strip_pruning` rebuilds it with
plain layers holding `W * mask`. Names and behaviour follow tfmot.

A subclassed model has no graph to rebuild: wrap its layers in its `__init__`
(`self.fc = prune_low_magnitude(keras.layers.Dense(10), schedule)`), train it with
`UpdatePruningStep`, and `strip_pruning(model)` returns the functional model its
`call()` traces to, with plain layers.
"""

import numbers

import keras
import numpy as np

from tfcompress.core.graph import all_layers, is_subclassed, traced_model
from tfcompress.core.traits import has_kernels, kernel_layer_names, kernel_variables
from tfcompress.core.wrapper import (
    check_layer_names,
    graph_to_wrap,
    select_layers,
    strip_wrappers,
    to_numpy,
    wrap_layers,
    wrappers_in,
)
from tfcompress.pruning.masks import check_m_by_n
from tfcompress.pruning.schedules import (
    ConstantSparsity,
    check_sparsity,
    deserialize_schedule,
)
from tfcompress.pruning.wrapper import PruneLowMagnitude, unsupported_layer_error

__all__ = ["get_pruning_masks", "prune_low_magnitude", "sparsity_report", "strip_pruning"]


def prune_low_magnitude(to_prune, pruning_schedule=None, sparsity_m_by_n=None, **kwargs):
    """Wraps a layer, or every supported layer of a model, in `PruneLowMagnitude`.

    Magnitude pruning with retraining (Han et al., NeurIPS 2015; Deep
    Compression sec. 2): train the result with `UpdatePruningStep`; at the
    steps the schedule chooses, each mask keeps the `N - round(s_t * N)`
    weights of largest |w|, and `strip_pruning` then gives plain layers with
    exact zeros.

    Args:
        to_prune: a Keras layer (returns its wrapper, e.g. inside a
            `keras.models.clone_model` `clone_function`, as with tfmot), or a
            built functional or Sequential model. A model is copied (the
            original is unchanged); the copy's weights start equal to the
            original's. Nested models are flattened into the copy (their layers
            become layers of it), shared layers stay shared.
        pruning_schedule: a `PruningSchedule` for every supported layer
            (default `ConstantSparsity(0.5, 0)`), or, for a model, a dict
            {layer name: PruningSchedule or fraction} pruning only the named
            layers (the others stay dense); a fraction f means
            `ConstantSparsity(f, 0)` (0: dense), so a sensitivity analysis'
            `sparsities_for(max_drop)` can be passed as it is.
        sparsity_m_by_n: None, or (m, n) with 0 < m < n: m zeros in every n
            consecutive weights along the input-channel axis (tfmot's meaning;
            (2, 4) is NVIDIA 2:4).
        **kwargs: for a layer, standard Layer arguments of the wrapper.

    Returns:
        A `PruneLowMagnitude` for a layer; for a model a new, uncompiled model
        (a Sequential for a Sequential, else functional, with the model's input
        and output structure) with each pruned layer replaced by its wrapper (named
        "prune_low_magnitude_" + the layer's name); Flatten, pooling,
        BatchNormalization, activations and other layers without weight
        matrices are copied as they are.

    Raises:
        ValueError: for an invalid schedule or `sparsity_m_by_n`, an unsupported
            layer (named, with the supported types), a name in the dict that is
            not a layer of the model (the layer names are listed), an already
            pruned model or layer, an unbuilt model, or a model without any
            layer to prune; for a subclassed model (which cannot be rebuilt:
            wrap the layers in its `__init__` instead, see the module docstring).

    Example:
        >>> pruned = prune_low_magnitude(model, ConstantSparsity(0.8, begin_step=0))
        >>> pruned = prune_low_magnitude(
        ...     model, {"fc1": PolynomialDecay(0.0, 0.95, 0, 1000), "fc2": ConstantSparsity(0.5)})
    """
    if sparsity_m_by_n is not None:
        sparsity_m_by_n = check_m_by_n(sparsity_m_by_n)
    if not isinstance(to_prune, keras.Model):
        if not isinstance(to_prune, keras.layers.Layer):
            raise ValueError(  # noqa: TRY004
                "`to_prune` must be a Keras layer or a functional/Sequential model. "
                f"Received: to_prune={to_prune!r}"
            )
        if isinstance(pruning_schedule, dict) and not (
            "class_name" in pruning_schedule and "config" in pruning_schedule
        ):
            raise ValueError(
                "A dict `pruning_schedule` {layer name: schedule} is for models; for a layer "
                f"pass one PruningSchedule. Received: pruning_schedule={pruning_schedule!r}"
            )
        return PruneLowMagnitude(to_prune, pruning_schedule, sparsity_m_by_n, **kwargs)

    model = to_prune
    if is_subclassed(model):
        raise ValueError(
            f"prune_low_magnitude cannot rebuild subclassed model {model.name!r} "
            f"({type(model).__name__}): Keras has no graph of it. Wrap the layers inside "
            "the subclassed model's __init__ with prune_low_magnitude(layer) (e.g. "
            "self.fc = prune_low_magnitude(keras.layers.Dense(10), schedule)), train it "
            "with the UpdatePruningStep callback, then strip_pruning(model); or build "
            "the model with the functional API."
        )
    if kwargs:
        raise ValueError(
            f"Layer arguments are for a single layer, not a model. Received: {sorted(kwargs)}"
        )
    graph = graph_to_wrap(
        model, "prune_low_magnitude", PruneLowMagnitude, "pruned", "strip_pruning"
    )
    if isinstance(pruning_schedule, dict):
        check_layer_names(graph, pruning_schedule)
        schedules = {
            name: _schedule_or_fraction(name, schedule)
            for name, schedule in pruning_schedule.items()
        }
        schedules = {name: s for name, s in schedules.items() if s is not None}
    else:
        schedules = deserialize_schedule(
            ConstantSparsity(0.5, 0) if pruning_schedule is None else pruning_schedule
        )
    per_layer = select_layers(
        graph, schedules, unsupported_layer_error,
        ValueError(
            f"Model {model.name!r} has no layer with weights to prune. Supported: "
            f"{', '.join(kernel_layer_names())}, or any layer with get_prunable_weights()."
        ),
    )
    return wrap_layers(graph, {
        name: (lambda layer, schedule=schedule: PruneLowMagnitude(
            layer, schedule, sparsity_m_by_n))
        for name, schedule in per_layer.items()
    })


def _schedule_or_fraction(name, value):
    """A schedule, or for a plain fraction (a sensitivity analysis' `sparsities_for`)
    `ConstantSparsity(fraction, 0)`; None for 0 (the layer stays dense)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        fraction = check_sparsity(f"pruning_schedule[{name!r}]", value)
        return ConstantSparsity(fraction, 0) if fraction > 0 else None
    return deserialize_schedule(value)


def _holds_wrappers(layer):
    """True if a `PruneLowMagnitude` is inside `layer` (at any depth of its sublayers)."""
    return any(
        isinstance(inner, PruneLowMagnitude)
        for inner in all_layers(layer, wrapped=False, sublayers=True) if inner is not layer
    )


def strip_pruning(model):
    """Replaces every `PruneLowMagnitude` by its layer, with the pruned weights.

    Each weight matrix of the returned layers is `W * mask` (exactly zero where
    pruned), so the stripped model computes what the pruned model computes,
    without masks, step counters or constraints. Other layers are copied with
    their weights.

    A subclassed model (pruning wrappers set as attributes in its `__init__`) has
    no graph to rebuild and its class would create the wrappers again: its
    `call()` is traced on `keras.Input`s of the shape it was built with
    (`tfcompress.core.graph.traced_model`) and that functional graph is rebuilt,
    so the result is a functional model of plain layers, which saves and loads
    without the model's class and exports like any functional model. Its
    `call()` must be made of layer calls. A custom layer (or
    nested subclassed model) holding wrappers is traced through the same way
    (its sublayers become layers of the result) when it has no weights of its
    own; a wrapper in one that has cannot be reached (ValueError): strip such a
    wrapper itself, `strip_pruning(wrapper)`.

    Args:
        model: a built functional, Sequential or subclassed model (pruned or not;
            nested models are flattened), or one `PruneLowMagnitude` layer.

    Returns:
        For a model, a new, uncompiled model (a Sequential for a Sequential,
        else functional; functional for a subclassed model, named as it, inputs
        named after `call()`'s first argument) with plain layers (named as the
        wrapped layers were); the input model is unchanged. For a
        `PruneLowMagnitude`, a built copy of its layer holding `W * mask`.

    Raises:
        ValueError: for something that is not a built model or a
            `PruneLowMagnitude`, a subclassed model that was never called or
            whose `call()` cannot be traced, or pruning wrappers the rebuild
            cannot reach (named).

    Example:
        >>> final = strip_pruning(pruned)
        >>> float(np.mean(final.get_layer("fc1").kernel.numpy() == 0))
        0.9
        >>> dense = strip_pruning(pruned_subclassed.fc)   # one wrapper
    """
    if isinstance(model, PruneLowMagnitude):
        return model.stripped_layer()
    with traced_model(model, "strip_pruning", inline=_holds_wrappers) as graph_model:
        return strip_wrappers(graph_model, PruneLowMagnitude, "strip_pruning", model)


def _weight_rows(model):
    """(layer name, weight name, effective values) of every weight matrix, in layer order."""
    for layer in all_layers(model, wrapped=False):
        if isinstance(layer, PruneLowMagnitude):
            if not layer.built:
                continue
            for kernel, values in zip(layer.kernel_variables(), layer.masked_kernels()):
                yield layer.layer.name, kernel.name, to_numpy(values)
        elif not isinstance(layer, keras.Model) and layer.built and has_kernels(layer):
            for kernel in kernel_variables(layer):
                yield layer.name, kernel.name, to_numpy(kernel)


def sparsity_report(model):
    """Exact zeros of every weight matrix, pruned (wrapped) or plain.

    Works on a pruned model (the matrices it computes with, `W * mask`) and on
    any other model, e.g. the result of `strip_pruning` (its actual weights).

    Args:
        model: a keras.Model (layers of nested models are included).

    Returns:
        A list of dicts, one per weight matrix in layer order, with keys
        "layer" (layer name; the wrapped layer's for a PruneLowMagnitude),
        "weight" (the matrix's name), "shape", "zeros", "size" and "sparsity"
        (zeros / size).

    Raises:
        ValueError: for something that is not a keras.Model.

    Example:
        >>> [(r["layer"], round(r["sparsity"], 2)) for r in sparsity_report(final)]
        [('fc1', 0.9), ('fc2', 0.9), ('predictions', 0.9)]
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"sparsity_report needs a keras.Model. Received: {model!r}")  # noqa: TRY004
    rows = []
    for layer_name, weight_name, values in _weight_rows(model):
        zeros = int(np.sum(values == 0))
        rows.append({
            "layer": layer_name,
            "weight": weight_name,
            "shape": tuple(values.shape),
            "zeros": zeros,
            "size": int(values.size),
            "sparsity": zeros / values.size if values.size else 0.0,
        })
    return rows


def get_pruning_masks(model):
    """The current 0/1 masks of every pruned weight matrix.

    Args:
        model: a model with `PruneLowMagnitude` layers, or one such layer.

    Returns:
        A dict {"layer/weight": NumPy array of the weight's shape} (the wrapped
        layer's name), in layer order. Empty if nothing is pruned.

    Example:
        >>> masks = get_pruning_masks(pruned)
        >>> masks["fc1/kernel"].mean()
        0.1
    """
    out = {}
    for wrapper in wrappers_in(model, PruneLowMagnitude):
        if not wrapper.built:
            continue
        for kernel, mask in zip(wrapper.kernel_variables(), wrapper.pruning_masks):
            out[f"{wrapper.layer.name}/{kernel.name}"] = to_numpy(mask)
    return out
