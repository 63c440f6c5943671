"""Huffman coding, the sparse index format and the compressed-model container.

The third stage of Deep Compression: Han, Mao, Dally. "Deep Compression:
Compressing Deep Neural Networks with Pruning, Trained Quantization and Huffman
Coding", ICLR 2016, arXiv:1510.00149.

- Sparse storage (sec. 2, Figure 2): the non-zero entries of a weight array are
  stored in order (row-major "C" order is CSR-like, column-major "F" order is
  CSC-like) together with the relative index difference to the previous stored
  entry, in `index_bits` bits (the paper: 8 bits for conv layers, 5 bits for fc
  layers). "When we need an index difference larger than the bound, we use the
  zero padding solution": a filler zero is stored `2**index_bits` positions
  after the previous entry. See `encode_sparse`.
- Weight sharing (sec. 3): an array with few distinct values is stored as a
  codebook (the shared values) and one index per stored entry; index 0 is the
  value 0, so filler zeros cost one index. See `quantize_to_codebook`.
- Huffman coding (sec. 4): both the codebook indices and the sparse index
  differences are Huffman coded with canonical codes. See `HuffmanCode`.
- `save_compressed` / `load_compressed` write and read a whole Keras model in
  the container below; `compression_report` gives the per-layer table of the
  paper's Tables 2-3 (non-zero fraction, bits per weight index and per offset
  before and after Huffman coding, compression ratio) for exactly the bytes
  that `save_compressed` writes.

Zero means "all bits zero": +0.0 is zero, -0.0 is a (stored) non-zero value, and
NaN or infinite values are stored like any other non-zero value, so every array
round-trips bit for bit.

Container layout (format version 1, all integers little-endian):

    magic            4 bytes   b"TFCZ"
    version          uint16    1
    sections, each:
        name length  uint16
        name         UTF-8
        payload len  uint64
        payload      bytes
        crc32        uint32    zlib.crc32 of name length, name, payload length
                               and payload (the whole section record)
    the last section is "end", with an empty payload; nothing may follow it.

Sections, in order:

    header           zlib-compressed UTF-8 JSON (a model with 150 variables has
                     a 23 kB header that compresses to 1.5 kB):
                     {"format", "version", "tfcompress_version",
                     "keras_version", "model_name", "model_class", "huffman",
                     "index_bits", "weights": [...]} with one entry per variable
                     of `model.weights`, in order: "path", "shape", "dtype",
                     "encoding", "sections" ({part: section name}) and, by
                     encoding, "codebook_size", "index_bits", "order",
                     "entries" and "streams" ({part: {"coding", "count",
                     "bits", "width"}}).
    model_config     zlib-compressed UTF-8 of `model.to_json()`.
    weights/<path>:<part>   the data of one variable (":raw", ":codebook",
                     ":values", ":indices", ":offsets"; "#<i>" is appended to
                     the path if two variables share one).
    end              empty.

Encodings of a variable (the smallest of those that apply is written):

    "zeros"            every element is +0 (no sections).
    "raw"              ":raw": the elements, little-endian, C order.
    "codebook"         ":codebook": the K-1 non-zero shared values (entry 0 is 0
                       and not stored); ":indices": one index per element.
    "sparse"           ":values": the stored entries (fillers included) as raw
                       elements; ":offsets": their index differences.
    "sparse+codebook"  ":codebook", ":indices" (one per stored entry, 0 for
                       fillers) and ":offsets".

A stream (":indices", ":offsets") is "fixed" (each symbol in `width` bits, MSB
first, packed) or "huffman" (a canonical code table, `HuffmanCode.to_bytes`,
followed by the MSB-first bit stream of `bits` bits); the smaller is written,
Huffman only when `huffman=True`. Offsets are the stored index differences
minus one, in [0, 2**index_bits - 1]; index widths are ceil(log2(K)).

Example:
    >>> save_compressed(model, "model.tfcz")
    >>> restored = load_compressed("model.tfcz")
    >>> print(compression_report(model))
"""

import dataclasses
import heapq
import itertools
import json
import math
import numbers
import os
import struct
import zlib

import keras
import numpy as np

from tfcompress.fileio import write_atomic

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "SUPPORTED_VERSIONS",
    "ChecksumError",
    "CompressionReport",
    "ContainerError",
    "HuffmanCode",
    "SparseArray",
    "TruncatedContainerError",
    "UnsupportedVersionError",
    "compression_report",
    "container_info",
    "decode_sparse",
    "default_index_bits",
    "encode_sparse",
    "huffman_code_lengths",
    "load_compressed",
    "quantize_to_codebook",
    "save_compressed",
]

MAGIC = b"TFCZ"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)

# Largest codebook (shared values, the zero at index 0 included): 16-bit indices.
MAX_CODEBOOK_SIZE = 1 << 16
# Widest window a vectorized decoder reads with a lookup table (2**16 entries).
_TABLE_MAX_BITS = 16
# Widest code the vectorized canonical decoder handles (a 64-bit word read at any
# byte offset holds 57 bits from any bit phase).
_VECTOR_MAX_BITS = 57
# Chain steps per Python-loop iteration of the vectorized decoder.
_JUMP_LEVELS = 5
_WRAPPER_CLASSES = ("PruneLowMagnitude", "ClusterWeights")


# --------------------------------------------------------------------------- errors


class ContainerError(ValueError):
    """A file that is not a valid tfcompress container (bad magic, bad structure)."""


class UnsupportedVersionError(ContainerError):
    """A container written in a format version this tfcompress cannot read."""


class TruncatedContainerError(ContainerError):
    """A container that ends before a section it declares is complete."""


class ChecksumError(ContainerError):
    """A section whose CRC32 does not match its bytes (the file is corrupt)."""


# --------------------------------------------------------------------------- helpers


def _check_int(name, value, low, high):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not (
        low <= value <= high
    ):
        raise ValueError(
            f"`{name}` must be an integer in [{low}, {high}]. Received: {name}={value!r}"
        )
    return int(value)


def _check_index_bits(index_bits):
    return _check_int("index_bits", index_bits, 1, 16)


def _check_order(order):
    if order not in ("C", "F"):
        raise ValueError(
            '`order` must be "C" (row-major, CSR-like) or "F" (column-major, CSC-like). '
            f"Received: order={order!r}"
        )
    return order


def _check_huffman(huffman):
    if not isinstance(huffman, (bool, np.bool_)):
        raise ValueError(  # noqa: TRY004 - the library raises ValueError for bad arguments
            f"`huffman` must be True or False. Received: huffman={huffman!r}"
        )
    return bool(huffman)


def _check_numeric(array, what="array"):
    if array.dtype.hasobject or array.dtype.kind in "OSUMm" or array.dtype.fields is not None:
        raise ValueError(
            f"`{what}` must hold numbers (bool, integer or floating point). "
            f"Received dtype {array.dtype}"
        )


def _bit_view(flat):
    """The elements of a contiguous 1-D array as unsigned integers of the same width."""
    return flat.view(np.dtype(f"u{flat.dtype.itemsize}"))


def _nonzero_mask(flat):
    """True where an element of a 1-D array has any bit set (+0 is zero, -0.0 is not)."""
    flat = np.ascontiguousarray(flat)
    if flat.dtype.itemsize in (1, 2, 4, 8):
        return _bit_view(flat) != 0
    return flat.view(np.uint8).reshape(flat.size, flat.dtype.itemsize).any(axis=1)


def _le_bytes(array):
    """Little-endian bytes of an array, C order."""
    array = np.ascontiguousarray(array)
    if array.dtype.itemsize > 1 and array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    elif array.dtype.itemsize > 1 and array.dtype.byteorder == "=" and not _LITTLE:
        array = array.byteswap()
    return array.tobytes()


def _from_le_bytes(data, dtype, count):
    array = np.frombuffer(data, dtype=dtype, count=count)
    if dtype.itemsize > 1 and not _LITTLE:
        array = array.byteswap()
    return array.copy()


_LITTLE = np.little_endian


def _resolve_dtype(name):
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes

        if hasattr(ml_dtypes, name):
            return np.dtype(getattr(ml_dtypes, name))
        raise ValueError(f"Unknown dtype {name!r} in the container.") from None


def _write_varint(out, value):
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def _read_varint(data, offset):
    value, shift = 0, 0
    while True:
        if offset >= len(data):
            raise ValueError("Huffman code table ends inside a number.")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, offset
        if shift > 70:
            raise ValueError("Huffman code table holds a number longer than 10 bytes.")


def _zigzag(value):
    return 2 * value if value >= 0 else -2 * value - 1


def _unzigzag(value):
    return value // 2 if value % 2 == 0 else -(value + 1) // 2


# --------------------------------------------------------------------------- Huffman


