"""GPU time per forward of cuDNN (eager, CUDA graph) and the fused Triton kernel (eager, CUDA graph).

    PYTHONPATH=src python3 benchmarks/fused_vs_cudnn.py            # the table of docs/fused_kernel.md
    PYTHONPATH=src python3 benchmarks/fused_vs_cudnn.py --sweep    # plus launch-plan variants
    PYTHONPATH=src python3 benchmarks/fused_vs_cudnn.py --only A --no-cudnn --sweep --sweep-only A   # A alone
    PYTHONPATH=src python3 benchmarks/fused_vs_cudnn.py --grid --iters 50    # issue 12's grid: losses to cuDNN
    PYTHONPATH=src python3 benchmarks/fused_vs_cudnn.py --compare-triton   # CUDA persistent kernel vs Triton's
    PYTHONPATH=src python3 benchmarks/fused_vs_cudnn.py --grid --tune      # also each point's tuned plan (tune_plan)

Timing: CUDA events around every call on one stream, median of --iters calls after --warmup calls; the same
weights and inputs every call, no L2 flush (the weights of these models live in L2, as in trtexec).
cuDNN runs with TF32 off for fp32. Before timing, each fused variant is checked against a float64 CPU
nn.LSTM (max abs error printed). --tune: each workload (grid point) is also tuned (kernels/rnn/tune.py, through the
plan cache: LSTMINFER_CACHE_DIR or ~/.cache/lstminfer) and its tuned plan timed like the default, where it differs.
"""

from __future__ import annotations

import argparse
import collections
import copy
import dataclasses
import functools
import json
import re
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from lstminfer.cudnn_rnn import flatten_rnn
from lstminfer.kernels.rnn import pack_rnn, plan_for, raise_if_stalled, rnn_forward, tune_plan

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Workload:
    name: str
    input_size: int
    hidden_size: int
    num_layers: int
    bidirectional: bool
    seq_len: int
    batch: int
    precision: str
    target_us: float


# issue 12's workloads by its names; target: its fused-graph target (A, B, H, M: no slower than on 2026-12-02)
WORKLOADS = [
    Workload("A seed seq1", 10, 20, 10, True, 1, 3, "fp32", 14.0),
    Workload("B seed seq100", 10, 20, 10, True, 100, 3, "fp32", 230.6),
    Workload("H 64->128 fp32", 64, 128, 1, False, 100, 1, "fp32", 73.2),
    Workload("H 64->128 bf16", 64, 128, 1, False, 100, 1, "bf16", 69.9),
    Workload("H 64->128 fp16", 64, 128, 1, False, 100, 1, "fp16", 73.2),
    Workload("M 256->256 B1 fp32", 256, 256, 1, False, 100, 1, "fp32", 236.0),
    Workload("P 256->512 B1 fp32", 256, 512, 1, False, 100, 1, "fp32", 90.0),
    Workload("P 256->512 B1 bf16", 256, 512, 1, False, 100, 1, "bf16", 70.0),
    Workload("Q 256->512 B64 fp32", 256, 512, 1, False, 100, 64, "fp32", 350.0),
    Workload("Q 256->512 B64 bf16", 256, 512, 1, False, 100, 64, "bf16", 150.0),
    Workload("Q 256->512 B64 fp16", 256, 512, 1, False, 100, 64, "fp16", 150.0),
    Workload("S speech 2L bi 80->512 B8 fp32", 80, 512, 2, True, 200, 8, "fp32", 650.0),
    Workload("S speech 2L bi 80->512 B8 bf16", 80, 512, 2, True, 200, 8, "bf16", 450.0),
    Workload("R 80->1024 B1 T200 fp32", 80, 1024, 1, False, 200, 1, "fp32", 200.0),
    Workload("R 80->1024 B1 T200 bf16", 80, 1024, 1, False, 200, 1, "bf16", 200.0),
    Workload("U 128->1024 B8 T200 fp16", 128, 1024, 1, False, 200, 8, "fp16", 200.0),
    Workload("U 128->1024 B8 T200 bf16", 128, 1024, 1, False, 200, 8, "bf16", 200.0),
    Workload("V 128->768 B16 T1024 fp16", 128, 768, 1, False, 1024, 16, "fp16", 800.0),
    Workload("T 4L 1024->1024 B16 T50 bf16", 1024, 1024, 4, False, 50, 16, "bf16", 450.0),
]


def time_calls(fn, warmup: int, iters: int, stream: torch.cuda.Stream) -> float:
    """Median microseconds between CUDA events recorded around each call."""
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        for start, end in zip(starts, ends):
            start.record(stream)
            fn()
            end.record(stream)
    stream.synchronize()
    return 1000.0 * statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def graphed(fn, stream: torch.cuda.Stream):
    with torch.cuda.stream(stream):
        fn()  # compile / plan outside the capture
    stream.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        fn()
    return graph.replay


