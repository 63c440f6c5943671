"""Knowledge distillation into compressed students, on top of `keras.distillation`.

- `LogitsDistillation(temperature, loss)`: Hinton et al.'s soft targets with the
  softmax and T^2 applied for every loss (Keras 3.15's applies them only for a
  `keras.losses.KLDivergence` object, not for its own default "kl_divergence").
- `HintDistillation(teacher_layer_name, student_layer_name, regressor="auto")` and
  `fitnets_stage(...)`: FitNets hints through a regressor trained with the student.
- `EnsembleTeacher(models, combine)`: several models as one frozen teacher.
- `MutualLearning(models, kl_weight)`: deep mutual learning of k peers.
- `data_distillation(teacher, x_unlabeled, transforms, output, min_confidence)`:
  pseudo-labels ensembled over transforms.

Use them with `keras.distillation.Distiller` (re-exported here as `Distiller`); a model
ending in softmax is handled (its probabilities p are used as the logits log p). The
Distiller sets `teacher.trainable = False` and leaves it so: set it back before training,
pruning or quantizing the teacher itself (copies such as `prune_channels`' and
`quantize_model`'s inherit the flag).
"""

from keras.distillation import Distiller, FeatureDistillation

from tfcompress.distillation.data import TRANSFORMS, data_distillation
from tfcompress.distillation.ensemble import EnsembleLogits, EnsembleTeacher
from tfcompress.distillation.hints import HintDistillation, fitnets_stage
from tfcompress.distillation.logits import LogitsDistillation
from tfcompress.distillation.mutual import MutualLearning
from tfcompress.distillation.outputs import outputs_probabilities

__all__ = [
    "TRANSFORMS",
    "Distiller",
    "EnsembleLogits",
    "EnsembleTeacher",
    "FeatureDistillation",
    "HintDistillation",
    "LogitsDistillation",
    "MutualLearning",
    "data_distillation",
    "fitnets_stage",
    "outputs_probabilities",
]
