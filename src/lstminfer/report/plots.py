"""Plots of result records: matplotlib figures (no pyplot), PNG bytes from the Agg canvas in `make_plots`.

matplotlib is imported only when a plot is drawn.  Every plot reads typed records and nothing else; a
plot that would show nothing (one sequence length, no `torch` baseline, no verification) is left out
rather than drawn empty.  What makes them readable:

- one colour per backend, the same in every plot of a report (`palette`, from every backend it shows);
- log axes labelled with plain numbers (0.2, 0.5, 1, 2), never `2x10^0`, in the unit of the tables;
- the fastest backend at each point marked the same way everywhere: a black-edged star on the line
  plots, a black frame on the heatmap, whose labels are white on dark cells;
- errors as points on a log axis, not bars rising from an arbitrary floor: an exact 0 sits on a
  dotted line labelled "0 (exact)".
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lstminfer.measure.records import SPEEDUP_BASELINE, BenchRecord, Record, VerifyRecord, speedups
from lstminfer.report.load import Results
from lstminfer.report.tables import bench_unit, fastest_by_point, latest_levels, timed

DPI = 110
PLOT_NAMES = ("latency", "throughput", "speedup", "accuracy", "loadtest")
PRECISION_MARKERS = {"fp64": "D", "fp32": "o", "tf32": "s", "fp16": "^", "bf16": "v"}
PRECISION_LINES = {"fp64": ":", "fp32": "-", "tf32": "-.", "fp16": "--", "bf16": (0, (5, 1, 1, 1))}


@dataclass(frozen=True)
class Plot:
    name: str  # file-name stem, e.g. "latency"
    title: str
    caption: str
    png: bytes


def palette(labels: Sequence[str]) -> dict[str, Any]:
    """backend[device] -> colour: tab10 up to ten backends, tab20 beyond, never two alike up to twenty."""
    from matplotlib import colormaps

    names = sorted(set(labels))
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


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


def _tick_text(value: float, _position: Any = None) -> str:
    """0.02, 5, 200, 4096, 20k, 2M, 1e-05: plain numbers, never matplotlib's 2x10^0."""
    if value >= 1e6:
        return f"{value / 1e6:.3g}M"
    if value >= 1e4:
        return f"{value / 1e3:.3g}k"
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _log_y(ax: Any) -> None:
    """A log y axis whose every tick is labelled: 1-2-5 steps over up to three decades, decades beyond.

    Call it after the data is drawn: the steps depend on the range shown.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    ax.set_yscale("log")
    low, high = ax.get_ylim()
    subs = (1.0, 2.0, 5.0) if math.log10(high / low) <= 3 else (1.0,)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs, numticks=30))
    ax.yaxis.set_major_formatter(FuncFormatter(_tick_text))
    ax.yaxis.set_minor_locator(NullLocator())  # no tick without a label


def _categorical_x(ax: Any, values: Sequence[int], name: str) -> None:
    """A log2 x axis with a labelled tick at each measured value and no other tick."""
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log", base=2)
    ax.set_xticks(values, [str(v) for v in values])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(name)


def _grid(records: Sequence[BenchRecord]) -> tuple[list[str], list[int], list[int]]:
    precisions = list(dict.fromkeys(r.point.precision for r in records))
    seq_lens = sorted({r.point.seq_len for r in records})
    batches = sorted({r.point.batch for r in records})
    return precisions, seq_lens, batches


def _at(record: BenchRecord, key: str) -> int:
    """The record's seq_len or batch."""
    return getattr(record.point, key)


def _hide_unused(axes: list[list[Any]], used: int) -> None:
    flat = [ax for row in axes for ax in row]
    for ax in flat[used:]:
        ax.set_visible(False)


