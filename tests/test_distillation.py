"""tfcompress.distillation against NumPy: soft targets, hints, ensembles, mutual learning,
data distillation, and compressed students trained by keras.distillation.Distiller."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcompress import export, prune_low_magnitude, quantize_model, strip_pruning
from tfcompress.distillation import (
    Distiller,
    EnsembleTeacher,
    HintDistillation,
    LogitsDistillation,
    MutualLearning,
    data_distillation,
    fitnets_stage,
    outputs_probabilities,
)
from tfcompress.pruning import UpdatePruningStep


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _mlp(hidden, name, activation="softmax", classes=3, features=6, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((features,), name="x")
    h = keras.layers.Dense(hidden, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(classes, activation=activation, name="out")(h)
    return keras.Model(inputs, outputs, name=name)


def _cnn(filters, name, activation="softmax", size=8, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 1), name="image")
    x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(4, activation=activation, name="out")(x)
    return keras.Model(inputs, outputs, name=name)


RNG = np.random.default_rng(0)
T_LOGITS = RNG.normal(size=(5, 4)).astype("float32") * 3
S_LOGITS = RNG.normal(size=(5, 4)).astype("float32") * 3


def _kl_reference(t, s, temperature):
    p_t, p_s = _softmax(t / temperature), _softmax(s / temperature)
    return temperature ** 2 * np.mean(np.sum(p_t * np.log(p_t / p_s), -1))


# ----------------------------------------------------------------- LogitsDistillation


@pytest.mark.parametrize("loss", ["kl_divergence", "kld", "KLD", "kullback_leibler_divergence",
                                  keras.losses.kl_divergence, keras.losses.KLDivergence()])
@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_logits_distillation_kl_matches_numpy_for_every_spelling(loss, temperature):
    value = float(LogitsDistillation(temperature, loss).compute_loss(T_LOGITS, S_LOGITS))
    np.testing.assert_allclose(value, _kl_reference(T_LOGITS, S_LOGITS, temperature),
                               rtol=1e-5)


def test_keras_default_logits_distillation_is_what_ours_corrects():
    # Keras 3.15: the string resolves to a function, so no softmax and no T^2.
    ours = float(LogitsDistillation(4.0).compute_loss(T_LOGITS, S_LOGITS))
    theirs = float(keras.distillation.LogitsDistillation(4.0).compute_loss(T_LOGITS, S_LOGITS))
    reference = _kl_reference(T_LOGITS, S_LOGITS, 4.0)
    np.testing.assert_allclose(ours, reference, rtol=1e-5)
    right = float(keras.distillation.LogitsDistillation(
        4.0, keras.losses.KLDivergence()).compute_loss(T_LOGITS, S_LOGITS))
    np.testing.assert_allclose(right, reference, rtol=1e-5)
    if abs(theirs - reference) < 1e-4 * abs(reference):  # fixed upstream: our note is stale
        pytest.skip("keras.distillation's default KL is right in this Keras version")


@pytest.mark.parametrize("loss", ["categorical_crossentropy", keras.losses.categorical_crossentropy,
                                  keras.losses.CategoricalCrossentropy()])
def test_logits_distillation_crossentropy_is_soft_target_crossentropy_times_t2(loss):
    temperature = 3.0
    p_t, p_s = _softmax(T_LOGITS / temperature), _softmax(S_LOGITS / temperature)
    reference = temperature ** 2 * np.mean(-np.sum(p_t * np.log(p_s), -1))
    value = float(LogitsDistillation(temperature, loss).compute_loss(T_LOGITS, S_LOGITS))
    np.testing.assert_allclose(value, reference, rtol=1e-5)


@pytest.mark.parametrize("loss", ["mse", keras.losses.MeanSquaredError()])
def test_logits_distillation_mse_matches_raw_logits(loss):
    value = float(LogitsDistillation(7.0, loss).compute_loss(T_LOGITS, S_LOGITS))
    np.testing.assert_allclose(value, np.mean((T_LOGITS - S_LOGITS) ** 2), rtol=1e-5)


def test_logits_distillation_of_softmax_models_uses_the_logits_they_came_from():
    teacher, student = _mlp(8, "teacher"), _mlp(4, "student", seed=1)
    loss = LogitsDistillation(5.0)
    loss.validate_model_compatibility(teacher, student)
    value = float(loss.compute_loss(_softmax(T_LOGITS), _softmax(S_LOGITS)))
    np.testing.assert_allclose(value, _kl_reference(T_LOGITS, S_LOGITS, 5.0), rtol=1e-4)
    assert outputs_probabilities(teacher) == [True]
    assert outputs_probabilities(_mlp(4, "logits", activation=None)) == [False]


def test_logits_distillation_multi_output_sums_and_skips_none():
    loss = LogitsDistillation(2.0, loss=["kl_divergence", None])
    value = float(loss.compute_loss([T_LOGITS, T_LOGITS], [S_LOGITS, T_LOGITS * 0]))
    np.testing.assert_allclose(value, _kl_reference(T_LOGITS, S_LOGITS, 2.0), rtol=1e-5)


@pytest.mark.parametrize("temperature", [0, -1.0, float("nan"), float("inf"), "4", True])
def test_logits_distillation_rejects_bad_temperatures(temperature):
    with pytest.raises(ValueError, match="temperature"):
        LogitsDistillation(temperature)


@pytest.mark.parametrize("loss, text", [
    ("sparse_categorical_crossentropy", "integer labels"),
    (keras.losses.SparseCategoricalCrossentropy(), "integer labels"),
    ("no_such_loss", "no_such_loss"),
    (3, "Received: loss=3"),
])
def test_logits_distillation_rejects_bad_losses(loss, text):
    with pytest.raises(ValueError, match=text):
        LogitsDistillation(2.0, loss)


def test_logits_distillation_config_round_trip():
    loss = LogitsDistillation(6.0, "categorical_crossentropy")
    again = LogitsDistillation.from_config(loss.get_config())
    assert again.temperature == 6.0
    np.testing.assert_allclose(float(again.compute_loss(T_LOGITS, S_LOGITS)),
                               float(loss.compute_loss(T_LOGITS, S_LOGITS)), rtol=1e-6)


# ----------------------------------------------------------------- hints


def test_hint_loss_equals_numpy_with_the_regressor_weights_dense():
    teacher, student = _mlp(10, "teacher"), _mlp(4, "student", seed=1)
    hint = HintDistillation("hidden", "hidden")
    hint.validate_model_compatibility(teacher, student)
    u = RNG.normal(size=(7, 10)).astype("float32")
    v = RNG.normal(size=(7, 4)).astype("float32")
    kernel, bias = [np.asarray(w) for w in hint.weights]
    assert kernel.shape == (4, 10)
    reference = np.mean((u - (v @ kernel + bias)) ** 2)
    np.testing.assert_allclose(float(hint.compute_loss(u, v)), reference, rtol=1e-5)


def test_hint_loss_equals_numpy_with_the_regressor_weights_conv():
    teacher, student = _cnn(12, "teacher"), _cnn(5, "student", seed=1)
    hint = HintDistillation("conv2", "conv2")
    hint.validate_model_compatibility(teacher, student)
    u = RNG.normal(size=(3, 4, 4, 12)).astype("float32")
    v = RNG.normal(size=(3, 4, 4, 5)).astype("float32")
    kernel, bias = [np.asarray(w) for w in hint.weights]
    assert kernel.shape == (1, 1, 5, 12)
    mapped = np.einsum("nhwc,cd->nhwd", v, kernel[0, 0]) + bias
    np.testing.assert_allclose(float(hint.compute_loss(u, v)), np.mean((u - mapped) ** 2),
                               rtol=1e-5)


def test_hint_regressor_resizes_when_spatial_sizes_differ():
    teacher, student = _cnn(12, "teacher"), _cnn(5, "student", seed=1)
    hint = HintDistillation("conv1", "conv2")  # 8x8x12 from 4x4x5
    hint.validate_model_compatibility(teacher, student)
    v = RNG.normal(size=(2, 4, 4, 5)).astype("float32")
    assert tuple(hint(v).shape) == (2, 8, 8, 12)


def test_hint_regressor_is_trained_with_the_student_and_not_saved_with_it(tmp_path):
    teacher, student = _cnn(12, "teacher"), _cnn(5, "student", seed=1)
    x = RNG.random((64, 8, 8, 1)).astype("float32")
    y = RNG.integers(0, 4, 64)
    hint = HintDistillation("conv2", "conv2")
    distiller = Distiller(teacher, student, [LogitsDistillation(4.0), hint], [1.0, 0.5],
                          student_loss_weight=0.2)
    names = [w.path for w in distiller.trainable_weights]
    assert any("regressor" in n for n in names)
    assert not any(w is t for w in distiller.trainable_weights for t in teacher.weights)
    before = [np.asarray(w).copy() for w in hint.weights]
    teacher_before = [np.asarray(w).copy() for w in teacher.weights]
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2),
                      loss="sparse_categorical_crossentropy")
    distiller.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert any(not np.allclose(a, np.asarray(b)) for a, b in zip(before, hint.weights))
    for a, b in zip(teacher_before, teacher.weights):
        np.testing.assert_array_equal(a, np.asarray(b))
    path = tmp_path / "student.keras"
    distiller.student.save(path)
    loaded = keras.saving.load_model(path)
    assert len(loaded.weights) == len(student.weights)
    assert not any("regressor" in w.path for w in loaded.weights)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), student.predict(x, verbose=0),
                               atol=1e-6)


def test_fitnets_stage_trains_only_up_to_the_guided_layer():
    teacher, student = _cnn(12, "teacher"), _cnn(5, "student", seed=1)
    x = RNG.random((64, 8, 8, 1)).astype("float32")
    conv1, out = [np.asarray(w).copy() for w in student.get_layer("conv1").weights], \
        [np.asarray(w).copy() for w in student.get_layer("out").weights]
    hint, history = fitnets_stage(teacher, student, "conv1", "conv1", x, epochs=3,
                                  batch_size=16, optimizer=keras.optimizers.Adam(1e-2),
                                  verbose=0)
    losses = history.history["distillation_loss"]
    assert losses[-1] < losses[0]
    assert any(not np.allclose(a, np.asarray(b))
               for a, b in zip(conv1, student.get_layer("conv1").weights))
    for a, b in zip(out, student.get_layer("out").weights):  # after the guided layer
        np.testing.assert_array_equal(a, np.asarray(b))
    # The trained hint loss is the NumPy mean square through its regressor.
    t_feat = keras.Model(teacher.inputs, teacher.get_layer("conv1").output).predict(x[:4], verbose=0)
    s_feat = keras.Model(student.inputs, student.get_layer("conv1").output).predict(x[:4], verbose=0)
    kernel, bias = [np.asarray(w) for w in hint.weights]
    mapped = np.einsum("nhwc,cd->nhwd", s_feat, kernel[0, 0]) + bias
    np.testing.assert_allclose(float(hint.compute_loss(t_feat, s_feat)),
                               np.mean((t_feat - mapped) ** 2), rtol=1e-4)


def test_hint_bad_inputs():
    teacher, student = _cnn(12, "teacher"), _cnn(5, "student", seed=1)
    with pytest.raises(ValueError, match="No layer named 'nope' in the teacher"):
        HintDistillation("nope", "conv1").validate_model_compatibility(teacher, student)
    with pytest.raises(ValueError, match="No layer named 'nope' in the student"):
        Distiller(teacher, student, HintDistillation("conv1", "nope"))
    with pytest.raises(ValueError, match="regressor=None needs equal feature shapes"):
        HintDistillation("conv1", "conv1", regressor=None).validate_model_compatibility(
            teacher, student)
    with pytest.raises(ValueError, match="regressor='auto' maps"):
        HintDistillation("conv1", "gap").validate_model_compatibility(teacher, student)
    with pytest.raises(ValueError, match="teacher_layer_name"):
        HintDistillation("", "conv1")
    with pytest.raises(ValueError, match="regressor"):
        HintDistillation("conv1", "conv1", regressor="conv")


def test_hint_config_round_trip():
    hint = HintDistillation("a", "b", regressor=None, loss="mae", name="h")
    again = HintDistillation.from_config(hint.get_config())
    assert (again.teacher_layer_name, again.student_layer_name, again.regressor,
            again.name) == ("a", "b", None, "h")


def test_teacher_and_student_with_different_shapes_are_refused():
    teacher = _mlp(8, "teacher")
    with pytest.raises(ValueError, match="input shapes"):
        Distiller(teacher, _mlp(8, "wide", features=7), LogitsDistillation(2))
    with pytest.raises(ValueError, match="output shapes"):
        fitnets_stage(teacher, _mlp(8, "more", classes=5), "hidden", "hidden",
                      np.zeros((4, 6), "float32"))


# ----------------------------------------------------------------- EnsembleTeacher


def test_ensemble_teacher_mean_logits_and_mean_probs(tmp_path):
    members = [_mlp(8, f"m{i}", activation=None, seed=i) for i in range(3)]
    x = RNG.normal(size=(9, 6)).astype("float32")
    logits = np.stack([m.predict(x, verbose=0) for m in members])
    teacher = EnsembleTeacher(members)
    assert not teacher.trainable and teacher.trainable_weights == []
    np.testing.assert_allclose(teacher.predict(x, verbose=0), logits.mean(0), atol=1e-5)
    probs = EnsembleTeacher(members, combine="mean_probs").predict(x, verbose=0)
    np.testing.assert_allclose(_softmax(probs), _softmax(logits).mean(0), atol=1e-5)
    # Members that end in softmax: their probabilities' logs are the logits.
    soft = [_mlp(8, f"s{i}", seed=i) for i in range(2)]
    p = np.stack([m.predict(x, verbose=0) for m in soft])
    mixed = EnsembleTeacher(soft, combine="mean_probs").predict(x, verbose=0)
    np.testing.assert_allclose(_softmax(mixed), p.mean(0), atol=1e-5)
    path = tmp_path / "ensemble.keras"
    teacher.save(path)
    np.testing.assert_allclose(keras.saving.load_model(path).predict(x, verbose=0),
                               logits.mean(0), atol=1e-5)


def test_ensemble_teacher_bad_inputs():
    with pytest.raises(ValueError, match="non-empty list"):
        EnsembleTeacher([])
    with pytest.raises(ValueError, match="combine"):
        EnsembleTeacher([_mlp(4, "a")], combine="vote")
    with pytest.raises(ValueError, match="takes inputs of shape"):
        EnsembleTeacher([_mlp(4, "a"), _mlp(4, "b", features=5)])
    with pytest.raises(ValueError, match="outputs shape"):
        EnsembleTeacher([_mlp(4, "a"), _mlp(4, "b", classes=5)])
    with pytest.raises(ValueError, match="models\\[1\\]"):
        EnsembleTeacher([_mlp(4, "a"), "b"])


# ----------------------------------------------------------------- MutualLearning


def _dml_reference(y, outputs, kl_weight):
    """Hand computation of each peer's L_k (probability outputs)."""
    out = []
    for k, p_k in enumerate(outputs):
        ce = np.mean(-np.log(p_k[np.arange(len(y)), y]))
        kls = [np.mean(np.sum(p_j * (np.log(p_j) - np.log(p_k)), -1))
               for j, p_j in enumerate(outputs) if j != k]
        out.append(ce + kl_weight * np.mean(kls))
    return out


