"""trtexec interoperation: shape strings, command lines, log and --exportTimes import (no TensorRT needed).

Expected numbers are typed in from the tutorial's two logs (TensorRT 8.6.1), from logs written in
trtexec's documented format (10.8, 11.1), and from a trace whose summary tests/fixtures/
make_trtexec_fixtures.py computed independently of lstminfer.stats.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lstminfer.errors import UserError
from lstminfer.measure import stats
from lstminfer.onnx.shapes import format_shapes, parse_shapes
from lstminfer.tensorrt import trtexec, trtexec_times
from lstminfer.tensorrt.build import Profile

FIXTURES = Path(__file__).parent / "fixtures"
FP32_LOG = FIXTURES / "trtexec_8.6.1_fp32_tutorial.log"
FP16_LOG = FIXTURES / "trtexec_8.6.1_fp16_tutorial.log"
TRT10_LOG = FIXTURES / "trtexec_10.8.0_dynamic.log"
TRT10_TIMES = FIXTURES / "trtexec_10.8.0_dynamic.times.json"
TRT11_LOG = FIXTURES / "trtexec_11.1.0_graph.log"
KEYS = ("min", "max", "mean", "median", "p90", "p95", "p99")

# The tutorial's numbers, copied by hand from its text.
TUTORIAL = {
    FP32_LOG: {
        "throughput_qps": 4300.33, "walltime_s": 3.00047, "total_gpu_compute_s": 2.90997,
        "latency": (0.250122, 1.62878, 0.2559, 0.255371, 0.258057, 0.258789, 0.260254),
        "enqueue": (0.170959, 1.60791, 0.179284, 0.179565, 0.181519, 0.182861, 0.1875),
        "h2d": (0.0151367, 1.31348, 0.0162684, 0.0161133, 0.0164795, 0.0169678, 0.0177002),
        "gpu_compute": (0.222168, 1.59949, 0.225527, 0.225281, 0.226318, 0.227295, 0.227417),
        "d2h": (0.0109863, 0.0217285, 0.0141102, 0.013916, 0.0166016, 0.0170898, 0.0184326),
        "warnings": ["GPU compute time is unstable, with coefficient of variance = 7.41713%."],
        "command": "trtexec --onnx=lstm.onnx --verbose", "precision": "fp32", "queries": 12903, "cv": 7.41713,
    },
    FP16_LOG: {
        "throughput_qps": 3491.54, "walltime_s": 3.00068, "total_gpu_compute_s": 2.44928,
        "latency": (0.251892, 4.15649, 0.263016, 0.25708, 0.263855, 0.276123, 0.352783),
        "enqueue": (0.187683, 4.08435, 0.224477, 0.219543, 0.227295, 0.23584, 0.294189),
        "h2d": (0.0148926, 0.274414, 0.0170437, 0.0166016, 0.0185547, 0.019043, 0.020752),
        "gpu_compute": (0.225098, 4.11542, 0.233777, 0.228394, 0.231323, 0.244751, 0.296997),
        "d2h": (0.0109863, 0.208008, 0.0121948, 0.0119629, 0.0129395, 0.0145264, 0.0198364),
        "warnings": ["Throughput may be bound by Enqueue Time rather than GPU Compute and the GPU may be "
                     "under-utilized.",
                     "GPU compute time is unstable, with coefficient of variance = 28.1311%."],
        "command": "trtexec --onnx=lstm.onnx --saveEngine=lstm_trt_fp16.engine --fp16", "precision": "fp16",
        "queries": 10477, "cv": 28.1311,
    },
}


# ---- the tutorial's logs: every number exactly ----------------------------------------------------

@pytest.mark.parametrize("path", [FP32_LOG, FP16_LOG], ids=["fp32", "fp16"])
def test_tutorial_log_every_number(path: Path) -> None:
    want = TUTORIAL[path]
    log = trtexec.load_log(path)
    assert log.tensorrt_version == "8.6.1" and log.status == "PASSED"
    assert log.command == want["command"]
    assert log.throughput_qps == want["throughput_qps"]
    assert log.walltime_s == want["walltime_s"]
    assert log.total_gpu_compute_s == want["total_gpu_compute_s"]
    for metric in ("latency", "enqueue", "h2d", "gpu_compute", "d2h"):
        assert tuple(log.metrics[metric][k] for k in KEYS) == want[metric], metric
    assert log.warnings == want["warnings"]
    assert log.log_warnings == []  # the "  If not already in use ..." lines belong to the warnings above


@pytest.mark.parametrize("path", [FP32_LOG, FP16_LOG], ids=["fp32", "fp16"])
def test_tutorial_log_to_bench_record(path: Path) -> None:
    want = TUTORIAL[path]
    rec = trtexec.to_bench_record(trtexec.load_log(path))
    assert (rec["backend"], rec["source"], rec["device"]) == ("trtexec", "trtexec", "cuda")
    assert rec["tensorrt_version"] == "8.6.1" and rec["command"] == want["command"]
    assert rec["precision"] == want["precision"]
    assert rec["throughput_qps"] == want["throughput_qps"] and rec["walltime_s"] == want["walltime_s"]
    assert rec["gpu_compute_ms"]["median"] == want["gpu_compute"][3]
    assert rec["trt_latency_ms"]["mean"] == want["latency"][2] and rec["latency_ms"] == rec["trt_latency_ms"]
    for metric, key in (("h2d", "h2d_ms"), ("d2h", "d2h_ms"), ("enqueue", "enqueue_ms")):
        assert tuple(rec[key][k] for k in KEYS) == want[metric]
    # No per-query trace: the count comes from throughput x walltime, and says so.
    assert rec["queries"] == want["queries"] and rec["queries_estimated"] is True
    assert rec["gpu_compute_ms"]["cv"] == want["cv"]  # printed in the instability warning
    assert rec["warnings"] == want["warnings"]
    assert rec["model"] == "lstm.onnx" and rec["seq_len"] is None and rec["batch"] is None
    json.dumps(rec, allow_nan=False)


def test_tutorial_numbers_are_consistent() -> None:
    """FACTS.md section 4's check: 4300.33 qps x 3.00047 s = 12903 queries; 0.225527 ms x 12903 = 2.90997 s."""
    for path, want in TUTORIAL.items():
        n = round(want["throughput_qps"] * want["walltime_s"])
        assert n == want["queries"]
        assert f"{want['gpu_compute'][2] * n / 1000:.6g}" == f"{want['total_gpu_compute_s']:.6g}", path