def _lengths_from_counts(counts):
    """Huffman code lengths of positive counts, ties broken by position in `counts`."""
    n = len(counts)
    if n == 0:
        return []
    if n == 1:
        return [1]
    # Nodes 0..n-1 are the leaves, n..2n-2 the merged nodes in order of creation;
    # the heap orders by (count, node id), so ties go to the leaf that comes first
    # and then to the older merged node: the result depends on nothing else.
    heap = [(count, i) for i, count in enumerate(counts)]
    heapq.heapify(heap)
    parent = [0] * (2 * n - 1)
    node = n
    while len(heap) > 1:
        count_a, a = heapq.heappop(heap)
        count_b, b = heapq.heappop(heap)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (count_a + count_b, node))
        node += 1
    depth = [0] * (2 * n - 1)
    for i in range(2 * n - 3, -1, -1):  # a parent's id is larger than its children's
        depth[i] = depth[parent[i]] + 1
    return depth[:n]


def _check_count(symbol, count):
    if isinstance(count, bool) or not isinstance(count, numbers.Real) or not (
        math.isfinite(count) and count >= 0
    ):
        raise ValueError(
            "Frequencies must be finite numbers >= 0. "
            f"Received: frequency {count!r} for symbol {symbol!r}"
        )


def huffman_code_lengths(frequencies):
    """Lengths of a Huffman code for symbol frequencies (Deep Compression, sec. 4).

    Huffman's algorithm with a heap: the two least frequent subtrees are merged
    until one is left; a symbol's code length is its depth. Ties are broken
    deterministically: between equal counts, the symbol that sorts first (then
    the older merged subtree) is merged first. A one-symbol alphabet gets length
    1. Symbols with frequency 0 get no code. Lengths are unbounded (an alphabet
    with Fibonacci-like counts gets codes longer than 32 bits); `HuffmanCode`
    handles any length.

    Args:
        frequencies: a dict {symbol: count} (symbols must be mutually sortable),
            or a 1-D array-like of counts indexed by the (integer) symbol.

    Returns:
        For a dict, a dict {symbol: length} of the symbols with count > 0; for an
        array, an int64 array of the same length with 0 for absent symbols.

    Raises:
        ValueError: for a negative, NaN or non-numeric count, or an array that is
            not 1-D.

    Example:
        >>> huffman_code_lengths({"a": 45, "b": 13, "c": 12, "d": 16, "e": 9, "f": 5})
        {'a': 1, 'b': 3, 'c': 3, 'd': 3, 'e': 4, 'f': 4}
    """
    if isinstance(frequencies, dict):
        for symbol, count in frequencies.items():
            _check_count(symbol, count)
        symbols = sorted(s for s, c in frequencies.items() if c > 0)
        lengths = _lengths_from_counts([frequencies[s] for s in symbols])
        return dict(zip(symbols, lengths))
    counts = np.asarray(frequencies)
    if counts.ndim != 1:
        raise ValueError(
            "`frequencies` must be a dict or a 1-D array of counts. "
            f"Received an array of shape {counts.shape}"
        )
    if counts.size and counts.dtype.kind not in "iuf":
        raise ValueError(f"Frequencies must be numbers. Received dtype {counts.dtype}")
    bad = ~(np.isfinite(counts) & (counts >= 0)) if counts.size else np.zeros(0, bool)
    if np.any(bad):
        i = int(np.argmax(bad))
        raise ValueError(
            "Frequencies must be finite numbers >= 0. "
            f"Received: {counts[i].item()!r} for symbol {i}"
        )
    present = np.flatnonzero(counts > 0)
    result = np.zeros(counts.size, dtype=np.int64)
    result[present] = _lengths_from_counts(counts[present].tolist())
    return result


def _as_symbol_array(symbols, what="symbols"):
    array = np.asarray(symbols)
    if array.size == 0:
        return array.reshape(-1).astype(np.int64)
    if array.dtype.kind not in "iu":
        raise ValueError(f"`{what}` must be integers. Received dtype {array.dtype}")
    if array.dtype == np.uint64 and array.max() > np.iinfo(np.int64).max:
        raise ValueError(
            f"`{what}` must fit in int64. Received the value {int(array.max())}"
        )
    return array.reshape(-1).astype(np.int64)