def test_mutual_learning_per_peer_loss_matches_hand_computation():
    peers = [_mlp(8, f"peer{i}", seed=i) for i in range(3)]
    dml = MutualLearning(peers, kl_weight=0.7)
    dml.compile("sgd", "sparse_categorical_crossentropy")
    x = RNG.normal(size=(16, 6)).astype("float32")
    y = RNG.integers(0, 3, 16)
    outputs = [p.predict(x, verbose=0).astype(np.float64) for p in peers]
    reference = _dml_reference(y, outputs, 0.7)
    terms = dml._per_peer(y, [keras.ops.convert_to_tensor(o, "float32") for o in outputs])
    np.testing.assert_allclose([float(t[0]) for t in terms], reference, rtol=1e-4)
    total = float(dml.compute_loss(x, y))
    np.testing.assert_allclose(total, sum(reference), rtol=1e-4)


def test_mutual_learning_gradients_reach_each_peer_only_through_its_own_loss():
    peers = [_mlp(8, f"peer{i}", seed=i) for i in range(2)]
    dml = MutualLearning(peers, kl_weight=1.0)
    dml.compile("sgd", "sparse_categorical_crossentropy")
    x = RNG.normal(size=(16, 6)).astype("float32")
    y = RNG.integers(0, 3, 16)
    with tf.GradientTape() as tape:
        total = dml.compute_loss(x, y, dml(x, training=True))
    grads = tape.gradient(total, peers[0].trainable_weights)
    # Peer 0 alone: CE_0 + KL(p_1 || p_0) with p_1 a constant.
    p_1 = tf.constant(peers[1](x, training=True))
    with tf.GradientTape() as tape:
        p_0 = peers[0](x, training=True)
        ce = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, p_0))
        kl = tf.reduce_mean(tf.reduce_sum(p_1 * (tf.math.log(p_1) - tf.math.log(p_0)), -1))
        own = ce + kl
    expected = tape.gradient(own, peers[0].trainable_weights)
    for g, e in zip(grads, expected):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-4, atol=1e-6)


