"""Typed result records: one frozen dataclass per record kind, keyed by one `Point`.

Everything lstminfer measures is one of these records; dicts appear only at the file boundary
(`to_dict()` / `from_dict()`, JSON field names as documented in docs/reports.md and docs/verify.md):

    Point          backend, device, precision, seq_len, batch (+ input_shapes: the real input shapes)
    VerifyRecord   one output of one backend at one point against the reference: errors, tolerances,
                   ``passed``; ``unverified`` says why the reference was not independent of the runtime
    BenchRecord    one benchmark: trtexec's summaries (``latency_ms``, ``gpu_compute_ms``, ...), every
                   query's host latency, warnings, where the numbers come from (``source``, ``clock``)
    Skip           a backend that cannot run (unsupported precision, no ONNX file): ``skipped`` = why
    Failure        whatever a backend raised, as one line (``error``, ``error_type``); the others go on

A record belongs to a stage, ``verify`` or ``bench``: results.json keeps one list per stage, a sweep's
JSONL says it in ``kind`` (``verify``, ``bench``, and ``error`` for a bench-stage Failure, which ends a
point like a bench line does).  Records from older files and from imported trtexec runs load too: keys
this module does not type are kept in ``extra`` and written back unchanged.

Reading results: `verdicts(records)` gives one verdict per (backend, device, precision) -- the key is a
Point without a shape, so an fp32 pass and an fp16 failure of one backend are two verdicts;
`speedups(records)` gives "vs torch" (a ratio of median host latencies) and `format_speedup` writes it.
A record that lacks a field or has one of the wrong type raises a one-line UserError naming it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from lstminfer.errors import UserError
from lstminfer.measure.stats import Summary

STAGES = ("verify", "bench")
SPEEDUP_BASELINE = "torch"
# Said wherever a "vs torch" number is shown: it is a ratio of medians, so it can disagree with qps.
SPEEDUP_NOTE = "vs torch: torch eager's median host latency / this backend's (same device, precision, shape)"


def _fail(what: str, problem: str) -> UserError:
    return UserError(f"{what} {problem}; is this an lstminfer results file?")


def _get(d: Mapping[str, Any], key: str, kinds: type | tuple[type, ...], what: str, optional: bool = False) -> Any:
    """d[key] checked against `kinds` (None allowed when optional); a one-line UserError otherwise."""
    if key not in d:
        if optional:
            return None
        raise _fail(what, f"lacks the field {key!r}")
    value = d[key]
    if value is None and optional:
        return None
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise _fail(what, f"has {key}={value!r}, not a number")
    if not isinstance(value, kinds):
        raise _fail(what, f"has {key}={value!r} of the wrong type")
    return value


def _float(d: Mapping[str, Any], key: str, what: str) -> float | None:
    """An optional number; JSON null (how NaN and inf are written) stays None."""
    value = _get(d, key, (int, float), what, optional=True)
    return None if value is None else float(value)


# ---- the key ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    """One backend on one device at one precision and shape; seq_len/batch are None for a whole backend."""

    backend: str
    device: str
    precision: str
    seq_len: int | None = None
    batch: int | None = None
    # (name, dims) of every input, when known; not part of the key (a grid point is the same point with or without)
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = field(default=(), compare=False)

    @property
    def runner(self) -> Point:
        """The (backend, device, precision) this point belongs to: one runner lifetime, one verdict."""
        return Point(self.backend, self.device, self.precision)

    @property
    def label(self) -> str:
        """``torch[cpu]``: how tables and messages name a backend on a device."""
        return f"{self.backend}[{self.device}]"

    @property
    def shape(self) -> str:
        """``64x3`` (SEQxBATCH), or ``-`` for a record of a whole backend."""
        return "-" if self.seq_len is None or self.batch is None else f"{self.seq_len}x{self.batch}"

    def describe(self) -> str:
        """``torch[cpu] fp32 seq 64 x batch 3``: one line for progress and logs."""
        shape = "" if self.seq_len is None else f" seq {self.seq_len} x batch {self.batch}"
        return f"{self.label} {self.precision}{shape}"

    def at(self, seq_len: int, batch: int, input_shapes: Mapping[str, Sequence[int]] | None = None) -> Point:
        """This runner's point at one shape."""
        shapes = tuple((name, tuple(int(d) for d in dims)) for name, dims in (input_shapes or {}).items())
        return Point(self.backend, self.device, self.precision, seq_len, batch, shapes)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": self.backend, "device": self.device, "precision": self.precision,
                               "seq_len": self.seq_len, "batch": self.batch}
        if self.input_shapes:
            out["input_shapes"] = {name: list(dims) for name, dims in self.input_shapes}
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], what: str = "a record") -> Point:
        shapes = d.get("input_shapes") or {}
        if not isinstance(shapes, Mapping):
            raise _fail(what, f"has input_shapes={shapes!r}, not an object")
        return cls(_get(d, "backend", str, what), _get(d, "device", str, what), _get(d, "precision", str, what),
                   _get(d, "seq_len", int, what, optional=True), _get(d, "batch", int, what, optional=True),
                   tuple((str(n), tuple(int(x) for x in dims)) for n, dims in shapes.items()))