@functools.lru_cache(maxsize=8)  # a sweep's workloads come round again after the table's
def _setup(input_size: int, hidden_size: int, num_layers: int, bidirectional: bool, seq_len: int, batch: int,
           with_ref: bool = True):
    """The module (fp32, CPU), inputs and the float64 reference (None without with_ref), once per shape (all
    precisions share them)."""
    w = Workload("", input_size, hidden_size, num_layers, bidirectional, seq_len, batch, "fp32", 0.0)
    torch.manual_seed(0)
    module = torch.nn.LSTM(w.input_size, w.hidden_size, num_layers=w.num_layers,
                           bidirectional=w.bidirectional).eval()
    dirs = 2 if w.bidirectional else 1
    x = torch.randn(w.seq_len, w.batch, w.input_size)
    h0 = torch.randn(w.num_layers * dirs, w.batch, w.hidden_size)
    c0 = torch.randn(w.num_layers * dirs, w.batch, w.hidden_size)
    ref = None
    if with_ref:
        with torch.no_grad():
            ref = module.double()(x.double(), (h0.double(), c0.double()))
        module.float()
    return module, x, h0, c0, ref


def setup(w: Workload, with_ref: bool = True):
    return _setup(w.input_size, w.hidden_size, w.num_layers, w.bidirectional, w.seq_len, w.batch, with_ref)


def max_error(got, ref) -> float:
    if ref is None:
        return float("nan")
    out, (hn, cn) = ref
    return max((g.double().cpu() - r).abs().max().item() for g, r in zip(got, (out, hn, cn)))


# ---- what the compiler made of it (--sass): registers, spills, and the instruction mix of each loop ----------

LOOP_OPS = ("BAR", "FFMA", "FMUL", "FADD", "MUFU", "SHFL", "LDS", "STS", "STSM", "LDG", "STG", "LDL", "STL")


def loop_summaries(sass: str, shortest: int = 40, longest: int = 1000) -> list[str]:
    """One line per loop of a cuobjdump -sass listing (a backward branch and the instructions it spans):
    its length and how many of LOOP_OPS it holds. The step loop of a kernel is the one to read."""
    code = [(int(m.group(1), 16), m.group(2).strip())
            for m in re.finditer(r"/\*([0-9a-f]{4,6})\*/\s+([^;]*);", sass)]
    lines = []
    for addr, text in code:
        branch = re.search(r"\bBRA (0x[0-9a-f]+)", text)
        if not branch or int(branch.group(1), 16) >= addr:
            continue
        body = [t for a, t in code if int(branch.group(1), 16) <= a <= addr]
        if not shortest <= len(body) <= longest:
            continue
        ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", t).split()[0].split(".")[0] for t in body)
        lines.append(f"loop of {len(body)}: " + " ".join(f"{op} {ops[op]}" for op in LOOP_OPS if ops[op]))
    return lines


def compiled_kernels() -> list:
    """Every kernel Triton has compiled in this process for the fused kernels (Triton's own caches)."""
    from lstminfer.kernels import rnn

    found = []
    for fn in (rnn._rnn_stack_kernel, rnn._rnn_pipe_kernel, rnn._rnn_relay_kernel, rnn._rnn_persistent_kernel):
        for cache in getattr(fn, "device_caches", {}).values():
            found.extend((fn.fn.__name__, k) for k in cache[0].values())
    return found


def report_sass(label: str, seen: set, out_dir: Path) -> None:
    """Print registers, spills and loop summaries of kernels compiled since the last call; keep their SASS."""
    import triton

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    for name, kernel in compiled_kernels():
        if id(kernel) in seen:
            continue
        seen.add(id(kernel))
        with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
            cubin.write(kernel.asm["cubin"])
            cubin.flush()
            sass = subprocess.run([str(cuobjdump), "-sass", cubin.name], capture_output=True, text=True).stdout
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{re.sub(r'[^A-Za-z0-9]+', '-', label).strip('-')}-{len(seen)}.sass"
        path.write_text(sass)
        for stage in ("ttgir", "ptx"):  # what Triton handed to ptxas, for reading the SASS against
            path.with_suffix(f".{stage}").write_text(kernel.asm[stage])
        print(f"#   {label}: {name} registers {kernel.n_regs}, spills {kernel.n_spills}; {path}", flush=True)
        for line in loop_summaries(sass):
            print(f"#     {line}", flush=True)


