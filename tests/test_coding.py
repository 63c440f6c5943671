"""Tests of tfcompress.coding: Huffman coding, the sparse format, the container, the report.

Every number is checked against an independent reference written here (a
merge-sum Huffman cost, a pure-Python sparse encoder, bit strings built by
hand, section sizes read back from the file).
"""

import heapq
import itertools
import json
import math
import os
import struct
from fractions import Fraction

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfcompress.coding import (
    ChecksumError,
    ContainerError,
    HuffmanCode,
    SparseArray,
    TruncatedContainerError,
    UnsupportedVersionError,
    compression_report,
    container,
    container_info,
    decode_sparse,
    encode_sparse,
    huffman_code_lengths,
    load_compressed,
    quantize_to_codebook,
    save_compressed,
)

# --------------------------------------------------------------------------- references


def reference_huffman_cost(counts):
    """Optimal total code length: the sum of all merged weights (no tree, no lengths)."""
    heap = [c for c in counts if c > 0]
    if len(heap) == 1:
        return heap[0]
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        cost += merged
        heapq.heappush(heap, merged)
    return cost


def reference_bits(code, symbols):
    """The bit string of `symbols`, by concatenating code strings."""
    table = code.code_table()
    return "".join(table[int(s)] for s in symbols)


def bits_of(data, n_bits):
    return "".join(format(b, "08b") for b in data)[:n_bits]


def reference_sparse(flat, index_bits):
    """Pure-Python sparse encoding: (values, stored diffs) with filler zeros."""
    bound = 2**index_bits
    values, diffs, previous = [], [], -1
    for position, value in enumerate(flat.tolist()):
        if np.asarray(value, dtype=flat.dtype).tobytes() == bytes(flat.dtype.itemsize):
            continue
        while position - previous > bound:
            previous += bound
            values.append(0)
            diffs.append(bound - 1)
        diffs.append(position - previous - 1)
        values.append(value)
        previous = position
    return values, diffs


def entropy(counts):
    total = sum(counts)
    return -sum(c / total * math.log2(c / total) for c in counts if c)


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    unsigned = np.dtype(f"u{a.dtype.itemsize}")
    np.testing.assert_array_equal(a.view(unsigned), b.view(unsigned))


# --------------------------------------------------------------------------- Huffman


def test_clrs_example_lengths_and_cost():
    frequencies = {"a": 45, "b": 13, "c": 12, "d": 16, "e": 9, "f": 5}
    lengths = huffman_code_lengths(frequencies)
    assert lengths == {"a": 1, "b": 3, "c": 3, "d": 3, "e": 4, "f": 4}
    # CLRS 16.3: 224,000 bits for 100,000 characters, i.e. 224 per 100.
    assert sum(frequencies[s] * lengths[s] for s in frequencies) == 224
    code = HuffmanCode.from_frequencies(dict(zip(range(6), frequencies.values())))
    symbols = np.repeat(np.arange(6), list(frequencies.values()))
    data, n_bits = code.encode(symbols)
    assert n_bits == 224 and len(data) == 28


def test_canonical_codes_and_exact_bit_stream():
    code = HuffmanCode.from_lengths({0: 1, 1: 2, 2: 2})
    assert code.code_table() == {0: "0", 1: "10", 2: "11"}
    data, n_bits = code.encode([2, 0, 1])
    assert (data, n_bits) == (bytes([0b11010000]), 5)
    # Canonical order is (length, symbol): 7 (length 1) then 3, 5 (length 2).
    assert HuffmanCode.from_lengths({7: 1, 5: 2, 3: 2}).code_table() == {
        7: "0", 3: "10", 5: "11"}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 10_000), min_size=2, max_size=60))
