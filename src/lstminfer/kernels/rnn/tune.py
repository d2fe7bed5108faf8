"""Plan tuning: time a few candidate plans of one call's sizes on the user's GPU and keep the fastest that agrees.

plan_for picks a plan from the sizes alone, with constants measured on one H200 (docs/fused_kernel.md, "Sizes
handed to cuDNN" and "v20 measured"). tune_plan measures instead, as TensorRT's tactic timing or
torch.backends.cudnn.benchmark do: the default plan and each distinct plan of TUNE_CANDIDATES' overrides are run
once eagerly (their outputs compared with the reference's), then captured in a CUDA graph and replayed, the median
of `iters` replays between CUDA events being the candidate's time. The fastest candidate that agrees with the
reference wins where it beats the default by more than TUNE_MIN_GAIN. The choice is cached per sizes, device and
software versions, in memory and in a JSON file (docs/fused_kernel.md, "Tuning the plan (`tune`)").
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import statistics
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from .cuda_persistent import PLAN_OPTIONS  # names only: cuda.bindings is imported at launch
from .launch import raise_if_stalled, rnn_forward
from .packing import PackedRNN
from .plan import Plan, interpreting, plan_for

# Overrides of plan_for tried beside the default ({}), each a distinct plan at most (the ones that change nothing at
# a size are dropped as duplicates, the ones plan_for refuses as such): cuDNN itself and our plan where the default
# hands the call to cuDNN; the stack kernel's one-warp plan against the relay, the stack kernel against the
# pipeline; the CUDA kernel's plain plan where CUDA_MEASURED_OPTIONS took options, wider blocks, the other 16-bit
# product, clusters (which also put hidden sizes under 256 on the CUDA kernel), the fragment poll's first-read delay
# either side of POLL_DELAY_NS, and two FFMA columns a thread (v21), the FFMA plans' delay off and at 400 ns (v22),
# 1000 ns, the adapted delay (v23) and none.
# Every distinct CUDA plan costs an NVRTC compile (~1-2 s) on first use.
TUNE_CANDIDATES: tuple[dict[str, Any], ...] = (
    {},
    dict(cudnn=True),
    dict(cudnn=False),
    dict(relay=False),
    dict(pipeline=False),
    dict(cluster=False),
    dict(cuda_nb=8),
    dict(cuda_nb=16),
    dict(mma=False),
    dict(mma=True),
    dict(cluster=8),
    dict(cluster=16),
    dict(cluster=8, mma=False),
    dict(poll_frag=True, poll_delay=250),
    dict(poll_frag=True, poll_delay=1000),
    dict(ffma_cols=2),
    dict(poll_delay=0),  # the FFMA plans' first-read delay (POLL_DELAY_FFMA_NS, v22) off, and longer (hidden 1024 in
    dict(poll_delay=400),  # 16-bit measured faster at 400 ns)
    dict(poll_delay=1000),  # T's measured delay (session 10), and the first-read delay adapted every step (v23), on
    dict(poll_spin=2),  # and off: each won 5-12 % at a few sizes and lost at most others
    dict(poll_spin=0),
)
# a candidate replaces the default only where it is faster by more than this fraction (plan.py's rule for measured
# options: a 2.5 % gain counted as a tie), so that timing noise does not flip the plan between runs
TUNE_MIN_GAIN = 0.03
# how far a candidate's outputs may be from the reference's: absolute, times max(1, the largest |value| of that
# output) (LSTM cell states grow past 1); 16-bit plans round h every step, so two of them differ by a few ulps of 1
TUNE_ATOL = {torch.float32: 1e-4, torch.float16: 3e-2, torch.bfloat16: 3e-2}
TUNE_WARMUP = 5
TUNE_ITERS = 50
CACHE_FILE = "fused_plans.json"
CACHE_SCHEMA = 1
OUTPUT_NAMES = ("output", "hn", "cn")
# Plan fields only the CUDA persistent kernel reads (its options, cuda_persistent.PLAN_OPTIONS): two plans of another
# kernel that differ in these alone launch the same code, so tuning counts them as one (a poll delay asked where the
# stack kernel runs, say)
CUDA_KERNEL_FIELDS = ("cuda", "mma", *PLAN_OPTIONS)

# the cache in memory: {file path: {key: entry}}; entries read from or written to that file
_MEMORY: dict[str, dict[str, dict[str, Any]]] = {}
_WARNED: set[str] = set()


@dataclass(frozen=True)
class Candidate:
    """One candidate plan and what tuning made of it."""

    overrides: dict[str, Any]  # plan_for's overrides ({}: the default plan)
    plan: Plan | None  # None where plan_for refused the overrides
    us: float | None = None  # median microseconds of a CUDA-graph replay (or the injected timer's)
    max_diff: float | None = None  # largest scaled difference from the reference's outputs (of any output)
    skipped: str = ""  # why it cannot be chosen: refused, raised, disagrees ("" where it ran and agreed)

    def to_dict(self) -> dict[str, Any]:
        return {"overrides": self.overrides, "kernel": self.plan.kernel if self.plan else None, "us": self.us,
                "max_diff": self.max_diff, "skipped": self.skipped}


@dataclass(frozen=True)
class TuneResult:
    """The plan tuning chose for one call's sizes, and how it got there."""

    plan: Plan
    default: Plan  # plan_for's plan for the same sizes
    us: float | None  # the chosen plan's time (median us of a graph replay)
    default_us: float | None  # the default plan's (None where it did not run)
    cached: bool  # read from the cache: nothing was run or timed
    key: str  # the cache key (tune_key)
    candidates: tuple[Candidate, ...] = field(default=())  # every candidate (none where cached)

    def summary(self) -> dict[str, Any]:
        """What a benchmark record says about the tuning (FusedRunner.describe_at; the record has the plan itself):
        cached, the chosen and the default plan's times, the default plan, and every candidate tried (none where
        cached)."""
        return {"cached": self.cached, "us": self.us, "default_us": self.default_us,
                "default": self.default.describe(), "candidates": [c.to_dict() for c in self.candidates]}

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.describe(), **self.summary(), "key": self.key}