def bench(w: Workload, args, overrides: dict | None = None) -> dict:
    dev = torch.device("cuda")
    dtype = DTYPES[w.precision]
    module, x, h0, c0, ref = setup(w, with_ref=not args.grid)
    xd, h0d, c0d = (t.to(dev, dtype) for t in (x, h0, c0))
    stream = torch.cuda.Stream()
    row: dict = {"workload": w.name}
    plain = overrides is None
    if plain and not args.no_cudnn:
        cudnn = copy.deepcopy(module).to(dev, dtype)
        flatten_rnn(cudnn)  # one contiguous weight buffer (bf16 too), or cuDNN compacts the weights every call
        with torch.inference_mode():
            run_cudnn = lambda: cudnn(xd, (h0d, c0d))  # noqa: E731
            row["cudnn"] = time_calls(run_cudnn, args.warmup, args.iters, stream)
            row["cudnn-graph"] = time_calls(graphed(run_cudnn, stream), args.warmup, args.iters, stream)
            with torch.cuda.stream(stream):
                got = run_cudnn()
            stream.synchronize()
            row["cudnn-err"] = max_error([got[0], *got[1]], ref)
    overrides = dict(overrides or {})
    packed = pack_rnn(module, dev, dtype, **{k: overrides.pop(k) for k in ("wide_weights",) if k in overrides})
    plan = plan_for(packed, w.seq_len, w.batch, **overrides)
    workspace: dict = {}
    run_fused = lambda: rnn_forward(packed, xd, h0d, c0d, plan=plan, workspace=workspace, check=False)  # noqa: E731
    with torch.cuda.stream(stream):
        got = run_fused()
    stream.synchronize()
    raise_if_stalled(workspace)  # a wait that gave up: fail now, not after --iters calls of seconds each
    row["err"] = max_error(got, ref)
    row["plan"] = plan
    row["fused"] = time_calls(run_fused, args.warmup, args.iters, stream)
    replay = graphed(run_fused, stream)
    row["fused-graph"] = time_calls(replay, args.warmup, args.iters, stream)
    raise_if_stalled(workspace)  # a persistent wait that gave up: no number for this workload
    if plain and args.tune:
        bench_tuned(row, packed, (xd, h0d, c0d), ref, args, stream)
    if args.sass:
        report_sass(f"{w.name} {overrides or 'default'}", args.sass_seen, Path(args.sass))
    return row


def bench_tuned(row: dict, packed, inputs: tuple, ref, args, stream: torch.cuda.Stream) -> None:
    """--tune: the workload's tuned plan (row["tuned"], a TuneResult) timed in a graph like the default
    (row["tuned-graph"]; the default's number where tuning kept the default plan); a tuning that fails is reported in
    row["tuned-failed"], the default's numbers kept."""
    try:
        tuned = tune_plan(packed, *inputs)
        row["tuned"] = tuned
        if dataclasses.replace(tuned.plan, note="") == dataclasses.replace(row["plan"], note=""):
            row["tuned-graph"], row["tuned-err"] = row["fused-graph"], row["err"]
            return
        workspace: dict = {}
        run_tuned = lambda: rnn_forward(packed, *inputs, plan=tuned.plan, workspace=workspace, check=False)  # noqa: E731
        with torch.cuda.stream(stream):
            got = run_tuned()
        stream.synchronize()
        raise_if_stalled(workspace)
        row["tuned-err"] = max_error(got, ref)
        row["tuned-graph"] = time_calls(graphed(run_tuned, stream), args.warmup, args.iters, stream)
        raise_if_stalled(workspace)
    except Exception as err:  # the default's numbers stand; say why there is no tuned one
        row["tuned-failed"] = f"{type(err).__name__}: {str(err)[:120]}"


def tuned_text(r: dict) -> str:
    """The tuned columns of a table row: tuned-graph us and the tuned plan (or why there is none)."""
    if "tuned-graph" not in r:
        return f"failed: {r.get('tuned-failed', '')} | |"
    cached = " (cached)" if r["tuned"].cached else ""
    err = f" (err {r['tuned-err']:.1e})" if r["tuned-err"] == r["tuned-err"] else ""  # NaN: no reference (--grid)
    return f"{r['tuned-graph']:.1f} | {plan_text(r['tuned'].plan)}{cached}{err} |"


# v18 (docs/fused_kernel.md): a wait polls one chunk a producer block (the sentinel) before the whole slice, with
# the plan's first-read delay and shorter ones; sentinel_last: the producers store the sentinel row last.
# SENTINEL_FRAG where the default polls into the fragments (poll_frag, 500 ns), SENTINEL_SMEM where h goes through
# shared memory (delay 0) and also polled into the fragments; one row: 8 units a block, else refused
SENTINEL_FRAG = [dict(poll_sentinel=True), dict(poll_sentinel=True, poll_delay=150),
                 dict(poll_sentinel=True, poll_delay=0), dict(poll_sentinel=True, poll_delay=300),
                 dict(sentinel_last=True, poll_delay=150)]
