"""`PruneLowMagnitude`: a layer run with its weight matrices times 0/1 masks.

Han, Pool, Tran, Dally, "Learning both Weights and Connections for Efficient
Neural Networks", NeurIPS 2015. The wrapper computes with `W * mask` (a pruned
weight gets an exactly zero gradient) and installs the constraint `W <- W * mask`,
which every Keras 3 optimizer applies after each step, so pruned weights stay
exactly zero under momentum optimizers too.
"""

import keras
import numpy as np
from keras import ops

from tfcompress.analysis.profile import count_layer, dtype_bits, register_counter
from tfcompress.core.traits import has_kernels, kernel_layer_names
from tfcompress.core.wrapper import KernelWrapper, to_numpy
from tfcompress.pruning.masks import check_m_by_n, m_by_n_mask, magnitude_mask
from tfcompress.pruning.schedules import ConstantSparsity, deserialize_schedule

__all__ = ["PruneLowMagnitude", "unsupported_layer_error"]


def unsupported_layer_error(layer):
    """The ValueError for a layer without weights to prune (the supported types listed)."""
    return ValueError(
        f"Layer {layer.name!r} ({type(layer).__name__}) has no weights to prune. "
        f"Supported: {', '.join(kernel_layer_names())}, or any layer with "
        "get_prunable_weights()."
    )


class _MaskConstraint(keras.constraints.Constraint):
    """`w -> previous(w) * mask`: keeps pruned weights exactly zero after each update.

    Keras 3 optimizers apply `variable.constraint` after every `apply_gradients`.
    Not serialized: `PruneLowMagnitude.build` installs it again after loading.
    """

    def __init__(self, mask, previous=None):
        self.mask = mask
        self.previous = previous

    def __call__(self, w):
        if self.previous is not None:
            w = self.previous(w)
        return ops.multiply(w, ops.cast(self.mask, w.dtype))


