"""Checks of a TFLite file: is every operator integer-only, and which layer made it."""

import re

import numpy as np

from tfcompress.core.graph import all_layers

__all__ = [
    "MIN_ACTIVATION_SCALE",
    "check_integer_only",
    "float_operators",
    "layer_of",
    "op_layer",
]

# Below this an activation's int8 scale means calibration saw (almost) one value.
MIN_ACTIVATION_SCALE = 1e-6


def layer_of(tensor_names, layer_names):
    """The first Keras layer name found in TFLite tensor names ('model_1/conv_1/...')."""
    known = set(layer_names)
    for tensor_name in tensor_names:
        for part in re.split(r"[;/\s]", tensor_name):
            base = re.sub(r"_\d+$", "", part)
            for candidate in (part, base):
                if candidate in known:
                    return candidate
    return None


def op_layer(op, tensor_names, produced, layer_names):
    """The Keras layer an operator of a file comes from, or None.

    Read from its output tensor's name, then from its constant operands' (a
    model output's tensor is named after the signature, 'StatefulPartitionedCall:0',
    but its weights still carry the layer name).

    Args:
        op: an entry of the interpreter's `_get_ops_details()`.
        tensor_names: {tensor index: name}.
        produced: indices of the tensors some operator writes.
        layer_names: the candidate layer names.
    """
    names = [tensor_names[i] for i in op["outputs"]]
    names += [tensor_names[i] for i in op["inputs"] if i >= 0 and i not in produced]
    return layer_of(names, layer_names)


def float_operators(ops, tensor_names, float_layers):
    """Indices of the operators of a file that belong to the `float_layers`.

    An operator belongs to a layer its tensor names name (`op_layer`). One whose
    names carry no layer path at all (a model output's SOFTMAX: no weights, its
    output named after the signature, 'StatefulPartitionedCall:0') belongs with
    the operators that feed it, when they all are float ones. QUANTIZE and
    DEQUANTIZE never do: they are the boundaries.

    Args:
        ops: the interpreter's `_get_ops_details()`, in execution order.
        tensor_names: {tensor index: name}.
        float_layers: names of the layers kept float.

    Returns:
        A set of operator indices (empty without float layers).
    """
    producer = {i: op["index"] for op in ops for i in op["outputs"]}
    found = set()
    if not float_layers:
        return found
    for op in ops:
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
            continue
        if op_layer(op, tensor_names, producer, float_layers) is not None:
            found.add(op["index"])
            continue
        own = [tensor_names[i] for i in op["outputs"]]
        own += [tensor_names[i] for i in op["inputs"] if i >= 0 and i not in producer]
        sources = [producer[i] for i in op["inputs"] if i in producer]
        if not any("/" in name for name in own) and sources and all(
                s in found for s in sources):
            found.add(op["index"])
    return found


def check_integer_only(tflite_bytes, model=None, float_layers=()):
    """Raises ValueError unless every operator of the file is an integer builtin.

    Allowed: builtin operators whose tensors are all integer (int8/int16/int32
    accumulators and biases, bool, int64 shapes); QUANTIZE only on a model input
    and DEQUANTIZE only producing a model output (float I/O), or around the
    operators of `float_layers`. Flex and custom operators are rejected, and so
    are activations with a degenerate scale (< 1e-6), which LiteRT refuses to
    allocate.

    Args:
        tflite_bytes: the flatbuffer.
        model: the Keras model, used to name the layer an operator came from.
        float_layers: names of layers kept float on purpose (a mixed-precision
            file): their operators may compute in float, DEQUANTIZE may feed
            them and QUANTIZE may take their outputs.

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
    names = [layer.name for layer in all_layers(model)] if model is not None else []
    ops_seen, problems = [], []
    all_ops = interpreter._get_ops_details()
    tensor_names = {i: t["name"] for i, t in tensors.items()}
    float_ops = float_operators(all_ops, tensor_names, float_layers)
    float_tensors = {i for op in all_ops if op["index"] in float_ops for i in op["outputs"]}
    float_inputs = {i for op in all_ops if op["index"] in float_ops for i in op["inputs"]}
    for op in all_ops:
        name = op["op_name"]
        ops_seen.append(name)
        op_inputs = [i for i in op["inputs"] if i >= 0]
        problem = None
        if name.startswith("Flex") or name in ("CUSTOM", "DELEGATE") or "CUSTOM" in name:
            problem = "is not a TFLite builtin"
        elif op["index"] in float_ops:
            problem = None  # kept float on purpose
        elif name == "QUANTIZE" and not set(op_inputs) <= inputs | float_tensors and any(
            tensors[i]["dtype"] == np.float32 for i in op_inputs
        ):
            problem = "quantizes a float tensor inside the graph"
        elif name == "DEQUANTIZE" and not set(op["outputs"]) <= outputs | float_inputs:
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
                if len(scales) and np.min(scales) < MIN_ACTIVATION_SCALE:
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
        layer = layer_of([out_name] + in_names + consumers, names)
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