class HuffmanCode:
    """A canonical prefix code over integer symbols (Deep Compression, sec. 4).

    Canonical codes are assigned from the code lengths alone: symbols sorted by
    (length, symbol) get consecutive codes, each shifted left when the length
    grows. So a code is stored as its symbols and lengths (`to_bytes`), and
    decoding needs only the boundaries of the codes.

    Encoding is vectorized: the bits of every code lie in one pool, and the bit
    stream is a gather from that pool (`np.repeat` of per-symbol offsets) packed
    with `np.packbits`.

    Decoding is vectorized too. For every bit position of the stream, the code
    that would start there is found at once: with a lookup table over the next
    `max_length` bits when `max_length <= 16` (at most 65,536 entries: one
    gather per position), else by a binary search of the `max_length`-bit
    window among the left-justified canonical code boundaries (the first-code /
    offset form of canonical decoding, `np.searchsorted`, up to 57-bit codes).
    The chain of code starts from position 0 is then followed 32 codes per
    Python step (pointer doubling), and the 31 positions between filled in with
    array gathers. Codes longer than 57 bits, which no real symbol stream
    produces, are decoded bit by bit in Python.

    Attributes:
        symbols: int64 array of the symbols in canonical order (by length, then
            symbol).
        lengths: int64 array of their code lengths.
        codes: list of the codes (Python ints, any length) in the same order.

    Example:
        >>> code = HuffmanCode.from_symbols([0, 0, 0, 1, 2])
        >>> data, n_bits = code.encode([0, 1, 2, 0])
        >>> code.decode(data, 4, n_bits).tolist()
        [0, 1, 2, 0]
    """

    def __init__(self, symbols, lengths):
        """Builds the canonical code of `symbols` with code `lengths`.

        Prefer `from_lengths`, `from_frequencies` or `from_symbols`.

        Args:
            symbols: distinct integers.
            lengths: a positive code length for each symbol.

        Raises:
            ValueError: for repeated symbols, lengths < 1, or lengths that
                violate the Kraft inequality (no prefix code has them).
        """
        symbols = _as_symbol_array(symbols)
        lengths = np.asarray(lengths).reshape(-1)
        if lengths.size != symbols.size:
            raise ValueError(
                f"Got {symbols.size} symbols but {lengths.size} code lengths."
            )
        if lengths.size and (lengths.dtype.kind not in "iu" or lengths.min() < 1):
            raise ValueError(
                f"Code lengths must be integers >= 1. Received: {lengths.tolist()[:10]}"
            )
        lengths = lengths.astype(np.int64)
        if np.unique(symbols).size != symbols.size:
            raise ValueError("Symbols of a code must be distinct.")
        order = np.lexsort((symbols, lengths))
        self.symbols = symbols[order]
        self.lengths = lengths[order]
        max_length = int(self.lengths[-1]) if self.lengths.size else 0
        kraft = sum(1 << (max_length - length) for length in self.lengths.tolist())
        if kraft > (1 << max_length):
            raise ValueError(
                "Code lengths violate the Kraft inequality: sum(2**-length) = "
                f"{kraft / 2**max_length:.6g} > 1, so no prefix code has them."
            )
        self.codes = []
        code, previous = 0, None
        for length in self.lengths.tolist():
            if previous is not None:
                code = (code + 1) << (length - previous)
            self.codes.append(code)
            previous = length
        # Encoding lookup: symbols sorted by value -> canonical rank.
        self._by_symbol = np.argsort(self.symbols, kind="stable")
        self._sorted_symbols = self.symbols[self._by_symbol]
        text = "".join(format(c, f"0{n}b") for c, n in zip(self.codes, self.lengths.tolist()))
        self._pool = np.frombuffer(text.encode("ascii"), dtype=np.uint8) - ord("0")
        self._pool_offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(
            np.int64
        )
        self._decoder = None

    # -- construction

    @classmethod
    def from_lengths(cls, lengths):
        """The canonical code with the given code lengths.

        Args:
            lengths: a dict {symbol: length} or a 1-D array of lengths indexed
                by symbol, 0 for symbols without a code (as
                `huffman_code_lengths` returns).

        Returns:
            A `HuffmanCode`.

        Raises:
            ValueError: for lengths that are not positive integers or violate
                the Kraft inequality.

        Example:
            >>> HuffmanCode.from_lengths({7: 1, 3: 2, 5: 2}).codes
            [0, 2, 3]
        """
        if isinstance(lengths, dict):
            symbols = list(lengths.keys())
            values = [lengths[s] for s in symbols]
            for symbol, value in zip(symbols, values):
                if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                    raise ValueError(
                        f"Code lengths must be integers >= 1. Received: {value!r} for "
                        f"symbol {symbol!r}"
                    )
            return cls(np.asarray(symbols, dtype=np.int64).reshape(-1),
                       np.asarray(values, dtype=np.int64).reshape(-1))
        lengths = np.asarray(lengths)
        if lengths.ndim != 1 or (lengths.size and lengths.dtype.kind not in "iu"):
            raise ValueError(
                "`lengths` must be a dict or a 1-D integer array. Received "
                f"shape {lengths.shape}, dtype {lengths.dtype}"
            )
        if lengths.size and lengths.min() < 0:
            raise ValueError(f"Code lengths must be >= 0. Received: {int(lengths.min())}")
        present = np.flatnonzero(lengths)
        return cls(present, lengths[present])

    @classmethod
    def from_frequencies(cls, frequencies):
        """The canonical Huffman code of symbol frequencies (`huffman_code_lengths`).

        Args:
            frequencies: a dict {int symbol: count} or a 1-D array of counts
                indexed by symbol.

        Returns:
            A `HuffmanCode` for the symbols with count > 0.

        Example:
            >>> HuffmanCode.from_frequencies([5, 1, 1]).lengths.tolist()
            [1, 2, 2]
        """
        return cls.from_lengths(huffman_code_lengths(frequencies))

    @classmethod
    def from_symbols(cls, symbols):
        """The canonical Huffman code of the symbol frequencies in a sequence.

        Args:
            symbols: integers (any shape).

        Returns:
            A `HuffmanCode` for the distinct symbols of `symbols`.

        Example:
            >>> HuffmanCode.from_symbols([4, 4, 4, 9]).lengths.tolist()
            [1, 1]
        """
        array = _as_symbol_array(symbols)
        values, counts = np.unique(array, return_counts=True)
        lengths = _lengths_from_counts(counts.tolist())
        return cls(values, np.asarray(lengths, dtype=np.int64))

    # -- properties

    def __len__(self):
        return int(self.symbols.size)

    def __repr__(self):
        return f"HuffmanCode({len(self)} symbols, max_length={self.max_length})"

    @property
    def max_length(self):
        """The longest code length (0 for an empty code)."""
        return int(self.lengths[-1]) if self.lengths.size else 0

    def code_table(self):
        """{symbol: code as a '0'/'1' string}, in canonical order."""
        return {
            int(s): format(c, f"0{n}b")
            for s, c, n in zip(self.symbols.tolist(), self.codes, self.lengths.tolist())
        }

    def length_of(self, symbols):
        """Code lengths of `symbols` (an int64 array of the same shape).

        Raises:
            ValueError: if a symbol has no code.
        """
        array = np.asarray(symbols)
        ranks = self._ranks(_as_symbol_array(array))
        return self.lengths[ranks].reshape(array.shape)

    def _ranks(self, flat):
        if flat.size and not self.symbols.size:
            raise ValueError("This code has no symbols, so it cannot encode any.")
        where = np.searchsorted(self._sorted_symbols, flat)
        where = np.minimum(where, max(self.symbols.size - 1, 0))
        found = self._sorted_symbols[where] == flat if flat.size else np.ones(0, bool)
        if not np.all(found):
            missing = int(flat[np.argmin(found)])
            shown = self.symbols.tolist()[:20]
            raise ValueError(
                f"Symbol {missing} has no code. The code's symbols are {shown}"
                + (f" ... ({self.symbols.size} in all)" if self.symbols.size > 20 else "")
            )
        return self._by_symbol[where]

    # -- encoding

    def encode(self, symbols):
        """Encodes symbols as an MSB-first bit stream.

        Args:
            symbols: integers (any shape, read in C order), each with a code.

        Returns:
            (data, n_bits): the packed bits (the last byte zero-padded) and the
            number of meaningful bits, `sum(length of each symbol)`.

        Raises:
            ValueError: if a symbol has no code.

        Example:
            >>> HuffmanCode.from_lengths({0: 1, 1: 1}).encode([1, 0, 1])
            (b'\\xa0', 3)
        """
        flat = _as_symbol_array(symbols)
        if flat.size == 0:
            return b"", 0
        chunks, total = [], 0
        for start in range(0, flat.size, 1 << 20):
            ranks = self._ranks(flat[start:start + (1 << 20)])
            lengths = self.lengths[ranks]
            n_bits = int(lengths.sum())
            out_start = np.cumsum(lengths) - lengths
            source = np.repeat(self._pool_offsets[ranks] - out_start, lengths)
            source += np.arange(n_bits, dtype=np.int64)
            chunks.append(self._pool[source])
            total += n_bits
        bits = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        return np.packbits(bits).tobytes(), total

    # -- decoding

    def decode(self, data, count, n_bits=None):
        """Decodes `count` symbols from an MSB-first bit stream.

        Args:
            data: bytes from `encode`.
            count: number of symbols to decode.
            n_bits: if given, the stream must end exactly after this many bits
                (the `n_bits` `encode` returned); else it may end anywhere in
                `data`.

        Returns:
            An int64 array of `count` symbols.

        Raises:
            ValueError: if the stream ends before `count` symbols, holds a bit
                pattern that is no code, or does not end at `n_bits`.

        Example:
            >>> code = HuffmanCode.from_lengths({0: 1, 1: 1})
            >>> code.decode(b"\\xa0", 3, n_bits=3).tolist()
            [1, 0, 1]
        """
        count = _check_int("count", count, 0, np.iinfo(np.int64).max)
        buffer = np.frombuffer(bytes(data), dtype=np.uint8)
        available = 8 * buffer.size
        exact = n_bits is not None
        if exact:
            n_bits = _check_int("n_bits", n_bits, 0, np.iinfo(np.int64).max)
            if n_bits > available:
                raise ValueError(
                    f"`n_bits`={n_bits} but the data holds only {available} bits "
                    f"({buffer.size} bytes)."
                )
        else:
            n_bits = available
        if count == 0:
            if exact and n_bits:
                raise ValueError(f"No symbols to decode but `n_bits`={n_bits} is not 0.")
            return np.zeros(0, dtype=np.int64)
        if not self.symbols.size:
            raise ValueError("This code has no symbols, so it cannot decode any.")
        if self.max_length > _VECTOR_MAX_BITS:
            ranks, end = self._decode_python(buffer, count, n_bits)
        else:
            ranks, end = self._decode_vectorized(buffer, count, n_bits)
        if end is None:
            raise ValueError(
                f"The bit stream of {n_bits} bits does not hold {count} symbols: it ends "
                "early or holds a bit pattern that is no code (truncated or corrupt data)."
            )
        if exact and end != n_bits:
            raise ValueError(
                f"Decoding {count} symbols took {end} bits, but the stream has {n_bits}."
            )
        return self.symbols[ranks]

    def _windows(self, buffer, n_positions, width):
        """The `width` bits starting at each bit position (as unsigned ints)."""
        n_bytes = (n_positions + 7) // 8
        word_bytes = 4 if width + 7 <= 32 else 8
        padded = np.zeros(n_bytes + word_bytes, dtype=np.uint8)
        padded[: min(buffer.size, n_bytes)] = buffer[:n_bytes]
        words = np.ndarray(
            shape=(n_bytes,), dtype=f">u{word_bytes}", buffer=padded, strides=(1,)
        ).astype(np.uint32 if word_bytes == 4 else np.uint64)
        kind = words.dtype.type
        mask = kind((1 << width) - 1)
        out = np.empty((n_bytes, 8), dtype=words.dtype)
        for phase in range(8):
            out[:, phase] = (words >> kind(8 * word_bytes - width - phase)) & mask
        return out.reshape(-1)[:n_positions]

    def _decoder_arrays(self):
        if self._decoder is None:
            width = self.max_length
            spans = np.left_shift(1, width - self.lengths).astype(np.int64)
            if width <= _TABLE_MAX_BITS:
                ranks = np.full(1 << width, -1, dtype=np.int32)
                filled = int(spans.sum())
                ranks[:filled] = np.repeat(np.arange(self.symbols.size, dtype=np.int32), spans)
                table_lengths = np.zeros(1 << width, dtype=np.int64)
                table_lengths[:filled] = np.repeat(self.lengths, spans)
                self._decoder = ("table", ranks, table_lengths)
            else:
                starts = np.asarray(
                    [c << (width - n) for c, n in zip(self.codes, self.lengths.tolist())],
                    dtype=np.uint64,
                )
                ends = starts + spans.astype(np.uint64)
                self._decoder = ("search", starts, ends)
        return self._decoder

    def _ranks_at(self, windows):
        """(rank, length) of the code starting at each window; length 0 if none."""
        kind, first, second = self._decoder_arrays()
        if kind == "table":
            return first[windows], second[windows]
        # Canonical codes, left-justified to max_length bits, tile [0, 2**L) in
        # order: the code at a window is the first whose end exceeds it.
        ranks = np.searchsorted(second, windows, side="right")
        valid = ranks < self.symbols.size
        ranks = np.minimum(ranks, self.symbols.size - 1)
        lengths = np.where(valid, self.lengths[ranks], 0)
        return ranks, lengths

    def _decode_vectorized(self, buffer, count, n_bits):
        width = self.max_length
        windows = self._windows(buffer, n_bits, width)
        _, lengths = self._ranks_at(windows)
        index = np.int32 if n_bits + 2 < 2**31 else np.int64
        # nxt[p]: where the code starting at p ends. n_bits: the end (absorbing);
        # n_bits + 1: invalid (no code, or a code running past the end; absorbing).
        nxt = np.empty(n_bits + 2, dtype=index)
        steps = np.arange(n_bits, dtype=index) + lengths.astype(index)
        steps[(lengths == 0) | (steps > n_bits)] = n_bits + 1
        nxt[:n_bits] = steps
        nxt[n_bits], nxt[n_bits + 1] = n_bits, n_bits + 1
        del steps, lengths
        stride = 1 << _JUMP_LEVELS
        jump = nxt
        for _ in range(_JUMP_LEVELS):
            jump = jump[jump]
        blocks = -(-count // stride)
        starts = np.empty(blocks, dtype=index)
        position = 0
        for block in range(blocks):
            starts[block] = position
            position = jump[position]
        del jump
        positions = np.empty((blocks, stride), dtype=index)
        positions[:, 0] = starts
        for step in range(1, stride):
            positions[:, step] = nxt[positions[:, step - 1]]
        positions = positions.reshape(-1)[:count]
        last = int(positions[-1])
        if last >= n_bits:
            return None, None
        end = int(nxt[last])
        if end > n_bits:
            return None, None
        ranks, _ = self._ranks_at(windows[positions])
        return ranks, end

    def _decode_python(self, buffer, count, n_bits):
        bits = np.unpackbits(buffer)[:n_bits].tolist()
        by_length = {}
        for rank, (code, length) in enumerate(zip(self.codes, self.lengths.tolist())):
            if length not in by_length:
                by_length[length] = (code, rank, 0)
            first, start, n = by_length[length]
            by_length[length] = (first, start, n + 1)
        ranks = np.empty(count, dtype=np.int64)
        position = 0
        for i in range(count):
            code, length = 0, 0
            while True:
                if position >= n_bits or length >= self.max_length:
                    return None, None
                code = (code << 1) | bits[position]
                position += 1
                length += 1
                entry = by_length.get(length)
                if entry is not None and 0 <= code - entry[0] < entry[2]:
                    ranks[i] = entry[1] + code - entry[0]
                    break
        return ranks, position

    # -- serialization

    def to_bytes(self):
        """The code table: its symbols and lengths (canonical codes need nothing else).

        Layout: one mode byte, then for mode 0 (a symbol range) the range size and
        the first symbol as varints and one length byte per symbol of the range
        (0: no code); for mode 1 (a symbol list) the number of symbols, the first
        symbol and the gaps between sorted symbols as varints, then one length
        byte per symbol. The shorter mode is written. Varints are unsigned
        LEB128, symbols zigzag-coded.

        Returns:
            bytes.

        Raises:
            ValueError: if a code is longer than 255 bits.

        Example:
            >>> HuffmanCode.from_lengths({3: 1, 4: 1}).to_bytes()
            b'\\x00\\x02\\x06\\x01\\x01'
        """
        if self.lengths.size and self.max_length > 255:
            raise ValueError(
                f"Code tables store lengths up to 255 bits; this code has {self.max_length}."
            )
        symbols = self._sorted_symbols.tolist()
        lengths = self.lengths[self._by_symbol].tolist()
        listed = bytearray([1])
        _write_varint(listed, len(symbols))
        if symbols:
            _write_varint(listed, _zigzag(symbols[0]))
            for a, b in itertools.pairwise(symbols):
                _write_varint(listed, b - a - 1)
        listed += bytes(lengths)
        if not symbols:
            return bytes(listed)
        span = symbols[-1] - symbols[0] + 1
        if span > len(listed) + 16:
            return bytes(listed)
        ranged = bytearray([0])
        _write_varint(ranged, span)
        _write_varint(ranged, _zigzag(symbols[0]))
        table = bytearray(span)
        for symbol, length in zip(symbols, lengths):
            table[symbol - symbols[0]] = length
        ranged += table
        return bytes(ranged if len(ranged) <= len(listed) else listed)

    @classmethod
    def _read(cls, data, offset=0):
        """Parses a code table at `offset`; returns (code, offset after it)."""
        if offset >= len(data):
            raise ValueError("Huffman code table is empty.")
        mode = data[offset]
        offset += 1
        if mode not in (0, 1):
            raise ValueError(f"Huffman code table has mode {mode}; expected 0 or 1.")
        n, offset = _read_varint(data, offset)
        if n == 0:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64)), offset
        first, offset = _read_varint(data, offset)
        first = _unzigzag(first)
        if mode == 1:
            symbols = [first]
            for _ in range(n - 1):
                gap, offset = _read_varint(data, offset)
                symbols.append(symbols[-1] + gap + 1)
        if offset + n > len(data):
            raise ValueError(
                f"Huffman code table needs {n} length bytes, only {len(data) - offset} left."
            )
        lengths = np.frombuffer(bytes(data[offset:offset + n]), dtype=np.uint8).astype(np.int64)
        offset += n
        if mode == 0:
            present = np.flatnonzero(lengths)
            symbols, lengths = present + first, lengths[present]
        else:
            if np.any(lengths == 0):
                raise ValueError("Huffman code table lists a symbol with length 0.")
        return cls(np.asarray(symbols, dtype=np.int64), lengths), offset

    @classmethod
    def from_bytes(cls, data):
        """The code stored by `to_bytes`.

        Args:
            data: bytes from `to_bytes` (nothing after them).

        Returns:
            A `HuffmanCode`.

        Raises:
            ValueError: for a malformed table.

        Example:
            >>> code = HuffmanCode.from_symbols([1, 1, 2])
            >>> HuffmanCode.from_bytes(code.to_bytes()).codes == code.codes
            True
        """
        code, offset = cls._read(bytes(data), 0)
        if offset != len(data):
            raise ValueError(
                f"Huffman code table is {offset} bytes but {len(data)} bytes were given."
            )
        return code


