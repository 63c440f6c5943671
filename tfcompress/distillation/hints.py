"""FitNets hints: a student layer regresses a teacher layer through a learned map.

Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015. With the teacher's hint
layer output u (the target, no gradient) and the student's guided layer output v, the
hint loss is

    L_hint = loss(u, r(v)),   loss = mean squared error by default,

r the regressor: a 1x1 convolution (after a bilinear resize when the spatial sizes
differ) for feature maps, a Dense layer for vectors. Stage 1 (`fitnets_stage`) trains
the student up to its guided layer and r on L_hint alone; stage 2 is ordinary
distillation (`LogitsDistillation`), optionally with the hint kept as a second loss.

With a layer name, `keras.distillation.Distiller` runs the student a second time per step
(its feature extractor, in training mode): BatchNorm statistics and QAT range averages
are updated twice per step, dropout draws two masks, and a step costs more.

`HintDistillation` is a `keras.distillation.DistillationLoss` and also a Keras layer:
`keras.distillation.Distiller` keeps its losses in a tracked list, so the regressor's
weights are trainable weights of the Distiller and are trained with the student, and
they never become part of the student (`distiller.student.save(...)` holds none).
"""

import warnings

import keras
from keras import ops

__all__ = ["HintDistillation", "fitnets_stage"]


def _layer_output_shape(model, name, role):
    if not isinstance(model, keras.Model) or getattr(model, "inputs", None) is None:
        raise ValueError(f"HintDistillation needs a functional or Sequential {role} (its "
                         f"layer {name!r} is read from the graph). Received: {model!r}")
    try:
        layer = model.get_layer(name)
    except ValueError:
        names = ", ".join(layer.name for layer in model.layers)
        raise ValueError(f"No layer named {name!r} in the {role} {model.name!r}. "
                         f"Layers: {names}.") from None
    try:
        return tuple(layer.output.shape)
    except (AttributeError, ValueError) as exc:
        raise ValueError(f"The {role}'s layer {name!r} has no single output tensor "
                         f"({exc}); choose a layer called once.") from None


