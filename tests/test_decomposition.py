"""decompose_model (SVD, Tucker-2) against NumPy: exact at full rank, Eckart-Young error
when truncated, MACs against profile, .keras round trip, bad inputs."""

import keras
import numpy as np
import pytest

import tfcompress
from tfcompress.decomposition import decompose_model, svd_factors, tucker2_factors


def _model(stride=2, padding="same", dilation=1, output_activation="softmax"):
    inputs = keras.Input((9, 9, 6))
    x = keras.layers.Conv2D(12, 3, strides=stride, padding=padding, dilation_rate=dilation,
                            activation="relu", name="conv")(inputs)
    x = keras.layers.Conv2D(10, 1, strides=2, name="pointwise")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(7, activation=output_activation,
                                                  name="fc")(x))


@pytest.mark.parametrize("stride, padding, dilation", [(2, "same", 1), (1, "valid", 2),
                                                        (1, "same", 1)])
def test_full_rank_chains_compute_what_the_layers_computed(rng, stride, padding, dilation):
    model = _model(stride, padding, dilation)
    full = decompose_model(model, rank={"conv": (6, 12), "pointwise": 10, "fc": 7},
                           only_if_fewer_macs=False)
    x = rng.normal(size=(4, 9, 9, 6)).astype("float32")
    np.testing.assert_allclose(full.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-5)
    assert not any(layer.name in ("conv", "pointwise", "fc") for layer in full.layers)
    report = full.decomposition_report
    assert tfcompress.profile(full)["total"]["macs"] == sum(r["macs"][1] for r in report.layers)
    assert all(r["error"] < 1e-6 for r in report.layers)


def test_truncated_svd_error_is_the_tail_of_the_spectrum(rng):
    w = rng.normal(size=(20, 12))
    s = np.linalg.svd(w, compute_uv=False)
    for r in (1, 5, 11):
        a, b, error = svd_factors(w, r)
        assert error == pytest.approx(np.sqrt(np.sum(s[r:] ** 2) / np.sum(s ** 2)), rel=1e-6)
        assert np.linalg.norm(w - a @ b) == pytest.approx(np.sqrt(np.sum(s[r:] ** 2)), rel=1e-5)


def test_tucker2_error_matches_its_reconstruction(rng):
    kernel = rng.normal(size=(3, 3, 8, 10))
    first, core, last, error = tucker2_factors(kernel, (4, 5))
    approx = np.einsum("hwab,ca,bo->hwco", core, first[0, 0], last[0, 0])
    assert error == pytest.approx(np.linalg.norm(kernel - approx) / np.linalg.norm(kernel),
                                  rel=1e-4)
    # orthonormal factors, as HOSVD / HOOI give
    np.testing.assert_allclose(first[0, 0].T @ first[0, 0], np.eye(4), atol=1e-5)