def test_mutual_learning_fit_reports_each_peer_and_trains_them(tmp_path):
    peers = [_cnn(6, f"peer{i}", seed=i) for i in range(2)]
    x = RNG.random((96, 8, 8, 1)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) * 4).astype(int).clip(0, 3)
    dml = MutualLearning(peers)
    dml.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", ["accuracy"])
    history = dml.fit(x, y, epochs=3, batch_size=32, verbose=0).history
    for key in ("loss", "peer0_loss", "peer1_loss", "peer0_kl", "peer1_accuracy"):
        assert key in history and len(history[key]) == 3, history.keys()
    assert history["loss"][-1] < history["loss"][0]
    trained_a, _ = dml.models
    assert trained_a is peers[0]
    trained_a.save(tmp_path / "peer.keras")
    assert len(keras.saving.load_model(tmp_path / "peer.keras").weights) == len(peers[0].weights)


def test_mutual_learning_bad_inputs():
    a = _mlp(4, "a")
    with pytest.raises(ValueError, match="at least two"):
        MutualLearning([])
    with pytest.raises(ValueError, match="at least two"):
        MutualLearning([a])
    with pytest.raises(ValueError, match="given twice"):
        MutualLearning([a, a])
    with pytest.raises(ValueError, match="same shapes"):
        MutualLearning([a, _mlp(4, "b", classes=5)])
    with pytest.raises(ValueError, match="kl_weight"):
        MutualLearning([a, _mlp(4, "c")], kl_weight=-1)


