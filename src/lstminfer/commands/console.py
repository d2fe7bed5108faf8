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

    return Console(stderr=True)


def stdout_console() -> Any:
    from rich.console import Console

    # Piped output (CI logs, `| tee`) gets a wide fixed width instead of rich's 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=160)


def print_notes(notes: Sequence[str]) -> None:
    from rich.markup import escape

    console = stderr_console()
    for note in notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}")


# Text columns; numbers are right-aligned.  The second line: `inspect`'s tables.
LEFT_COLUMNS = ("backend", "verified", "install", "device", "precision", "verdict", "note", "reason", "points",
                "reference", "name", "dtype", "shape", "role", "op", "where", "direction", "attributes", "node",
                "onnxruntime", "tensorrt", "onnx-reference", "stream")


def print_table(title: str, rows: Sequence[dict[str, Any]], console: Any = None) -> None:
    from rich.table import Table

    console = console or stdout_console()
    if not rows:
        console.print(f"[bold]{title}[/bold]: nothing to show")
        return
    table = Table(title=title, title_justify="left")
    columns = list(dict.fromkeys(k for row in rows for k in row))
    for c in columns:
        table.add_column(c, justify="left" if c in LEFT_COLUMNS else "right")
    for row in rows:
        table.add_row(*[_cell(c, row.get(c)) for c in columns])
    console.print(table)


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column == "vs torch" and isinstance(value, float):
        return f"{value:.2f}x"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    if text == "FAILED" or text.startswith("FAILED"):
        return f"[red]{text}[/red]"
    if text == "passed":
        return f"[green]{text}[/green]"
    return text.replace("[", "\\[")


def progress_bar() -> Any:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                    console=stderr_console(), transient=True, disable=not sys.stderr.isatty())
