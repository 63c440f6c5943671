"""16x8 operators inside an int8 file: the layers annotated 16 (`quantize_annotate_layer`).

TFLite's converter sets one activation width for a whole model, so the layers a
QAT model computes at 16 bits are converted float first (the mixed int8 / float
file of `to_tflite`: DEQUANTIZE, the float operator, QUANTIZE) and the file is
then rewritten, operator by operator, into what TFLite's 16x8 kernels read:

- input: the int8 tensor requantized to int16 by a QUANTIZE at 1/128 of its
  scale, zero point 0: `q16 = 128 (q8 - z8)`, exact (the QAT model sees the
  same value); from another 16-bit layer the int16 tensor itself;
- weights: symmetric int8, per output channel (Conv2D: axis 0 of OHWI,
  DepthwiseConv2D: axis 3 of 1HW(C*M)) or one scale (Dense, or per_channel=False),
  `s_w = max|w| / 127`, which gives back the QAT model's fake-quantized weights
  exactly;
- bias: int64 at `s_in * s_w`, zero point 0;
- output: int16 at the layer's trained 16-bit range, `s = max(-min, max) / 32767`;
  a QUANTIZE that took the float output now requantizes int16 -> int8; a float
  consumer (a float layer, a float model output) reads it through DEQUANTIZE.

Every other operator is left as the converter wrote it.
"""

import dataclasses

import numpy as np

from tfcompress.quantization.quantizers import INT8_TO_INT16

__all__ = ["Int16Layer", "write_int16_layers"]

_WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
_INT16_MAX = 32767.0


@dataclasses.dataclass
class Int16Layer:
    """How one 16-bit layer of a QAT model is written.

    Attributes:
        per_channel: one weight scale per output channel (Dense always has one).
        output_range: the (min, max) of its 16-bit output quantizer.
        requant_range: the (min, max) of the int8 quantizer after it, or None
            when only 16-bit and float layers take its output.
        input_range: the (min, max) of the int8 quantizer its input is on (None
            when another 16-bit layer feeds it): a float layer before it hands
            over a float tensor, quantized to int8 there first.
    """

    per_channel: bool
    output_range: tuple
    requant_range: tuple = None
    input_range: tuple = None


def _int8_params(lo, hi):
    """TFLite's (scale, zero point) for an int8 tensor of range [lo, hi] (FakeQuant's nudging)."""
    scale = (hi - lo) / 255.0
    zero = int(np.clip(np.round(-128.0 - lo / scale), -128, 127))
    return scale, zero


