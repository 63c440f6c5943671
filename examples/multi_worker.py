"""Multi-worker pruning: two local workers train one pruned model with tf.distribute.

Run: python examples/multi_worker.py

The script starts itself twice more as the two workers of a
`tf.distribute.MultiWorkerMirroredStrategy` (subprocesses; TF_CONFIG names two free
ports on 127.0.0.1). Every worker builds the strategy before any other TensorFlow
op, then trains the same pruned Dense model on the UCI 8x8 digits shipped with the
package (global batches of 64, each worker computes on 32 of them; gradients are
all-reduced) with `tfcompress.distribute.fit`, which works where Keras 3's
`model.fit` fails under this strategy (keras #20585, tensorflow #72388). Worker 0
prints one line per epoch; at the end the launcher prints each worker's final loss,
sparsity and test accuracy, which are the same on both: one model, trained
in lockstep. About 20 s on 2 CPU cores.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

EPOCHS = 8
GLOBAL_BATCH = 64
TIMEOUT_S = 300


def worker(index, out_dir):
    """One worker: TF_CONFIG is set by the launcher; the strategy comes first."""
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()

    import keras
    import numpy as np

    import tfcompress
    from tfcompress import datasets, distribute
    from tfcompress.pruning import PolynomialDecay, UpdatePruningStep, sparsity_report

    keras.utils.set_random_seed(0)  # the same initial weights on both workers
    (x, y), (x_test, y_test) = datasets.load("digits")
    steps = len(x) // GLOBAL_BATCH * EPOCHS
    data = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x), seed=0)  # the same order on every worker, each takes its share
        .batch(GLOBAL_BATCH, drop_remainder=True)
    )
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    data = data.with_options(options)

    with strategy.scope():
        inputs = keras.Input((8, 8, 1))
        h = keras.layers.Flatten()(inputs)
        h = keras.layers.Dense(64, activation="relu", name="fc1")(h)
        outputs = keras.layers.Dense(10, activation="softmax", name="predictions")(h)
        model = keras.Model(inputs, outputs)
        schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=steps * 3 // 4, frequency=10)
        pruned = tfcompress.prune_low_magnitude(model, schedule)
        pruned.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy",
                       metrics=["accuracy"])

    history = distribute.fit(pruned, data, epochs=EPOCHS, callbacks=[UpdatePruningStep()],
                             verbose=2)
    probabilities = np.asarray(pruned(x_test, training=False))
    result = {
        "worker": index,
        "replicas": strategy.num_replicas_in_sync,
        "loss": history.history["loss"][-1],
        "test_accuracy": float(np.mean(probabilities.argmax(-1) == y_test)),
        "sparsity": {f"{r['layer']}/{r['weight']}": r["sparsity"] for r in sparsity_report(pruned)},
    }
    with open(os.path.join(out_dir, f"worker{index}.json"), "w") as handle:
        json.dump(result, handle)


def free_ports(count):
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def launch():
    """Starts the two workers, waits (at most TIMEOUT_S), prints their results."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    print(f"cluster: {cluster['worker']}")
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as out_dir:
        procs, logs = [], []
        try:
            for index in range(2):
                env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
                env["TF_CONFIG"] = json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": index}}
                )
                env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
                log = open(os.path.join(out_dir, f"worker{index}.log"), "w")  # noqa: SIM115
                logs.append(log)
                procs.append(subprocess.Popen(
                    [sys.executable, os.path.abspath(__file__), "--worker", str(index), out_dir],
                    env=env, stdout=None if index == 0 else log, stderr=log,
                ))
            deadline = start + TIMEOUT_S
            while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                if any(p.poll() not in (None, 0) for p in procs):
                    break  # the other worker would wait forever for its peer
                time.sleep(0.2)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
            for log in logs:
                log.close()
        codes = [p.returncode for p in procs]
        if codes != [0, 0]:
            for index in range(2):
                with open(os.path.join(out_dir, f"worker{index}.log")) as handle:
                    print(f"--- worker {index} (exit code {codes[index]}):\n{handle.read()[-3000:]}")
            sys.exit(1)
        results = []
        for index in range(2):
            with open(os.path.join(out_dir, f"worker{index}.json")) as handle:
                results.append(json.load(handle))
    print(f"\ntwo workers, {results[0]['replicas']} replicas, {time.monotonic() - start:.0f} s")
    for r in results:
        sparsity = ", ".join(f"{name} {value:.2f}" for name, value in r["sparsity"].items())
        print(f"worker {r['worker']}: final loss {r['loss']:.4f}, test accuracy "
              f"{r['test_accuracy']:.3f}, sparsity {sparsity}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(int(sys.argv[2]), sys.argv[3])
    else:
        launch()