# ----------------------------------------------------------------- data distillation


def _np_transform(name, x, s=2):
    if name == "identity":
        return x
    if name == "flip_lr":
        return x[:, :, ::-1, :]
    if name == "flip_ud":
        return x[:, ::-1, :, :]
    out = np.zeros_like(x)
    out[:, s:, s:, :] = x[:, :-s, :-s, :]
    return out


@pytest.mark.parametrize("activation", ["softmax", None])
def test_data_distillation_targets_are_the_mean_over_transforms(activation):
    teacher = _cnn(6, "teacher", activation=activation)
    x = RNG.random((20, 8, 8, 1)).astype("float32")
    names = ("identity", "flip_lr", "flip_ud", "shift")
    _, q = data_distillation(teacher, x, transforms=names)
    preds = [teacher.predict(_np_transform(n, x), verbose=0) for n in names]
    if activation is None:
        preds = [_softmax(p.astype(np.float64)) for p in preds]
    np.testing.assert_allclose(q, np.mean(preds, axis=0), atol=1e-5)
    x_hard, hard = data_distillation(teacher, x, transforms=names, output="hard")
    np.testing.assert_array_equal(hard, np.mean(preds, axis=0).argmax(-1))
    np.testing.assert_array_equal(x_hard, x)
    cut = float(np.median(np.mean(preds, axis=0).max(-1)))
    x_kept, kept = data_distillation(teacher, x, transforms=names, min_confidence=cut)
    mask = np.mean(preds, axis=0).max(-1) >= cut
    np.testing.assert_array_equal(x_kept, x[mask])
    assert len(kept) == mask.sum()