SENTINEL_SMEM = [dict(poll_sentinel=True), dict(poll_sentinel=True, poll_delay=150),
                 dict(poll_sentinel=True, poll_delay=300), dict(poll_frag=True, poll_sentinel=True, poll_delay=150),
                 dict(poll_frag=True, poll_sentinel=True, poll_delay=0)]
SENTINEL_ONE_ROW = [dict(cuda_nb=8), dict(cuda_nb=8, poll_sentinel=True)]
SWEEP = {
    "A seed seq1": [dict(pipeline=False), dict(fast_math=False), dict(k_chain=16), dict(k_chain=64),
                    dict(exact_k=False)],
    # the relay kernel (default) against its exact sums, fast sigmoid/tanh and the stack kernel (v7), and v5's plan
    "B seed seq100": [dict(relay=False, block_b=4, num_warps=4, block_m=32, block_c=128, programs=26),
                      dict(fast_math=False), dict(k_chain=16), dict(exact_k=False), dict(relay=False)],
    "H 64->128 fp32": [dict(poll_h=False), dict(fast_math=False), dict(k_chain=16), dict(k_chain=64),
                       dict(k_chain=128)],
    "H 64->128 bf16": [dict(wide_weights=True)],
    "H 64->128 fp16": [dict(wide_weights=True)],
    # the persistent kernel against v9's plan (M), its state through memory (v13), other warp counts (block_n
    # and programs follow the warps) and fp16/bf16 on the fp32 kernel (wide)
    # --compare-triton times every workload the CUDA kernel serves again with cuda=False (the Triton kernel);
    # 16-bit with few rows also on the CUDA kernel's FFMA (mma=False)
    "M 256->256 B1 fp32": [dict(path="single-launch"), dict(num_warps=1), dict(cuda=False, state_in_registers=False)],
    "P 256->512 B1 fp32": [dict(cuda=False, state_in_registers=False), dict(num_warps=8), *SENTINEL_ONE_ROW],
    "P 256->512 B1 bf16": [dict(wide=True), dict(cuda=False, state_in_registers=False)],
    "R 80->1024 B1 T200 fp32": [dict(cuda=False, state_in_registers=False), dict(num_warps=8), *SENTINEL_SMEM[:2]],
    "R 80->1024 B1 T200 bf16": [dict(wide=True)],
    # the CUDA kernel (v17, docs/fused_kernel.md): a sleep between two reads of a wait (fewer L2 re-reads of h
    # while the others compute); mma with a warp per k slice and W^T fragments in registers (mma_regs); and each
    # warp polling its k slice of h straight into its A fragments, one block barrier a step (poll_frag), also
    # with 16 hidden units a block (cuda_nb=16: half the blocks read h) or a sleep before the wait's first read
    # (poll_delay: fewer reads that find poison, each 16-32 KiB of a multiprocessor's L2 bandwidth)
    # v17 defaults (plan.py): mma_regs on mma plans, poll_frag with a 500 ns first-read delay from hidden 768;
    # mma_regs=False is v16's default (W^T in shared memory), timed beside them in the same run
    "U 128->1024 B8 T200 fp16": [dict(mma_regs=False), dict(mma_regs=True, poll_frag=False),
                                 dict(poll_frag=True, poll_delay=250), dict(poll_frag=True, poll_delay=1000),
                                 *SENTINEL_FRAG],
    "U 128->1024 B8 T200 bf16": [dict(mma_regs=False)],
    "T 4L 1024->1024 B16 T50 bf16": [dict(mma_regs=False), dict(mma_regs=True, poll_frag=False), *SENTINEL_FRAG[:3]],
    "S speech 2L bi 80->512 B8 bf16": [dict(mma_regs=False), dict(poll_frag=True, poll_delay=500),
                                       dict(poll_frag=True, poll_delay=500, cuda_nb=16), *SENTINEL_SMEM[:2],
                                       *SENTINEL_SMEM[3:]],
    "Q 256->512 B64 bf16": [dict(mma_regs=False), dict(poll_frag=True, poll_delay=500), *SENTINEL_SMEM],
    "Q 256->512 B64 fp32": SENTINEL_SMEM[:2],
    "Q 256->512 B64 fp16": [dict(mma_regs=False)],
    "V 128->768 B16 T1024 fp16": [dict(mma_regs=False), dict(poll_frag=True, poll_delay=250),
                                  dict(poll_frag=True, poll_delay=1000),
                                  dict(poll_frag=True, poll_delay=500, cuda_nb=16), *SENTINEL_FRAG],
}
# the seed model at other lengths: layer pipeline against the stack kernel (where to switch)
SEQ_SWEEP = [(dataclasses.replace(WORKLOADS[0], name=f"A seed seq{n}", seq_len=n), [dict(pipeline=True),
                                                                                    dict(pipeline=False)])
             for n in (3, 10)]
