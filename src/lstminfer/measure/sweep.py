"""A sweep: every (precision, backend, seq_len, batch) point of a grid, verified then benchmarked.

Each (backend, device, precision) is one runner lifetime serving all of its points
(lstminfer.measure.run: prepared once for every shape of the grid, the same verify and timing code as
`lstminfer verify` and `lstminfer bench`).  Each point's lines are appended to a JSONL file as soon as the
point finishes, each fsynced:

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lstminfer.backends.base import PRECISIONS, BackendChoice
from lstminfer.errors import UserError
from lstminfer.measure.bench import BenchConfig
from lstminfer.measure.records import BenchRecord, Failure, Point, Record, Skip, VerifyRecord, to_line
from lstminfer.measure.run import Step, serve
from lstminfer.measure.store import append_jsonl, machine_info
from lstminfer.measure.verify import References
from lstminfer.model.base import Model

SWEEP_FILE = "sweep.jsonl"
POINT_ENDS = ("bench", "error")  # the line kinds that close a point


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

    def targets(self) -> list[Point]:
        """Every (backend, device, precision): one runner lifetime each, precision outermost."""
        return [Point(c.name, c.device, p) for p in self.precisions for c in self.choices]

    def points(self) -> list[Point]:
        """In measuring order: precision, then backend, then sequence length, then batch."""
        return [t.at(s, b) for t in self.targets() for s in self.seq_lens for b in self.batches]


def done_points(lines: Iterable[dict[str, Any]], retry_errors: bool = False) -> set[Point]:
    """Points whose closing line (bench, or error unless retrying them) is among `lines`."""
    ends = ("bench",) if retry_errors else POINT_ENDS
    done = set()
    for line in lines:
        if line.get("kind") not in ends:
            continue
        try:
            point = Point.from_dict(line, "a sweep line")
        except UserError:
            continue  # not a point of ours (e.g. hand-edited): measured again
        if point.seq_len is not None and point.batch is not None:
            done.add(point)
    return done


def read_sweep(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The records up to the last finished point, and that point's end in bytes; the file is not touched.

    What follows that point is a killed writer's leftovers: a truncated line, or the verify lines of a
    point whose bench line was never written.  A corrupt line before the end is not a leftover: it is
    an error.
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
    return records[:keep_records], keep_bytes


def trim_unfinished(path: Path) -> list[dict[str, Any]]:
    """Cut the file after its last finished point (see `read_sweep`); return the records kept."""
    records, keep_bytes = read_sweep(path)
    if keep_bytes < path.stat().st_size:
        try:
            os.truncate(path, keep_bytes)
        except OSError as err:
            raise UserError(f"cannot repair {path}: {err.strerror}; check its permissions") from err
    return records


def _same_model(stored: dict[str, Any], model: dict[str, Any]) -> bool:
    keys = ("name", "spec", "with_state")
    return all(stored.get(k) == model.get(k) for k in keys if k in stored)


def check_target(path: Path, resume: bool, model: Model | None = None) -> list[dict[str, Any]]:
    """Every reason to refuse the sweep file, found before anything is exported or written; its records.

    Without --resume an existing sweep is refused; with it, a corrupt file or one measured on another
    model is (`model` None skips that check).
    """
    if not path.exists() or path.stat().st_size == 0:
        return []
    if not resume:
        raise UserError(f"{path} already holds a sweep: pass --resume to continue it, or choose another --out")
    records, _ = read_sweep(path)
    machine_lines = [r for r in records if r.get("kind") == "machine"]
    if model is not None and machine_lines:
        stored = machine_lines[0].get("model") or {}
        if not _same_model(stored, model.describe()):
            raise UserError(f"{path} was measured on another model ({stored.get('name')} {stored.get('spec')}); "
                            "use the same model options to resume, or choose another --out")
    return records


def open_sweep(path: Path, model: Model, resume: bool, retry_errors: bool = False) -> tuple[set[Point], list[str]]:
    """Start the file (its machine line) or, resuming, repair it; return the points done and notes."""
    records = check_target(path, resume, model)
    notes: list[str] = []
    if records:
        records = trim_unfinished(path)
    machine_lines = [r for r in records if r.get("kind") == "machine"]
    if machine_lines:
        here, there = machine_info(), machine_lines[0].get("machine") or {}
        for key in ("cpu", "gpu"):
            if there.get(key) != here.get(key):
                notes.append(f"resuming on another machine ({key} differs from the file's): timings will mix")
                break
    else:
        append_jsonl(path, {"kind": "machine", "machine": machine_info(), "model": model.describe()})
    done = done_points(records, retry_errors)
    if records:
        notes.append(f"resuming {path}: {len(done)} points already measured")
    return done, notes


Progress = Callable[[Point, float], None]


@dataclass
class SweepResult:
    path: Path
    grid_points: int  # points in the grid
    skipped: int  # already in the file (resume)
    measured: list[Record]  # every record written by this run
    notes: list[str]

    @property
    def errors(self) -> list[Failure]:
        return [r for r in self.measured if isinstance(r, Failure) and r.stage == "bench"]


def run_sweep(model: Model, grid: Grid, path: str | Path, timing: BenchConfig | None = None,
              options: dict[str, Any] | None = None, resume: bool = False, retry_errors: bool = False,
              planned: Callable[[int, list[str]], None] | None = None, progress: Progress | None = None,
              finished: Callable[[Point, list[Record]], None] | None = None) -> SweepResult:
    """Measure every point of `grid` not yet in `path`, appending each point's lines when it finishes.

    `timing` gives warm-up, duration, iterations, transfers and seed (its shape and precision are set
    per point).  `planned(n, notes)` is told how many points are left to measure and any notes on the
    file (e.g. that it is resumed); `progress(point, fraction)` is called while a point runs;
    `finished(point, records)` after its lines are on disk.
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
    references = References(model, timing.seed)
    now: list[Point] = []  # the point being measured, for progress

    def on_progress(what: str, fraction: float | None) -> None:
        if progress and now:  # verify is the first tenth of a point, the timing loop the rest
            progress(now[0], 0.1 + 0.9 * fraction if fraction is not None else 0.0)

    for target in grid.targets():
        steps = [Step(p.seq_len, p.batch, verify=True, bench=True) for p in todo if p.runner == target]
        points = [target.at(s.seq_len, s.batch) for s in steps]
        now[:] = points[:1]
        for i, (_, records) in enumerate(serve(model, target, steps, references, timing, options, on_progress)):
            for record in records:
                append_jsonl(path, to_line(record))
            result.measured.extend(records)
            if finished:
                finished(points[i], records)
            now[:] = points[i + 1:i + 2]
    return result


def summarize_point(records: Sequence[Record]) -> str:
    """One line for the log: median latency, or why the point has none."""
    failed = any(isinstance(r, Failure) or (isinstance(r, VerifyRecord) and not r.passed) for r in records
                 if r.stage == "verify")
    for r in records:
        if r.stage != "bench":
            continue
        if isinstance(r, BenchRecord):
            return f"median {r.median_ms:.4g} ms" + (", verification FAILED" if failed else "")
        if isinstance(r, Failure):
            return f"error: {r.error}"
        if isinstance(r, Skip):
            return f"skipped: {r.reason}"
    return "no result"