def test_energy_and_ratio_choose_smaller_layers_and_keep_the_input_model(rng):
    model = _model()
    before = [w.copy() for w in model.get_weights()]
    small = decompose_model(model, energy=0.8)
    assert all(r["ranks"][0] < 12 for r in small.decomposition_report.layers)
    kept = decompose_model(model, ratio=0.5).decomposition_report
    for row in kept.layers:
        assert row["params"][1] <= 0.5 * row["params"][0] + 7  # bias counted on both sides
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_decomposed_model_saves_and_loads(rng, tmp_path):
    small = decompose_model(_model(), energy=0.9)
    small.save(tmp_path / "small.keras")
    loaded = keras.saving.load_model(tmp_path / "small.keras")
    x = rng.normal(size=(3, 9, 9, 6)).astype("float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), small.predict(x, verbose=0))


def _snapshot(model):
    """Copies of every weight array, the layer names and the number of layers."""
    return [np.array(w, copy=True) for w in model.get_weights()], [
        layer.name for layer in model.layers], len(model.layers)


def _assert_unchanged(model, snapshot):
    weights, names, count = snapshot
    after = model.get_weights()
    assert len(after) == len(weights)
    assert all(np.array_equal(a, b) for a, b in zip(weights, after))
    assert [layer.name for layer in model.layers] == names
    assert len(model.layers) == count
    assert not hasattr(model, "decomposition_report")


# Every bad input decompose_model rejects, with the received value its message names
# (and, for a rank too large, the limit).
BAD_INPUTS = [
    ({"rank": 0}, ("rank=0",)),
    ({"rank": -3}, ("rank=-3",)),
    ({"rank": {"fc": 0}}, ("rank['fc']=0",)),
    ({"rank": {"conv": (0, 4)}}, ("rank['conv']=(0, 4)",)),
    ({"rank": {"fc": 99}}, ("rank 99", "'fc'", "at most 7")),  # SVD
    ({"rank": {"pointwise": 13}}, ("rank 13", "'pointwise'", "at most 10")),  # SVD, 1x1
    ({"rank": {"conv": (7, 12)}}, ("(7, 12)", "'conv'", "at most (6, 12)")),  # Tucker-2
    ({"rank": {"conv": (6, 13)}}, ("(6, 13)", "'conv'", "at most (6, 12)")),  # Tucker-2
    ({"energy": 1.5}, ("energy=1.5",)),
    ({"energy": 0}, ("energy=0",)),
    ({"energy": -0.2}, ("energy=-0.2",)),
    ({"ratio": 0.0}, ("ratio=0.0",)),
    ({"ratio": 1.01}, ("ratio=1.01",)),
    ({"rank": 3, "energy": 0.5}, ("rank=3, energy=0.5",)),
    ({"energy": 0.5, "ratio": 0.5}, ("energy=0.5, ratio=0.5",)),
    ({"rank": 3, "ratio": 0.5}, ("rank=3, ratio=0.5",)),
    ({"method": "cpd", "rank": 2}, ("method='cpd'",)),
    ({"rank_selection": "bayes"}, ("rank_selection='bayes'",)),
    ({"rank": {"nope": 2}}, ("'nope'",)),
    ({"exclude": ("nope",), "rank": 2}, ("'nope'",)),
    ({"exclude": ("nope",)}, ("'nope'",)),
]


@pytest.mark.parametrize("kwargs, texts", BAD_INPUTS)
def test_bad_inputs_name_the_value_and_leave_the_input_model_unchanged(kwargs, texts):
    model = _model()
    snapshot = _snapshot(model)
    with pytest.raises(ValueError) as info:
        decompose_model(model, **kwargs)
    for text in texts:
        assert text in str(info.value), (text, str(info.value))
    _assert_unchanged(model, snapshot)


@pytest.mark.parametrize("kwargs", [
    {},  # EVBMF ranks
    {"energy": 0.8},
    {"ratio": 0.5},
    {"rank": {"conv": (3, 4), "fc": 2}},
    {"method": "cp", "rank": 4},
    {"method": "svd", "rank": 2, "exclude": ("fc",)},
    {"rank": {"conv": (6, 12), "pointwise": 10, "fc": 7}, "only_if_fewer_macs": False},
])
def test_a_successful_call_leaves_the_input_model_unchanged(rng, kwargs):
    model = _model()
    snapshot = _snapshot(model)
    x = rng.normal(size=(2, 9, 9, 6)).astype("float32")
    expected = model.predict(x, verbose=0)
    small = decompose_model(model, **kwargs)
    assert small is not model
    _assert_unchanged(model, snapshot)
    np.testing.assert_array_equal(model.predict(x, verbose=0), expected)


@pytest.mark.parametrize("stride, padding", [(2, "same"), (1, "valid")])
def test_cp_chain_computes_the_convolution_of_its_reconstructed_kernel(rng, stride, padding):
    inputs = keras.Input((9, 9, 6))
    outputs = keras.layers.Conv2D(12, 3, strides=stride, padding=padding, activation="relu",
                                  name="conv")(inputs)
    model = keras.Model(inputs, outputs)
    cp = decompose_model(model, method="cp", rank=8, only_if_fewer_macs=False)
    first, vertical, horizontal, last = (np.asarray(layer.kernel) for layer in cp.layers[1:])
    kernel = np.einsum("ir,jr,cr,ro->ijco", vertical[:, 0, :, 0], horizontal[0, :, :, 0],
                       first[0, 0], last[0, 0])
    original = np.asarray(model.get_layer("conv").kernel)
    row = cp.decomposition_report.layers[0]
    assert row["error"] == pytest.approx(
        np.linalg.norm(original - kernel) / np.linalg.norm(original), rel=1e-4)
    reference = keras.layers.Conv2D(12, 3, strides=stride, padding=padding, activation="relu")
    reference.build((None, 9, 9, 6))
    reference.set_weights([kernel.astype("float32"), np.asarray(model.get_layer("conv").bias)])
    x = rng.normal(size=(2, 9, 9, 6)).astype("float32")
    np.testing.assert_allclose(cp.predict(x, verbose=0), np.asarray(reference(x)), atol=1e-5)
    assert tfcompress.profile(cp)["total"]["macs"] == row["macs"][1]
    assert row["params"][1] == 8 * (6 + 3 + 3 + 12) + 12


@pytest.mark.slow
def test_decomposed_model_exports_integer_only_within_one_step(rng):
    """QAT of a decomposed model (SVD, Tucker-2 and CP chains), int8 export: every op
    integer and the file within one output step of Keras. Logits out: behind a softmax a
    legal 1-step logit difference moves a probability by more than one step (with one
    here, CP measured 99.78% within 1 step, at most 2)."""
    from tfcompress import export

    keras.utils.set_random_seed(0)
    model = _model(output_activation=None)
    for method in ("auto", "cp"):
        small = decompose_model(model, method=method, ratio=0.5)
        qat = tfcompress.quantize_model(small)
        x = rng.uniform(size=(64, 9, 9, 6)).astype("float32")
        qat.compile(keras.optimizers.SGD(0.01), "mse")
        qat.fit(x, qat.predict(x, verbose=0), batch_size=16, epochs=2, verbose=0)
        tflite = export.to_tflite(qat)
        export.check_integer_only(tflite, qat)
        report = export.verify(tflite, qat, rng.uniform(size=(128, 9, 9, 6)).astype("float32"))
        assert report["within_1_step"] >= 0.999, (method, report)


def test_sequential_nested_and_multi_input_models(rng):
    """Every model kind: the decomposed model computes what the original did at full
    rank, and its structure of inputs and outputs is kept."""
    seq = keras.Sequential([keras.Input((10,)), keras.layers.Dense(8, activation="relu"),
                            keras.layers.Dense(3)])
    inner_in = keras.Input((10,))
    inner = keras.Model(inner_in, keras.layers.Dense(8, name="inner_fc")(inner_in))
    a, b = keras.Input((10,), name="a"), keras.Input((10,), name="b")
    merged = keras.layers.Concatenate()([inner(a), keras.layers.Dense(4, name="side")(b)])
    multi = keras.Model([a, b], keras.layers.Dense(3, name="head")(merged))
    x = rng.normal(size=(5, 10)).astype("float32")
    for model, data in ((seq, x), (multi, [x, x[::-1].copy()])):
        full = decompose_model(model, energy=1.0, only_if_fewer_macs=False)
        assert len(full.decomposition_report.layers) == (2 if model is seq else 3)
        np.testing.assert_allclose(full.predict(data, verbose=0), model.predict(data, verbose=0),
                                   atol=1e-5)


_RNG = np.random.default_rng(7)

def test_balanced_cp_factors_keep_the_kernel_and_equalize_norms():
    from tfcompress.decomposition import factor

    kernel = _RNG.normal(size=(3, 3, 8, 6))
    first, vertical, horizontal, last, error = factor.cp_factors(kernel, 5)
    columns = [vertical[:, 0, :, 0], horizontal[0, :, :, 0], first[0, 0], last[0, 0].T]
    norms = np.stack([np.linalg.norm(c.astype(np.float64), axis=0) for c in columns])
    np.testing.assert_allclose(norms, np.broadcast_to(norms[0], norms.shape), rtol=1e-5)
    a, b, c, d = (_RNG.normal(size=(n, 4)) * scale for n, scale in
                  ((3, 1e3), (3, 1e-2), (8, 1.0), (6, 5.0)))
    balanced = factor.balance_cp_factors(a, b, c, d)
    np.testing.assert_allclose(np.einsum("ir,jr,cr,or->ijco", *balanced),
                               np.einsum("ir,jr,cr,or->ijco", a, b, c, d), rtol=1e-9)
    assert error == pytest.approx(
        np.linalg.norm(kernel - np.einsum("ir,jr,cr,or->ijco", *[x.astype(np.float64)
                                                               for x in columns]))
        / np.linalg.norm(kernel), rel=1e-4)
