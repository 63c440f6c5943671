"""tfcompress.distribute.fit: pruning, clustering and QAT under tf.distribute.

The reference of every check is single-device `model.fit` (Keras' own loop, no
strategy) on the same global batches from the same weights (tests/distribute_scripts/
cases.py). Under a MirroredStrategy over two logical CPUs and under a
MultiWorkerMirroredStrategy of two worker processes on 127.0.0.1 (subprocesses:
logical devices and the strategy must exist before TensorFlow initialises), the
weights, pruning masks, BatchNorm statistics and QAT ranges after training must equal
the reference to float tolerance, and be the same on every replica and worker.
Keras 3.15.1's own `fit` fails under MultiWorkerMirroredStrategy (keras #20585,
tensorflow #72388), which is why `distribute.fit` runs its own loop there.
"""

import json
import os
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcompress import distribute

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "tests", "distribute_scripts")
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

import cases

EQUAL_CASES = ("prune", "cluster", "qat")  # must equal single-device training
ATOL = 1e-5


def _keras_fit(model, dataset, **kwargs):
    return model.fit(dataset, shuffle=False, **kwargs)


@pytest.fixture(scope="module")
def references():
    """{case: snapshot} of single-device `model.fit` (no strategy)."""
    return {case: cases.snapshot(*cases.train(case, _keras_fit)) for case in cases.CASES}


def _env():
    # gRPC between the workers must not go through a proxy.
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    return env


def _assert_equal_runs(run, reference, case, atol=ATOL):
    names = list(reference["names"])
    assert list(run["names"]) == names, case
    for i, name in enumerate(names):
        key = f"w{i:02d}"
        np.testing.assert_allclose(
            run[key].astype(np.float64), reference[key].astype(np.float64), rtol=0, atol=atol,
            err_msg=f"{case}: {name}",
        )
    for key in reference:
        if key.startswith("history_"):
            np.testing.assert_allclose(run[key], reference[key], rtol=1e-5, atol=atol,
                                       err_msg=f"{case}: {key}")


def _weight(snapshot, suffix):
    """The weight whose path ends with `suffix` (exactly one)."""
    names = list(snapshot["names"])
    found = [i for i, name in enumerate(names) if name.endswith(suffix)]
    assert len(found) == 1, (suffix, names)
    return snapshot[f"w{found[0]:02d}"]


def _check_the_runs_changed_state(snapshots):
    """The compared state is not trivial: masks pruned during the run, ranges moved."""
    prune = snapshots["prune"]
    for layer in ("fc1", "fc2"):
        assert _weight(prune, f"prune_low_magnitude_{layer}/mask").mean() == pytest.approx(0.25, abs=0.02)
        assert _weight(prune, f"prune_low_magnitude_{layer}/pruning_step") == 5  # 6 steps
    qat = snapshots["qat"]
    assert _weight(qat, "quant_input/initialized") == 1.0
    assert _weight(qat, "quant_input/range_min") < -1.0 < 1.0 < _weight(qat, "quant_input/range_max")


# -- in-process: the own loop on one replica, and delegation to model.fit --------------


@pytest.mark.parametrize("where", ["default", "mirrored_one_device"])
def test_fit_equals_keras_fit_on_one_device(where, references):
    """Under the default strategy `fit` calls `model.fit`; under a one-device
    MirroredStrategy it runs its own loop: both must equal Keras' `fit`, callbacks
    (UpdatePruningStep), regularizer loss, metrics and steps_per_epoch continuation
    included."""
    if where == "default":
        strategy = None
        assert not distribute.uses_own_loop(tf.distribute.get_strategy())
    else:
        strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
        assert distribute.uses_own_loop(strategy)
    for case in cases.CASES:
        model, history = cases.train(case, distribute.fit, strategy)
        run = cases.snapshot(model, history)
        assert set(history) == {"loss", "accuracy"}
        assert len(history["loss"]) == cases.EPOCHS[case]
        _assert_equal_runs(run, references[case], case)
    _check_the_runs_changed_state(references)


