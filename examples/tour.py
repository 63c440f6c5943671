"""The README's short tour, as a script: compact layers, training, float and int8 export.

Run: python examples/tour.py        (about 90 s on 2 CPU cores; shipped digits)

Prints the float, QAT and int8 test accuracy and the file-vs-Keras parity of each
export. `tests/test_tour.py` runs it and checks every accuracy.
"""

import os
import sys


def quiet_unless_verbose():
    """TensorFlow's C++ code (oneDNN, the CUDA probe, the TFLite converter) writes its log
    lines straight to file descriptor 2: send that to /dev/null and keep Python's stderr
    on a copy of it, as the tools do. Call it before the first `import keras`."""
    if "--verbose" in sys.argv:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    sys.stderr = os.fdopen(saved, "w", buffering=1)


def tour_model():
    """The tour's model: one of each compact layer, on 8x8 digits."""
    import keras

    from tfcompress import layers

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = layers.GhostConv(32, kernel_size=3, ratio=2)(x)     # about half the multiply-adds
    x = layers.ShiftConv(32)(x)                             # shift (0 FLOPs) + 1x1 conv
    x = keras.layers.BatchNormalization()(x)                # centred: sign() needs both signs
    x = layers.BinaryConv(32, 3)(x)                         # XNOR-Net: alpha * sign(W), sign(X)
    x = keras.layers.BatchNormalization()(x)
    x = layers.AdderConv(32, 3)(x)                          # -sum |X - W|: no multiplications
    x = keras.layers.BatchNormalization()(x)                # AdderNet: always BN after it
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))


def main(epochs=10, qat_epochs=2, seed=0):
    """Trains, recalibrates, exports float and int8; returns the three test accuracies."""
    import keras

    import tfcompress
    from tfcompress import datasets, export

    keras.utils.set_random_seed(seed)
    model = tour_model()
    print(tfcompress.format_profile(tfcompress.profile(model)))

    (x_train, y_train), (x_test, y_test) = datasets.load("digits")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs, verbose=2)  # one line per epoch
    # The moving statistics lag behind layers that change fast (AdderConv's adaptive
    # rate): recompute them over the training data before evaluating or exporting.
    tfcompress.recalibrate_batchnorm(model, x_train)
    accuracy = {"float": model.evaluate(x_test, y_test, verbose=0)[1]}

    tflite = export.to_tflite(model, mode="float32")        # builtin TFLite ops only
    print(export.verify(tflite, model, x_test, labels=y_test))

    # Integer-only int8: quantization-aware training with BatchNorm folding, then export.
    qat = tfcompress.quantize_model(model)                  # fake quant where TFLite quantizes
    qat.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy",
                metrics=["accuracy"])
    qat.fit(x_train, y_train, epochs=qat_epochs, verbose=2)
    tfcompress.recalibrate_batchnorm(qat, x_train)          # QAT's own BatchNorms, too
    accuracy["qat"] = qat.evaluate(x_test, y_test, verbose=0)[1]
    int8 = export.to_tflite(qat, x_train[:200])             # raises if an op is not integer-only
    report = export.verify(int8, qat, x_test, labels=y_test)
    print(report)                                           # within_1_step, both accuracies
    accuracy["int8"] = report["tflite_accuracy"]
    for name, value in accuracy.items():
        print(f"{name:>5} test accuracy {value:.4f}")
    return accuracy


if __name__ == "__main__":
    quiet_unless_verbose()
    main()
