"""Reports: the tables hold the records' numbers, the plots decode as images, the HTML needs nothing else."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import pytest

from lstminfer.errors import UserError
from lstminfer.report.load import load_inputs, typed
from lstminfer.report.render import write_report
from lstminfer.report.tables import bench_rows, fastest_by_point, fastest_rows, verify_rows, wins_summary

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = ["--kind", "lstm", "--input-size", "4", "--hidden-size", "8", "--num-layers", "1"]
FAST = ["--duration", "0.02", "--warmup", "0", "--iterations", "3"]

# Median latencies (ms) chosen by hand: onnxruntime wins at seq 16, torch at seq 64 batch 8.
MEDIANS = {("torch", 16, 1): 2.0, ("torch", 16, 8): 3.0, ("torch", 64, 1): 6.0, ("torch", 64, 8): 5.0,
           ("onnxruntime", 16, 1): 0.5, ("onnxruntime", 16, 8): 1.5, ("onnxruntime", 64, 1): 4.0,
           ("onnxruntime", 64, 8): 10.0}


def summary(median: float) -> dict:
    return {"min": median * 0.9, "max": median * 2, "mean": median * 1.1, "median": median, "p90": median * 1.2,
            "p95": median * 1.3, "p99": median * 1.5, "cv": 3.0, "count": 100}


def bench_record(backend: str, seq_len: int, batch: int, median: float, **extra) -> dict:
    return {"kind": "bench", "backend": backend, "device": "cpu", "precision": "fp32", "seq_len": seq_len,
            "batch": batch, "source": "lstminfer", "clock": "host", "latency_ms": summary(median),
            "gpu_compute_ms": summary(median * 0.8), "throughput_qps": 1000.0 / median, "warnings": [], **extra}


def verify_record(backend: str, seq_len: int, batch: int, err: float) -> dict:
    return {"kind": "verify", "backend": backend, "device": "cpu", "precision": "fp32", "seq_len": seq_len,
            "batch": batch, "output": "output", "max_abs_err": err, "max_rel_err": err * 10, "atol": 1e-4,
            "rtol": 1e-3, "passed": err < 1e-4, "reference": "torch-float64-cpu"}


TRTEXEC = {"backend": "trtexec", "device": "cuda", "source": "trtexec", "clock": "trtexec", "precision": "fp32",
           "seq_len": None, "batch": None, "tensorrt_version": "8.6.1", "command": "trtexec --loadEngine=m.plan",
           "latency_ms": summary(0.25), "gpu_compute_ms": summary(0.225281), "throughput_qps": 4300.33,
           "warnings": []}


@pytest.fixture
def sweep_file(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.jsonl"
    lines = [{"kind": "machine", "machine": {"cpu": "Test CPU", "cpu_count": 2, "libraries": {"torch": "2.13"}},
              "model": {"name": "tiny", "spec": {"kind": "lstm", "hidden_size": 8}}}]
    for (backend, s, b), median in MEDIANS.items():
        lines.append(verify_record(backend, s, b, 1e-7 * s))
        lines.append(bench_record(backend, s, b, median))
    lines.append({"kind": "error", "backend": "onnxruntime", "device": "cpu", "precision": "fp16", "seq_len": 16,
                  "batch": 1, "error": "out of memory", "error_type": "RuntimeError"})
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def decode_png(data: bytes, tmp_path: Path) -> tuple[int, int]:
    import matplotlib.image

    assert data[:8] == PNG_SIGNATURE
    tmp = tmp_path / "decoded.png"
    tmp.write_bytes(data)
    image = matplotlib.image.imread(tmp)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    return image.shape[1], image.shape[0]


def external_references(html: str) -> list[str]:
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"' >]+)""", html, flags=re.I)
    bad = [r for r in refs if not r.startswith("data:")]
    bad += re.findall(r"<link\b[^>]*>", html, flags=re.I)
    bad += re.findall(r"<script\b[^>]*\bsrc[^>]*>", html, flags=re.I)
    bad += re.findall(r"url\(\s*['\"]?(?!data:)[^)]*\)", html, flags=re.I)
    bad += re.findall(r"@import", html, flags=re.I)
    return bad


