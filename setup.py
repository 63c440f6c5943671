"""tfcompress: compact layers, pruning, weight sharing, quantization and verified
integer-only TFLite export for Keras 3."""

from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as readme:
    LONG_DESCRIPTION = readme.read()

setup(
    name="tfcompress",
    version="0.2.0",
    description=(
        "Make Keras 3 models small and fast for phones and microcontrollers, "
        "and prove the exported TFLite file computes what Keras computed."
    ),
    long_description=LONG_DESCRIPTION,
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # The command-line tools (tools/) ship as the package tfcompress_tools, run by the
    # `tfcompress` console script: `tfcompress compress|evaluate|benchmark|inspect|sensitivity|deploy`.
    packages=find_packages(include=["tfcompress", "tfcompress.*"]) + ["tfcompress_tools"],
    package_dir={"tfcompress_tools": "tools"},
    entry_points={"console_scripts": ["tfcompress = tfcompress_tools.__main__:main"]},
    package_data={"tfcompress": ["data/*.npz", "data/README.md"]},
    install_requires=[
        "tensorflow>=2.16",  # tested with 2.21
        "keras>=3",
        "numpy",
        "absl-py",
        "ai-edge-litert",
        "matplotlib",
        "tensorly",  # CP / Tucker decompositions (tfcompress.decomposition), NumPy backend
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist", "hypothesis", "ruff"],
        # TensorFlow Lite Micro from Python (tfcompress.export.micro, tools/deploy.py).
        "micro": ["tflite-micro"],
        # Comparison runs only: tfmot/tf_keras run in a separate process with
        # TF_USE_LEGACY_KERAS=1; the library never imports them.
        "bench": ["tensorflow-model-optimization==0.8.1", "tf-keras>=2.16"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