def test_data_distillation_bad_inputs():
    teacher = _cnn(6, "teacher")
    x = RNG.random((4, 8, 8, 1)).astype("float32")
    with pytest.raises(ValueError, match="changed the input shape"):
        data_distillation(teacher, x, transforms=(lambda b: b[:, :4],))
    with pytest.raises(ValueError, match="Unknown transform 'rotate'"):
        data_distillation(teacher, x, transforms=("rotate",))
    with pytest.raises(ValueError, match="at least one transform"):
        data_distillation(teacher, x, transforms=())
    with pytest.raises(ValueError, match="output"):
        data_distillation(teacher, x, output="probs")
    with pytest.raises(ValueError, match="min_confidence"):
        data_distillation(teacher, x, min_confidence=1.5)
    with pytest.raises(ValueError, match="at least one example"):
        data_distillation(teacher, x[:0])
    with pytest.raises(ValueError, match="teacher"):
        data_distillation("model", x)


# ----------------------------------------------------------------- compressed students


def test_pruned_student_keeps_its_zeros_and_strips_alone():
    teacher = _cnn(12, "teacher")
    student = prune_low_magnitude(_cnn(8, "student", seed=1), pruning_schedule=None)
    x = RNG.random((64, 8, 8, 1)).astype("float32")
    y = RNG.integers(0, 4, 64)
    distiller = Distiller(teacher, student, LogitsDistillation(4.0), student_loss_weight=0.3)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2),
                      loss="sparse_categorical_crossentropy")
    distiller.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[UpdatePruningStep()])
    stripped = strip_pruning(student)
    kernel = np.asarray(stripped.get_layer("conv2").kernel)
    sparsity = float(np.mean(kernel == 0))
    assert sparsity >= 0.45, sparsity  # ConstantSparsity(0.5) by default
    assert len(stripped.weights) == len(_cnn(8, "plain").weights)


