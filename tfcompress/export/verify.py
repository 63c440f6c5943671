"""Does the file compute what the Keras model computed? Both run on the same inputs."""

import keras
import numpy as np

from tfcompress.export.runners import Runner, get_runner, run_tflite

__all__ = ["verify"]


def _compare(lite, reference, detail):
    """The report of one output: differences, argmax agreement, quantization steps."""
    diff = np.abs(lite.astype(np.float64) - reference)
    report = {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "argmax_agreement": None,
    }
    if reference.ndim == 2:
        report["argmax_agreement"] = float(np.mean(lite.argmax(-1) == reference.argmax(-1)))
    steps = None
    scale = detail["quantization"][0]
    if np.dtype(detail["dtype"]) != np.float32 and scale:
        steps = diff / scale
        report.update(
            output_scale=float(scale),
            max_diff_steps=float(steps.max()),
            # 1e-3 step of slack: Keras' grid (lo + k*s) and LiteRT's ((q - z) * s)
            # represent the same values with float32 rounding differences.
            within_1_step=float(np.mean(steps <= 1.0 + 1e-3)),
        )
    return report, diff, steps


def _accuracy(outputs, labels, what):
    """Top-1 accuracy of a 2D output (one row of scores per example) against labels."""
    labels = np.asarray(labels).reshape(-1)
    if outputs.ndim != 2:
        raise ValueError(
            f"`labels` needs a (examples, classes) output to score; {what} has shape "
            f"{outputs.shape}."
        )
    if len(labels) != len(outputs):
        raise ValueError(
            f"`labels` has {len(labels)} entries for {len(outputs)} examples."
        )
    return float(np.mean(outputs.argmax(-1) == labels))


def verify(tflite_bytes, keras_model, data, batch_size=256, runner="litert", labels=None):
    """Runs the file and Keras on the same inputs and reports how far they differ.

    Args:
        tflite_bytes: the `.tflite` contents.
        keras_model: the Keras model the file was made from.
        data: float inputs, (N, ...): an array for a model with one input, else a
            list in `keras_model.inputs` order or a dict {input name: array}.
        batch_size: batch size for both runtimes.
        runner: the runtime that runs the file: "litert" (LiteRT, XNNPACK),
            "litert_ref" (LiteRT's reference kernels) or "micro" (TensorFlow Lite
            Micro, `pip install tfcompress[micro]`); or a `Runner` made for the file.
        labels: optional integer class labels of `data` (one per example). The
            report then also holds `keras_accuracy` and `tflite_accuracy` (top-1,
            of the first output): agreement between two models says nothing about
            whether either is right.

    Returns:
        dict with `max_abs_diff`, `mean_abs_diff`, `argmax_agreement` (fraction of
        examples whose top class agrees, for 2D outputs), `examples`, and, when the
        file's output is quantized, `output_scale`, `max_diff_steps` and
        `within_1_step` (fraction of elements within one quantization step). For
        a model with several outputs the top-level numbers cover all of them
        (the largest difference, the mean over all elements, the lowest argmax
        agreement, the fraction within one step of all quantized elements), and
        `outputs` holds one such report per output, in `keras_model.outputs` order.
        With `labels`, also `keras_accuracy` and `tflite_accuracy`.

    Raises:
        ValueError: when the file and the model have different numbers of outputs,
            or `labels` does not match the examples or the output is not 2D.

    Example:
        >>> report = verify(to_tflite(model), model, x_test[:500])
        >>> report["argmax_agreement"]
        1.0
    """
    names = [t.name for t in getattr(keras_model, "inputs", None) or []]
    if isinstance(data, (list, tuple)) and len(names) > 1:
        data = dict(zip(names, data))
    if isinstance(data, dict):
        data = {n: np.asarray(v, np.float32) for n, v in data.items()}
        count = len(next(iter(data.values())))
    else:
        data = np.asarray(data, np.float32)
        count = len(data)
    file_runner = runner if isinstance(runner, Runner) else get_runner(runner)(tflite_bytes)
    lite, _ = run_tflite(tflite_bytes, data, batch_size, runner=file_runner)
    details = [file_runner.output_details[n] for n in file_runner.output_names]
    reference = [
        np.asarray(r) for r in keras.tree.flatten(
            keras_model.predict(data, batch_size=batch_size, verbose=0)
        )
    ]
    lite = [lite] if len(details) == 1 else lite
    if len(reference) != len(lite):
        raise ValueError(
            f"The file has {len(lite)} outputs, model {keras_model.name!r} has "
            f"{len(reference)}: is it the model the file was made from?"
        )
    accuracy = {}
    if labels is not None:
        accuracy = {
            "keras_accuracy": _accuracy(reference[0], labels, "the model's first output"),
            "tflite_accuracy": _accuracy(np.asarray(lite[0]), labels, "the file's first output"),
        }
    parts = [_compare(a, b, d) for a, b, d in zip(lite, reference, details)]
    if len(parts) == 1:
        report = {"examples": count, **parts[0][0]}
        report = {key: report[key] for key in (
            "examples", "max_abs_diff", "mean_abs_diff", "argmax_agreement",
            "output_scale", "max_diff_steps", "within_1_step") if key in report}
        return {**report, **accuracy}
    reports = [p[0] for p in parts]
    diffs = np.concatenate([p[1].ravel() for p in parts])
    report = {
        "examples": count,
        "max_abs_diff": float(diffs.max()),
        "mean_abs_diff": float(diffs.mean()),
        "argmax_agreement": min(
            (r["argmax_agreement"] for r in reports if r["argmax_agreement"] is not None),
            default=None,
        ),
    }
    steps = [p[2].ravel() for p in parts if p[2] is not None]
    if steps:
        steps = np.concatenate(steps)
        report.update(
            max_diff_steps=float(steps.max()),
            within_1_step=float(np.mean(steps <= 1.0 + 1e-3)),
        )
    report["outputs"] = reports
    report.update(accuracy)
    return report
