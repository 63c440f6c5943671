"""Reading the files the tools take: `.keras` / `.tfcz` models and `.tflite` files.

Shared by `evaluate` and `deploy`; every problem is an `app.UsageError` naming the
flag and the file.
"""

import os

from absl import app

__all__ = ["check_file", "check_fits", "load_keras", "shape_fits", "tflite_io"]


def check_file(path, flag):
    """Raises UsageError unless `path` is an existing file."""
    if not os.path.exists(path):
        raise app.UsageError(f"--{flag}={path}: no such file.")
    if not os.path.isfile(path):
        raise app.UsageError(f"--{flag}={path}: not a file.")


def shape_fits(model_shape, data_shape):
    """True when a model input shape (None/-1 = any size) accepts `data_shape`."""
    model_shape = tuple(model_shape)
    return len(model_shape) == len(data_shape) and all(
        m is None or m < 0 or m == d for m, d in zip(model_shape, data_shape)
    )


def _fmt_shape(shape):
    return str(tuple(None if d is None or d < 0 else int(d) for d in shape))


def check_fits(what, path, input_shape, num_outputs, dataset, example_shape, num_classes):
    """Raises UsageError when a model cannot be evaluated on the dataset."""
    if not shape_fits(input_shape, example_shape):
        raise app.UsageError(
            f"{what} {path} takes inputs of shape (batch,) + {_fmt_shape(input_shape)}, "
            f"but dataset {dataset!r} has examples of shape {_fmt_shape(example_shape)}."
        )
    if num_outputs is not None and num_outputs >= 0 and num_outputs < num_classes:
        raise app.UsageError(
            f"{what} {path} outputs {num_outputs} values per example, but dataset "
            f"{dataset!r} has {num_classes} classes: not a classifier for it."
        )


def load_keras(path):
    """Loads a `.keras` model or a `.tfcz` container; UsageError naming the file when it
    cannot be read."""
    import zipfile

    import keras

    import tfcompress  # registers the custom layers

    if path.endswith(".tfcz"):
        try:
            model = tfcompress.coding.load_compressed(path)
        except ValueError as err:
            raise app.UsageError(f"--model={path}: not a valid .tfcz container ({err})") \
                from err
    elif not zipfile.is_zipfile(path):
        raise app.UsageError(f"--model={path}: not a valid .keras archive (a .keras file is "
                             "a zip archive; this one is truncated or was not written by "
                             "Keras).")
    else:
        try:
            model = keras.saving.load_model(path)
        except Exception as err:
            raise app.UsageError(
                f"--model={path}: not a valid .keras archive ({type(err).__name__}: {err})."
            ) from err
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise app.UsageError(
            f"--model={path}: expected one input and one output, found "
            f"{len(model.inputs)} input(s) and {len(model.outputs)} output(s)."
        )
    return model


def tflite_io(path, tflite_bytes):
    """Input/output details of a `.tflite` file; UsageError when it cannot be read."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_content=tflite_bytes)
    except Exception as err:
        raise app.UsageError(
            f"--tflite={path}: could not load it with LiteRT ({type(err).__name__}: {err})."
        ) from err
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise app.UsageError(
            f"--tflite={path}: expected one input and one output tensor, found "
            f"{len(inputs)} input(s) and {len(outputs)} output(s)."
        )
    return inputs[0], outputs[0]
