"""Tests for tfcompress.datasets. Nothing here touches the network.

The real-data tests read MNIST / Fashion-MNIST from $TFCOMPRESS_DATA_DIR and are
skipped when it is not set; everything else uses the packaged digits file or
small fake files written to tmp_path.
"""

import os

import keras
import numpy as np
import pytest

from tfcompress import datasets

ENV = "TFCOMPRESS_DATA_DIR"
KEYS = ("x_train", "y_train", "x_test", "y_test")


def _fake_arrays(n_train=6, n_test=4, size=28, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "y_train": np.arange(n_train, dtype=np.uint8) % 10,
        "x_test": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "y_test": (np.arange(n_test, dtype=np.uint8) + 3) % 10,
    }
    arrays["x_train"][0, 0, 0] = 255
    arrays["x_train"][0, 0, 1] = 0
    return arrays


def _write(folder, name, arrays):
    path = folder / f"{name}.npz"
    np.savez(path, **arrays)
    return path


@pytest.fixture
def no_download(monkeypatch):
    """Makes any Keras download attempt fail the test."""

    def forbidden():
        raise AssertionError("keras download must not be attempted here")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", forbidden)
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", forbidden)


# --- names and info ---------------------------------------------------------


def test_available():
    assert datasets.available() == ("digits", "mnist", "fashion_mnist")