def test_lengths_optimal_kraft_equality_prefix_free(counts):
    lengths = huffman_code_lengths(np.asarray(counts))
    assert sum(Fraction(1, 2**int(n)) for n in lengths) == 1  # a full binary tree
    assert int(np.dot(counts, lengths)) == reference_huffman_cost(counts)
    assert np.array_equal(lengths, huffman_code_lengths(np.asarray(counts)))  # deterministic
    codes = sorted(HuffmanCode.from_lengths(lengths).code_table().values())
    for a, b in itertools.pairwise(codes):  # sorted: a prefix would sort just before
        assert not b.startswith(a)
    # Average length within [H, H + 1).
    average = float(np.dot(counts, lengths)) / sum(counts)
    assert entropy(counts) - 1e-9 <= average < entropy(counts) + 1


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(-3, 40), min_size=1, max_size=400),
    st.integers(0, 6),
)
def test_round_trip_is_exact_and_bits_match_frequencies(symbols, skew):
    symbols = np.asarray(symbols, dtype=np.int64)
    symbols = np.where(symbols % (skew + 1) == 0, symbols, symbols[0])  # skewed counts
    code = HuffmanCode.from_symbols(symbols)
    data, n_bits = code.encode(symbols)
    values, counts = np.unique(symbols, return_counts=True)
    assert n_bits == int(np.dot(counts, code.length_of(values)))
    assert n_bits == (reference_huffman_cost(counts.tolist()) if values.size > 1 else symbols.size)
    assert len(data) == (n_bits + 7) // 8
    assert bits_of(data, n_bits) == reference_bits(code, symbols)
    np.testing.assert_array_equal(code.decode(data, symbols.size, n_bits), symbols)
    restored = HuffmanCode.from_bytes(code.to_bytes())
    assert restored.code_table() == code.code_table()
    np.testing.assert_array_equal(restored.decode(data, symbols.size, n_bits), symbols)


def test_single_symbol_alphabet_gets_one_bit():
    assert huffman_code_lengths({"x": 7}) == {"x": 1}
    code = HuffmanCode.from_symbols([5] * 10)
    data, n_bits = code.encode([5] * 10)
    assert n_bits == 10 and data == b"\x00\x00"
    assert code.decode(data, 10, 10).tolist() == [5] * 10


@pytest.mark.parametrize("n_symbols", [12, 30, 70])
def test_long_codes_round_trip(n_symbols):
    # Lengths 1, 2, ..., n-1, n-1: the code of Fibonacci-like counts. Max length
    # 11 (lookup table), 29 (binary search) and 69 bits (bit-by-bit decoding).
    lengths = {s: s + 1 for s in range(n_symbols - 1)}
    lengths[n_symbols - 1] = n_symbols - 1
    code = HuffmanCode.from_lengths(lengths)
    assert code.max_length == n_symbols - 1
    rng = np.random.default_rng(n_symbols)
    symbols = rng.integers(0, n_symbols, size=3000)
    data, n_bits = code.encode(symbols)
    assert n_bits == sum(lengths[int(s)] for s in symbols)
    assert bits_of(data, n_bits) == reference_bits(code, symbols)
    np.testing.assert_array_equal(code.decode(data, symbols.size, n_bits), symbols)


def test_fibonacci_counts_give_codes_longer_than_32_bits():
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    lengths = huffman_code_lengths(np.asarray(fib, dtype=np.int64))
    assert lengths.max() == 39 and sorted(lengths.tolist()) == sorted([39] + list(range(1, 40)))
    code = HuffmanCode.from_lengths(lengths)
    symbols = np.array([0, 1, 39, 38, 0, 5])
    data, n_bits = code.encode(symbols)
    assert n_bits == int(lengths[symbols].sum())
    np.testing.assert_array_equal(code.decode(data, 6, n_bits), symbols)


def test_half_a_million_symbols_round_trip():
    rng = np.random.default_rng(1)
    symbols = rng.choice(300, size=500_000, p=rng.dirichlet(np.full(300, 0.3)))
    code = HuffmanCode.from_symbols(symbols)
    data, n_bits = code.encode(symbols)
    counts = np.bincount(symbols)
    assert n_bits == reference_huffman_cost(counts.tolist())
    np.testing.assert_array_equal(code.decode(data, symbols.size, n_bits), symbols)


