"""The TensorFlow Model Optimization Toolkit (tfmot) side of benchmarks/quantization.py.

Legacy Keras only: this script runs with `TF_USE_LEGACY_KERAS=1` in its environment, imports
`tf_keras` and `tensorflow_model_optimization`, and is started in a subprocess by
benchmarks/quantization.py so that neither package is ever imported by tfcompress or by the
Keras 3 process. Install the comparison stack with

    pip install tensorflow-model-optimization==0.8.1 tf-keras==2.21.0

For each model (`small_cnn`, `lenet5`, rebuilt layer for layer as `tfcompress/models.py`
defines them) it loads MNIST from a keras.datasets-layout .npz file (pixels / 255, channel axis
added), sets the seed, trains the float model (Adam 1e-3, batch 128, sparse categorical
cross-entropy), then writes three .tflite files:

    float    TFLiteConverter.from_keras_model, no optimization
    ptq      full-integer post-training quantization: Optimize.DEFAULT, 200 training images as
             the representative dataset, TFLITE_BUILTINS_INT8, int8 input and output
    qat      tfmot.quantization.keras.quantize_model on the trained float model, fine-tuned
             with Adam 1e-4, converted the same way as ptq

(and, with `--float_weights DIR`, a fourth, `qat_given`: the same QAT started from the trained
float weights in DIR/<model>.npz, which benchmarks/quantization.py writes from tfcompress's float
model; with `--qat_repeats K` also K more such QAT runs with other batch orders, each with a
float fine-tuning control) and evaluates each file on the 10,000 test images with the
ai_edge_litert interpreter (inputs quantized with the file's input scale and zero point). It
prints one JSON line on stdout:

    {"tool": "tfmot", "versions": {...}, "models": {"small_cnn": {...}, "lenet5": {...}}}

with, per model, the float Keras test accuracy, the accuracy, size in bytes and conversion
seconds of each file, and the training seconds. Progress goes to stderr.

Run (from the repository root):

    TF_USE_LEGACY_KERAS=1 python3 benchmarks/tfmot_quantization.py \\
        --data /path/to/mnist.npz --epochs 2 --qat_epochs 1 --output_dir /tmp/tfmot_tflite
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    sys.exit(
        "benchmarks/tfmot_quantization.py must run with TF_USE_LEGACY_KERAS=1 in its "
        "environment (tfmot needs legacy Keras); benchmarks/quantization.py sets it."
    )

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras

MODELS = ("small_cnn", "lenet5")
# tfcompress.models.BN_MOMENTUM: PyTorch's 0.1, 0.9 in Keras terms.
BN_MOMENTUM = 0.9
REPRESENTATIVE_EXAMPLES = 200


def small_cnn(input_shape=(28, 28, 1), num_classes=10, width=32):
    """tfcompress.models.small_cnn, in tf_keras: 3 x (Conv stride 2, no bias -> BN -> ReLU)."""
    inputs = keras.Input(input_shape, name="input")
    x = inputs
    for i, filters in enumerate((width, 2 * width, 4 * width), 1):
        x = keras.layers.Conv2D(
            filters, 3, strides=2, padding="same", use_bias=False, name=f"conv{i}"
        )(x)
        x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


def lenet5(input_shape=(28, 28, 1), num_classes=10):
    """tfcompress.models.lenet5 on 28x28 inputs (padding "auto" -> "valid"), in tf_keras."""
    padding = "valid"
    inputs = keras.Input(input_shape, name="input")
    x = keras.layers.Conv2D(20, 5, padding=padding, name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(2, padding=padding, name="pool1")(x)
    x = keras.layers.Conv2D(50, 5, padding=padding, name="conv2")(x)
    x = keras.layers.MaxPooling2D(2, padding=padding, name="pool2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(500, activation="relu", name="fc1")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="lenet5")


BUILDERS = {"small_cnn": small_cnn, "lenet5": lenet5}
EXPECTED_PARAMS = {"small_cnn": 94_634, "lenet5": 431_080}  # as tfcompress.models documents


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="MNIST .npz (keras.datasets layout)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    parser.add_argument("--epochs", type=int, default=2, help="float training epochs")
    parser.add_argument("--qat_epochs", type=int, default=1, help="QAT fine-tuning epochs")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3, help="float training learning rate")
    parser.add_argument("--qat_lr", type=float, default=1e-4, help="QAT learning rate")
    parser.add_argument(
        "--train_examples", type=int, default=0,
        help="use only the first N training images (0: all 60000)",
    )
    parser.add_argument(
        "--test_examples", type=int, default=0, help="evaluate on the first N test images (0: all)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--qat_repeats", type=int, default=0,
        help="with --float_weights: K more QAT runs from those weights (batch orders seeded "
        "seed + 1000 k), each with a float fine-tuning control (result key repeats)",
    )
    parser.add_argument("--output_dir", default=None, help="save the .tflite files here")
    parser.add_argument(
        "--float_weights", default=None,
        help="folder of <model>.npz trained float weights (numpy.savez of get_weights()): "
        "also run tfmot QAT from them (result key qat_given)",
    )
    parser.add_argument(
        "--predictions", default=None,
        help="folder to write tfmot_<model>.npz with the test-set argmax of every .tflite file",
    )
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in BUILDERS]
    if unknown or not args.models:
        parser.error(f"--models: unknown {unknown}; choose from {', '.join(MODELS)}")
    if args.epochs < 0 or args.qat_epochs < 0:
        parser.error("--epochs and --qat_epochs must be >= 0")
    return args


def load_mnist(path, train_examples=0, test_examples=0):
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    out = []
    for split, limit in (("train", train_examples), ("test", test_examples)):
        x = (arrays[f"x_{split}"].astype(np.float32) / np.float32(255.0))[..., np.newaxis]
        y = arrays[f"y_{split}"].astype(np.int32)
        if limit:
            x, y = x[:limit], y[:limit]
        out.append((x, y))
    return tuple(out)


def _log(message):
    print(f"[tfmot] {message}", file=sys.stderr, flush=True)


def _compile(model, lr):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def convert(model, representative=None):
    """float .tflite when `representative` is None, else full-integer int8 with int8 I/O."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if representative is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([example[None]] for example in representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


