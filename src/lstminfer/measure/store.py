"""Result records and their files: JSON / JSONL written atomically, read tolerantly.

A results file (`results.json`) is an object::

    {"schema": 1, "machine": {...}, "model": {...}, "verify": [records], "bench": [records]}

Verify record keys: backend, device, precision, seq_len, batch, input_shapes (every input's real shape),
output, max_abs_err, max_rel_err, atol, rtol, passed, reference (+ tf32 and the backend's other facts;
error for a comparison that failed outright; unverified: why the reference was not independent).
Bench record keys: backend, device, precision, seq_len, batch, input_shapes, throughput_qps, latency_ms
(min, max, mean, median, p90, p95, p99, cv, count; host clock end to end), gpu_compute_ms, h2d_ms, d2h_ms,
enqueue_ms, trt_latency_ms (the same summary shape; trtexec's H2D + compute + D2H), times_ms (every
timed query's host latency), queries, walltime_s, warnings, source ("lstminfer" or "trtexec"), model.
A backend that did not run has `skipped` (why) or `error` and `error_type` instead of numbers.
The typed records behind these keys are in lstminfer.measure.records.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

from lstminfer.errors import UserError

SCHEMA_VERSION = 1


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


def dumps(value: Any, indent: int | None = 2) -> str:
    return json.dumps(_jsonable(value), indent=indent, allow_nan=False)


def ensure_writable_dir(path: str | Path) -> Path:
    """Create `path` if needed; a one-line UserError if it cannot be written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create output directory {path}: {err.strerror}; choose another --out") from err
    if not os.access(path, os.W_OK):
        raise UserError(f"output directory {path} is not writable; choose another --out")
    return path


def write_text_atomic(path: str | Path, text: str | bytes) -> Path:
    """Write to a temporary file beside `path`, then rename: a crash never leaves a half-written file."""
    path = Path(path)
    ensure_writable_dir(path.parent if str(path.parent) else Path("."))
    mode = "wb" if isinstance(text, bytes) else "w"
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, mode) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror}; check the path and permissions") from err
    return path


def write_json_atomic(path: str | Path, value: Any) -> Path:
    return write_text_atomic(path, dumps(value) + "\n")


def append_jsonl(path: str | Path, record: Any) -> None:
    """Append one JSON line and fsync it, so a killed sweep keeps every finished point."""
    path = Path(path)
    line = dumps(record, indent=None) + "\n"
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise UserError(f"cannot append to {path}: {err.strerror}; check the path and permissions") from err


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every complete line; a truncated last line (a killed writer) is skipped, a corrupt middle line is an error."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from err
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                break  # the last line of a killed writer
            raise UserError(f"{path}: line {i + 1} is not valid JSON ({err.msg}); the file is corrupt") from err
    return records


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from err
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}); is it a results file?") from err


def library_versions() -> dict[str, str | None]:
    from importlib import metadata

    out = {}
    for name in ("lstminfer", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "triton", "tensorrt", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def machine_info() -> dict[str, Any]:
    """CPU, GPU, driver and library versions: recorded once per results file."""
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "libraries": library_versions(),
    }
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["gpu"] = {
                "name": props.name,
                "compute_capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.total_memory / 2**30, 1),
                "multiprocessors": props.multi_processor_count,
                "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version(),
                "driver": _nvidia_driver(),
            }
    except Exception:  # machine facts are best effort, never fatal
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_driver() -> str | None:
    try:
        return Path("/proc/driver/nvidia/version").read_text().split("Kernel Module")[1].split()[0]
    except (OSError, IndexError):
        return None


def new_results(model: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"schema": SCHEMA_VERSION, "machine": machine_info(), "model": model or {}, "verify": [], "bench": []}


def load_results(path: str | Path) -> dict[str, Any]:
    """A results.json object, or a JSONL of records (sweeps), normalized to the results object shape."""
    path = Path(path)
    if path.suffix == ".jsonl":
        records = read_jsonl(path)
        out = {"schema": SCHEMA_VERSION, "machine": {}, "model": {}, "verify": [], "bench": []}
        for rec in records:
            kind = rec.get("kind")
            if kind == "machine":
                out["machine"] = rec.get("machine", {})
                out["model"] = rec.get("model") or out["model"]
            elif kind in ("verify", "bench"):
                out[kind].append(rec)
            elif kind == "error":  # a sweep point that raised: its point and message
                out.setdefault("errors", []).append(rec)
        return out
    data = read_json(path)
    if not isinstance(data, dict) or not {"verify", "bench"} & set(data):
        raise UserError(f"{path} is not an lstminfer results file (no 'verify' or 'bench' records)")
    data.setdefault("verify", [])
    data.setdefault("bench", [])
    return data


class StagedDir:
    """A run's files written into ``OUT/.lstminfer-partial/``, moved into OUT together when the run completes.

    An interrupted or failed run leaves the previous complete results in OUT byte for byte, and its own
    partial files in `path` (replaced by the next run).
    """

    NAME = ".lstminfer-partial"  # specific: start() removes it, and --out may be a directory of the user's

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = out / self.NAME

    def start(self) -> Path:
        shutil.rmtree(self.path, ignore_errors=True)
        ensure_writable_dir(self.path)
        return self.path

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def commit(self, stale: str = "") -> list[Path]:
        """Move every file into OUT (results.json last: it marks the run complete); remove OUT's files
        matching `stale` that this run did not write (an earlier run's plots would mislead)."""
        files = sorted(self.path.iterdir(), key=lambda f: f.name == "results.json")
        names = {f.name for f in files}
        try:
            for old in self.out.glob(stale) if stale else []:
                if old.name not in names and old.is_file():
                    old.unlink()
            for f in files:
                os.replace(f, self.out / f.name)
            self.path.rmdir()
        except OSError as err:
            raise UserError(f"cannot move the results from {self.path} into {self.out}: {err.strerror}") from err
        return [self.out / f.name for f in files]
