"""The PNG plots `tools/compress.py` writes: training curves of every stage, weight
storage per layer, weight histograms, sparsity per layer, channels kept per group, and
singular-value spectra.

Each `plot_*` function writes one PNG to `path` and returns True, or writes nothing and
returns False without matplotlib (`plot_stages` and `plot_spectra` also when there is
nothing to plot). matplotlib, NumPy and tfcompress are imported inside the functions:
importing this module imports neither TensorFlow nor matplotlib.
"""

__all__ = ["plot_bits", "plot_channels", "plot_sparsity", "plot_spectra", "plot_stages",
           "plot_weights"]


def plot_bits(float_profile, int8_profile, title, path):
    """Bar chart of each layer's weight storage (KiB) in the float model and in the
    int8 (QAT) model, layers matched by name; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    import numpy as np

    def per_layer(profile):
        rows = {}
        for row in profile["layers"]:
            name = row["name"].removeprefix("quant_")
            if row.get("param_bits"):
                rows[name] = rows.get(name, 0) + row["param_bits"] / 8 / 1024
        return rows

    before, after = per_layer(float_profile), per_layer(int8_profile)
    names = list(before) + [n for n in after if n not in before]
    positions = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names) + 2), 4.5))
    ax.bar(positions - 0.2, [before.get(n, 0) for n in names], 0.4, label="float32",
           color="tab:gray")
    ax.bar(positions + 0.2, [after.get(n, 0) for n in names], 0.4, label="int8 (QAT)",
           color="tab:blue")
    ax.set_xticks(positions)
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("weight storage (KiB)")
    ax.set_title(title)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_weights(before, after, layer_name, path, title=None):
    """Histogram of one layer's non-zero weights before/after weight sharing (the
    paper's Figure 5); returns False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    import numpy as np

    before = before[before != 0]
    after = after[after != 0]
    fig, (ax_b, ax_a) = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    ax_b.hist(before, bins=100, color="tab:blue")
    ax_b.set_title(f"{layer_name}: {before.size:,} non-zero weights after pruning")
    values, counts = np.unique(after, return_counts=True)
    ax_a.bar(values, counts, width=(np.ptp(before) or 1.0) / 150, color="tab:orange")
    ax_a.set_title(f"after weight sharing: {values.size} distinct values")
    for ax in (ax_b, ax_a):
        ax.set_xlabel("weight value")
        ax.set_ylabel("count")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_sparsity(rows, path, title="sparsity per layer"):
    """Bar chart of the fraction of weights pruned per layer; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = [row["layer"] for row in rows]
    fig, ax = plt.subplots(figsize=(max(6.5, 1.2 * len(names)), 4))
    bars = ax.bar(names, [100 * row["sparsity"] for row in rows], color="tab:green")
    for bar, row in zip(bars, rows):
        ax.annotate(f"{100 * row['sparsity']:.1f}%", (bar.get_x() + bar.get_width() / 2,
                    bar.get_height()), ha="center", va="bottom")
    ax.set_ylabel("weights pruned (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_channels(report, title, path):
    """Bar chart of the channels of every prunable group, before and kept; False
    without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    groups = [g for g in report.groups if g["prunable"]]
    names = [g["name"] for g in groups]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names) + 2), 4.5))
    positions = range(len(names))
    ax.bar(positions, [g["channels"] for g in groups], color="lightgray", label="before")
    ax.bar(positions, [g["kept"] for g in groups], color="tab:blue", label="kept")
    ax.set_xticks(list(positions))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("channels")
    ax.set_title(title)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_stages(stages, title, path):
    """Loss and accuracy of every training stage, one after the other (epochs from 1,
    each stage shaded and named); False without matplotlib or without any epoch."""
    stages = {name: h for name, h in stages.items() if h and h.get("loss")}
    if not stages:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return False
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    start = 0
    for k, (name, history) in enumerate(stages.items()):
        color = colors[k % len(colors)]
        count = len(history["loss"])
        epochs = range(start + 1, start + 1 + count)
        for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            ax.axvspan(start + 0.5, start + count + 0.5, color=color, alpha=0.07)
            ax.text(start + 0.5 + count / 2, 1.01, name, transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=8, color=color)
            if key in history:
                ax.plot(epochs, history[key], marker="o", markersize=3, color=color,
                        label=f"{name}: train")
            if "val_" + key in history:
                ax.plot(epochs, history["val_" + key], linestyle="--", marker="x",
                        markersize=3, color=color, label=f"{name}: validation")
        start += count
    for ax, label in ((ax_loss, "loss (cross-entropy)"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch (counted over all stages, from 1)")
        ax.set_ylabel(label)
        ax.set_xlim(0.5, start + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_spectra(model, report, title, path):
    """Each decomposed layer's singular values (of its weight matrix, or of the kernel's
    output-channel unfolding), normalized, with the chosen rank marked; False without
    matplotlib or without a decomposed layer."""
    rows = [r for r in report.layers if r["replaced"]]
    if not rows:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    import numpy as np

    from tfcompress.decomposition.factor import unfold

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for k, row in enumerate(rows):
        kernel = np.asarray(model.get_layer(row["layer"]).kernel)
        matrix = kernel.reshape(-1, kernel.shape[-1]) if kernel.ndim == 2 or \
            kernel.shape[:2] == (1, 1) else unfold(kernel, 3)
        values = np.linalg.svd(np.asarray(matrix, np.float64), compute_uv=False)
        values = values / values[0]
        line, = ax.plot(np.arange(1, len(values) + 1), values, marker=".", markersize=3,
                        label=f"{row['layer']} ({row['method']}, rank "
                              + "x".join(str(r) for r in row["ranks"]) + ")")
        rank = row["ranks"][-1]
        ax.plot([rank], [values[min(rank, len(values)) - 1]], marker="o", markersize=8,
                markerfacecolor="none", color=line.get_color())
    ax.set_yscale("log")
    ax.set_xlabel("singular value index (from 1)")
    ax.set_ylabel("singular value / largest")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
