"""Plots of result records, as PNG bytes: matplotlib's Agg canvas, imported only when a plot is drawn.

Every plot reads records and nothing else; a plot that would show nothing (one sequence length, no
`torch` baseline, no verification) is left out rather than drawn empty.  Colours are fixed per
backend across plots, and the fastest backend at each point is marked the same way everywhere: a black
star on the line plots, a black frame on the heatmap.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lstminfer.report.render import backend_label, fastest_by_point, timed_records

DPI = 110
PLOT_NAMES = ("latency", "throughput", "speedup", "accuracy")


@dataclass(frozen=True)
class Plot:
    name: str  # file-name stem, e.g. "latency"
    title: str
    caption: str
    png: bytes


def _figure(rows: int, cols: int, width: float = 4.4, height: float = 3.4) -> tuple[Any, list[list[Any]]]:
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(width * cols, height * rows + 0.6), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, [list(row) for row in axes]


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _colors(labels: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {label: cmap(i % 10) for i, label in enumerate(sorted(set(labels)))}


def _grid(records: Sequence[dict[str, Any]]) -> tuple[list[str], list[int], list[int]]:
    precisions = list(dict.fromkeys(r["precision"] for r in records))
    seq_lens = sorted({r["seq_len"] for r in records})
    batches = sorted({r["batch"] for r in records})
    return precisions, seq_lens, batches


def _hide_unused(axes: list[list[Any]], used: int) -> None:
    flat = [ax for row in axes for ax in row]
    for ax in flat[used:]:
        ax.set_visible(False)


def _line_panels(records: Sequence[dict[str, Any]], x_key: str, panel_key: str, y_of: Any, y_label: str,
                 title: str) -> bytes | None:
    """One panel per (precision, panel value): a line per backend over x, log-log, fastest starred."""
    from matplotlib.ticker import NullLocator

    precisions, seq_lens, batches = _grid(records)
    xs = seq_lens if x_key == "seq_len" else batches
    panel_values = batches if panel_key == "batch" else seq_lens
    if len(xs) < 2:
        return None
    best = fastest_by_point(records)
    colors = _colors([backend_label(r) for r in records])
    cols = min(len(panel_values), 4)
    panels = [(p, v) for p in precisions for v in panel_values
              if any(r["precision"] == p and r[panel_key] == v for r in records)]
    cols = min(len(panels), cols)
    rows = math.ceil(len(panels) / cols)
    fig, axes = _figure(rows, cols)
    for i, (precision, value) in enumerate(panels):
        ax = axes[i // cols][i % cols]
        chosen = [r for r in records if r["precision"] == precision and r[panel_key] == value]
        for label in sorted({backend_label(r) for r in chosen}):
            line = sorted((r for r in chosen if backend_label(r) == label), key=lambda r: r[x_key])
            ax.plot([r[x_key] for r in line], [y_of(r) for r in line], marker="o", markersize=4,
                    color=colors[label], label=label)
            wins = [r for r in line if best.get((precision, r["seq_len"], r["batch"])) is r]
            ax.scatter([r[x_key] for r in wins], [y_of(r) for r in wins], marker="*", s=160, color=colors[label],
                       edgecolors="black", linewidths=0.8, zorder=3)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.grid(True, which="major", alpha=0.3)
        ax.set_title(f"{precision}, {panel_key.replace('_', ' ')} {value}", fontsize=10)
        ax.set_xlabel("sequence length" if x_key == "seq_len" else "batch size")
        ax.set_ylabel(y_label)
        ax.legend(fontsize=7, loc="best")
    _hide_unused(axes, len(panels))
    fig.suptitle(title + "  (★ fastest backend at the point)", fontsize=11)
    return _png(fig)


def latency_plot(bench_records: Sequence[dict[str, Any]]) -> bytes | None:
    records = timed_records(bench_records)
    return _line_panels(records, "seq_len", "batch", lambda r: r["latency_ms"]["median"], "median latency (ms)",
                        "Latency vs sequence length")


def throughput_plot(bench_records: Sequence[dict[str, Any]]) -> bytes | None:
    records = [r for r in timed_records(bench_records) if r.get("throughput_qps")]
    return _line_panels(records, "batch", "seq_len", lambda r: r["throughput_qps"] * r["batch"],
                        "sequences / s (queries/s x batch)", "Throughput vs batch size")


def speedup_heatmap(bench_records: Sequence[dict[str, Any]]) -> bytes | None:
    """Per (backend, precision): torch eager's median / the backend's median over seq_len x batch."""
    import numpy as np
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    records = timed_records(bench_records)
    baseline = {(r["device"], r["precision"], r["seq_len"], r["batch"]): r["latency_ms"]["median"]
                for r in records if r["backend"] == "torch"}
    panels = list(dict.fromkeys((backend_label(r), r["device"], r["precision"]) for r in records
                                if r["backend"] != "torch"
                                and (r["device"], r["precision"], r["seq_len"], r["batch"]) in baseline))
    if not panels:
        return None
    best = fastest_by_point(records)
    shown = [r for r in records if (backend_label(r), r["device"], r["precision"]) in panels]
    _, seq_lens, batches = _grid(shown)
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig, axes = _figure(rows, cols, width=max(4.6, 1.8 + 0.9 * len(batches)),
                        height=max(3.0, 1.4 + 0.55 * len(seq_lens)))
    limit = 0.0
    grids = []
    for label, device, precision in panels:
        values = np.full((len(seq_lens), len(batches)), np.nan)
        framed = []
        for r in records:
            if backend_label(r) != label or r["precision"] != precision:
                continue
            base = baseline.get((device, precision, r["seq_len"], r["batch"]))
            if base and r["latency_ms"]["median"]:
                i, j = seq_lens.index(r["seq_len"]), batches.index(r["batch"])
                values[i, j] = base / r["latency_ms"]["median"]
                if best.get((precision, r["seq_len"], r["batch"])) is r:
                    framed.append((i, j))
        grids.append((values, framed))
        finite = np.abs(np.log2(values[np.isfinite(values)]))
        limit = max(limit, float(finite.max()) if finite.size else 0.0)
    limit = max(limit, 0.5)
    norm = Normalize(vmin=-limit, vmax=limit)  # symmetric in log2: 1x sits in the middle of the colormap
    image = None
    for k, ((label, _device, precision), (values, framed)) in enumerate(zip(panels, grids)):
        ax = axes[k // cols][k % cols]
        image = ax.imshow(np.log2(values), cmap="RdYlGn", norm=norm, aspect="auto", origin="lower")
        for i in range(len(seq_lens)):
            for j in range(len(batches)):
                v = values[i, j]
                text = "-" if not np.isfinite(v) else f"{v:.2f}x"
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        fontweight="bold" if (i, j) in framed else "normal")
        for i, j in framed:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
        ax.set_xticks(range(len(batches)), [str(b) for b in batches])
        ax.set_yticks(range(len(seq_lens)), [str(s) for s in seq_lens])
        ax.set_xlabel("batch size")
        ax.set_ylabel("sequence length")
        ax.set_title(f"{label} {precision}", fontsize=10)
    _hide_unused(axes, len(panels))
    bar = fig.colorbar(image, ax=[ax for row in axes for ax in row if ax.get_visible()], shrink=0.8)
    ticks = [t for t in range(-math.ceil(limit), math.ceil(limit) + 1)]
    bar.set_ticks(ticks, labels=[f"{2.0 ** t:g}x" for t in ticks])
    bar.set_label("speedup over torch eager (green: faster)")
    fig.suptitle("Speedup over torch eager\n(framed: the fastest backend at that point)", fontsize=11)
    return _png(fig)


def accuracy_plot(verify_records: Sequence[dict[str, Any]]) -> bytes | None:
    """Worst max abs error per backend and precision (bars, tolerance dashed), and its growth with seq_len."""
    import numpy as np
    from matplotlib.ticker import NullLocator

    records = [r for r in verify_records if r.get("max_abs_err") is not None]
    if not records:
        return None
    labels = list(dict.fromkeys(backend_label(r) for r in records))
    precisions = list(dict.fromkeys(r["precision"] for r in records))
    seq_lens = sorted({r["seq_len"] for r in records if r.get("seq_len") is not None})
    with_growth = len(seq_lens) >= 2
    fig, axes = _figure(1, 2 if with_growth else 1, width=max(4.4, 1.2 + 0.9 * len(labels)))
    ax = axes[0][0]
    width = 0.8 / len(precisions)
    floor = 1e-18  # an exact match (0 error) still gets a visible bar on the log axis
    prec_colors = _colors(precisions)
    for k, precision in enumerate(precisions):
        heights, failed = [], []
        for label in labels:
            errs = [r for r in records if backend_label(r) == label and r["precision"] == precision]
            heights.append(max((r["max_abs_err"] for r in errs), default=np.nan))
            failed.append(any(r.get("passed") is False for r in errs))
        x = np.arange(len(labels)) + (k - (len(precisions) - 1) / 2) * width
        bars = ax.bar(x, [max(h, floor) if np.isfinite(h) else 0 for h in heights], width, label=precision,
                      color=prec_colors[precision])
        for bar, bad in zip(bars, failed):
            if bad:
                bar.set_hatch("//")
                bar.set_edgecolor("red")
        atol = next((r.get("atol") for r in records if r["precision"] == precision and r.get("atol")), None)
        if atol:
            ax.axhline(atol, color=prec_colors[precision], linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("max abs error vs float64 reference")
    ax.set_title("Worst error (dashed: atol; hatched: failed)", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    if with_growth:
        ax = axes[0][1]
        styles = ["-", "--", ":", "-."]
        markers = ["o", "s", "^", "D", "v", "P"]
        for n, label in enumerate(labels):
            for precision in precisions:
                pts: dict[int, float] = {}
                for r in records:
                    if backend_label(r) == label and r["precision"] == precision and r.get("seq_len"):
                        pts[r["seq_len"]] = max(pts.get(r["seq_len"], 0.0), r["max_abs_err"])
                if pts:
                    xs = sorted(pts)
                    ax.plot(xs, [max(pts[x], floor) for x in xs], marker=markers[n % len(markers)], markersize=4,
                            color=prec_colors[precision], linestyle=styles[n % len(styles)],
                            label=f"{label} {precision}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(seq_lens, [str(s) for s in seq_lens])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("sequence length")
        ax.set_ylabel("max abs error (over batches, outputs)")
        ax.set_title("Error vs sequence length", fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
    fig.suptitle("Accuracy against the float64 reference", fontsize=11)
    return _png(fig)


def make_plots(results: dict[str, Any]) -> list[Plot]:
    """Every plot the records support, in report order."""
    bench_records = results.get("bench", [])
    verify_records = results.get("verify", [])
    candidates = [
        ("latency", "Latency vs sequence length",
         "Median host latency per query (inputs and outputs on the host), log-log; one panel per precision and "
         "batch size.", lambda: latency_plot(bench_records)),
        ("throughput", "Throughput vs batch size",
         "Sequences per second (queries per second x batch), log-log; one panel per precision and sequence length.",
         lambda: throughput_plot(bench_records)),
        ("speedup", "Speedup over torch eager",
         "torch eager's median latency / the backend's, same device, precision and shape; above 1x is faster.",
         lambda: speedup_heatmap(bench_records)),
        ("accuracy", "Accuracy",
         "Largest absolute error against the float64 reference over every point and output.",
         lambda: accuracy_plot(verify_records)),
    ]
    plots = []
    for name, title, caption, draw in candidates:
        png = draw()
        if png is not None:
            plots.append(Plot(name, title, caption, png))
    return plots
