"""MirroredStrategy over two logical CPUs: trains every case of cases.py with
`tfcompress.distribute.fit` and saves the weights to <out_dir>/mirrored.npz.

Run by tests/test_distribute.py as `python mirrored.py OUT_DIR`. The two logical
devices are configured before TensorFlow initialises. Besides the weights (the
first replica's copies) it saves, per weight, the largest difference between the
two replicas' copies ("replica_diff"), which must be 0.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cases

from tfcompress import distribute


def replica_diff(variable):
    """max |copy on replica 0 - copy on replica 1| of a mirrored variable."""
    copies = [np.asarray(c.numpy(), np.float64) for c in variable.value.values]
    return max(float(np.abs(c - copies[0]).max()) if c.size else 0.0 for c in copies)


def main():
    runs = {}
    for case in cases.CASES:
        model, history = cases.train(case, distribute.fit, strategy)
        snap = cases.snapshot(model, history)
        snap["replica_diff"] = np.array([replica_diff(w) for w in model.weights])
        snap["replicas"] = np.array([len(w.value.values) for w in model.weights])
        runs[case] = snap
    path = os.path.join(sys.argv[1], "mirrored.npz")
    cases.save(path, runs)
    print(json.dumps({"replicas": strategy.num_replicas_in_sync}), flush=True)


if __name__ == "__main__":
    main()
