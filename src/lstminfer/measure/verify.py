"""Compare a backend's outputs with a float64 reference: the rule, the tolerances, the shared inputs.

Comparison rule (Polygraphy's): an element fails only if it exceeds BOTH the absolute and the
relative tolerance, ``|a - r| > atol and |a - r| > rtol * |r|``; NaN must match NaN (a NaN where the
reference has none fails).  ``max_rel_err`` is ``max |a - r| / max(|r|, REL_FLOOR)``: the floor keeps
near-zero reference values from turning rounding into huge relative errors.

The reference is computed once per (seq_len, batch) and shared by every backend and precision
(`References`); the runner lifetime that calls `verify_outputs` is in lstminfer.measure.run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lstminfer.errors import UserError
from lstminfer.measure.records import Point, Record, Skip, VerifyRecord
from lstminfer.model.base import Model

REL_FLOOR = 1e-3
ORACLE = "onnx-reference"  # the backend name of the onnx.reference row


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


# Per precision; the numbers are stated in docs/verify.md.  tf32 is fp32 with TensorFloat-32 matmuls.
TOLERANCES: dict[str, Tolerance] = {
    "fp64": Tolerance(1e-10, 1e-9),
    "fp32": Tolerance(1e-4, 1e-3),
    "tf32": Tolerance(5e-3, 5e-3),
    "fp16": Tolerance(1e-2, 1e-2),
    "bf16": Tolerance(6e-2, 6e-2),
}


@dataclass(frozen=True)
class Comparison:
    """One output against its reference: the worst errors and whether every element passes the rule."""

    max_abs_err: float | None
    max_rel_err: float | None
    passed: bool
    error: str | None = None


def compare(actual: np.ndarray, expected: np.ndarray, tol: Tolerance) -> Comparison:
    """Errors of one output against the reference, and whether it passes the rule above."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return Comparison(None, None, False, f"shape {list(actual.shape)} != reference {list(expected.shape)}")
    if actual.size == 0:
        return Comparison(0.0, 0.0, True)
    nan_ref, nan_act = np.isnan(expected), np.isnan(actual)
    nan_mismatch = bool(np.any(nan_ref != nan_act))
    both = ~(nan_ref | nan_act)
    with np.errstate(invalid="ignore"):
        diff = np.where(both, np.abs(actual - expected), 0.0)
        diff = np.where(np.isnan(diff), np.inf, diff)  # inf - inf
        rel = diff / np.maximum(np.abs(np.where(both, expected, 0.0)), REL_FLOOR)
        bad = (diff > tol.atol) & (diff > tol.rtol * np.abs(np.where(both, expected, 0.0)))
    return Comparison(float(diff.max()), float(rel.max()), not nan_mismatch and not bool(bad.any()),
                      "NaN where the reference has none (or the reverse)" if nan_mismatch else None)


def parse_points(text: str) -> list[tuple[int, int]]:
    """``"1x3,64x3"`` -> [(1, 3), (64, 3)] (SEQxBATCH)."""
    points = []
    for item in text.split(","):
        seq, sep, batch = item.strip().lower().partition("x")
        try:
            point = (int(seq), int(batch))
        except ValueError:
            raise UserError(f"--points: {item!r} is not SEQxBATCH (e.g. 64x3)") from None
        if not sep or min(point) <= 0:
            raise UserError(f"--points: {item!r} must be SEQxBATCH with positive sizes")
        points.append(point)
    return points


def tolerance_for(precision: str, tf32: bool = False) -> Tolerance:
    return TOLERANCES["tf32" if tf32 and precision == "fp32" else precision]


# The float64 reference runs on the CPU, about 1e9 multiply-adds a second on our 2-core machine: the speech
# preset's default points (200x8, 1600x8, 200x10) cost it most of two minutes, longer than every other step.
# Default points past this budget are made smaller, and the output says so.
REFERENCE_BUDGET_MACS = 2e9


def reference_macs(model: Model, seq_len: int, batch: int) -> float | None:
    """Multiply-adds of one float64 reference run (None when the model has no ModelSpec to count from)."""
    spec = model.spec
    if spec is None:
        return None
    gates = 4 if spec.kind == "lstm" else 3
    directions = 2 if spec.bidirectional else 1
    per_step = sum(gates * spec.hidden_size * ((spec.input_size if layer == 0 else spec.hidden_size * directions)
                                               + spec.hidden_size) for layer in range(spec.num_layers))
    return float(per_step * directions * seq_len * batch)


def _fit(model: Model, seq_len: int, batch: int) -> tuple[int, int]:
    """A point within the budget: a long sequence shortened to the model's own length first, then the batch
    reduced, then the sequence, each only as far as needed."""
    for axis in ("long", "batch", "seq"):
        macs = reference_macs(model, seq_len, batch) or 0.0
        if macs <= REFERENCE_BUDGET_MACS:
            break
        scale = REFERENCE_BUDGET_MACS / macs
        if axis == "long" and seq_len > model.seq_len:
            seq_len = max(model.seq_len, int(seq_len * scale))
        elif axis == "batch":
            batch = max(1, int(batch * scale))
        elif axis == "seq":
            seq_len = max(1, int(seq_len * scale))
    return seq_len, batch


