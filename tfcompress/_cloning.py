"""Copying layers and models for the wrapper-based techniques (pruning, clustering).

`prune_low_magnitude` / `cluster_weights` and their `strip_*` inverses rebuild a
model with `keras.models.clone_model`; these helpers make the copies hold the
original's (trained) weights and reject models Keras cannot clone.
"""

import keras


def check_model(model, what):
    if not isinstance(model, keras.Model):
        raise ValueError(f"{what} needs a keras.Model. Received: {model!r}")  # noqa: TRY004
    if not isinstance(model, keras.Sequential) and not hasattr(model, "_run_through_graph"):
        raise ValueError(
            f"{what} needs a functional or Sequential model; {model.name!r} is a subclassed "
            f"{type(model).__name__}, which Keras cannot clone. Rebuild it with the "
            "functional API."
        )
    if not model.built:
        raise ValueError(
            f"{what} needs a built model; {model.name!r} is not built. Give it an input "
            "shape (keras.Input) or call it on data first."
        )


def check_layer_names(model, names):
    """Raises a ValueError naming every entry of `names` that is not a layer of `model`."""
    layer_names = [layer.name for layer in model.layers]
    unknown = [name for name in names if name not in layer_names]
    if unknown:
        raise ValueError(
            f"No layer named {', '.join(map(repr, unknown))} in model {model.name!r}. "
            f"Its layers: {', '.join(layer_names)}."
        )


def fresh_copy(layer):
    return layer.__class__.from_config(layer.get_config())


def built_copy(layer, weights=None):
    """A new layer with `layer`'s config, built, holding `weights` (default: its own)."""
    new = fresh_copy(layer)
    if layer.built:
        build_config = layer.get_build_config()
        if build_config is None:
            raise ValueError(
                f"Cannot copy layer {layer.name!r}: it has no build config (input shape)."
            )
        new.build_from_config(build_config)
        new.set_weights(layer.get_weights() if weights is None else weights)
    return new


def copy_weights_by_name(source, target, skip):
    for layer in source.layers:
        if layer.name in skip or not layer.weights:
            continue
        target.get_layer(layer.name).set_weights(layer.get_weights())
