"""Keras 3 model -> TFLite flatbuffer (int8 / dynamic / float16 / float32).

Keras 3 models are exported through a SavedModel (`model.export`) and converted
with `tf.lite.TFLiteConverter.from_saved_model`, the supported path for Keras 3
(`TFLiteConverter.from_keras_model` expects Keras 2 internals). Every tfcompress
layer is written with `keras.ops` that lower to TFLite builtin operators (Shift:
PAD + STRIDED_SLICE + CONCATENATION; AdderConv: STRIDED_SLICE + SUB + LEAKY_RELU(-1) + a 1x1 CONV_2D;
BinaryConv: SELECT_V2 + CONV_2D), so no Flex or custom operator is needed. Models
with several inputs and outputs convert too: the file's signature names the
inputs as the Keras model does. A subclassed model (one input tensor) is exported
through its traced function: `model.export` with an input signature of the
representative data's shape (or, without data, the shape the model was built
with), batch axis None.
"""

import inspect
import os
import tempfile

import numpy as np

from tfcompress.core.graph import (
    ModelGraph,
    all_layers,
    is_graph_model,
    is_subclassed,
    subclassed_input_shape,
)
from tfcompress.export.checks import (
    check_integer_only,
    float_operators,
    layer_of,
    op_layer,
)
from tfcompress.export.int16_layers import Int16Layer, write_int16_layers
from tfcompress.layers.adder import tflite_graph
from tfcompress.quantization import ActivationQuantizer
from tfcompress.quantization.api import float_boundaries, float_layers, int16_layers
from tfcompress.quantization.quantizers import exported_as_identity

__all__ = ["MODES", "to_tflite"]

