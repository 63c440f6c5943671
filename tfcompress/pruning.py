"""Magnitude pruning with retraining, for Keras 3 models.

Han, Pool, Tran, Dally. "Learning both Weights and Connections for Efficient
Neural Networks", NeurIPS 2015: train, remove the connections whose weights have
the smallest magnitude, retrain the remaining ones; repeated, this removes most
weights of LeNet and AlexNet without loss of accuracy. Han, Mao, Dally. "Deep
Compression", ICLR 2016, arXiv:1510.00149, sec. 2, makes it the first stage of
the compression pipeline (`tfcompress.deep_compression`).

For a weight matrix W with |W| = N entries and a target sparsity s in [0, 1),
the mask keeps the N - round(s * N) entries of largest |w| and zeroes the rest:

    mask_ij = 1  if |w_ij| is among the N - round(s * N) largest magnitudes
              0  otherwise                                      (ties: see below)

The layer computes with `W * mask`, so a pruned weight gets an exactly zero
gradient, and after every optimizer step the weight itself is multiplied by the
mask (a variable constraint), so it stays exactly zero even under Adam, whose
momentum would otherwise move it.

The sparsity rises during training following a schedule:

* `ConstantSparsity`: the target from `begin_step` on.
* `PolynomialDecay`: the gradual schedule of Zhu and Gupta, "To prune, or not
  to prune: exploring the efficacy of pruning for model compression",
  arXiv:1710.01878, eq. 1:

      s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (t_end - t_0)) ** power,
      t clamped to [t_0, t_end].

Structured N:M sparsity (`sparsity_m_by_n=(2, 4)`: 2 zeros in every 4
consecutive weights along the input-channel axis) is the pattern of NVIDIA's
sparse tensor cores: Mishra et al., "Accelerating Sparse Deep Neural Networks",
arXiv:2104.08378 (2021).

The names mirror `tensorflow_model_optimization.sparsity.keras` (tfmot), so that
porting means changing an import: `prune_low_magnitude`, `ConstantSparsity`,
`PolynomialDecay`, `UpdatePruningStep`, `PruningSummaries`, `strip_pruning`.
The step counting follows tfmot: each `PruneLowMagnitude` holds a
`pruning_step` variable that starts at -1 and that `UpdatePruningStep` (or
`Pruner.step()` in a custom loop) increments before every training batch, so
the first batch is step 0. The masks are updated eagerly, between batches, when
the schedule says so. Step and masks are model state: a checkpoint or `.keras`
file resumes where it stopped.

Example:
    >>> schedule = PolynomialDecay(0.0, 0.9, begin_step=0, end_step=1000, frequency=100)
    >>> pruned = prune_low_magnitude(model, pruning_schedule=schedule)
    >>> pruned.compile("adam", "sparse_categorical_crossentropy")
    >>> pruned.fit(x, y, epochs=10, callbacks=[UpdatePruningStep()])
    >>> final = strip_pruning(pruned)      # plain layers, 90% exact zeros
"""

import inspect
import math
import numbers
import os

import keras
import numpy as np
from keras import ops

from tfcompress import _weights
from tfcompress._cloning import (
    built_copy,
    check_layer_names,
    check_model,
    copy_weights_by_name,
    fresh_copy,
)

__all__ = [
    "ConstantSparsity",
    "PolynomialDecay",
    "PruneLowMagnitude",
    "Pruner",
    "PruningSchedule",
    "PruningSummaries",
    "UpdatePruningStep",
    "get_pruning_masks",
    "m_by_n_mask",
    "magnitude_mask",
    "prune_low_magnitude",
    "sparsity_report",
    "strip_pruning",
]


# --------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------


