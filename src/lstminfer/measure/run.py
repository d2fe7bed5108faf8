"""One runner lifetime per (backend, device, precision), serving every point; one error boundary per backend.

Polygraphy's rule, run everything and compare afterwards, with one lifetime per runner::

    runner = Backend(model, device, precision)      supports()?  no -> Skip records
    runner.prepare(every shape it will serve)       raises?      -> Failure records, next backend
    for each step (a shape; verify and/or bench):   raises?      -> a Failure record, next step
        verify: infer, compare with the shared float64 reference  -> VerifyRecords
        bench:  trtexec's timing loop                             -> a BenchRecord
    runner.close()                                  always (its global settings restored)

So `verify`, `bench` and `run` prepare each backend once for all their points, and a sweep prepares each
(backend, device, precision) once for its whole grid.  Whatever one backend raises -- a CUDA
RuntimeError, ONNX Runtime refusing a file, a UserError -- becomes that backend's record with a one-line
reason and the other backends go on.  KeyboardInterrupt is not caught: the caller keeps what is done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from lstminfer.backends.base import Runner, runner_class
from lstminfer.measure.bench import BenchConfig, bench_record, time_queries
from lstminfer.measure.records import Failure, Point, Record, Skip, from_dict
from lstminfer.measure.verify import References, verify_outputs
from lstminfer.model.base import Model

# progress(what is happening, fraction of it done or None)
Progress = Callable[[str, "float | None"], None]


@dataclass(frozen=True)
class Step:
    """One shape a runner serves, and what to do there."""

    seq_len: int
    batch: int
    verify: bool = False
    bench: bool = False


def steps_for(verify_points: Sequence[tuple[int, int]], bench_points: Sequence[tuple[int, int]]) -> list[Step]:
    """verify's and bench's steps for one runner: every verify point, then every bench point."""
    return [Step(s, b, verify=True) for s, b in verify_points] + [Step(s, b, bench=True) for s, b in bench_points]


def _shapes(steps: Sequence[Step]) -> list[tuple[int, int]]:
    """What prepare() is given: bench shapes first (the first is the one to optimize for), then the rest."""
    ordered = sorted(steps, key=lambda s: not s.bench)
    return list(dict.fromkeys((s.seq_len, s.batch) for s in ordered))


def _unrunnable(make: Callable[[Point, str], Record], target: Point,
                steps: Sequence[Step]) -> Iterator[tuple[Step, list[Record]]]:
    """A backend that never ran: one verify record for the whole backend, one bench record per bench point."""
    told_verify = False
    for step in steps:
        records = []
        if step.verify and not told_verify:
            records.append(make(target, "verify"))
            told_verify = True
        if step.bench:
            records.append(make(target.at(step.seq_len, step.batch), "bench"))
        yield step, records


def _failing(err: Exception, reference: str | None) -> Callable[[Point, str], Record]:
    return lambda point, stage: Failure.of(point, stage, err, reference)


def serve(model: Model, target: Point, steps: Sequence[Step], references: References, timing: BenchConfig,
          options: dict[str, Any] | None = None,
          progress: Progress | None = None) -> Iterator[tuple[Step, list[Record]]]:
    """The records of each step, in order, from one runner lifetime (see the module docstring)."""
    reference = references.name if any(s.verify for s in steps) else None
    make: Callable[[Point, str], Record] | None = None
    try:
        cls = runner_class(target.backend)
        runner = cls(model, device=target.device, precision=target.precision, **(options or {}))
        ok, why = runner.supports()
        if not ok:
            make = lambda point, stage: Skip(point, stage, why, reference)  # noqa: E731
    except Exception as err:  # noqa: BLE001 - the error boundary of one backend
        make = _failing(err, reference)
    if make is None and cls.self_timed and not any(s.bench for s in steps):
        for step in steps:  # a self-timed backend (trtexec) returns no outputs: nothing to verify, nothing to say
            yield step, []
        return
    if make is None:
        try:
            if progress:
                progress(f"prepare {target.describe()}", None)
            runner.prepare(_shapes(steps))
        except Exception as err:  # noqa: BLE001
            runner.close()
            make = _failing(err, reference)
    if make is not None:
        yield from _unrunnable(make, target, steps)
        return
    if cls.self_timed:  # e.g. trtexec: times itself, has no outputs to verify
        try:
            for step in steps:
                yield step, [_self_timed(runner, target.at(step.seq_len, step.batch), timing)] if step.bench else []
        finally:
            runner.close()
        return
    try:
        for step in steps:
            yield step, _measure_step(model, runner, target, step, references, timing, progress)
    finally:
        runner.close()


def _measure_step(model: Model, runner: Runner, target: Point, step: Step, references: References,
                  timing: BenchConfig, progress: Progress | None) -> list[Record]:
    try:
        shapes = model.input_shapes(step.seq_len, step.batch)  # the real shapes, for files with fixed axes
    except Exception:  # noqa: BLE001 - the same error comes back from infer, inside the boundary below
        shapes = None
    point = target.at(step.seq_len, step.batch, shapes)
    records: list[Record] = []
    if step.verify:
        try:
            if progress:
                progress(f"verify {point.describe()}", None)
            outputs = runner.infer(references.inputs(step.seq_len, step.batch))
            extra = runner.describe_at(step.seq_len, step.batch)
            records += verify_outputs(point, outputs, references, bool(extra.get("tf32")), extra)
        except Exception as err:  # noqa: BLE001
            _free_device_memory()
            records.append(Failure.of(point, "verify", err, references.name))
    if step.bench:
        try:
            config = replace(timing, seq_len=step.seq_len, batch=step.batch, precision=target.precision)

            def on_query(n: int, elapsed: float) -> None:
                if progress:
                    progress(f"bench {point.describe()}", min(elapsed / max(config.duration_s, 1e-9), 1.0))

            if progress:
                progress(f"bench {point.describe()}", 0.0)
            queries = time_queries(runner, references.inputs(step.seq_len, step.batch), config, on_query)
            records.append(bench_record(runner, point, queries, config))
        except Exception as err:  # noqa: BLE001
            _free_device_memory()
            records.append(Failure.of(point, "bench", err))
    return records


def _self_timed(runner: Runner, point: Point, timing: BenchConfig) -> Record:
    try:
        config = replace(timing, seq_len=point.seq_len, batch=point.batch, precision=point.precision)
        return from_dict({**runner.benchmark(config), **point.to_dict()}, "bench")
    except Exception as err:  # noqa: BLE001
        return Failure.of(point, "bench", err)


def _free_device_memory() -> None:
    """After an error (often out of memory), give cached blocks back so the next, smaller, point can run."""
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort only
        pass


@dataclass
class Measurement:
    """verify and bench records of every backend, in order."""

    verify: list[Record] = field(default_factory=list)
    bench: list[Record] = field(default_factory=list)

    def add(self, records: Sequence[Record]) -> None:
        for r in records:
            (self.verify if r.stage == "verify" else self.bench).append(r)


def measure(model: Model, targets: Sequence[Point], references: References, verify_points: Sequence[tuple[int, int]],
            bench_points: Sequence[tuple[int, int]], timing: BenchConfig, options: dict[str, Any] | None = None,
            progress: Progress | None = None,
            finished: Callable[[Point, Measurement], None] | None = None) -> Measurement:
    """Every target (backend, device, precision) through one lifetime; `finished` after each backend."""
    out = Measurement()
    steps = steps_for(verify_points, bench_points)
    for target in targets:
        for _, records in serve(model, target, steps, references, timing, options, progress):
            out.add(records)
        if finished:
            finished(target, out)
    return out
