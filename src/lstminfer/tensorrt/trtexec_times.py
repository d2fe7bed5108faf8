"""trtexec's --exportTimes JSON (``sampleReporting.cpp``, ``exportJSONTrace``): one object per timed query,
into records ``lstminfer.measure.stats`` summarizes.

trtexec prints floats with C++ stream defaults: 6 significant digits. The durations are differences of
float32 event stamps, so they lie on the float32 grid of their start stamp; rounding the printed value
to that grid recovers trtexec's own float32 value exactly (see ``_on_float32_grid``). Enqueue times and
the walltime exist in that file only as stamps printed to 6 digits (10 us at 3 s), so they are as
precise as that and no more.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lstminfer.errors import UserError
from lstminfer.measure.stats import QueryRecord

# ---- --exportTimes JSON -------------------------------------------------------------------------

_TIME_KEYS = ("startEnqMs", "endEnqMs", "startH2dMs", "endH2dMs", "startComputeMs", "endComputeMs",
              "startD2hMs", "endD2hMs", "h2dMs", "computeMs", "d2hMs", "latencyMs")


def _f32(x: float) -> float:
    return float(np.float32(x))


@dataclass(frozen=True)
class ExportedQuery(QueryRecord):
    """A query read from --exportTimes: the durations are trtexec's own float32 values, not stamp differences."""

    h2d: float = math.nan
    compute: float = math.nan
    d2h: float = math.nan

    @property
    def h2d_ms(self) -> float:
        return self.h2d

    @property
    def compute_ms(self) -> float:
        return self.compute

    @property
    def d2h_ms(self) -> float:
        return self.d2h


def _on_float32_grid(value: float, start_stamp: float) -> float:
    """trtexec's float32 duration from its 6-significant-digit print.

    A duration is ``end - start`` of two float32 stamps (ms since the run began), so it is a multiple
    of the float32 spacing at ``start``. When that spacing is more than twice the print's rounding
    error, the nearest multiple is the exact value; otherwise (tiny stamps) the print is used as is.
    """
    if value == 0 or not math.isfinite(value):
        return _f32(value)
    print_error = 0.5 * 10.0 ** (math.floor(math.log10(abs(value))) - 5)
    grid = float(np.spacing(np.float32(abs(start_stamp) * (1 - 1e-5))))  # the lower binade if in doubt
    if grid <= 2 * print_error:
        return _f32(value)
    return _f32(round(value / grid) * grid)


def parse_times(text: str, source: str = "--exportTimes file") -> list[ExportedQuery]:
    """trtexec's --exportTimes JSON (one object per timed query) -> records for lstminfer.stats."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{source} is not valid JSON ({err.msg} at line {err.lineno}); "
                        "is it a trtexec --exportTimes file?") from err
    if not isinstance(data, list) or not data:
        raise UserError(f"{source}: expected a non-empty JSON list of queries (trtexec --exportTimes)")
    out = []
    for i, q in enumerate(data):
        if not isinstance(q, dict) or not all(k in q for k in _TIME_KEYS[:8]):
            raise UserError(f"{source}: query {i} lacks trtexec's keys ({', '.join(_TIME_KEYS[:8])})")
        try:
            s = {k: float(q[k]) for k in _TIME_KEYS if k in q}
        except (TypeError, ValueError) as err:
            raise UserError(f"{source}: query {i} has a non-numeric time ({err})") from err
        if not all(math.isfinite(v) for v in s.values()):  # json reads NaN and Infinity; trtexec never writes them
            raise UserError(f"{source}: query {i} has a time that is not a finite number (NaN or Infinity)")
        h2d = _on_float32_grid(s["h2dMs"], s["startH2dMs"]) if "h2dMs" in s else _f32(s["endH2dMs"] - s["startH2dMs"])
        compute = (_on_float32_grid(s["computeMs"], s["startComputeMs"]) if "computeMs" in s
                   else _f32(s["endComputeMs"] - s["startComputeMs"]))
        d2h = _on_float32_grid(s["d2hMs"], s["startD2hMs"]) if "d2hMs" in s else _f32(s["endD2hMs"] - s["startD2hMs"])
        out.append(ExportedQuery(
            start_enq=s["startEnqMs"], end_enq=s["endEnqMs"], start_h2d=s["startH2dMs"], end_h2d=s["endH2dMs"],
            start_compute=s["startComputeMs"], end_compute=s["endComputeMs"], start_d2h=s["startD2hMs"],
            end_d2h=s["endD2hMs"], h2d=h2d, compute=compute, d2h=d2h,
        ))
    return out


def load_times(path: str | Path) -> list[ExportedQuery]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from err
    return parse_times(text, source=str(path))