def _line_panels(records: Sequence[BenchRecord], x_key: str, panel_key: str, y_of: Callable[[BenchRecord], float],
                 y_label: str, title: str, colors: dict[str, Any]) -> Any | None:
    """One panel per (precision, panel value): a line per backend over x, log-log, fastest starred."""
    precisions, seq_lens, batches = _grid(records)
    xs = seq_lens if x_key == "seq_len" else batches
    if len(xs) < 2:
        return None
    best = fastest_by_point(records)
    panel_values = batches if panel_key == "batch" else seq_lens
    panels = [(p, v) for p in precisions for v in panel_values
              if any(r.point.precision == p and _at(r, panel_key) == v for r in records)]
    cols = min(len(panels), len(panel_values), 4)
    fig, axes = _figure(math.ceil(len(panels) / cols), cols)
    for i, (precision, value) in enumerate(panels):
        ax = axes[i // cols][i % cols]
        chosen = [r for r in records if r.point.precision == precision and _at(r, panel_key) == value]
        for name in sorted({r.point.label for r in chosen}):
            line = sorted((r for r in chosen if r.point.label == name), key=lambda r: _at(r, x_key))
            ax.plot([_at(r, x_key) for r in line], [y_of(r) for r in line], marker="o", markersize=4,
                    color=colors[name], label=name)
            wins = [r for r in line if best.get((precision, r.point.seq_len, r.point.batch)) is r]
            ax.scatter([_at(r, x_key) for r in wins], [y_of(r) for r in wins], marker="*", s=160, color=colors[name],
                       edgecolors="black", linewidths=0.8, zorder=3)
        _categorical_x(ax, xs, "sequence length" if x_key == "seq_len" else "batch size")
        _log_y(ax)
        ax.grid(True, which="major", alpha=0.3)
        ax.set_title(f"{precision}, {panel_key.replace('_', ' ')} {value}", fontsize=10)
        ax.set_ylabel(y_label)
        ax.legend(fontsize=7, loc="best")
    _hide_unused(axes, len(panels))
    fig.suptitle(title + "  (★ fastest backend at the point)", fontsize=11)
    return fig


def latency_plot(bench_records: Sequence[Record], colors: dict[str, Any]) -> Any | None:
    unit = bench_unit(bench_records)  # the tables' unit, so a plot and its table read alike
    return _line_panels(timed(bench_records), "seq_len", "batch", lambda r: r.median_ms * unit.per_ms,
                        f"median latency ({unit.name})", "Latency vs sequence length", colors)


def throughput_plot(bench_records: Sequence[Record], colors: dict[str, Any]) -> Any | None:
    records = [r for r in timed(bench_records) if r.throughput_qps]
    return _line_panels(records, "batch", "seq_len", lambda r: r.throughput_qps * r.point.batch,
                        "sequences / s (queries/s x batch)", "Throughput vs batch size", colors)


def _text_color(rgba: Sequence[float]) -> str:
    """White on dark cells, black on light ones (relative luminance, ITU-R BT.709 weights)."""
    red, green, blue = rgba[:3]
    return "white" if 0.2126 * red + 0.7152 * green + 0.0722 * blue < 0.45 else "black"


def _speedup_ticks(limit: float, most: int = 7) -> tuple[list[float], list[str]]:
    """Colour-bar ticks in log2 space inside [-limit, limit] (none without its label), at most `most` of
    them: 1x in the middle, powers of two either side (1/8x, 8x), every second or fourth when the range is wide."""
    if limit < 1:
        ticks = [-limit, 0.0, limit]
    else:
        step = max(1, math.ceil(2 * math.floor(limit) / (most - 1)))
        ticks = [float(t) for t in range(-(math.floor(limit) // step) * step, math.floor(limit) + 1, step)]
    return ticks, [f"{'' if t >= 0 else '1/'}{_tick_text(2.0 ** abs(t))}x" for t in ticks]


def speedup_heatmap(bench_records: Sequence[Record]) -> Any | None:
    """Per (backend, precision): torch eager's median / the backend's median over seq_len x batch."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    records = timed(bench_records)
    ratios = speedups(records)
    panels = list(dict.fromkeys(r.point.runner for r in records if r.point.backend != SPEEDUP_BASELINE
                                and r.point in ratios))
    if not panels:
        return None
    best = fastest_by_point(records)
    _, seq_lens, batches = _grid([r for r in records if r.point.runner in panels])
    cols = min(len(panels), 3)
    fig, axes = _figure(math.ceil(len(panels) / cols), cols, width=max(4.6, 1.8 + 0.9 * len(batches)),
                        height=max(3.0, 1.4 + 0.55 * len(seq_lens)))
    grids = []
    for runner in panels:
        values = np.full((len(seq_lens), len(batches)), np.nan)
        framed = []
        for r in records:
            if r.point.runner == runner and r.point in ratios:
                i, j = seq_lens.index(r.point.seq_len), batches.index(r.point.batch)
                values[i, j] = ratios[r.point]
                if best.get((runner.precision, r.point.seq_len, r.point.batch)) is r:
                    framed.append((i, j))
        grids.append((values, framed))
    logs = np.abs(np.log2(np.concatenate([v[np.isfinite(v)] for v, _ in grids])))
    limit = max(float(logs.max()) if logs.size else 0.0, 0.5)
    norm = Normalize(vmin=-limit, vmax=limit)  # symmetric in log2: 1x sits in the middle of the colormap
    cmap = colormaps["RdYlGn"]
    image = None
    for k, (runner, (values, framed)) in enumerate(zip(panels, grids)):
        ax = axes[k // cols][k % cols]
        image = ax.imshow(np.log2(values), cmap=cmap, norm=norm, aspect="auto", origin="lower")
        for i in range(len(seq_lens)):
            for j in range(len(batches)):
                v = values[i, j]
                finite = bool(np.isfinite(v))
                ax.text(j, i, f"{v:.2f}x" if finite else "-", ha="center", va="center", fontsize=8,
                        color=_text_color(cmap(norm(np.log2(v)))) if finite else "black",
                        fontweight="bold" if (i, j) in framed else "normal")
        for i, j in framed:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
        ax.set_xticks(range(len(batches)), [str(b) for b in batches])
        ax.set_yticks(range(len(seq_lens)), [str(s) for s in seq_lens])
        ax.set_xlabel("batch size")
        ax.set_ylabel("sequence length")
        ax.set_title(f"{runner.label} {runner.precision}", fontsize=10)
    _hide_unused(axes, len(panels))
    bar = fig.colorbar(image, ax=[ax for row in axes for ax in row if ax.get_visible()], shrink=0.8)
    ticks, labels = _speedup_ticks(limit)
    bar.set_ticks(ticks, labels=labels)
    bar.set_label("speedup over torch eager (green: faster)")
    fig.suptitle("Speedup over torch eager\n(framed: the fastest backend at that point)", fontsize=11)
    return fig


def _worst_errors(records: Sequence[VerifyRecord], by: Callable[[VerifyRecord], Any]) -> dict[Any, float]:
    worst: dict[Any, float] = {}
    for r in records:
        key = by(r)
        worst[key] = max(worst.get(key, 0.0), r.max_abs_err)
    return worst


def accuracy_plot(verify_records: Sequence[Record], colors: dict[str, Any]) -> Any | None:
    """Worst max abs error per backend and precision (atol lines, failures ringed red), and vs seq_len."""
    records = [r for r in verify_records if isinstance(r, VerifyRecord) and r.max_abs_err is not None]
    if not records:
        return None
    labels = list(dict.fromkeys(r.point.label for r in records))
    precisions = list(dict.fromkeys(r.point.precision for r in records))
    seq_lens = sorted({r.point.seq_len for r in records if r.point.seq_len is not None})
    nonzero = [r.max_abs_err for r in records if r.max_abs_err > 0]
    floor = min(nonzero) / 10 if nonzero else 1e-16  # where an exact 0 is drawn, on its labelled line

    def shown(err: float) -> float:
        return max(err, floor)

    fig, axes = _figure(1, 2 if len(seq_lens) >= 2 else 1, width=max(4.4, 1.6 + 0.9 * len(labels)))
    ax = axes[0][0]
    worst = _worst_errors(records, lambda r: (r.point.label, r.point.precision))
    failed = {(r.point.label, r.point.precision) for r in records if not r.passed}
    step = 0.6 / max(len(precisions), 1)
    for k, precision in enumerate(precisions):
        offset = (k - (len(precisions) - 1) / 2) * step
        for x, name in enumerate(labels):
            if (name, precision) not in worst:
                continue
            bad = (name, precision) in failed
            ax.scatter([x + offset], [shown(worst[name, precision])], s=60, color=colors[name], zorder=3,
                       marker=PRECISION_MARKERS.get(precision, "o"), edgecolors="red" if bad else "black",
                       linewidths=2.0 if bad else 0.6)
        atol = next((r.atol for r in records if r.point.precision == precision), None)
        if atol:
            ax.axhline(atol, color="0.45", linestyle=PRECISION_LINES.get(precision, "--"), linewidth=1)
        ax.plot([], [], marker=PRECISION_MARKERS.get(precision, "o"), markerfacecolor="white",
                markeredgecolor="black", color="0.45", linestyle=PRECISION_LINES.get(precision, "--") if atol else "",
                label=f"{precision}" + (f", atol {atol:g}" if atol else ""))
    if not nonzero or min(r.max_abs_err for r in records) == 0:
        ax.axhline(floor, color="0.6", linestyle=":", linewidth=1)
        ax.annotate("0 (exact)", (1.0, floor), xycoords=("axes fraction", "data"), ha="right", va="bottom",
                    fontsize=7, color="0.4")
    ax.margins(y=0.1)  # markers, unlike bars, would sit half outside the axes at the ends of the range
    _log_y(ax)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.set_ylabel("max abs error vs float64 reference")
    ax.set_title("Worst error per backend (lines: atol; red ring: failed)", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    if len(seq_lens) >= 2:
        ax = axes[0][1]
        growth = _worst_errors([r for r in records if r.point.seq_len],
                               lambda r: (r.point.label, r.point.precision, r.point.seq_len))
        for name in labels:
            for precision in precisions:
                xs = sorted(s for (n, p, s) in growth if (n, p) == (name, precision))
                if xs:
                    ax.plot(xs, [shown(growth[name, precision, s]) for s in xs], color=colors[name],
                            marker=PRECISION_MARKERS.get(precision, "o"), markersize=4,
                            linestyle=PRECISION_LINES.get(precision, "-"), label=f"{name} {precision}")
        _categorical_x(ax, seq_lens, "sequence length")
        _log_y(ax)
        ax.set_ylabel("max abs error (over batches, outputs)")
        ax.set_title("Error vs sequence length", fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
    fig.suptitle("Accuracy against the float64 reference", fontsize=11)
    return fig


def _level_label(record: Any) -> str:
    """One load-test series: "stateless seed http 1x3" (mode, model, protocol, request seq x batch)."""
    return f"{record.series} {record.seq_len}x{record.batch}"


def loadtest_plot(load_records: Sequence[Any]) -> Any | None:
    """Throughput, and p50 / p99 latency, vs concurrency: a line per series (stateless and streams apart).

    Levels where every request failed have no latency and no throughput to draw; levels with some failed
    requests are ringed red.
    """
    records = [r for r in latest_levels(load_records) if r.requests > 0 and r.latency_ms.get("p50") is not None]
    if not records:
        return None
    labels = list(dict.fromkeys(_level_label(r) for r in records))
    colors = palette(labels)
    levels = sorted({r.concurrency for r in records})
    fig, axes = _figure(1, 2, width=5.2, height=3.8)
    throughput, latency = axes[0]
    for name in labels:
        line = sorted((r for r in records if _level_label(r) == name), key=lambda r: r.concurrency)
        xs = [r.concurrency for r in line]
        bad = [r for r in line if r.failed]
        throughput.plot(xs, [r.throughput_rps for r in line], marker="o", markersize=4, color=colors[name],
                        label=name)
        latency.plot(xs, [r.latency_ms["p50"] for r in line], marker="o", markersize=4, color=colors[name],
                     label=f"{name} p50")
        p99 = [(r.concurrency, r.latency_ms["p99"]) for r in line if r.latency_ms.get("p99") is not None]
        latency.plot([x for x, _ in p99], [y for _, y in p99], marker="^", markersize=4, linestyle="--",
                     color=colors[name], label=f"{name} p99")
        for ax, y_of in ((throughput, lambda r: r.throughput_rps), (latency, lambda r: r.latency_ms["p50"])):
            ax.scatter([r.concurrency for r in bad], [y_of(r) for r in bad], s=90, facecolors="none",
                       edgecolors="red", linewidths=1.5, zorder=3)
    for ax, label, title in ((throughput, "requests per second", "Throughput vs concurrency"),
                             (latency, "latency (ms)", "p50 (solid) and p99 (dashed) latency")):
        _categorical_x(ax, levels, "concurrency (requests or streams in flight)")
        ax.margins(y=0.1)
        _log_y(ax)
        ax.grid(True, which="major", alpha=0.3)
        ax.set_ylabel(label)
        ax.set_title(title, fontsize=10)
    # One legend for both panels, below them: inside, eight p50/p99 entries covered the lines.
    handles, names = throughput.get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 3), fontsize=8)
    fig.suptitle("Load test of the served model" + ("  (red ring: some requests failed)" if any(
        r.failed for r in records) else ""), fontsize=11)
    return fig


def make_plots(results: Results) -> list[Plot]:
    """Every plot the records support, in report order, with one colour per backend across them."""
    bench_records, verify_records = results.bench, results.verify
    colors = palette([r.point.label for r in [*bench_records, *verify_records]])
    unit = bench_unit(bench_records)
    candidates = [
        ("latency", "Latency vs sequence length",
         f"Median host latency per query in {unit.name} (inputs and outputs on the host), log-log; one panel per "
         "precision and batch size.", lambda: latency_plot(bench_records, colors)),
        ("throughput", "Throughput vs batch size",
         "Sequences per second (queries per second x batch), log-log; one panel per precision and sequence length.",
         lambda: throughput_plot(bench_records, colors)),
        ("speedup", "Speedup over torch eager",
         "torch eager's median latency / the backend's, same device, precision and shape; above 1x is faster.",
         lambda: speedup_heatmap(bench_records)),
        ("accuracy", "Accuracy",
         "Largest absolute error against the float64 reference over every point and output, per backend and "
         "precision (marker: precision; colour: backend, as in the other plots); a dotted line marks exact 0.",
         lambda: accuracy_plot(verify_records, colors)),
        ("loadtest", "Load test",
         "Per concurrency level of lstminfer loadtest: requests (stream chunks) per second, and the client's "
         "p50 / p99 latency per request; one line per mode, model, protocol and request shape (seq x batch), "
         "log-log.", lambda: loadtest_plot(results.loadtest)),
    ]
    plots = []
    for name, title, caption, draw in candidates:
        fig = draw()
        if fig is not None:
            plots.append(Plot(name, title, caption, _png(fig)))
    return plots
