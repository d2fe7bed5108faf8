"""Typed records: the JSON round trip, verdicts keyed by precision, "vs torch", one-line errors on bad records."""

from __future__ import annotations

import pytest

from lstminfer.errors import UserError
from lstminfer.measure.records import (
    BenchRecord,
    Failure,
    Point,
    Skip,
    VerifyRecord,
    format_speedup,
    from_dict,
    from_line,
    speedups,
    to_line,
    verdicts,
    verified,
)
from lstminfer.measure.stats import summarize

TORCH_FP32 = Point("torch", "cpu", "fp32")


def _verify(point: Point, passed: bool, err: float = 1e-7, unverified: str | None = None) -> VerifyRecord:
    return VerifyRecord(point.at(4, 2), "output", err, err, 1e-4, 1e-3, passed, "torch-float64-cpu",
                        unverified=unverified, extra={"tf32": False})


def _bench(backend: str, times: list[float], precision: str = "fp32") -> BenchRecord:
    return BenchRecord(Point(backend, "cpu", precision, 1, 3), summarize(times), throughput_qps=1000 / times[0],
                       queries=len(times), walltime_s=sum(times) / 1000, clock="host", times_ms=tuple(times),
                       extra={"config": {"warmup_ms": 200.0}})


def test_verify_record_round_trips_with_the_documented_field_names():
    record = _verify(TORCH_FP32, True)
    d = record.to_dict()
    assert {"backend", "device", "precision", "seq_len", "batch", "output", "max_abs_err", "max_rel_err",
            "atol", "rtol", "passed", "reference", "tf32"} <= set(d)
    assert (d["seq_len"], d["batch"], d["tf32"]) == (4, 2, False)
    assert from_dict(d, "verify") == record


def test_bench_record_round_trips_and_keeps_unknown_keys():
    record = _bench("onnxruntime", [1.0, 2.0, 3.0])
    d = record.to_dict()
    assert d["latency_ms"]["median"] == 2.0 and d["times_ms"] == [1.0, 2.0, 3.0] and d["config"]["warmup_ms"] == 200
    back = from_dict({**d, "tensorrt_version": "8.6.1"}, "bench")
    assert back == record and back.extra["tensorrt_version"] == "8.6.1"
    assert back.to_dict()["tensorrt_version"] == "8.6.1"


def test_skip_and_failure_records_and_sweep_lines():
    skip = Skip(Point("fused", "cpu", "fp16"), "verify", "precision fp16 not supported", "torch-float64-cpu")
    assert skip.to_dict()["skipped"] == "precision fp16 not supported" and skip.to_dict()["passed"] is None
    assert from_dict(skip.to_dict(), "verify") == skip
    failure = Failure.of(TORCH_FP32.at(1, 3), "bench", RuntimeError("CUDA error:\n  out of memory"))
    assert failure.error == "CUDA error: out of memory" and failure.error_type == "RuntimeError"
    line = to_line(failure)
    assert line["kind"] == "error" and from_line(line) == failure
    assert to_line(_bench("torch", [1.0]))["kind"] == "bench"


def test_verdicts_are_keyed_by_precision_fp32_passes_fp16_fails():
    fp16 = Point("torch", "cpu", "fp16")
    records = [_verify(TORCH_FP32, True), _verify(fp16, True), _verify(fp16, False, err=0.5)]
    v = verdicts(from_dict(r.to_dict(), "verify") for r in records)  # through JSON, as a report reads them
    assert v == {TORCH_FP32: "passed", fp16: "FAILED"}


def test_unverified_is_its_own_verdict_and_does_not_count_as_verified():
    records = [_verify(TORCH_FP32, True, unverified="onnx.reference lacks DequantizeLinear")]
    (verdict,) = verdicts(records).values()
    assert verdict == "unverified: no independent reference (onnx.reference lacks DequantizeLinear)"
    assert not verified(verdict) and verified(verdict, allow_unverified=True)
    failure = Failure(TORCH_FP32, "verify", "boom")
    assert verdicts([*records, failure]) == {TORCH_FP32: "FAILED"}


def test_speedup_is_the_ratio_of_medians_over_torch_on_the_same_point():
    records = [_bench("torch", [4.0, 4.0, 5.0]), _bench("onnxruntime", [1.0, 2.0, 9.0]),
               _bench("onnxruntime", [1.0], precision="fp16")]  # no torch fp16: no speedup
    s = speedups(records)
    assert s == {records[0].point: 1.0, records[1].point: 2.0}
    assert format_speedup(s[records[1].point]) == "2.00x" and format_speedup(None) == "-"


@pytest.mark.parametrize("bad, message", [
    ({"device": "cpu", "precision": "fp32", "latency_ms": {"median": 1}}, "lacks the field 'backend'"),
    ({"backend": "torch", "device": "cpu", "precision": "fp32", "seq_len": "x", "latency_ms": {"median": 1}},
     "seq_len='x'"),
    ({"backend": "torch", "device": "cpu", "precision": "fp32"}, "lacks the field 'latency_ms'"),
    ({"backend": "torch", "device": "cpu", "precision": "fp32", "latency_ms": {"mean": 1}}, "no latency_ms.median"),
    (5, "is int, not an object"),
])
def test_a_bad_record_is_one_line_naming_the_field(bad, message):
    with pytest.raises(UserError, match="bench record") as err:
        from_dict(bad, "bench")
    assert message in str(err.value) and "\n" not in str(err.value)