def test_code_table_bytes_both_layouts():
    # Range layout: mode 0, span 2, zigzag(3) = 6, lengths 1, 1.
    assert HuffmanCode.from_lengths({3: 1, 4: 1}).to_bytes() == bytes([0, 2, 6, 1, 1])
    # List layout for scattered symbols: mode 1, n, zigzag(first), gaps - 1, lengths.
    sparse_symbols = HuffmanCode.from_lengths({-2: 1, 1000: 2, 5000: 2})
    table = sparse_symbols.to_bytes()
    assert table[:3] == bytes([1, 3, 3]) and table[-3:] == bytes([1, 2, 2])
    assert HuffmanCode.from_bytes(table).code_table() == sparse_symbols.code_table()
    two = HuffmanCode.from_lengths({0: 1, 1: 1}).to_bytes()
    assert two == bytes([0, 2, 0, 1, 1])
    with pytest.raises(ValueError, match="is 5 bytes but 6"):
        HuffmanCode.from_bytes(two + b"\0")
    with pytest.raises(ValueError, match="needs 2 length bytes, only 1 left"):
        HuffmanCode.from_bytes(two[:4])


def test_huffman_errors():
    code = HuffmanCode.from_lengths({0: 1, 1: 2, 2: 2})
    with pytest.raises(ValueError, match="Symbol 9 has no code"):
        code.encode([0, 9])
    data, n_bits = code.encode([1, 2, 1, 2])
    with pytest.raises(ValueError, match="does not hold 5 symbols"):
        code.decode(data, 5, n_bits)
    assert (data, n_bits) == (bytes([0b10111011]), 8)
    with pytest.raises(ValueError, match="does not hold 4 symbols"):
        code.decode(data, 4, 7)  # the last code would run past bit 7
    with pytest.raises(ValueError, match="took 6 bits, but the stream has 8"):
        code.decode(data, 3, 8)
    assert code.decode(data, 3).tolist() == [1, 2, 1]  # no n_bits: may end anywhere
    with pytest.raises(ValueError, match="Kraft"):
        HuffmanCode.from_lengths({0: 1, 1: 1, 2: 2})
    with pytest.raises(ValueError, match="-1 for symbol 1"):
        huffman_code_lengths(np.array([3, -1]))
    # An incomplete code (Kraft sum 3/4): the pattern "11" is no code.
    incomplete = HuffmanCode.from_lengths({0: 1, 1: 2})
    with pytest.raises(ValueError, match="no code"):
        incomplete.decode(bytes([0b11000000]), 1, 2)


def reference_decode(code, data, count):
    """Greedy bit-by-bit prefix decoding of at most `count` symbols."""
    table = {bits: symbol for symbol, bits in code.code_table().items()}
    word, decoded = "", []
    for bit in bits_of(data, 8 * len(data)):
        if len(decoded) == count:
            break
        word += bit
        if word in table:
            decoded.append(table[word])
            word = ""
    return decoded


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=0, max_size=40), st.integers(0, 80), st.sampled_from([4, 20, 60]))
def test_decoding_arbitrary_bytes(data, count, n_symbols):
    # Complete codes with max lengths 3 (table), 19 (search) and 59 bits (Python).
    code = HuffmanCode.from_lengths({s: min(s + 1, n_symbols - 1) for s in range(n_symbols)})
    expected = reference_decode(code, data, count)
    if len(expected) < count:
        with pytest.raises(ValueError, match=f"does not hold {count} symbols"):
            code.decode(data, count)
    else:
        assert code.decode(data, count).tolist() == expected


# --------------------------------------------------------------------------- sparse


def test_filler_zeros_hand_example():
    # 3 index bits: differences 1..8. Non-zeros at 1, 12 and 30.
    flat = np.zeros(40, dtype=np.float32)
    flat[[1, 12, 30]] = [1.5, -2.0, 3.25]
    sparse = encode_sparse(flat, index_bits=3)
    # gap 2; gap 11 = filler at 9, then 3; gap 18 = fillers at 20, 28, then 2.
    assert sparse.values.tolist() == [1.5, 0.0, -2.0, 0.0, 0.0, 3.25]
    assert sparse.diffs.tolist() == [1, 7, 2, 7, 7, 1]
    assert sparse.positions().tolist() == [1, 9, 12, 20, 28, 30]
    assert (sparse.num_entries, sparse.num_fillers, sparse.num_nonzero) == (6, 3, 3)
    same_bits(decode_sparse(sparse), flat)