def _to_numpy(x):
    """A NumPy array from an array, Keras variable or eager tensor."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "numpy"):  # Keras variables and eager tensors: no copy warning
        return np.asarray(x.numpy())
    return np.asarray(ops.convert_to_numpy(x))


def _check_sparsity(name, value):
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, numbers.Real)
        or not math.isfinite(float(value))
        or not 0.0 <= float(value) < 1.0
    ):
        raise ValueError(f"`{name}` must be in [0, 1). Received: {name}={value!r}")
    return float(value)


def _check_int(name, value, minimum, allow_minus_one=False):
    ok = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    if ok and (value >= minimum or (allow_minus_one and value == -1)):
        return int(value)
    allowed = f"an integer >= {minimum}" + (" or -1" if allow_minus_one else "")
    raise ValueError(f"`{name}` must be {allowed}. Received: {name}={value!r}")


def _check_step(step):
    """A Python int from an int, NumPy integer or 0-d integer tensor."""
    if isinstance(step, (bool, np.bool_)):
        raise ValueError(f"`step` must be an integer. Received: step={step!r}")  # noqa: TRY004
    if not isinstance(step, numbers.Integral):
        try:
            array = _to_numpy(step)
        except (TypeError, ValueError):
            raise ValueError(f"`step` must be an integer. Received: step={step!r}") from None
        if array.shape != () or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"`step` must be an integer. Received: step={step!r}")
        step = array.item()
    return int(step)


def _check_m_by_n(value):
    """(m, n) as a tuple of Python ints with 0 < m < n, else ValueError."""
    message = (
        "`sparsity_m_by_n` must be a pair of integers (m, n) with 0 < m < n: m zeros in "
        f"every n consecutive weights, e.g. (2, 4). Received: sparsity_m_by_n={value!r}"
    )
    if isinstance(value, (str, bytes)):
        raise ValueError(message)  # noqa: TRY004
    try:
        pair = tuple(value)
    except TypeError:
        raise ValueError(message) from None
    if len(pair) != 2 or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) for v in pair
    ):
        raise ValueError(message)
    m, n = int(pair[0]), int(pair[1])
    if not 0 < m < n:
        raise ValueError(message)
    return (m, n)


# --------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------


class PruningSchedule:
    """When to update the masks, and to which sparsity (base class).

    A schedule is called with the current pruning step (a Python int; the masks
    are updated eagerly between batches) and returns `(should_prune, sparsity)`:
    whether the masks are recomputed at this step, and the fraction of weights
    to zero when they are. Subclasses implement `__call__`, `get_config` and
    `_prune_steps_up_to` (used by `sparsity_at`).

    Example:
        >>> should_prune, sparsity = schedule(step)
    """

    def __call__(self, step):
        """Returns `(should_prune, sparsity)` at `step`.

        Args:
            step: the pruning step, an integer (0 is the first training batch).

        Returns:
            A tuple of a Python bool and a Python float in [0, 1).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement __call__")

    def _last_prune_step(self, step):
        """The last step <= `step` at which the masks are updated, or None."""
        raise NotImplementedError(f"{type(self).__name__} must implement _last_prune_step")

    def sparsity_at(self, step):
        """The sparsity the masks have after the update (if any) of `step`.

        This is the target of the last pruning step at or before `step` (the
        masks keep it until the next update), or 0.0 if there was none yet.

        Args:
            step: the pruning step, an integer.

        Returns:
            A Python float in [0, 1).
        """
        last = self._last_prune_step(_check_step(step))
        return 0.0 if last is None else self(last)[1]

    def get_config(self):
        """The constructor arguments, as a dict."""
        raise NotImplementedError(f"{type(self).__name__} must implement get_config")

    @classmethod
    def from_config(cls, config):
        """Rebuilds a schedule from `get_config()`."""
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))


def _in_range_and_turn(step, begin_step, end_step, frequency):
    """tfmot's rule, plus the end step: begin <= step (<= end) and on a turn or at the end."""
    if step < begin_step or (end_step != -1 and step > end_step):
        return False
    return (step - begin_step) % frequency == 0 or step == end_step


def _last_turn(step, begin_step, end_step, frequency):
    if step < begin_step:
        return None
    if end_step != -1 and step >= end_step:
        return end_step
    return begin_step + (step - begin_step) // frequency * frequency