def test_qat_student_trained_by_distiller_exports_integer_only_with_parity():
    teacher = _cnn(12, "teacher")
    student = quantize_model(_cnn(8, "student", seed=1))
    x = RNG.random((128, 8, 8, 1)).astype("float32")
    y = RNG.integers(0, 4, 128)
    distiller = Distiller(teacher, student, LogitsDistillation(4.0), student_loss_weight=0.3)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss="sparse_categorical_crossentropy")
    distiller.fit(x, y, epochs=2, batch_size=32, verbose=0)
    report = export.verify(export.to_tflite(student, x), student, x)
    assert report["within_1_step"] >= 0.999, report


def test_clustered_student_keeps_its_codebook():
    from tfcompress import cluster_weights, strip_clustering

    teacher = _cnn(12, "teacher")
    student = cluster_weights(_cnn(8, "student", seed=1), 6)
    x = RNG.random((64, 8, 8, 1)).astype("float32")
    y = RNG.integers(0, 4, 64)
    distiller = Distiller(teacher, student, LogitsDistillation(4.0), student_loss_weight=0.3)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2),
                      loss="sparse_categorical_crossentropy")
    distiller.fit(x, y, epochs=2, batch_size=16, verbose=0)
    stripped = strip_clustering(student)
    kernel = np.asarray(stripped.get_layer("conv2").kernel)
    assert len(np.unique(kernel[kernel != 0])) <= 6