POINT_KEYS = frozenset(f.name for f in fields(Point))


def _extra(d: Mapping[str, Any], typed: Iterable[str]) -> dict[str, Any]:
    """The keys a record type does not type (backend facts such as tf32, trtexec's command line): kept as they are."""
    skip = POINT_KEYS | set(typed) | {"kind"}
    return {k: v for k, v in d.items() if k not in skip}


# ---- verification ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VerifyRecord:
    """One output of one backend at one point, compared with the reference (docs/verify.md)."""

    point: Point
    output: str
    max_abs_err: float | None
    max_rel_err: float | None
    atol: float
    rtol: float
    passed: bool
    reference: str
    error: str | None = None  # why the comparison failed outright (shape mismatch, NaN, missing output)
    unverified: str | None = None  # set when the reference is not independent of the runtime: why
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)  # tf32, provider, ... (describe())

    stage = "verify"
    _TYPED = ("output", "max_abs_err", "max_rel_err", "atol", "rtol", "passed", "reference", "error", "unverified")

    def to_dict(self) -> dict[str, Any]:
        out = {**self.point.to_dict(), "reference": self.reference, **self.extra, "output": self.output,
               "atol": self.atol, "rtol": self.rtol, "max_abs_err": self.max_abs_err,
               "max_rel_err": self.max_rel_err, "passed": self.passed}
        if self.error:
            out["error"] = self.error
        if self.unverified:
            out["unverified"] = self.unverified
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VerifyRecord:
        what = "a verify record"
        return cls(Point.from_dict(d, what), _get(d, "output", str, what), _float(d, "max_abs_err", what),
                   _float(d, "max_rel_err", what), float(_get(d, "atol", (int, float), what)),
                   float(_get(d, "rtol", (int, float), what)), _get(d, "passed", bool, what),
                   str(d.get("reference") or "-"), _get(d, "error", str, what, optional=True),
                   _get(d, "unverified", str, what, optional=True), _extra(d, cls._TYPED))


# ---- timing -----------------------------------------------------------------------------------------------
SUMMARY_FIELDS = ("latency_ms", "trt_latency_ms", "gpu_compute_ms", "h2d_ms", "d2h_ms", "enqueue_ms")


def _summary(d: Mapping[str, Any], key: str, what: str) -> Summary | None:
    """A trtexec summary (min, max, mean, median, p90, p95, p99, cv, count); a log may leave some out."""
    value = _get(d, key, Mapping, what, optional=True)
    if value is None:
        return None
    stats = {f.name: _float(value, f.name, f"{what}'s {key}") for f in fields(Summary)}
    if stats["median"] is None and key == "latency_ms":
        raise _fail(what, "has no latency_ms.median")
    count = stats.pop("count")
    return Summary(**stats, count=None if count is None else int(count))