@keras.saving.register_keras_serializable(package="tfcompress")
class HintDistillation(keras.distillation.DistillationLoss, keras.layers.Layer):
    """FitNets hint loss between two layers of different shapes, regressor trained.

    L = mean(loss(u, r(v))) with u the teacher layer's output, v the student layer's
    output and r the regressor (module docstring).

    Args:
        teacher_layer_name: the teacher's hint layer (a top-level layer name).
        student_layer_name: the student's guided layer (a top-level layer name).
        regressor: "auto" (1x1 Conv2D to the teacher's channels, after a bilinear
            `Resizing` when the spatial sizes differ, for 4-D features; `Dense` for
            2-D features), None (no regressor: the shapes must be equal), or a Keras
            layer mapping the student's feature shape to the teacher's.
        loss: the comparison, a loss name or callable; "mse" by default.
        **kwargs: Layer arguments (name).

    Raises:
        ValueError: for a missing layer name (listing the layers), shapes that the
            regressor cannot map (or differ with regressor=None), a bad loss.

    Example:
        >>> hint = HintDistillation("stage2_block3_relu2", "block2_relu")
        >>> distiller = keras.distillation.Distiller(
        ...     teacher, student, [LogitsDistillation(4), hint], [1.0, 0.1])
    """

    def __init__(self, teacher_layer_name, student_layer_name, regressor="auto", loss="mse",
                 **kwargs):
        keras.layers.Layer.__init__(self, **kwargs)
        for arg, value in (("teacher_layer_name", teacher_layer_name),
                           ("student_layer_name", student_layer_name)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"`{arg}` must be a layer name. Received: {arg}={value!r}")
        if not (regressor is None or regressor == "auto"
                or isinstance(regressor, keras.layers.Layer)):
            raise ValueError(f"`regressor` must be 'auto', None or a Keras layer. Received: "
                             f"regressor={regressor!r}")
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name
        self.regressor = regressor
        try:
            self.loss_fn = keras.losses.get(loss)
        except ValueError:
            raise ValueError(f"Unknown loss {loss!r}: give a name keras.losses.get knows or "
                             "a callable.") from None
        self._loss_argument = loss
        self._shapes = None  # (student feature shape, teacher feature shape)
        self._map = None

    # ------------------------------------------------------------- DistillationLoss

    def validate_model_compatibility(self, teacher, student):
        """Finds both layers, then builds the regressor for their shapes."""
        teacher_shape = _layer_output_shape(teacher, self.teacher_layer_name, "teacher")
        student_shape = _layer_output_shape(student, self.student_layer_name, "student")
        self._shapes = (student_shape, teacher_shape)
        self.build(student_shape)

    def validate_outputs(self, teacher_outputs, student_outputs):
        keras.tree.assert_same_structure(teacher_outputs, student_outputs)

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        """mean(loss(u, r(v))), a scalar; u gets no gradient (the teacher is frozen)."""
        target = ops.stop_gradient(teacher_outputs)
        return ops.mean(self.loss_fn(target, self(student_outputs)))

    # ------------------------------------------------------------- Layer

    def build(self, input_shape):
        if self._shapes is None:
            raise ValueError("HintDistillation is built by a Distiller (it needs the "
                             "teacher's layer shape): pass it to "
                             "keras.distillation.Distiller or fitnets_stage.")
        student_shape, teacher_shape = self._shapes
        if self.regressor is None:
            if tuple(student_shape[1:]) != tuple(teacher_shape[1:]):
                raise ValueError(
                    f"regressor=None needs equal feature shapes; the student layer "
                    f"{self.student_layer_name!r} gives {student_shape[1:]} and the teacher "
                    f"layer {self.teacher_layer_name!r} {teacher_shape[1:]}: use "
                    "regressor='auto'.")
            self._map = None
        elif self.regressor == "auto":
            self._map = self._auto_regressor(student_shape, teacher_shape)
        else:
            self._map = self.regressor
        if self._map is not None:
            self._map.build(student_shape)
            out = tuple(self._map.compute_output_shape(student_shape))
            if tuple(out[1:]) != tuple(teacher_shape[1:]):
                raise ValueError(
                    f"The regressor maps the student layer's {student_shape[1:]} to "
                    f"{out[1:]}, not to the teacher layer's {teacher_shape[1:]}.")
        self.built = True

    def _auto_regressor(self, student_shape, teacher_shape):
        if len(student_shape) == 4 and len(teacher_shape) == 4:
            layers = []
            if tuple(student_shape[1:3]) != tuple(teacher_shape[1:3]):
                layers.append(keras.layers.Resizing(int(teacher_shape[1]), int(teacher_shape[2]),
                                                    interpolation="bilinear",
                                                    name=f"{self.name}_resize"))
            layers.append(keras.layers.Conv2D(int(teacher_shape[-1]), 1,
                                              name=f"{self.name}_conv1x1"))
            return keras.Sequential(layers, name=f"{self.name}_regressor")
        if len(student_shape) == 2 and len(teacher_shape) == 2:
            return keras.Sequential([keras.layers.Dense(int(teacher_shape[-1]),
                                                        name=f"{self.name}_dense")],
                                    name=f"{self.name}_regressor")
        raise ValueError(
            f"regressor='auto' maps 4-D feature maps to 4-D feature maps or vectors to "
            f"vectors; the student layer {self.student_layer_name!r} gives {student_shape} "
            f"and the teacher layer {self.teacher_layer_name!r} {teacher_shape}: give a "
            "regressor layer.")

    def call(self, student_features):
        """r(v): the student features mapped to the teacher's shape."""
        return student_features if self._map is None else self._map(student_features)

    def get_config(self):
        config = keras.layers.Layer.get_config(self)
        config.pop("trainable", None)
        config.pop("dtype", None)
        regressor = self.regressor
        if isinstance(regressor, keras.layers.Layer):
            regressor = keras.saving.serialize_keras_object(regressor)
        config.update({"teacher_layer_name": self.teacher_layer_name,
                       "student_layer_name": self.student_layer_name,
                       "regressor": regressor,
                       "loss": keras.saving.serialize_keras_object(self._loss_argument)})
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("regressor"), dict):
            config["regressor"] = keras.saving.deserialize_keras_object(config["regressor"])
        config["loss"] = keras.saving.deserialize_keras_object(config["loss"])
        return cls(**config)

    def get_build_config(self):
        if self._shapes is None:
            return None
        return {"shapes": [list(s) for s in self._shapes]}

    def build_from_config(self, config):
        if config and config.get("shapes"):
            self._shapes = tuple(tuple(s) for s in config["shapes"])
            self.build(self._shapes[0])


def fitnets_stage(teacher, student, teacher_layer_name, student_layer_name, x, *,
                  regressor="auto", loss="mse", epochs=1, batch_size=128, optimizer="adam",
                  callbacks=None, verbose="auto"):
    """FitNets stage 1: the student (up to its guided layer) regresses the hint.

    Trains `student` in place, with a `keras.distillation.Distiller` whose only loss
    is `HintDistillation(teacher_layer_name, student_layer_name, regressor, loss)`
    (student_loss_weight=0: no labels needed). Only the student's layers up to the
    guided layer, and the regressor, get gradients. Then train with
    `LogitsDistillation` (stage 2).

    Args:
        teacher: the trained teacher (frozen by the Distiller).
        student: the student, changed in place.
        teacher_layer_name, student_layer_name: the hint and the guided layer.
        x: training inputs (an array or a dataset of inputs).
        regressor, loss: as `HintDistillation`.
        epochs, batch_size, optimizer, callbacks, verbose: as `fit` / `compile`.

    Returns:
        (the trained `HintDistillation`, the `History` of the stage).

    Raises:
        ValueError: as `HintDistillation`, and as `keras.distillation.Distiller` for
            teacher and student with different input or output shapes.

    Example:
        >>> hint, _ = fitnets_stage(teacher, student, "t_relu3", "s_relu2", x, epochs=2)
    """
    hint = HintDistillation(teacher_layer_name, student_layer_name, regressor=regressor,
                            loss=loss)
    distiller = keras.distillation.Distiller(teacher, student, hint, student_loss_weight=0.0)
    distiller.compile(optimizer=optimizer, loss="mse")  # the student loss has weight 0
    with warnings.catch_warnings():
        # The layers after the guided layer get no gradient in this stage, by design.
        warnings.filterwarnings("ignore", message="Gradients do not exist for variables")
        history = distiller.fit(x, epochs=epochs, batch_size=batch_size,
                                callbacks=callbacks, verbose=verbose)
    return hint, history
