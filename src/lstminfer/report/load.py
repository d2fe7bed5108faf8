"""Reading result files for a report, and turning a results object into typed records.

This is the report's file boundary: `load_inputs` reads results.json files, sweep JSONL files, record
lists (`--json` output, imported trtexec runs), `lstminfer loadtest --json` files and directories of them
into one results object (the documented JSON shape, docs/reports.md), and `typed` turns such an object into
`Results`, whose records are `measure.records` dataclasses (load-test levels: `serve.loadtest.LoadRecord`):
the only thing tables and plots read.  Whatever a file holds is
checked here, so a file that is not ours (binary garbage, `{"verify": "x", "bench": 5}`, a record
without its backend or a field of the wrong type) is one `UserError` naming the file and the problem,
never a traceback further down.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lstminfer.errors import UserError
from lstminfer.measure.records import BenchRecord, Failure, Point, Record, Skip, from_dict, from_line
from lstminfer.measure.store import SCHEMA_VERSION, load_results, read_json
from lstminfer.serve.loadtest import LoadRecord

RECORD_LISTS = ("verify", "bench", "errors")
LOADTEST = "loadtest"  # the list `lstminfer loadtest --json` writes: {"loadtest": [...], "server", "machine"}
ALL_LISTS = (*RECORD_LISTS, LOADTEST)  # every list of records a results object holds


def _kind_of(record: dict[str, Any]) -> str | None:
    """verify / bench / error for a record of a `--json` list (those carry no "kind" field), else None."""
    kind = record.get("kind")
    if kind in ("verify", "bench", "error"):
        return kind
    if kind is not None:
        return None
    if "throughput_rps" in record and "concurrency" in record:  # a load-test level (it has latency_ms too)
        return LOADTEST
    if "max_abs_err" in record or "passed" in record:
        return "verify"
    if "latency_ms" in record or "throughput_qps" in record or "skipped" in record:
        return "bench"
    return None


def _empty() -> dict[str, Any]:
    return {"schema": SCHEMA_VERSION, "machine": {}, "model": {}, "verify": [], "bench": [], "errors": [],
            LOADTEST: []}


def _from_list(data: list[Any]) -> dict[str, Any]:
    results = _empty()
    for r in data:
        kind = _kind_of(r)
        if kind is not None:
            results["errors" if kind == "error" else kind].append(r)
    return results


def _parse(path: Path, explicit: bool) -> dict[str, Any] | None:
    """The file as a results object; None for a JSON file that is not ours when scanning a directory."""
    if path.suffix == ".jsonl":
        return load_results(path)
    data = read_json(path)
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        return _from_list(data)
    if isinstance(data, dict) and {"verify", "bench"} & set(data):
        return {**load_results(path), LOADTEST: data.get(LOADTEST) or []}
    if isinstance(data, dict) and LOADTEST in data:  # `lstminfer loadtest --json`
        return {**_empty(), "machine": data.get("machine") or {}, LOADTEST: data[LOADTEST]}
    if isinstance(data, dict) and _kind_of(data) == "bench":  # one `bench --json` record
        return {**_empty(), "bench": [data]}
    if explicit:
        raise UserError(f"{path} is not an lstminfer results file (no 'verify', 'bench' or 'loadtest' records)")
    return None


@dataclass(frozen=True)
class Results:
    """One report's input: machine and model facts as recorded, and typed records."""

    machine: Mapping[str, Any]
    model: Mapping[str, Any]
    verify: tuple[Record, ...]
    bench: tuple[Record, ...]
    failed: tuple[Failure, ...]  # sweep points that raised and never ran after all
    loadtest: tuple[LoadRecord, ...] = ()  # `lstminfer loadtest` levels


def _bench_record(d: Mapping[str, Any]) -> Record:
    """A bench record; one whose latency summary is null or has no median (a trtexec log that printed no
    summary) is a note in the tables, while one without the field at all is not a record of ours."""
    latency = d.get("latency_ms")
    if "latency_ms" in d and not d.get("skipped") and not d.get("error") \
            and not (isinstance(latency, Mapping) and latency.get("median") is not None):
        return Skip(Point.from_dict(d, "a bench record"), "bench", "no latency summary")
    return from_dict(d, "bench")