# ---- the cache -------------------------------------------------------------------------------------------------

def cache_path(cache_dir: str | Path | None = None) -> Path:
    """The cache file: in `cache_dir`, else $LSTMINFER_CACHE_DIR, else $XDG_CACHE_HOME/lstminfer, else
    ~/.cache/lstminfer."""
    if cache_dir is None:
        cache_dir = os.environ.get("LSTMINFER_CACHE_DIR") or Path(
            os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lstminfer"
    return Path(cache_dir) / CACHE_FILE



@functools.cache
def kernel_digest() -> str:
    """A digest of this package's source files: any change to the kernels or the plan invalidates cached plans
    (the lstminfer version alone does not change while the kernels are developed)."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def environment_facts(device: torch.device) -> dict[str, Any]:
    """The device and software parts of a cache key: the GPU's name, multiprocessors and compute capability, the
    torch, cuDNN and lstminfer versions, and kernel_digest()."""
    from lstminfer import __version__

    if device.type == "cuda" and not interpreting():
        props = torch.cuda.get_device_properties(device)
        hardware = {"device": props.name, "sms": props.multi_processor_count,
                    "capability": f"{props.major}.{props.minor}"}
    else:
        hardware = {"device": "cpu (Triton interpreter)" if interpreting() else device.type, "sms": 0,
                    "capability": ""}
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {**hardware, "torch": torch.__version__, "cudnn": cudnn, "lstminfer": __version__,
            "kernels": kernel_digest()}


def tune_key(packed: PackedRNN, seq_len: int, batch: int, has_state: bool,
             facts: dict[str, Any] | None = None) -> str:
    """The cache key of one call's sizes (a JSON object as text): environment_facts (or `facts`), the model's kind,
    input size, hidden size, layers, directions, dtype and layout, the sequence length, batch and whether h0 is
    given."""
    parts = {**(environment_facts(packed.device) if facts is None else facts),
             "kind": packed.kind, "input_size": packed.input_size, "hidden_size": packed.hidden_size,
             "num_layers": packed.num_layers, "num_directions": packed.num_directions,
             "dtype": str(packed.dtype).removeprefix("torch."), "batch_first": packed.batch_first,
             "seq_len": int(seq_len), "batch": int(batch), "h0": bool(has_state)}
    return json.dumps(parts, separators=(",", ":"))


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, stacklevel=3)


def _read_cache_file(path: Path) -> dict[str, dict[str, Any]]:
    """The entries of a cache file; {} where there is none, and with one warning where it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as err:
        _warn_once(f"lstminfer: cannot read the plan cache {path} ({err.strerror}); tuning without it")
        return {}
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("schema") != CACHE_SCHEMA or not isinstance(data.get("plans"), dict):
            raise ValueError(f"not a schema-{CACHE_SCHEMA} plan cache")
    except ValueError as err:  # json.JSONDecodeError too
        _warn_once(f"lstminfer: ignoring the unreadable plan cache {path} ({err}); it is rewritten at the next tuning")
        return {}
    return {k: v for k, v in data["plans"].items() if isinstance(v, dict)}


def _lookup(path: Path, key: str) -> dict[str, Any] | None:
    memory = _MEMORY.get(str(path))
    if memory is None or key not in memory:
        memory = {**_read_cache_file(path), **(memory or {})}
        _MEMORY[str(path)] = memory
    return memory.get(key)


def _store(path: Path, key: str, entry: dict[str, Any]) -> None:
    """Keep the entry in memory and write the file again with it (the other processes' entries read first; written
    to a temporary file and renamed: an interrupted write leaves the previous file)."""
    from lstminfer.errors import UserError
    from lstminfer.measure.store import write_json_atomic

    _MEMORY.setdefault(str(path), {})[key] = entry
    entries = _read_cache_file(path)
    entries[key] = entry
    try:
        write_json_atomic(path, {"schema": CACHE_SCHEMA, "plans": entries})
    except (UserError, OSError) as err:
        _warn_once(f"lstminfer: cannot write the plan cache {path} ({err}); the tuned plan is kept in memory only")


def clear_tuned_plans(cache_dir: str | Path | None = None) -> None:
    """Forget every tuned plan: the in-memory cache, and the cache file (cache_path(cache_dir)) where there is one."""
    _MEMORY.clear()
    cache_path(cache_dir).unlink(missing_ok=True)


def _launch_of(plan: Plan) -> Plan:
    """The plan as far as its kernel reads it: no note, and for a kernel other than the CUDA one none of
    CUDA_KERNEL_FIELDS."""
    if plan.kernel == "persistent-cuda":
        return replace(plan, note="")
    return replace(plan, note="", **{f.name: f.default for f in fields(Plan) if f.name in CUDA_KERNEL_FIELDS})


def _plan_fields(plan: Plan) -> dict[str, Any]:
    return {f.name: getattr(plan, f.name) for f in fields(Plan) if f.init}


def _cached_plan(entry: dict[str, Any] | None, packed: PackedRNN, seq_len: int, batch: int) -> Plan | None:
    """The cached plan where plan_for still builds it from the cached overrides, else None (tune again)."""
    if not entry:
        return None
    try:
        stored = Plan(**entry["plan"])
        again = plan_for(packed, seq_len, batch, **entry["overrides"])
    except (KeyError, TypeError, ValueError):
        return None
    return stored if replace(again, note="") == replace(stored, note="") else None


# ---- checking and timing one candidate --------------------------------------------------------------------------

def compare_outputs(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor], atol: float) -> tuple[float, str]:
    """(the largest difference of got from want, each output's divided by max(1, its largest finite |want|), and ""
    where that is within atol, else why got is rejected). NaN in got where want has none rejects it; where want
    has NaN, got may hold anything."""
    worst = 0.0
    for name, g, w in zip(OUTPUT_NAMES, got, want):
        if tuple(g.shape) != tuple(w.shape):
            return math.inf, f"{name} has shape {tuple(g.shape)}, the reference's {tuple(w.shape)}"
        g, w = g.detach().double(), w.detach().double()
        known = ~torch.isnan(w)
        if bool((torch.isnan(g) & known).any()):
            return math.inf, f"{name} has NaN where the reference has none"
        if not bool(known.any()):
            continue
        g, w = g[known], w[known]
        diff = torch.where(g == w, 0.0, (g - w).abs())  # equal infinities: no difference
        finite = w[torch.isfinite(w)]
        scale = max(1.0, finite.abs().max().item()) if finite.numel() else 1.0
        worst = max(worst, diff.max().item() / scale)
    if worst > atol:
        return worst, f"outputs differ from the reference's by {worst:.2g} (scaled), over the tolerance {atol:g}"
    return worst, ""