@pytest.mark.parametrize(
    "name, shape, train, test",
    [
        ("digits", (8, 8, 1), 1437, 360),
        ("mnist", (28, 28, 1), 60000, 10000),
        ("fashion_mnist", (28, 28, 1), 60000, 10000),
    ],
)
def test_info(name, shape, train, test, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("info() must not load data")

    monkeypatch.setattr(np, "load", no_load)
    got = datasets.info(name)
    assert got["input_shape"] == shape
    assert got["num_classes"] == 10
    assert (got["train_size"], got["test_size"]) == (train, test)
    assert len(got["class_names"]) == 10
    got["input_shape"] = None  # a copy: the module's table is unchanged
    assert datasets.info(name)["input_shape"] == shape


@pytest.mark.parametrize("call", [datasets.load, datasets.info])
def test_unknown_name(call):
    with pytest.raises(ValueError) as err:
        call("cifar10")
    msg = str(err.value)
    assert "'cifar10'" in msg
    for name in ("'digits'", "'mnist'", "'fashion_mnist'"):
        assert name in msg


# --- digits (shipped in the package) ----------------------------------------


def test_digits_arrays():
    (x_train, y_train), (x_test, y_test) = datasets.load("digits")
    assert x_train.shape == (1437, 8, 8, 1)
    assert x_test.shape == (360, 8, 8, 1)
    assert y_train.shape == (1437,)
    assert y_test.shape == (360,)
    assert x_train.dtype == x_test.dtype == np.float32
    assert y_train.dtype == y_test.dtype == np.int32
    for x in (x_train, x_test):
        assert x.min() == 0.0
        assert x.max() == 1.0
        # Divided by 16: every value is k/16 for an integer k in 0..16.
        np.testing.assert_array_equal(x * 16, np.round(x * 16))
    # Pixel sums of the stored split (see tfcompress/data/README.md).
    assert int(np.round(x_train.sum(dtype=np.float64) * 16)) == 449368
    assert int(np.round(x_test.sum(dtype=np.float64) * 16)) == 112350


def test_digits_labels_and_split():
    (_, y_train), (_, y_test) = datasets.load("digits")
    assert set(y_train.tolist()) == set(range(10))
    assert set(y_test.tolist()) == set(range(10))
    train_counts = np.bincount(y_train, minlength=10)
    test_counts = np.bincount(y_test, minlength=10)
    # The UCI test set's class counts: the whole file is that set.
    assert (train_counts + test_counts).tolist() == [
        178, 182, 177, 183, 181, 182, 181, 179, 174, 180
    ]
    # Roughly balanced, and stratified: each class splits 80/20 (+-1 image).
    assert train_counts.min() >= 139 and train_counts.max() <= 146
    assert test_counts.min() >= 35 and test_counts.max() <= 37
    expected_test = 0.2 * (train_counts + test_counts)
    assert np.all(np.abs(test_counts - expected_test) <= 1)


def test_digits_split_is_stored_in_the_file():
    path = os.path.join(os.path.dirname(datasets.__file__), "data", "digits.npz")
    with np.load(path) as f:
        assert f["x_train"].dtype == np.uint8
        assert f["x_train"].shape == (1437, 8, 8)
        assert f["x_train"].max() == 16
        idx_train, idx_test = f["idx_train"], f["idx_test"]
    assert len(np.intersect1d(idx_train, idx_test)) == 0
    np.testing.assert_array_equal(
        np.sort(np.concatenate([idx_train, idx_test])), np.arange(1797)
    )


def test_digits_deterministic(tmp_path, monkeypatch):
    first = datasets.load("digits")
    monkeypatch.setenv(ENV, str(tmp_path))  # neither this nor data_dir matters
    second = datasets.load("digits", data_dir=tmp_path)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


# --- mnist / fashion_mnist from a data directory ----------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_fake_file_from_data_dir(tmp_path, name, no_download):
    arrays = _fake_arrays()
    _write(tmp_path, name, arrays)
    for data_dir in (tmp_path, str(tmp_path)):
        (x_train, y_train), (x_test, y_test) = datasets.load(name, data_dir)
        assert x_train.shape == (6, 28, 28, 1)
        assert x_test.shape == (4, 28, 28, 1)
        assert x_train.dtype == x_test.dtype == np.float32
        assert y_train.dtype == y_test.dtype == np.int32
        assert x_train.max() == 1.0 and x_train.min() == 0.0
        np.testing.assert_allclose(
            x_train[..., 0], arrays["x_train"] / 255.0, rtol=1e-6, atol=0
        )
        np.testing.assert_array_equal(y_train, arrays["y_train"])
        np.testing.assert_array_equal(y_test, arrays["y_test"])


def test_env_var_folder_is_used(tmp_path, monkeypatch, no_download):
    arrays = _fake_arrays(n_train=3, n_test=2)
    _write(tmp_path, "fashion_mnist", arrays)
    monkeypatch.setenv(ENV, str(tmp_path))
    (x_train, y_train), (x_test, _) = datasets.load("fashion_mnist")
    assert x_train.shape == (3, 28, 28, 1)
    assert x_test.shape == (2, 28, 28, 1)
    np.testing.assert_array_equal(y_train, arrays["y_train"])


def test_data_dir_wins_over_env_var(tmp_path, monkeypatch, no_download):
    env_dir, arg_dir = tmp_path / "env", tmp_path / "arg"
    env_dir.mkdir()
    arg_dir.mkdir()
    _write(env_dir, "mnist", _fake_arrays(n_train=3))
    _write(arg_dir, "mnist", _fake_arrays(n_train=5))
    monkeypatch.setenv(ENV, str(env_dir))
    (x_train, _), _ = datasets.load("mnist", data_dir=arg_dir)
    assert x_train.shape[0] == 5


def test_missing_file_in_data_dir(tmp_path, no_download):
    with pytest.raises(FileNotFoundError) as err:
        datasets.load("mnist", data_dir=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "mnist.npz") in msg
    assert "numpy.savez" in msg and ENV in msg


def test_missing_file_in_env_var_folder(tmp_path, monkeypatch, no_download):
    monkeypatch.setenv(ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        datasets.load("fashion_mnist")
    msg = str(err.value)
    assert str(tmp_path / "fashion_mnist.npz") in msg
    assert f"${ENV}" in msg


def test_missing_folder(tmp_path, no_download):
    folder = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        datasets.load("mnist", data_dir=folder)
    assert str(folder / "mnist.npz") in str(err.value)


def _drop(key):
    def edit(arrays):
        del arrays[key]

    return edit


def _set(key, value):
    def edit(arrays):
        arrays[key] = value

    return edit


@pytest.mark.parametrize(
    "edit, expected",
    [
        (_drop("y_test"), "missing key(s) y_test"),
        (_drop("x_train"), "missing key(s) x_train"),
        (_set("x_train", np.zeros((6, 27, 28), np.uint8)), "x_train has shape"),
        (_set("x_test", np.zeros((4, 28, 28, 1), np.uint8)), "x_test has shape"),
        (_set("y_train", np.zeros(5, np.uint8)), "y_train has shape (5,)"),
        (_set("x_train", np.zeros((6, 28, 28), np.float32)), "dtype float32"),
        (_set("y_test", np.full(4, 10, np.uint8)), "y_test values span [10, 10]"),
        (_set("x_test", np.zeros((0, 28, 28), np.uint8)), "x_test has shape (0,"),
    ],
)
def test_invalid_file(tmp_path, edit, expected, no_download):
    arrays = _fake_arrays()
    edit(arrays)
    path = _write(tmp_path, "mnist", arrays)
    with pytest.raises(ValueError) as err:
        datasets.load("mnist", data_dir=tmp_path)
    msg = str(err.value)
    assert str(path) in msg
    assert expected in msg


def test_not_an_npz_file(tmp_path, no_download):
    path = tmp_path / "mnist.npz"
    path.write_bytes(b"this is not a zip archive")
    with pytest.raises(ValueError, match="not a readable .npz file") as err:
        datasets.load("mnist", data_dir=tmp_path)
    assert str(path) in str(err.value)


def test_single_array_file(tmp_path, no_download):
    path = tmp_path / "mnist.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="missing key") as err:
        datasets.load("mnist", data_dir=tmp_path)
    assert str(path) in str(err.value)


# --- Keras download fallback (monkeypatched: no network) --------------------


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_keras_fallback(monkeypatch, name):
    monkeypatch.delenv(ENV, raising=False)
    arrays = _fake_arrays(n_train=2, n_test=3)
    calls = []

    def fake_load_data():
        calls.append(name)
        return (arrays["x_train"], arrays["y_train"]), (
            arrays["x_test"],
            arrays["y_test"],
        )

    monkeypatch.setattr(getattr(keras.datasets, name), "load_data", fake_load_data)
    (x_train, y_train), (x_test, y_test) = datasets.load(name)
    assert calls == [name]
    assert x_train.shape == (2, 28, 28, 1) and x_test.shape == (3, 28, 28, 1)
    assert x_train.dtype == np.float32 and y_test.dtype == np.int32
    np.testing.assert_allclose(x_test[..., 0], arrays["x_test"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y_train, arrays["y_train"])


def test_keras_fallback_empty_env_var_means_unset(monkeypatch):
    monkeypatch.setenv(ENV, "")
    arrays = _fake_arrays(n_train=2, n_test=2)
    monkeypatch.setattr(
        keras.datasets.mnist,
        "load_data",
        lambda: ((arrays["x_train"], arrays["y_train"]),
                 (arrays["x_test"], arrays["y_test"])),
    )
    (x_train, _), _ = datasets.load("mnist")
    assert x_train.shape == (2, 28, 28, 1)


def test_keras_fallback_result_is_validated(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    bad = np.zeros((2, 32, 32), np.uint8)
    monkeypatch.setattr(
        keras.datasets.mnist,
        "load_data",
        lambda: ((bad, np.zeros(2, np.uint8)), (bad, np.zeros(2, np.uint8))),
    )
    with pytest.raises(ValueError, match=r"keras\.datasets\.mnist.*x_train"):
        datasets.load("mnist")


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_keras_download_failure(monkeypatch, name):
    monkeypatch.delenv(ENV, raising=False)
    original = OSError("URL fetch failure: no network")

    def failing_load_data():
        raise original

    monkeypatch.setattr(getattr(keras.datasets, name), "load_data", failing_load_data)
    with pytest.raises(RuntimeError) as err:
        datasets.load(name)
    msg = str(err.value)
    assert err.value.__cause__ is original
    assert "data_dir: not given" in msg
    assert f"${ENV}: not set" in msg
    assert "Keras cache" in msg and os.path.join("datasets", "") in msg
    assert f"set {ENV}" in msg
    assert "URL fetch failure: no network" in msg


# --- real MNIST / Fashion-MNIST from $TFCOMPRESS_DATA_DIR -------------------


def _real(name):
    if not os.environ.get(ENV):
        pytest.skip(
            f"{ENV} is not set: point it at a folder holding mnist.npz and "
            "fashion_mnist.npz (keras.datasets layout) to check the real data"
        )
    return datasets.load(name)


def test_real_mnist():
    (x_train, y_train), (x_test, y_test) = _real("mnist")
    assert x_train.shape == (60000, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int32
    assert abs(x_train.mean(dtype=np.float64) - 0.13066) < 1e-4
    assert abs(x_train.std(dtype=np.float64) - 0.30811) < 1e-4
    assert y_train[0] == 5
    assert y_test[0] == 7
    assert np.bincount(y_train).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949
    ]
    assert np.bincount(y_test).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009
    ]


def test_real_fashion_mnist():
    (x_train, y_train), (x_test, y_test) = _real("fashion_mnist")
    assert x_train.shape == (60000, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
    assert abs(x_train.mean(dtype=np.float64) - 0.28604) < 1e-4
    assert abs(x_train.std(dtype=np.float64) - 0.35302) < 1e-4
    assert np.bincount(y_train).tolist() == [6000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10
    assert y_train[0] == 9 and y_test[0] == 9  # "Ankle boot"


# --- random_shift -------------------------------------------------------------


def _shifted(image, dy, dx):
    """Reference: out[r, c] = image[r - dy, c - dx], zero outside, by explicit loops."""
    out = np.zeros_like(image)
    height, width = image.shape[:2]
    for r in range(height):
        for c in range(width):
            if 0 <= r - dy < height and 0 <= c - dx < width:
                out[r, c] = image[r - dy, c - dx]
    return out


def test_random_shift_moves_each_image_by_an_allowed_offset():
    x = np.random.default_rng(0).uniform(0.1, 1.0, (40, 6, 7, 2)).astype("float32")
    out = datasets.random_shift(x, 2, seed=0)
    assert out.shape == x.shape and out.dtype == x.dtype
    offsets = []
    for image, moved in zip(x, out):
        matches = [
            (dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
            if np.array_equal(moved, _shifted(image, dy, dx))
        ]
        assert len(matches) == 1, matches  # positive pixels: the offset is unique
        offsets.append(matches[0])
    assert len(set(offsets)) > 10  # not one offset for all


def test_random_shift_offsets_are_uniform_and_seeded():
    # One bright pixel in the middle of each 9x9 image: its new position is the offset.
    x = np.zeros((5000, 9, 9, 1), dtype=np.uint8)
    x[:, 4, 4, 0] = 255
    out = datasets.random_shift(x, 1, seed=3)
    assert out.dtype == np.uint8
    rows, cols = np.nonzero(out[..., 0].reshape(len(x), -1) == 255)
    assert np.array_equal(rows, np.arange(len(x)))  # the pixel survives in every image
    counts = np.bincount(cols, minlength=81).reshape(9, 9)
    assert counts.sum() == 5000 and counts[3:6, 3:6].min() > 0
    assert counts[3:6, 3:6].sum() == 5000  # offsets within +/-1
    # 9 equally likely offsets: 555.6 expected each, sd 22; 5 sd.
    assert np.abs(counts[3:6, 3:6] - 5000 / 9).max() < 115
    np.testing.assert_array_equal(out, datasets.random_shift(x, 1, seed=3))
    assert not np.array_equal(out, datasets.random_shift(x, 1, seed=4))
    rng = np.random.default_rng(3)
    np.testing.assert_array_equal(out, datasets.random_shift(x, 1, seed=rng))


def test_random_shift_zero_is_a_copy():
    x = np.arange(2 * 3 * 3).reshape(2, 3, 3, 1)
    out = datasets.random_shift(x, 0)
    np.testing.assert_array_equal(out, x)
    assert out is not x


@pytest.mark.parametrize(
    "shape, max_shift, match",
    [
        ((4, 8, 8), 1, r"4-D array.*shape \(4, 8, 8\)"),
        ((4, 8, 8, 1), -1, r"\[0, 8\).*max_shift=-1"),
        ((4, 8, 5, 1), 5, r"\[0, 5\).*max_shift=5"),
        ((4, 8, 8, 1), 1.5, r"max_shift=1.5"),
        ((4, 8, 8, 1), True, r"max_shift=True"),
    ],
)
def test_random_shift_rejects_bad_input(shape, max_shift, match):
    with pytest.raises(ValueError, match=match):
        datasets.random_shift(np.zeros(shape), max_shift)
