"""Pruning sensitivity of a trained model: each layer (or channel group) pruned alone.

Prunes one layer at a time to each sparsity without retraining and evaluates the
test accuracy (`tfcompress.sensitivity_analysis`), then writes the curves as a CSV
(Distiller's columns name,sparsity,metric), a PNG (one line per layer) and a JSON
with the per-layer sparsities whose accuracy drop stays within `--max_drop`, which
`prune_channels`, `prune_low_magnitude` and `DeepCompressionConfig` take.

Usage:
    python tools/sensitivity.py --model=compress_out/small_cnn.keras
    python tools/sensitivity.py --model=x.keras --dataset=mnist --granularity=weight
    python tools/sensitivity.py --model=x.keras --criterion=fpgm --sparsities=0.25,0.5,0.75
"""

import os

if __package__:  # tfcompress <command>: the tools are the package tfcompress_tools
    from . import _quiet
else:  # python tools/<command>.py
    import _quiet
_quiet.silence()

import json

from absl import app, flags

from tfcompress.fileio import write_atomic

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "The trained .keras model to analyse.")
flags.DEFINE_string("dataset", "digits", "digits (shipped, offline), mnist or fashion_mnist.")
flags.DEFINE_string("data_dir", None, "Folder with <dataset>.npz; default $TFCOMPRESS_DATA_DIR.")
flags.DEFINE_enum("granularity", "channel", ("channel", "weight"),
                  "channel: groups of coupled channels (prune_channels); weight: each layer's "
                  "weights by magnitude.")
flags.DEFINE_enum("criterion", "l1", ("l1", "l2", "fpgm", "bn_scale", "taylor", "dcp", "random"),
                  "How channels are scored (granularity=channel).")
flags.DEFINE_list("sparsities", ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"],
                  "Comma-separated fractions in [0, 1) to try.")
flags.DEFINE_integer("examples", 1000, "Test examples the accuracy is measured on.",
                     lower_bound=1)
flags.DEFINE_float("max_drop", 0.01, "Accuracy drop (fraction) a layer may cost for the "
                   "suggested sparsities.", lower_bound=0.0)
flags.DEFINE_string("output_dir", "sensitivity_out", "Where to write the CSV, PNG and JSON.")


def check_flags(argv):
    """Every flag checked before any work (`tfcompress.cli.run` calls it)."""
    from tfcompress import cli

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.model:
        raise app.UsageError("--model is required: a trained .keras file.")
    if not os.path.isfile(FLAGS.model):
        raise app.UsageError(f"--model={FLAGS.model}: no such file.")
    try:
        sparsities = [float(s) for s in FLAGS.sparsities]
    except ValueError:
        raise app.UsageError(
            f"--sparsities={','.join(FLAGS.sparsities)}: give fractions like 0.25,0.5"
        ) from None
    if not sparsities or any(not 0.0 <= s < 1.0 for s in sparsities):
        raise app.UsageError(
            f"--sparsities={','.join(FLAGS.sparsities)}: every value must be in [0, 1)."
        )
    cli.check_dataset(FLAGS.dataset, FLAGS.data_dir)


def main(argv):
    del argv
    from absl import logging

    logging.set_verbosity(logging.ERROR)  # TF's retracing notes: one per pruned copy
    sparsities = [float(s) for s in FLAGS.sparsities]
    import keras

    import tfcompress
    from tfcompress import cli, datasets

    try:
        _, (x_test, y_test) = datasets.load(FLAGS.dataset, data_dir=FLAGS.data_dir)
    except ValueError as error:
        raise app.UsageError(f"--dataset={FLAGS.dataset}: {error}") from None
    try:
        model = keras.saving.load_model(FLAGS.model)
    except (ValueError, OSError) as error:
        raise app.UsageError(f"--model={FLAGS.model}: cannot load it ({error}).") from None
    expected = tuple(model.inputs[0].shape[1:])
    if tuple(x_test.shape[1:]) != expected:
        raise app.UsageError(
            f"--model={FLAGS.model} takes inputs of shape {expected}, but --dataset="
            f"{FLAGS.dataset} has {tuple(x_test.shape[1:])}."
        )
    data = (x_test[: FLAGS.examples], y_test[: FLAGS.examples])
    print(f"{FLAGS.granularity} sensitivity of {FLAGS.model} on {len(data[0])} "
          f"{FLAGS.dataset} test examples, sparsities {sparsities}")
    try:
        result = tfcompress.sensitivity_analysis(
            model, data, sparsities=sparsities, granularity=FLAGS.granularity,
            criterion=FLAGS.criterion,
        )
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    with cli.Outputs(FLAGS.output_dir) as out:
        _write(out, model, result, data, sparsities)
    print()
    print(out.listing())


def _write(out, model, result, data, sparsities):
    name = (os.path.splitext(os.path.basename(FLAGS.model))[0]
            + f"_{FLAGS.granularity}_sensitivity")
    result.to_csv(out.path(name + ".csv", "accuracy per layer and sparsity"))
    result.plot(out.path(name + ".png", "the same, one curve per layer"), title=(
        f"{model.name} on {FLAGS.dataset} ({len(data[0])} test examples): "
        f"{FLAGS.granularity} sensitivity" + (f", {FLAGS.criterion}" if FLAGS.granularity ==
                                              "channel" else "") + ", no retraining"))
    suggested = result.sparsities_for(FLAGS.max_drop)
    summary = {
        "model": FLAGS.model, "dataset": FLAGS.dataset, "examples": len(data[0]),
        "granularity": FLAGS.granularity, "criterion": FLAGS.criterion,
        "baseline": result.baseline, "curves": result.curves, "max_drop": FLAGS.max_drop,
        "sparsities_for_max_drop": suggested,
    }
    write_atomic(out.path(name + ".json", "the curves and the suggested sparsities"),
                 json.dumps(summary, indent=2))
    width = max(len(name) for name in result.curves) if result.curves else 4
    print(f"\nbaseline accuracy {result.baseline:.4f}")
    print(f"{'layer':<{width}}  " + "  ".join(f"{s:>5.2f}" for s in sparsities)
          + f"  largest within -{FLAGS.max_drop:g}")
    for name, points in result.curves.items():
        print(f"{name:<{width}}  " + "  ".join(f"{v:5.3f}" for _, v in points)
              + f"  {suggested[name]:.2f}")


def run_tool(argv=None):
    """Runs this tool through the shared harness (`tfcompress.cli.run`)."""
    from tfcompress.cli import run

    run(main, check=check_flags, argv=argv)


if __name__ == "__main__":
    run_tool()