@keras.saving.register_keras_serializable(package="tfcompress")
class PruneLowMagnitude(KernelWrapper):
    """Prunes the weight matrices of a layer by magnitude, following a schedule.

    For each weight matrix W of the wrapped layer (`tfcompress.core.traits`: the
    kernel of Dense / Conv* / DepthwiseConv* / EinsumDense / AdderConv /
    AdderDense, both kernels of a SeparableConv, the embeddings of an
    Embedding, or what `get_prunable_weights()` returns), `build` creates a
    non-trainable 0/1 mask of W's shape (ones), and the wrapper holds one
    non-trainable int64 `pruning_step` (-1 until training starts).

    The forward pass runs the wrapped layer with `W * mask` in place of W
    (through `stateless_call`), so the gradient of a pruned weight is exactly
    zero. A constraint `W <- W * mask` is installed on W, which every Keras 3
    optimizer applies after each step, so pruned weights stay exactly zero with
    momentum optimizers too.

    `update_masks()` (called by `UpdatePruningStep` / `Pruner` when the
    schedule says so) recomputes each mask from the current weights: with
    `s = schedule(step)[1]`, `magnitude_mask(W, s)` keeps the
    `N - round(s * N)` largest |w| (Han et al., NeurIPS 2015); with
    `sparsity_m_by_n=(m, n)`, `m_by_n_mask(W, m, n)` zeroes the m smallest of
    every n consecutive input channels (the schedule then only decides when the
    masks are updated; tfmot computes the m:n mask once, at its first training
    step). Then W is set to `W * mask`.

    Args:
        layer: the layer to prune (built, or built at the first call).
        pruning_schedule: a `PruningSchedule`; default `ConstantSparsity(0.5, 0)`.
        sparsity_m_by_n: None, or a pair of integers (m, n), 0 < m < n: m zeros
            in every n consecutive weights along the input-channel axis (axis -2
            of the kernel), tfmot's meaning; (2, 4) is NVIDIA's 2:4.
        **kwargs: standard Layer arguments (the name defaults to
            "prune_low_magnitude_" + the layer's name, as in tfmot).

    Raises:
        ValueError: for a layer without weights to prune (the supported types
            are listed), an already pruned layer, a schedule that is not a
            `PruningSchedule`, an invalid `sparsity_m_by_n`, or (in `build`) a
            weight whose input-channel size is not divisible by n.

    Example:
        >>> dense = keras.layers.Dense(10)
        >>> pruned = PruneLowMagnitude(dense, ConstantSparsity(0.75, 0, frequency=1))
        >>> y = pruned(x)
        >>> pruned.pruning_step.assign(0); pruned.update_masks()
        >>> pruned.current_sparsity()
        [0.75]
    """

    def __init__(self, layer, pruning_schedule=None, sparsity_m_by_n=None, **kwargs):
        if isinstance(layer, dict):
            layer = keras.saving.deserialize_keras_object(layer)
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(f"`layer` must be a Keras layer. Received: layer={layer!r}")  # noqa: TRY004
        if isinstance(layer, PruneLowMagnitude):
            raise ValueError(  # noqa: TRY004
                f"Layer {layer.name!r} is already pruned (a PruneLowMagnitude)."
            )
        if isinstance(layer, keras.Model) or not has_kernels(layer):
            raise unsupported_layer_error(layer)
        if pruning_schedule is None:
            pruning_schedule = ConstantSparsity(0.5, 0)
        pruning_schedule = deserialize_schedule(pruning_schedule)
        if sparsity_m_by_n is not None:
            sparsity_m_by_n = check_m_by_n(sparsity_m_by_n)
        kwargs.setdefault("name", f"prune_low_magnitude_{layer.name}")
        super().__init__(layer, **kwargs)
        self.pruning_schedule = pruning_schedule
        self.sparsity_m_by_n = sparsity_m_by_n

    def build(self, input_shape=None):
        super().build(input_shape)
        kernels = self.kernel_variables()
        if not kernels:
            raise unsupported_layer_error(self.layer)
        if self.sparsity_m_by_n is not None:
            m, n = self.sparsity_m_by_n
            for kernel in kernels:
                if len(kernel.shape) < 2 or kernel.shape[-2] % n:
                    raise ValueError(
                        f"sparsity_m_by_n=({m}, {n}) groups the input-channel axis (axis -2) "
                        f"in runs of {n}, but weight {kernel.name!r} of layer "
                        f"{self.layer.name!r} has shape {tuple(kernel.shape)}: axis -2 must "
                        f"exist and be divisible by {n}."
                    )
        masks = []
        for kernel in kernels:
            prefix = f"{kernel.name}_" if len(kernels) > 1 else ""
            mask = self.add_weight(
                name=f"{prefix}mask", shape=tuple(kernel.shape), dtype=kernel.dtype,
                initializer="ones", trainable=False,
            )
            previous = kernel.constraint
            if isinstance(previous, _MaskConstraint):
                previous = previous.previous
            kernel.constraint = _MaskConstraint(mask, previous)
            masks.append(mask)
        self.pruning_masks = masks
        self.pruning_step = self.add_weight(
            name="pruning_step", shape=(), dtype="int64",
            initializer=keras.initializers.Constant(-1), trainable=False,
        )
        self.built = True

    def masked_kernels(self):
        """The weight matrices the layer computes with, `W * mask`, as tensors."""
        return [
            ops.multiply(kernel, ops.cast(mask, kernel.dtype))
            for kernel, mask in zip(self.kernel_variables(), self.pruning_masks)
        ]

    def computed_kernels(self):
        return self.masked_kernels()

    # -- eager mask maintenance ---------------------------------------------------------

    def update_masks(self):
        """Recomputes the masks from the current weights and zeroes the pruned weights.

        The sparsity is `pruning_schedule(step)[1]` at the current
        `pruning_step`; see the class docstring for the rule. Eager only (called
        between training steps).

        Returns:
            The sparsity used (m / n with `sparsity_m_by_n`).
        """
        step = int(to_numpy(self.pruning_step))
        sparsity = self.pruning_schedule(step)[1]
        for kernel, mask in zip(self.kernel_variables(), self.pruning_masks):
            w = to_numpy(kernel)
            if self.sparsity_m_by_n is not None:
                new = m_by_n_mask(w, *self.sparsity_m_by_n)
            else:
                new = magnitude_mask(w, sparsity)
            mask.assign(new.astype(mask.dtype))
            kernel.assign((w * new).astype(w.dtype))
        if self.sparsity_m_by_n is not None:
            return self.sparsity_m_by_n[0] / self.sparsity_m_by_n[1]
        return sparsity

    def apply_masks(self):
        """Sets every pruned weight to exactly zero (`W <- W * mask`)."""
        for kernel, mask in zip(self.kernel_variables(), self.pruning_masks):
            kernel.assign(ops.multiply(kernel, ops.cast(mask, kernel.dtype)))

    def current_sparsity(self):
        """The fraction of exact zeros of each `W * mask`, in kernel order (floats)."""
        out = []
        for kernel in self.masked_kernels():
            values = to_numpy(kernel)
            out.append(float(np.mean(values == 0)) if values.size else 0.0)
        return out

    def get_config(self):
        config = super().get_config()
        config.update(
            pruning_schedule=keras.saving.serialize_keras_object(self.pruning_schedule),
            sparsity_m_by_n=None if self.sparsity_m_by_n is None else list(self.sparsity_m_by_n),
        )
        return config


def _count_pruned(wrapper, input_shape, output_shape):
    """The profile of a pruned layer: the wrapped layer's operations and parameters;
    its pruned matrices stored as their non-zeros (masks and the step are no
    parameters)."""
    counts = count_layer(wrapper.layer, input_shape, output_shape)
    inner = wrapper.layer
    kernels = {id(k): v for k, v in zip(wrapper.kernel_variables(), wrapper.masked_kernels())}
    bits = nonzero = 0
    for w in inner.weights:
        values = kernels.get(id(w))
        kept = int(np.count_nonzero(to_numpy(values))) if values is not None else int(np.prod(w.shape))
        nonzero += kept
        bits += kept * dtype_bits(w.dtype)
    return {
        "macs": counts["macs"], "adds": counts["adds"], "binary_ops": counts["binary_ops"],
        "params": sum(int(np.prod(w.shape)) for w in inner.weights),
        "trainable_params": sum(int(np.prod(w.shape)) for w in inner.trainable_weights),
        "nonzero_params": nonzero,
        "param_bits": bits,
    }


register_counter(PruneLowMagnitude, _count_pruned)
