"""Export Keras 3 models to TFLite and check the file against Keras with LiteRT.

Keras 3 models are exported through a SavedModel (`model.export`) and converted
with `tf.lite.TFLiteConverter.from_saved_model`, the supported path for Keras 3
(`TFLiteConverter.from_keras_model` expects Keras 2 internals). Every tfcompress
layer is written with `keras.ops` that lower to TFLite builtin operators (Shift:
PAD + STRIDED_SLICE + CONCATENATION; AdderConv: STRIDED_SLICE + SUB + LEAKY_RELU(-1) + SUM;
BinaryConv: SELECT_V2 + CONV_2D), so no Flex or custom operator is needed.
"""

import os
import re
import tempfile

import numpy as np

from tfcompress.layers.adder import tflite_graph

MODES = ("int8", "dynamic", "float16", "float32")
# Tensor types an integer-only operator may read or write (int32: biases, shapes).
_INTEGER_TYPES = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.bool_)
_REPRESENTATIVE_EXAMPLES = 256
# Below this an activation's int8 scale means calibration saw (almost) one value.
_MIN_ACTIVATION_SCALE = 1e-6


def to_tflite(model, representative_data=None, *, int8_io=True, mode="int8"):
    """Converts a built Keras 3 model to a TFLite flatbuffer.

    Modes:
        "int8": integer-only. From a QAT model (`quantization.quantize_model`) the
            learned fake-quant ranges set every activation scale; from a float
            model this is full-integer post-training quantization calibrated on
            `representative_data` (required then). The result is checked: every
            operator must be an integer builtin, with no DEQUANTIZE inside the
            graph, or a ValueError names the offending operator and layer.
        "dynamic": int8 weights, float activations (no data needed).
        "float16": float16 weights.
        "float32": no quantization.

    Args:
        model: a built `keras.Model` with a defined input shape.
        representative_data: float array (N, ...) of model inputs for calibration
            (at most 256 examples are used). Required for "int8" from a float
            model; optional for a QAT model (its input range is then sampled).
        int8_io: in "int8" mode, int8 input and output tensors (else float32 with
            QUANTIZE/DEQUANTIZE at the boundary).
        mode: one of "int8", "dynamic", "float16", "float32".

    Returns:
        The `.tflite` file contents as bytes.

    Raises:
        ValueError: for an unknown mode, a model without a defined input shape,
            missing/empty/mis-shaped calibration data, or (int8) an operator that
            is not integer-only.

    Example:
        >>> data = to_tflite(model, x_train[:200])          # int8 PTQ
        >>> data = to_tflite(qat_model)                      # int8 from QAT
        >>> data = to_tflite(model, mode="float32")
    """
    import tensorflow as tf

    if mode not in MODES:
        raise ValueError(
            f"`mode` must be one of {', '.join(repr(m) for m in MODES)}. "
            f"Received: mode={mode!r}"
        )
    _check_model(model)
    if mode == "int8":
        representative_data = _representative_data(model, representative_data)
    with tempfile.TemporaryDirectory() as tmp:
        saved = os.path.join(tmp, "saved_model")
        with tflite_graph():  # AdderConv's |x - w| as LEAKY_RELU, which XNNPACK runs in int8
            model.export(saved, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        if mode != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if mode == "int8":
            converter.representative_dataset = lambda: (
                [example[None]] for example in representative_data
            )
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if int8_io:
                converter.inference_input_type = tf.int8
                converter.inference_output_type = tf.int8
        tflite = converter.convert()
    if mode == "int8":
        check_integer_only(tflite, model)
    return tflite


def _is_qat(model):
    from tfcompress.quantization import ActivationQuantizer

    return any(isinstance(layer, ActivationQuantizer) for layer in model.layers)


def _representative_data(model, data):
    """Validates calibration data, or samples the input range of a QAT model."""
    shape = tuple(model.inputs[0].shape[1:])
    if data is None:
        if not _is_qat(model):
            raise ValueError(
                "mode='int8' on a float model is post-training quantization and needs "
                "`representative_data` (a few hundred training inputs of shape "
                f"(N,) + {shape}). Or quantize_model() it first and train (QAT)."
            )
        from tfcompress.quantization import ActivationQuantizer

        quantizer = next(
            layer for layer in model.layers if isinstance(layer, ActivationQuantizer)
        )
        lo, hi = float(quantizer.range_min.numpy()), float(quantizer.range_max.numpy())
        rng = np.random.default_rng(0)
        return rng.uniform(lo, hi, size=(64,) + shape).astype(np.float32)
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 0 or len(data) == 0:
        raise ValueError(
            f"`representative_data` is empty (shape {data.shape}); give a few hundred "
            f"inputs of shape (N,) + {shape}."
        )
    if data.ndim != len(shape) + 1 or any(
        s is not None and s != d for s, d in zip(shape, data.shape[1:])
    ):
        raise ValueError(
            f"`representative_data` has shape {data.shape}, but model {model.name!r} "
            f"takes inputs of shape (N,) + {shape}."
        )
    return data[:_REPRESENTATIVE_EXAMPLES]


def _layer_names(model):
    names = []
    for layer in model.layers:
        names.append(layer.name)
        if hasattr(layer, "layers"):
            names.extend(_layer_names(layer))
    return names


def _layer_of(tensor_names, layer_names):
    """The first Keras layer name found in TFLite tensor names ('model_1/conv_1/...')."""
    known = set(layer_names)
    for tensor_name in tensor_names:
        for part in re.split(r"[;/\s]", tensor_name):
            base = re.sub(r"_\d+$", "", part)
            for candidate in (part, base):
                if candidate in known:
                    return candidate
    return None


def check_integer_only(tflite_bytes, model=None):
    """Raises ValueError unless every operator of the file is an integer builtin.

    Allowed: builtin operators whose tensors are all integer (int8/int16/int32
    accumulators and biases, bool, int64 shapes); QUANTIZE only on a model input
    and DEQUANTIZE only producing a model output (float I/O). Flex and custom
    operators are rejected, and so are activations with a degenerate scale
    (< 1e-6), which LiteRT refuses to allocate.

    Args:
        tflite_bytes: the flatbuffer.
        model: the Keras model, used to name the layer an operator came from.

    Returns:
        The list of operator names, in execution order.

    Raises:
        ValueError: naming the offending operator, its tensors and the layer.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite_bytes)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    inputs = {d["index"] for d in interpreter.get_input_details()}
    outputs = {d["index"] for d in interpreter.get_output_details()}
    names = _layer_names(model) if model is not None else []
    ops_seen, problems = [], []
    all_ops = interpreter._get_ops_details()
    for op in all_ops:
        name = op["op_name"]
        ops_seen.append(name)
        op_inputs = [i for i in op["inputs"] if i >= 0]
        problem = None
        if name.startswith("Flex") or name in ("CUSTOM", "DELEGATE") or "CUSTOM" in name:
            problem = "is not a TFLite builtin"
        elif name == "QUANTIZE" and not set(op_inputs) <= inputs and any(
            tensors[i]["dtype"] == np.float32 for i in op_inputs
        ):
            problem = "quantizes a float tensor inside the graph"
        elif name == "DEQUANTIZE" and not set(op["outputs"]) <= outputs:
            problem = "dequantizes inside the graph (a float island)"
        elif name not in ("QUANTIZE", "DEQUANTIZE"):
            floats = [
                tensors[i]["name"] for i in op_inputs + list(op["outputs"])
                if not np.issubdtype(tensors[i]["dtype"], np.integer)
                and tensors[i]["dtype"] != np.bool_
            ]
            if floats:
                problem = f"computes in float (tensors {floats[:3]})"
        if problem is None:
            for i in op["outputs"]:
                scales = tensors[i]["quantization_parameters"]["scales"]
                if len(scales) and np.min(scales) < _MIN_ACTIVATION_SCALE:
                    problem = (
                        f"writes tensor {tensors[i]['name']!r} with a degenerate scale "
                        f"{float(np.min(scales)):.3g} (calibration saw an empty range there; "
                        "LiteRT aborts on such files): calibrate with representative inputs "
                        "that exercise every layer, or train the model first"
                    )
        if problem:
            problems.append((op, name, problem))
    if problems:
        # Name the float computation itself rather than the DEQUANTIZE feeding it.
        op, name, problem = min(
            problems, key=lambda p: p[1] in ("QUANTIZE", "DEQUANTIZE")
        )
        out_name = tensors[op["outputs"][0]]["name"] if len(op["outputs"]) else ""
        consumers = [
            tensors[o]["name"] for other in all_ops
            if set(other["inputs"]) & set(op["outputs"]) for o in other["outputs"]
        ]
        in_names = [tensors[i]["name"] for i in op["inputs"] if i >= 0]
        layer = _layer_of([out_name] + in_names + consumers, names)
        origin = (f"it comes from layer {layer!r}" if layer else
                  "its layer cannot be told from the tensor names")
        raise ValueError(
            f"Not integer-only: operator {name} (#{op['index']}) {problem}; "
            f"{origin} (tensor {out_name!r}). Integer-only "
            "export supports Conv2D, DepthwiseConv2D, Dense, BatchNormalization, "
            "Add, Concatenate, pooling, ReLU/ReLU6/softmax and the tfcompress "
            "layers; quantize the model with quantize_model or keep this layer out."
        )
    return ops_seen


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
            # 1e-3 step of slack: Keras' grid (lo + k*s) and LiteRT's ((q - z) * s)
            # represent the same values with float32 rounding differences.
            within_1_step=float(np.mean(steps <= 1.0 + 1e-3)),
        )
    return report