MODES = ("int8", "int16x8", "dynamic", "float16", "float32")
# Integer conversions of each bit width, and the bias operands TFLite's 16x8
# kernels read as int64.
_INTEGER_MODES = ("int8", "int16x8")
_BIASED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")
_REPRESENTATIVE_EXAMPLES = 256


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
        "int16x8": integer-only with int16 activations and int8 weights
            (TFLite's `EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8`,
            int64 biases): from a QAT model made with
            `quantize_model(..., activation_bits=16)` its symmetric 16-bit ranges,
            from a float model post-training calibration on `representative_data`.
            The converter leaves a QAT model's biases int32, which 16x8 kernels
            misread (half the output channels come out wrong); they are rewritten
            as the int64 the kernels read, same values. An operator 16x8 cannot
            run is named with its layer.
        "float16": float16 weights.
        "float32": no quantization.

    Args:
        model: a built `keras.Model` with a defined input shape (functional or
            Sequential, several inputs and outputs included), or a subclassed
            model with one input tensor that has been called on data (its
            traced function is exported; the file's input is named after the
            first argument of its `call()`).
        representative_data: model inputs for calibration, (N, ...) per input (at
            most 256 examples are used): an array for a model with one input,
            else a list in `model.inputs` order or a dict {input name: array}.
            For a subclassed model, an array of the shape it was built with
            (None axes of that shape may take any size).
            Required for "int8" from a float model; optional for a QAT model
            (each input's range is then sampled).
        int8_io: in "int8" mode, int8 input and output tensors, in "int16x8"
            int16 ones (else float32 with QUANTIZE/DEQUANTIZE at the boundary).
        mode: one of "int8", "int16x8", "dynamic", "float16", "float32".

    Returns:
        The `.tflite` file contents as bytes.

    Raises:
        ValueError: for an unknown mode, a model without a defined input shape
            (a subclassed model never called, or called on several tensors),
            missing/empty/mis-shaped calibration data, or (int8) an operator that
            is not integer-only.

    Example:
        >>> data = to_tflite(model, x_train[:200])          # int8 PTQ
        >>> data = to_tflite(qat_model)                      # int8 from QAT
        >>> data = to_tflite(model, mode="float32")
        >>> data = to_tflite(subclassed_model, x_train[:200])   # its traced call
    """
    import tensorflow as tf

    if mode not in MODES:
        raise ValueError(
            f"`mode` must be one of {', '.join(repr(m) for m in MODES)}. "
            f"Received: mode={mode!r}"
        )
    check_exportable(model)
    bits = _activation_bits(model)
    if mode == "int8" and 16 in bits:
        raise ValueError(
            f"Model {model.name!r} was made with quantize_model(..., activation_bits=16): "
            "export it with mode='int16x8'."
        )
    if mode == "int16x8" and bits and 16 not in bits:
        raise ValueError(
            f"Model {model.name!r} is a QAT model with 8-bit activations: export it with "
            "mode='int8', or make it with quantize_model(..., activation_bits=16) for "
            "mode='int16x8'."
        )
    kept_float = _float_layers(model) if mode in _INTEGER_MODES else []
    wide = (int16_layers(model) if mode == "int8" and _is_qat(model) and is_graph_model(model)
            else [])
    if mode == "int16x8" and kept_float:
        raise ValueError(
            f"Model {model.name!r} keeps layers float ({', '.join(map(repr, kept_float))}): "
            "mixed int8 / float files are written in mode='int8' (a model made with "
            "activation_bits=8); 16x8 quantizes every operator."
        )
    calibrate = mode == "int8" or (mode == "int16x8" and not bits)
    if calibrate:
        examples = representative_inputs(model, representative_data)
    with tempfile.TemporaryDirectory() as tmp:
        saved = os.path.join(tmp, "saved_model")
        signature = {}
        if is_subclassed(model):  # its traced function, batch axis None
            name, shape = _subclassed_input(model)
            if calibrate:
                shape = examples[name].shape
            signature["input_signature"] = [
                tf.TensorSpec((None,) + tuple(shape[1:]), tf.float32, name=name)
            ]
        # 16-bit layers are converted float, then rewritten as 16x8 operators.
        boundaries = float_boundaries(model, kept_float + wide) if kept_float or wide else {}
        graph = ModelGraph(model) if wide else None
        wrappers = {name: graph.layer_named(name) for name in wide}
        # AdderConv's |x - w| as LEAKY_RELU, which XNNPACK runs in int8; the
        # quantizers after float and 16-bit layers are written into the calibrated file.
        with tflite_graph(), exported_as_identity(
                list(boundaries) + [w.output_quantizer for w in wrappers.values()]):
            model.export(saved, format="tf_saved_model", verbose=False, **signature)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        if mode != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if calibrate:
            names = list(examples)
            count = len(examples[names[0]])
            if len(names) == 1:
                converter.representative_dataset = lambda: (
                    [examples[names[0]][i][None]] for i in range(count)
                )
            else:  # keyed by the signature's input names, the Keras input names
                converter.representative_dataset = lambda: (
                    {n: examples[n][i][None] for n in names} for i in range(count)
                )
        if mode == "int8":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if mode == "int16x8":
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
            ]
        if mode in _INTEGER_MODES and int8_io:
            io_type = tf.int8 if mode == "int8" else tf.int16
            converter.inference_input_type = io_type
            converter.inference_output_type = io_type
        try:
            if kept_float or wide:
                tflite = _mixed_int8(converter, kept_float + wide, boundaries, int8_io)
            else:
                tflite = converter.convert()
        except Exception as err:
            if mode != "int16x8":
                raise
            raise ValueError(_int16x8_refusal(model, err, saved)) from err
    if mode == "int16x8":
        tflite = int64_biases(tflite)
    if wide:
        tflite = _int16_rewrite(tflite, wrappers, boundaries)
    if mode in _INTEGER_MODES:
        check_integer_only(tflite, model, float_layers=kept_float)
    return tflite


def _float_layers(model):
    """The layers a QAT model keeps float (`quantize_annotate_layer(layer, "float")`)."""
    if not _is_qat(model) or not is_graph_model(model):
        return []
    return float_layers(model)


def _int16_rewrite(tflite, wrappers, boundaries):
    """The mixed file with the 16-bit layers' float operators written as 16x8 ones."""
    from ai_edge_litert.interpreter import Interpreter

    requantizers = {chain[0]: q for q, chain in boundaries.items() if chain[0] in wrappers}
    specs = {}
    for name, wrapper in wrappers.items():
        requant, source = requantizers.get(name), wrapper.input_quantizer
        specs[name] = Int16Layer(
            wrapper.per_channel, _range(wrapper.output_quantizer),
            None if requant is None else _range(requant),
            None if source is None or source.num_bits != 8 else _range(source),
        )
    interpreter = Interpreter(model_content=tflite)
    tensors = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    all_ops = interpreter._get_ops_details()
    produced = {i for op in all_ops for i in op["outputs"]}
    op_layers = {}
    for index in sorted(float_operators(all_ops, tensors, list(wrappers))):
        layer = op_layer(all_ops[index], tensors, produced, list(wrappers))
        if layer is None:  # an unnamed operator behind a 16-bit one
            raise ValueError(
                f"A {all_ops[index]['op_name']} operator computes on a 16-bit layer's "
                "output without its own quantizer; annotate the layer after it too."
            )
        op_layers[index] = layer
    missing = sorted(set(wrappers) - set(op_layers.values()))
    if missing:
        raise ValueError(f"No operator of the file comes from 16-bit layers {missing}.")
    return write_int16_layers(tflite, specs, op_layers)


def _range(quantizer):
    return tuple(float(np.asarray(b)) for b in quantizer._bounds())


def _mixed_int8(converter, kept_float, boundaries, int8_io):
    """An int8 file in which the operators of the `kept_float` layers stay float.

    TFLite's quantizer turns a float operator between two FakeQuant ops into an
    int8 one whatever it is told, so the quantizers after the float layers were
    exported as identities (`boundaries`). The converter calibrates (every other
    range is a FakeQuant op, kept as trained); each float layer's output range is
    then set to its quantizer's trained range in the calibrated file, and the MLIR
    quantizer runs with the float layers' operators denylisted by name (the
    file's tensor names carry the layer names): they get a DEQUANTIZE before
    and a QUANTIZE, at the QAT model's range, after them.
    """
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.lite.python import convert as tf_convert

    converter._experimental_calibrate_only = True
    calibrated = converter.convert()
    interpreter = Interpreter(model_content=calibrated)
    tensors = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    all_ops = interpreter._get_ops_details()
    nodes, ranges = set(), {}
    # The quantizer after each float layer, by the layers of its chain (nearest first).
    by_layer = {}
    for quantizer, chain in boundaries.items():
        lo, hi = _range(quantizer)
        for name in chain:
            by_layer.setdefault(name, (lo, hi))
    produced = {i for op in all_ops for i in op["outputs"]}
    floats = float_operators(all_ops, tensors, kept_float)
    layer_of_op = {}
    for op in all_ops:  # in execution order: an unnamed float op takes its source's layer
        if op["index"] not in floats:
            continue
        layer = op_layer(op, tensors, produced, kept_float)
        if layer is None:
            layer = next(layer_of_op[o["index"]] for o in all_ops if o["index"] in floats
                         and set(o["outputs"]) & set(op["inputs"]))
        layer_of_op[op["index"]] = layer
        for i in op["outputs"]:
            name = tensors[i]
            nodes.add(name)
            nodes.update(name.split(";"))
            leaves = [o for o in all_ops if i in o["inputs"]]
            if layer in by_layer and (not leaves or any(
                    o["index"] not in floats for o in leaves)):
                ranges[name] = by_layer[layer]
    calibrated = _set_ranges(calibrated, ranges)
    io_type = tf.int8 if int8_io else tf.float32
    return tf_convert.mlir_quantize(
        calibrated, disable_per_channel=False, fully_quantize=False,
        input_data_type=io_type, output_data_type=io_type, denylisted_nodes=sorted(nodes),
        disable_per_channel_for_dense_layers=True,
    )


def _set_ranges(tflite_bytes, ranges):
    """The calibrated file with the (min, max) statistics of the named tensors replaced."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name
            if name in ranges and tensor.quantization is not None:
                lo, hi = ranges[name]
                tensor.quantization.min = [lo]
                tensor.quantization.max = [hi]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _activation_bits(model):
    """The activation bit widths of a QAT model's quantizers (empty for a float model)."""
    return {layer.num_bits for layer in all_layers(model)
            if isinstance(layer, ActivationQuantizer)}


def _int16x8_refusal(model, err, saved):
    """The converter's 16x8 refusal, with the operator and the layer it comes from."""
    import re

    import tensorflow as tf

    message = str(err)
    found = re.findall(r"not yet supported for op: '?([A-Za-z0-9_.]+)'?", message)
    found += re.findall(r"'tfl\.([a-z0-9_]+)' op", message)
    op_names = sorted({f.split(".")[-1].upper() for f in found})
    layer = None
    if op_names:  # the float file's tensor names carry the layer names
        from ai_edge_litert.interpreter import Interpreter

        float_file = tf.lite.TFLiteConverter.from_saved_model(saved).convert()
        interpreter = Interpreter(model_content=float_file)
        tensors = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
        import keras

        names = [layer.name for layer in all_layers(model)
                 if not isinstance(layer, keras.Model)]
        for op in interpreter._get_ops_details():
            if op["op_name"] in op_names:
                layer = layer_of([tensors[i] for i in list(op["outputs"]) + [
                    i for i in op["inputs"] if i >= 0]], names)
                if layer:
                    break
    what = ", ".join(op_names) if op_names else "an operator"
    where = f" (layer {layer!r})" if layer else ""
    return (
        f"TFLite's 16x8 mode cannot run {what}{where} of model {model.name!r}. "
        "16x8 runs convolutions, dense layers, pooling, Add, Concatenate, ReLU and "
        "softmax; keep such layers out or export with mode='int8'. Converter: "
        + message.strip().splitlines()[-1][:300]
    )


def int64_biases(tflite_bytes):
    """The file with every int32 bias of a 16x8 operator rewritten as int64 (same values).

    TFLite's 16x8 CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED / TRANSPOSE_CONV
    read an int16 input's bias as int64; the converter writes a QAT model's
    biases as int32, which those kernels misread. Values and scales stay.

    Args:
        tflite_bytes: a `.tflite` file.

    Returns:
        The rewritten file (the same bytes when there is nothing to rewrite).
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    names = {value: key for key, value in vars(schema.BuiltinOperator).items()
             if not key.startswith("_")}
    changed = False
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode))
            if name not in _BIASED_OPS or len(op.inputs) < 3 or op.inputs[2] < 0:
                continue
            data, bias = subgraph.tensors[op.inputs[0]], subgraph.tensors[op.inputs[2]]
            if data.type != schema.TensorType.INT16 or bias.type != schema.TensorType.INT32:
                continue
            buffer = model.buffers[bias.buffer]
            values = np.frombuffer(bytes(bytearray(buffer.data)), np.int32).astype(np.int64)
            buffer.data = np.frombuffer(values.tobytes(), np.uint8)
            bias.type = schema.TensorType.INT64
            changed = True
    if not changed:
        return tflite_bytes
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def check_exportable(model):
    """Raises a ValueError unless `model` is built with defined inputs.

    A subclassed model must have been called on one input tensor (its build
    shape is the traced function's input).
    """
    if is_subclassed(model):
        _subclassed_input(model)
        return
    inputs = getattr(model, "inputs", None)
    if not model.built or not inputs:
        raise ValueError(
            f"Model {model.name!r} has no defined input shape: build it with "
            "`keras.Input(shape=...)` (functional/Sequential) or call it once on data "
            "before exporting."
        )


def _subclassed_input(model):
    """(input name, build shape with the batch axis) of a subclassed model's one input.

    Raises:
        ValueError: for a model never called on data, or called on several tensors.
    """
    shape = subclassed_input_shape(model)
    if shape is None:
        raise ValueError(
            f"Subclassed model {model.name!r} has no input shape yet: call it once on a "
            "batch of data (model(x[:1])) before exporting."
        )
    if not all(d is None or isinstance(d, int) for d in shape):
        raise ValueError(
            f"Subclassed model {model.name!r} takes several input tensors (built with "
            f"{shape}); to_tflite exports subclassed models with one input tensor. Build "
            "it with the functional API (keras.Model(inputs, outputs)) to export it."
        )
    parameters = list(inspect.signature(model.call).parameters)
    return (parameters[0] if parameters else "inputs"), shape


def _input_shapes(model):
    """{input name: shape without the batch axis}, in `model.inputs` order."""
    if is_subclassed(model):
        name, shape = _subclassed_input(model)
        return {name: tuple(shape[1:])}
    return {t.name: tuple(t.shape[1:]) for t in model.inputs}


def _is_qat(model):
    return any(isinstance(layer, ActivationQuantizer) for layer in all_layers(model))


def _input_ranges(model):
    """{input name: (lo, hi)} of the ActivationQuantizer right after each model input."""
    if not is_graph_model(model):
        return {}
    graph = ModelGraph(model)
    ranges = {}
    for tensor, keras_input in zip(graph.inputs, model.inputs):
        for node in tensor.consumers:
            if isinstance(node.layer, ActivationQuantizer):
                q = node.layer
                ranges[keras_input.name] = (float(q.range_min.numpy()), float(q.range_max.numpy()))
                break
    return ranges


def representative_inputs(model, data):
    """{input name: float32 array (N, ...)} for calibration, validated.

    Without data, a QAT model's inputs are sampled uniformly in the range of the
    quantizer after each input (64 examples).

    Args:
        model: the model to convert.
        data: None, an array (one input), a list in `model.inputs` order or a dict
            {input name: array}.

    Returns:
        The dict, at most 256 examples per input, inputs in `model.inputs` order.

    Raises:
        ValueError: for missing data on a float model, empty data, data that does
            not match the inputs (names, count or shapes).
    """
    shapes = _input_shapes(model)
    names = list(shapes)
    wanted = ", ".join(f"{n}: (N,) + {shapes[n]}" for n in names)
    if data is None:
        ranges = _input_ranges(model) if _is_qat(model) else {}
        if not ranges or set(ranges) != set(names):
            single = f"(N,) + {shapes[names[0]]}" if len(names) == 1 else wanted
            raise ValueError(
                "mode='int8' on a float model is post-training quantization and needs "
                "`representative_data` (a few hundred training inputs of shape "
                f"{single}). Or quantize_model() it first and train (QAT)."
            )
        rng = np.random.default_rng(0)
        return {
            n: rng.uniform(*ranges[n], size=(64,) + shapes[n]).astype(np.float32) for n in names
        }
    if isinstance(data, dict):
        if sorted(data) != sorted(names):
            raise ValueError(
                f"`representative_data` has inputs {sorted(data)}, but model {model.name!r} "
                f"takes {names}."
            )
        arrays = {n: data[n] for n in names}
    elif isinstance(data, (list, tuple)) and len(names) > 1:
        if len(data) != len(names):
            raise ValueError(
                f"`representative_data` is a list of {len(data)} arrays, but model "
                f"{model.name!r} takes {len(names)} inputs ({wanted})."
            )
        arrays = dict(zip(names, data))
    elif len(names) == 1:
        arrays = {names[0]: data}
    else:
        raise ValueError(
            f"Model {model.name!r} takes {len(names)} inputs ({wanted}): give "
            "`representative_data` as a list in that order or a dict {input name: array}."
        )
    out = {}
    for name in names:
        array = np.asarray(arrays[name], dtype=np.float32)
        shape = shapes[name]
        label = "" if len(names) == 1 else f"[{name!r}]"
        if array.ndim == 0 or len(array) == 0:
            raise ValueError(
                f"`representative_data`{label} is empty (shape {array.shape}); give a few "
                f"hundred inputs of shape (N,) + {shape}."
            )
        if array.ndim != len(shape) + 1 or any(
            s is not None and s != d for s, d in zip(shape, array.shape[1:])
        ):
            raise ValueError(
                f"`representative_data`{label} has shape {array.shape}, but model "
                f"{model.name!r} takes inputs of shape (N,) + {shape}."
            )
        out[name] = array[:_REPRESENTATIVE_EXAMPLES]
    counts = {len(a) for a in out.values()}
    if len(counts) != 1:
        raise ValueError(
            f"Every input of `representative_data` needs the same number of examples. "
            f"Received: { {n: len(a) for n, a in out.items()} }"
        )
    return out