# ---- comparisons --------------------------------------------------------------------------------

def test_fastest_backend_per_point_by_hand(sweep_file: Path) -> None:
    bench = typed(load_inputs([sweep_file])).bench
    best = {k: r.point.backend for k, r in fastest_by_point(bench).items()}
    assert best == {("fp32", 16, 1): "onnxruntime", ("fp32", 16, 8): "onnxruntime", ("fp32", 64, 1): "onnxruntime",
                    ("fp32", 64, 8): "torch"}
    rows, unit = fastest_rows(bench)
    assert unit.name == "ms"
    row = next(r for r in rows if r["shape"] == "16x1")
    assert row["median (ms)"] == 0.5 and row["vs torch"] == "4.00x" and row["lead"] == "4.00x"
    assert wins_summary(bench) == "onnxruntime[cpu] is fastest at 3 of 4 points, torch[cpu] at 1."


# ---- whole reports --------------------------------------------------------------------------------

def test_markdown_report_tables_and_plots(sweep_file: Path, tmp_path: Path) -> None:
    out = write_report(load_inputs([sweep_file]), tmp_path / "rep" / "report.md", "md")
    text = out.read_text()
    # the fastest-per-point table: 0.5 ms vs torch's 2.0 ms is 4.00x, its lead over the runner-up too
    assert "| fp32 | 16x1 | onnxruntime[cpu] | 0.5 | 4.00x | torch[cpu] | 4.00x |" in text
    assert "| fp32 | 64x8 | torch[cpu] | 5 | 1.00x | onnxruntime[cpu] | 2.00x |" in text
    # the benchmark table: the star on the winner, p99 = 1.5 x median, speedup torch/onnxruntime 6/4
    assert "| ★ | onnxruntime | cpu | fp32 | 64x1 | 4 | 6 |" in text
    assert "| 1.50x |" in text
    assert "RuntimeError: out of memory" in text  # the failed point is listed
    names = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(names) == ["report-accuracy.png", "report-latency.png", "report-speedup.png",
                             "report-throughput.png"]
    for name in names:
        width, height = decode_png((out.parent / name).read_bytes(), tmp_path)
        assert width >= 300 and height >= 200