def _run_once(packed: PackedRNN, x: torch.Tensor, h0: torch.Tensor | None, c0: torch.Tensor | None,
              plan: Plan) -> tuple[torch.Tensor, ...]:
    """One eager call with `plan` (compiling it); a wait that gave up raises KernelStalled."""
    workspace: dict[str, Any] = {}
    outputs = rnn_forward(packed, x, h0, c0, plan=plan, workspace=workspace, check=False)
    raise_if_stalled(workspace)
    return outputs


def graph_time(packed: PackedRNN, x: torch.Tensor, h0: torch.Tensor | None, c0: torch.Tensor | None, plan: Plan,
               warmup: int = TUNE_WARMUP, iters: int = TUNE_ITERS) -> tuple[float, tuple[torch.Tensor, ...]]:
    """(median seconds of a CUDA-graph replay of rnn_forward with `plan`, the outputs the last replay left), as
    benchmarks/fused_vs_cudnn.py times fused-graph: one eager call outside the capture, then `warmup` replays and
    `iters` replays each between two CUDA events on one side stream; the same inputs every replay, no L2 flush. A
    wait that gave up in any of them raises KernelStalled."""
    stream = torch.cuda.Stream(device=x.device)
    stream.wait_stream(torch.cuda.current_stream(x.device))
    workspace: dict[str, Any] = {}

    def call() -> tuple[torch.Tensor, ...]:
        return rnn_forward(packed, x, h0, c0, plan=plan, workspace=workspace, check=False)

    with torch.cuda.stream(stream):
        call()  # compile and allocate outside the capture
    stream.synchronize()
    raise_if_stalled(workspace)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        static = call()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            graph.replay()
        for start, end in zip(starts, ends):
            start.record(stream)
            graph.replay()
            end.record(stream)
    stream.synchronize()
    raise_if_stalled(workspace)
    replayed = tuple(t.clone() for t in static)  # out of the graph's memory pool, which goes with the graph
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) / 1000.0, replayed