def run_tflite(tflite_bytes, x, batch_size=250):
    """Float outputs of the file on `x`, quantizing inputs with the file's scale / zero point."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite_bytes)
    outputs = []
    for start in range(0, len(x), batch_size):
        chunk = x[start : start + batch_size]
        inp = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(inp["index"], list(chunk.shape))
        interpreter.allocate_tensors()
        inp = interpreter.get_input_details()[0]
        out = interpreter.get_output_details()[0]
        scale, zero = inp["quantization"]
        if inp["dtype"] != np.float32 and scale:
            info = np.iinfo(inp["dtype"])
            chunk = np.clip(np.round(chunk / scale) + zero, info.min, info.max)
        interpreter.set_tensor(inp["index"], chunk.astype(inp["dtype"]))
        interpreter.invoke()
        raw = interpreter.get_tensor(out["index"])
        scale, zero = out["quantization"]
        if out["dtype"] != np.float32 and scale:
            raw = (raw.astype(np.float32) - zero) * scale
        outputs.append(raw.astype(np.float32))
    return np.concatenate(outputs)


def tflite_types(tflite_bytes):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite_bytes)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    return f"{np.dtype(inp['dtype']).name}->{np.dtype(out['dtype']).name}"


def weights_abs_sum(model):
    """sum |w| over every weight (BN statistics included), in float64: a fingerprint."""
    return float(sum(np.abs(w.astype(np.float64)).sum() for w in model.get_weights()))


def _qat(model, args, x, y, xt, yt, result, files, key="qat"):
    """tfmot QAT of a trained float model: quantize_model, fine-tune, int8 conversion."""
    start = time.perf_counter()
    qat_model = tfmot.quantization.keras.quantize_model(model)
    _compile(qat_model, args.qat_lr)
    if args.qat_epochs:
        qat_model.fit(x, y, batch_size=args.batch_size, epochs=args.qat_epochs, verbose=0)
    result["seconds"][f"train_{key}"] = time.perf_counter() - start
    result[f"keras_{key}_acc"] = float(qat_model.evaluate(xt, yt, batch_size=512, verbose=0)[1])
    start = time.perf_counter()
    files[key] = convert(qat_model, x[:REPRESENTATIVE_EXAMPLES])
    result["seconds"][f"convert_{key}"] = time.perf_counter() - start


def repeat_qat(name, weights, args, train, test):
    """QAT (int8 .tflite accuracy) and a float fine-tuning control (Keras accuracy) from the
    given float weights, once per batch order seeded `seed + 1000 k`, k = 1..qat_repeats."""
    (x, y), (xt, yt) = train, test
    out = {"seeds": [], "qat": [], "float_finetune": []}
    for k in range(1, args.qat_repeats + 1):
        seed = args.seed + 1000 * k
        scratch, blobs = {"seconds": {}}, {}
        keras.utils.set_random_seed(seed)
        model = BUILDERS[name]()
        model.set_weights(weights)
        keras.utils.set_random_seed(seed)
        _qat(model, args, x, y, xt, yt, scratch, blobs, key="repeat")
        out["qat"].append(float(np.mean(run_tflite(blobs["repeat"], xt).argmax(-1) == yt)))
        model = BUILDERS[name]()
        model.set_weights(weights)
        keras.utils.set_random_seed(seed)
        _compile(model, args.qat_lr)
        model.fit(x, y, batch_size=args.batch_size, epochs=args.qat_epochs, verbose=0)
        out["float_finetune"].append(float(model.evaluate(xt, yt, batch_size=512, verbose=0)[1]))
        out["seeds"].append(seed)
        _log(f"{name}: repeat {k} (seed {seed}): QAT int8 {out['qat'][-1]:.4f}, "
             f"float fine-tune {out['float_finetune'][-1]:.4f}")
        keras.backend.clear_session()
    return out


def _evaluate(name, args, files, xt, yt, result, predictions):
    for kind, blob in files.items():
        start = time.perf_counter()
        pred = run_tflite(blob, xt).argmax(-1)
        acc = float(np.mean(pred == yt))
        predictions[kind] = pred.astype(np.int8)
        result["tflite"][kind] = {
            "acc": acc,
            "bytes": len(blob),
            "io": tflite_types(blob),
            "eval_seconds": time.perf_counter() - start,
        }
        _log(f"{name}: {kind} .tflite accuracy {acc:.4f}, {len(blob):,} bytes")
        if args.output_dir:
            os.makedirs(args.output_dir, exist_ok=True)
            with open(os.path.join(args.output_dir, f"tfmot_{name}_{kind}.tflite"), "wb") as f:
                f.write(blob)


def run_model(name, args, data):
    (x, y), (xt, yt) = data
    result = {"params": None, "seconds": {}, "tflite": {}}
    keras.utils.set_random_seed(args.seed)
    model = BUILDERS[name]()
    result["params"] = int(model.count_params())
    if result["params"] != EXPECTED_PARAMS[name]:
        raise AssertionError(
            f"{name}: {result['params']} parameters, tfcompress.models documents "
            f"{EXPECTED_PARAMS[name]}: the rebuild differs from tfcompress"
        )
    result["weights_abs_sum"] = {"init": weights_abs_sum(model)}
    _compile(model, args.lr)
    _log(f"{name}: float training, {args.epochs} epoch(s)")
    start = time.perf_counter()
    if args.epochs:
        model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0)
    result["seconds"]["train_float"] = time.perf_counter() - start
    result["weights_abs_sum"]["trained"] = weights_abs_sum(model)
    result["keras_float_acc"] = float(model.evaluate(xt, yt, batch_size=512, verbose=0)[1])

    files = {}
    start = time.perf_counter()
    files["float"] = convert(model)
    result["seconds"]["convert_float"] = time.perf_counter() - start
    start = time.perf_counter()
    files["ptq"] = convert(model, x[:REPRESENTATIVE_EXAMPLES])
    result["seconds"]["convert_ptq"] = time.perf_counter() - start
    _log(f"{name}: QAT (tfmot quantize_model), {args.qat_epochs} epoch(s)")
    _qat(model, args, x, y, xt, yt, result, files)

    given = os.path.join(args.float_weights, f"{name}.npz") if args.float_weights else None
    if given and os.path.isfile(given):
        # The same QAT, started from the other tool's trained float weights (same layers,
        # same weight order), so that only the QAT itself differs between the tools.
        with np.load(given) as arrays:
            weights = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
        keras.utils.set_random_seed(args.seed)
        given_model = BUILDERS[name]()
        given_model.set_weights(weights)
        _compile(given_model, args.lr)
        result["given_float_keras_acc"] = float(
            given_model.evaluate(xt, yt, batch_size=512, verbose=0)[1]
        )
        _log(f"{name}: QAT from the float weights in {given}")
        keras.utils.set_random_seed(args.seed)
        _qat(given_model, args, x, y, xt, yt, result, files, key="qat_given")
        if args.qat_repeats:
            result["repeats"] = repeat_qat(name, weights, args, (x, y), (xt, yt))

    predictions = {}
    _evaluate(name, args, files, xt, yt, result, predictions)
    if args.predictions:
        os.makedirs(args.predictions, exist_ok=True)
        np.savez(os.path.join(args.predictions, f"tfmot_{name}.npz"), **predictions)
    return result


def tool_versions():
    """Versions of the comparison stack, for the report."""
    from importlib import metadata

    return {
        "tensorflow": tf.__version__,
        "tf_keras": keras.__version__,
        "tensorflow_model_optimization": metadata.version("tensorflow-model-optimization"),
        "ai_edge_litert": metadata.version("ai-edge-litert"),
    }


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    data = load_mnist(args.data, args.train_examples, args.test_examples)
    versions = tool_versions()
    report = {
        "tool": "tfmot",
        "versions": versions,
        "config": {
            "epochs": args.epochs,
            "qat_epochs": args.qat_epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "qat_lr": args.qat_lr,
            "seed": args.seed,
            "qat_repeats": args.qat_repeats,
            "train_examples": len(data[0][0]),
            "test_examples": len(data[1][0]),
        },
        "models": {},
    }
    for name in args.models:
        report["models"][name] = run_model(name, args, data)
    report["seconds"] = time.perf_counter() - start
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