@pytest.mark.parametrize("index_bits", [1, 2, 5, 8])
def test_fillers_exactly_when_the_gap_exceeds_the_bound(index_bits):
    bound = 2**index_bits
    for gap in (bound - 1, bound, bound + 1, 2 * bound, 2 * bound + 1, 5 * bound + 3):
        if gap < 1:
            continue
        flat = np.zeros(gap + 1, dtype=np.float32)
        flat[gap - 1] = 1.0  # first entry: gap from position -1
        sparse = encode_sparse(flat, index_bits=index_bits)
        assert sparse.num_fillers == (gap - 1) // bound, (gap, bound)
        assert sparse.diffs.max() <= bound - 1


def _random_sparse(data):
    shape = tuple(data.draw(st.lists(st.integers(1, 9), min_size=0, max_size=3)))
    size = int(np.prod(shape, dtype=np.int64))
    density = data.draw(st.sampled_from([0.0, 0.02, 0.1, 0.5, 1.0]))
    seed = data.draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    values = rng.normal(size=size).astype(np.float32)
    values[rng.random(size) >= density] = 0.0
    specials = np.array([np.nan, np.inf, -np.inf, -0.0, 1e-42], dtype=np.float32)
    if size and data.draw(st.booleans()):
        values[rng.integers(0, size, 3)] = rng.choice(specials, 3)
    return values.reshape(shape)


@settings(max_examples=120, deadline=None)
@given(st.data())
def test_sparse_round_trip_matches_reference(data):
    array = _random_sparse(data)
    index_bits = data.draw(st.integers(1, 8))
    order = data.draw(st.sampled_from(["C", "F"]))
    sparse = encode_sparse(array, index_bits=index_bits, order=order)
    values, diffs = reference_sparse(array.ravel(order=order), index_bits)
    same_bits(sparse.values, np.asarray(values, dtype=np.float32).reshape(-1))
    assert sparse.diffs.tolist() == diffs
    assert sparse.shape == array.shape and sparse.order == order
    restored = decode_sparse(sparse)
    same_bits(restored, array)
    assert restored.flags.c_contiguous or restored.ndim < 2 or order == "F"


def test_order_f_is_the_csc_layout():
    rng = np.random.default_rng(3)
    a = np.where(rng.random((7, 11)) < 0.2, rng.normal(size=(7, 11)), 0).astype(np.float32)
    csc = encode_sparse(a, index_bits=2, order="F")
    csr_of_transpose = encode_sparse(np.ascontiguousarray(a.T), index_bits=2, order="C")
    same_bits(csc.values, csr_of_transpose.values)
    assert csc.diffs.tolist() == csr_of_transpose.diffs.tolist()
    same_bits(decode_sparse(csc), a)


def test_all_zero_and_fully_dense_arrays():
    zeros = encode_sparse(np.zeros((4, 5), np.float32), index_bits=2)
    assert zeros.num_entries == 0
    same_bits(decode_sparse(zeros), np.zeros((4, 5), np.float32))
    dense = np.arange(1, 21, dtype=np.float32).reshape(4, 5)
    sparse = encode_sparse(dense, index_bits=1)
    assert sparse.num_fillers == 0 and sparse.diffs.tolist() == [0] * 20
    same_bits(decode_sparse(sparse), dense)


def test_negative_zero_is_stored_and_round_trips():
    array = np.array([0.0, -0.0, 0.0, 2.0], dtype=np.float32)
    sparse = encode_sparse(array, index_bits=4)
    assert sparse.num_entries == 2 and sparse.positions().tolist() == [1, 3]
    same_bits(decode_sparse(sparse), array)


def test_sparse_argument_errors():
    with pytest.raises(ValueError, match="index_bits=0"):
        encode_sparse(np.ones(3), index_bits=0)
    with pytest.raises(ValueError, match="index_bits=17"):
        encode_sparse(np.ones(3), index_bits=17)
    with pytest.raises(ValueError, match="index_bits=True"):
        encode_sparse(np.ones(3), index_bits=True)
    with pytest.raises(ValueError, match="order='K'"):
        encode_sparse(np.ones(3), order="K")
    with pytest.raises(ValueError, match=r"\[0, 3\] for index_bits=2"):
        decode_sparse(SparseArray(np.ones(1), np.array([4]), (10,), "C", 2))
    with pytest.raises(ValueError, match="position 8 of an array with only 5"):
        decode_sparse(SparseArray(np.ones(2), np.array([3, 4]), (5,), "C", 3))


# --------------------------------------------------------------------------- codebook