# cost per step and per layer of the stack and relay kernels: the seed model at seq 50 and 200 (with B: a line
# through 3 points)
SEQ_SWEEP += [(dataclasses.replace(WORKLOADS[1], name=f"B seed seq{n}", seq_len=n),
               [dict(relay=True), dict(relay=False)]) for n in (50, 200)]  # one of the two is the default
# the CUDA kernel with W_hh^T in shared memory (w_shared): where the register plan does not fit (the grid's
# hidden 768 bidirectional fp32, Triton's kernel by default) and where it does (S fp32), against its default
SEQ_SWEEP += [(Workload("X 768->768 bi B8 fp32", 768, 768, 1, True, 100, 8, "fp32", float("nan")),
               [dict(w_shared=True)]),  # the Triton kernel (default) there: 13343 us, cuDNN graph 1534 (v16's grid)
              (next(w for w in WORKLOADS if w.name == "S speech 2L bi 80->512 B8 fp32"),
               [dict(w_shared=True), dict(cuda=True)])]
# v19 (docs/fused_kernel.md, "Clusters (v19)"): thread-block clusters, h through distributed shared memory. The
# workloads renamed "C ..." so that --sweep-only C times these variants alone (beside --only's defaults)
CLUSTER_SWEEP = {
    "M 256->256 B1 fp32": [dict(cluster=16), dict(cluster=8)],
    "P 256->512 B1 fp32": [dict(cluster=True)],  # the slice split: 160 k a thread in registers, 96 shared
    "P 256->512 B1 bf16": [dict(cluster=True), dict(cluster=True, mma=True)],  # FFMA split / mma, 4 tiles a warp
    "Q 256->512 B64 fp32": [dict(cluster=True), dict(cluster=True, cluster_rows=8),
                            dict(cluster=True, cluster_rows=16)],
    "Q 256->512 B64 bf16": [dict(cluster=True), dict(cluster=True, tiles_per_warp=1),
                            dict(cluster=16, cluster_rows=8)],
    "Q 256->512 B64 fp16": [dict(cluster=True)],
    "S speech 2L bi 80->512 B8 fp32": [dict(cluster=True), dict(cluster=True, cluster_rows=8),
                                       dict(cluster=True, cluster_rows=2)],
    "S speech 2L bi 80->512 B8 bf16": [dict(cluster=True), dict(cluster=True, mma=False)],
}
SEQ_SWEEP += [(dataclasses.replace(w, name=f"C {w.name}"), CLUSTER_SWEEP[w.name]) for w in WORKLOADS
              if w.name in CLUSTER_SWEEP]
# v20 (docs/fused_kernel.md "v20 prepared"): the run that decides the defaults, --only D --sweep-only D. Each point's
# default ({}) beside its variants in one run: hidden 128 batch 64 fp32 (the CUDA kernel's grid loss to cuDNN) with
# fewer k a thread (cuda_kpt) and clusters; P fp32 with wider blocks (cuda_nb) or fewer k a thread; clusters at hidden
# 256 on grid points (seq 100, input = hidden), where M (hidden 256, one row) won; fp16 b8 is cuDNN's persistent-
# kernel loss. The losses first: a run cut short keeps them
def _grid_point(hidden: int, batch: int, layers: int, bi: bool, precision: str) -> Workload:
    return Workload(f"D grid h{hidden} b{batch} {layers}L {'bi' if bi else 'uni'} {precision}", hidden, hidden,
                    layers, bi, 100, batch, precision, float("nan"))


DECIDE_SWEEP = [
    (_grid_point(128, 64, 1, False, "fp32"), [{}, dict(cuda_kpt=32), dict(cuda_kpt=16), dict(cuda_kpt=8),
                                              dict(cluster=8), dict(cluster=16), dict(cluster=8, cuda_kpt=32)]),
    (_grid_point(128, 64, 2, False, "fp32"), [{}, dict(cuda_kpt=16)]),
    (_grid_point(256, 8, 1, False, "fp16"), [{}, dict(cluster=16), dict(cluster=8), dict(cluster=16, mma=False),
                                             dict(cluster=8, mma=False)]),
    (dataclasses.replace(WORKLOADS[6], name="D P 256->512 B1 fp32"), [{}, dict(cuda_nb=8), dict(cuda_nb=16),
                                                                      dict(cuda_kpt=32)]),
    (_grid_point(256, 8, 1, False, "fp32"), [{}, dict(cluster=16), dict(cluster=8), dict(cluster=8, cluster_rows=8)]),
    (_grid_point(256, 8, 1, False, "bf16"), [{}, dict(cluster=8), dict(cluster=8, mma=False)]),
    (_grid_point(256, 64, 1, False, "fp32"), [{}, dict(cluster=16), dict(cluster=8)]),
    (_grid_point(256, 64, 1, False, "bf16"), [{}, dict(cluster=16), dict(cluster=8)]),
    (_grid_point(256, 1, 1, False, "bf16"), [{}, dict(cluster=8)]),
    (_grid_point(256, 1, 1, True, "fp32"), [{}, dict(cluster=8)]),
    (_grid_point(256, 8, 1, True, "bf16"), [{}, dict(cluster=8)]),
    (_grid_point(256, 64, 1, True, "bf16"), [{}, dict(cluster=8)]),
    (_grid_point(256, 8, 2, True, "fp32"), [{}, dict(cluster=8)]),
]
SEQ_SWEEP += DECIDE_SWEEP
# the pipeline's cost per layer: the seed model cut to 1 and 5 layers (launch + first layer, then the slope)
SEQ_SWEEP += [(dataclasses.replace(WORKLOADS[0], name=f"A seed {n} layers", num_layers=n), [dict(pipeline=True)])
              for n in (1, 5)]