def test_tutorial_fp16_is_no_faster() -> None:
    """The tutorial's point: its FP16 engine's median GPU compute is not below FP32's."""
    fp32, fp16 = (trtexec.load_log(p).metrics["gpu_compute"]["median"] for p in (FP32_LOG, FP16_LOG))
    assert fp16 >= fp32


# ---- logs in TensorRT 10.x and 11.x format ------------------------------------------------------------

def test_trt10_log() -> None:
    log = trtexec.load_log(TRT10_LOG)
    assert log.tensorrt_version == "10.8.0" and log.status == "PASSED"
    assert log.queries == 500 and not log.queries_estimated  # "Timing trace has 500 queries"
    assert log.options == {"iterations": 500, "duration_s": 0.0, "warmup_ms": 200.0, "data_transfers": True,
                           "spin_wait": False, "cuda_graph": False}
    assert log.log_warnings == ["[TRT] Tensor DataType is determined at build time for tensors not marked as "
                                "input or output."]
    assert log.throughput_qps == 3806.73 and log.metrics["gpu_compute"]["median"] == 0.224831
    rec = trtexec.to_bench_record(log)
    assert (rec["seq_len"], rec["batch"]) == (16, 3)  # from --shapes=input:16x3x10
    assert rec["shapes"]["maxShapes"]["input"] == [512, 64, 10]
    assert rec["data_transfers"] is True


