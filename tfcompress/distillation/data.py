"""`data_distillation`: pseudo-labels from one teacher ensembled over transforms.

Radosavovic, Dollar, Girshick, Gkioxari and He, "Data Distillation: Towards Omni-
Supervised Learning", CVPR 2018: run one trained model on several transforms of
unlabelled data, ensemble its predictions, and train a student on the labelled plus the
pseudo-labelled data. For classification the label does not move with the image, so
the ensemble is the mean of the predicted distributions:

    q(x) = 1/|T| sum_{t in T} softmax(z(t(x)))

(p itself for a teacher that ends in softmax). Transforms (NHWC images):
"identity"; "flip_lr" (mirror left-right); "flip_ud" (mirror top-bottom); "shift"
(content moved `shift_pixels` down and right, zeros shifted in); or any callable
mapping a batch to a batch of the same shape.
"""

import numbers

import keras
import numpy as np

from tfcompress.distillation.outputs import outputs_probabilities

__all__ = ["OUTPUTS", "TRANSFORMS", "data_distillation", "transform"]

TRANSFORMS = ("identity", "flip_lr", "flip_ud", "shift")
OUTPUTS = ("soft", "hard")


def transform(name, x, shift_pixels=2):
    """One named transform of a batch `x` (N, H, W, C); returns a new array.

    Args:
        name: one of TRANSFORMS.
        x: a NumPy batch of images, channels last.
        shift_pixels: the offset of "shift", an int >= 1.

    Returns:
        The transformed batch, same shape and dtype.
    """
    if name == "identity":
        return np.array(x, copy=True)
    if x.ndim != 4:
        raise ValueError(f"Transform {name!r} works on image batches (N, H, W, C); the "
                         f"inputs have shape {x.shape}. Use 'identity' or a callable.")
    if name == "flip_lr":
        return x[:, :, ::-1, :].copy()
    if name == "flip_ud":
        return x[:, ::-1, :, :].copy()
    if name == "shift":
        s = shift_pixels
        out = np.zeros_like(x)
        if s < x.shape[1] and s < x.shape[2]:
            out[:, s:, s:, :] = x[:, :-s, :-s, :]
        return out
    raise ValueError(f"Unknown transform {name!r}; choose from {', '.join(TRANSFORMS)} "
                     "or give a callable.")


def data_distillation(teacher, x_unlabeled, transforms=("identity", "flip_lr", "shift"),
                      output="soft", min_confidence=None, *, batch_size=256, shift_pixels=2):
    """Pseudo-labels: the teacher's predictions ensembled over transforms (module doc).

    Args:
        teacher: a trained single-input Keras classifier (logits or softmax outputs).
        x_unlabeled: a NumPy array of unlabelled inputs, batch first.
        transforms: a non-empty sequence of names (TRANSFORMS) and/or callables
            mapping a batch to a batch of the same shape.
        output: "soft" (the ensembled distributions q, float32, shape (N, classes))
            or "hard" (argmax q, int64, shape (N,)).
        min_confidence: None, or a fraction in (0, 1]: keep only the examples whose
            max_c q_c reaches it.
        batch_size: prediction batch size.
        shift_pixels: the offset of the "shift" transform (int >= 1).

    Returns:
        `(x, targets)`: the kept inputs (a copy of `x_unlabeled`'s rows) and their
        pseudo-labels, ready to concatenate with labelled data.

    Raises:
        ValueError: for a teacher that is not a Keras model, empty inputs, an empty
            or unknown transform list, a transform that changes the input shape, an
            unknown output, a min_confidence outside (0, 1].

    Example:
        >>> x_pseudo, q = data_distillation(teacher, x_unlabeled, output="soft")
        >>> student.fit(np.concatenate([x, x_pseudo]), np.concatenate([one_hot(y), q]))
    """
    if not isinstance(teacher, keras.Model):
        raise ValueError(f"`teacher` must be a Keras model. Received: {teacher!r}")  # noqa: TRY004
    x = np.asarray(x_unlabeled)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"`x_unlabeled` must hold at least one example. Received shape "
                         f"{x.shape}.")
    if isinstance(transforms, str) or callable(transforms):
        transforms = (transforms,)
    transforms = list(transforms)
    if not transforms:
        raise ValueError("`transforms` must name at least one transform, e.g. ('identity',).")
    for t in transforms:
        if not callable(t) and t not in TRANSFORMS:
            raise ValueError(f"Unknown transform {t!r}; choose from {', '.join(TRANSFORMS)} "
                             "or give a callable.")
    if output not in OUTPUTS:
        raise ValueError(f"`output` must be one of {', '.join(OUTPUTS)}. Received: "
                         f"output={output!r}")
    if min_confidence is not None and (
            isinstance(min_confidence, bool) or not isinstance(min_confidence, numbers.Real)
            or not 0 < min_confidence <= 1):
        raise ValueError(f"`min_confidence` must be None or a fraction in (0, 1]. Received: "
                         f"min_confidence={min_confidence!r}")
    if isinstance(shift_pixels, bool) or not isinstance(shift_pixels, numbers.Integral) or (
            shift_pixels < 1):
        raise ValueError(f"`shift_pixels` must be an integer >= 1. Received: "
                         f"shift_pixels={shift_pixels!r}")
    probabilities = outputs_probabilities(teacher)[0]
    total = None
    for t in transforms:
        moved = t(x) if callable(t) else transform(t, x, shift_pixels)
        moved = np.asarray(moved)
        if moved.shape != x.shape:
            label = getattr(t, "__name__", repr(t))
            raise ValueError(f"Transform {label} changed the input shape from {x.shape} to "
                             f"{moved.shape}; a transform must keep it.")
        z = np.asarray(teacher.predict(moved, batch_size=batch_size, verbose=0), np.float64)
        if not probabilities:
            z = z - z.max(axis=-1, keepdims=True)
            z = np.exp(z)
            z = z / z.sum(axis=-1, keepdims=True)
        total = z if total is None else total + z
    q = total / len(transforms)
    keep = np.ones(len(x), bool) if min_confidence is None else q.max(axis=-1) >= min_confidence
    targets = q[keep].astype(np.float32) if output == "soft" else q[keep].argmax(-1).astype(np.int64)
    return x[keep].copy(), targets