def _label(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "default"


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


# ---- tuning ------------------------------------------------------------------------------------------------------

def tune_plan(packed: PackedRNN, x: torch.Tensor, h0: torch.Tensor | None = None, c0: torch.Tensor | None = None, *,
              candidates: Sequence[dict[str, Any]] | None = None, warmup: int = TUNE_WARMUP, iters: int = TUNE_ITERS,
              min_gain: float = TUNE_MIN_GAIN, cache: bool = True, cache_dir: str | Path | None = None,
              timer: Callable[[Plan], float] | None = None,
              progress: Callable[[str], None] | None = None) -> TuneResult:
    """The fastest plan for rnn_forward(packed, x, h0, c0) on x's GPU among the default and `candidates`
    (TUNE_CANDIDATES: plan_for overrides), cached (see the module docstring).

    Each distinct plan plan_for builds runs once eagerly; its outputs are compared with the reference's (the first
    candidate that runs: the default plan, unless it raised) within TUNE_ATOL (compare_outputs), then it is timed
    (graph_time, whose last replay is compared again). A candidate plan_for refuses, that raises (a compile
    failure, KernelStalled, a size it does not fit) or that disagrees is never chosen; TuneResult.candidates says
    why. A candidate replaces the default only where it is faster by more than `min_gain`. cache: look the sizes up
    in memory and in cache_path(cache_dir) first, and keep the choice there (False: tune, keep nothing). timer:
    (plan) -> seconds, called instead of graph_time (then x may be on the CPU, under Triton's interpreter).
    progress: called with one line per candidate run.
    """
    if timer is None and (x.device.type != "cuda" or interpreting()):
        where = "under TRITON_INTERPRET=1" if interpreting() else f"on {x.device}"
        raise ValueError(f"plan tuning times the kernels on a CUDA device; this call runs {where}: tune on a GPU, "
                         f"or leave tune off (the default plan)")
    if x.dim() != 3:
        raise ValueError(f"expected a 3-d input, got shape {tuple(x.shape)}")
    if warmup < 0 or iters < 1:
        raise ValueError(f"warmup must be >= 0 and iters >= 1, got {warmup} and {iters}")
    seq_len, batch = (x.shape[1], x.shape[0]) if packed.batch_first else (x.shape[0], x.shape[1])
    key = tune_key(packed, seq_len, batch, h0 is not None)
    path = cache_path(cache_dir)
    default = plan_for(packed, seq_len, batch)
    if cache:
        entry = _lookup(path, key)
        plan = _cached_plan(entry, packed, seq_len, batch)
        if plan is not None and entry is not None:
            return TuneResult(plan, default, entry.get("us"), entry.get("default_us"), True, key)
    tried = _try_candidates(packed, x, h0, c0, seq_len, batch, candidates, warmup, iters, timer, progress)
    ran = [c for c in tried if c.us is not None and not c.skipped]
    if not ran:
        reasons = "; ".join(dict.fromkeys(f"{_label(c.overrides)}: {c.skipped}" for c in tried if c.plan))
        raise ValueError(f"plan tuning: no candidate plan ran at seq {seq_len} x batch {batch} ({reasons})")
    first = tried[0]  # the default ({} always first)
    base = first if first.us is not None and not first.skipped else None
    best = min(ran, key=lambda c: c.us or 0.0)
    if base is not None and best.us is not None and base.us is not None and best.us >= base.us * (1.0 - min_gain):
        best = base
    plan = best.plan if best is base else replace(best.plan, note=f"tuned: {_label(best.overrides)}"
                                                 + (f"; {best.plan.note}" if best.plan.note else ""))
    assert plan is not None
    result = TuneResult(plan, default, best.us, base.us if base else None, False, key, tuple(tried))
    if progress:
        gain = f", default {result.default_us:.1f} us" if result.default_us else ""
        progress(f"tune seq {seq_len} x batch {batch}: chose {_label(best.overrides)} ({plan.kernel}, "
                 f"{result.us:.1f} us{gain})")
    if cache:
        _store(path, key, {"overrides": best.overrides, "plan": _plan_fields(plan), "us": result.us,
                           "default_us": result.default_us, "default_kernel": default.kernel})
    return result


def _try_candidates(packed: PackedRNN, x: torch.Tensor, h0: torch.Tensor | None, c0: torch.Tensor | None,
                    seq_len: int, batch: int, candidates: Sequence[dict[str, Any]] | None, warmup: int, iters: int,
                    timer: Callable[[Plan], float] | None,
                    progress: Callable[[str], None] | None) -> list[Candidate]:
    """Every candidate, the default first: refused, the same plan as an earlier one (as its kernel reads it:
    _launch_of), raised, disagreeing, or timed."""
    asked = [dict(o) for o in (TUNE_CANDIDATES if candidates is None else candidates) if o]
    atol = TUNE_ATOL.get(packed.dtype, TUNE_ATOL[torch.float16])
    seen: dict[Plan, str] = {}
    reference: tuple[torch.Tensor, ...] | None = None
    tried: list[Candidate] = []
    with torch.no_grad():
        for overrides in [{}, *asked]:
            label = _label(overrides)
            try:
                plan = plan_for(packed, seq_len, batch, **overrides)
            except Exception as err:  # noqa: BLE001 - a ValueError where it does not apply; anything else kept too
                tried.append(Candidate(overrides, None, skipped=f"refused: {_first_line(err)}"))
                continue
            same = _launch_of(plan)
            if same in seen:
                tried.append(Candidate(overrides, plan, skipped=f"the same plan as {seen[same]}"))
                continue
            seen[same] = label
            candidate, outputs = _try_one(packed, x, h0, c0, plan, overrides, reference, atol, warmup, iters, timer)
            if reference is None and candidate.us is not None and not candidate.skipped:
                reference = outputs  # the first candidate that runs and agrees with its own replay
            tried.append(candidate)
            if progress:
                what = f"{candidate.us:.1f} us" if not candidate.skipped else f"not chosen: {candidate.skipped}"
                progress(f"tune seq {seq_len} x batch {batch}: {label} ({plan.kernel}): {what}")
    return tried


def _try_one(packed: PackedRNN, x: torch.Tensor, h0: torch.Tensor | None, c0: torch.Tensor | None, plan: Plan,
             overrides: dict[str, Any], reference: tuple[torch.Tensor, ...] | None, atol: float, warmup: int,
             iters: int, timer: Callable[[Plan], float] | None) -> tuple[Candidate, tuple[torch.Tensor, ...] | None]:
    """One candidate run, checked against `reference` (None: the first to run, compared with its own replay) and
    timed; and its eager outputs."""
    try:
        outputs = _run_once(packed, x, h0, c0, plan)
    except Exception as err:  # noqa: BLE001 - a candidate that fails is skipped, its reason kept
        return Candidate(overrides, plan, skipped=f"raised {_first_line(err)}"), None
    want = outputs if reference is None else reference
    diff, why = compare_outputs(outputs, want, atol)
    if why:
        return Candidate(overrides, plan, max_diff=diff, skipped=why), outputs
    try:
        if timer is not None:
            seconds = float(timer(plan))
        else:
            seconds, replayed = graph_time(packed, x, h0, c0, plan, warmup, iters)
            replay_diff, why = compare_outputs(replayed, want, atol)
            diff = max(diff, replay_diff)
            if why:
                why = f"replayed in a CUDA graph: {why}"
    except Exception as err:  # noqa: BLE001
        return Candidate(overrides, plan, max_diff=diff, skipped=f"raised {_first_line(err)}"), outputs
    return Candidate(overrides, plan, us=seconds * 1e6, max_diff=diff, skipped=why), outputs