def test_trt11_log() -> None:
    log = trtexec.load_log(TRT11_LOG)
    assert log.tensorrt_version == "11.1.0"  # [TensorRT v110100] [b106]
    assert log.options["data_transfers"] is False and log.options["cuda_graph"] is True
    assert log.options["spin_wait"] is True
    assert log.queries == 15392
    assert log.metrics["h2d"] == {k: 0.0 for k in KEYS} and log.metrics["d2h"] == {k: 0.0 for k in KEYS}
    assert log.metrics["latency"] == log.metrics["gpu_compute"]
    assert log.warnings == ["GPU compute time is unstable, with coefficient of variance = 3.12874%."]
    assert log.log_warnings == ["[TRT] Unused Input: c0_unused"]
    rec = trtexec.to_bench_record(log)
    assert rec["precision"] == "typed"  # TensorRT 11 is strongly typed: no --fp16, the ONNX types decide
    assert rec["throughput_qps"] == 5130.38 and rec["total_gpu_compute_s"] == 2.99579
    assert rec["data_transfers"] is False


def test_decode_version_and_cv_threshold() -> None:
    assert trtexec.decode_version(8601) == "8.6.1"
    assert trtexec.decode_version("101302") == "10.13.2"
    assert trtexec.decode_version(110100) == "11.1.0"
    assert trtexec.unstable_cv_threshold("8.6.1") == 1.0
    assert trtexec.unstable_cv_threshold("10.13.0") == 1.0
    assert trtexec.unstable_cv_threshold("10.13.2") == 2.5
    assert trtexec.unstable_cv_threshold((11, 1, 0)) == 2.5


# ---- --exportTimes: our statistics reproduce what trtexec printed -----------------------------------

def _g(x: float) -> str:
    return f"{x:.6g}"


def test_export_times_reproduce_printed_summary() -> None:
    """lstminfer.stats on trtexec's per-query records == trtexec's printed summary, to the printed digit."""
    log = trtexec.load_log(TRT10_LOG)
    records = trtexec_times.load_times(TRT10_TIMES)
    assert len(records) == 500
    ours = stats.performance_summary(records, trtexec.unstable_cv_threshold(log.tensorrt_version))
    for metric in ("latency", "h2d", "gpu_compute", "d2h"):
        for k in KEYS:
            assert _g(getattr(getattr(ours, metric), k)) == _g(log.metrics[metric][k]), (metric, k)
    assert _g(ours.total_gpu_compute_s) == _g(log.total_gpu_compute_s)
    assert list(ours.warnings) == log.warnings  # same wording, same CV to 6 digits (20.5509 %)
    # The file holds enqueue and walltime only as stamps printed to 6 digits (1 us at 200-999 ms):
    # agreement is to that resolution, by construction of trtexec's file, not of our statistics.
    stamp_resolution = 1e-3
    for k in KEYS:
        assert abs(getattr(ours.enqueue, k) - log.metrics["enqueue"][k]) <= stamp_resolution
    assert abs(ours.walltime_s - log.walltime_s) * 1000 <= stamp_resolution
    assert ours.throughput_qps == pytest.approx(log.throughput_qps, rel=1e-5)


def test_export_times_recovers_trtexecs_float32_values() -> None:
    """Snapping each printed duration to its stamp's float32 grid gives trtexec's exact float32 value."""
    gen = _generator()
    trace = gen.simulate()
    timed = [q for q in trace if q["computeStart"] >= np.float32(200)]
    records = trtexec_times.load_times(TRT10_TIMES)
    for q, r in zip(timed, records, strict=True):
        assert r.compute_ms == float(gen.metric(q, "compute"))
        assert r.h2d_ms == float(gen.metric(q, "h2d")) and r.d2h_ms == float(gen.metric(q, "d2h"))
        assert r.latency_ms == float(gen.metric(q, "latency"))