# --------------------------------------------------------------------------- sparse


@dataclasses.dataclass(frozen=True, eq=False)
class SparseArray:
    """An array in the sparse format of Deep Compression (sec. 2, Figure 2).

    Stored entry i sits `diffs[i] + 1` positions after stored entry i-1 (the
    first after position -1) in the array flattened in `order`. Each
    `diffs[i]` is in [0, 2**index_bits - 1], i.e. a relative index difference
    in [1, 2**index_bits]. A gap larger than 2**index_bits is bridged by filler
    entries with value 0 placed 2**index_bits positions after the previous
    entry.

    Attributes:
        values: 1-D array of the stored entries (fillers are 0), dtype of the
            source array.
        diffs: 1-D int64 array of the stored index differences minus one.
        shape: shape of the dense array.
        order: "C" (row-major, CSR-like) or "F" (column-major, CSC-like).
        index_bits: bits of a stored index difference.
    """

    values: np.ndarray
    diffs: np.ndarray
    shape: tuple
    order: str
    index_bits: int

    @property
    def size(self):
        """Elements of the dense array."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def num_entries(self):
        """Stored entries, fillers included."""
        return int(self.values.size)

    @property
    def num_fillers(self):
        """Stored filler zeros (entries whose value is +0)."""
        return int(self.values.size - np.count_nonzero(_nonzero_mask(self.values)))

    @property
    def num_nonzero(self):
        """Non-zero elements of the dense array."""
        return self.num_entries - self.num_fillers

    def positions(self):
        """Flat positions (in `order`) of the stored entries, an int64 array."""
        return np.cumsum(self.diffs.astype(np.int64) + 1) - 1

    def to_dense(self):
        """The dense array (`decode_sparse(self)`)."""
        return decode_sparse(self)


def encode_sparse(array, index_bits=5, order="C"):
    """Stores an array as its non-zero entries and relative index differences.

    The paper's sparse format (Deep Compression, sec. 2): the array is flattened
    in `order` ("C": row-major, the CSR-like layout; "F": column-major, the
    CSC-like layout), and every non-zero element is stored with its distance to
    the previous stored element. Distances are stored minus one in `index_bits`
    bits (the paper uses 8 bits for conv and 5 bits for fc layers); "when we
    need an index difference larger than the bound, we use the zero padding
    solution": a filler zero is stored 2**index_bits positions after the
    previous entry, as often as needed. Zero means all bits zero: -0.0 is
    stored as a value (so decoding is bit-exact); NaN and inf are values too.

    Args:
        array: a numeric array (any shape).
        index_bits: bits per stored index difference, 1..16.
        order: "C" or "F".

    Returns:
        A `SparseArray`.

    Raises:
        ValueError: for `index_bits` outside 1..16, an unknown `order`, or a
            non-numeric array.

    Example:
        >>> s = encode_sparse(np.array([0, 3.0] + [0] * 9 + [7.0]), index_bits=3)
        >>> s.values.tolist(), s.diffs.tolist()
        ([3.0, 0.0, 7.0], [1, 7, 1])
    """
    index_bits = _check_index_bits(index_bits)
    order = _check_order(order)
    array = np.asarray(array)
    _check_numeric(array)
    flat = np.ascontiguousarray(array.ravel(order=order))
    nonzero = np.flatnonzero(_nonzero_mask(flat))
    bound = 1 << index_bits
    gaps = np.diff(nonzero, prepend=-1)
    fillers = (gaps - 1) // bound
    repeats = fillers + 1
    total = int(repeats.sum())
    diffs = np.full(total, bound - 1, dtype=np.int64)
    values = np.zeros(total, dtype=array.dtype)
    last = np.cumsum(repeats) - 1
    diffs[last] = gaps - 1 - fillers * bound
    values[last] = flat[nonzero]
    return SparseArray(values=values, diffs=diffs, shape=tuple(array.shape), order=order,
                       index_bits=index_bits)


def decode_sparse(sparse):
    """The dense array of a `SparseArray` (inverse of `encode_sparse`), bit-exact.

    Args:
        sparse: a `SparseArray`.

    Returns:
        A new array of `sparse.shape` and the dtype of `sparse.values`.

    Raises:
        ValueError: for an invalid `order` or `index_bits`, differences outside
            [0, 2**index_bits - 1], mismatched lengths, or entries past the end.

    Example:
        >>> decode_sparse(encode_sparse(np.eye(3, dtype="float32"))).tolist()
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    if not isinstance(sparse, SparseArray):
        raise ValueError(  # noqa: TRY004
            f"`sparse` must be a SparseArray. Received: {type(sparse).__name__}"
        )
    index_bits = _check_index_bits(sparse.index_bits)
    order = _check_order(sparse.order)
    values = np.asarray(sparse.values).reshape(-1)
    diffs = np.asarray(sparse.diffs).reshape(-1)
    if values.size != diffs.size:
        raise ValueError(
            f"A SparseArray needs one index difference per value: got {values.size} values "
            f"and {diffs.size} differences."
        )
    if diffs.size and (diffs.dtype.kind not in "iu" or diffs.min() < 0
                       or diffs.max() >= (1 << index_bits)):
        raise ValueError(
            f"Stored index differences must be integers in [0, {(1 << index_bits) - 1}] "
            f"for index_bits={index_bits}. Received values in "
            f"[{diffs.min()}, {diffs.max()}]"
        )
    size = int(np.prod(sparse.shape, dtype=np.int64))
    positions = np.cumsum(diffs.astype(np.int64) + 1) - 1
    if positions.size and positions[-1] >= size:
        raise ValueError(
            f"The stored entries reach position {int(positions[-1])} of an array with "
            f"only {size} elements (shape {tuple(sparse.shape)})."
        )
    flat = np.zeros(size, dtype=values.dtype)
    flat[positions] = values
    return flat.reshape(tuple(sparse.shape), order=order)


