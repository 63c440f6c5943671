"""Shared pieces of the mixed-precision tests (test_mixed_precision, test_int16_layers):
a small MLP, training, a QAT model with per-layer annotations, and the
operators of a file."""

import keras
from ai_edge_litert.interpreter import Interpreter
from keras import layers as L

from tfcompress.quantization import quantize_annotate_layer, quantize_model
from tfcompress.quantization.annotate import clear_annotation

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def mlp():
    inputs = keras.Input((8, 8, 1))
    h = L.Dense(24, activation="relu", name="fc1")(L.Flatten()(inputs))
    h = L.Dense(16, activation="relu", name="fc2")(h)
    return keras.Model(inputs, L.Dense(10, name="fc3")(h))


def trained(build, digits, epochs, seed=0):
    """`build()` trained on the digits (Adam, batch 64)."""
    x, y, _, _ = digits
    keras.utils.set_random_seed(seed)
    model = build()
    model.compile("adam", LOSS)
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return model


def annotated_qat(model, digits, schemes, **kwargs):
    """quantize_model(model) with {layer name: scheme} annotated (then cleared), one QAT epoch."""
    x, y, _, _ = digits
    for name, scheme in schemes.items():
        quantize_annotate_layer(model.get_layer(name), scheme)
    try:
        qat = quantize_model(model, **kwargs)
    finally:
        for name in schemes:
            clear_annotation(model.get_layer(name))
    qat.compile("adam", LOSS)
    qat.fit(x, y, epochs=1, batch_size=64, verbose=0)
    return qat


def file_ops(tflite):
    """(interpreter, {tensor index: details}, operator details) of a file."""
    interpreter = Interpreter(model_content=tflite)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    return interpreter, tensors, interpreter._get_ops_details()