def test_quantize_to_codebook():
    array = np.array([[0.5, 0.0, -1.0], [0.5, -0.0, np.nan]], dtype=np.float32)
    codebook, indices = quantize_to_codebook(array)
    same_bits(codebook, np.array([0.0, -1.0, -0.0, 0.5, np.nan], dtype=np.float32))
    assert indices.tolist() == [[3, 0, 1], [3, 2, 4]]
    same_bits(codebook[indices], array)
    with pytest.raises(ValueError, match="4 distinct non-zero values.*max_size=4"):
        quantize_to_codebook(array, max_size=4)


# --------------------------------------------------------------------------- container


def prune_and_cluster(w, sparsity, k):
    """Magnitude pruning to `sparsity` and 1-D k-means-free weight sharing (quantiles)."""
    threshold = np.quantile(np.abs(w), sparsity)
    mask = np.abs(w) > threshold
    centroids = np.quantile(w[mask], np.linspace(0.0, 1.0, k)).astype(np.float32)
    out = np.zeros_like(w, dtype=np.float32)
    out[mask] = centroids[np.abs(w[mask][:, None] - centroids).argmin(axis=1)]
    return out


def compress_weights(model, seed=0):
    rng = np.random.default_rng(seed)
    weights = []
    for variable, w in zip(model.weights, model.get_weights()):
        if w.ndim >= 2:
            w = prune_and_cluster(w, 0.9, 16)
        elif "variance" in variable.path:
            w = rng.uniform(0.5, 2.0, w.shape).astype(np.float32)
        else:
            w = rng.normal(0, 0.1, w.shape).astype(np.float32)
        weights.append(w)
    model.set_weights(weights)
    return model


@pytest.fixture(scope="module")
def dense_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((256,)),
        keras.layers.Dense(128, activation="relu", name="fc1"),
        keras.layers.Dense(10, name="fc2"),
    ], name="dense_net")
    return compress_weights(model)