# --------------------------------------------------------------------------- weight sharing


def quantize_to_codebook(array, max_size=None):
    """Splits an array with few distinct values into a codebook and indices.

    The storage of weight sharing (Deep Compression, sec. 3): entry 0 of the
    codebook is zero (so pruned weights and filler zeros are index 0), and the
    other entries are the distinct non-zero values, sorted by value (values
    compare by their bits, so -0.0 and NaN are entries of their own).
    `codebook[indices]` is bit-identical to `array`.

    Args:
        array: a numeric array (any shape) whose elements are 1, 2, 4 or 8
            bytes.
        max_size: if given, the largest allowed codebook size (entry 0
            included).

    Returns:
        (codebook, indices): a 1-D array of the dtype of `array`, and an int64
        array of the shape of `array`.

    Raises:
        ValueError: for a non-numeric array, an element size the bit-exact
            comparison does not support, or more than `max_size` entries.

    Example:
        >>> codebook, indices = quantize_to_codebook(np.array([0.5, 0, -1, 0.5], "float32"))
        >>> codebook.tolist(), indices.tolist()
        ([0.0, -1.0, 0.5], [2, 0, 1, 2])
    """
    array = np.asarray(array)
    _check_numeric(array)
    if array.dtype.itemsize not in (1, 2, 4, 8):
        raise ValueError(
            "quantize_to_codebook supports elements of 1, 2, 4 or 8 bytes. "
            f"Received dtype {array.dtype} ({array.dtype.itemsize} bytes)"
        )
    flat = np.ascontiguousarray(array.reshape(-1))
    bits = _bit_view(flat)
    unique_bits, inverse = np.unique(bits, return_inverse=True)
    has_zero = unique_bits.size > 0 and unique_bits[0] == 0
    nonzero_bits = unique_bits[1:] if has_zero else unique_bits
    values = nonzero_bits.view(array.dtype)
    if array.dtype.kind in "iu":
        key = values
    elif array.dtype.kind == "f" or array.dtype.name == "bfloat16":
        key = values.astype(np.float64)
    else:
        key = nonzero_bits
    order = np.lexsort((nonzero_bits, key))
    size = values.size + 1
    if max_size is not None and size > max_size:
        raise ValueError(
            f"The array has {values.size} distinct non-zero values, so its codebook "
            f"would have {size} entries; at most max_size={max_size} are allowed."
        )
    codebook = np.zeros(size, dtype=array.dtype)
    codebook[1:] = values[order]
    position = np.empty(values.size, dtype=np.int64)
    position[order] = np.arange(1, size, dtype=np.int64)
    mapping = np.concatenate([[0], position]) if has_zero else position
    indices = mapping[inverse.reshape(-1)].reshape(array.shape)
    return codebook, indices


# --------------------------------------------------------------------------- streams


def _pack_fixed(values, width):
    if width == 0 or values.size == 0:
        return b""
    out = []
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
    for start in range(0, values.size, 1 << 18):
        chunk = values[start:start + (1 << 18)].astype(np.uint64)
        out.append(((chunk[:, None] >> shifts) & np.uint64(1)).astype(np.uint8).reshape(-1))
    bits = out[0] if len(out) == 1 else np.concatenate(out)
    return np.packbits(bits).tobytes()


def _unpack_fixed(data, count, width):
    expected = (count * width + 7) // 8
    if len(data) != expected:
        raise ValueError(
            f"A fixed-width stream of {count} symbols x {width} bits needs {expected} bytes; "
            f"got {len(data)}."
        )
    if width == 0 or count == 0:
        return np.zeros(count, dtype=np.int64)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[: count * width]
    weights = np.left_shift(1, np.arange(width - 1, -1, -1)).astype(np.int64)
    return bits.reshape(count, width).astype(np.int64) @ weights


@dataclasses.dataclass
class _Stream:
    """A planned symbol stream: fixed-width or Huffman, with its exact size."""

    symbols: np.ndarray
    width: int
    code: object = None
    bits: int = 0
    table: bytes = b""

    @property
    def coding(self):
        return "fixed" if self.code is None else "huffman"

    @property
    def nbytes(self):
        return len(self.table) + (self.bits + 7) // 8

    def payload(self):
        if self.code is None:
            return _pack_fixed(self.symbols, self.width)
        data, n_bits = self.code.encode(self.symbols)
        assert n_bits == self.bits
        return self.table + data

    def meta(self):
        return {"coding": self.coding, "count": int(self.symbols.size), "bits": int(self.bits),
                "width": int(self.width)}


def _plan_stream(symbols, width, huffman):
    """The smaller of the fixed-width and (if allowed) Huffman coding of symbols."""
    fixed = _Stream(symbols=symbols, width=width, bits=int(symbols.size) * width)
    if not huffman or symbols.size == 0:
        return fixed
    frequencies = np.bincount(symbols)
    lengths = huffman_code_lengths(frequencies)
    bits = int((frequencies * lengths).sum())
    if (bits + 7) // 8 >= fixed.nbytes:
        return fixed
    code = HuffmanCode.from_lengths(lengths)
    coded = _Stream(symbols=symbols, width=width, code=code, bits=bits, table=code.to_bytes())
    return coded if coded.nbytes < fixed.nbytes else fixed


def _decode_stream(meta, payload):
    count, bits, width = int(meta["count"]), int(meta["bits"]), int(meta["width"])
    if meta["coding"] == "fixed":
        return _unpack_fixed(payload, count, width)
    if meta["coding"] != "huffman":
        raise ValueError(f"Unknown stream coding {meta['coding']!r}.")
    code, offset = HuffmanCode._read(payload, 0)
    body = payload[offset:]
    if len(body) != (bits + 7) // 8:
        raise ValueError(
            f"A Huffman stream of {bits} bits needs {(bits + 7) // 8} bytes after its "
            f"code table; got {len(body)}."
        )
    return code.decode(body, count, n_bits=bits)


# --------------------------------------------------------------------------- per-weight plan


def default_index_bits(shape):
    """Bits per sparse index difference by default: 8 for conv kernels, 5 otherwise.

    The paper's choice (Deep Compression, sec. 2): 8 bits for conv layers and 5
    bits for fc layers. Kernels of rank >= 3 (Conv1D/2D/3D, depthwise) count as
    conv, anything else (Dense kernels, biases, ...) as fc.

    Args:
        shape: the array's shape.

    Returns:
        8 or 5.
    """
    return 8 if len(shape) >= 3 else 5


def _section_overhead(name):
    return 2 + len(name.encode("utf-8")) + 8 + 4


