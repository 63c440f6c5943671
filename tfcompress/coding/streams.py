"""The symbol streams of the container: fixed-width or Huffman-coded bit streams.

NumPy only. `plan_stream` chooses the smaller of the fixed-width coding (each
symbol in `width` bits, MSB first) and the Huffman coding (code table, then the
bit stream) of a symbol sequence; `decode_stream` reads a stream back from its
metadata and payload.
"""

import dataclasses

import numpy as np

from tfcompress.coding.huffman import HuffmanCode, huffman_code_lengths

__all__ = ["decode_stream", "plan_stream"]


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


def plan_stream(symbols, width, huffman):
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


def decode_stream(meta, payload):
    """The symbols of a stream, from its metadata ("coding", "count", "bits", "width").

    Raises:
        ValueError: for an unknown coding or a payload that does not fit the metadata.
    """
    count, bits, width = int(meta["count"]), int(meta["bits"]), int(meta["width"])
    if meta["coding"] == "fixed":
        return _unpack_fixed(payload, count, width)
    if meta["coding"] != "huffman":
        raise ValueError(f"Unknown stream coding {meta['coding']!r}.")
    code, offset = HuffmanCode.read(payload, 0)
    body = payload[offset:]
    if len(body) != (bits + 7) // 8:
        raise ValueError(
            f"A Huffman stream of {bits} bits needs {(bits + 7) // 8} bytes after its "
            f"code table; got {len(body)}."
        )
    return code.decode(body, count, n_bits=bits)