@keras.saving.register_keras_serializable(package="tfcompress")
class ConstantSparsity(PruningSchedule):
    """Prunes to a constant target sparsity every `frequency` steps.

    `should_prune(t)` is True for `begin_step <= t` (and `t <= end_step` unless
    `end_step == -1`) when `(t - begin_step) % frequency == 0`, and at
    `t == end_step` (tfmot's rule plus the end step, so the last update happens
    at `end_step`). The returned sparsity is always `target_sparsity`, as in
    tfmot; `sparsity_at(t)` is 0.0 before `begin_step` (no mask update yet).

    Args:
        target_sparsity: fraction of weights to zero, in [0, 1).
        begin_step: first pruning step, an integer >= 0.
        end_step: last pruning step (> begin_step), or -1 to prune until the end
            of training.
        frequency: steps between mask updates, an integer >= 1.

    Raises:
        ValueError: for an argument out of range (the received value is named).

    Example:
        >>> schedule = ConstantSparsity(0.8, begin_step=0, frequency=100)
        >>> schedule(200)
        (True, 0.8)
    """

    def __init__(self, target_sparsity, begin_step=0, end_step=-1, frequency=100):
        self.target_sparsity = _check_sparsity("target_sparsity", target_sparsity)
        self.begin_step = _check_int("begin_step", begin_step, 0)
        self.end_step = _check_int("end_step", end_step, 0, allow_minus_one=True)
        if self.end_step != -1 and self.end_step <= self.begin_step:
            raise ValueError(
                "`end_step` must be -1 or > begin_step. "
                f"Received: end_step={end_step!r}, begin_step={begin_step!r}"
            )
        self.frequency = _check_int("frequency", frequency, 1)

    def __call__(self, step):
        step = _check_step(step)
        should = _in_range_and_turn(step, self.begin_step, self.end_step, self.frequency)
        return should, self.target_sparsity

    def _last_prune_step(self, step):
        return _last_turn(step, self.begin_step, self.end_step, self.frequency)

    def get_config(self):
        return {
            "target_sparsity": self.target_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
        }


@keras.saving.register_keras_serializable(package="tfcompress")
class PolynomialDecay(PruningSchedule):
    """Gradual pruning from `initial_sparsity` to `final_sparsity` (Zhu and Gupta).

    Zhu and Gupta, "To prune, or not to prune", arXiv:1710.01878, eq. 1:

        s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (t_end - t_0)) ** power

    with t clamped to [t_0, t_end] (so s_t = s_i before `begin_step` and s_f
    after `end_step`). The sparsity rises quickly while there are many redundant
    weights and slowly near the target. `should_prune(t)` is True for
    `t_0 <= t <= t_end` when `(t - t_0) % frequency == 0` or `t == t_end`; after
    `end_step` the masks are not updated again (the sparsity stays s_f).

    Args:
        initial_sparsity: s_i, in [0, 1).
        final_sparsity: s_f, in [0, 1).
        begin_step: t_0, an integer >= 0.
        end_step: t_end, an integer > begin_step.
        power: exponent, a number > 0 (3 in the paper).
        frequency: steps between mask updates, an integer >= 1.

    Raises:
        ValueError: for an argument out of range (the received value is named).

    Example:
        >>> schedule = PolynomialDecay(0.0, 0.9, begin_step=0, end_step=100, frequency=10)
        >>> round(schedule(50)[1], 4)
        0.7875
    """

    def __init__(
        self, initial_sparsity, final_sparsity, begin_step, end_step, power=3, frequency=100
    ):
        self.initial_sparsity = _check_sparsity("initial_sparsity", initial_sparsity)
        self.final_sparsity = _check_sparsity("final_sparsity", final_sparsity)
        self.begin_step = _check_int("begin_step", begin_step, 0)
        self.end_step = _check_int("end_step", end_step, 0)
        if self.end_step <= self.begin_step:
            raise ValueError(
                "`end_step` must be > begin_step. "
                f"Received: end_step={end_step!r}, begin_step={begin_step!r}"
            )
        if (
            isinstance(power, (bool, np.bool_))
            or not isinstance(power, numbers.Real)
            or not math.isfinite(float(power))
            or not power > 0
        ):
            raise ValueError(f"`power` must be a number > 0. Received: power={power!r}")
        self.power = power if isinstance(power, int) else float(power)
        self.frequency = _check_int("frequency", frequency, 1)

    def __call__(self, step):
        step = _check_step(step)
        t = min(max(step, self.begin_step), self.end_step)
        progress = (t - self.begin_step) / (self.end_step - self.begin_step)
        sparsity = self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (
            1.0 - progress
        ) ** self.power
        should = _in_range_and_turn(step, self.begin_step, self.end_step, self.frequency)
        return should, float(sparsity)

    def _last_prune_step(self, step):
        return _last_turn(step, self.begin_step, self.end_step, self.frequency)

    def get_config(self):
        return {
            "initial_sparsity": self.initial_sparsity,
            "final_sparsity": self.final_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "power": self.power,
            "frequency": self.frequency,
        }


# --------------------------------------------------------------------------------------
# Masks (NumPy)
# --------------------------------------------------------------------------------------


def _mask_dtype(w):
    return w.dtype if np.issubdtype(w.dtype, np.floating) else np.dtype("float32")


