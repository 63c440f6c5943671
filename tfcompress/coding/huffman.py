"""Huffman coding (Deep Compression, sec. 4): canonical prefix codes over integer symbols.

NumPy only. `huffman_code_lengths` gives the code lengths of symbol frequencies;
`HuffmanCode` is the canonical code of such lengths, with vectorized encoding and
decoding and its code table as bytes (`to_bytes`, `from_bytes`, `read`).
"""

import heapq
import itertools
import math
import numbers

import numpy as np

from tfcompress.coding.bits import check_int

__all__ = ["HuffmanCode", "huffman_code_lengths"]

# Widest window a vectorized decoder reads with a lookup table (2**16 entries).
_TABLE_MAX_BITS = 16
# Widest code the vectorized canonical decoder handles (a 64-bit word read at any
# byte offset holds 57 bits from any bit phase).
_VECTOR_MAX_BITS = 57
# Chain steps per Python-loop iteration of the vectorized decoder.
_JUMP_LEVELS = 5


# --------------------------------------------------------------------------- code tables


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


# --------------------------------------------------------------------------- codes


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
        count = check_int("count", count, 0, np.iinfo(np.int64).max)
        buffer = np.frombuffer(bytes(data), dtype=np.uint8)
        available = 8 * buffer.size
        exact = n_bits is not None
        if exact:
            n_bits = check_int("n_bits", n_bits, 0, np.iinfo(np.int64).max)
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
    def read(cls, data, offset=0):
        """Parses a code table at `offset`; returns (code, offset after it).

        Unlike `from_bytes`, the table may be followed by other bytes (the bit
        stream of a container's Huffman stream).

        Raises:
            ValueError: for a malformed table.
        """
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
        code, offset = cls.read(bytes(data), 0)
        if offset != len(data):
            raise ValueError(
                f"Huffman code table is {offset} bytes but {len(data)} bytes were given."
            )
        return code
