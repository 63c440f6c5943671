"""Does the file compute what the Keras model computed? Both run on the same inputs."""

import keras
import numpy as np

from tfcompress.export.runners import get_runner, run_tflite

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


def verify(tflite_bytes, keras_model, data, batch_size=256, runner="litert"):
    """Runs the file and Keras on the same inputs and reports how far they differ.

    Args:
        tflite_bytes: the `.tflite` contents.
        keras_model: the Keras model the file was made from.
        data: float inputs, (N, ...): an array for a model with one input, else a
            list in `keras_model.inputs` order or a dict {input name: array}.
        batch_size: batch size for both runtimes.
        runner: the runtime that runs the file ("litert").

    Returns:
        dict with `max_abs_diff`, `mean_abs_diff`, `argmax_agreement` (fraction of
        examples whose top class agrees, for 2D outputs), `examples`, and, when the
        file's output is quantized, `output_scale`, `max_diff_steps` and
        `within_1_step` (fraction of elements within one quantization step). For
        a model with several outputs the top-level numbers cover all of them
        (the largest difference, the mean over all elements, the lowest argmax
        agreement, the fraction within one step of all quantized elements), and
        `outputs` holds one such report per output, in `keras_model.outputs` order.

    Example:
        >>> report = verify(to_tflite(model), model, x_test[:500])
        >>> report["argmax_agreement"]
        1.0
    """
    names = [t.name for t in keras_model.inputs]
    if isinstance(data, (list, tuple)) and len(names) > 1:
        data = dict(zip(names, data))
    if isinstance(data, dict):
        data = {n: np.asarray(v, np.float32) for n, v in data.items()}
        count = len(next(iter(data.values())))
    else:
        data = np.asarray(data, np.float32)
        count = len(data)
    lite, _ = run_tflite(tflite_bytes, data, batch_size, runner=runner)
    file_runner = get_runner(runner)(tflite_bytes)
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
    parts = [_compare(a, b, d) for a, b, d in zip(lite, reference, details)]
    if len(parts) == 1:
        report = {"examples": count, **parts[0][0]}
        return {key: report[key] for key in (
            "examples", "max_abs_diff", "mean_abs_diff", "argmax_agreement",
            "output_scale", "max_diff_steps", "within_1_step") if key in report}
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
    return report