def test_compact_and_decomposed_students_export_integer_only_with_parity():
    from tfcompress.decomposition import decompose_model
    from tfcompress.layers import GhostConv

    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 1))
    h = GhostConv(8, name="ghost")(inputs)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(4, activation="softmax", name="out")(h)
    compact = keras.Model(inputs, outputs, name="ghost_student")
    teacher = _cnn(12, "teacher")
    x = RNG.random((128, 8, 8, 1)).astype("float32")
    y = RNG.integers(0, 4, 128)
    for student in (compact, decompose_model(compact, method="tucker2", rank=4)):
        distiller = Distiller(teacher, student, LogitsDistillation(4.0), student_loss_weight=0.3)
        distiller.compile(optimizer=keras.optimizers.Adam(1e-3),
                          loss="sparse_categorical_crossentropy")
        distiller.fit(x, y, epochs=1, batch_size=32, verbose=0)
        qat = quantize_model(student)
        qat.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        qat.fit(x, y, epochs=1, batch_size=32, verbose=0)
        report = export.verify(export.to_tflite(qat, x), qat, x)
        assert report["within_1_step"] >= 0.999, (student.name, report)


def test_mutual_learning_sample_weights_weight_both_terms():
    peers = [_mlp(8, f"peer{i}", seed=i) for i in range(2)]
    dml = MutualLearning(peers, kl_weight=0.5)
    dml.compile("sgd", "sparse_categorical_crossentropy")
    x = RNG.normal(size=(12, 6)).astype("float32")
    y = RNG.integers(0, 3, 12)
    w = RNG.random(12).astype("float32")
    outputs = [p.predict(x, verbose=0).astype(np.float64) for p in peers]
    terms = dml._per_peer(y, [keras.ops.convert_to_tensor(o, "float32") for o in outputs], w)
    for k, (p_k, p_j) in enumerate(((outputs[0], outputs[1]), (outputs[1], outputs[0]))):
        ce = -np.log(p_k[np.arange(12), y])
        kl = np.sum(p_j * (np.log(p_j) - np.log(p_k)), -1)
        expected = np.sum(w * ce) / w.sum() + 0.5 * np.sum(w * kl) / w.sum()
        np.testing.assert_allclose(float(terms[k][0]), expected, rtol=1e-4)


def test_softmax_teacher_keeps_large_logit_gaps_at_high_temperature():
    # Gaps of ~40 between logits: a 1e-7 floor on p would cap them at 16.1.
    t = np.array([[40.0, 0.0, -5.0], [0.0, 30.0, 2.0]], "float32")
    s = np.array([[1.0, 0.5, 0.0], [0.2, 2.0, 0.1]], "float32")
    teacher, student = _mlp(8, "teacher"), _mlp(4, "student", seed=1)
    loss = LogitsDistillation(20.0)
    loss.validate_model_compatibility(teacher, student)
    value = float(loss.compute_loss(_softmax(t.astype(np.float64)).astype("float32"),
                                    _softmax(s.astype(np.float64)).astype("float32")))
    np.testing.assert_allclose(value, _kl_reference(t, s, 20.0), rtol=1e-3)

