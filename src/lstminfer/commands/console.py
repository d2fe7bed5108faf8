"""What the commands print: rich tables on stdout, notes and progress on stderr, JSON to a file or stdout.

With ``--json -`` stdout carries the JSON alone: the CLI sends everything else to stderr for the command's
duration (``json_to_stdout``), so ``lstminfer verify --json - | jq`` reads clean JSON.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

# Where `--json -` writes: the real stdout, saved before the human output is sent to stderr.
_json_stdout: list[TextIO] = []


@contextlib.contextmanager
def json_to_stdout(enabled: bool) -> Iterator[None]:
    """While enabled: stdout (print and rich alike) goes to stderr, and `write_json_output('-')` to stdout."""
    if not enabled:
        yield
        return
    _json_stdout.append(sys.stdout)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _json_stdout.pop()


def write_json_output(path: str | None, value: Any) -> None:
    """`--json PATH`: written atomically; '-' means stdout."""
    from lstminfer.measure.store import dumps, write_json_atomic

    if not path:
        return
    if path == "-":
        out = _json_stdout[-1] if _json_stdout else sys.stdout
        out.write(dumps(value) + "\n")
        out.flush()
        return
    write_json_atomic(Path(path), value)


def stderr_console() -> Any:
    from rich.console import Console

    # Not a terminal (a CI log, a pipe): rich would wrap at 80 columns, mid-number; a line stays one line.
    return Console(stderr=True, soft_wrap=not sys.stderr.isatty())


def stdout_console() -> Any:
    from rich.console import Console

    # Piped output (CI logs, `| tee`): rich's 80 columns would fold table cells mid-number; no table is
    # this wide, and soft wrapping keeps printed lines whole.
    return Console() if sys.stdout.isatty() else Console(width=1000, soft_wrap=True)


def print_notes(notes: Sequence[str]) -> None:
    from rich.markup import escape

    console = stderr_console()
    for note in notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}")


# Text columns; numbers are right-aligned.  The second line: `inspect`'s tables; the third: `serve`,
# `export-triton` and `loadtest`'s.
LEFT_COLUMNS = ("backend", "verified", "install", "device", "precision", "verdict", "note", "reason", "points",
                "reference", "name", "dtype", "shape", "role", "op", "where", "direction", "attributes", "node",
                "onnxruntime", "tensorrt", "onnx-reference", "stream",
                "endpoint", "address", "file", "mode", "model", "protocol")


def print_table(title: str, rows: Sequence[dict[str, Any]], console: Any = None) -> None:
    from rich.markup import escape
    from rich.table import Table

    from lstminfer.report.tables import VS_TORCH_NOTE

    console = console or stdout_console()
    if not rows:
        console.print(f"[bold]{escape(title)}[/bold]: nothing to show")
        return
    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = Table(title=escape(title), title_justify="left",  # a model named x[1].onnx keeps its [1]
                  caption=VS_TORCH_NOTE if "vs torch" in columns else None, caption_justify="left")
    for c in columns:
        table.add_column(c, justify="left" if c in LEFT_COLUMNS else "right")
    for row in rows:
        table.add_row(*[_cell(row.get(c)) for c in columns])
    console.print(table)


def _cell(value: Any) -> str:
    from rich.markup import escape

    from lstminfer.report.tables import fmt  # one cell format for the terminal, markdown and HTML

    text = escape(fmt(value))  # user text (file names, error messages) is never markup
    if text.startswith("FAILED"):
        return f"[red]{text}[/red]"
    if text == "passed":
        return f"[green]{text}[/green]"
    return text


def progress_bar() -> Any:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                    console=stderr_console(), transient=True, disable=not sys.stderr.isatty())