def magnitude_mask(weights, sparsity):
    """The 0/1 mask that zeroes the `round(sparsity * N)` smallest-magnitude weights.

    Han et al., NeurIPS 2015: keep the connections of largest |w|. Exactly
    `min(round(sparsity * N), N - 1)` entries are 0 (Python's `round`, halves
    to even; at least one weight is kept, as in tfmot). Ties are broken
    deterministically: weights are ranked by |w| descending, and among equal
    magnitudes the one with the lower flat (C-order) index ranks first (is
    kept). Weights that are already exactly 0 have the smallest magnitude, so a
    rising sparsity never revives a pruned weight.

    Args:
        weights: an array or tensor of any shape.
        sparsity: fraction of entries to zero, in [0, 1).

    Returns:
        A NumPy array of the weights' shape with values 0 and 1, in the weights'
        float dtype (float32 for non-float weights).

    Raises:
        ValueError: for a sparsity outside [0, 1).

    Example:
        >>> magnitude_mask(np.array([0.3, -0.1, 0.2, -0.4]), 0.5)
        array([1., 0., 0., 1.])
    """
    sparsity = _check_sparsity("sparsity", sparsity)
    w = _to_numpy(weights)
    size = w.size
    mask = np.ones(size, _mask_dtype(w))
    if size == 0:
        return mask.reshape(w.shape)
    zeros = min(round(sparsity * size), size - 1)
    if zeros:
        order = np.argsort(-np.abs(w.reshape(-1)), kind="stable")
        mask[order[size - zeros:]] = 0
    return mask.reshape(w.shape)


def m_by_n_mask(weights, m=2, n=4):
    """The m:n structured mask: m zeros in every n consecutive input channels.

    tfmot's `sparsity_m_by_n=(m, n)` semantics (NVIDIA 2:4 for (2, 4), Mishra
    et al., arXiv:2104.08378): the weights are grouped into runs of n
    consecutive entries along the input-channel axis, which for Keras kernels
    is axis -2 (Dense [in, out], Conv1D/2D/3D [..., in, out]; tfmot transposes
    to the TFLite layout [out, ..., in] and groups along its last axis, the
    same groups). In each group the n - m entries of largest |w| are kept and
    the m smallest zeroed (ties: the lower input channel is kept, as
    `tf.math.top_k` does). For Conv*Transpose kernels ([..., out, in]) axis -2
    is the filters axis, as in tfmot.

    Args:
        weights: an array or tensor of rank >= 2 whose axis -2 has a size
            divisible by n.
        m: zeros per group, 0 < m < n.
        n: group size.

    Returns:
        A NumPy 0/1 array of the weights' shape and float dtype.

    Raises:
        ValueError: for (m, n) not integers with 0 < m < n, a rank < 2, or an
            input-channel size not divisible by n (the shape is named).

    Example:
        >>> m_by_n_mask(np.array([[0.1], [-0.5], [0.3], [0.2]]), 2, 4).ravel()
        array([0., 1., 1., 0.])
    """
    m, n = _check_m_by_n((m, n))
    w = _to_numpy(weights)
    if w.ndim < 2 or w.shape[-2] % n:
        raise ValueError(
            f"sparsity_m_by_n=({m}, {n}) groups the input-channel axis (axis -2) in runs of "
            f"{n}; it needs a weight of rank >= 2 whose axis -2 is divisible by {n}. "
            f"Received a weight of shape {tuple(w.shape)}."
        )
    moved = np.moveaxis(np.abs(w), -2, -1)  # [..., out, in]: groups are contiguous
    groups = moved.reshape(-1, n)
    order = np.argsort(-groups, axis=1, kind="stable")
    mask = np.zeros(groups.shape, _mask_dtype(w))
    np.put_along_axis(mask, order[:, : n - m], 1, axis=1)
    return np.moveaxis(mask.reshape(moved.shape), -1, -2)


# --------------------------------------------------------------------------------------
# The wrapper layer
# --------------------------------------------------------------------------------------


