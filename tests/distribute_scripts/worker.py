"""A MultiWorkerMirroredStrategy worker: trains every case of cases.py with
`tfcompress.distribute.fit` and saves the weights to <out_dir>/worker<index>.npz.

Run by tests/test_distribute.py as `python worker.py OUT_DIR` with TF_CONFIG set
(two workers on 127.0.0.1). The strategy is created before any other TF op.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

strategy = tf.distribute.MultiWorkerMirroredStrategy()

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cases

from tfcompress import distribute


def main():
    out_dir = sys.argv[1]
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    runs = {}
    for case in cases.CASES:
        # A progress bar for the first case: only worker 0 may print it.
        verbose = 1 if case == cases.CASES[0] else 0
        model, history = cases.train(case, distribute.fit, strategy, verbose=verbose)
        runs[case] = cases.snapshot(model, history)
    runs["info"] = {"replicas": np.int64(strategy.num_replicas_in_sync)}
    path = os.path.join(out_dir, f"worker{index}.npz")
    cases.save(path + ".tmp.npz", runs)
    os.replace(path + ".tmp.npz", path)
    print(json.dumps({"worker": index, "replicas": strategy.num_replicas_in_sync}), flush=True)


if __name__ == "__main__":
    main()