def affordable_points(model: Model, points: Sequence[tuple[int, int]]) -> tuple[list[tuple[int, int]], list[str]]:
    """The default verify points made small enough for the float64 reference (`REFERENCE_BUDGET_MACS`), and a
    note saying which were reduced; points already within the budget are kept as they are."""
    fitted = [_fit(model, s, b) for s, b in points]
    out = list(dict.fromkeys(fitted))
    cut = [f"{s}x{b}" for (s, b), f in zip(points, fitted) if (s, b) != f]
    if not cut:
        return out, []
    return out, [f"verify points {', '.join(cut)} reduced so the float64 reference stays fast on the CPU; "
                 f"verifying {', '.join(f'{s}x{b}' for s, b in out)} (seq x batch); choose your own with --points"]


class References:
    """Inputs and reference outputs per (seq_len, batch): made once, shared by every backend and precision.

    Inputs are standard-normal float32 (or what the model's file asks for) from a generator seeded by
    (seed, seq_len, batch), so a point gets the same inputs in `verify`, `bench` and a sweep.
    """

    def __init__(self, model: Model, seed: int = 0) -> None:
        self.model = model
        self.seed = seed
        self._inputs: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        self._outputs: dict[tuple[int, int], dict[str, np.ndarray]] = {}

    def inputs(self, seq_len: int, batch: int) -> dict[str, np.ndarray]:
        key = (seq_len, batch)
        if key not in self._inputs:
            rng = np.random.default_rng([abs(self.seed), seq_len, batch])
            self._inputs[key] = self.model.make_inputs(seq_len, batch, rng)
        return self._inputs[key]

    def outputs(self, seq_len: int, batch: int) -> dict[str, np.ndarray]:
        key = (seq_len, batch)
        if key not in self._outputs:
            self._outputs[key] = self.model.reference(self.inputs(seq_len, batch))
        return self._outputs[key]

    @property
    def name(self) -> str:
        return self.model.reference_source.name

    @property
    def unverified(self) -> str | None:
        """Why a comparison with this reference proves nothing; read after the reference has run (a file's
        reference can fall back at run time, on an operator onnx.reference lacks)."""
        return why_unverified(self.model)


def why_unverified(model: Model) -> str | None:
    """Why a comparison with the model's reference proves nothing (it is a runtime under test); None if
    the reference is independent."""
    source = model.reference_source
    if source.independent:
        return None
    return source.reason or f"the reference {source.name} is one of the runtimes under test"


def verify_outputs(point: Point, outputs: Mapping[str, np.ndarray], references: References,
                   tf32: bool = False, extra: Mapping[str, Any] | None = None) -> list[VerifyRecord]:
    """One record per reference output: `outputs` (a backend's, at `point`) against the float64 reference."""
    want = references.outputs(point.seq_len, point.batch)
    tol = tolerance_for(point.precision, tf32)
    records = []
    for name, expected in want.items():
        got = outputs.get(name)
        result = compare(got, expected, tol) if got is not None else Comparison(None, None, False,
                                                                                 f"no output {name!r}")
        records.append(VerifyRecord(point, name, result.max_abs_err, result.max_rel_err, tol.atol, tol.rtol,
                                    result.passed, references.name, result.error, references.unverified,
                                    dict(extra or {})))
    return records


# onnx.reference steps through time in numpy (the speech preset's 200x1 point took it a minute on our machine).
# Its row checks the exported graph (gate order, directions, axes), which short points show as well as long
# ones, so it gets a tenth of the reference's budget.
ORACLE_BUDGET_MACS = REFERENCE_BUDGET_MACS / 10


def oracle_points(model: Model, points: Sequence[tuple[int, int]]) -> tuple[list[tuple[int, int]], list[str]]:
    """The points the onnx-reference row checks (within `ORACLE_BUDGET_MACS`, at least the cheapest), and a
    note when some are left out."""
    def cost(point: tuple[int, int]) -> float:
        return reference_macs(model, *point) or 0.0

    chosen = [p for p in points if cost(p) <= ORACLE_BUDGET_MACS] or sorted(points, key=cost)[:1]
    left = [p for p in points if p not in chosen]
    if not left:
        return list(points), []
    shapes = ", ".join(f"{s}x{b}" for s, b in left)
    return chosen, [f"the onnx-reference row leaves out {shapes} (onnx.reference runs in numpy and would be the "
                     "slowest step there); every backend is still verified at every point"]


def check_onnx_reference(model: Model, references: References, points: Sequence[tuple[int, int]]) -> list[Record]:
    """onnx.reference on a float64 copy of the exported file vs the float64 PyTorch reference (docs/verify.md)."""
    import onnx

    from lstminfer.onnx.oracle import Float64Reference, applicable

    proto = onnx.load(str(model.onnx_path))
    target = Point(ORACLE, "cpu", "fp64")
    ok, why = applicable(proto)
    if not ok:
        return [Skip(target, "verify", f"not applicable: {why}", references.name)]
    oracle = Float64Reference(proto)
    records: list[Record] = []
    for seq_len, batch in points:
        got = oracle.run(references.inputs(seq_len, batch))
        records += verify_outputs(target.at(seq_len, batch), got, references)
    return records