# --grid: issue 12's "never slower than cuDNN in a graph" sweep, seq 100, input size = hidden; fp16 only where
# PyTorch lets cuDNN use its persistent kernel (FACTS.md section 6)
GRID_HIDDEN = (32, 64, 128, 256, 384, 512, 768, 1024)
GRID_BATCH = (1, 8, 64)


def grid_workloads() -> list[Workload]:
    points = []
    for hidden in GRID_HIDDEN:
        for batch in GRID_BATCH:
            for layers in (1, 2):
                for bi in (False, True):
                    persistent_fp16 = layers == 1 and not bi and hidden % 128 == 0 and batch % 8 == 0
                    for precision in ("fp32", "bf16") + (("fp16",) if persistent_fp16 else ()):
                        name = f"grid h{hidden} b{batch} {layers}L {'bi' if bi else 'uni'} {precision}"
                        points.append(Workload(name, hidden, hidden, layers, bi, 100, batch, precision,
                                               float("nan")))
    return points


def print_grid(workloads: list[Workload], rows: list, tune: bool = False) -> None:
    """One line per point, then how many points fused-graph loses to cuDNN in a graph and the worst ratio; with
    `tune`, each point's tuned plan too and the same count for the tuned plans."""
    print("| point | cuDNN graph us | fused-graph us | cuDNN graph / fused-graph | kernel |"
          + (" tuned-graph us | tuned kernel |" if tune else ""))
    print("|---|---|---|---|---|" + ("---|---|" if tune else ""))
    for w, r in zip(workloads, rows):
        if r is None:
            print(f"| {w.name} | failed | | | |" + (" | |" if tune else ""))
            continue
        ratio = r["cudnn-graph"] / r["fused-graph"]
        tuned = ""
        if tune:
            tuned = (f" {r['tuned-graph']:.1f} | {r['tuned'].plan.kernel} |" if "tuned-graph" in r
                     else f" failed: {r.get('tuned-failed', '')} | |")
        print(f"| {w.name} | {r['cudnn-graph']:.1f} | {r['fused-graph']:.1f} | {ratio:.2f}x | {r['plan'].kernel} |"
              + tuned)
    handed, ours, losses, worst = count_losses((w.name, r["plan"].kernel, r["cudnn-graph"] / r["fused-graph"])
                                               for w, r in zip(workloads, rows) if r is not None)
    timed = len(ours) + handed
    print(f"# grid: {timed} points timed, {len(rows) - timed} failed, {handed} handed to cuDNN; "
          f"a fused kernel slower than cuDNN in a graph at {len(losses)} of {len(ours)}; worst ratio "
          f"{worst[0]:.2f}x ({worst[1]})")
    slower, pairs, worst16 = count_16bit_slower((w.name, r["fused-graph"]) for w, r in zip(workloads, rows)
                                                if r is not None)
    print(f"# grid: fp16/bf16 slower than fp32 at {len(slower)} of {pairs} pairs (by more than "
          f"{100 * SLOWER_16BIT_NOISE:.0f} %: {', '.join(slower) or 'none'}); slowest 16-bit / fp32 "
          f"{worst16[0]:.2f}x ({worst16[1]})")
    if tune:
        print_tuned_count(workloads, rows)


# issue 12's "fp16/bf16 never slower than fp32", as the grid counts it: a 16-bit point slower than the same point in
# fp32 by more than this fraction (timing noise between two graphs of one run is ~1 %)
SLOWER_16BIT_NOISE = 0.02


def count_16bit_slower(points) -> tuple[list[str], int, tuple]:
    """(names of the 16-bit points slower than their fp32 point by more than SLOWER_16BIT_NOISE, the number of
    (16-bit, fp32) pairs, the largest (16-bit / fp32, name)) of (name, fused-graph us) pairs whose names end in the
    precision ("... fp32", "... bf16", "... fp16"); points without an fp32 twin are left out."""
    by_point: dict[str, dict[str, float]] = {}
    for name, us in points:
        point, _, precision = name.rpartition(" ")
        by_point.setdefault(point, {})[precision] = us
    ratios = [(times[p] / times["fp32"], f"{point} {p}") for point, times in by_point.items() if "fp32" in times
              for p in ("bf16", "fp16") if p in times]
    slower = [name for ratio, name in ratios if ratio > 1.0 + SLOWER_16BIT_NOISE]
    return slower, len(ratios), max(ratios) if ratios else (float("nan"), "-")