@dataclasses.dataclass
class _Candidate:
    encoding: str
    parts: dict  # part -> (nbytes, payload function)
    meta: dict
    stats: dict

    def cost(self, names):
        return sum(n + _section_overhead(names[p]) for p, (n, _) in self.parts.items())


def _plan_weight(array, path, names_for, index_bits, huffman):
    """Chooses and describes the smallest encoding of one variable."""
    array = np.ascontiguousarray(np.asarray(array))
    _check_numeric(array, f"weight {path}")
    dtype = array.dtype
    itemsize = dtype.itemsize
    size = int(array.size)
    flat = array.reshape(-1)
    nonzero = int(np.count_nonzero(_nonzero_mask(flat)))
    bits = index_bits if index_bits is not None else default_index_bits(array.shape)
    base = {"path": path, "shape": list(array.shape), "dtype": dtype.name}
    stats = {"path": path, "shape": tuple(array.shape), "dtype": dtype.name, "size": size,
             "nonzero": nonzero, "entries": 0, "fillers": 0, "codebook_size": None,
             "index_bits": None, "value_bits": 0, "value_coding": None, "value_stream_bits": 0,
             "offset_coding": None, "offset_stream_bits": 0, "codebook_bits": 0,
             "table_bits": 0}
    if nonzero == 0:
        return _Candidate("zeros", {}, {**base, "encoding": "zeros"}, dict(stats, encoding="zeros"))

    candidates = []
    raw_bytes = size * itemsize
    candidates.append(_Candidate(
        "raw", {"raw": (raw_bytes, lambda: _le_bytes(flat))}, dict(base),
        dict(stats, encoding="raw", entries=size, value_bits=8 * itemsize,
             value_coding="raw", value_stream_bits=8 * raw_bytes),
    ))

    bit_exact = itemsize in (1, 2, 4, 8)
    if bit_exact:
        sparse = encode_sparse(array, index_bits=bits, order="C")
        entries = sparse.num_entries
        offsets = _plan_stream(sparse.diffs, bits, huffman)
        sparse_meta = dict(base, index_bits=bits, order="C", entries=entries)
        sparse_stats = dict(stats, entries=entries, fillers=entries - nonzero, index_bits=bits,
                            offset_coding=offsets.coding, offset_stream_bits=offsets.bits,
                            table_bits=8 * len(offsets.table))
        values = sparse.values
        candidates.append(_Candidate(
            "sparse",
            {"values": (entries * itemsize, lambda: _le_bytes(values)),
             "offsets": (offsets.nbytes, offsets.payload)},
            dict(sparse_meta, streams={"offsets": offsets.meta()}),
            dict(sparse_stats, encoding="sparse", value_bits=8 * itemsize, value_coding="raw",
                 value_stream_bits=8 * entries * itemsize),
        ))

        best = min(c.cost(names_for(c)) for c in candidates)
        distinct = np.unique(_bit_view(flat)).size - (1 if nonzero < size else 0)
        codebook_size = distinct + 1
        if codebook_size <= MAX_CODEBOOK_SIZE and distinct * itemsize < best:
            codebook, indices = quantize_to_codebook(array)
            codebook_payload = codebook[1:]
            width = (codebook_size - 1).bit_length()
            cb_part = ((codebook_size - 1) * itemsize, lambda: _le_bytes(codebook_payload))
            cb_stats = {"codebook_size": codebook_size,
                        "codebook_bits": 8 * (codebook_size - 1) * itemsize, "value_bits": width}
            dense_indices = _plan_stream(indices.reshape(-1), width, huffman)
            candidates.append(_Candidate(
                "codebook",
                {"codebook": cb_part, "indices": (dense_indices.nbytes, dense_indices.payload)},
                dict(base, codebook_size=codebook_size,
                     streams={"indices": dense_indices.meta()}),
                dict(stats, encoding="codebook", entries=size, value_coding=dense_indices.coding,
                     value_stream_bits=dense_indices.bits,
                     table_bits=8 * len(dense_indices.table), **cb_stats),
            ))
            sparse_indices = encode_sparse(indices, index_bits=bits, order="C").values
            sparse_stream = _plan_stream(sparse_indices, width, huffman)
            candidates.append(_Candidate(
                "sparse+codebook",
                {"codebook": cb_part,
                 "indices": (sparse_stream.nbytes, sparse_stream.payload),
                 "offsets": (offsets.nbytes, offsets.payload)},
                dict(sparse_meta, codebook_size=codebook_size,
                     streams={"indices": sparse_stream.meta(), "offsets": offsets.meta()}),
                dict(sparse_stats, encoding="sparse+codebook", value_coding=sparse_stream.coding,
                     value_stream_bits=sparse_stream.bits,
                     table_bits=8 * (len(offsets.table) + len(sparse_stream.table)), **cb_stats),
            ))
    chosen = min(candidates, key=lambda c: c.cost(names_for(c)))  # first of equals
    chosen.meta = {**base, "encoding": chosen.encoding, **chosen.meta}
    return chosen


def _layer_name(path, model_name):
    """The layer part of a variable path, without the model's own name in front."""
    if path.startswith(model_name + "/") and path.count("/") >= 2:
        path = path[len(model_name) + 1:]
    return path.rsplit("/", 1)[0] if "/" in path else path


def _section_names(paths):
    """The section-name stem of each variable path, unique even for repeated paths."""
    seen = {}
    for path in paths:
        seen[path] = seen.get(path, 0) + 1
    result = []
    for i, path in enumerate(paths):
        stem = f"weights/{path}" if seen[path] == 1 else f"weights/{path}#{i}"
        result.append(stem)
    return result


# --------------------------------------------------------------------------- models


def _walk_layers(layer):
    yield layer
    for child in getattr(layer, "layers", None) or []:
        yield from _walk_layers(child)
    inner = getattr(layer, "layer", None)
    if isinstance(inner, keras.layers.Layer):
        yield from _walk_layers(inner)


def _strip_wrappers(model):
    """The model without pruning / clustering wrappers (plain models: unchanged)."""
    names = {type(layer).__name__ for layer in _walk_layers(model)}
    if "PruneLowMagnitude" in names:
        from tfcompress.pruning import strip_pruning

        model = strip_pruning(model)
    if "ClusterWeights" in names:
        from tfcompress.clustering import strip_clustering

        model = strip_clustering(model)
    return model


def _check_model(model, what):
    if not isinstance(model, keras.Model):
        raise ValueError(  # noqa: TRY004
            f"{what} needs a keras.Model (functional or Sequential). "
            f"Received: {type(model).__name__}"
        )


@dataclasses.dataclass
class _Plan:
    model: keras.Model
    weights: list  # of _Candidate
    stems: list
    index_bits: object
    huffman: bool


def _plan_model(model, index_bits, huffman):
    _check_model(model, "Compression")
    if index_bits is not None:
        index_bits = _check_index_bits(index_bits)
    huffman = _check_huffman(huffman)
    model = _strip_wrappers(model)
    variables = list(model.weights)
    arrays = model.get_weights()
    paths = [getattr(v, "path", None) or v.name for v in variables]
    stems = _section_names(paths)
    plans = []
    for array, path, stem in zip(arrays, paths, stems):
        def names_for(candidate, stem=stem):
            return {part: f"{stem}:{part}" for part in candidate.parts}

        plan = _plan_weight(array, path, names_for, index_bits, huffman)
        plan.meta["sections"] = names_for(plan)
        plan.stats["layer"] = _layer_name(path, model.name)
        plan.stats["payload_bytes"] = sum(n for n, _ in plan.parts.values())
        plan.stats["section_bytes"] = plan.cost(names_for(plan))
        plans.append(plan)
    return _Plan(model=model, weights=plans, stems=stems, index_bits=index_bits, huffman=huffman)


def _section(name, payload):
    name_bytes = name.encode("utf-8")
    head = struct.pack("<H", len(name_bytes)) + name_bytes + struct.pack("<Q", len(payload))
    crc = zlib.crc32(payload, zlib.crc32(head))
    return head + payload + struct.pack("<I", crc)


def _model_config(model):
    try:
        return model.to_json()
    except (TypeError, ValueError, NotImplementedError, AttributeError) as error:
        raise ValueError(
            f"Model {model.name!r} cannot be serialized with model.to_json(), so it cannot be "
            f"stored in a container (use a functional or Sequential model of serializable "
            f"layers): {error}"
        ) from error


def _assemble(plan):
    """The bytes of the container for a planned model."""
    import tfcompress

    model = plan.model
    header = {
        "format": "tfcompress-container",
        "version": FORMAT_VERSION,
        "tfcompress_version": getattr(tfcompress, "__version__", "unknown"),
        "keras_version": keras.__version__,
        "model_name": model.name,
        "model_class": type(model).__name__,
        "huffman": plan.huffman,
        "index_bits": plan.index_bits,
        "weights": [w.meta for w in plan.weights],
    }
    config = _model_config(model)
    out = [MAGIC, struct.pack("<H", FORMAT_VERSION),
           _section("header", zlib.compress(
               json.dumps(header, separators=(",", ":")).encode("utf-8"), 9)),
           _section("model_config", zlib.compress(config.encode("utf-8"), 9))]
    for weight in plan.weights:
        for part, (nbytes, make) in weight.parts.items():
            payload = make()
            if len(payload) != nbytes:  # the size estimate is the size written
                raise AssertionError(
                    f"{weight.meta['sections'][part]}: planned {nbytes} bytes, "
                    f"encoded {len(payload)}"
                )
            out.append(_section(weight.meta["sections"][part], payload))
    out.append(_section("end", b""))
    return b"".join(out)


