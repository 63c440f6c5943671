"""The compression report: per-layer storage of a model in the container (Tables 2-3).

NumPy only. `CompressionReport` is the table; `build_report` sums the per-weight
plans of a model into it. `tfcompress.coding.compression_report` plans a model
and returns its report.
"""

import dataclasses

__all__ = ["CompressionReport", "build_report"]


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


def build_report(plan, container_bytes=None):
    """The `CompressionReport` of a planned model.

    Args:
        plan: the plan of a model: its `weights` (one `plan_weight` result each,
            with "layer" and "payload_bytes" in their stats), `index_bits` and
            `huffman`.
        container_bytes: the size of the container file, if known.

    Returns:
        A `CompressionReport`.
    """
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
