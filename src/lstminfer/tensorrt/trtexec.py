"""Speaking trtexec: equivalent command lines, and importing its logs (with its --exportTimes queries,
read by ``lstminfer.tensorrt.trtexec_times``) into our bench records.

Formats are TensorRT OSS ``samples/common``: ``sampleReporting.cpp`` (``printEpilog`` writes the
``=== Performance summary ===`` block, ``exportJSONTrace`` the --exportTimes file), ``sampleOptions.cpp``
(option names and defaults), ``logging.h`` (the ``&&&& PASSED TensorRT.trtexec [TensorRT v8601] # cmd``
line). Everything here is plain text processing: nothing needs TensorRT.

Both trtexec outputs print floats with C++ stream defaults: 6 significant digits. The summary's numbers
are therefore kept exactly as printed (``float("0.225281")``).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lstminfer.errors import UserError
from lstminfer.measure.stats import UNSTABLE_CV_PERCENT, QueryRecord, performance_summary
from lstminfer.onnx.shapes import Shapes, format_shapes, parse_shapes

if TYPE_CHECKING:
    from lstminfer.tensorrt.build import Profile

# ---- command lines ------------------------------------------------------------------------------

PRECISION_FLAGS = {"fp32": (), "fp16": ("--fp16",), "bf16": ("--bf16",)}


def _check_precision(precision: str, trt_major: int) -> tuple[str, ...]:
    if precision not in PRECISION_FLAGS:
        raise UserError(f"unknown precision {precision!r}: use fp32, fp16 or bf16")
    if trt_major >= 11 and precision != "fp32":
        raise UserError(f"TensorRT {trt_major} builds strongly typed networks and has no --{precision} flag: "
                        f"export the ONNX file in {precision} (its tensor types set the precision), "
                        "or target TensorRT 10 with --trt-version 10")
    return PRECISION_FLAGS[precision]


def build_command(onnx_path: str | Path, engine_path: str | Path, profile: Profile, precision: str = "fp32",
                  workspace_mb: int | None = None, timing_cache: str | Path | None = None,
                  trt_major: int = 10, executable: str = "trtexec", tf32: bool = True) -> list[str]:
    """trtexec arguments that build the same engine as ``lstminfer build`` (and do not time it).

    ``tf32=False`` adds ``--noTF32`` (trtexec, like TensorRT, allows TF32 in fp32 layers by default).
    """
    argv = [executable, f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    if profile.min:
        argv += [f"--minShapes={format_shapes(profile.min)}", f"--optShapes={format_shapes(profile.opt)}",
                 f"--maxShapes={format_shapes(profile.max)}"]
    argv += list(_check_precision(precision, trt_major))
    if not tf32:
        argv.append("--noTF32")
    if workspace_mb:
        argv.append(f"--memPoolSize=workspace:{int(workspace_mb)}M")
    if timing_cache:
        argv.append(f"--timingCacheFile={timing_cache}")
    argv.append("--skipInference")
    return argv


def timing_command(engine_path: str | Path, shapes: Shapes, warmup_ms: float = 200, duration_s: float = 3,
                   iterations: int = 10, data_transfers: bool = True, cuda_graph: bool = False,
                   trt_major: int = 10, export_times: str | Path | None = None,
                   executable: str = "trtexec") -> list[str]:
    """trtexec arguments that time an engine at `shapes` with our bench's settings spelled out.

    TensorRT 11 changed defaults (data transfers off, CUDA graph on, spin-wait on): the flags written
    here make the run the same on either side of that change.
    """
    argv = [executable, f"--loadEngine={engine_path}"]
    if shapes:
        argv.append(f"--shapes={format_shapes(shapes)}")
    argv += [f"--warmUp={_num(warmup_ms)}", f"--duration={_num(duration_s)}", f"--iterations={int(iterations)}"]
    if trt_major >= 11:
        argv += (["--includeDataTransfers"] if data_transfers else []) + ([] if cuda_graph else ["--noCudaGraph"])
    else:
        argv += ([] if data_transfers else ["--noDataTransfers"]) + (["--useCudaGraph"] if cuda_graph else [])
        argv.append("--useSpinWait")  # TensorRT 11's default; steadier GPU compute times
    if export_times:
        argv.append(f"--exportTimes={export_times}")
    return argv


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def command_string(argv: Sequence[str]) -> str:
    return shlex.join(argv)


# ---- log import ---------------------------------------------------------------------------------

_PREFIX = re.compile(r"^\[\d\d/\d\d/\d{4}-\d\d:\d\d:\d\d\] \[([A-Z])\] ?(.*)$")
_RESULT = re.compile(r"^&&&& (PASSED|FAILED|RUNNING|WAIVED) TensorRT\.trtexec \[TensorRT v(\d+)\](?: \[b\d+\])?"
                     r"(?: # (.*))?$")
_VALUE = re.compile(r"(min|max|mean|median|percentile\(([0-9.]+)%\)) = ([-+0-9.eE]+|inf|-?nan) ms")
METRICS = {"Latency": "latency", "Enqueue Time": "enqueue", "H2D Latency": "h2d",
           "GPU Compute Time": "gpu_compute", "D2H Latency": "d2h"}
_OPTION_LINES = {"Data transfers": "data_transfers", "Spin-wait": "spin_wait", "CUDA Graph": "cuda_graph"}


@dataclass
class TrtexecLog:
    """What a trtexec log says about one timing run (numbers exactly as printed)."""

    source: str
    tensorrt_version: str | None = None
    command: str | None = None
    status: str | None = None  # PASSED / FAILED, from the last &&&& line
    throughput_qps: float | None = None
    walltime_s: float | None = None
    total_gpu_compute_s: float | None = None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # latency/enqueue/h2d/gpu_compute/d2h
    queries: int | None = None
    queries_estimated: bool = False
    warnings: list[str] = field(default_factory=list)  # the summary's "* ..." performance warnings
    log_warnings: list[str] = field(default_factory=list)  # every other [W] line
    errors: list[str] = field(default_factory=list)  # [E] lines
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def version_tuple(self) -> tuple[int, ...] | None:
        return tuple(int(p) for p in self.tensorrt_version.split(".")) if self.tensorrt_version else None

    def argv(self) -> list[str]:
        try:
            return shlex.split(self.command or "")
        except ValueError:
            return (self.command or "").split()


def decode_version(number: str | int) -> str:
    """trtexec's ``[TensorRT vN]``: 8601 -> 8.6.1 (before 10: M*1000+m*100+p), 101302 -> 10.13.2 (M*10000+...)."""
    n = int(number)
    if n >= 10000:
        return f"{n // 10000}.{n // 100 % 100}.{n % 100}"
    return f"{n // 1000}.{n // 100 % 10}.{n % 100}"