def test_html_report_is_self_contained(sweep_file: Path, tmp_path: Path) -> None:
    results = load_inputs([sweep_file])
    results["bench"].append(dict(TRTEXEC))
    out = write_report(results, tmp_path / "report.html", "html")
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert external_references(html) == []
    images = re.findall(r'<img[^>]*src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 4
    for data in images:
        decode_png(base64.b64decode(data), tmp_path)
    # trtexec's numbers beside ours, as printed
    assert "Imported trtexec runs" in html and "4300" in html and "0.2253" in html and "8.6.1" in html
    assert "trtexec --loadEngine=m.plan" in html
    assert '<tr class="fastest"><td>★</td><td>onnxruntime</td>' in html
    assert "Test CPU" in html


def test_cli_report_from_a_real_sweep(cli, tmp_path: Path) -> None:
    code, _, err = cli("sweep", *TINY, *FAST, "--seq-len", "1,4", "--batch", "1,2", "--backends", "torch,onnxruntime",
                       "--out", tmp_path)
    assert code == 0, err
    code, out, err = cli("report", tmp_path, "--format", "md")
    assert code == 0, err
    text = (tmp_path / "report.md").read_text()
    records = [json.loads(line) for line in (tmp_path / "sweep.jsonl").read_text().splitlines()]
    medians = [r["latency_ms"]["median"] for r in records if r["kind"] == "bench"]
    scale = 1000.0 if max(medians) < 1.0 else 1.0  # us below 1 ms
    for r in records:
        if r["kind"] == "bench":
            median = r["latency_ms"]["median"] * scale
            cells = f"| {r['backend']} | cpu | fp32 | {r['seq_len']}x{r['batch']} | {median:.4g} |"
            assert cells in text
    assert len(list(tmp_path.glob("report-*.png"))) == 4
    code, out, err = cli("report", tmp_path / "sweep.jsonl", "--format", "html", "-o", tmp_path / "r" / "x.html")
    assert code == 0, err
    assert external_references((tmp_path / "r" / "x.html").read_text()) == []


def test_single_point_results_json_from_run(tmp_path: Path) -> None:
    """`lstminfer run`'s results.json: one shape, so no line plots, but the speedup and accuracy plots."""
    results = {"schema": 1, "machine": {}, "model": {"name": "seed"},
               "verify": [verify_record("torch", 1, 2, 1e-7), verify_record("onnxruntime", 16, 2, 2e-7)],
               "bench": [bench_record("torch", 16, 2, 0.12), bench_record("onnxruntime", 16, 2, 0.02)]}
    (tmp_path / "results.json").write_text(json.dumps(results))
    out = write_report(load_inputs([tmp_path]), tmp_path / "report.md", "md")
    text = out.read_text()
    assert sorted(p.name for p in tmp_path.glob("report-*.png")) == ["report-accuracy.png", "report-speedup.png"]
    assert "| ★ | onnxruntime | cpu | fp32 | 16x2 | 20 |" in text  # us, since every median is below 1 ms


def test_truncated_last_line_is_tolerated(sweep_file: Path, tmp_path: Path) -> None:
    text = sweep_file.read_text()
    sweep_file.write_text(text + '{"kind": "bench", "backend": "tor')
    results = load_inputs([sweep_file])
    assert len(results["bench"]) == len(MEDIANS)


# ---- bad input ----------------------------------------------------------------------------------

def test_bad_inputs_are_one_line_exit_2(cli, sweep_file: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text('{"kind": "bench"\n{"kind": "machine"}\n')
    not_ours = tmp_path / "other.json"
    not_ours.write_text('{"hello": 1}')
    broken = tmp_path / "results.json"
    broken.write_text('{"verify": [')
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    before = sweep_file.read_bytes()
    cases = [[empty], [corrupt], [not_ours], [broken], [nothing], [tmp_path / "missing.jsonl"],
             [sweep_file, "-o", blocker / "report.html"], [sweep_file, "--format", "pdf"]]
    for case in cases:
        code, _, err = cli("report", *case)
        assert code == 2, (case, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("lstminfer"), (case, err)
    assert sweep_file.read_bytes() == before  # nothing lost
    assert blocker.read_text() == "x"


def test_write_report_rejects_unknown_format(sweep_file: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="md or html"):
        write_report(load_inputs([sweep_file]), tmp_path / "r.pdf", "pdf")


def test_record_without_latency_summary_is_a_note(tmp_path: Path) -> None:
    """`lstminfer run` passes its in-memory results: a self-timed record with no summary must not break it."""
    results = {"machine": {}, "model": {}, "verify": [],
               "bench": [bench_record("torch", 4, 1, 2.0), {**TRTEXEC, "seq_len": 4, "batch": 1, "latency_ms": None},
                         {"backend": "onnxruntime", "device": "cpu", "precision": "fp16", "seq_len": 4, "batch": 1,
                          "skipped": "precision fp16 not supported"}]}
    text = write_report(results, tmp_path / "report.md", "md").read_text()
    assert "| ★ | torch | cpu | fp32 | 4x1 | 2 |" in text
    assert "precision fp16 not supported" in text and "| trtexec | cuda | fp32 | 4x1 | - |" in text
    assert results["bench"][1]["latency_ms"] is None  # the caller's records are not modified


def test_verification_table_keeps_each_precision_s_verdict(tmp_path: Path) -> None:
    """fp32 passes and fp16 fails for one backend: two rows, two verdicts (the fp32 row once read FAILED)."""
    fp16 = {**verify_record("torch", 16, 2, 0.5), "precision": "fp16", "atol": 1e-2, "rtol": 1e-2, "passed": False}
    results = {"machine": {}, "model": {}, "bench": [],
               "verify": [verify_record("torch", 16, 2, 1e-7), fp16, verify_record("onnxruntime", 16, 2, 2e-7)]}
    rows = verify_rows(typed(results).verify)
    assert [(r["backend"], r["precision"], r["verdict"]) for r in rows] == [
        ("torch", "fp32", "passed"), ("torch", "fp16", "FAILED"), ("onnxruntime", "fp32", "passed")]
    text = write_report(results, tmp_path / "report.md", "md").read_text()
    assert "| torch | cpu | fp32 | 16x2 | 1e-07 | 1e-06 | 0.0001 | 0.001 | passed |" in text
    assert "| torch | cpu | fp16 | 16x2 | 0.5 | 5 | 0.01 | 0.01 | FAILED |" in text
    results["verify"][2]["unverified"] = "onnx.reference lacks DequantizeLinear"
    page = write_report(results, tmp_path / "report.html", "html").read_text()
    assert ('<td class="unverified">unverified: no independent reference (onnx.reference lacks DequantizeLinear)'
            "</td>") in page
    assert '<td class="failed">FAILED</td>' in page and '<td class="passed">passed</td>' in page


def test_one_unit_for_every_table_of_a_report(tmp_path: Path) -> None:
    """The fastest backend runs in 0.5 ms, torch in 2 ms: both tables in ms (the first was once in us)."""
    results = {"machine": {}, "model": {}, "verify": [],
               "bench": [bench_record("torch", 16, 1, 2.0), bench_record("onnxruntime", 16, 1, 0.5)]}
    text = write_report(results, tmp_path / "report.md", "md").read_text()
    assert "(us)" not in text
    assert "| fp32 | 16x1 | onnxruntime[cpu] | 0.5 | 4.00x | torch[cpu] | 4.00x |" in text
    assert "| ★ | onnxruntime | cpu | fp32 | 16x1 | 0.5 | 0.75 | - | 2000 | 4.00x | 0 |" in text
    assert "Times in ms." in text and "median host latency" in text


def test_vs_torch_says_when_qps_tells_another_story(tmp_path: Path) -> None:
    """Half torch's median but the same qps (e.g. two queries in flight): the cell shows both ratios."""
    results = {"machine": {}, "model": {}, "verify": [],
               "bench": [bench_record("torch", 16, 1, 2.0),
                         bench_record("onnxruntime", 16, 1, 1.0, throughput_qps=500.0),
                         bench_record("torch", 16, 8, 4.0), bench_record("onnxruntime", 16, 8, 2.0)]}
    rows, _ = bench_rows(typed(results).bench)
    assert [r["vs torch"] for r in rows] == ["1.00x", "2.00x (qps 1.00x)", "1.00x", "2.00x"]
    assert "2.00x (qps 1.00x)" in write_report(results, tmp_path / "report.html", "html").read_text()


def test_report_files_that_are_not_results_are_one_line_exit_2(cli, tmp_path: Path) -> None:
    """Binary garbage, lists that are not lists, records without their fields: one line naming the file."""
    bench = bench_record("torch", 4, 1, 2.0)
    cases = {
        "garbage.json": b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary",
        "garbage.jsonl": b"\xff\xfe\x00\x01" * 8,
        "shapes.json": b'{"verify": "x", "bench": 5}',
        "no-backend.json": json.dumps({"verify": [{k: v for k, v in verify_record("torch", 4, 1, 1e-7).items()
                                                   if k != "backend"}], "bench": []}).encode(),
        "no-latency.jsonl": (json.dumps({k: v for k, v in bench.items() if k != "latency_ms"}) + "\n").encode(),
        "bad-median.json": json.dumps([{**bench, "latency_ms": {**bench["latency_ms"], "median": "fast"}}]).encode(),
        "not-objects.json": b'{"verify": [1, 2], "bench": []}',
        "bad-machine.json": b'{"machine": [], "verify": [], "bench": [{"skipped": "x"}]}',
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        code, out, err = cli("report", path, "-o", tmp_path / "out" / "report.md", "--format", "md")
        assert code == 2, (name, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("lstminfer: error: "), (name, err)
        assert "Traceback" not in err and str(path) in err, (name, err)
        assert not (tmp_path / "out" / "report.md").exists()
    _, _, err = cli("report", tmp_path / "no-backend.json")
    assert "lacks the field 'backend'" in err
    _, _, err = cli("report", tmp_path / "shapes.json")
    assert "'verify' must be a list of records, not str" in err


# ---- plots ----------------------------------------------------------------------------------------

@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> dict:
    """make_plots' figures by plot name, instead of their PNG bytes."""
    from lstminfer.report import plots

    drawn: list = []
    monkeypatch.setattr(plots, "_png", lambda fig: drawn.append(fig) or b"")

    def make(results: dict) -> dict:
        drawn.clear()
        made = plots.make_plots(typed(results))
        return {plot.name: fig for plot, fig in zip(made, drawn)}

    return make


def _line_colors(fig) -> dict[str, tuple]:
    from matplotlib.colors import to_rgba

    return {line.get_label(): to_rgba(line.get_color()) for ax in fig.axes for line in ax.get_lines()
            if not line.get_label().startswith("_")}


def test_plots_give_each_backend_one_colour_in_every_plot(figures) -> None:
    """openvino has no qps, so the throughput plot lacks it: the colours must not shift between plots."""
    from matplotlib.colors import to_rgba

    bench, verify = [], []
    for backend, factor in (("onnxruntime", 0.3), ("openvino", 0.5), ("torch", 1.0)):
        for s, b in ((1, 1), (16, 1), (16, 8)):
            extra = {"throughput_qps": None} if backend == "openvino" else {}
            bench.append(bench_record(backend, s, b, factor * s * b, **extra))
            verify.append(verify_record(backend, s, b, 1e-7 * s))
    figs = figures({"machine": {}, "model": {}, "bench": bench, "verify": verify})
    latency, throughput = _line_colors(figs["latency"]), _line_colors(figs["throughput"])
    assert len(set(latency.values())) == 3 and set(throughput) == {"onnxruntime[cpu]", "torch[cpu]"}
    assert all(throughput[name] == latency[name] for name in throughput)
    growth = _line_colors(figs["accuracy"])
    assert all(growth[f"{name} fp32"] == latency[name] for name in latency)
    worst = figs["accuracy"].axes[0]
    dots = [to_rgba(c.get_facecolor()[0]) for c in worst.collections if len(c.get_offsets())]
    assert dots == [latency[name] for name in ("onnxruntime[cpu]", "openvino[cpu]", "torch[cpu]")]


def test_log_axes_have_plain_labels_and_no_empty_ticks(figures) -> None:
    """Medians within one decade used to be labelled 2x10^0 with unlabelled minor ticks."""
    bench = [bench_record(b, s, 1, m) for b, s, m in (("torch", 1, 1.5), ("torch", 16, 3.0), ("onnxruntime", 1, 2.2),
                                                      ("onnxruntime", 16, 2.6))]
    fig = figures({"machine": {}, "model": {}, "bench": bench, "verify": []})["latency"]
    fig.canvas.draw()
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    shown = [t.get_text() for t in ax.get_yticklabels() if low <= t.get_position()[1] <= high]
    assert len(shown) >= 3 and all(re.fullmatch(r"\d+(\.\d+)?", text) for text in shown), shown
    assert not [t for t in ax.yaxis.get_minorticklocs() if low <= t <= high]
    assert ax.get_ylabel() == "median latency (ms)"


def test_heatmap_labels_are_white_on_dark_cells(figures) -> None:
    from matplotlib.colors import to_rgba

    bench = [bench_record("torch", s, b, 8.0) for s in (1, 16) for b in (1, 2)]
    bench += [bench_record("onnxruntime", s, b, 8.0 / (8 if s == 16 else 1.05)) for s in (1, 16) for b in (1, 2)]
    fig = figures({"machine": {}, "model": {}, "bench": bench, "verify": []})["speedup"]
    colour = {t.get_text(): to_rgba(t.get_color()) for t in fig.axes[0].texts}
    assert colour["8.00x"] == to_rgba("white") and colour["1.05x"] == to_rgba("black")
    fig.canvas.draw()
    bar = fig.axes[-1]
    low, high = bar.get_ylim()
    labels = [t.get_text() for t in bar.get_yticklabels() if low <= t.get_position()[1] <= high]
    assert labels == ["1/8x", "1/4x", "1/2x", "1x", "2x", "4x", "8x"]


def test_a_wide_speedup_range_gets_few_colour_bar_ticks() -> None:
    """A 4712x speedup once put 25 overlapping ticks on the colour bar."""
    from lstminfer.report.plots import _speedup_ticks

    ticks, labels = _speedup_ticks(math.log2(4712))
    assert labels == ["1/4096x", "1/256x", "1/16x", "1x", "16x", "256x", "4096x"] and ticks[3] == 0


def test_accuracy_plot_draws_points_not_bars_and_states_zero(figures) -> None:
    from matplotlib.patches import Rectangle

    verify = [verify_record("torch", 1, 1, 0.0), verify_record("onnxruntime", 1, 1, 3e-7)]
    ax = figures({"machine": {}, "model": {}, "bench": [], "verify": verify})["accuracy"].axes[0]
    assert not [p for p in ax.patches if isinstance(p, Rectangle)]
    assert "0 (exact)" in [t.get_text() for t in ax.texts]
    assert ax.get_ylim()[0] < 3e-8 < ax.get_ylim()[1]  # the floor, a tenth of the smallest error, is on the axis


# ---- the terminal -------------------------------------------------------------------------------

def test_terminal_output_keeps_brackets_and_does_not_wrap_when_piped(capsys: pytest.CaptureFixture[str]) -> None:
    """`warning torch: ...` lost its [cpu] to rich markup, and piped output wrapped at 80 columns mid-number."""
    from lstminfer.commands.console import print_table
    from lstminfer.commands.core import _print_warnings
    from lstminfer.measure.records import BenchRecord

    warning = "Compute time is unstable, with coefficient of variance = 6.69965%." + " [see --duration]" * 6
    _print_warnings([BenchRecord.from_dict({**bench_record("torch", 16, 2, 1.0), "warnings": [warning]})])
    points = ", ".join(f"{s}x3" for s in range(1, 60))
    print_table("Verification of model[v2].onnx", [{"backend": "torch", "points": points, "qps": 17960.4,
                                                     "verdict": "FAILED (no output 'y[0]')"}])
    out, err = capsys.readouterr()
    assert err == f"warning torch[cpu]: {warning}\n"
    lines = out.splitlines()
    assert lines[0].startswith("Verification of model[v2].onnx")
    row = next(line for line in lines if "torch" in line)
    assert points in row and "FAILED (no output 'y[0]')" in row and "17,960" in row
    assert "median host latency" not in out  # the vs torch note goes only under tables with that column


def test_terminal_tables_with_vs_torch_say_it_is_from_medians(capsys: pytest.CaptureFixture[str]) -> None:
    from lstminfer.commands.console import print_table
    from lstminfer.report.tables import bench_rows

    rows, _ = bench_rows(typed({"verify": [], "bench": [bench_record("torch", 16, 1, 2.0),
                                                        bench_record("onnxruntime", 16, 1, 1.0)]}).bench)
    print_table("Benchmark", rows)
    out = capsys.readouterr().out
    assert "2.00x" in out
    assert out.rstrip().splitlines()[-1].startswith("vs torch: torch eager's median host latency / this backend's")


def test_serve_tables_left_align_their_text_columns(capsys: pytest.CaptureFixture[str]) -> None:
    """`lstminfer serve`'s endpoint / address and `loadtest`'s mode / model / protocol were right-aligned."""
    from lstminfer.commands.console import print_table

    print_table("Serving seed", [{"endpoint": "HTTP/REST", "address": "http://127.0.0.1:8000/v2/models/seed/infer"},
                                 {"endpoint": "gRPC", "address": "127.0.0.1:8001"}])
    print_table("Load test", [{"mode": "stateless", "model": "seed", "protocol": "http", "requests": 12345},
                              {"mode": "stream", "model": "uni_stream", "protocol": "grpc", "requests": 7}])
    out = capsys.readouterr().out
    assert "│ gRPC      │ 127.0.0.1:8001                             │" in out
    assert "│ stream    │ uni_stream │ grpc     │        7 │" in out  # numbers stay right-aligned


# ---- load tests (lstminfer loadtest --json) -------------------------------------------------------

def load_level(mode: str, model: str, concurrency: int, rps: float, p50: float, failed: int = 0, **extra):
    """A level as `lstminfer loadtest` records it: its own record type, written by its own to_dict."""
    from lstminfer.serve.loadtest import LoadRecord

    fields = {"protocol": "http", "requests": int(rps * 5), "failed": failed, "duration_s": 5.0, "seq_len": 1,
              "batch": 3 if mode == "stateless" else 1, "errors": ["timed out"] if failed else [], **extra}
    latency = {"p50": p50, "p90": p50 * 1.3, "p95": p50 * 1.6, "p99": p50 * 2.5, "mean": p50 * 1.1, "min": p50 / 2,
               "max": p50 * 4}
    return LoadRecord(mode=mode, model=model, concurrency=concurrency, throughput_rps=rps, latency_ms=latency,
                      **fields).to_dict()


LEVELS = [load_level("stateless", "seed", 1, 1240.4, 0.785), load_level("stateless", "seed", 4, 2655.0, 1.42),
          load_level("stateless", "seed", 8, 3746.2, 1.94), load_level("stream", "uni_stream", 1, 1615.3, 0.601),
          load_level("stream", "uni_stream", 8, 4872.9, 1.45, failed=2)]


def _loadtest_file(tmp_path: Path, levels: list[dict]) -> Path:
    path = tmp_path / "loadtest.json"
    path.write_text(json.dumps({"loadtest": levels, "server": "127.0.0.1:8000",
                                "machine": {"cpu": "Load CPU", "cpu_count": 2}}))
    return path


def _not_blank(png: bytes, tmp_path: Path) -> None:
    import matplotlib.image

    width, height = decode_png(png, tmp_path)
    assert width >= 600 and height >= 300
    pixels = matplotlib.image.imread(tmp_path / "decoded.png")[..., :3].reshape(-1, 3)
    inked = (pixels < 0.9).any(axis=1).mean()  # not white
    coloured = (pixels.max(axis=1) - pixels.min(axis=1) > 0.3).mean()  # lines in colour, not only the axes
    assert inked > 0.01 and coloured > 0.001, (inked, coloured)


def _md_rows(text: str, section: str) -> list[list[str]]:
    """The cells of the markdown table under `## section`."""
    block = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in block.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]


def test_loadtest_report_markdown_table_and_plot(cli, tmp_path: Path) -> None:
    from lstminfer.report.tables import fmt

    path = _loadtest_file(tmp_path, LEVELS)
    code, out, err = cli("report", path, "--format", "md", "-o", tmp_path / "rep" / "report.md")
    assert code == 0, err
    assert "5 load-test levels" in out and "report-loadtest.png" in out
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "Load CPU (2 cores)" in text
    assert "## Benchmark" not in text and "## Verification" not in text  # nothing measured but the load test
    header, _, *rows = _md_rows(text, "Load test")
    assert header == ["mode", "model", "protocol", "shape", "concurrency", "requests", "failed", "throughput (req/s)",
                      "p50 (ms)", "p90 (ms)", "p95 (ms)", "p99 (ms)"]
    assert len(rows) == len(LEVELS)
    for row, level in zip(rows, LEVELS):
        cells = dict(zip(header, row))
        assert cells["mode"] == level["mode"] and cells["model"] == level["model"]
        assert cells["shape"] == f"{level['seq_len']}x{level['batch']}"
        for column, value in (("concurrency", level["concurrency"]), ("requests", level["requests"]),
                              ("failed", level["failed"]), ("throughput (req/s)", level["throughput_rps"]),
                              *((f"{k} (ms)", level["latency_ms"][k]) for k in ("p50", "p90", "p95", "p99"))):
            assert cells[column] == fmt(value), (column, cells[column], value)
    assert "![Load test](report-loadtest.png)" in text
    _not_blank((tmp_path / "rep" / "report-loadtest.png").read_bytes(), tmp_path)


def test_loadtest_report_html_beside_a_sweep(sweep_file: Path, tmp_path: Path) -> None:
    """A load-test file and a sweep in one report: the sweep's tables and plots, then the load test's."""
    out = write_report(load_inputs([sweep_file, _loadtest_file(tmp_path, LEVELS)]), tmp_path / "report.html", "html")
    page = out.read_text()
    assert external_references(page) == []
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    assert [alt for alt, _ in images] == ["Latency vs sequence length", "Throughput vs batch size",
                                          "Speedup over torch eager", "Accuracy", "Load test"]
    _not_blank(base64.b64decode(images[-1][1]), tmp_path)
    table = page.split("<h2>Load test</h2>", 1)[1]
    assert "<td>stream</td><td>uni_stream</td><td>http</td><td>1x1</td>" in table
    assert '<td class="num">4873</td>' in table and '<td class="num">1.45</td>' in table


def test_loadtest_plot_draws_each_series_from_its_records(figures) -> None:
    """Throughput and p50 / p99 per series, stateless and streams apart; a re-measured level replaces the first."""
    levels = [load_level("stateless", "seed", 4, 999.0, 9.9), *LEVELS]  # the older run of stateless c=4
    fig = figures({"loadtest": levels})["loadtest"]
    throughput, latency = fig.axes[:2]
    lines = {line.get_label(): line for line in throughput.get_lines()}
    assert set(lines) == {"stateless seed http 1x3", "stream uni_stream http 1x1"}
    assert list(lines["stateless seed http 1x3"].get_xdata()) == [1, 4, 8]
    assert list(lines["stateless seed http 1x3"].get_ydata()) == [1240.4, 2655.0, 3746.2]
    p99 = {line.get_label(): list(line.get_ydata()) for line in latency.get_lines()}
    assert p99["stream uni_stream http 1x1 p99"] == [0.601 * 2.5, 1.45 * 2.5]
    assert p99["stateless seed http 1x3 p50"] == [0.785, 1.42, 1.94]
    assert [t.get_text() for t in throughput.get_xticklabels()] == ["1", "4", "8"]
    rings = [c for c in throughput.collections if len(c.get_offsets())]
    assert [list(c.get_offsets()[0]) for c in rings] == [[8, 4872.9]]  # the level with failed requests


def test_a_bad_loadtest_file_is_one_line(cli, tmp_path: Path) -> None:
    bad = {k: v for k, v in LEVELS[0].items() if k != "concurrency"}
    path = _loadtest_file(tmp_path, [LEVELS[1], bad])
    code, _, err = cli("report", path, "-o", tmp_path / "r.md", "--format", "md")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "record 2 of 'loadtest'" in err and "lacks the field 'concurrency'" in err
    path.write_text(json.dumps({"loadtest": [{**LEVELS[0], "mode": "burst"}]}))
    code, _, err = cli("report", path, "-o", tmp_path / "r.md", "--format", "md")
    assert code == 2 and "mode='burst'" in err