@dataclass(frozen=True)
class BenchRecord:
    """One backend timed at one point with trtexec's definitions (docs/bench.md), or imported from trtexec."""

    point: Point
    latency_ms: Summary  # host clock end to end (trtexec's Latency for imported runs)
    throughput_qps: float | None
    queries: int | None
    walltime_s: float | None
    source: str = "lstminfer"  # or "trtexec"
    clock: str | None = None  # "host", "cuda-events" or "trtexec": which clock stamped the queries
    total_gpu_compute_s: float | None = None
    trt_latency_ms: Summary | None = None  # H2D + GPU compute + D2H per query
    gpu_compute_ms: Summary | None = None
    h2d_ms: Summary | None = None
    d2h_ms: Summary | None = None
    enqueue_ms: Summary | None = None
    times_ms: tuple[float, ...] = ()  # every timed query's host latency
    warnings: tuple[str, ...] = ()
    data_transfers: bool | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)  # config, describe(), trtexec facts

    stage = "bench"
    _TYPED = SUMMARY_FIELDS + ("throughput_qps", "queries", "walltime_s", "source", "clock", "total_gpu_compute_s",
                               "times_ms", "warnings", "data_transfers")

    @property
    def median_ms(self) -> float:
        return self.latency_ms.median

    @property
    def on_gpu_clock(self) -> bool:
        """Whether gpu_compute_ms was measured on a GPU clock (CUDA events, or trtexec's own)."""
        return self.clock in ("cuda-events", "trtexec") or self.source == "trtexec"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.point.to_dict(), "source": self.source, "clock": self.clock,
                               "throughput_qps": self.throughput_qps, "queries": self.queries,
                               "walltime_s": self.walltime_s, "total_gpu_compute_s": self.total_gpu_compute_s}
        for key in SUMMARY_FIELDS:
            summary = getattr(self, key)
            out[key] = summary.to_dict() if summary is not None else None
        out.update({"times_ms": list(self.times_ms), "warnings": list(self.warnings)})
        if self.data_transfers is not None:
            out["data_transfers"] = self.data_transfers
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BenchRecord:
        what = "a bench record"
        summaries = {key: _summary(d, key, what) for key in SUMMARY_FIELDS}
        if summaries["latency_ms"] is None:
            raise _fail(what, "lacks the field 'latency_ms'")
        times = _get(d, "times_ms", list, what, optional=True) or []
        warnings = _get(d, "warnings", list, what, optional=True) or []
        queries = _get(d, "queries", (int, float), what, optional=True)
        return cls(Point.from_dict(d, what), throughput_qps=_float(d, "throughput_qps", what),
                   queries=None if queries is None else int(queries), walltime_s=_float(d, "walltime_s", what),
                   source=str(d.get("source") or "lstminfer"), clock=_get(d, "clock", str, what, optional=True),
                   total_gpu_compute_s=_float(d, "total_gpu_compute_s", what),
                   times_ms=tuple(float(t) for t in times if isinstance(t, (int, float))),
                   warnings=tuple(str(w) for w in warnings),
                   data_transfers=_get(d, "data_transfers", bool, what, optional=True),
                   extra=_extra(d, cls._TYPED), **summaries)


# ---- a backend that did not run ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Skip:
    """A backend that cannot run this model here (precision, no ONNX file, ...): no number, a reason."""

    point: Point
    stage: str
    reason: str
    reference: str | None = None  # verify stage: the reference the others were compared with

    def to_dict(self) -> dict[str, Any]:
        out = {**self.point.to_dict(), "skipped": self.reason}
        if self.stage == "verify":  # verify rows keep their columns, empty
            out.update({"reference": self.reference, "output": None, "max_abs_err": None, "max_rel_err": None,
                        "passed": None})
        return out


@dataclass(frozen=True)
class Failure:
    """Whatever one backend raised (a CUDA error, a runtime refusing the file, a UserError), as one line."""

    point: Point
    stage: str
    error: str
    error_type: str = "UserError"
    reference: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {**self.point.to_dict(), "error": self.error, "error_type": self.error_type}
        if self.stage == "verify":
            out.update({"reference": self.reference, "output": None, "max_abs_err": None, "max_rel_err": None,
                        "passed": False})
        return out

    @classmethod
    def of(cls, point: Point, stage: str, err: BaseException, reference: str | None = None) -> Failure:
        """The exception's message on one line (first 500 characters), or its type when it has none."""
        message = " ".join(str(err).split())[:500] or type(err).__name__
        return cls(point, stage, message, type(err).__name__, reference)


Record = VerifyRecord | BenchRecord | Skip | Failure