def unstable_cv_threshold(version: str | tuple[int, ...] | None) -> float:
    """GPU compute CV (%) above which trtexec warns: 1.0 before TensorRT 10.13.2, 2.5 from it on."""
    if version is None:
        return UNSTABLE_CV_PERCENT
    v = tuple(int(p) for p in version.split(".")) if isinstance(version, str) else tuple(version)
    return 2.5 if v >= (10, 13, 2) else 1.0


def _split_line(raw: str) -> tuple[str | None, str]:
    m = _PREFIX.match(raw.rstrip("\r\n"))
    return (m.group(1), m.group(2)) if m else (None, raw.rstrip("\r\n"))


def _metric_values(text: str, where: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in _VALUE.finditer(text):
        key = m.group(1)
        if m.group(2):
            p = float(m.group(2))
            key = f"p{int(p)}" if p.is_integer() else f"p{m.group(2)}"
        out[key] = float(m.group(3))
    if not {"min", "max", "mean", "median"} <= set(out):
        raise UserError(f"{where}: cannot read the line {text.strip()!r}; is the log complete?")
    return out


def parse_log(text: str, source: str = "trtexec log") -> TrtexecLog:
    """Read a trtexec log (TensorRT 8.x, 10.x, 11.x); the last performance summary in it wins."""
    log = TrtexecLog(source=source)
    in_summary = False
    last_star = False
    seen_summary = False
    for raw in text.splitlines():
        level, body = _split_line(raw)
        result = _RESULT.match(body.strip())
        if result:
            log.tensorrt_version = decode_version(result.group(2))
            if result.group(3):
                log.command = result.group(3).strip()
            if result.group(1) != "RUNNING":
                log.status = result.group(1)
            continue
        if level == "W":
            if body.startswith("* "):
                log.warnings.append(body[2:].strip())
                last_star = True
            elif not (last_star and body.startswith("  ")):
                log.log_warnings.append(body.strip())
                last_star = False
            continue
        last_star = False
        if level == "E":
            log.errors.append(body.strip())
            continue
        stripped = body.strip()
        if stripped == "=== Performance summary ===":
            in_summary, seen_summary = True, True
            log.metrics, log.warnings = {}, []
            continue
        if stripped.startswith("===") and stripped.endswith("==="):
            in_summary = False
        m = re.match(r"TensorRT version: (\d+\.\d+\.\d+)", stripped)
        if m and not log.tensorrt_version:
            log.tensorrt_version = m.group(1)
        m = re.match(r"Timing trace has (\d+) queries over ([0-9.eE+-]+) s", stripped)
        if m:
            log.queries = int(m.group(1))
        key, sep, rest = stripped.partition(": ")
        if key in _OPTION_LINES and sep and not in_summary:
            log.options[_OPTION_LINES[key]] = rest.strip() == "Enabled"
        elif key == "Duration" and sep and "warm up" in rest and not in_summary:
            d = re.match(r"([0-9.]+)s \(\+ ([0-9.]+)ms warm up\)", rest)
            if d:
                log.options["duration_s"], log.options["warmup_ms"] = float(d.group(1)), float(d.group(2))
        elif key == "Iterations" and sep and not in_summary and rest.strip().isdigit():
            log.options["iterations"] = int(rest)
        if not in_summary or not sep:
            continue
        if key == "Throughput":
            log.throughput_qps = float(rest.split()[0])
        elif key in METRICS:
            log.metrics[METRICS[key]] = _metric_values(rest, source)
        elif key == "Total Host Walltime":
            log.walltime_s = float(rest.split()[0])
        elif key == "Total GPU Compute Time":
            log.total_gpu_compute_s = float(rest.split()[0])
    if not seen_summary or log.throughput_qps is None or "gpu_compute" not in log.metrics:
        raise UserError(f"{source}: no '=== Performance summary ===' in this trtexec log; {_why_no_summary(log)}")
    if log.queries is None and log.walltime_s:
        log.queries = round(log.throughput_qps * log.walltime_s)
        log.queries_estimated = True
    return log


def _why_no_summary(log: TrtexecLog) -> str:
    argv = log.argv()
    major = log.version_tuple[0] if log.version_tuple else None
    if log.status == "FAILED":
        first = log.errors[0] if log.errors else "see its [E] lines"
        return f"trtexec failed ({first}); fix that and rerun it"
    if "--skipInference" in argv or any(a.startswith("--buildOnly") for a in argv):
        return "it was run with --skipInference (build only); rerun it without that flag to time the engine"
    profiled = any(a.startswith(("--dumpProfile", "--exportProfile")) for a in argv)
    if profiled and "--separateProfileRun" not in argv and (major is None or major < 11):
        return "TensorRT before 11 prints no summary when profiling: rerun it with --separateProfileRun"
    return "pass the whole log of a timing run (e.g. `trtexec ... 2>&1 | tee run.log`)"


def load_log(path: str | Path) -> TrtexecLog:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from err
    return parse_log(text, source=str(path))


# ---- into our bench records ---------------------------------------------------------------------


def precision_of(argv: Sequence[str], version: tuple[int, ...] | None = None) -> str:
    """The precision a trtexec command line asked for: fp32 unless --fp16/--bf16/--int8/--best."""
    flags = {a.split("=", 1)[0] for a in argv}
    if version and version[0] >= 11 or "--stronglyTyped" in flags:
        return "typed"  # strongly typed: the ONNX file's tensor types decide
    chosen = [p for p, f in (("int8", "--int8"), ("fp16", "--fp16"), ("bf16", "--bf16"), ("best", "--best"))
              if f in flags]
    return "+".join(chosen) if chosen else "fp32"


def shapes_of(argv: Sequence[str]) -> dict[str, Shapes]:
    """--shapes / --minShapes / --optShapes / --maxShapes given on a trtexec command line."""
    out = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in ("--shapes", "--minShapes", "--optShapes", "--maxShapes") and value:
            try:
                out[key[2:]] = parse_shapes(value, key)
            except UserError:
                continue  # a shape we cannot read is no reason to refuse the whole log
    return out


def _summary_dict(values: dict[str, float] | None, count: int | None, cv: float | None = None) -> dict | None:
    if values is None:
        return None
    keys = ("min", "max", "mean", "median", "p90", "p95", "p99")
    out: dict[str, Any] = {k: values.get(k) for k in keys}
    out.update({k: v for k, v in values.items() if k not in out})
    out["cv"] = cv
    out["count"] = count
    return out


def _gpu_cv_from_warnings(warnings: Sequence[str]) -> float | None:
    for w in warnings:
        m = re.search(r"coefficient of variance = ([0-9.eE+-]+)%", w)
        if m:
            return float(m.group(1))
    return None


def to_bench_record(log: TrtexecLog | None = None, times: Sequence[QueryRecord] | None = None,
                    model: str | None = None, seq_len: int | None = None, batch: int | None = None,
                    precision: str | None = None) -> dict[str, Any]:
    """One bench record (schema in docs/reports.md) from a trtexec log and/or its --exportTimes queries.

    The log's printed numbers are used as printed; the queries add what the log does not print
    (every metric's CV, each query's latency). Given only the queries, lstminfer.stats summarizes them.
    """
    if log is None and not times:
        raise UserError("nothing to import: give a trtexec log, an --exportTimes file, or both")
    computed = performance_summary(times, unstable_cv_threshold(log.tensorrt_version if log else None)) \
        if times else None
    if log is not None and computed is not None:
        _check_same_run(log, computed.queries)
    argv = log.argv() if log else []
    version = log.version_tuple if log else None
    shapes = shapes_of(argv)
    run_shapes = shapes.get("shapes") or shapes.get("optShapes") or {}
    if (seq_len is None or batch is None) and "input" in run_shapes and len(run_shapes["input"]) == 3:
        seq_len = run_shapes["input"][0] if seq_len is None else seq_len  # lstminfer's layout: [seq, batch, feat]
        batch = run_shapes["input"][1] if batch is None else batch
    record: dict[str, Any] = {
        "backend": "trtexec", "device": "cuda", "source": "trtexec", "clock": "trtexec",
        "precision": precision or precision_of(argv, version),
        "seq_len": seq_len, "batch": batch, "model": model or _onnx_of(argv),
        "tensorrt_version": log.tensorrt_version if log else None,
        "command": log.command if log else None, "shapes": {k: {n: list(d) for n, d in v.items()}
                                                            for k, v in shapes.items()},
        "status": log.status if log else None,
    }
    if log is not None:
        count = computed.queries if computed else log.queries
        cvs = {name: getattr(computed, name).cv for name in METRICS.values()} if computed else {}
        if not computed:
            cvs["gpu_compute"] = _gpu_cv_from_warnings(log.warnings)
        summaries = {name: _summary_dict(log.metrics.get(name), count, cvs.get(name)) for name in METRICS.values()}
        record.update({
            "throughput_qps": log.throughput_qps, "walltime_s": log.walltime_s,
            "total_gpu_compute_s": log.total_gpu_compute_s, "queries": count,
            "queries_estimated": log.queries_estimated and not computed,
            "warnings": list(log.warnings), "log_warnings": list(log.log_warnings),
            "trtexec_options": dict(log.options),
        })
        if "data_transfers" in log.options:
            record["data_transfers"] = log.options["data_transfers"]
    else:
        summaries = {name: getattr(computed, name).to_dict() for name in METRICS.values()}
        record.update({
            "throughput_qps": computed.throughput_qps, "walltime_s": computed.walltime_s,
            "total_gpu_compute_s": computed.total_gpu_compute_s, "queries": computed.queries,
            "warnings": list(computed.warnings), "log_warnings": [],
        })
    record.update({
        # trtexec has no host clock around a query: its Latency (H2D + compute + D2H) is the latency.
        "latency_ms": summaries["latency"], "trt_latency_ms": summaries["latency"],
        "gpu_compute_ms": summaries["gpu_compute"], "h2d_ms": summaries["h2d"], "d2h_ms": summaries["d2h"],
        "enqueue_ms": summaries["enqueue"],
        "times_ms": [r.latency_ms for r in times] if times else [],
    })
    return record


def _check_same_run(log: TrtexecLog, n_times: int) -> None:
    if log.queries is None:
        return
    slack = 1 if log.queries_estimated else 0
    if abs(log.queries - n_times) > slack:
        raise UserError(f"the --exportTimes file has {n_times} queries but the log's summary "
                        f"{'about ' if slack else ''}{log.queries}: they are not from the same trtexec run")


def _onnx_of(argv: Sequence[str]) -> str | None:
    for arg in argv:
        for flag in ("--onnx=", "--loadEngine="):
            if arg.startswith(flag):
                return arg[len(flag):]
    return None