def _unsupported(layer):
    return ValueError(
        f"Layer {layer.name!r} ({type(layer).__name__}) has no weights to prune. "
        f"Supported: {', '.join(_weights.supported_layer_names())}, or any layer with "
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


def _deserialize_schedule(schedule):
    if isinstance(schedule, dict):
        schedule = keras.saving.deserialize_keras_object(schedule)
    if not isinstance(schedule, PruningSchedule):
        raise ValueError(  # noqa: TRY004
            "`pruning_schedule` must be a PruningSchedule (e.g. ConstantSparsity or "
            f"PolynomialDecay). Received: pruning_schedule={schedule!r}"
        )
    return schedule


@keras.saving.register_keras_serializable(package="tfcompress")
class PruneLowMagnitude(keras.layers.Wrapper):
    """Prunes the weight matrices of a layer by magnitude, following a schedule.

    For each weight matrix W of the wrapped layer (`tfcompress._weights`: the
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
        if isinstance(layer, keras.Model) or not _weights.is_supported(layer):
            raise _unsupported(layer)
        if pruning_schedule is None:
            pruning_schedule = ConstantSparsity(0.5, 0)
        pruning_schedule = _deserialize_schedule(pruning_schedule)
        if sparsity_m_by_n is not None:
            sparsity_m_by_n = _check_m_by_n(sparsity_m_by_n)
        kwargs.setdefault("name", f"prune_low_magnitude_{layer.name}")
        super().__init__(layer, **kwargs)
        self.pruning_schedule = pruning_schedule
        self.sparsity_m_by_n = sparsity_m_by_n
        self._call_has_training = "training" in inspect.signature(layer.call).parameters

    @classmethod
    def from_config(cls, config, custom_objects=None):
        # Wrapper.from_config pops "layer" from the dict it is given: give it a copy.
        return super().from_config(dict(config), custom_objects=custom_objects)

    def build(self, input_shape=None):
        super().build(input_shape)
        kernels = _weights.kernel_variables(self.layer)
        if not kernels:
            raise _unsupported(self.layer)
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

    def _kernels(self):
        return _weights.kernel_variables(self.layer)

    def masked_kernels(self):
        """The weight matrices the layer computes with, `W * mask`, as tensors."""
        return [
            ops.multiply(kernel, ops.cast(mask, kernel.dtype))
            for kernel, mask in zip(self._kernels(), self.pruning_masks)
        ]

    def call(self, inputs, training=None, **kwargs):
        kernels = self._kernels()
        masked = self.masked_kernels()

        def substitute(variables):
            values = []
            for v in variables:
                position = next((i for i, k in enumerate(kernels) if k is v), None)
                values.append(v if position is None else masked[position])
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
        # Masking changes no shape: ask the wrapped layer (which falls back to a
        # symbolic call when it does not implement compute_output_shape).
        if self._call_has_training:
            kwargs["training"] = training
        return self.layer.compute_output_spec(inputs, **kwargs)

    def compute_mask(self, inputs, mask=None):
        return self.layer.compute_mask(inputs, mask)

    # -- eager mask maintenance ---------------------------------------------------------

    def update_masks(self):
        """Recomputes the masks from the current weights and zeroes the pruned weights.

        The sparsity is `pruning_schedule(step)[1]` at the current
        `pruning_step`; see the class docstring for the rule. Eager only (called
        between training steps).

        Returns:
            The sparsity used (m / n with `sparsity_m_by_n`).
        """
        step = int(_to_numpy(self.pruning_step))
        sparsity = self.pruning_schedule(step)[1]
        for kernel, mask in zip(self._kernels(), self.pruning_masks):
            w = _to_numpy(kernel)
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
        for kernel, mask in zip(self._kernels(), self.pruning_masks):
            kernel.assign(ops.multiply(kernel, ops.cast(mask, kernel.dtype)))

    def current_sparsity(self):
        """The fraction of exact zeros of each `W * mask`, in kernel order (floats)."""
        out = []
        for kernel in self.masked_kernels():
            values = _to_numpy(kernel)
            out.append(float(np.mean(values == 0)) if values.size else 0.0)
        return out

    def get_config(self):
        config = super().get_config()
        config.update(
            pruning_schedule=keras.saving.serialize_keras_object(self.pruning_schedule),
            sparsity_m_by_n=None if self.sparsity_m_by_n is None else list(self.sparsity_m_by_n),
        )
        return config


# --------------------------------------------------------------------------------------
# Model-level API
# --------------------------------------------------------------------------------------


def _walk(layer):
    """`layer` and, recursively, the layers of nested models (not inside wrappers)."""
    yield layer
    if isinstance(layer, keras.Model):
        for child in layer.layers:
            yield from _walk(child)


def _collect_wrappers(model_or_layer):
    return [layer for layer in _walk(model_or_layer) if isinstance(layer, PruneLowMagnitude)]


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
            original's. Nested models are not supported.
        pruning_schedule: a `PruningSchedule` for every supported layer
            (default `ConstantSparsity(0.5, 0)`), or, for a model, a dict
            {layer name: PruningSchedule} pruning only the named layers (the
            others stay dense).
        sparsity_m_by_n: None, or (m, n) with 0 < m < n: m zeros in every n
            consecutive weights along the input-channel axis (tfmot's meaning;
            (2, 4) is NVIDIA 2:4).
        **kwargs: for a layer, standard Layer arguments of the wrapper.

    Returns:
        A `PruneLowMagnitude` for a layer; for a model a new, uncompiled model of
        the same kind with each pruned layer replaced by its wrapper (named
        "prune_low_magnitude_" + the layer's name); Flatten, pooling,
        BatchNormalization, activations and other layers without weight
        matrices are copied as they are.

    Raises:
        ValueError: for an invalid schedule or `sparsity_m_by_n`, an unsupported
            layer (named, with the supported types), a name in the dict that is
            not a layer of the model (the layer names are listed), an already
            pruned model or layer, a subclassed, unbuilt or nested model, or a
            model without any layer to prune.

    Example:
        >>> pruned = prune_low_magnitude(model, ConstantSparsity(0.8, begin_step=0))
        >>> pruned = prune_low_magnitude(
        ...     model, {"fc1": PolynomialDecay(0.0, 0.95, 0, 1000), "fc2": ConstantSparsity(0.5)})
    """
    if sparsity_m_by_n is not None:
        sparsity_m_by_n = _check_m_by_n(sparsity_m_by_n)
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
    if kwargs:
        raise ValueError(
            f"Layer arguments are for a single layer, not a model. Received: {sorted(kwargs)}"
        )
    check_model(model, "prune_low_magnitude")
    pruned = [layer.name for layer in _collect_wrappers(model)]
    if pruned:
        raise ValueError(
            f"Model {model.name!r} is already pruned (PruneLowMagnitude layers: "
            f"{', '.join(pruned)}). Call strip_pruning first."
        )
    nested = [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    if nested:
        raise ValueError(
            f"Nested model(s) {', '.join(map(repr, nested))} in {model.name!r} are not "
            "supported: flatten them into the outer model, or prune the inner model first "
            "and nest the result."
        )
    if isinstance(pruning_schedule, dict):
        check_layer_names(model, pruning_schedule)
        per_layer = {
            name: _deserialize_schedule(schedule) for name, schedule in pruning_schedule.items()
        }
        for name in per_layer:
            layer = model.get_layer(name)
            if not _weights.is_supported(layer):
                raise _unsupported(layer)
    else:
        schedule = _deserialize_schedule(
            ConstantSparsity(0.5, 0) if pruning_schedule is None else pruning_schedule
        )
        per_layer = {
            layer.name: schedule for layer in model.layers
            if not isinstance(layer, keras.layers.InputLayer) and _weights.is_supported(layer)
        }
        if not per_layer:
            raise ValueError(
                f"Model {model.name!r} has no layer with weights to prune. Supported: "
                f"{', '.join(_weights.supported_layer_names())}, or any layer with "
                "get_prunable_weights()."
            )

    def clone(layer):
        if layer.name not in per_layer:
            return fresh_copy(layer)
        return PruneLowMagnitude(built_copy(layer), per_layer[layer.name], sparsity_m_by_n)

    new = keras.models.clone_model(model, clone_function=clone)
    copy_weights_by_name(model, new, skip=per_layer)
    return new


def strip_pruning(model):
    """Replaces every `PruneLowMagnitude` by its layer, with the pruned weights.

    Each weight matrix of the returned layers is `W * mask` (exactly zero where
    pruned), so the stripped model computes what the pruned model computes,
    without masks, step counters or constraints. Other layers are copied with
    their weights.

    Args:
        model: a functional or Sequential model (pruned or not).

    Returns:
        A new, uncompiled model of the same kind with plain layers (named as the
        wrapped layers were); the input model is unchanged.

    Raises:
        ValueError: for something that is not a built functional or Sequential
            model, or pruning wrappers inside a nested model.

    Example:
        >>> final = strip_pruning(pruned)
        >>> float(np.mean(final.get_layer("fc1").kernel.numpy() == 0))
        0.9
    """
    check_model(model, "strip_pruning")
    nested = [
        layer.name for layer in model.layers
        if isinstance(layer, keras.Model) and _collect_wrappers(layer)
    ]
    if nested:
        raise ValueError(
            f"Nested model(s) {', '.join(map(repr, nested))} in {model.name!r} hold pruning "
            "wrappers; strip_pruning works on the layers of the outer model only. Strip the "
            "nested model(s) first."
        )
    wrappers = {layer.name for layer in model.layers if isinstance(layer, PruneLowMagnitude)}

    def clone(layer):
        if not isinstance(layer, PruneLowMagnitude):
            return fresh_copy(layer)
        inner = layer.layer
        masked = {
            id(k): _to_numpy(v)
            for k, v in zip(layer._kernels(), layer.masked_kernels())
        }
        weights = [
            masked.get(id(v), w) for v, w in zip(inner.weights, inner.get_weights())
        ]
        return built_copy(inner, weights)

    new = keras.models.clone_model(model, clone_function=clone)
    copy_weights_by_name(model, new, skip=wrappers)
    return new


def _weight_rows(model):
    """(layer name, weight name, effective values) of every weight matrix, in layer order."""
    for layer in _walk(model):
        if isinstance(layer, PruneLowMagnitude):
            if not layer.built:
                continue
            for kernel, values in zip(layer._kernels(), layer.masked_kernels()):
                yield layer.layer.name, kernel.name, _to_numpy(values)
        elif (
            not isinstance(layer, keras.Model)
            and layer.built
            and _weights.is_supported(layer)
        ):
            for kernel in _weights.kernel_variables(layer):
                yield layer.name, kernel.name, _to_numpy(kernel)


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
    for wrapper in _collect_wrappers(model):
        if not wrapper.built:
            continue
        for kernel, mask in zip(wrapper._kernels(), wrapper.pruning_masks):
            out[f"{wrapper.layer.name}/{kernel.name}"] = _to_numpy(mask)
    return out


# --------------------------------------------------------------------------------------
# Training: custom loops and callbacks
# --------------------------------------------------------------------------------------


class Pruner:
    """Drives the pruning of a model in a custom training loop.

    Call `step()` before each training batch (it does what `UpdatePruningStep`
    does in `fit`): each wrapper's `pruning_step` is incremented (the first
    batch is step 0) and, where `pruning_schedule(step)` says so, its masks are
    recomputed (`PruneLowMagnitude.update_masks`). The optimizer keeps pruned
    weights at zero through the mask constraint (Keras 3 optimizers apply
    `variable.constraint` after each `apply_gradients`).

    Args:
        model: a model (or layer) containing `PruneLowMagnitude` layers, also
            inside nested models.

    Raises:
        ValueError: if it contains none.

    Example:
        >>> pruner = Pruner(pruned)
        >>> for x, y in dataset:
        ...     pruner.step()
        ...     with tf.GradientTape() as tape:
        ...         loss = loss_fn(y, pruned(x, training=True))
        ...     grads = tape.gradient(loss, pruned.trainable_variables)
        ...     optimizer.apply_gradients(zip(grads, pruned.trainable_variables))
        >>> pruner.apply_masks()
        >>> pruner.sparsity()
        {'fc1/kernel': 0.9, 'fc2/kernel': 0.9, 'predictions/kernel': 0.9}
    """

    def __init__(self, model):
        wrappers = _collect_wrappers(model)
        if not wrappers:
            name = getattr(model, "name", repr(model))
            raise ValueError(
                f"{name!r} has no PruneLowMagnitude layer: nothing to prune. Wrap layers with "
                "prune_low_magnitude first."
            )
        unbuilt = [w.name for w in wrappers if not w.built]
        if unbuilt:
            raise ValueError(
                f"Pruning wrapper(s) {', '.join(unbuilt)} are not built; call the model on "
                "data (or give it an input shape) first."
            )
        self.model = model
        self.wrappers = wrappers

    def step(self):
        """Advances every wrapper by one step; updates the masks that are due.

        Returns:
            The names of the wrapped layers whose masks were updated.
        """
        updated = []
        for wrapper in self.wrappers:
            step = int(_to_numpy(wrapper.pruning_step)) + 1
            wrapper.pruning_step.assign(step)
            if wrapper.pruning_schedule(step)[0]:
                wrapper.update_masks()
                updated.append(wrapper.layer.name)
        return updated

    def apply_masks(self):
        """Sets every pruned weight to exactly zero."""
        for wrapper in self.wrappers:
            wrapper.apply_masks()

    def sparsity(self):
        """{"layer/weight": fraction of exact zeros of `W * mask`} (the wrapped layer's name)."""
        out = {}
        for wrapper in self.wrappers:
            for kernel, value in zip(wrapper._kernels(), wrapper.current_sparsity()):
                out[f"{wrapper.layer.name}/{kernel.name}"] = value
        return out

    def targets(self):
        """{wrapped layer name: the schedule's `sparsity_at(step)`} at the current steps."""
        return {
            w.layer.name: w.pruning_schedule.sparsity_at(int(_to_numpy(w.pruning_step)))
            for w in self.wrappers
        }


class UpdatePruningStep(keras.callbacks.Callback):
    """Advances the pruning step before each batch and updates the masks when due.

    Required when training a pruned model with `fit` (as in tfmot). Before each
    training batch it calls `Pruner.step()`: every `pruning_step` is incremented
    (the first batch of a fresh model is step 0; a loaded model continues from
    its saved step) and the masks the schedule marks are recomputed. At the end
    of every epoch and of training, `W <- W * mask` once more (belt and braces,
    e.g. after an optimizer's EMA swap). With `steps_per_execution > 1` the
    step counts executions, not batches.

    Raises:
        ValueError: (at the start of training) if the model has no
            `PruneLowMagnitude` layer.

    Example:
        >>> pruned.fit(x, y, epochs=4, callbacks=[UpdatePruningStep()])
    """

    def __init__(self):
        super().__init__()
        self.pruner = None

    def on_train_begin(self, logs=None):
        self.pruner = Pruner(self.model)

    def on_train_batch_begin(self, batch, logs=None):
        self.pruner.step()

    def on_epoch_end(self, epoch, logs=None):
        self.pruner.apply_masks()

    def on_train_end(self, logs=None):
        self.pruner.apply_masks()


class PruningSummaries(keras.callbacks.Callback):
    """Writes per-layer sparsity to TensorBoard.

    For every pruned weight matrix, the scalar "<layer>/<weight>/sparsity" (the
    fraction of exact zeros of `W * mask`), and per wrapped layer
    "<layer>/target_sparsity" (`schedule.sparsity_at(step)`), at the pruning
    step of the model, to `log_dir + "/metrics"` (tfmot's layout).

    Args:
        log_dir: directory of the event files (str or path-like, not empty).
        update_freq: "epoch" (at the end of every epoch) or an integer N >= 1
            (every N batches, and at the end of every epoch).

    Raises:
        ValueError: for an invalid `log_dir` or `update_freq`, or (at the start
            of training) a model without `PruneLowMagnitude` layers.

    Example:
        >>> pruned.fit(x, y, callbacks=[UpdatePruningStep(), PruningSummaries("logs")])
    """

    def __init__(self, log_dir, update_freq="epoch"):
        super().__init__()
        if isinstance(log_dir, os.PathLike):
            log_dir = os.fspath(log_dir)
        if not isinstance(log_dir, str) or not log_dir:
            raise ValueError(
                f"`log_dir` must be a non-empty string or path. Received: log_dir={log_dir!r}"
            )
        if update_freq != "epoch":
            if (
                not isinstance(update_freq, numbers.Integral)
                or isinstance(update_freq, (bool, np.bool_))
                or update_freq < 1
            ):
                raise ValueError(
                    '`update_freq` must be "epoch" or an integer >= 1. '
                    f"Received: update_freq={update_freq!r}"
                )
            update_freq = int(update_freq)
        self.log_dir = log_dir
        self.update_freq = update_freq
        self._writer = None
        self._wrappers = []
        self._batches = 0

    def on_train_begin(self, logs=None):
        import tensorflow as tf

        self._wrappers = Pruner(self.model).wrappers
        self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "metrics"))
        self._batches = 0

    def _write(self):
        import tensorflow as tf

        # What `tf.summary.scalar` writes (a float32 tensor tagged for TensorBoard's
        # "scalars" plugin), without needing the tensorboard package installed.
        metadata = tf.compat.v1.SummaryMetadata()
        metadata.plugin_data.plugin_name = "scalars"

        def scalar(tag, value, step):
            tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=metadata)

        step = max(int(_to_numpy(w.pruning_step)) for w in self._wrappers)
        with self._writer.as_default():
            for wrapper in self._wrappers:
                name = wrapper.layer.name
                for kernel, value in zip(wrapper._kernels(), wrapper.current_sparsity()):
                    scalar(f"{name}/{kernel.name}/sparsity", value, step)
                target = wrapper.pruning_schedule.sparsity_at(
                    int(_to_numpy(wrapper.pruning_step))
                )
                scalar(f"{name}/target_sparsity", target, step)
        self._writer.flush()

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        if self.update_freq != "epoch" and self._batches % self.update_freq == 0:
            self._write()

    def on_epoch_end(self, epoch, logs=None):
        self._write()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
