"""What verify, bench, run and sweep share: every argument checked before any work, the export, progress.

The order is the contract (issue 14): model, points, backends, precisions and every output path are
checked first, each failure one line and exit 2, so nothing is exported or written for a command that
is refused; then the ONNX export; then the measurement, one progress line per step when stderr is not a
terminal (a CI log shows what is running), a transient bar when it is.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from lstminfer.backends.base import runner_class, select_backends
from lstminfer.commands.args import BackendArgs, split_list
from lstminfer.commands.console import print_notes, progress_bar
from lstminfer.errors import UserError
from lstminfer.measure.records import BenchRecord, Point, Record, Skip, VerifyRecord, verdicts, verified
from lstminfer.measure.verify import ORACLE
from lstminfer.model.base import Model


class StepLog:
    """Progress on stderr: a transient rich bar on a terminal, else one line per step (CI logs, pipes)."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.last: str | None = None

    def __enter__(self) -> StepLog:
        if sys.stderr.isatty():
            self.bar = progress_bar()
            self.bar.__enter__()
            self.task = self.bar.add_task("", total=1.0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
            self.bar = None

    def __call__(self, what: str, fraction: float | None = None) -> None:
        if self.bar is not None:
            from rich.markup import escape

            self.bar.update(self.task, description=escape(what), completed=fraction or 0.0)
        elif what != self.last:  # the timing loop reports its fraction many times: one line per step
            print(f"lstminfer: {what}", file=sys.stderr, flush=True)
            self.last = what


def check_output_file(path: str | None, flag: str = "--json") -> None:
    """Refuse, before any work, an output file that could not be written at the end ('-' is stdout)."""
    if not path or path == "-":
        return
    target = Path(path)
    if target.is_dir():
        raise UserError(f"{flag} {path} is a directory; give a file name (e.g. {target / 'results.json'})")
    parent = target.parent if str(target.parent) else Path(".")
    existing = next((p for p in (parent, *parent.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is not a directory; choose another path")
    if not os.access(existing, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise UserError(f"{flag} {path} cannot be written (permission denied); choose another path")


def select_targets(args: Any, model: Model | None, precision: str) -> list[Point]:
    """The (backend, device, precision) runners asked for, refused in one line when none can run `precision`."""
    choices = select_backends(split_list(args.backends), args.device, model)
    targets = [Point(c.name, c.device, precision) for c in choices]
    check_precision(targets)
    return targets


def check_precision(targets: list[Point]) -> None:
    """Exit 2 when no chosen backend runs its precision: otherwise every one would be skipped and exit 0."""
    if any(t.precision in runner_class(t.backend).precisions for t in targets):
        return
    why = "; ".join(f"{t.label} runs {', '.join(runner_class(t.backend).precisions)}" for t in targets)
    precision = targets[0].precision if targets else "?"
    raise UserError(f"--precision {precision}: none of the chosen backends runs it here ({why}); "
                    "choose another --precision or --backends")


def runner_options(args: Any, out: Path) -> dict[str, Any]:
    """Runner options: TF32, threads, and the --out dir (TensorRT's engine cache lives under it)."""
    return BackendArgs.parse(args).runner_options(out_dir=str(out))


def export_for(model: Model, directory: Path, exporter: str, log: StepLog) -> list[str]:
    """Export `model` into `directory` unless it is a file or cannot be exported (proj_size); its notes."""
    from lstminfer.onnx.export import export_model

    if model.module is None:  # a user's ONNX or TorchScript file: nothing to export
        return []
    if model.spec and model.spec.proj_size:
        return ["proj_size: ONNX's LSTM has no projection, so there is no ONNX file; torch backends only"]
    log("export the ONNX file and check it in ONNX Runtime")
    return list(export_model(model, directory / "model.onnx", exporter).notes)


def print_reference(unverified: str | None, notes: list[str], allow_unverified: bool) -> None:
    """Whether the reference is independent, first (it decides what "passed" means), then the notes."""
    if unverified:
        accept = "accepted (--allow-unverified)" if allow_unverified else "pass --allow-unverified to accept it"
        print_notes([f"unverified: no independent reference ({unverified}); the results count as not verified; "
                     f"{accept}"])
    print_notes([n for n in notes if n != unverified])


def check_something_ran(records: list[Record], what: str) -> None:
    """Exit 2 (one line) when no backend produced a number: a green exit must mean something was checked."""
    ran = [r for r in records if isinstance(r, VerifyRecord | BenchRecord) and r.point.backend != ORACLE]
    if ran:
        return
    reasons = dict.fromkeys(f"{r.point.label}: {r.reason if isinstance(r, Skip) else r.error}" for r in records
                            if r.point.backend != ORACLE)
    raise UserError(f"nothing was {what}: " + ("; ".join(reasons) or "no backend was chosen"))


def verify_code(records: list[Record], allow_unverified: bool) -> int:
    """1 when a backend that ran is not verified (FAILED, or unverified without --allow-unverified), else 0."""
    ran = [v for v in verdicts(records).values() if not v.startswith("skipped")]
    return 0 if all(verified(v, allow_unverified) for v in ran) else 1
