"""Shared pytest setup: quiet TensorFlow, make `numpy_reference` importable, seeds."""

import os
import sys

import numpy as np
import pytest

# Must be set before anything imports TensorFlow (numpy and pytest do not).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:  # `import numpy_reference` under any --import-mode
    sys.path.insert(0, _TESTS_DIR)


def seed_everything(seed=0):
    """Seeds Python's, NumPy's and TensorFlow's global generators (via Keras)."""
    import keras

    keras.utils.set_random_seed(seed)


@pytest.fixture
def rng():
    """A NumPy generator with a fixed seed; the global generators seeded too."""
    seed_everything(0)
    return np.random.default_rng(0)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: a long test (exports, training runs); `pytest -m 'not slow'` skips it"
    )
