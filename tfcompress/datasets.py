"""Small image-classification datasets, ready for a channels-last Conv2D model.

Three datasets, all 10 classes of single-channel images:

- ``"digits"``: the UCI ML hand-written digits (8x8, 1797 images) shipped inside
  the package (``tfcompress/data/digits.npz``), so it works offline. Its
  train/test split (stratified, seeded, 1437/360) is stored in the file; see
  ``tfcompress/data/README.md``.
- ``"mnist"`` and ``"fashion_mnist"`` (28x28, 60000/10000): read from
  ``<name>.npz`` in a data directory (the ``data_dir`` argument, else the
  ``TFCOMPRESS_DATA_DIR`` environment variable), otherwise downloaded by Keras.

Every loader returns ``x`` as float32 in [0, 1] with shape (N, H, W, 1) and ``y``
as int32 with shape (N,).
"""

import os
import zipfile

import numpy as np

__all__ = ["ENV_VAR", "available", "info", "load", "random_shift"]

ENV_VAR = "TFCOMPRESS_DATA_DIR"
_KEYS = ("x_train", "y_train", "x_test", "y_test")
_PACKAGED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

_INFO = {
    "digits": {
        "input_shape": (8, 8, 1),
        "num_classes": 10,
        "train_size": 1437,
        "test_size": 360,
        "max_value": 16,
        "class_names": tuple(str(i) for i in range(10)),
        "description": (
            "UCI ML hand-written digits (optdigits test set, as in "
            "sklearn.datasets.load_digits), 8x8 pixels 0..16; stratified "
            "80/20 split with seed 0, shipped in the package."
        ),
    },
    "mnist": {
        "input_shape": (28, 28, 1),
        "num_classes": 10,
        "train_size": 60000,
        "test_size": 10000,
        "max_value": 255,
        "class_names": tuple(str(i) for i in range(10)),
        "description": "MNIST hand-written digits, official 60000/10000 split.",
    },
    "fashion_mnist": {
        "input_shape": (28, 28, 1),
        "num_classes": 10,
        "train_size": 60000,
        "test_size": 10000,
        "max_value": 255,
        "class_names": (
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
        "description": "Fashion-MNIST (Zalando), official 60000/10000 split.",
    },
}


def available():
    """Names accepted by `load` and `info`.

    Returns:
        A tuple of dataset names: ``("digits", "mnist", "fashion_mnist")``.

    Example:
        >>> available()
        ('digits', 'mnist', 'fashion_mnist')
    """
    return tuple(_INFO)


def info(name):
    """Describes a dataset without loading it.

    Args:
        name: one of `available()`.

    Returns:
        A new dict with ``input_shape`` (H, W, 1), ``num_classes``,
        ``train_size``, ``test_size``, ``max_value`` (the raw pixel value that
        maps to 1.0), ``class_names`` and ``description``.

    Raises:
        ValueError: for an unknown name.

    Example:
        >>> info("digits")["input_shape"]
        (8, 8, 1)
    """
    _check_name(name)
    return dict(_INFO[name])


def load(name, data_dir=None):
    """Loads a dataset as normalized, channels-last arrays.

    ``"digits"`` is always read from the copy shipped in the package
    (``data_dir`` is ignored). ``"mnist"`` and ``"fashion_mnist"`` are read from
    ``<name>.npz`` (keys ``x_train``, ``y_train``, ``x_test``, ``y_test``, uint8,
    the ``keras.datasets`` layout saved with ``numpy.savez``) in ``data_dir`` if
    given, else in the folder named by ``$TFCOMPRESS_DATA_DIR`` if set; when
    neither is given they are downloaded with ``keras.datasets``.

    Args:
        name: one of `available()`.
        data_dir: optional folder holding ``<name>.npz``. When given (or when
            ``$TFCOMPRESS_DATA_DIR`` is set) the file must be there: nothing is
            downloaded.

    Returns:
        ``((x_train, y_train), (x_test, y_test))`` where ``x`` is float32 in
        [0, 1] with shape (N, H, W, 1) and ``y`` is int32 with shape (N,).

    Raises:
        ValueError: for an unknown name, or a file with missing keys, wrong
            shapes, dtypes or values.
        FileNotFoundError: when ``data_dir`` / ``$TFCOMPRESS_DATA_DIR`` is set
            but holds no ``<name>.npz``.
        RuntimeError: when no data directory is set and the Keras download
            fails (the original error is chained).

    Example:
        >>> (x_train, y_train), (x_test, y_test) = load("digits")
        >>> x_train.shape, x_test.shape
        ((1437, 8, 8, 1), (360, 8, 8, 1))
    """
    _check_name(name)
    if name == "digits":
        path = os.path.join(_PACKAGED, "digits.npz")
        return _normalize(name, _read_npz(path), path)

    if data_dir is not None:
        folder, source = os.fspath(data_dir), "data_dir"
    elif os.environ.get(ENV_VAR):
        folder, source = os.environ[ENV_VAR], f"${ENV_VAR}"
    else:
        return _normalize(name, _download(name), f"keras.datasets.{name}")

    path = os.path.abspath(os.path.join(folder, f"{name}.npz"))
    if not os.path.isfile(path):
        missing = "" if os.path.isdir(folder) else " (that folder does not exist)"
        raise FileNotFoundError(
            f"No {name!r} data at {path}{missing}; it was looked for there "
            f"because {source}={folder!r}. To fix: save the arrays of "
            f"keras.datasets.{name}.load_data() there with numpy.savez (keys "
            f"{', '.join(_KEYS)}), point {source} at a folder that holds "
            f"{name}.npz, or leave data_dir unset and unset {ENV_VAR} to let "
            "Keras download it."
        )
    return _normalize(name, _read_npz(path), path)


def random_shift(x, max_shift, seed=None):
    """Moves every image by its own random whole-pixel offset, filling with zeros.

    The augmentation used to train the MNIST LeNets of `benchmarks/` and
    `tools/compress.py`: image ``i`` is translated by (dy_i, dx_i), each drawn
    uniformly from ``{-max_shift, ..., max_shift}``; pixels moved in from outside
    are 0 (the background of these datasets)::

        out[i, r, c] = x[i, r - dy_i, c - dx_i]   (0 where that is outside the image)

    NumPy only, so scripts that must not import Keras 3 can load this module file.

    Args:
        x: array of images, shape (N, H, W, C).
        max_shift: largest offset in pixels along each axis, an integer in
            [0, min(H, W)); 0 returns an unchanged copy.
        seed: integer seed or a `numpy.random.Generator` (None: fresh entropy).

    Returns:
        A new array with the shape and dtype of ``x``.

    Raises:
        ValueError: for ``x`` that is not 4-D, or a ``max_shift`` that is not an
            integer in the allowed range.

    Example:
        >>> (x, y), _ = load("digits")
        >>> random_shift(x, 1, seed=0).shape
        (1437, 8, 8, 1)
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(
            f"`x` must be a 4-D array of images (N, H, W, C). Received: shape {x.shape}"
        )
    height, width = x.shape[1:3]
    if (
        isinstance(max_shift, bool)
        or not isinstance(max_shift, (int, np.integer))
        or not 0 <= max_shift < min(height, width)
    ):
        raise ValueError(
            f"`max_shift` must be an integer in [0, {min(height, width)}) for "
            f"{height}x{width} images. Received: max_shift={max_shift!r}"
        )
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    k = int(max_shift)
    if k == 0:
        return x.copy()
    padded = np.pad(x, ((0, 0), (k, k), (k, k), (0, 0)))
    # Offset (dy, dx) reads the window of the padded image starting at (k - dy, k - dx).
    dy = rng.integers(-k, k + 1, size=len(x))
    dx = rng.integers(-k, k + 1, size=len(x))
    out = np.empty_like(x)
    for oy in range(-k, k + 1):
        for ox in range(-k, k + 1):
            rows = np.flatnonzero((dy == oy) & (dx == ox))
            if rows.size:
                out[rows] = padded[rows, k - oy : k - oy + height, k - ox : k - ox + width]
    return out


def _check_name(name):
    if name not in _INFO:
        raise ValueError(
            f"Unknown dataset {name!r}. Allowed names: "
            f"{', '.join(repr(n) for n in _INFO)}."
        )


def _read_npz(path):
    bad = (OSError, EOFError, ValueError, zipfile.BadZipFile)
    try:
        data = np.load(path, allow_pickle=False)
    except bad as err:
        raise ValueError(f"{path} is not a readable .npz file: {err}") from err
    # A .npy file loads as one bare array, which has no keys at all.
    files = data.files if isinstance(data, np.lib.npyio.NpzFile) else []
    missing = [k for k in _KEYS if k not in files]
    if missing:
        if files:
            data.close()
        raise ValueError(
            f"{path} is not a valid dataset file: missing key(s) "
            f"{', '.join(missing)} (found: {', '.join(files) or 'none'}; "
            f"required: {', '.join(_KEYS)})."
        )
    with data:
        try:
            return {k: data[k] for k in _KEYS}
        except bad as err:
            raise ValueError(f"{path} has an unreadable array: {err}") from err


def _download(name):
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = getattr(
            keras.datasets, name
        ).load_data()
    except Exception as err:
        cache = os.path.join(
            os.path.expanduser(os.environ.get("KERAS_HOME", "~/.keras")),
            "datasets",
            "mnist.npz" if name == "mnist" else "fashion-mnist",
        )
        raise RuntimeError(
            f"Could not load {name!r}. Places looked: "
            f"(1) data_dir: not given; "
            f"(2) ${ENV_VAR}: not set; "
            f"(3) Keras cache {cache}: keras.datasets.{name}.load_data() "
            f"failed to download ({type(err).__name__}: {err}). "
            f"To fix: put {name}.npz (keys {', '.join(_KEYS)}, the arrays of "
            f"keras.datasets.{name}.load_data() saved with numpy.savez) in a "
            f"folder and set {ENV_VAR} to it (or pass data_dir=)."
        ) from err
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _normalize(name, arrays, origin):
    spec = _INFO[name]
    height, width, _ = spec["input_shape"]
    max_value = spec["max_value"]
    out = []
    for split in ("train", "test"):
        x = np.asarray(arrays[f"x_{split}"])
        y = np.asarray(arrays[f"y_{split}"])
        n = x.shape[0] if x.ndim else 0
        problem = None
        if x.ndim != 3 or x.shape[1:] != (height, width) or n == 0:
            problem = (
                f"x_{split} has shape {x.shape}, expected (N>0, {height}, {width})"
            )
        elif y.shape != (n,):
            problem = f"y_{split} has shape {y.shape}, expected ({n},) as x_{split}"
        elif not np.issubdtype(x.dtype, np.integer):
            problem = f"x_{split} has dtype {x.dtype}, expected integer pixels (uint8)"
        elif x.min() < 0 or x.max() > max_value:
            problem = (
                f"x_{split} values span [{x.min()}, {x.max()}], "
                f"expected [0, {max_value}]"
            )
        elif not np.issubdtype(y.dtype, np.integer):
            problem = f"y_{split} has dtype {y.dtype}, expected integer labels"
        elif y.min() < 0 or y.max() >= spec["num_classes"]:
            problem = (
                f"y_{split} values span [{y.min()}, {y.max()}], "
                f"expected [0, {spec['num_classes'] - 1}]"
            )
        if problem:
            raise ValueError(f"Invalid {name!r} data in {origin}: {problem}.")
        x = (x.astype(np.float32) / np.float32(max_value))[..., np.newaxis]
        out.append((x, y.astype(np.int32)))
    return tuple(out)
