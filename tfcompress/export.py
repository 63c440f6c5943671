"""Export Keras 3 models to TFLite and check the file against Keras with LiteRT.

Keras 3 models are exported through a SavedModel (`model.export`) and converted
with `tf.lite.TFLiteConverter.from_saved_model`, the supported path for Keras 3
(`TFLiteConverter.from_keras_model` expects Keras 2 internals). Every tfcompress
layer is written with `keras.ops` that lower to TFLite builtin operators (Shift:
PAD + STRIDED_SLICE + CONCATENATION; AdderConv: STRIDED_SLICE + SUB + ABS + SUM;
BinaryConv: SELECT_V2 + CONV_2D), so no Flex or custom operator is needed.
"""

import os
import tempfile

import numpy as np

MODES = ("float32", "float16", "dynamic")


def to_tflite(model, *, mode="float32"):
    """Converts a built Keras 3 model to a TFLite flatbuffer.

    Args:
        model: a built `keras.Model` with a defined input shape.
        mode: "float32" (no quantization), "float16" (float16 weights) or
            "dynamic" (int8 weights, float activations).

    Returns:
        The `.tflite` file contents as bytes.

    Raises:
        ValueError: for an unknown mode or a model without a defined input shape.

    Example:
        >>> data = to_tflite(model)
        >>> open("model.tflite", "wb").write(data)
    """
    import tensorflow as tf

    if mode not in MODES:
        raise ValueError(
            f"`mode` must be one of {', '.join(repr(m) for m in MODES)}. "
            f"Received: mode={mode!r}"
        )
    _check_model(model)
    with tempfile.TemporaryDirectory() as tmp:
        saved = os.path.join(tmp, "saved_model")
        model.export(saved, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        if mode in ("float16", "dynamic"):
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode == "float16":
            converter.target_spec.supported_types = [tf.float16]
        return converter.convert()


def _check_model(model):
    inputs = getattr(model, "inputs", None)
    if not model.built or not inputs:
        raise ValueError(
            f"Model {model.name!r} has no defined input shape: build it with "
            "`keras.Input(shape=...)` (functional/Sequential) or call it once on data "
            "before exporting."
        )


def run_tflite(tflite_bytes, data, batch_size=256):
    """Runs a TFLite model with the LiteRT interpreter on float inputs.

    Quantized inputs and outputs are converted with the file's own scale and
    zero point, so the caller always passes and receives float32.

    Args:
        tflite_bytes: the flatbuffer contents.
        data: float array of shape (N, ...) matching the model input.
        batch_size: examples per interpreter invocation.

    Returns:
        (outputs_float32, raw_outputs) where raw_outputs keeps the file's dtype.
    """
    from ai_edge_litert.interpreter import Interpreter

    data = np.asarray(data, dtype=np.float32)
    interpreter = Interpreter(model_content=tflite_bytes)
    inp = interpreter.get_input_details()[0]
    floats, raws = [], []
    for start in range(0, len(data), batch_size):
        chunk = data[start : start + batch_size]
        interpreter.resize_tensor_input(inp["index"], list(chunk.shape))
        interpreter.allocate_tensors()
        inp = interpreter.get_input_details()[0]
        out = interpreter.get_output_details()[0]
        interpreter.set_tensor(inp["index"], _quantize(chunk, inp))
        interpreter.invoke()
        raw = interpreter.get_tensor(out["index"]).copy()
        raws.append(raw)
        floats.append(_dequantize(raw, out))
    return np.concatenate(floats), np.concatenate(raws)


def _quantize(values, detail):
    scale, zero_point = detail["quantization"]
    if detail["dtype"] == np.float32 or scale == 0:
        return values.astype(detail["dtype"])
    info = np.iinfo(detail["dtype"])
    q = np.round(values / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(detail["dtype"])


def _dequantize(values, detail):
    scale, zero_point = detail["quantization"]
    if detail["dtype"] == np.float32 or scale == 0:
        return values.astype(np.float32)
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


def verify(tflite_bytes, keras_model, data, batch_size=256):
    """Runs LiteRT and Keras on the same inputs and reports how far they differ.

    Args:
        tflite_bytes: the `.tflite` contents.
        keras_model: the Keras model the file was made from.
        data: float inputs, shape (N, ...).
        batch_size: batch size for both runtimes.

    Returns:
        dict with `max_abs_diff`, `mean_abs_diff`, `argmax_agreement` (fraction of
        examples whose top class agrees, for 2D outputs), `examples`, and, when the
        file's output is quantized, `output_scale`, `max_diff_steps` and
        `within_1_step` (fraction of elements within one quantization step).

    Example:
        >>> report = verify(to_tflite(model), model, x_test[:500])
        >>> report["argmax_agreement"]
        1.0
    """
    lite, _ = run_tflite(tflite_bytes, data, batch_size)
    reference = np.asarray(keras_model.predict(np.asarray(data, np.float32),
                                               batch_size=batch_size, verbose=0))
    diff = np.abs(lite.astype(np.float64) - reference)
    report = {
        "examples": len(data),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "argmax_agreement": None,
    }
    if reference.ndim == 2:
        report["argmax_agreement"] = float(
            np.mean(lite.argmax(-1) == reference.argmax(-1))
        )
    from ai_edge_litert.interpreter import Interpreter

    out = Interpreter(model_content=tflite_bytes).get_output_details()[0]
    scale = out["quantization"][0]
    if out["dtype"] != np.float32 and scale:
        steps = diff / scale
        report.update(
            output_scale=float(scale),
            max_diff_steps=float(steps.max()),
            within_1_step=float(np.mean(steps <= 1.0 + 1e-6)),
        )
    return report