def count_losses(points) -> tuple[int, list, list, tuple]:
    """(points handed to cuDNN, [(ratio, name)] of the others, names of those slower than cuDNN, the worst (ratio,
    name)) of (name, kernel, cuDNN graph / ours) triples. Points whose plan is cuDNN's (Plan.kernel "cudnn") are cuDNN
    against itself: counted apart, never wins."""
    handed, ours = 0, []
    for name, kernel, ratio in points:
        if kernel == "cudnn":
            handed += 1
        else:
            ours.append((ratio, name))
    losses = [n for q, n in ours if q < 1.0]
    return handed, ours, losses, min(ours) if ours else (float("nan"), "-")


def print_tuned_count(workloads: list[Workload], rows: list) -> None:
    """print_grid's count for the tuned plans: points whose tuned plan is cuDNN's count as handed off, as the
    default's do; points whose tuning failed are left out."""
    handed, ours, losses, worst = count_losses((w.name, r["tuned"].plan.kernel, r["cudnn-graph"] / r["tuned-graph"])
                                               for w, r in zip(workloads, rows)
                                               if r is not None and "tuned-graph" in r)
    print(f"# grid: tuned: {len(ours) + handed} points tuned, {handed} handed to cuDNN; a fused kernel slower than "
          f"cuDNN in a graph at {len(losses)} of {len(ours)}; worst ratio {worst[0]:.2f}x ({worst[1]})")


def print_cuda_vs_triton(workloads: list[Workload], rows: list, args) -> None:
    """Each workload the CUDA persistent kernel served, timed again with cuda=False (the Triton kernel) in the
    same run: fused-graph us of both and cuDNN in a graph."""
    print("\n| workload | cuDNN graph us | fused-graph CUDA kernel us | fused-graph Triton kernel us | CUDA / Triton "
          "| cuDNN graph / CUDA | err CUDA / Triton | CUDA plan | CUDA other product (mma=False / True) us |")
    print("|" + "---|" * 9)
    for w, r in zip(workloads, rows):
        if r is None or r["plan"].kernel != "persistent-cuda":
            continue
        try:
            t = bench(w, args, dict(cuda=False))
        except Exception as err:  # report and go on
            print(f"| {w.name} | | {r['fused-graph']:.1f} | failed: {type(err).__name__}: {str(err)[:100]} | | | | |")
            continue
        other = ""
        if w.precision != "fp32" and w.batch <= 16:  # 16-bit with few rows: FFMA on the real rows, or mma
            try:
                o = bench(w, args, dict(mma=not r["plan"].mma))
                other = f"{o['fused-graph']:.1f} (err {o['err']:.1e}, {plan_text(o['plan'])})"
            except Exception as err:
                other = f"failed: {type(err).__name__}: {str(err)[:80]}"
        cudnn_graph = r.get("cudnn-graph", float("nan"))
        print(f"| {w.name} | {cudnn_graph:.1f} | {r['fused-graph']:.1f} | {t['fused-graph']:.1f} "
              f"| {r['fused-graph'] / t['fused-graph']:.2f} | {cudnn_graph / r['fused-graph']:.2f}x "
              f"| {r['err']:.1e} / {t['err']:.1e} | {plan_text(r['plan'])} | {other} |", flush=True)


