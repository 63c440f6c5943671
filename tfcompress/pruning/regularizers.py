"""Sparsity training: penalties that drive whole channels to zero before channel pruning.

- `GroupLasso(strength)`: Wen et al., "Learning Structured Sparsity in Deep Neural
  Networks", NeurIPS 2016: `strength * sum_c ||W[..., c]||_2` over the output
  channels c of a kernel, which pushes entire filters to zero (a channel whose
  filter is zero is then removed by `prune_channels` without changing any output).
- Network Slimming (Liu et al., ICCV 2017): an L1 penalty on BatchNormalization's
  gamma, `with_regularizer(model, keras.regularizers.L1(1e-4), target="gamma")`;
  `prune_channels(..., criterion="bn_scale")` then removes the channels of small
  |gamma|.

`with_regularizer` returns a copy of a model with a regularizer on every
convolution / Dense kernel or every BatchNormalization gamma; `model.fit` adds it to
the loss.
"""

import numbers

import keras
from keras import ops

from tfcompress.core.graph import check_model
from tfcompress.core.rewrite import rebuild

__all__ = ["REGULARIZER_TARGETS", "GroupLasso", "with_regularizer"]

REGULARIZER_TARGETS = ("kernel", "gamma")
# Config keys of a layer's weight-matrix regularizers, and of BatchNormalization's gamma.
_KERNEL_KEYS = ("kernel_regularizer", "depthwise_regularizer", "pointwise_regularizer")
_GAMMA_KEYS = ("gamma_regularizer",)


@keras.saving.register_keras_serializable(package="tfcompress")
class GroupLasso(keras.regularizers.Regularizer):
    """Group lasso over channels: `strength * sum_c ||w[..., c]||_2`.

    Each group is one slice along `axis` (the output channels of a Conv / Dense
    kernel, the last axis); the L2 norm of a group is not differentiable at zero, so
    the penalty sets whole groups exactly to zero, unlike L2 weight decay.

    Args:
        strength: the factor lambda, a number >= 0.
        axis: the channel axis of the weights it regularizes.

    Raises:
        ValueError: for a negative or non-numeric strength or a non-integer axis.

    Example:
        >>> keras.layers.Conv2D(16, 3, kernel_regularizer=GroupLasso(1e-4))
    """

    def __init__(self, strength=1e-4, axis=-1):
        if (isinstance(strength, bool) or not isinstance(strength, numbers.Real)
                or not strength >= 0):
            raise ValueError(f"`strength` must be a number >= 0. Received: strength={strength!r}")
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            raise ValueError(f"`axis` must be an integer. Received: axis={axis!r}")  # noqa: TRY004
        self.strength = float(strength)
        self.axis = int(axis)

    def __call__(self, x):
        axis = self.axis % len(x.shape)
        others = [a for a in range(len(x.shape)) if a != axis]
        norms = ops.sqrt(ops.sum(ops.square(x), axis=others) + 1e-12) if others else ops.abs(x)
        return self.strength * ops.sum(norms)

    def get_config(self):
        return {"strength": self.strength, "axis": self.axis}


def with_regularizer(model, regularizer, target="kernel"):
    """A copy of `model` with `regularizer` on every kernel or every BatchNorm gamma.

    Args:
        model: a built functional or Sequential model (nested models flattened).
        regularizer: a `keras.regularizers.Regularizer` (e.g. `GroupLasso(1e-4)`,
            `keras.regularizers.L1(1e-4)`), or its name.
        target: "kernel" (every layer with weight matrices whose config takes a
            kernel, depthwise or pointwise regularizer: Conv*, Dense, AdderConv,
            BinaryConv, GhostConv, ...) or "gamma" (every BatchNormalization).

    Returns:
        A new, uncompiled model with the same weights; `model.fit` on it adds the
        penalty to the loss (`model.losses`).

    Raises:
        ValueError: for an unknown target, a regularizer Keras cannot read, or a model
            with no layer to regularize.

    Example:
        >>> slim = with_regularizer(model, keras.regularizers.L1(1e-4), target="gamma")
    """
    if target not in REGULARIZER_TARGETS:
        raise ValueError(
            f"`target` must be one of {', '.join(map(repr, REGULARIZER_TARGETS))}. "
            f"Received: target={target!r}"
        )
    try:
        regularizer = keras.regularizers.get(regularizer)
    except (ValueError, TypeError) as error:
        raise ValueError(f"`regularizer` must be a Keras regularizer: {error}") from error
    if regularizer is None:
        raise ValueError("`regularizer` must be a Keras regularizer. Received: None")
    check_model(model, "with_regularizer")
    serialized = keras.regularizers.serialize(regularizer)
    keys = _KERNEL_KEYS if target == "kernel" else _GAMMA_KEYS
    touched = []

    def layer_fn(layer, name):
        if target == "gamma" and not isinstance(layer, keras.layers.BatchNormalization):
            return None
        config = layer.get_config()
        present = [key for key in keys if key in config]
        if not present:
            return None
        for key in present:
            config[key] = serialized
        config["name"] = name
        new = type(layer).from_config(config)
        new.build_from_config(layer.get_build_config())
        new.set_weights(layer.get_weights())
        touched.append(name)
        return new

    copy = rebuild(model, layer_fn=layer_fn)
    if not touched:
        raise ValueError(
            f"Model {model.name!r} has no layer whose {target} takes a regularizer."
        )
    return copy