def _records(items: Any, key: str, where: str) -> list[Any]:
    """Each record of one list of a results object, converted; a bad one is a UserError naming `where`."""
    if not isinstance(items, list):
        raise UserError(f"{where}: '{key}' must be a list of records, not {type(items).__name__}; is it an "
                        "lstminfer results file?")
    convert = {"verify": lambda d: from_dict(d, "verify"), "bench": _bench_record,
               "errors": lambda d: from_line({**d, "kind": "error"})}[key]
    out = []
    for i, item in enumerate(items):
        if isinstance(item, Record):  # already typed (results in memory)
            out.append(item)
            continue
        try:
            if not isinstance(item, Mapping):
                raise UserError(f"is {type(item).__name__}, not an object")
            out.append(convert(item))
        except UserError as err:
            raise UserError(f"{where}, record {i + 1} of '{key}': {err}") from None
    return out


def typed(results: Mapping[str, Any] | Results, where: str = "results") -> Results:
    """A results object (the JSON shape, or records in memory) as `Results`; bad content is a UserError."""
    if isinstance(results, Results):
        return results
    for key in ("machine", "model"):
        if not isinstance(results.get(key) or {}, Mapping):
            raise UserError(f"{where}: '{key}' must be an object, not {type(results[key]).__name__}; is it an "
                            "lstminfer results file?")
    verify, bench, errors = (_records(results.get(key) or [], key, where) for key in RECORD_LISTS)
    ran = {(r.point.runner, r.point.seq_len, r.point.batch) for r in bench if isinstance(r, BenchRecord)}
    return Results(results.get("machine") or {}, results.get("model") or {}, tuple(verify), tuple(bench),
                   tuple(e for e in errors if (e.point.runner, e.point.seq_len, e.point.batch) not in ran),
                   tuple(_load_levels(results.get(LOADTEST) or [], where)))


def _load_levels(items: Any, where: str) -> list[LoadRecord]:
    """The load-test levels of a results object; a bad one is a UserError naming `where`."""
    if not isinstance(items, list):
        raise UserError(f"{where}: '{LOADTEST}' must be a list of records, not {type(items).__name__}; is it a file "
                        "that `lstminfer loadtest --json` wrote?")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, LoadRecord):
            out.append(item)
            continue
        try:
            if not isinstance(item, Mapping):
                raise UserError(f"is {type(item).__name__}, not an object")
            out.append(LoadRecord.from_dict(item))
        except UserError as err:
            raise UserError(f"{where}, record {i + 1} of '{LOADTEST}': {err}") from None
    return out


def as_records(items: Sequence[Any], stage: str) -> list[Record]:
    """Verify or bench records, from their JSON objects or as they are: what the tables take."""
    return _records(list(items), stage, f"{stage} records")


def _load_file(path: Path, explicit: bool) -> dict[str, Any] | None:
    try:
        results = _parse(path, explicit)
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text file (not UTF-8), so not a results file; give a results.json or "
                        "sweep.jsonl that lstminfer wrote") from None
    if results is None:
        return None
    typed(results, str(path))
    if explicit and not any(results.get(key) for key in ALL_LISTS):
        raise UserError(f"{path} holds no records (an empty or unfinished file?); run the sweep or pick another file")
    return results


def load_inputs(paths: Sequence[str | Path]) -> dict[str, Any]:
    """Results files and directories (their results.json, *.jsonl and record lists) merged into one object."""
    if not paths:
        raise UserError("give a results directory or file (results.json, sweep.jsonl)")
    loaded: list[dict[str, Any]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl") and not p.name.startswith("."))
            found = [r for r in (_load_file(f, explicit=False) for f in files) if r is not None]
            if not any(r.get(key) for r in found for key in ALL_LISTS):
                raise UserError(f"{path} holds no results (results.json or *.jsonl records); run `lstminfer sweep "
                                f"--out {path}` or `lstminfer run --out {path}` first")
            loaded.extend(found)
        elif path.exists():
            loaded.append(_load_file(path, explicit=True))
        else:
            raise UserError(f"{path} does not exist; give a results directory or file")
    out = _empty()
    for r in loaded:
        out["machine"] = out["machine"] or r.get("machine") or {}
        out["model"] = out["model"] or r.get("model") or {}
        for key in ALL_LISTS:
            out[key].extend(r.get(key) or [])
    return out