def plan_text(plan) -> str:
    return " ".join(f"{k}={v}" for k, v in plan.describe().items()).replace("kernel=", "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--sweep", action="store_true", help="also time launch-plan variants")
    parser.add_argument("--grid", action="store_true",
                        help="time the grid of hidden x batch x layers x directions x precision (seq 100; no "
                             "float64 check) instead of the workloads, and count the points lost to cuDNN")
    parser.add_argument("--only", default="", help="comma-separated workload name prefixes (default: all)")
    parser.add_argument("--no-cudnn", action="store_true", help="time the fused kernel only")
    parser.add_argument("--sweep-only", default="", help="comma-separated workload name prefixes to sweep")
    parser.add_argument("--variant", action="append", default=[], metavar="JSON",
                        help='plan overrides to time every selected workload (or grid point) with as well, e.g. '
                             '\'{"relay": false}\'; repeatable')
    parser.add_argument("--compare-triton", action="store_true",
                        help="time each workload the CUDA persistent kernel serves again on the Triton kernel "
                             "(cuda=False) and print both against cuDNN in a graph")
    parser.add_argument("--tune", action="store_true",
                        help="also tune each workload (grid point) with tune_plan and time its tuned plan in a graph "
                             "(a 'tuned' column; with --grid a second count of the points lost to cuDNN)")
    parser.add_argument("--sass", metavar="DIR", default="",
                        help="after each timing, print registers, spills and the loops' instruction mix of the "
                             "kernels it compiled, and keep their SASS in DIR")
    args = parser.parse_args()
    args.sass_seen = set()
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    workloads = [w for w in (grid_workloads() if args.grid else WORKLOADS)
                 if not only or any(w.name.startswith(p) for p in only)]
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, "
          f"median of {args.iters} calls after {args.warmup}, CUDA events, TF32 off, no L2 flush")
    rows = []
    for w in workloads:
        try:
            rows.append(bench(w, args))
        except Exception as err:  # report and go on: one broken workload must not hide the others
            print(f"# {w.name} failed: {type(err).__name__}: {str(err)[:200]}", flush=True)
            rows.append(None)
        if args.grid and rows[-1] is not None:  # as it goes: a grid cut short by a time limit keeps its points
            r = rows[-1]
            tuned = ""
            if args.tune:
                tuned = (f", tuned {r['tuned-graph']:.1f} us {r['tuned'].plan.kernel}" if "tuned-graph" in r
                         else f", tuning failed: {r.get('tuned-failed', '')}")
            print(f"# {w.name}: cuDNN graph {r['cudnn-graph']:.1f} us, fused-graph {r['fused-graph']:.1f} us, "
                  f"{r['cudnn-graph'] / r['fused-graph']:.2f}x, {r['plan'].kernel}{tuned}", flush=True)
    if args.grid:
        print_grid(workloads, rows, args.tune)
        time_variants(workloads, [json.loads(v) for v in args.variant], args)
        return
    head = ("| workload | cuDNN eager us | cuDNN graph us | fused us | fused-graph us | cuDNN graph / fused-graph "
            "| target us | max abs err vs fp64 (fused / cuDNN) | kernel, plan |")
    print(head + (" tuned-graph us | tuned plan |" if args.tune else ""))
    print("|" + "---|" * (11 if args.tune else 9))
    met = 0
    for w, r in zip(workloads, rows):
        if r is None:
            print(f"| {w.name} | failed | | | | | | | |" + (" | |" if args.tune else ""))
            continue
        cudnn, cudnn_graph = r.get("cudnn", float("nan")), r.get("cudnn-graph", float("nan"))
        met += r["fused-graph"] <= w.target_us
        print(f"| {w.name} | {cudnn:.1f} | {cudnn_graph:.1f} | {r['fused']:.1f} | {r['fused-graph']:.1f} "
              f"| {cudnn_graph / r['fused-graph']:.2f}x | {w.target_us:.0f} "
              f"{'met' if r['fused-graph'] <= w.target_us else 'MISSED'} "
              f"| {r['err']:.1e} / {r.get('cudnn-err', float('nan')):.1e} | {plan_text(r['plan'])} |"
              + (f" {tuned_text(r)}" if args.tune else ""), flush=True)
    print(f"# targets met: {met} of {len(workloads)}")
    if args.compare_triton:
        print_cuda_vs_triton(workloads, rows, args)
    if args.sweep:
        print("\n| workload | variant | fused us | fused-graph us | err | kernel, plan |")
        print("|---|---|---|---|---|---|")
        picks = [p.strip() for p in args.sweep_only.split(",") if p.strip()]
        for w, variants in [(w, SWEEP.get(w.name, [])) for w in WORKLOADS] + SEQ_SWEEP:
            if picks and not any(w.name.startswith(p) for p in picks):
                continue
            for ov in variants:
                print_variant(w, ov, args)


    time_variants(workloads, [json.loads(v) for v in args.variant], args)


def time_variants(workloads: list[Workload], variants: list[dict], args) -> None:
    """--variant: each selected workload again with each set of plan overrides (fused only)."""
    if not variants:
        return
    print("\n| workload | variant | fused us | fused-graph us | err | kernel, plan |")
    print("|---|---|---|---|---|---|")
    for w in workloads:
        for ov in variants:
            print_variant(w, ov, args)


def print_variant(w: Workload, ov: dict, args) -> None:
    """One row of a variants table: the workload timed with the plan overrides `ov`."""
    try:
        r = bench(w, args, ov)
        print(f"| {w.name} | {ov} | {r['fused']:.1f} | {r['fused-graph']:.1f} | {r['err']:.1e} "
              f"| {plan_text(r['plan'])} |", flush=True)
    except Exception as err:  # a variant that does not compile or fit is reported, not fatal
        print(f"| {w.name} | {ov} | failed: {type(err).__name__}: {str(err)[:120]} | | | |", flush=True)


if __name__ == "__main__":
    main()