def write_int16_layers(tflite_bytes, layers, op_layers):
    """Rewrites the float operators of 16-bit layers as 16x8 operators.

    Args:
        tflite_bytes: a mixed int8 / float file in which each 16-bit layer is one
            float CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED.
        layers: {layer name: `Int16Layer`}.
        op_layers: {operator index: layer name} for the operators of those layers.

    Returns:
        The rewritten file.

    Raises:
        ValueError: when a 16-bit layer's operators are not one weighted operator
            fed by an int8 tensor or another 16-bit layer.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    graph = model.subgraphs[0]
    codes = {value: key for key, value in vars(schema.BuiltinOperator).items()
             if not key.startswith("_")}

    def op_name(op):
        code = model.operatorCodes[op.opcodeIndex]
        return codes.get(max(code.builtinCode, code.deprecatedBuiltinCode))

    def opcode(name):
        value = getattr(schema.BuiltinOperator, name)
        for i, code in enumerate(model.operatorCodes):
            if max(code.builtinCode, code.deprecatedBuiltinCode) == value:
                return i
        code = schema.OperatorCodeT()
        code.builtinCode, code.deprecatedBuiltinCode, code.version = value, min(value, 127), 1
        model.operatorCodes.append(code)
        return len(model.operatorCodes) - 1

    def quantization(scale, zero_point=0, axis=0):
        params = schema.QuantizationParametersT()
        params.scale = [float(s) for s in np.atleast_1d(scale)]
        params.zeroPoint = [int(z) for z in np.broadcast_to(zero_point, len(params.scale))]
        params.quantizedDimension = axis
        return params

    def new_tensor(like, dtype, params, suffix):
        tensor = schema.TensorT()
        tensor.shape = list(like.shape)
        tensor.shapeSignature = None if like.shapeSignature is None else list(
            like.shapeSignature)
        tensor.type, tensor.buffer, tensor.quantization = dtype, 0, params
        name = like.name.decode() if isinstance(like.name, bytes) else like.name
        tensor.name = f"{name}/{suffix}".encode()
        graph.tensors.append(tensor)
        return len(graph.tensors) - 1

    def new_op(name, source, target):
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = opcode(name), [source], [target]
        op.builtinOptionsType = 0
        return op

    def constant(index):
        tensor = graph.tensors[index]
        data = model.buffers[tensor.buffer].data
        if tensor.type != schema.TensorType.FLOAT32 or data is None:
            return None
        return np.frombuffer(bytes(bytearray(data)), np.float32).reshape(tensor.shape)

    def store(index, values, dtype, params):
        tensor = graph.tensors[index]
        model.buffers[tensor.buffer].data = np.frombuffer(values.tobytes(), np.uint8)
        tensor.type, tensor.quantization = dtype, params

    producer = {t: i for i, op in enumerate(graph.operators) for t in op.outputs}
    users = {}
    for i, op in enumerate(graph.operators):
        for t in op.inputs:
            users.setdefault(t, []).append(i)
    for index, name in op_layers.items():
        if op_name(graph.operators[index]) not in _WEIGHTED_OPS:
            raise ValueError(
                f"Layer {name!r} is annotated 16 but its file has a "
                f"{op_name(graph.operators[index])} operator, which the 16-bit rewrite does "
                "not write: 16 takes a Conv2D / DepthwiseConv2D / Dense whose "
                "BatchNormalization and ReLU fuse into it."
            )
    int16_of, int8_view = {}, {}  # float output of a 16-bit operator -> its int16 / int8 tensor
    before, after, dropped = {}, {}, set()
    for index in sorted(op_layers):
        op, name = graph.operators[index], op_layers[index]
        spec = layers[name]
        kind = op_name(op)
        x = op.inputs[0]
        if x in int16_of:  # from another 16-bit layer
            source = int8_view.get(x)
            if source is None:
                op.inputs[0] = int16_of[x]
                s_in = graph.tensors[int16_of[x]].quantization.scale[0]
            else:  # that layer's output is requantized to int8 for everyone
                x = source
        if x not in int16_of:
            feeder = producer.get(x)
            if x in int8_view.values():
                int8 = x
            elif feeder is not None and op_name(graph.operators[feeder]) == "DEQUANTIZE" and (
                    graph.tensors[graph.operators[feeder].inputs[0]].type
                    == schema.TensorType.INT8):
                int8 = graph.operators[feeder].inputs[0]
            elif graph.tensors[x].type == schema.TensorType.FLOAT32 and spec.input_range:
                # A float layer's output: to int8 at its quantizer's range first.
                scale, zero = _int8_params(*spec.input_range)
                int8 = new_tensor(graph.tensors[x], schema.TensorType.INT8,
                                  quantization(scale, zero), "int8")
                before.setdefault(index, []).append(new_op("QUANTIZE", x, int8))
            else:
                raise ValueError(
                    f"Layer {name!r} is annotated 16 but its input is not an int8 tensor "
                    "(an unquantized value feeds it): quantize the layer before it, or keep "
                    "this one float."
                )
            s_in = graph.tensors[int8].quantization.scale[0] / INT8_TO_INT16
            wide_in = new_tensor(graph.tensors[int8], schema.TensorType.INT16,
                                 quantization(s_in), "int16")
            before.setdefault(index, []).append(new_op("QUANTIZE", int8, wide_in))
            op.inputs[0] = wide_in
        # Weights: int8, symmetric, the QAT model's grid.
        kernel = constant(op.inputs[1])
        if kernel is None:
            raise ValueError(f"Layer {name!r}: its weights are not a float constant in the file.")
        axis = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 0}[kind]
        per_channel = spec.per_channel and kind != "FULLY_CONNECTED"
        moved = np.moveaxis(kernel, axis, 0).reshape(kernel.shape[axis], -1)
        bound = np.abs(moved).max(axis=1) if per_channel else np.array([np.abs(kernel).max()])
        s_w = np.where(bound > 0, bound, 1.0) / 127.0
        shape = [1] * kernel.ndim
        shape[axis] = -1
        levels = np.round(kernel / (s_w.reshape(shape) if per_channel else s_w[0]))
        store(op.inputs[1], np.clip(levels, -127, 127).astype(np.int8), schema.TensorType.INT8,
              quantization(s_w, 0, axis if per_channel else 0))
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            bias = constant(op.inputs[2])
            channels = bias.shape[0]
            s_b = s_in * np.broadcast_to(s_w, (channels,))
            store(op.inputs[2], np.round(bias / s_b).astype(np.int64), schema.TensorType.INT64,
                  quantization(s_b if per_channel else s_b[:1], 0, 0))
        # Output: int16 at the trained range.
        y = op.outputs[0]
        lo, hi = spec.output_range
        wide_out = new_tensor(graph.tensors[y], schema.TensorType.INT16,
                              quantization(max(-lo, hi, 1e-8) / _INT16_MAX), "int16")
        op.outputs[0] = wide_out
        int16_of[y] = wide_out
        readers = users.get(y, [])
        float_readers = y in graph.outputs or any(
            r not in op_layers and op_name(graph.operators[r]) != "QUANTIZE" for r in readers)
        if spec.requant_range is not None:
            requant = next((r for r in readers if op_name(graph.operators[r]) == "QUANTIZE"
                            and graph.tensors[graph.operators[r].outputs[0]].type
                            == schema.TensorType.INT8), None)
            if requant is not None:  # the converter's, moved right after this operator
                view = graph.operators[requant].outputs[0]
                dropped.add(requant)
            else:
                scale, zero = _int8_params(*spec.requant_range)
                view = new_tensor(graph.tensors[y], schema.TensorType.INT8,
                                  quantization(scale, zero), "int8")
            after.setdefault(index, []).append(new_op("QUANTIZE", wide_out, view))
            int8_view[y] = view
        for r in readers:
            if op_name(graph.operators[r]) == "QUANTIZE" and r not in dropped:
                graph.operators[r].inputs = [wide_out]  # now int16 -> int8
        if float_readers:  # float layers / a float model output read it dequantized
            after.setdefault(index, []).append(
                new_op("DEQUANTIZE", int8_view.get(y, wide_out), y))
    # DEQUANTIZE operators nothing reads any more.
    read = {t for i, op in enumerate(graph.operators) if i not in dropped for t in op.inputs}
    read |= {t for ops in before.values() for op in ops for t in op.inputs}
    read |= set(graph.outputs)
    operators = []
    for i, op in enumerate(graph.operators):
        if i in dropped:
            continue
        operators.extend(before.get(i, []))
        if not (op_name(op) == "DEQUANTIZE" and op.outputs[0] not in read):
            operators.append(op)
        operators.extend(after.get(i, []))
    graph.operators = operators
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