def _generator():
    spec = importlib.util.spec_from_file_location("make_trtexec_fixtures", FIXTURES / "make_trtexec_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fixture_files_are_the_generators_output() -> None:
    for name, text in _generator().generate().items():
        assert (FIXTURES / name).read_text() == text, name


def test_log_and_times_together() -> None:
    log = trtexec.load_log(TRT10_LOG)
    rec = trtexec.to_bench_record(log, trtexec_times.load_times(TRT10_TIMES))
    assert rec["gpu_compute_ms"]["median"] == 0.224831  # printed values win
    assert _g(rec["gpu_compute_ms"]["cv"]) == "20.5509"  # ... and the trace adds every CV
    assert rec["h2d_ms"]["cv"] is not None and rec["queries"] == 500
    assert len(rec["times_ms"]) == 500 and _g(min(rec["times_ms"])) == _g(log.metrics["latency"]["min"])


def test_times_alone_summarized_by_stats() -> None:
    rec = trtexec.to_bench_record(None, trtexec_times.load_times(TRT10_TIMES))
    assert rec["queries"] == 500 and _g(rec["gpu_compute_ms"]["mean"]) == "0.228405"
    assert rec["tensorrt_version"] is None and rec["source"] == "trtexec"


def test_hand_computed_trace() -> None:
    """Ten queries with compute 1..10 ms: p90 is 9 (float32 (1 - 0.9) * 10 = 1.0000002 -> exclude 1), not 10."""
    queries = [{"startEnqMs": 100.0 * i, "endEnqMs": 100.0 * i + 0.5, "startH2dMs": 100.0 * i,
                "endH2dMs": 100.0 * i + 0.25, "startComputeMs": 100.0 * i + 0.25,
                "endComputeMs": 100.0 * i + 0.25 + c, "startD2hMs": 100.0 * i + 0.25 + c,
                "endD2hMs": 100.0 * i + 0.5 + c, "h2dMs": 0.25, "computeMs": c, "d2hMs": 0.25,
                "latencyMs": c + 0.5}
               for i, c in enumerate([3, 1, 4, 10, 5, 9, 2, 6, 8, 7], start=1)]
    records = trtexec_times.parse_times(json.dumps(queries))
    s = stats.performance_summary(records, unstable_cv=1.0)
    g = s.gpu_compute
    assert (g.min, g.max, g.mean, g.median, g.p90, g.p95, g.p99) == (1, 10, 5.5, 5.5, 9, 10, 10)
    assert g.cv == pytest.approx(math.sqrt(8.25) / 5.5 * 100, rel=1e-6)  # population std 2.87228 / 5.5
    assert s.latency.median == 6.0 and s.h2d.mean == 0.25
    assert s.walltime_s == pytest.approx((1000.5 + 7 - 100) / 1000)  # last H2D start's D2H end - first H2D start
    assert s.throughput_qps == pytest.approx(10 / 0.9075, rel=1e-6)


# ---- shape strings --------------------------------------------------------------------------------

def test_parse_shapes() -> None:
    assert parse_shapes("input:16x3x10,h0:20x3x20") == {"input": (16, 3, 10), "h0": (20, 3, 20)}
    # The name is everything before the last colon; trtexec's quoted names lose their quotes.
    assert parse_shapes("input:0:1x3x10") == {"input:0": (1, 3, 10)}
    assert parse_shapes("'x:y':5") == {"x:y": (5,)}
    assert parse_shapes("s:scalar") == parse_shapes("s:") == {"s": ()}


@pytest.mark.parametrize("text, message", [
    ("input16x3x10", "is not name:AxBxC"),
    (":1x2", "is not name:AxBxC"),
    ("input:1xax3", "positive integers"),
    ("input:1x0x3", "positive integers"),
    ("input:1x-2", "positive integers"),
    ("a:1,a:2", "given twice"),
])
def test_parse_shapes_errors(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as err:
        parse_shapes(text, "--maxShapes")
    assert str(err.value).startswith("--maxShapes") and "\n" not in str(err.value)


def test_format_shapes_refuses_commas() -> None:
    with pytest.raises(UserError, match="splits on ','"):
        format_shapes({"a,b": (1,)})


names = st.text(alphabet=st.characters(blacklist_characters=",'", blacklist_categories=("Cs",)), min_size=1,
                max_size=12).filter(lambda s: s.strip() == s)
shapes = st.dictionaries(names, st.lists(st.integers(1, 4096), min_size=1, max_size=5).map(tuple),
                         min_size=1, max_size=6)


@given(shapes)
def test_shapes_round_trip(value: dict) -> None:
    text = format_shapes(value)
    assert parse_shapes(text) == value
    assert format_shapes(parse_shapes(text)) == text


# ---- command lines --------------------------------------------------------------------------------

PROFILE = Profile(min={"input": (1, 1, 10), "h0": (20, 1, 20)}, opt={"input": (16, 3, 10), "h0": (20, 3, 20)},
                  max={"input": (512, 64, 10), "h0": (20, 64, 20)})


def test_build_command_trt10() -> None:
    argv = trtexec.build_command("lstm.onnx", "lstm.engine", PROFILE, "fp16", workspace_mb=2048,
                                 timing_cache="timing.cache")
    assert argv == ["trtexec", "--onnx=lstm.onnx", "--saveEngine=lstm.engine",
                    "--minShapes=input:1x1x10,h0:20x1x20", "--optShapes=input:16x3x10,h0:20x3x20",
                    "--maxShapes=input:512x64x10,h0:20x64x20", "--fp16", "--memPoolSize=workspace:2048M",
                    "--timingCacheFile=timing.cache", "--skipInference"]
    assert "--bf16" in trtexec.build_command("m.onnx", "e", PROFILE, "bf16")
    assert trtexec.build_command("m.onnx", "e", PROFILE, tf32=False)[-2:] == ["--noTF32", "--skipInference"]
    static = trtexec.build_command("m.onnx", "e", Profile(), "fp32")
    assert static == ["trtexec", "--onnx=m.onnx", "--saveEngine=e", "--skipInference"]


def test_build_command_trt11_has_no_precision_flags() -> None:
    assert "--fp16" not in trtexec.build_command("m.onnx", "e", PROFILE, "fp32", trt_major=11)
    with pytest.raises(UserError, match="strongly typed.*export the ONNX file in fp16"):
        trtexec.build_command("m.onnx", "e", PROFILE, "fp16", trt_major=11)
    with pytest.raises(UserError, match="unknown precision"):
        trtexec.build_command("m.onnx", "e", PROFILE, "int4")


def test_timing_command_spells_out_version_defaults() -> None:
    shapes = {"input": (16, 3, 10), "h0": (20, 3, 20)}
    t10 = trtexec.timing_command("e.engine", shapes, 200, 3, 10)
    assert t10 == ["trtexec", "--loadEngine=e.engine", "--shapes=input:16x3x10,h0:20x3x20", "--warmUp=200",
                   "--duration=3", "--iterations=10", "--useSpinWait"]
    t10b = trtexec.timing_command("e", shapes, 50, 0.5, 100, data_transfers=False, cuda_graph=True,
                                  export_times="t.json")
    assert t10b[3:] == ["--warmUp=50", "--duration=0.5", "--iterations=100", "--noDataTransfers", "--useCudaGraph",
                        "--useSpinWait", "--exportTimes=t.json"]
    t11 = trtexec.timing_command("e", shapes, trt_major=11)
    assert t11[-2:] == ["--includeDataTransfers", "--noCudaGraph"]  # TensorRT 11 defaults: transfers off, graph on
    assert trtexec.timing_command("e", shapes, data_transfers=False, cuda_graph=True, trt_major=11)[-1] == \
        "--iterations=10"
    assert trtexec.command_string(["trtexec", "--onnx=a b.onnx"]) == "trtexec '--onnx=a b.onnx'"


def test_generated_command_imports_back() -> None:
    """A log of our own command line gives back its shapes and precision."""
    build = trtexec.build_command("lstm.onnx", "e", PROFILE, "fp16")
    timing = trtexec.timing_command("e", PROFILE.opt)
    argv = build + timing[2:]
    assert trtexec.precision_of(argv, (10, 8, 0)) == "fp16"
    found = trtexec.shapes_of(argv)
    assert found["minShapes"] == PROFILE.min and found["maxShapes"] == PROFILE.max and found["shapes"] == PROFILE.opt


# ---- errors ---------------------------------------------------------------------------------------

def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("name, hint", [
    ("trtexec_8.6.1_no_summary.log", "rerun it with --separateProfileRun"),
    ("trtexec_10.8.0_failed.log", "trtexec failed ([TRT] ModelImporter.cpp:948: While parsing node number 3"),
])
def test_log_without_summary(name: str, hint: str) -> None:
    with pytest.raises(UserError, match="no '=== Performance summary ==='") as err:
        trtexec.load_log(FIXTURES / name)
    assert hint in _one_line(err)


def test_log_without_summary_other_reasons() -> None:
    text = "&&&& PASSED TensorRT.trtexec [TensorRT v101302] [b6] # trtexec --onnx=m.onnx --skipInference\n"
    with pytest.raises(UserError, match="--skipInference"):
        trtexec.parse_log(text)
    with pytest.raises(UserError, match="pass the whole log"):
        trtexec.parse_log(FP32_LOG.read_text().split("=== Performance summary ===")[0])
    with pytest.raises(UserError, match="cannot read"):
        trtexec.load_log(FIXTURES / "missing.log")


def test_truncated_summary_line() -> None:
    text = FP32_LOG.read_text().replace("percentile(99%) = 0.260254 ms", "").replace(
        "GPU Compute Time: min = 0.222168 ms, max = 1.59949 ms, mean = 0.225527 ms, median",
        "GPU Compute Time: min = 0.222168 ms, max")
    with pytest.raises(UserError, match="cannot read the line"):
        trtexec.parse_log(text, "run.log")


@pytest.mark.parametrize("text, message", [
    ("[ {", "not valid JSON"),
    ("[]", "non-empty JSON list"),
    ('{"a": 1}', "non-empty JSON list"),
    ('[{"startEnqMs": 1}]', "lacks trtexec's keys"),
    ('[{"startEnqMs": "x", "endEnqMs": 1, "startH2dMs": 1, "endH2dMs": 1, "startComputeMs": 1, '
     '"endComputeMs": 1, "startD2hMs": 1, "endD2hMs": 1}]', "non-numeric"),
])
def test_bad_times_file(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as err:
        trtexec_times.parse_times(text, "t.json")
    _one_line(err)


def test_log_and_times_from_different_runs() -> None:
    with pytest.raises(UserError, match="not from the same trtexec run"):
        trtexec.to_bench_record(trtexec.load_log(FP32_LOG), trtexec_times.load_times(TRT10_TIMES))
    with pytest.raises(UserError, match="nothing to import"):
        trtexec.to_bench_record(None, None)


# ---- the CLI --------------------------------------------------------------------------------------

def test_import_trtexec_cli(cli, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    code, stdout, _ = cli("import-trtexec", FP32_LOG, "-o", out, "--model", "seed", "--seq-len", "1", "--batch", "3")
    assert code == 0 and "4300.33" in stdout and "0.225281" in stdout
    code, _, _ = cli("import-trtexec", TRT10_LOG, "--times", TRT10_TIMES, "-o", out, "--json", tmp_path / "r.json")
    assert code == 0
    cli("import-trtexec", FP32_LOG, "-o", out, "--model", "seed", "--seq-len", "1", "--batch", "3")  # no duplicate
    data = json.loads(out.read_text())
    assert [r["throughput_qps"] for r in data["bench"]] == [4300.33, 3806.73]
    first = data["bench"][0]
    assert (first["model"], first["seq_len"], first["batch"], first["source"]) == ("seed", 1, 3, "trtexec")
    assert json.loads((tmp_path / "r.json").read_text())["queries"] == 500
    code, stdout, _ = cli("import-trtexec", TRT10_TIMES)  # the JSON alone
    assert code == 0 and "500 queries" in stdout


def test_import_trtexec_cli_errors(cli, tmp_path: Path) -> None:
    code, _, err = cli("import-trtexec", FIXTURES / "trtexec_8.6.1_no_summary.log")
    assert code == 2 and err.count("\n") == 1 and "--separateProfileRun" in err
    code, _, err = cli("import-trtexec", tmp_path / "nope.log")
    assert code == 2 and "cannot read" in err
    code, _, err = cli("import-trtexec", TRT10_TIMES, "--times", TRT10_TIMES)
    assert code == 2 and "give the log as FILE" in err
