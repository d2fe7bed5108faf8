"""Reports: the tables hold the records' numbers, the plots decode as images, the HTML needs nothing else."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from lstminfer.errors import UserError
from lstminfer.report.render import (
    fastest_by_point,
    fastest_rows,
    load_inputs,
    render_markdown,
    wins_summary,
    write_report,
)

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
    results = load_inputs([sweep_file])
    best = {k: r["backend"] for k, r in fastest_by_point(results["bench"]).items()}
    assert best == {("fp32", 16, 1): "onnxruntime", ("fp32", 16, 8): "onnxruntime", ("fp32", 64, 1): "onnxruntime",
                    ("fp32", 64, 8): "torch"}
    rows, unit = fastest_rows(results["bench"])
    assert unit == "ms"
    row = next(r for r in rows if r["shape"] == "16x1")
    assert row["median (ms)"] == 0.5 and row["vs torch"] == pytest.approx(4.0) and row["lead"] == "4.00x"
    assert wins_summary(results["bench"]) == "onnxruntime[cpu] is fastest at 3 of 4 points, torch[cpu] at 1."


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
    assert render_markdown(results).startswith("# lstminfer report")  # the old entry point still works


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