def from_dict(d: Any, stage: str) -> Record:
    """A record of `stage` ("verify" or "bench") read from its JSON object."""
    if not isinstance(d, Mapping):
        raise _fail(f"a {stage} record", f"is {type(d).__name__}, not an object")
    what = f"a {stage} record"
    if d.get("skipped"):
        return Skip(Point.from_dict(d, what), stage, str(d["skipped"]), d.get("reference"))
    if stage == "bench" and "latency_ms" not in d and d.get("error"):
        return Failure(Point.from_dict(d, what), stage, str(d["error"]), str(d.get("error_type") or "UserError"))
    if stage == "verify" and d.get("output") is None and d.get("error"):
        return Failure(Point.from_dict(d, what), stage, str(d["error"]), str(d.get("error_type") or "UserError"),
                       d.get("reference"))
    if stage == "verify":
        return VerifyRecord.from_dict(d)
    if stage == "bench":
        return BenchRecord.from_dict(d)
    raise ValueError(f"unknown stage {stage!r}")


# ---- sweep lines (JSONL): the stage is in "kind" ----------------------------------------------------------
def to_line(record: Record) -> dict[str, Any]:
    """One sweep line: ``kind`` first; a bench-stage Failure is an ``error`` line (it ends its point)."""
    kind = "error" if isinstance(record, Failure) and record.stage == "bench" else record.stage
    return {"kind": kind, **record.to_dict()}


def from_line(d: Mapping[str, Any]) -> Record:
    kind = d.get("kind")
    if kind == "error":
        return Failure(Point.from_dict(d, "an error line"), "bench", str(d.get("error") or "no message"),
                       str(d.get("error_type") or "Exception"))
    if kind not in STAGES:
        raise UserError(f"a sweep line has kind {kind!r}; expected machine, verify, bench or error")
    return from_dict(d, kind)


# ---- reading records ---------------------------------------------------------------------------------------
PASSED, FAILED = "passed", "FAILED"
UNVERIFIED = "unverified: no independent reference"


def verdicts(records: Iterable[Record]) -> dict[Point, str]:
    """One verdict per (backend, device, precision) -- the key is ``record.point.runner`` -- in first-seen order.

    ``FAILED`` if any comparison failed or the backend raised; else ``unverified: no independent reference
    (why)`` if the reference was the runtime itself; else ``passed``; ``skipped: why`` when it could not run.
    """
    out: dict[Point, str] = {}
    for r in records:
        if r.stage != "verify":
            continue
        key, now = r.point.runner, out.get(r.point.runner)
        if isinstance(r, Skip):
            verdict = f"skipped: {r.reason}"
        elif isinstance(r, Failure) or not r.passed:
            verdict = FAILED
        elif r.unverified:
            verdict = f"{UNVERIFIED} ({r.unverified})"
        else:
            verdict = PASSED
        if now is None or _rank(verdict) > _rank(now):
            out[key] = verdict
    return out


def _rank(verdict: str) -> int:
    """Which verdict wins when one backend has several records: a failure outweighs everything."""
    return 3 if verdict == FAILED else 2 if verdict.startswith("unverified") else 1 if verdict == PASSED else 0


def verified(verdict: str, allow_unverified: bool = False) -> bool:
    """Whether a verdict counts as checked for the exit code (skipped backends are not counted at all)."""
    return verdict == PASSED or (allow_unverified and verdict.startswith("unverified"))


def speedups(records: Iterable[Record]) -> dict[Point, float]:
    """Per timed point: torch eager's median host latency over this backend's (same device, precision, shape).

    From medians, as trtexec users compare latency; a backend with more queries in flight can have a
    qps ratio that differs, which is why `SPEEDUP_NOTE` goes with every table that shows it.
    """
    timed = [r for r in records if isinstance(r, BenchRecord) and r.median_ms]
    baseline = {r.point.runner.at(r.point.seq_len, r.point.batch): r.median_ms for r in timed
                if r.point.backend == SPEEDUP_BASELINE}
    out = {}
    for r in timed:
        base = baseline.get(Point(SPEEDUP_BASELINE, r.point.device, r.point.precision, r.point.seq_len, r.point.batch))
        if base:
            out[r.point] = base / r.median_ms
    return out


def format_speedup(value: float | None) -> str:
    """``11.73x``; ``-`` where there is no torch eager baseline."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.2f}x"
