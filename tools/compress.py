"""The main job: train a model, profile it, export it, and check the exported file.

Stages: train -> profile -> evaluate -> save `.keras` -> export float `.tflite`
-> verify it against Keras with LiteRT -> quantize (QAT fine-tuning with
BatchNorm folding, or post-training calibration) -> integer-only int8 `.tflite`
-> verify the int8 file against the Keras model it came from -> report.

Usage:
    python tools/compress.py                       # small_cnn on the shipped digits
    python tools/compress.py --model=resnet20 --conv=adder --epochs=5
    python tools/compress.py --model=lenet5 --dataset=mnist --data_dir=/path/to/npz
    python tools/compress.py --quantize=ptq          # int8 by calibration, no fine-tuning
"""

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging

from tfcompress.fileio import write_atomic

MODELS = ("small_cnn", "lenet_300_100", "lenet5", "ghostnet", "resnet20")
CONVS = ("conv", "ghost", "shift", "adder", "binary")

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "small_cnn", MODELS, "Model to build and train.")
flags.DEFINE_enum("conv", "conv", CONVS, "Convolution type of resnet20's blocks.")
flags.DEFINE_string("dataset", "digits", "digits (shipped, offline), mnist or fashion_mnist.")
flags.DEFINE_string("data_dir", None, "Folder with <dataset>.npz; default $TFCOMPRESS_DATA_DIR.")
flags.DEFINE_integer("epochs", 10, "Training epochs.", lower_bound=0)
flags.DEFINE_integer("batch_size", 64, "Training batch size.", lower_bound=1)
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.", lower_bound=0.0)
flags.DEFINE_float("width", 1.0, "Width multiplier of ghostnet.", lower_bound=0.0)
flags.DEFINE_string("output_dir", "compress_out", "Where to write the results.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_integer("verify_examples", 1000, "Test examples used to compare .tflite with Keras.")
flags.DEFINE_enum("quantize", "qat", ("qat", "ptq", "none"),
                  "int8 stage: quantization-aware fine-tuning, post-training, or none.")
flags.DEFINE_integer("qat_epochs", 2, "QAT fine-tuning epochs.", lower_bound=0)
flags.DEFINE_float("qat_learning_rate", 1e-4, "QAT fine-tuning Adam learning rate.",
                   lower_bound=0.0)
flags.DEFINE_integer("calibration_examples", 200, "Training inputs used to calibrate int8.",
                     lower_bound=1)


def build_model(name, input_shape, num_classes, conv="conv", width=1.0):
    """Builds one of the reference models by name."""
    from tfcompress import models

    if name == "resnet20":
        return models.resnet20(conv=conv, input_shape=input_shape, num_classes=num_classes)
    if name == "ghostnet":
        return models.ghostnet(width=width, input_shape=input_shape, num_classes=num_classes)
    return getattr(models, name)(input_shape=input_shape, num_classes=num_classes)


def plot_history(history, path):
    """Writes the loss/accuracy curves to a PNG; returns False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, ax in (("loss", ax_loss), ("accuracy", ax_acc)):
        for prefix in ("", "val_"):
            if prefix + key in history:
                ax.plot(history[prefix + key], label=(prefix or "train_") + key)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # TF's SavedModel export logs at INFO
    import keras

    from tfcompress import datasets, export, profiling

    keras.utils.set_random_seed(FLAGS.seed)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    stem = FLAGS.model + (f"_{FLAGS.conv}" if FLAGS.model == "resnet20" else "")

    print(f"[1/7] data: {FLAGS.dataset}")
    (x_train, y_train), (x_test, y_test) = datasets.load(FLAGS.dataset, data_dir=FLAGS.data_dir)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    print(f"      train {x_train.shape}, test {x_test.shape}, {num_classes} classes")

    print(f"[2/7] model: {stem}")
    model = build_model(FLAGS.model, x_train.shape[1:], num_classes, FLAGS.conv, FLAGS.width)
    prof = profiling.profile(model)
    print(profiling.format_profile(prof))

    print(f"[3/7] train: {FLAGS.epochs} epochs")
    model.compile(
        optimizer=keras.optimizers.Adam(FLAGS.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    history = model.fit(
        x_train, y_train,
        batch_size=FLAGS.batch_size,
        epochs=FLAGS.epochs,
        validation_split=0.1,
        verbose=2,
    ).history
    train_seconds = time.perf_counter() - start
    test_loss, test_acc = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    print(f"      test accuracy {test_acc:.4f} (loss {test_loss:.4f}) after {train_seconds:.1f} s")

    print("[4/7] save .keras")
    keras_path = os.path.join(FLAGS.output_dir, stem + ".keras")
    tmp_keras = keras_path[: -len(".keras")] + ".partial.keras"
    try:
        model.save(tmp_keras)
        os.replace(tmp_keras, keras_path)
    finally:
        if os.path.exists(tmp_keras):
            os.remove(tmp_keras)

    print("[5/7] export float .tflite")
    tflite = export.to_tflite(model, mode="float32")
    tflite_path = os.path.join(FLAGS.output_dir, stem + "_float.tflite")
    write_atomic(tflite_path, tflite)

    print("[6/7] verify .tflite against Keras with LiteRT")
    check = export.verify(tflite, model, x_test[: FLAGS.verify_examples])
    lite_probs, _ = export.run_tflite(tflite, x_test)
    tflite_acc = float((lite_probs.argmax(-1) == y_test).mean())

    int8 = quantize_stage(model, stem, x_train, y_train, x_test, y_test)

    plot_path = os.path.join(FLAGS.output_dir, stem + "_training.png")
    plotted = plot_history(history, plot_path)
    report = {
        "model": stem,
        "dataset": FLAGS.dataset,
        "epochs": FLAGS.epochs,
        "train_seconds": round(train_seconds, 2),
        "keras_test_accuracy": float(test_acc),
        "tflite_test_accuracy": tflite_acc,
        "params": prof["total"]["params"],
        "macs": prof["total"]["macs"],
        "adds": prof["total"]["adds"],
        "keras_bytes": os.path.getsize(keras_path),
        "tflite_bytes": len(tflite),
        "parity": check,
        "int8": int8,
        "files": {
            "keras": keras_path,
            "tflite": tflite_path,
            "int8_tflite": int8.get("path"),
            "plot": plot_path if plotted else None,
        },
    }
    write_atomic(os.path.join(FLAGS.output_dir, stem + "_report.json"),
                 json.dumps(report, indent=2))

    rows = [
        ("model", stem),
        ("parameters", f"{report['params']:,}"),
        ("multiply-adds / example", f"{report['macs']:,}"),
        ("additions / example", f"{report['adds']:,}"),
        ("Keras test accuracy", f"{test_acc:.4f}"),
        ("TFLite test accuracy", f"{tflite_acc:.4f}"),
        ("TFLite vs Keras max |diff|", f"{check['max_abs_diff']:.2e}"),
        ("TFLite vs Keras argmax agreement", f"{check['argmax_agreement']:.4f}"),
        (".keras bytes", f"{report['keras_bytes']:,}"),
        (".tflite bytes", f"{report['tflite_bytes']:,}"),
    ]
    if "error" in int8:
        rows.append((f"int8 ({FLAGS.quantize})", "FAILED: " + int8["error"]))
    elif int8:
        rows += [
            (f"int8 ({FLAGS.quantize}) test accuracy", f"{int8['test_accuracy']:.4f}"),
            ("int8 .tflite bytes", f"{int8['bytes']:,}"),
            ("int8 vs Keras within 1 step", f"{int8['parity'].get('within_1_step', 0):.4f}"),
            ("int8 vs Keras argmax agreement", f"{int8['parity']['argmax_agreement']:.4f}"),
        ]
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print(f"\nwrote {FLAGS.output_dir}/: {os.path.basename(keras_path)}, "
          f"{os.path.basename(tflite_path)}, {stem}_report.json"
          + (f", {os.path.basename(plot_path)}" if plotted else " (no matplotlib: no plot)")
          + (f", {os.path.basename(int8['path'])}" if int8.get("path") else ""))
    if "error" in int8:
        raise SystemExit(f"int8 stage failed: {int8['error']}")


def quantize_stage(model, stem, x_train, y_train, x_test, y_test):
    """QAT or PTQ to an integer-only int8 .tflite, verified against Keras; a report dict."""
    import keras

    from tfcompress import export
    from tfcompress.quantization import quantize_model

    if FLAGS.quantize == "none":
        return {}
    print(f"[7/7] int8 ({FLAGS.quantize})")
    calibration = x_train[: FLAGS.calibration_examples]
    try:
        if FLAGS.quantize == "qat":
            reference = quantize_model(model)
            reference.compile(
                optimizer=keras.optimizers.Adam(FLAGS.qat_learning_rate),
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy"],
            )
            reference.fit(x_train, y_train, batch_size=FLAGS.batch_size,
                          epochs=FLAGS.qat_epochs, verbose=2)
            qat_path = os.path.join(FLAGS.output_dir, stem + "_qat.keras")
            reference.save(qat_path)
        else:
            reference = model
        tflite = export.to_tflite(reference, calibration, mode="int8")
    except ValueError as error:
        print(f"      int8 export is not available for this model: {error}")
        return {"error": str(error)}
    path = os.path.join(FLAGS.output_dir, stem + "_int8.tflite")
    write_atomic(path, tflite)
    parity = export.verify(tflite, reference, x_test[: FLAGS.verify_examples])
    probs, _ = export.run_tflite(tflite, x_test)
    accuracy = float((probs.argmax(-1) == y_test).mean())
    print(f"      int8 test accuracy {accuracy:.4f}; vs Keras: "
          f"{parity.get('within_1_step', 0):.4f} of outputs within 1 step, "
          f"argmax agreement {parity['argmax_agreement']:.4f}")
    return {"mode": FLAGS.quantize, "path": path, "bytes": len(tflite),
            "test_accuracy": accuracy, "parity": parity}


if __name__ == "__main__":
    app.run(main)
