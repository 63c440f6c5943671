"""`EnsembleTeacher`: several trained models as one frozen teacher (model distillation).

Hinton et al. 2015 distil an ensemble into one model; the ensemble's prediction is the
mean of its members'. Every member's outputs are first taken as logits z_i (log p_i for
a member that ends in softmax, `outputs.as_logits`); then

    combine="mean_logits":  z = mean_i z_i
    combine="mean_probs":   z = log(mean_i softmax(z_i)), whose softmax is the mean
                            of the members' probabilities.

Either way the teacher outputs logits, ready for `LogitsDistillation`.
"""

import keras
from keras import ops

from tfcompress.distillation.outputs import EPSILON, as_logits, outputs_probabilities

__all__ = ["COMBINE", "EnsembleTeacher"]

COMBINE = ("mean_logits", "mean_probs")


@keras.saving.register_keras_serializable(package="tfcompress")
class EnsembleLogits(keras.layers.Layer):
    """Combines the members' outputs into logits (module docstring).

    Args:
        combine: "mean_logits" or "mean_probs".
        probabilities: per member, whether its output is a softmax's.
    """

    def __init__(self, combine="mean_logits", probabilities=(), **kwargs):
        super().__init__(**kwargs)
        if combine not in COMBINE:
            raise ValueError(f"`combine` must be one of {', '.join(COMBINE)}. Received: "
                             f"combine={combine!r}")
        self.combine = combine
        self.probabilities = [bool(p) for p in probabilities]

    def call(self, outputs):
        logits = [as_logits(z, p) for z, p in zip(outputs, self.probabilities)]
        if self.combine == "mean_logits":
            return ops.mean(ops.stack(logits, axis=0), axis=0)
        probs = ops.mean(ops.stack([ops.softmax(z, axis=-1) for z in logits], axis=0), axis=0)
        return ops.log(ops.maximum(probs, EPSILON))

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "combine": self.combine,
                "probabilities": list(self.probabilities)}


def EnsembleTeacher(models, combine="mean_logits", name="ensemble_teacher"):
    """A frozen functional `keras.Model` whose output combines the members' (logits).

    Args:
        models: a non-empty list of trained models with one output each, the same
            input shape(s) and the same output shape.
        combine: "mean_logits" or "mean_probs" (module docstring).
        name: the model's name.

    Returns:
        A `keras.Model` (trainable=False) taking the members' inputs and returning
        logits; usable as `keras.distillation.Distiller`'s teacher.

    Raises:
        ValueError: for an empty list, something that is not a Keras model, members
            with several outputs or different input / output shapes, an unknown
            combine.

    Example:
        >>> teacher = EnsembleTeacher([resnet_a, resnet_b], combine="mean_probs")
        >>> distiller = keras.distillation.Distiller(teacher, student, LogitsDistillation(4))
    """
    if combine not in COMBINE:
        raise ValueError(f"`combine` must be one of {', '.join(COMBINE)}. Received: "
                         f"combine={combine!r}")
    models = list(models) if isinstance(models, (list, tuple)) else models
    if not isinstance(models, list) or not models:
        raise ValueError(f"`models` must be a non-empty list of Keras models. Received: "
                         f"models={models!r}")
    for i, model in enumerate(models):
        if not isinstance(model, keras.Model) or getattr(model, "inputs", None) is None:
            raise ValueError(f"models[{i}] must be a built functional or Sequential Keras "
                             f"model. Received: {model!r}")
        if len(model.outputs) != 1:
            raise ValueError(f"models[{i}] ({model.name!r}) has {len(model.outputs)} "
                             "outputs; an EnsembleTeacher member has one.")
    first = models[0]
    in_shapes = [tuple(t.shape[1:]) for t in first.inputs]
    out_shape = tuple(first.outputs[0].shape[1:])
    for i, model in enumerate(models[1:], 1):
        shapes = [tuple(t.shape[1:]) for t in model.inputs]
        if shapes != in_shapes:
            raise ValueError(f"models[{i}] ({model.name!r}) takes inputs of shape {shapes}; "
                             f"models[0] ({first.name!r}) takes {in_shapes}.")
        if tuple(model.outputs[0].shape[1:]) != out_shape:
            raise ValueError(f"models[{i}] ({model.name!r}) outputs shape "
                             f"{tuple(model.outputs[0].shape[1:])}; models[0] "
                             f"({first.name!r}) outputs {out_shape}.")
    inputs = [keras.Input(shape=t.shape[1:], dtype=t.dtype, name=f"input_{k}")
              for k, t in enumerate(first.inputs)]
    args = inputs[0] if len(inputs) == 1 else inputs
    outputs = [model(args, training=False) for model in models]
    probabilities = [outputs_probabilities(model)[0] for model in models]
    combined = EnsembleLogits(combine, probabilities, name="combine")(outputs)
    teacher = keras.Model(args, combined, name=name)
    teacher.trainable = False
    return teacher