def save_compressed(model, path, index_bits=None, huffman=True):
    """Writes a Keras model to a Deep Compression container (layout: module docstring).

    Pruning and clustering wrappers are stripped first. Every variable of
    `model.weights` is stored in the smallest of the encodings "zeros", "raw",
    "codebook" (weight sharing, sec. 3), "sparse" (sec. 2) and
    "sparse+codebook" (sec. 2-3), with the codebook indices and the sparse index
    differences Huffman coded (sec. 4) where that is smaller. The model
    architecture is `model.to_json()`. Nothing is written unless the whole file
    can be: it is written to a temporary file renamed into place, so a failure
    leaves no file (or the previous file) behind. Optimizer state and compile
    settings are not stored.

    Args:
        model: a functional or Sequential `keras.Model` (tfcompress layers
            included), possibly with `PruneLowMagnitude` / `ClusterWeights`
            wrappers.
        path: destination file (conventionally `.tfcz`).
        index_bits: bits per sparse index difference, 1..16; None: 8 for conv
            kernels and 5 for everything else, as in the paper.
        huffman: Huffman-code the index and offset streams (where smaller).

    Returns:
        The `CompressionReport` of what was written (its `total["container_bytes"]`
        is the file size).

    Raises:
        ValueError: for invalid arguments or a model that cannot be serialized.
        OSError: if the file cannot be written (e.g. a missing directory).

    Example:
        >>> report = save_compressed(model, "lenet.tfcz")
        >>> restored = load_compressed("lenet.tfcz")
    """
    plan = _plan_model(model, index_bits, huffman)
    data = _assemble(plan)
    write_atomic(os.fspath(path), data)
    return _report(plan, container_bytes=len(data))


def _parse(data, source):
    """(version, [(name, payload, offset)]) of a container, every CRC32 checked."""
    if len(data) < 6 or data[:4] != MAGIC:
        raise ContainerError(
            f"{source} is not a tfcompress container: it starts with {bytes(data[:4])!r}, "
            f"expected the magic {MAGIC!r}."
        )
    (version,) = struct.unpack_from("<H", data, 4)
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersionError(
            f"{source} is a tfcompress container of format version {version}; this "
            f"tfcompress reads versions {', '.join(map(str, SUPPORTED_VERSIONS))}."
        )
    offset, sections, total = 6, [], len(data)

    def need(n, what, name=None):
        available = total - offset
        if n > available:
            where = f"section {name!r}" if name is not None else f"section #{len(sections)}"
            raise TruncatedContainerError(
                f"{source} is truncated (or corrupt): reading the {what} of {where} at byte "
                f"{offset} needs {n} bytes, only {available} are available."
            )

    while True:
        if offset == total:
            last = sections[-1][0] if sections else "none"
            raise TruncatedContainerError(
                f"{source} is truncated: it ends after {len(sections)} sections (the last "
                f"is {last!r}) without the 'end' section."
            )
        start = offset
        need(2, "name length")
        (name_length,) = struct.unpack_from("<H", data, offset)
        offset += 2
        need(name_length, "name")
        name = bytes(data[offset:offset + name_length]).decode("utf-8", errors="replace")
        offset += name_length
        need(8, "payload length", name)
        (length,) = struct.unpack_from("<Q", data, offset)
        offset += 8
        need(length, "payload", name)
        payload = bytes(data[offset:offset + length])
        offset += length
        need(4, "CRC32", name)
        (stored,) = struct.unpack_from("<I", data, offset)
        computed = zlib.crc32(bytes(data[start:offset]))
        if stored != computed:
            raise ChecksumError(
                f"{source}: checksum mismatch in section {name!r} (#{len(sections)}, at byte "
                f"{start}): stored CRC32 {stored:#010x}, computed {computed:#010x}; the file "
                "is corrupt."
            )
        offset += 4
        sections.append((name, payload, start))
        if name == "end":
            if length:
                raise ContainerError(f"{source}: the 'end' section must be empty.")
            if offset != total:
                raise ContainerError(
                    f"{source}: {total - offset} unexpected bytes after the 'end' section."
                )
            return version, sections