class _Recorder(keras.callbacks.Callback):
    """Records every hook call with its index and logs; stops at a chosen batch."""

    def __init__(self, stop_at=None):
        super().__init__()
        self.events = []
        self.stop_at = stop_at

    def _record(self, hook, index=None, logs=None):
        logs = {k: round(float(v), 5) for k, v in sorted((logs or {}).items())}
        self.events.append((hook, index, logs))

    def on_train_begin(self, logs=None):
        self._record("train_begin", None, logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._record("epoch_begin", epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        self._record("batch_begin", batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self._record("batch_end", batch, logs)
        if self.stop_at is not None and len([e for e in self.events if e[0] == "batch_end"]) == self.stop_at:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self._record("epoch_end", epoch, logs)

    def on_train_end(self, logs=None):
        self._record("train_end", None, logs)


@pytest.mark.parametrize("stop_at", [None, 4])
def test_own_loop_calls_callbacks_like_keras_fit(stop_at):
    """Same hooks, indices and logs (loss, accuracy) as Keras' `fit`, in the same
    order; `model.stop_training` set by a callback ends training at that batch; the
    result is the model's `keras.callbacks.History`."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    runs = {}
    for name, fit, scope in (("keras", _keras_fit, None),
                             ("own", distribute.fit, strategy.scope())):
        recorder = _Recorder(stop_at)
        with scope or tf.distribute.get_strategy().scope():
            model = cases.build("prune")
        history = fit(model, cases.dataset("prune"), epochs=3, callbacks=[recorder], verbose=0)
        assert isinstance(history, keras.callbacks.History)
        assert history is model.history
        runs[name] = (recorder.events, history.history)
    assert runs["own"][0] == runs["keras"][0]
    assert runs["own"][1].keys() == runs["keras"][1].keys()
    for key in runs["keras"][1]:
        np.testing.assert_allclose(runs["own"][1][key], runs["keras"][1][key], rtol=1e-5)
    events = runs["own"][0]
    expected_batches = 9 if stop_at is None else stop_at
    assert len([e for e in events if e[0] == "batch_end"]) == expected_batches
    assert events[0][0] == "train_begin" and events[-1][0] == "train_end"


def test_verbose_prints_a_progress_bar(capsys):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = cases.build("prune")
    distribute.fit(model, cases.dataset("prune"), epochs=2, verbose=0)
    assert capsys.readouterr().out == ""
    distribute.fit(model, cases.dataset("prune"), epochs=2, verbose=1)
    out = capsys.readouterr().out
    assert "Epoch 1/2" in out and "Epoch 2/2" in out and "3/3" in out and "loss:" in out


def test_replica_state_variables_of_a_qat_model():
    """What is averaged over the replicas: float state with aggregation "none" (QAT
    ranges, BatchNorm statistics), not the trainable weights, not integer state."""
    model = cases.build("qat")
    paths = {v.path for v in distribute.replica_state_variables(model)}
    assert {"quant_input/range_min", "quant_input/range_max", "quant_conv/bn/moving_mean",
            "quant_conv/bn/moving_variance"} <= paths
    assert not paths & {v.path for v in model.trainable_variables}
    pruned = cases.build("prune")
    paths = {v.path for v in distribute.replica_state_variables(pruned)}
    assert paths == {"prune_low_magnitude_fc1/mask", "prune_low_magnitude_fc2/mask"}


# -- bad arguments ---------------------------------------------------------------------


def _compiled():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile("sgd", "mse")
    return model


def _data():
    x = np.zeros((8, 3), "float32")
    return tf.data.Dataset.from_tensor_slices((x, np.zeros((8, 2), "float32"))).batch(4)


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 0}, r"`epochs` must be an integer >= 1\. Received: epochs=0"),
    ({"epochs": 1.5}, r"`epochs` must be an integer >= 1\. Received: epochs=1\.5"),
    ({"epochs": True}, r"Received: epochs=True"),
    ({"steps_per_epoch": 0},
     r"`steps_per_epoch` must be None .* or an integer >= 1\. Received: steps_per_epoch=0"),
    ({"callbacks": ["stop"]},
     (r"`callbacks` must be a list of keras\.callbacks\.Callback\. Received entries that "
      r"are not: 'stop' \(str\)")),
    ({"callbacks": keras.callbacks.History()},
     r"`callbacks` must be a list of keras\.callbacks\.Callback\. Received: callbacks=<"),
    ({"verbose": 3}, r"`verbose` must be 0, 1, 2 or 'auto'\. Received: verbose=3"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        distribute.fit(_compiled(), _data(), **kwargs)


def test_uncompiled_model_is_refused():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs), name="raw")
    with pytest.raises(ValueError, match=r"`model` must be compiled before training: call "
                       r"model\.compile\(optimizer, loss, metrics\) inside strategy\.scope\(\)\. "
                       r"Received: model 'raw', which is not compiled"):
        distribute.fit(model, _data())
    with pytest.raises(ValueError, match=r"`model` must be a keras\.Model\. Received: model="
                       r"'model' \(of type str\)"):
        distribute.fit("model", _data())


def test_bad_datasets_are_refused():
    with pytest.raises(ValueError, match=r"`dataset` must be a tf\.data\.Dataset of global "
                       r"batches .* Received: dataset of type tuple"):
        distribute.fit(_compiled(), (np.zeros((4, 3)), np.zeros((4, 2))))
    with pytest.raises(ValueError, match=r"The dataset repeats forever: give `steps_per_epoch`"
                       r" .* Received: steps_per_epoch=None"):
        distribute.fit(_compiled(), _data().repeat())


def test_optimizer_made_outside_the_scope_is_refused():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        inputs = keras.Input((3,))
        model = keras.Model(inputs, keras.layers.Dense(2)(inputs), name="scoped")
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match=r"The optimizer of model 'scoped' was made outside "
                       r"the scope of its strategy \(MirroredStrategy\): compile the model "
                       r"inside strategy\.scope\(\)"):
        distribute.fit(model, _data())


# -- subprocesses: two replicas, two workers -------------------------------------------
# Marked slow as the repository's other subprocess tests: 13-15 s each on an idle
# 2-core machine, 22-35 s while other jobs run.


@pytest.mark.slow
def test_mirrored_strategy_two_cpus_equals_single_device(tmp_path, references):
    """MirroredStrategy over two logical CPUs: prune / cluster / QAT weights, masks,
    BatchNorm statistics and ranges equal single-device training; every variable's
    two replica copies are identical, also where the replicas' batch statistics
    differ (qat_split)."""
    result = subprocess.run(
        [sys.executable, os.path.join(SCRIPTS, "mirrored.py"), str(tmp_path)],
        capture_output=True, text=True, env=_env(), timeout=240, check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"replicas": 2}
    runs = cases.load(tmp_path / "mirrored.npz")
    for case in cases.CASES:
        assert set(runs[case]["replicas"]) == {2}, case
        worst = runs[case]["replica_diff"].max()
        assert worst == 0.0, f"{case}: replica copies differ by {worst}"
    for case in EQUAL_CASES:
        _assert_equal_runs(runs[case], references[case], case)
    _check_the_runs_changed_state(runs)
    # Each replica's statistics are of its half of the batch: not the global ones.
    split_range = _weight(runs["qat_split"], "quant_fc/logits_quantizer/range_max")
    assert abs(split_range - _weight(references["qat_split"], "quant_fc/logits_quantizer/range_max")) > 1e-3


def _free_ports(count):
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _run_workers(out_dir, timeout):
    """Runs worker.py as two MultiWorkerMirroredStrategy workers; returns their logs."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    logs = [out_dir / f"worker{i}.log" for i in range(2)]
    procs = []
    try:
        for i, log in enumerate(logs):
            env = _env()
            env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
            with open(log, "w") as handle:
                procs.append(subprocess.Popen(
                    [sys.executable, os.path.join(SCRIPTS, "worker.py"), str(out_dir)],
                    env=env, stdout=handle, stderr=subprocess.STDOUT,
                ))
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in procs):
            failed = [i for i, p in enumerate(procs) if p.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for p in procs:  # the other worker waits forever for a dead peer
            if p.poll() is None:
                p.kill()
                p.wait()
    texts = [log.read_text() for log in logs]
    codes = [p.returncode for p in procs]
    assert codes == [0, 0], f"worker exit codes {codes} (timeout {timeout} s):\n" + "\n".join(
        f"--- worker {i}:\n{text[-4000:]}" for i, text in enumerate(texts)
    )
    return texts


@pytest.mark.slow
def test_multi_worker_two_processes_equal_each_other_and_single_device(tmp_path, references):
    """Two MultiWorkerMirroredStrategy workers (subprocesses, TF_CONFIG on free
    127.0.0.1 ports): after training, every weight, pruning mask, pruning step, QAT
    range and BatchNorm statistic is bit-identical on both workers, and equals
    single-device training for prune / cluster / qat; only worker 0 prints."""
    texts = _run_workers(tmp_path, timeout=240)
    workers = [cases.load(tmp_path / f"worker{i}.npz") for i in range(2)]
    assert int(workers[0]["info"]["replicas"]) == 2
    for case in cases.CASES:
        first, second = workers[0][case], workers[1][case]
        assert first.keys() == second.keys()
        for key in first:
            assert np.array_equal(first[key], second[key]), f"{case}: {key} differs between workers"
    for case in EQUAL_CASES:
        _assert_equal_runs(workers[0][case], references[case], case)
    _check_the_runs_changed_state(workers[0])
    split_range = _weight(workers[0]["qat_split"], "quant_fc/logits_quantizer/range_max")
    assert abs(split_range - _weight(references["qat_split"], "quant_fc/logits_quantizer/range_max")) > 1e-3
    assert "Epoch 1/2" in texts[0] and "Epoch 2/2" in texts[0]
    assert "Epoch" not in texts[1]