@pytest.fixture(scope="module")
def conv_model():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(16, 3, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(32, 3, name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, name="fc")(x)
    return compress_weights(keras.Model(inputs, outputs), seed=1)


@pytest.fixture(scope="module")
def saved_dense(dense_model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("dense") / "dense.tfcz")
    report = save_compressed(dense_model, path)
    with open(path, "rb") as f:
        return path, f.read(), report


def assert_same_model(a, b, x):
    assert len(a.weights) == len(b.weights)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        same_bits(wa, wb)
    np.testing.assert_array_equal(a.predict(x, verbose=0), b.predict(x, verbose=0))


def test_dense_round_trip_bit_identical_and_small(dense_model, saved_dense):
    path, data, report = saved_dense
    restored = load_compressed(path)
    x = np.random.default_rng(0).normal(size=(16, 256)).astype(np.float32)
    assert_same_model(dense_model, restored, x)

    # Upper bound from the arrays: fixed-width indices + 5-bit offsets (fillers
    # counted by the reference encoder), the codebook, raw biases, framing.
    bound = 0
    for variable, w in zip(dense_model.weights, dense_model.get_weights()):
        if w.ndim == 2:
            values, _ = reference_sparse(w.ravel(), 5)
            k = np.unique(w).size  # the zero included
            bound += math.ceil(len(values) * (math.ceil(math.log2(k)) + 5) / 8) + 4 * (k - 1)
        else:
            bound += 4 * w.size
    info = container_info(path)
    assert info["payload_bytes"] == report.total["payload_bytes"] <= bound
    params = dense_model.count_params()
    assert os.path.getsize(path) == len(data) == report.total["container_bytes"]
    assert 4 * params / len(data) > 10.0
    assert [w["encoding"] for w in info["header"]["weights"]] == [
        "sparse+codebook", "raw", "sparse+codebook", "raw"]
    assert [w.get("index_bits") for w in info["header"]["weights"]] == [5, None, 5, None]


def test_conv_round_trip_default_index_bits(conv_model, tmp_path):
    path = str(tmp_path / "conv.tfcz")
    save_compressed(conv_model, path)
    restored = load_compressed(path)
    x = np.random.default_rng(1).normal(size=(4, 12, 12, 3)).astype(np.float32)
    assert_same_model(conv_model, restored, x)
    header = container_info(path)["header"]
    bits = {w["path"]: w.get("index_bits") for w in header["weights"]}
    assert bits["conv2/kernel"] == 8  # conv: 8 bits (sparse+codebook)
    for weight in header["weights"]:
        if weight["encoding"].startswith("sparse"):
            assert weight["index_bits"] == (8 if len(weight["shape"]) == 4 else 5)
    assert header["version"] == 1 and header["keras_version"] == keras.__version__
    assert [w["path"] for w in header["weights"]] == [v.path for v in conv_model.weights]


def test_index_bits_override_and_no_huffman(conv_model, tmp_path):
    coded = str(tmp_path / "coded.tfcz")
    plain = str(tmp_path / "plain.tfcz")
    save_compressed(conv_model, coded, index_bits=3)
    save_compressed(conv_model, plain, index_bits=3, huffman=False)
    for path in (coded, plain):
        for wa, wb in zip(conv_model.get_weights(), load_compressed(path).get_weights()):
            same_bits(wa, wb)
    plain_weights = container_info(plain)["header"]["weights"]
    sparse = [w for w in plain_weights if "index_bits" in w]
    assert sparse and all(w["index_bits"] == 3 for w in sparse)
    streams = [s for w in plain_weights for s in w.get("streams", {}).values()]
    assert streams and all(s["coding"] == "fixed" for s in streams)
    coded_streams = [s for w in container_info(coded)["header"]["weights"]
                     for s in w.get("streams", {}).values()]
    assert any(s["coding"] == "huffman" for s in coded_streams)
    assert os.path.getsize(coded) < os.path.getsize(plain)


def test_special_values_and_tfcompress_layers(tmp_path):
    from tfcompress.layers import AdderDense

    keras.utils.set_random_seed(2)
    inputs = keras.Input((6,))
    x = AdderDense(40, name="adder")(inputs)
    outputs = keras.layers.Dense(30, name="fc")(x)
    model = keras.Model(inputs, outputs)
    kernel = np.zeros((40, 30), dtype=np.float32)  # 7 non-zero values of 1,200
    kernel[0, :3] = [np.nan, np.inf, -np.inf]
    kernel[1, :3] = [-0.0, 1e-42, -3.0]
    kernel[39, 29] = np.float32(np.finfo(np.float32).max)
    weights = model.get_weights()
    weights[1] = kernel
    weights[2] = np.zeros(30, dtype=np.float32)
    weights[2][7] = -0.0
    model.set_weights(weights)
    path = str(tmp_path / "special.tfcz")
    save_compressed(model, path)
    restored = load_compressed(path)
    assert type(restored.get_layer("adder")).__name__ == "AdderDense"
    for wa, wb in zip(model.get_weights(), restored.get_weights()):
        same_bits(wa, wb)
    encodings = [w["encoding"] for w in container_info(path)["header"]["weights"]]
    assert encodings[1] in ("sparse", "sparse+codebook") and encodings[2] != "zeros"


def _section_payload_offset(info_section):
    return info_section["offset"] + 2 + len(info_section["name"].encode()) + 8


def test_every_section_is_checksummed(saved_dense, tmp_path):
    path, data, _ = saved_dense
    sections = container_info(path)["sections"]
    assert [s["name"] for s in sections[:2]] == ["header", "model_config"]
    assert sections[-1]["name"] == "end"
    damaged = str(tmp_path / "damaged.tfcz")
    checked = 0
    for section in sections:
        if not section["bytes"]:
            continue
        corrupt = bytearray(data)
        corrupt[_section_payload_offset(section) + section["bytes"] // 2] ^= 0x01
        with open(damaged, "wb") as f:
            f.write(corrupt)
        expected = f"checksum mismatch in section '{section['name']}'"
        with pytest.raises(ChecksumError, match=expected):
            load_compressed(damaged)
        with pytest.raises(ChecksumError):
            container_info(damaged)
        checked += 1
    assert checked == len(sections) - 1
    corrupt = bytearray(data)
    corrupt[sections[-1]["offset"] + 2] ^= 0x01  # the name "end" itself
    with open(damaged, "wb") as f:
        f.write(corrupt)
    with pytest.raises(ChecksumError, match="'dnd'"):
        load_compressed(damaged)


def test_truncated_files(saved_dense, tmp_path):
    path, data, _ = saved_dense
    sections = container_info(path)["sections"]
    cut = str(tmp_path / "cut.tfcz")
    offsets = next(s for s in sections if s["name"].endswith("fc1/kernel:offsets"))
    middle = _section_payload_offset(offsets) + 10
    cases = [
        (middle, (rf"reading the payload of section '{offsets['name']}' at byte "
                  rf"{_section_payload_offset(offsets)} needs {offsets['bytes']} bytes, only 10")),
        (sections[-1]["offset"], "without the 'end' section"),
        (len(data) - 1, "CRC32 of section 'end'"),
        (sections[1]["offset"] + 1, "name length of section #1"),
    ]
    for size, message in cases:
        with open(cut, "wb") as f:
            f.write(data[:size])
        with pytest.raises(TruncatedContainerError, match=message):
            load_compressed(cut)
    with open(cut, "wb") as f:
        f.write(data + b"\0")
    with pytest.raises(ContainerError, match="1 unexpected bytes after the 'end' section"):
        load_compressed(cut)


def test_bad_magic_and_unknown_version(saved_dense, tmp_path):
    _, data, _ = saved_dense
    other = str(tmp_path / "other.tfcz")
    for content in (b"PK\x03\x04" + data[4:], b"", b"TFC"):
        with open(other, "wb") as f:
            f.write(content)
        with pytest.raises(ContainerError, match="not a tfcompress container"):
            load_compressed(other)
    with open(other, "wb") as f:
        f.write(data[:4] + struct.pack("<H", 7) + data[6:])
    with pytest.raises(UnsupportedVersionError, match="format version 7.*reads versions 1"):
        load_compressed(other)
    with pytest.raises(ValueError):  # every load error is a ValueError
        container_info(other)


def test_every_single_byte_flip_is_detected(hand_model, tmp_path):
    path = str(tmp_path / "hand.tfcz")
    save_compressed(hand_model, path)
    with open(path, "rb") as f:
        data = f.read()
    for position in range(len(data)):
        corrupt = bytearray(data)
        corrupt[position] ^= 0x10
        with open(path, "wb") as f:
            f.write(corrupt)
        with pytest.raises(ContainerError):
            container_info(path)


def test_failed_save_leaves_nothing_behind(dense_model, tmp_path, monkeypatch):
    missing = tmp_path / "no_such_dir" / "model.tfcz"
    with pytest.raises(OSError):
        save_compressed(dense_model, str(missing))
    assert not (tmp_path / "no_such_dir").exists()

    target = tmp_path / "model.tfcz"
    target.write_bytes(b"previous version")

    def fail_rename(*args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", fail_rename)
        with pytest.raises(OSError, match="disk full"):
            save_compressed(dense_model, str(target))
    assert target.read_bytes() == b"previous version"

    calls = []
    original = container._section

    def fail_in_the_middle(name, payload):
        calls.append(name)
        if len(calls) == 4:
            raise RuntimeError("encoder failed")
        return original(name, payload)

    with monkeypatch.context() as patch:
        patch.setattr(container, "_section", fail_in_the_middle)
        with pytest.raises(RuntimeError, match="encoder failed"):
            save_compressed(dense_model, str(target))
    assert target.read_bytes() == b"previous version"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tfcz"]


def test_argument_errors(dense_model, tmp_path):
    path = str(tmp_path / "x.tfcz")
    for bits in (0, 17, "8"):
        with pytest.raises(ValueError, match=f"index_bits={bits!r}"):
            save_compressed(dense_model, path, index_bits=bits)
    with pytest.raises(ValueError, match="huffman='yes'"):
        save_compressed(dense_model, path, huffman="yes")
    with pytest.raises(ValueError, match="needs a keras.Model"):
        compression_report([np.zeros(3)])
    assert not os.path.exists(path)


# --------------------------------------------------------------------------- report


@pytest.fixture(scope="module")
def hand_model():
    """fc1: 128 non-zeros, every 8th weight, 4 shared values; fc2: dense random."""
    model = keras.Sequential([
        keras.Input((128,)),
        keras.layers.Dense(8, name="fc1"),
        keras.layers.Dense(4, name="fc2"),
    ], name="hand")
    counts = {0.25: 80, -0.5: 24, 0.75: 16, -0.25: 8}
    values = np.repeat(list(counts), list(counts.values())).astype(np.float32)
    np.random.default_rng(4).shuffle(values)
    kernel = np.zeros(1024, dtype=np.float32)
    kernel[7::8] = values  # gaps of 8: no fillers, one offset symbol
    rng = np.random.default_rng(5)
    model.set_weights([
        kernel.reshape(128, 8), np.zeros(8, np.float32),
        rng.normal(size=(8, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32),
    ])
    return model


def test_report_numbers_match_an_independent_count(hand_model, tmp_path):
    report = compression_report(hand_model)
    fc1, fc2 = report.rows
    assert fc1["layer"] == "fc1" and fc2["layer"] == "fc2"
    assert (fc1["weights"], fc1["nonzero"]) == (1032, 128)
    assert fc1["density"] == pytest.approx(128 / 1032)
    assert fc1["weight_bits"] == 3.0  # ceil(log2(5)): 4 values and the zero
    huffman_bits = reference_huffman_cost([80, 24, 16, 8])
    assert huffman_bits == 200
    assert fc1["weight_bits_huffman"] == pytest.approx(200 / 128)
    assert fc1["offset_bits"] == 5.0
    assert fc1["offset_bits_huffman"] == 1.0  # one offset symbol: one bit each
    assert fc1["codebook_bits"] == 4 * 32
    assert fc1["encodings"] == {"hand/fc1/kernel": "sparse+codebook",
                                "hand/fc1/bias": "zeros"}
    assert (fc2["weights"], fc2["nonzero"], fc2["weight_bits"]) == (36, 36, 32.0)
    assert fc2["offset_bits"] is None and fc2["total_bits"] == 36 * 32 and fc2["ratio"] == 1.0

    path = str(tmp_path / "hand.tfcz")
    saved = save_compressed(hand_model, path)
    assert saved.to_dict() == report.to_dict()
    sizes = {s["name"]: s["bytes"] for s in container_info(path)["sections"]}
    fc1_bytes = sum(n for name, n in sizes.items() if "/fc1/" in name)
    # codebook 16 bytes; indices: table (mode, span, first, 4 lengths) + 25 bytes;
    # offsets: table (mode, span, first, 1 length) + 128 bits.
    assert sizes["weights/hand/fc1/kernel:codebook"] == 16
    assert sizes["weights/hand/fc1/kernel:indices"] == 7 + 25
    assert sizes["weights/hand/fc1/kernel:offsets"] == 4 + 16
    assert fc1["total_bits"] == 8 * fc1_bytes == 8 * 68
    assert fc1["ratio"] == pytest.approx(32 * 1032 / 544)
    total = report.total
    assert total["params"] == hand_model.count_params() == 1068
    assert total["original_bytes"] == 4 * 1068
    assert total["payload_bytes"] == 68 + 4 * 36
    assert total["ratio"] == pytest.approx(4 * 1068 / 212)
    assert total["container_bytes"] == os.path.getsize(path)
    assert total["payload_bytes"] < total["container_bytes"] < total["payload_bytes"] + 2500
    json.dumps(report.to_dict())  # JSON-able as is
    text = str(report)
    assert "fc1" in text and "fc2" in text and f"{os.path.getsize(path):,}" in text
    lines = text.splitlines()
    assert len({len(line) for line in lines[:2]}) == 1  # aligned header and rule


def test_report_without_huffman_and_matching_file(saved_dense, dense_model):
    path, data, saved = saved_dense
    report = compression_report(dense_model, huffman=False)
    for row in report.rows:
        assert row["weight_bits_huffman"] == pytest.approx(row["weight_bits"])
        if row["offset_bits"] is not None:
            assert row["offset_bits_huffman"] == pytest.approx(row["offset_bits"])
    assert report.total["payload_bytes"] > saved.total["payload_bytes"]
    info = container_info(path)
    assert saved.total["payload_bytes"] == info["payload_bytes"]
    assert saved.total["container_bytes"] == len(data)
    for row in saved.rows:
        written = sum(s["bytes"] for s in info["sections"]
                      if s["name"].startswith(f"weights/dense_net/{row['layer']}/"))
        assert row["total_bits"] == 8 * written
        assert 0.08 < row["density"] < 0.12
