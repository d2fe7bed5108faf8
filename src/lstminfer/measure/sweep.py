"""A sweep: every (precision, seq_len, batch, backend) point of a grid, verified then benchmarked.

Each point is measured with the same functions as `lstminfer verify` and `lstminfer bench` (no timing
code of its own) and its lines are appended to a JSONL file as soon as the point finishes, each fsynced:

    {"kind": "machine", "machine": {...}, "model": {...}}     once per file, first
    {"kind": "verify", backend, device, precision, seq_len, batch, output, max_abs_err, ...}   per output
    {"kind": "bench", backend, device, precision, seq_len, batch, latency_ms, ...}            ends a point
    {"kind": "error", backend, device, precision, seq_len, batch, error, error_type}          ends a point

A point is done once its bench or error line is in the file.  A crash or Ctrl-C loses only the point in
flight; `resume=True` first drops what a killed writer left after the last finished point (a truncated
line, the verify lines of an unfinished point), then measures only the points not yet done.
A point that raises (out of memory, a backend's own exception, a UserError) gets an error line and the
sweep goes on; a precision a backend does not support gives its usual `skipped` records.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lstminfer.backends.base import PRECISIONS, BackendChoice
from lstminfer.errors import UserError
from lstminfer.measure.bench import BenchConfig, bench
from lstminfer.measure.store import append_jsonl, machine_info
from lstminfer.measure.verify import verify
from lstminfer.model.base import Model

SWEEP_FILE = "sweep.jsonl"
POINT_ENDS = ("bench", "error")  # the line kinds that close a point


@dataclass(frozen=True, order=True)
class Point:
    """One measurement of the grid: a backend on a device at one precision and shape."""

    precision: str
    seq_len: int
    batch: int
    backend: str
    device: str

    @property
    def label(self) -> str:
        return f"{self.backend}[{self.device}] {self.precision} seq {self.seq_len} x batch {self.batch}"

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "device": self.device, "precision": self.precision,
                "seq_len": self.seq_len, "batch": self.batch}

    @classmethod
    def of(cls, record: dict[str, Any]) -> Point | None:
        """The point a record belongs to; None for records with no shape (e.g. a backend skipped outright)."""
        try:
            return cls(str(record["precision"]), int(record["seq_len"]), int(record["batch"]),
                       str(record["backend"]), str(record["device"]))
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class Grid:
    """seq_len x batch x precision x backends; every value checked, duplicates dropped, order kept."""

    seq_lens: tuple[int, ...]
    batches: tuple[int, ...]
    precisions: tuple[str, ...]
    choices: tuple[BackendChoice, ...]

    def __post_init__(self) -> None:
        for name, values in (("seq-len", self.seq_lens), ("batch", self.batches)):
            if not values:
                raise UserError(f"--{name}: give at least one value")
            bad = [v for v in values if not isinstance(v, int) or isinstance(v, bool) or v <= 0]
            if bad:
                raise UserError(f"--{name}: values must be positive integers, got {bad[0]!r}")
        if not self.precisions:
            raise UserError("--precision: give at least one of " + ", ".join(PRECISIONS))
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown:
            raise UserError(f"--precision: unknown precision {unknown[0]!r}; choose from {', '.join(PRECISIONS)}")
        if not self.choices:
            raise UserError("no backend to sweep: none is available here (see `lstminfer backends`)")
        object.__setattr__(self, "seq_lens", tuple(dict.fromkeys(self.seq_lens)))
        object.__setattr__(self, "batches", tuple(dict.fromkeys(self.batches)))
        object.__setattr__(self, "precisions", tuple(dict.fromkeys(self.precisions)))
        object.__setattr__(self, "choices", tuple(dict.fromkeys(self.choices)))

    def points(self) -> list[Point]:
        """In measuring order: precision, then sequence length, then batch, then backend."""
        return [Point(p, s, b, c.name, c.device)
                for p in self.precisions for s in self.seq_lens for b in self.batches for c in self.choices]


def done_points(records: Iterable[dict[str, Any]], retry_errors: bool = False) -> set[Point]:
    """Points whose closing line (bench, or error unless retrying them) is among `records`."""
    ends = ("bench",) if retry_errors else POINT_ENDS
    return {p for r in records if r.get("kind") in ends and (p := Point.of(r)) is not None}


def check_target(path: Path, resume: bool) -> None:
    """Fail early (before exporting anything) when the file holds a sweep and --resume was not given."""
    if path.exists() and path.stat().st_size > 0 and not resume:
        raise UserError(f"{path} already holds a sweep: pass --resume to continue it, or choose another --out")


def trim_unfinished(path: Path) -> list[dict[str, Any]]:
    """Cut the file after its last finished point; return the records kept.

    What follows that point is a killed writer's leftovers: a truncated line, or the verify lines of a
    point whose bench line was never written.  That point is measured again, so nothing is lost.
    A corrupt line before the end is not a leftover: it is an error, and the file is left untouched.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from err
    records: list[dict[str, Any]] = []
    keep_bytes, keep_records, offset = 0, 0, 0
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        end = offset + len(line) + (1 if i < len(lines) - 1 else 0)
        if line.strip():
            complete = i < len(lines) - 1  # the last piece has no newline: a truncated write
            try:
                record = json.loads(line) if complete else None
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                if any(rest.strip() for rest in lines[i + 1:]):
                    raise UserError(f"{path}: line {i + 1} is not valid JSON ({err}); the file is corrupt, "
                                    "so it was left as it is: fix or remove that line, or use another --out") from err
                record = None
            if record is None:
                break
            if not isinstance(record, dict):
                raise UserError(f"{path}: line {i + 1} is not a record; is this a sweep file?")
            records.append(record)
            if record.get("kind") in POINT_ENDS + ("machine",):
                keep_bytes, keep_records = end, len(records)
        offset = end
    if keep_bytes < len(data):
        try:
            os.truncate(path, keep_bytes)
        except OSError as err:
            raise UserError(f"cannot repair {path}: {err.strerror}; check its permissions") from err
    return records[:keep_records]


