"""`LogitsDistillation`: Hinton et al.'s soft-target loss, right for every loss given.

Keras 3.15's `keras.distillation.LogitsDistillation` applies the softmax and the T^2
factor only when the loss object is an instance of `keras.losses.KLDivergence`; its
default `loss="kl_divergence"` resolves to the function `keras.losses.kl_divergence`,
so neither is applied and the loss compares raw tempered logits as if they were
probabilities (it can even go negative in training). This subclass resolves every
loss to what it means.
"""

import math
import numbers

import keras
from keras import ops

from tfcompress.distillation.outputs import EPSILON, as_logits, outputs_probabilities

__all__ = ["LogitsDistillation", "check_temperature"]

_KL_NAMES = ("kl_divergence", "kld", "kullback_leibler_divergence")
_CE_NAMES = ("categorical_crossentropy",)


def check_temperature(temperature):
    """The temperature as a float; ValueError unless a finite number > 0."""
    if (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real)
            or not math.isfinite(float(temperature)) or temperature <= 0):
        raise ValueError(f"`temperature` must be a finite number > 0. Received: "
                         f"temperature={temperature!r}")
    return float(temperature)


class _Resolved:
    """What one loss argument means: kind "kl" | "crossentropy" | "other" | None."""

    def __init__(self, kind, fn=None):
        self.kind, self.fn = kind, fn

    def for_keras(self):
        """The object handed to keras' LogitsDistillation (which keeps it as `loss`)."""
        if self.kind == "kl":
            return keras.losses.KLDivergence()
        if self.kind == "crossentropy":
            return keras.losses.CategoricalCrossentropy()
        return self.fn


def _resolve(loss):
    if loss is None:
        return _Resolved(None)
    if isinstance(loss, str):
        name = loss.lower()
        if name in _KL_NAMES:
            return _Resolved("kl")
        if name in _CE_NAMES:
            return _Resolved("crossentropy")
        if name == "sparse_categorical_crossentropy":
            raise ValueError("`loss='sparse_categorical_crossentropy'` needs integer labels; "
                             "soft targets are distributions: use 'kl_divergence' or "
                             "'categorical_crossentropy'.")
        try:
            return _Resolved("other", keras.losses.get(loss))
        except ValueError:
            raise ValueError(f"Unknown loss {loss!r}: give a name keras.losses.get knows, "
                             "a keras.losses.Loss or a callable.") from None
    if isinstance(loss, keras.losses.KLDivergence) or loss is keras.losses.kl_divergence:
        return _Resolved("kl")
    if isinstance(loss, keras.losses.CategoricalCrossentropy) or (
            loss is keras.losses.categorical_crossentropy):
        return _Resolved("crossentropy")
    if isinstance(loss, keras.losses.SparseCategoricalCrossentropy):
        raise ValueError(f"{type(loss).__name__} needs integer labels; soft targets are "  # noqa: TRY004
                         "distributions: use KLDivergence or CategoricalCrossentropy.")
    if not callable(loss):
        raise ValueError(f"`loss` must be a loss name, a keras.losses.Loss or a callable "  # noqa: TRY004
                         f"(or None to skip an output). Received: loss={loss!r}")
    return _Resolved("other", loss)


@keras.saving.register_keras_serializable(package="tfcompress")
class LogitsDistillation(keras.distillation.LogitsDistillation):
    """Soft-target distillation (Hinton, Vinyals and Dean 2015), every loss made right.

    With teacher logits t, student logits s and temperature T, per output:

    - "kl_divergence" (default; also "kld", `keras.losses.kl_divergence`,
      `keras.losses.KLDivergence()`):
      T^2 * mean_batch KL(softmax(t / T) || softmax(s / T));
    - "categorical_crossentropy" (or the function / class):
      T^2 * mean_batch CE(softmax(t / T), softmax(s / T)), the KL plus the teacher's
      entropy (same gradient);
    - any other loss (e.g. "mse": logit matching, Ba and Caruana 2014) compares the
      raw logits, loss(t, s), which for MSE equals T^2 * MSE(t / T, s / T);
    - None skips that output (multi-output models).

    The T^2 factor keeps the soft-target gradients' scale independent of T (their
    magnitude goes as 1 / T^2). A model that ends in softmax gives probabilities p,
    used as the logits log(p) (`outputs.as_logits`): softmax(log(p) / T) is exactly the
    tempered distribution of the logits that p came from.

    Args:
        temperature: T, a finite number > 0.
        loss: a loss name, a `keras.losses.Loss`, a callable, None, or a structure of
            them matching the model outputs.

    Raises:
        ValueError: for a temperature <= 0 or not a number, a sparse (integer-label)
            cross-entropy, a loss that is not a loss, or only None losses.

    Example:
        >>> distiller = keras.distillation.Distiller(
        ...     teacher, student, LogitsDistillation(temperature=4), student_loss_weight=0.1)
    """

    def __init__(self, temperature=3.0, loss="kl_divergence"):
        temperature = check_temperature(temperature)
        self._kinds = keras.tree.map_structure(_resolve, loss)
        super().__init__(temperature=temperature,
                         loss=keras.tree.map_structure(lambda r: r.for_keras(), self._kinds))
        self._loss_argument = loss
        self._probabilities = (False, False)  # (teacher, student), set by validation

    def validate_model_compatibility(self, teacher, student):
        """Notes whether each model ends in softmax (its outputs then become log p)."""
        super().validate_model_compatibility(teacher, student)
        self._probabilities = (all(outputs_probabilities(teacher)),
                               all(outputs_probabilities(student)))

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        """The summed distillation loss over the outputs (a scalar)."""
        temperature = self.temperature
        teacher_prob, student_prob = self._probabilities

        def one(resolved, t, s):
            kind = resolved.kind
            if kind is None:
                return ops.convert_to_tensor(0.0)
            t = as_logits(ops.convert_to_tensor(t), teacher_prob)
            s = as_logits(ops.convert_to_tensor(s), student_prob)
            if kind == "other":
                return ops.mean(resolved.fn(t, s))
            p_t = ops.softmax(t / temperature, axis=-1)
            log_p_s = ops.log_softmax(s / temperature, axis=-1)
            cross = -ops.sum(p_t * log_p_s, axis=-1)
            if kind == "kl":
                cross = cross + ops.sum(p_t * ops.log(ops.maximum(p_t, EPSILON)), axis=-1)
            return ops.mean(cross) * (temperature ** 2)

        values = keras.tree.map_structure(one, self._kinds, teacher_outputs, student_outputs)
        return ops.sum(ops.stack(keras.tree.flatten(values)))

    def get_config(self):
        return {"temperature": self.temperature,
                "loss": keras.saving.serialize_keras_object(self._loss_argument)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["loss"] = keras.saving.deserialize_keras_object(config["loss"])
        return cls(**config)
