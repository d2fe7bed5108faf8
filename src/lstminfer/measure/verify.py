"""Compare every backend with a float64 reference on fresh random inputs.

Comparison rule (Polygraphy's): an element fails only if it exceeds BOTH the absolute and the
relative tolerance, ``|a - r| > atol and |a - r| > rtol * |r|``; NaN must match NaN (a NaN where the
reference has none fails).  ``max_rel_err`` is ``max |a - r| / max(|r|, REL_FLOOR)``: the floor keeps
near-zero reference values from turning rounding into huge relative errors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lstminfer.backends.base import BackendChoice, runner_class
from lstminfer.errors import UserError
from lstminfer.model.base import Model

REL_FLOOR = 1e-3


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


def compare(actual: np.ndarray, expected: np.ndarray, tol: Tolerance) -> dict[str, Any]:
    """Errors of one output against the reference, and whether it passes the rule above."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return {"max_abs_err": None, "max_rel_err": None, "passed": False,
                "error": f"shape {list(actual.shape)} != reference {list(expected.shape)}"}
    if actual.size == 0:
        return {"max_abs_err": 0.0, "max_rel_err": 0.0, "passed": True}
    nan_ref, nan_act = np.isnan(expected), np.isnan(actual)
    nan_mismatch = bool(np.any(nan_ref != nan_act))
    both = ~(nan_ref | nan_act)
    with np.errstate(invalid="ignore"):
        diff = np.where(both, np.abs(actual - expected), 0.0)
        diff = np.where(np.isnan(diff), np.inf, diff)  # inf - inf
        rel = diff / np.maximum(np.abs(np.where(both, expected, 0.0)), REL_FLOOR)
        bad = (diff > tol.atol) & (diff > tol.rtol * np.abs(np.where(both, expected, 0.0)))
    out = {"max_abs_err": float(diff.max()), "max_rel_err": float(rel.max()),
           "passed": not nan_mismatch and not bool(bad.any())}
    if nan_mismatch:
        out["error"] = "NaN where the reference has none (or the reverse)"
    return out


def default_points(seq_len: int, batch: int) -> list[tuple[int, int]]:
    """seq 1, the model's shape, a length much longer than the example, and another batch size."""
    long_seq = max(8 * seq_len, 64)
    points = [(1, batch), (seq_len, batch), (long_seq, batch), (seq_len, batch + 2)]
    return list(dict.fromkeys(points))


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


Progress = Callable[[str], None]


def verify(model: Model, choices: Sequence[BackendChoice], points: Sequence[tuple[int, int]],
           precision: str = "fp32", seed: int = 0, options: dict[str, Any] | None = None,
           onnx_reference: bool = True, progress: Progress | None = None) -> list[dict[str, Any]]:
    """One record per (backend, point, output); backends that cannot run the model give one skip record."""
    options = options or {}
    rng = np.random.default_rng(seed)
    feeds = [(s, b, model.make_inputs(s, b, rng)) for s, b in points]
    references = [model.reference(inputs) for _, _, inputs in feeds]
    reference_name = getattr(model, "reference_name", "torch-float64-cpu")
    records: list[dict[str, Any]] = []

    if onnx_reference and model.onnx_path is not None and model.module is not None:
        records.extend(_check_onnx_reference(model, feeds, references, reference_name))

    for choice in choices:
        cls = runner_class(choice.name)
        runner = cls(model, device=choice.device, precision=precision, **options)
        base = {"backend": choice.name, "device": choice.device, "precision": precision, "reference": reference_name}
        if cls.self_timed:
            continue  # e.g. trtexec: times itself, returns no outputs to compare
        ok, why = runner.supports()
        if not ok:
            records.append({**base, "seq_len": None, "batch": None, "output": None, "max_abs_err": None,
                            "max_rel_err": None, "passed": None, "skipped": why})
            continue
        try:
            runner.prepare()
        except UserError as err:
            records.append({**base, "seq_len": None, "batch": None, "output": None, "max_abs_err": None,
                            "max_rel_err": None, "passed": False, "error": str(err)})
            continue
        extra = runner.describe()
        tol = tolerance_for(precision, bool(extra.get("tf32")))
        try:
            for (seq_len, batch, inputs), ref in zip(feeds, references):
                if progress:
                    progress(f"verify {runner.label} {precision} seq {seq_len} batch {batch}")
                try:
                    outputs = runner.infer(inputs)
                except UserError as err:
                    records.append({**base, **extra, "seq_len": seq_len, "batch": batch, "output": None,
                                    "max_abs_err": None, "max_rel_err": None, "passed": False, "error": str(err)})
                    continue
                for name, want in ref.items():
                    got = outputs.get(name)
                    result = compare(got, want, tol) if got is not None else {
                        "max_abs_err": None, "max_rel_err": None, "passed": False, "error": f"no output {name!r}"}
                    records.append({**base, **extra, "seq_len": seq_len, "batch": batch, "output": name,
                                    "atol": tol.atol, "rtol": tol.rtol, **result})
        finally:
            runner.close()
    return records


def _check_onnx_reference(model: Model, feeds: list, references: list, reference_name: str) -> list[dict[str, Any]]:
    """onnx.reference on a float64 copy of the exported file vs the float64 PyTorch reference."""
    import onnx

    from lstminfer.onnx.oracle import Float64Reference, applicable

    proto = onnx.load(str(model.onnx_path))
    base = {"backend": "onnx-reference", "device": "cpu", "precision": "fp64", "reference": reference_name}
    ok, why = applicable(proto)
    if not ok:
        return [{**base, "seq_len": None, "batch": None, "output": None, "max_abs_err": None,
                 "max_rel_err": None, "passed": None, "skipped": f"not applicable: {why}"}]
    oracle = Float64Reference(proto)
    tol = TOLERANCES["fp64"]
    records = []
    for (seq_len, batch, inputs), ref in zip(feeds, references):
        got = oracle.run(inputs)
        for name, want in ref.items():
            records.append({**base, "seq_len": seq_len, "batch": batch, "output": name, "atol": tol.atol,
                            "rtol": tol.rtol, **compare(got[name], want, tol)})
    return records


def verdicts(records: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Per backend label: "passed", "FAILED" or "skipped: reason"."""
    out: dict[str, str] = {}
    for r in records:
        label = f"{r['backend']}[{r['device']}]"
        if r.get("skipped"):
            out[label] = f"skipped: {r['skipped']}"
        elif r.get("passed") is False:
            out[label] = "FAILED"
        elif label not in out:
            out[label] = "passed"
    return out


def any_failed(records: Sequence[dict[str, Any]]) -> bool:
    return any(r.get("passed") is False for r in records)
