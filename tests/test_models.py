"""Reference models: published parameter counts, shapes, variants, save/load."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest

from tfcompress import models
from tfcompress.layers import (
    AdderConv,
    BinaryConv,
    GhostBottleneck,
    GhostConv,
    ShiftConv,
)


def _trainable(model):
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def _batch(shape, n=2, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, *shape)).astype("float32")


def _predict(model, x):
    """Inference-mode forward pass (eager: faster than `predict` for one batch)."""
    return keras.ops.convert_to_numpy(model(x, training=False))


def _bn_statistics(model):
    """Elements of the non-trainable weights, checking they are all BN statistics."""
    stats = model.non_trainable_weights
    assert all(w.name in ("moving_mean", "moving_variance") for w in stats)
    return int(sum(np.prod(w.shape) for w in stats))


# --------------------------------------------------------------------------- LeNets


def test_lenet_300_100_matches_deep_compression():
    model = models.lenet_300_100()
    # 784*300+300 + 300*100+100 + 100*10+10 (Han et al. 2016, Table 2).
    assert model.count_params() == 266_610
    assert [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)] == [
        300, 100, 10,
    ]
    assert model.output_shape == (None, 10)


def test_lenet5_matches_caffe_lenet():
    model = models.lenet5()
    # conv1 5*5*1*20+20, conv2 5*5*20*50+50, fc1 4*4*50*500+500, fc2 500*10+10.
    assert model.count_params() == 520 + 25_050 + 400_500 + 5_010 == 431_080
    assert model.get_layer("conv1").padding == "valid"
    assert model.get_layer("flatten").output.shape == (None, 800)
    # Caffe's prototxt: no activation on the convolutions.
    assert model.get_layer("conv1").activation is keras.activations.linear


def test_lenet5_on_small_inputs():
    model = models.lenet5(input_shape=(8, 8, 1))
    assert model.get_layer("conv1").padding == "same"
    assert model.get_layer("flatten").output.shape == (None, 2 * 2 * 50)
    out = _predict(model, _batch((8, 8, 1)))
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
    same = models.lenet5(padding="same")
    assert same.get_layer("flatten").output.shape == (None, 7 * 7 * 50)
    with pytest.raises(ValueError, match=r"padding='valid'.*\(8, 8, 1\)"):
        models.lenet5(input_shape=(8, 8, 1), padding="valid")
    with pytest.raises(ValueError, match="'full'"):
        models.lenet5(padding="full")


# --------------------------------------------------------------------------- small CNN


def test_small_cnn_shape_params_and_output():
    w = 32
    model = models.small_cnn()
    convs = 9 * 1 * w + 9 * w * 2 * w + 9 * 2 * w * 4 * w
    bn = 4 * (w + 2 * w + 4 * w)
    dense = 4 * w * 10 + 10
    assert model.count_params() == convs + bn + dense == 94_634
    digits = models.small_cnn(input_shape=(8, 8, 1), width=8, num_classes=3)
    out = _predict(digits, _batch((8, 8, 1)))
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)


# --------------------------------------------------------------------------- GhostNet


@pytest.fixture(scope="module")
def ghostnet_1x():
    return models.ghostnet()


def test_ghostnet_1x_parameters_match_paper(ghostnet_1x):
    trainable = _trainable(ghostnet_1x)
    # The paper's Table 7: 5.2M. Exact value of this implementation, recorded:
    assert trainable == 5_182_508
    assert abs(trainable - 5.2e6) / 5.2e6 < 0.01
    # Keras also counts the BN moving mean and variance.
    assert ghostnet_1x.count_params() == trainable + _bn_statistics(ghostnet_1x) == 5_204_476
    assert ghostnet_1x.output_shape == (None, 1000)
    blocks = [layer for layer in ghostnet_1x.layers if isinstance(layer, GhostBottleneck)]
    assert len(blocks) == 16
    assert [b.out_channels for b in blocks][-1] == 160
    assert sum(b.strides == 2 for b in blocks) == 4
    assert sum(b.se_ratio > 0 for b in blocks) == 7


def test_ghostnet_width_multiplier():
    half = models.ghostnet(width=0.5, input_shape=(32, 32, 3), num_classes=10)
    assert half.name == "ghostnet_0.5x"
    assert half.get_layer("stem_conv").filters == 8
    assert half.get_layer("head_conv").filters == 480
    assert half.get_layer("conv_head").filters == 1280  # not scaled, as in the paper
    out = _predict(half, _batch((32, 32, 3)))
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)


def test_ghostnet_runs_on_digits():
    model = models.ghostnet(width=0.5, input_shape=(8, 8, 1), num_classes=10, dropout=0.0)
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in model.layers)
    out = _predict(model, _batch((8, 8, 1)))
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)


# --------------------------------------------------------------------------- ResNet-20


BLOCK_CLASS = {
    "conv": keras.layers.Conv2D,
    "ghost": GhostConv,
    "shift": ShiftConv,
    "adder": AdderConv,
    "binary": BinaryConv,
}


@pytest.mark.parametrize("conv", models.CONVS)
def test_resnet20_variants_build_and_run(conv):
    for shape in ((32, 32, 3), (8, 8, 1)):
        model = models.resnet20(conv, input_shape=shape)
        block_convs = [
            layer for layer in model.layers if "_conv" in layer.name and "stage" in layer.name
        ]
        assert len(block_convs) == 18
        assert all(type(layer) is BLOCK_CLASS[conv] for layer in block_convs)
        # The stem, the projections and the classifier stay ordinary.
        assert type(model.get_layer("stem_conv")) is keras.layers.Conv2D
        assert type(model.get_layer("stage2_block1_proj")) is keras.layers.Conv2D
        assert type(model.get_layer("predictions")) is keras.layers.Dense
        out = _predict(model, _batch(shape))
        assert out.shape == (2, 10)
        np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
        assert np.all(np.isfinite(out))
        relus = [layer for layer in model.layers if isinstance(layer, keras.layers.ReLU)]
        if conv == "binary":
            assert relus == []  # sign(0)=+1: a ReLU would make every input sign +1
        else:
            assert len(relus) == 1 + 2 * 9


def test_resnet20_parameters_match_cifar_resnet20():
    model = models.resnet20("conv")
    convs = 3 * 3 * 3 * 16 + 6 * 9 * 16 * 16
    convs += 9 * 16 * 32 + 5 * 9 * 32 * 32 + 16 * 32
    convs += 9 * 32 * 64 + 5 * 9 * 64 * 64 + 32 * 64
    bn_channels = 16 + 6 * 16 + 7 * 32 + 7 * 64
    trainable = convs + 2 * bn_channels + 64 * 10 + 10
    assert _trainable(model) == trainable == 272_474  # He et al.: 0.27M
    assert model.count_params() == trainable + 2 * bn_channels
    strides = [model.get_layer(f"stage{s}_block1_conv1").strides for s in (1, 2, 3)]
    assert strides == [(1, 1), (2, 2), (2, 2)]
    assert model.get_layer("pool").output.shape == (None, 64)


def test_resnet20_compact_variants_are_smaller():
    conv = models.resnet20("conv").count_params()
    assert models.resnet20("adder").count_params() == conv
    assert models.resnet20("binary").count_params() == conv
    assert models.resnet20("ghost").count_params() < 0.6 * conv
    assert models.resnet20("shift").count_params() < 0.2 * conv


def test_classifier_activation_none_gives_logits():
    model = models.resnet20(input_shape=(8, 8, 1), classifier_activation=None)
    assert model.get_layer("predictions").activation is keras.activations.linear
    logits = _predict(models.lenet_300_100(classifier_activation=None), _batch((28, 28, 1)))
    assert not np.allclose(logits.sum(-1), 1.0)


@pytest.mark.parametrize(
    "build, message",
    [
        (
            lambda: models.resnet20("depthwise"),
            r"'conv', 'ghost', 'shift', 'adder', 'binary'.*conv='depthwise'",
        ),
        (lambda: models.resnet20(conv=None), r"conv=None"),
        (lambda: models.resnet20("shift", width=8), r"width=8"),
        (lambda: models.resnet20(width=0), r"width=0"),
        (lambda: models.resnet20(input_shape=(32, 32)), r"input_shape=\(32, 32\)"),
        (lambda: models.small_cnn(num_classes=0), r"num_classes=0"),
        (lambda: models.small_cnn(width=2.5), r"width=2.5"),
        (lambda: models.lenet_300_100(input_shape=(28, -1)), r"input_shape=\(28, -1\)"),
        (lambda: models.lenet5(num_classes=True), r"num_classes=True"),
        (lambda: models.ghostnet(width=0), r"width=0"),
        (lambda: models.ghostnet(width="1.0"), r"width='1.0'"),
        (lambda: models.ghostnet(dropout=1.0), r"dropout=1.0"),
        (lambda: models.small_cnn(classifier_activation="softmaxx"), r"softmaxx"),
    ],
)
def test_invalid_arguments_raise_value_error(build, message):
    with pytest.raises(ValueError, match=message):
        build()


# --------------------------------------------------------------------------- save/load


def _perturb(model, seed=0):
    """Random weights and BN statistics, so a save/load round trip is tested on
    something other than the initial values."""
    rng = np.random.default_rng(seed)
    weights = []
    for w, value in zip(model.weights, model.get_weights()):
        if "moving_variance" in w.path:
            value = rng.uniform(0.5, 2.0, value.shape)
        else:
            value = value + 0.05 * rng.standard_normal(value.shape)
        weights.append(value.astype("float32"))
    model.set_weights(weights)


@pytest.mark.parametrize(
    "build, shape",
    [(lambda c=c: models.resnet20(c, input_shape=(8, 8, 1)), (8, 8, 1)) for c in models.CONVS]
    + [(lambda: models.ghostnet(width=0.5, input_shape=(32, 32, 3), num_classes=10), (32, 32, 3))],
    ids=[f"resnet20_{c}" for c in models.CONVS] + ["ghostnet_0.5x"],
)
def test_save_and_reload_with_plain_keras(build, shape, tmp_path):
    model = build()
    _perturb(model)
    x = _batch(shape, n=3, seed=1)
    expected = _predict(model, x)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert restored.name == model.name
    assert restored.count_params() == model.count_params()
    np.testing.assert_allclose(_predict(restored, x), expected, rtol=0, atol=1e-6)