def _read_container(path):
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    version, sections = _parse(data, path)
    by_name = {}
    for name, payload, _ in sections:
        if name in by_name:
            raise ContainerError(f"{path}: section {name!r} appears twice.")
        by_name[name] = payload
    for required in ("header", "model_config"):
        if required not in by_name:
            raise ContainerError(f"{path}: the {required!r} section is missing.")
    try:
        header = json.loads(zlib.decompress(by_name["header"]).decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ContainerError(
            f"{path}: the header is not zlib-compressed JSON: {error}"
        ) from error
    if not isinstance(header, dict) or not isinstance(header.get("weights"), list):
        raise ContainerError(f"{path}: the header has no list of weights.")
    return data, version, sections, by_name, header


def container_info(path):
    """What a container holds, with every section's CRC32 checked.

    Args:
        path: a file written by `save_compressed`.

    Returns:
        A dict: "path", "bytes" (file size), "version", "header" (the parsed
        JSON header), "sections" (a list of {"name", "bytes" (payload size),
        "offset" (of the section record)}) and "payload_bytes" (sum of the
        weight sections' payloads).

    Raises:
        ContainerError (a ValueError): not a container, an unsupported version
            (`UnsupportedVersionError`), a truncated file
            (`TruncatedContainerError`), a checksum mismatch (`ChecksumError`).
        OSError: if the file cannot be read.

    Example:
        >>> info = container_info("lenet.tfcz")
        >>> [s["name"] for s in info["sections"]][:2]
        ['header', 'model_config']
    """
    data, version, sections, _, header = _read_container(path)
    listed = [{"name": name, "bytes": len(payload), "offset": start}
              for name, payload, start in sections]
    return {
        "path": os.fspath(path),
        "bytes": len(data),
        "version": version,
        "header": header,
        "sections": listed,
        "payload_bytes": sum(s["bytes"] for s in listed if s["name"].startswith("weights/")),
    }


def _decode_weight(meta, by_name):
    encoding = meta["encoding"]
    shape = tuple(int(d) for d in meta["shape"])
    dtype = _resolve_dtype(meta["dtype"])
    size = int(np.prod(shape, dtype=np.int64))
    names = meta.get("sections", {})

    def payload(part):
        name = names.get(part)
        if name not in by_name:
            raise ValueError(f"its section {name or part!r} is missing")
        return by_name[name]

    def raw(part, count):
        data = payload(part)
        if len(data) != count * dtype.itemsize:
            raise ValueError(
                f"section {names[part]!r} holds {len(data)} bytes, expected "
                f"{count} x {dtype.itemsize}"
            )
        return _from_le_bytes(data, dtype, count)

    if encoding == "zeros":
        return np.zeros(shape, dtype=dtype)
    if encoding == "raw":
        return raw("raw", size).reshape(shape)
    if encoding not in ("codebook", "sparse", "sparse+codebook"):
        raise ValueError(f"unknown encoding {encoding!r}")
    if "codebook" in encoding:
        codebook_size = int(meta["codebook_size"])
        codebook = np.concatenate([np.zeros(1, dtype), raw("codebook", codebook_size - 1)])
        indices = _decode_stream(meta["streams"]["indices"], payload("indices"))
        if indices.size and (indices.min() < 0 or indices.max() >= codebook_size):
            raise ValueError(f"an index is outside the codebook of {codebook_size} entries")
    if encoding == "codebook":
        if indices.size != size:
            raise ValueError(f"{indices.size} indices for {size} elements")
        return codebook[indices].reshape(shape)
    entries = int(meta["entries"])
    values = codebook[indices] if encoding == "sparse+codebook" else raw("values", entries)
    diffs = _decode_stream(meta["streams"]["offsets"], payload("offsets"))
    if values.size != entries or diffs.size != entries:
        raise ValueError(f"{values.size} values and {diffs.size} offsets for {entries} entries")
    sparse = SparseArray(values=values, diffs=diffs, shape=shape, order=meta["order"],
                         index_bits=int(meta["index_bits"]))
    return decode_sparse(sparse)


def load_compressed(path):
    """Reads a model written by `save_compressed`, weights bit-identical.

    Checks the magic, the format version and the CRC32 of every section, then
    rebuilds the architecture with `keras.models.model_from_json` (tfcompress
    layers are registered serializable) and sets every weight.

    Args:
        path: a container file.

    Returns:
        A `keras.Model` (not compiled).

    Raises:
        ContainerError (a ValueError): the file is not a container, has an
            unsupported version (`UnsupportedVersionError`), is truncated
            (`TruncatedContainerError`), has a section whose CRC32 does not
            match (`ChecksumError`), or does not fit the model it describes.
        OSError: if the file cannot be read.

    Example:
        >>> model = load_compressed("lenet.tfcz")
    """
    path = os.fspath(path)
    _, _, _, by_name, header = _read_container(path)
    import tfcompress.layers  # noqa: F401  (registers the tfcompress layers)

    try:
        config = zlib.decompress(by_name["model_config"]).decode("utf-8")
    except (zlib.error, UnicodeDecodeError) as error:
        raise ContainerError(f"{path}: the model config cannot be decompressed: {error}") from error
    model = keras.models.model_from_json(config)
    metas = header["weights"]
    variables = list(model.weights)
    if len(variables) != len(metas):
        raise ContainerError(
            f"{path}: the container holds {len(metas)} weights but the model it describes "
            f"has {len(variables)}."
        )
    arrays = []
    for i, (meta, variable) in enumerate(zip(metas, variables)):
        label = meta.get("path", f"#{i}") if isinstance(meta, dict) else f"#{i}"
        try:
            array = _decode_weight(meta, by_name)
        except (ValueError, KeyError, TypeError, IndexError) as error:
            raise ContainerError(f"{path}: weight {label!r}: {error}") from error
        if tuple(array.shape) != tuple(variable.shape):
            raise ContainerError(
                f"{path}: weight {label!r} has shape {tuple(array.shape)} but the model's "
                f"variable {variable.path!r} has shape {tuple(variable.shape)}."
            )
        arrays.append(array)
    model.set_weights(arrays)
    return model


# --------------------------------------------------------------------------- report


@dataclasses.dataclass
class CompressionReport:
    """Per-layer storage of a model in the container (Deep Compression, Tables 2-3).

    Attributes:
        rows: one dict per weight-bearing layer (variables grouped by the layer
            part of their path), in model order:
            "layer"; "weights" (elements of all its variables); "nonzero";
            "density" (non-zero fraction); "weight_bits" (bits per stored
            value before Huffman coding: ceil(log2(codebook size)), averaged
            over the stored entries, fillers included, of the layer's
            variables that have a codebook; for a layer without any, the
            dtype's bits of its raw variables);
            "weight_bits_huffman" (the same, as written: after Huffman coding
            where it was used); "offset_bits" / "offset_bits_huffman" (bits
            per sparse index difference before / after Huffman coding; None if
            no variable of the layer is sparse); "codebook_bits"; "table_bits"
            (Huffman code tables); "total_bits" (8 x the layer's payload
            bytes); "ratio" (32-bit dense bits / total_bits; None if 0 bits);
            "encodings" ({variable path: encoding}).
        arrays: one dict per variable with the details the rows sum.
        total: "params", "nonzero", "density", "original_bytes" (4 bytes per
            parameter), "payload_bytes" (all weight sections' payloads),
            "ratio" (original / payload), "container_bytes" (the whole file
            `save_compressed` writes: payloads, header, model config, section
            framing and checksums) and "container_ratio".
        index_bits: the `index_bits` argument (None: 8 conv / 5 other).
        huffman: whether Huffman coding was allowed.
    """

    rows: list
    arrays: list
    total: dict
    index_bits: object = None
    huffman: bool = True

    def to_dict(self):
        """A JSON-serializable dict: "rows", "arrays", "total", "index_bits", "huffman"."""
        arrays = [dict(a, shape=list(a["shape"])) for a in self.arrays]
        return {"rows": [dict(r) for r in self.rows], "arrays": arrays,
                "total": dict(self.total), "index_bits": self.index_bits,
                "huffman": self.huffman}

    def __str__(self):
        def number(value, fmt):
            return "-" if value is None else format(value, fmt)

        header = ("Layer", "Weights", "Density", "Wt bits", "Wt bits(H)", "Idx bits",
                  "Idx bits(H)", "Codebook", "Bytes", "Ratio")
        lines = [header]
        for row in self.rows:
            lines.append((
                row["layer"], f"{row['weights']:,}", f"{100 * row['density']:.1f}%",
                number(row["weight_bits"], ".2f"), number(row["weight_bits_huffman"], ".2f"),
                number(row["offset_bits"], ".2f"), number(row["offset_bits_huffman"], ".2f"),
                f"{row['codebook_bits']:,} b", f"{row['total_bits'] // 8:,}",
                number(row["ratio"], ".1f") + ("x" if row["ratio"] is not None else ""),
            ))
        t = self.total
        lines.append((
            "total", f"{t['params']:,}", f"{100 * t['density']:.1f}%", "", "", "", "", "",
            f"{t['payload_bytes']:,}", number(t["ratio"], ".1f") + ("x" if t["ratio"] else ""),
        ))
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        text = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                          for i, (cell, w) in enumerate(zip(line, widths))).rstrip()
                for line in lines]
        text.insert(1, "-" * len(text[0]))
        text.insert(len(text) - 1, "-" * len(text[0]))
        summary = (f"32-bit dense: {t['original_bytes']:,} bytes; weight payload: "
                   f"{t['payload_bytes']:,} bytes")
        if t.get("container_bytes") is not None:
            summary += (f"; container file: {t['container_bytes']:,} bytes "
                        f"({number(t['container_ratio'], '.1f')}x)")
        text.append(summary)
        return "\n".join(text)


def _ratio(numerator, denominator):
    return float(numerator / denominator) if denominator else None


def _report(plan, container_bytes=None):
    arrays = []
    for weight in plan.weights:
        stats = dict(weight.stats)
        stats["encoding"] = weight.encoding
        arrays.append(stats)
    rows, by_layer = [], {}
    for stats in arrays:
        by_layer.setdefault(stats["layer"], []).append(stats)
    for layer, group in by_layer.items():
        weights = sum(s["size"] for s in group)
        nonzero = sum(s["nonzero"] for s in group)
        # Bits per weight as in the paper: over the variables with shared weights
        # (kernels); a layer without any shows the raw bits of its variables.
        valued = [s for s in group if s["codebook_size"] is not None] or group
        entries = sum(s["entries"] for s in valued)
        sparse = [s for s in group if s["index_bits"] is not None]
        sparse_entries = sum(s["entries"] for s in sparse)
        total_bits = 8 * sum(s["payload_bytes"] for s in group)
        rows.append({
            "layer": layer,
            "weights": weights,
            "nonzero": nonzero,
            "density": _ratio(nonzero, weights) or 0.0,
            "weight_bits": _ratio(sum(s["value_bits"] * s["entries"] for s in valued), entries),
            "weight_bits_huffman": _ratio(sum(s["value_stream_bits"] for s in valued), entries),
            "offset_bits": _ratio(sum(s["index_bits"] * s["entries"] for s in sparse),
                                  sparse_entries),
            "offset_bits_huffman": _ratio(sum(s["offset_stream_bits"] for s in sparse),
                                          sparse_entries),
            "codebook_bits": sum(s["codebook_bits"] for s in group),
            "table_bits": sum(s["table_bits"] for s in group),
            "total_bits": total_bits,
            "ratio": _ratio(32 * weights, total_bits),
            "encodings": {s["path"]: s["encoding"] for s in group},
        })
    params = sum(s["size"] for s in arrays)
    nonzero = sum(s["nonzero"] for s in arrays)
    payload = sum(s["payload_bytes"] for s in arrays)
    total = {
        "params": params,
        "nonzero": nonzero,
        "density": _ratio(nonzero, params) or 0.0,
        "original_bytes": 4 * params,
        "payload_bytes": payload,
        "ratio": _ratio(4 * params, payload),
        "container_bytes": container_bytes,
        "container_ratio": _ratio(4 * params, container_bytes) if container_bytes else None,
    }
    return CompressionReport(rows=rows, arrays=arrays, total=total,
                             index_bits=plan.index_bits, huffman=plan.huffman)


def compression_report(model, index_bits=None, huffman=True):
    """The per-layer compression table of Deep Compression (Tables 2-3) for a model.

    Plans exactly what `save_compressed(model, path, index_bits, huffman)`
    writes (the same encodings and Huffman codes) and sums it per layer: the
    non-zero fraction, bits per weight index and per sparse offset before and
    after Huffman coding, codebook bits, total bits and the compression ratio
    against 32-bit dense storage. The container size is included when the
    model can be serialized.

    Args:
        model: a functional or Sequential `keras.Model` (wrappers are stripped).
        index_bits: as for `save_compressed`.
        huffman: as for `save_compressed`.

    Returns:
        A `CompressionReport`.

    Raises:
        ValueError: for invalid arguments.

    Example:
        >>> print(compression_report(model))
    """
    plan = _plan_model(model, index_bits, huffman)
    try:
        container_bytes = len(_assemble(plan))
    except ValueError:  # not serializable: the payload numbers still hold
        container_bytes = None
    return _report(plan, container_bytes=container_bytes)
