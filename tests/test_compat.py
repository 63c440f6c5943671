"""Files written by tfcompress 0.1.0 load and compute what they computed then.

The fixtures in `tests/fixtures/v0_1_0/` were written by `tests/fixtures/make_v0_1_0.py`
with tfcompress 0.1.0 (commit 093f4b8), before the package was reorganised into
subpackages: compact layers, a model pruned mid-schedule (with its optimizer), a
clustered model, and QAT models. Each must load with plain `keras.saving.load_model`
after `import tfcompress`, and the `.tfcz` containers with `load_compressed`, and give
the outputs 0.1.0 recorded, to float32 rounding.
"""

import os

import keras
import numpy as np
import pytest

import tfcompress  # noqa: F401  (registers the tfcompress layers)
from tfcompress import coding
from tfcompress.clustering import ClusterWeights
from tfcompress.pruning import PruneLowMagnitude, UpdatePruningStep
from tfcompress.quantization import ActivationQuantizer, QuantizeWrapper

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "v0_1_0")


@pytest.fixture(scope="module")
def expected():
    with np.load(os.path.join(FIXTURES, "expected.npz")) as data:
        return {key: data[key] for key in data.files}


def _load(name):
    return keras.saving.load_model(os.path.join(FIXTURES, f"{name}.keras"))


@pytest.mark.parametrize("name", ["compact", "pruned", "clustered", "qat_cnn", "qat_compact"])
def test_keras_file_of_0_1_0_loads_and_matches(name, expected):
    model = _load(name)
    out = model.predict(expected["input"], verbose=0)
    np.testing.assert_allclose(out, expected[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["compact", "pruned", "clustered"])
def test_container_of_0_1_0_loads_and_matches(name, expected):
    model = coding.load_compressed(os.path.join(FIXTURES, f"{name}.tfcz"))
    out = model.predict(expected["input"], verbose=0)
    np.testing.assert_allclose(out, expected[name], rtol=1e-5, atol=1e-6)


def test_pruned_file_resumes_its_schedule(expected):
    model = _load("pruned")
    wrappers = [layer for layer in model.layers if isinstance(layer, PruneLowMagnitude)]
    assert [int(w.pruning_step.numpy()) for w in wrappers] == list(expected["pruned_step"])
    masks = [w.pruning_masks[0].numpy() for w in wrappers]
    # Masks were last updated at step 8 of PolynomialDecay(0, 0.8, 0, 20, power=3).
    target = 0.8 + (0.0 - 0.8) * (1 - 8 / 20) ** 3
    for w, mask in zip(wrappers, masks):
        zeros = round(target * mask.size)
        assert int(np.sum(mask == 0)) == zeros, w.name
    # The compiled optimizer came along: training continues from step 9 with the callback.
    x = np.repeat(expected["input"], 4, axis=0)
    y = np.arange(len(x)) % 10
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[UpdatePruningStep()])
    assert [int(w.pruning_step.numpy()) for w in wrappers] == [
        s + 2 for s in expected["pruned_step"]
    ]
    for w in wrappers:  # step 10 is no update turn (frequency 4): the masks held
        kernel = w.layer.kernel.numpy()
        assert np.all(kernel[w.pruning_masks[0].numpy() == 0] == 0)


def test_clustered_file_keeps_its_clusters(expected):
    model = _load("clustered")
    wrappers = [layer for layer in model.layers if isinstance(layer, ClusterWeights)]
    assert wrappers
    for w in wrappers:
        kernel = keras.ops.convert_to_numpy(w.clustered_kernels()[0])
        assert np.unique(kernel[kernel != 0]).size <= 8


def test_qat_file_relinks_its_input_quantizers(expected):
    model = _load("qat_cnn")
    wrappers = [layer for layer in model.layers if isinstance(layer, QuantizeWrapper)]
    assert wrappers
    for w in wrappers:
        assert isinstance(w.input_quantizer, ActivationQuantizer), w.name
