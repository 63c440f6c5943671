"""examples/tour.py: the README tour trains, recalibrates its BatchNorms and exports.

The tour's model has an AdderConv followed by a BatchNormalization. AdderConv's
outputs (-sum |X - W|) move fast while training, and the BatchNorm's moving mean
lags behind them: measured with seed 0 after 10 epochs (2 CPU cores), the moving
mean was up to 9.9 away from the real mean of its input, and inference-mode test
accuracy was 0.75; after `recalibrate_batchnorm` the gap was 1.4e-5 and accuracy
0.986. Training takes about 55 s, the whole tour about 90 s: both are `slow`.
"""

import importlib.util
import os
import time

import keras
import numpy as np
import pytest

import tfcompress
from tfcompress import datasets
from tfcompress.layers import AdderConv

_TOUR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "examples", "tour.py")


def _load_tour():
    spec = importlib.util.spec_from_file_location("tour", _TOUR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tour = _load_tour()


def _bn_after_adder(model):
    """The BatchNormalization that takes the AdderConv's output."""
    (adder,) = [layer for layer in model.layers if isinstance(layer, AdderConv)]
    (bn,) = [layer for layer in model.layers
             if isinstance(layer, keras.layers.BatchNormalization)
             and layer.input is adder.output]
    return bn


def _input_mean(model, layer, x):
    """NumPy float64 mean per channel of `layer`'s inference-mode input over `x`."""
    values = keras.Model(model.inputs, layer.input).predict(x, batch_size=256, verbose=0)
    return np.asarray(values, np.float64).mean(axis=(0, 1, 2))


def test_tour_model_structure():
    """Checks the tour model's shape: 8x8x1 digits in, 10 softmax scores out, a
    BatchNormalization directly after its one AdderConv."""
    model = tour.tour_model()
    assert tuple(model.input_shape) == (None, 8, 8, 1)
    assert tuple(model.output_shape) == (None, 10)
    bn = _bn_after_adder(model)
    assert bn.input.shape[-1] == 32


@pytest.mark.slow
def test_stale_batchnorm_after_adderconv_is_fixed_by_recalibration():
    """Measures, after 10 epochs with seed 0, the gap between the post-AdderConv
    BatchNorm's moving mean and the NumPy mean of its input over x_train (> 1.0
    before: measured 9.9; < 1e-3 after `recalibrate_batchnorm`: measured 1.4e-5),
    and inference-mode test accuracy after recalibration (> 0.9: measured 0.986).
    Training took about 55 s on 2 busy CPU cores."""
    (x_train, y_train), (x_test, y_test) = datasets.load("digits")
    keras.utils.set_random_seed(0)
    model = tour.tour_model()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x_train, y_train, epochs=10, verbose=0)
    fit_seconds = time.perf_counter() - start
    bn = _bn_after_adder(model)

    stale_gap = np.abs(np.asarray(bn.moving_mean, np.float64)
                       - _input_mean(model, bn, x_train)).max()
    stale_accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    assert stale_gap > 1.0, (
        f"no stale statistics: gap {stale_gap:.4f}, accuracy {stale_accuracy:.4f}, "
        f"fit {fit_seconds:.0f} s")

    report = tfcompress.recalibrate_batchnorm(model, x_train)

    assert len(report) == 5  # 3 BatchNormalization layers + GhostConv's two
    gap = np.abs(np.asarray(bn.moving_mean, np.float64)
                 - _input_mean(model, bn, x_train)).max()
    accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    assert gap < 1e-3, f"gap {gap} (was {stale_gap:.4f})"
    assert accuracy > 0.9, (
        f"inference accuracy {accuracy:.4f} after recalibration, {stale_accuracy:.4f} "
        f"before; fit {fit_seconds:.0f} s")


@pytest.mark.slow
def test_tour_main_accuracies():
    """Runs the whole tour (about 90 s) and measures its test accuracies: float,
    QAT and int8 TFLite all > 0.9 (measured 0.986, 0.956, 0.956)."""
    accuracy = tour.main()
    assert set(accuracy) == {"float", "qat", "int8"}
    for name, value in accuracy.items():
        assert value > 0.9, f"{name} test accuracy {value:.4f}: {accuracy}"
