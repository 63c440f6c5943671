"""Pruning schedules: when the masks are updated, and to which sparsity.

* `ConstantSparsity`: the target from `begin_step` on.
* `PolynomialDecay`: the gradual schedule of Zhu and Gupta, "To prune, or not
  to prune: exploring the efficacy of pruning for model compression",
  arXiv:1710.01878, eq. 1:

      s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (t_end - t_0)) ** power,
      t clamped to [t_0, t_end].

The names and the step rule are tfmot's (`tfmot.sparsity.keras`).
"""

import math
import numbers

import keras
import numpy as np

from tfcompress.core.wrapper import to_numpy

__all__ = [
    "ConstantSparsity",
    "PolynomialDecay",
    "PruningSchedule",
    "check_sparsity",
    "check_step",
    "deserialize_schedule",
]


def check_sparsity(name, value):
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


def check_step(step):
    """A Python int from an int, NumPy integer or 0-d integer tensor."""
    if isinstance(step, (bool, np.bool_)):
        raise ValueError(f"`step` must be an integer. Received: step={step!r}")  # noqa: TRY004
    if not isinstance(step, numbers.Integral):
        try:
            array = to_numpy(step)
        except (TypeError, ValueError):
            raise ValueError(f"`step` must be an integer. Received: step={step!r}") from None
        if array.shape != () or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"`step` must be an integer. Received: step={step!r}")
        step = array.item()
    return int(step)




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
        last = self._last_prune_step(check_step(step))
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
        self.target_sparsity = check_sparsity("target_sparsity", target_sparsity)
        self.begin_step = _check_int("begin_step", begin_step, 0)
        self.end_step = _check_int("end_step", end_step, 0, allow_minus_one=True)
        if self.end_step != -1 and self.end_step <= self.begin_step:
            raise ValueError(
                "`end_step` must be -1 or > begin_step. "
                f"Received: end_step={end_step!r}, begin_step={begin_step!r}"
            )
        self.frequency = _check_int("frequency", frequency, 1)

    def __call__(self, step):
        step = check_step(step)
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
        self.initial_sparsity = check_sparsity("initial_sparsity", initial_sparsity)
        self.final_sparsity = check_sparsity("final_sparsity", final_sparsity)
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
        step = check_step(step)
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


def deserialize_schedule(schedule):
    """A `PruningSchedule` from a schedule or its serialized config, else ValueError."""
    if isinstance(schedule, dict):
        schedule = keras.saving.deserialize_keras_object(schedule)
    if not isinstance(schedule, PruningSchedule):
        raise ValueError(  # noqa: TRY004
            "`pruning_schedule` must be a PruningSchedule (e.g. ConstantSparsity or "
            f"PolynomialDecay). Received: pruning_schedule={schedule!r}"
        )
    return schedule