def _same_model(stored: dict[str, Any], model: dict[str, Any]) -> bool:
    keys = ("name", "spec", "with_state")
    return all(stored.get(k) == model.get(k) for k in keys if k in stored)


def open_sweep(path: Path, model: Model, resume: bool, retry_errors: bool = False) -> tuple[set[Point], list[str]]:
    """Start the file (its machine line) or, resuming, repair it; return the points done and notes."""
    check_target(path, resume)
    notes: list[str] = []
    records = trim_unfinished(path) if path.exists() else []
    machine_lines = [r for r in records if r.get("kind") == "machine"]
    description = model.describe()
    if machine_lines:
        stored = machine_lines[0].get("model") or {}
        if not _same_model(stored, description):
            raise UserError(f"{path} was measured on another model ({stored.get('name')} {stored.get('spec')}); "
                            "use the same model options to resume, or choose another --out")
        here, there = machine_info(), machine_lines[0].get("machine") or {}
        for key in ("cpu", "gpu"):
            if there.get(key) != here.get(key):
                notes.append(f"resuming on another machine ({key} differs from the file's): timings will mix")
                break
    else:
        append_jsonl(path, {"kind": "machine", "machine": machine_info(), "model": description})
    done = done_points(records, retry_errors)
    if records:
        notes.append(f"resuming {path}: {len(done)} points already measured")
    return done, notes


Progress = Callable[[Point, float], None]


def measure_point(model: Model, point: Point, timing: BenchConfig, options: dict[str, Any] | None = None,
                  progress: Progress | None = None) -> list[dict[str, Any]]:
    """The lines of one point: its verify records, then its bench record (or an error line instead)."""
    choice = BackendChoice(point.backend, point.device, True, "", "")
    lines: list[dict[str, Any]] = []
    try:
        if progress:
            progress(point, 0.0)
        records = verify(model, [choice], [(point.seq_len, point.batch)], precision=point.precision,
                         seed=timing.seed, options=options, onnx_reference=False)
        lines += [{"kind": "verify", **r} for r in records]
        config = replace(timing, seq_len=point.seq_len, batch=point.batch, precision=point.precision)
        on_bench = (lambda label, fraction: progress(point, 0.1 + 0.9 * fraction)) if progress else None
        records = bench(model, [choice], config, options=options, progress=on_bench)
        lines += [{"kind": "bench", **r} for r in records]
    except Exception as err:  # noqa: BLE001 - one failed point (OOM, a backend's exception) must not end the sweep
        _free_device_memory()
        message = " ".join(str(err).split())[:500] or type(err).__name__
        lines.append({"kind": "error", **point.to_dict(), "error": message, "error_type": type(err).__name__})
    if not any(r["kind"] in POINT_ENDS for r in lines):  # a self-timed backend: nothing recorded
        lines.append({"kind": "error", **point.to_dict(), "error": "the backend gave no benchmark record",
                      "error_type": "NoRecord"})
    return lines


def _free_device_memory() -> None:
    """After an out-of-memory error, give cached blocks back so the next (smaller) point can run."""
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort only
        pass


@dataclass
class SweepResult:
    path: Path
    grid_points: int  # points in the grid
    skipped: int  # already in the file (resume)
    measured: list[dict[str, Any]]  # every line written by this run
    notes: list[str]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [r for r in self.measured if r["kind"] == "error"]


def run_sweep(model: Model, grid: Grid, path: str | Path, timing: BenchConfig | None = None,
              options: dict[str, Any] | None = None, resume: bool = False, retry_errors: bool = False,
              planned: Callable[[int, list[str]], None] | None = None, progress: Progress | None = None,
              finished: Callable[[Point, list[dict[str, Any]]], None] | None = None) -> SweepResult:
    """Measure every point of `grid` not yet in `path`, appending each point's lines when it finishes.

    `timing` gives warm-up, duration, iterations, transfers and seed (its shape and precision are set
    per point).  `planned(n, notes)` is told how many points are left to measure and any notes on the
    file (e.g. that it is resumed); `progress(point, fraction)` is called while a point runs;
    `finished(point, lines)` after its lines are on disk.
    KeyboardInterrupt propagates; every finished point is already in the file.
    """
    path = Path(path)
    timing = timing or BenchConfig()
    done, notes = open_sweep(path, model, resume, retry_errors)
    todo = [p for p in grid.points() if p not in done]
    result = SweepResult(path, grid_points=len(grid.points()), skipped=len(grid.points()) - len(todo),
                         measured=[], notes=notes)
    if planned:
        planned(len(todo), notes)
    for point in todo:
        lines = measure_point(model, point, timing, options, progress)
        for line in lines:
            append_jsonl(path, line)
        result.measured.extend(lines)
        if finished:
            finished(point, lines)
    return result


def summarize_point(lines: Sequence[dict[str, Any]]) -> str:
    """One line for the log: median latency, or why the point has none."""
    for r in lines:
        if r["kind"] == "error":
            return f"error: {r['error']}"
    failed = any(r.get("passed") is False for r in lines if r["kind"] == "verify")
    for r in lines:
        if r["kind"] == "bench":
            if "latency_ms" in r:
                return f"median {r['latency_ms']['median']:.4g} ms" + (", verification FAILED" if failed else "")
            return f"skipped: {r.get('skipped') or r.get('error')}"
    return "no result"
