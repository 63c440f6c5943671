"""Quickstart: swap Conv2D for compact layers, train on the shipped digits, compare, export.

Run: python examples/quickstart.py
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras

import tfcompress
from tfcompress import datasets, export, layers


def tiny_net(conv, binary=False):
    # BatchNormalization with momentum 0.9: a few hundred steps are enough for its
    # moving statistics. No ReLU in front of a BinaryConv: sign(relu(x)) is all +1.
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(16, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    if not binary:
        x = keras.layers.ReLU()(x)
    x = conv(32)(x)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))


def main():
    keras.utils.set_random_seed(0)
    (x, y), (x_test, y_test) = datasets.load("digits")
    variants = {
        "Conv2D": lambda f: keras.layers.Conv2D(f, 3, padding="same"),
        "GhostConv": lambda f: layers.GhostConv(f, kernel_size=3),
        "ShiftConv": lambda f: layers.ShiftConv(f),
        "AdderConv": lambda f: layers.AdderConv(f, 3),
        "BinaryConv": lambda f: layers.BinaryConv(f, 3),
    }
    print(f"{'layer':<12}{'params':>8}{'MACs':>10}{'adds':>10}{'test acc':>10}{'tflite acc':>12}")
    for name, conv in variants.items():
        model = tiny_net(conv, binary=name == "BinaryConv")
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x, y, epochs=15, batch_size=32, verbose=0)
        acc = model.evaluate(x_test, y_test, verbose=0)[1]
        probs, _ = export.run_tflite(export.to_tflite(model, mode="float32"), x_test)
        total = tfcompress.profile(model)["total"]
        print(f"{name:<12}{total['params']:>8,}{total['macs']:>10,}{total['adds']:>10,}"
              f"{acc:>10.3f}{(probs.argmax(-1) == y_test).mean():>12.3f}")


if __name__ == "__main__":
    main()
