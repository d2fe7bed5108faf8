"""Launch policy: which kernel runs a call and its tile sizes, a pure function of the sizes and the device."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .packing import PackedRNN, _pow2

# single-launch: the whole stack in one launch (stack, pipeline or relay kernel); per-layer: per layer one GEMM and
# one launch of the persistent kernel; multi-launch: the stack kernel once per (layer, time step); cudnn: the call
# handed to PyTorch's cuDNN RNN (cudnn.py), where no fused kernel fits the size well (CUDNN_HANDOFF)
PATHS = ("single-launch", "per-layer", "multi-launch", "cudnn")
KERNELS = ("stack", "pipeline", "relay", "persistent", "persistent-cuda", "cudnn")
# Where the plan would otherwise run a kernel known to lose to cuDNN by a wide margin, hand the call to cuDNN
# (plan_for(..., cudnn=False) keeps ours): the Triton persistent kernel (the CUDA kernel does not fit: H200 grid
# of 2026-12-03, 22 of its 23 points lost, down to 0.13x) and the multi-launch path (one launch per layer and
# step). docs/fused_kernel.md, "Sizes handed to cuDNN".
CUDNN_HANDOFF = True
# ... and, on Hopper, the sizes where one H200 run measured cuDNN in a graph faster than our plan and every variant of
# it timed beside it (2026-12-03, session 9; docs/fused_kernel.md "Sizes handed to cuDNN"): (precision, hidden,
# directions, fewest layers, batch range) -> why. A measured rule like CUDA_MEASURED_OPTIONS: exact sizes only
CUDNN_MEASURED: dict[tuple[str, int, int, int, int, int], str] = {
    # stack kernel 40.8 / 78.0 us against cuDNN's 39.0 / 76.1 (1 / 2 layers); block_b 2-4, 2 warps, relay: 49.7-213 us
    ("fp32", 32, 1, 1, 49, 64): "cuDNN measured faster at hidden 32, batch 64 (0.95x-0.98x)",
    # our layers run one after the other (1 layer: 689 us, faster than cuDNN's 738.5), cuDNN overlaps its layers (2
    # layers: 1101.9 against our 1398.1); cuda_nb, poll_frag, mma_regs variants 1392-5441 us
    ("bf16", 768, 1, 2, 49, 64): "cuDNN overlaps its layers at hidden 768, batch 64 (measured 0.79x at 2 layers)",
    # V (128 -> 768, batch 16, seq 1024, fp16): cuDNN's persistent kernel 1976.6 us against our 2173.8 (0.91x); the
    # first-read delay at 300 / 700 ns, cuda_nb=16 and mma=False 2154-7658 us
    ("fp16", 768, 1, 1, 9, 16): "cuDNN's persistent fp16 kernel measured faster at hidden 768, batch 16 (0.91x)",
}
# Recurrent weights per thread a program keeps in registers for a whole layer (fp32 values).
WEIGHT_REGISTERS = 128
POLL_H_MAX_BYTES = 64 << 20
# Longest sequence for which the layer pipeline (one program per layer and direction) is the default plan
# (H100, seed model: faster at seq 1 and 3, slower at seq 10), and the most W_ih + W_hh weights per thread
# it is the default with (96 compiles without spills on sm_90; 128 spills at HP 64).
PIPELINE_MAX_SEQ = 3
PIPELINE_WEIGHTS = 96
# the one-warp-per-row plan (HP <= 32) from this many (time step, row) pairs per batch tile: below it a unit
# projects its own columns, too slow on one warp
SMALL_ROWS_MIN_SEQ = 16
# the relay kernel: helper programs per batch tile (at most; more were no faster) and the most workspace it
# may take. Where it fits it is the one-warp plan's kernel at every length (H100, seed model: 129 vs 164 us at
# seq 50, 231 vs 273 at 100, 442 vs 500 at 200 against the stack kernel)
RELAY_HELPERS = 16
# the relay kernel is the default only where each batch tile gets at least this many helpers (H200 grid, 2026-12-03:
# h32 b64 uni fp32 with one helper a tile 58.5 us against the stack kernel's one-warp plan 41.1, 2 layers 104.8
# against 77.7)
RELAY_MIN_HELPERS = 2
RELAY_MAX_BYTES = 256 << 20
# the persistent kernel (per-layer path): the default from this padded hidden size on; the most batch rows and
# hidden units a program takes; polls before a wait gives up (each poll is at least an L2 round trip, ~0.3 us)
PERSISTENT_MIN_HIDDEN = 256
PERSISTENT_MAX_ROWS = 64
PERSISTENT_MAX_UNITS = 64
# fp16/bf16 with at most this many batch rows multiply-and-sum (one row: P bf16 ~260 us with tl.dot at 16 padded
# rows, ~160 us for fp32's multiply-and-sum); more rows use tensor cores
PERSISTENT_SUM_ROWS = 0
# fp16/bf16 with few rows on the fp32 kernel (weights widened once, h exchanged in fp32): off until measured;
# at one row the 16-bit paths took 274 (P) and 817 us (R) against fp32's 154 and 396 (H200, v13)
PERSISTENT_WIDE = False
# one warp a program (multiply-and-sum) while a lane's share of h (block_b * HP / 32 values) stays this small:
# 0, off by default (H200: M 127 us at one warp, 130 at four; P 236 vs 161-240; R 1087 vs 368 at eight)
PERSISTENT_ONE_WARP_H = 0
# the most W_hh^T weights a program keeps on chip (64 a lane at 16 warps; R fp32: 1024 x 32)
PERSISTENT_MAX_WEIGHTS = 32768
SPIN_LIMIT = 4_000_000
# The CUDA C++ persistent kernel (cuda_persistent.py; docs/fused_kernel.md v15): the per-layer path's default
# where NVRTC is there and the size fits. 16-bit: mma.sync over 16 batch rows a block, about CUDA_MMA_WARPS
# warps (k slices fill the warps the column tiles leave); fp32 (and 16-bit asked with mma=False): FFMA with
# CUDA_FFMA_MAX_ROWS rows a block and W_hh^T in registers, k per thread from CUDA_FFMA_KPT, at most what fits
# next to the ~90 other registers a thread needs (sm_90 ptxas: 214 registers at 128 k, no spill; 512 threads
# capped at 128 registers spilled W inside the step loop). CUDA_MAX_SHARED: a block's dynamic shared memory.
CUDA_DEFAULT = True
# 16-bit with at most this many batch rows: FFMA on the real rows (16-bit h widened in shared memory) instead of
# mma.sync over 16 padded rows (H200, v15: P bf16 123 vs 177 us, R bf16 282 vs 509; at 8 rows mma won: S bf16
# 1124 vs 1390, U 980 vs 1244)
CUDA_FFMA_16BIT_MAX_ROWS = 1
CUDA_MMA_ROWS = 16
CUDA_MMA_WARPS = 8
CUDA_FFMA_MAX_ROWS = 16
CUDA_FFMA_KPT = (64, 128, 32, 16, 8)
# cuda_kpt (asked only, v20 sweep): the FFMA product's k a thread, e.g. 16 at hidden 128 batch 64 (4 warps of 256 FMA a
# thread a step instead of the default's one warp of 1024)
CUDA_KPT_CHOICES = (8, 16, 32, 64, 128, 256, 512)
# ffma_cols (v21, asked for or CUDA_MEASURED_OPTIONS): columns a thread of the FFMA product with W_hh^T in registers, so
# that each 16-byte read of h from shared memory feeds that many columns (at one column a thread Q fp32 read 512 of them
# a thread a step; its product took ~2x its FMA issue time by the stamps, docs/fused_kernel.md)
CUDA_FFMA_COLS_CHOICES = (1, 2, 4)
CUDA_OTHER_REGISTERS = 90
CUDA_MAX_SHARED = 227 << 10
# mma defaults from the H200 sweep of 2026-12-03 (fused-graph us, default -> mma_regs -> poll_frag with a
# 500 ns first-read delay): U fp16 592 -> 511 -> 354, V 3793 -> 3308 -> 2122; mma_regs alone also won on Q bf16
# (380 -> 342), S bf16 (904 -> 746) and T (769 -> 713), where poll_frag without the delay lost (S 1024, T 853).
# v18 (H200 sweep of 2026-12-03, 10:52 UTC): with the delay poll_frag also wins at hidden 512, Q bf16 342 -> 248,
# S bf16 747 -> 688 (docs/fused_kernel.md)
POLL_FRAG_MIN_HIDDEN = 512
POLL_DELAY_NS = 500
# v22 (H200, 2026-12-03 ~15:40 UTC, session 9; docs/benchmarks.md): the FFMA product's plans (W_hh^T in registers) wait
# this long before a step's first read of h too. Found by tune's first run (P bf16 114.6 -> 103.7), then timed as a
# variant at 10 sizes, fused-graph us, 0 -> 250 / 400 ns: P fp32 111.5 -> 103.4 / 116.0, P bf16 114.1 -> 102.9 / 113.4,
# R fp32 234.9 -> 224.0 / 220.4, R bf16 289.3 -> 250.7 / 218.9, Q fp32 718.5 -> 703.4 / 719.1, S fp32 1394.3 -> 1381.8
# / 1431.1, h512 b8 uni fp32 284.6 -> 264.0 / 262.4, h512 b1 fp32 118.8 -> 113.2 / 124.6, h768 b1 fp32 148.3 -> 140.4 /
# 135.4, h1024 b1 bf16 151.8 -> 130.5 / 116.4, h256 b1 bf16 95.5 -> 86.5 / 112.4: 250 won or tied everywhere, 400
# more at padded hidden 1024 in 16-bit (both points measured there)
POLL_DELAY_FFMA_NS = 250
POLL_DELAY_FFMA_16BIT_1024_NS = 400
# options of the CUDA kernel only (docs/fused_kernel.md v18, v19, v23): a plan that runs another kernel refuses them
CUDA_ONLY_OPTIONS = ("sentinel_last", "poll_sentinel", "stamps", "cluster", "poll_spin", "mma_swap", "wide_h")
# mma_swap (asked for; cuda_source.py MMA_SWAP): h as the mma's B operand, whose 8 columns are the batch rows
MMA_SWAP_ROWS = 8
# thread-block clusters (asked for, or CUDA_MEASURED_OPTIONS' default; docs/fused_kernel.md "Clusters (v19)"): the
# blocks a cluster that cluster=True tries, largest first (more than 8 needs the non-portable cluster size, which Hopper
# allows up to 16), and the rows a cluster by default (mma: the 16 padded rows; FFMA: the real rows, at most
# CUDA_FFMA_MAX_ROWS)
CLUSTER_SIZES = (16, 8, 4)
# clusters of a size that can run at once with one block a multiprocessor: a cluster lives in one GPC, and the H100 /
# H200's 132 multiprocessors sit in GPCs of unequal size (so 16 blocks: one a GPC). FFMA cluster plans take enough
# rows a cluster that their clusters all run at once (more would queue behind them: twice the time). Measured on the
# H200 (cuOccupancyMaxActiveClusters, 2026-12-03 13:50 UTC, docs/fused_kernel.md "Clusters (v19)"): 15 clusters of 8
# (not 16 = 128 / 8: one GPC holds fewer than 16 multiprocessors), at least 7 of 16; 4 blocks not yet read: 28 (132
# / 4 less 5 for GPCs of 2 or 6 multiprocessors past a multiple of 4); other sizes: SMs // size
CLUSTER_ACTIVE = {16: 7, 8: 15, 4: 28}
# cluster plans' mma with W^T in shared memory (its fragments past the registers, e.g. hidden 512 in 16-bit): a warp
# per 4 column tiles and a k slice, 16 warps (one tile a warp: each of 16 warps read all of h every step)
CLUSTER_TILES_PER_WARP = 4
CLUSTER_MMA_WARPS = 16
# the CUDA kernel's options taken by default where one H200 run measured them faster than the plain plan (v20's rule,
# docs/fused_kernel.md "Clusters (v19)" and "v20 measured"): {(precision, hidden, directions): ((largest batch,
# options), ...)}, the first entry whose batch bound holds ({}: the plain plan); only the hidden sizes measured (not
# others of the same padded size: hidden 384 pads to 512, and P's 8 units a block there would be 48 blocks, not
# timed). A plan that asks for any CUDA option, cluster=False or cuda_kpt among them, is planned as asked. Where the
# options do not fit, the plain plan. From the D sweep (2026-12-03 ~14:05 UTC, fused-graph us, default -> chosen):
CUDA_MEASURED_OPTIONS: dict[tuple[str, int, int], tuple[tuple[int, dict[str, Any]], ...]] = {
    # h128 b64 uni: 340.2 -> 147.6 (C8 + cuda_kpt=32 147.4: a tie, the fewer options); by default the
    # CUDA kernel runs there from batch 34 (the stack kernel below)
    ("fp32", 128, 1): ((8, {}), (64, dict(cluster=8))),
    # M (b1, v19's run) 102.0 -> 95.5, b8 211.9 -> 104.6, b64 398.4 -> 322.5
    ("fp32", 256, 1): ((64, dict(cluster=8)),),
    # b8 2L bi 480.3 -> 324.3; b1 1L bi 98.9 -> 96.4 (2.5 %: under the 3 %), b64 bi not timed
    ("fp32", 256, 2): ((1, {}), (8, dict(cluster=8))),
    # b8 on FFMA (one row a cluster): fp16 158.2 -> 96.9, bf16 158.3 -> 96.6 (mma clusters lost: 176.2); b1 bf16
    # 95.6 -> 93.4 (2.3 %), b64 bf16 clusters lost (188.9 -> 217.5 / 243.0)
    # (b33-64: 250 ns, session 10 below)
    ("fp16", 256, 1): ((1, {}), (8, dict(cluster=8, mma=False)), (32, {}), (64, dict(poll_delay=250))),
    ("bf16", 256, 1): ((1, {}), (8, dict(cluster=8, mma=False)), (32, {}), (64, dict(poll_delay=250))),
    # P (256 -> 512 b1 uni): 121.5 -> 113.2 (8 units a block, 64 blocks; v18's stamps run: 125.0 -> 114.8; session 10
    # below); b8 and b64: v21 below (h512 b8 keeps the plain plan, 285.2 against ffma_cols' 492.7)
    # session 10 (H200, 2026-12-03 ~17:12 UTC, tune_plan on P with v22's 250 ns delay): P 103.4 -> 98.7 with 2 columns
    # a thread (4 units a block, 128 blocks of 2 warps), where v21 without the delay had it lose (111.1 -> 112.5)
    ("fp32", 512, 1): ((1, dict(ffma_cols=2)), (8, {}), (64, dict(ffma_cols=2))),
    # 16-bit where the final grid (2026-12-03 ~14:20 UTC) had it slower than fp32, timed again with variants in one run
    # (~14:25 UTC, fused-graph us, default -> cuda_nb=8; clusters of 8 on FFMA tied within 1.2 % at hidden 128 and
    # 256, so the fewer blocks, one option): h128 b64 uni bf16 160.1 -> 136.3 (2L 315.7 -> 270.9), fp16 160.1 ->
    # 137.2 (fp32's cluster: 147.0); h256 b8 bi bf16 157.7 -> 134.7 (fp32 151.9); h384 b1 2L uni bf16 247.2 ->
    # 221.0 (fp32 233.0); h512 b1 uni bf16 (P bf16's plan) 128.7 -> 114.0 (fp32 118.7)
    ("bf16", 128, 1): ((8, {}), (64, dict(cuda_nb=8))),
    ("fp16", 128, 1): ((8, {}), (64, dict(cuda_nb=8))),
    ("bf16", 256, 2): ((1, {}), (8, dict(cuda_nb=8)), (32, {}), (64, dict(poll_spin=2))),  # b33-64: session 10 below
    ("bf16", 384, 1): ((1, dict(cuda_nb=8)),),
    # session 9 (H200, 2026-12-03 ~15:10 UTC, grid points timed with variants, fused-graph us, default -> cuda_nb=8):
    # hidden 512 unidirectional at batch 8 in 16-bit, 64 blocks of 8 units instead of 128 of 4: bf16 174.5 -> 137.4 (2
    # layers 343.1 -> 269.4), fp16 174.5 -> 139.2 (cuDNN's persistent kernel: 161.2, the grid's fp16 loss); cuda_nb=16
    # 164.7-165.5; bidirectional (already 64 blocks a direction) unchanged. Not timed at batch 2-7: the bound is the
    # measured 8 (bf16 b1: the row above)
    ("bf16", 512, 1): ((8, dict(cuda_nb=8)),),
    ("fp16", 512, 1): ((1, {}), (8, dict(cuda_nb=8))),
    # v21 (H200, 2026-12-03 ~15:40 UTC, fused-graph us, default -> ffma_cols=2 / 4): 2 columns a thread of the fp32 FFMA
    # product where it won: Q (h512 b64 uni) 853.3 -> 713.1 / 719.1, S (h512 b8 2L bi) 1604.4 -> 1398.0 / 1397.1, R
    # (h1024 b1 uni) 264.9 -> 237.5 / 245.4, h1024 b8 uni 580.6 -> 525.7 / 551.9, h768 b8 uni 497.6 -> 459.1 / 454.5,
    # h384 b64 uni 817.4 -> 783.9 / 771.1; 4 columns at h384 b8 uni 251.7 -> 252.0 / 238.1. Lost: h512 b8 uni 285.2 ->
    # 492.7 / 442.2 (2 warps a block), P 111.1 -> 112.5 / 110.5, M and hidden 256 (clusters there: 94.9 -> 98.8-100.1,
    # 105.1 -> 202.0, 323.5 -> 683.3): those keep their plans
    ("fp32", 512, 2): ((1, {}), (8, dict(ffma_cols=2))),
    ("fp32", 1024, 1): ((8, dict(ffma_cols=2)),),
    ("fp32", 768, 1): ((1, {}), (8, dict(ffma_cols=2))),
    ("fp32", 384, 1): ((1, {}), (8, dict(ffma_cols=4)), (64, dict(ffma_cols=2))),
    # session 10 (H200, 2026-12-03 ~17:22 UTC, fused-graph us, default -> poll_spin=2 / poll_delay=1000): T (4L h1024
    # b16 uni bf16, mma with poll_frag) 571.4 -> 623.6 / 544.6 (tune_plan ~17:12: 569.2 -> 543.7 at 1000 ns), U (b8)
    # 357.9 -> 451.3 at 1000 ns: batch 9-16 only. The adapted spin (v23) where the grid at seq 100 had it win by 5 % or
    # more (~17:24 UTC; it lost at most other points, by up to 29 %), all at batch 64: 16-bit mma plans without
    # poll_frag, h256 bi bf16 295.1 -> 264.5 (2L 591.1 -> 528.0), h768 uni bf16 698.6 -> 664.1, fp16 699.0 -> 663.0;
    # fp32 h128 bi (FFMA) 357.8 -> 335.8 (2L 732.3 -> 695.2). From batch 33 (only batch 64 was timed). A fixed 250 ns
    # delay on the same plans (~17:49 UTC, grid variants at batch 64 beside the defaults above): h256 uni bf16 188.7 ->
    # 176.7 (2L 376.7 -> 352.9), fp16 186.1 -> 179.3, where the adapted spin had won 3 %: 250 ns at hidden 256 uni
    # 16-bit batch 33-64 (in the entries above); elsewhere it lost to the adapted spin or won under 3 %
    ("bf16", 1024, 1): ((8, {}), (16, dict(poll_delay=1000))),
    ("bf16", 768, 1): ((32, {}), (64, dict(poll_spin=2))),
    ("fp16", 768, 1): ((32, {}), (64, dict(poll_spin=2))),
    ("fp32", 128, 2): ((32, {}), (64, dict(poll_spin=2))),
}
# the CUDA_MEASURED_OPTIONS that are Plan fields set on the plan _cuda_plan builds from the others (not its arguments)
MEASURED_PLAN_FIELDS = ("poll_delay", "poll_spin")


@dataclass(frozen=True)
class Plan:
    """How one call is launched (a pure function of the sizes and the device; see plan_for)."""

    path: str  # "single-launch" or "multi-launch"
    block_b: int  # batch rows per program
    r_tiles: int  # row tiles per direction in the recurrence
    programs: int  # programs per batch tile
    block_m: int = 16  # projection: (t, b) rows per work item
    block_c: int = 64  # projection: gate columns per work item
    block_k: int = 32  # projection: reduction chunk
    num_warps: int = 4
    poll_h: bool = True  # split directions poll h over poisoned words (else: counter barrier + reload)
    proj_by_unit: bool = False  # each recurrence unit projects its own columns (one time tile only)
    pipeline: bool = False  # one program per (layer, direction), weights in registers, input polled
    relay: bool = False  # one-warp units and helpers that project each layer row by row (_rnn_relay_kernel)
    fast_math: bool = True  # sigmoid/tanh from ex2.approx.ftz and rcp.approx.ftz (CUDA only)
    k_chain: int = 32  # products summed over k in independent chains of this many (see _rows_times)
    exact_k: bool = True  # sum over the real k only, not the padding (_rows_times; the pipeline always sums it)
    block_n: int = 0  # persistent kernel: hidden units per program (r_tiles tiles of them per direction)
    resident: bool = True  # persistent kernel: W_hh^T slice loaded once (else read in block_k chunks every step)
    k_split: int = 1  # persistent kernel, resident tl.dot: k slices (one a warp), summed after a batched dot
    state_in_registers: bool = True  # persistent kernel: h and c carried in registers (else memory, a barrier)
    wide: bool = False  # persistent kernel, fp16/bf16: W_hh and the h exchange in fp32 (the fp32 kernel)
    cuda: bool = False  # per-layer path: the CUDA C++ kernel (cuda_persistent.py) instead of the Triton one
    mma: bool = False  # CUDA kernel: mma.sync (16-bit) instead of FFMA
    poll_sleep: int = 0  # CUDA kernel: ns slept between two reads of a wait (0: spin; asked only: no faster)
    w_shared: bool = False  # CUDA kernel, FFMA: W_hh^T in shared memory (default where registers cannot hold it)
    mma_regs: bool = False  # CUDA kernel, mma: a warp per k slice, W_hh^T fragments in registers (default: fits)
    poll_frag: bool = False  # CUDA kernel, mma_regs: h polled into A fragments, one barrier a step (hidden >= 768)
    poll_delay: int = 0  # CUDA kernel: ns slept before the first read of a wait (POLL_DELAY_NS with poll_frag)
    poll_sentinel: bool = False  # CUDA kernel: a wait polls one chunk a producer block before the whole slice
    sentinel_last: bool = False  # CUDA kernel, poll_sentinel: the producers store the sentinel row last
    stamps: bool | int = False  # CUDA kernel: globaltimer stamps of every block's steps into workspace["stamps"]
    # (True or 1; 2 / 3 / 4: clock64 cycles, the third stamp at the product's end / past the barrier after it / at the
    # h stores, v24)
    cluster: int = 0  # CUDA kernel: blocks a thread-block cluster, h through distributed shared memory (0: the slab)
    group_rows: int = 0  # CUDA kernel, cluster or mma_swap: real batch rows a block where fewer than block_b (mma: 16)
    w_regs: int = 0  # CUDA kernel, FFMA: k a thread in registers, the rest of its slice in shared memory (0: no split)
    tiles_per_warp: int = 0  # CUDA kernel, mma with W^T in shared memory: column tiles a warp (0: one)
    ffma_cols: int = 0  # CUDA kernel, FFMA with W^T in registers: columns a thread (0: one)
    poll_spin: int = 0  # CUDA kernel: the first-read delay spun on clock64 (1), and adapted every step (2; v23)
    mma_swap: bool = False  # CUDA kernel, poll_frag, <= 8 rows: W^T as the mma's A operand, h as B (asked only; v26)
    wide_h: bool = False  # CUDA kernel, 16-bit FFMA: h exchanged as fp32 words, the same values (asked only; v27)
    note: str = ""  # per-layer path on the Triton kernel: why not the CUDA one
    kernel: str = field(init=False)  # the kernel that runs, from the fields above (one of KERNELS)

    def __post_init__(self) -> None:
        kernel = (("persistent-cuda" if self.cuda else "persistent") if self.path == "per-layer"
                  else "cudnn" if self.path == "cudnn"
                  else "pipeline" if self.pipeline else "relay" if self.relay else "stack")
        object.__setattr__(self, "kernel", kernel)

    def describe(self) -> dict[str, Any]:
        """The kernel and the fields that shape its launch, for benchmark records."""
        fields = {"stack": ("r_tiles", "block_b", "programs", "num_warps", "poll_h", "proj_by_unit"),
                  "pipeline": ("block_b", "programs", "num_warps"),
                  "relay": ("block_b", "programs", "num_warps"),
                  "persistent": ("block_b", "block_n", "r_tiles", "programs", "resident", "k_split",
                                 "num_warps"),
                  "cudnn": (),
                  "persistent-cuda": ("block_b", "block_n", "r_tiles", "programs", "k_split", "num_warps",
                                      "mma", "w_shared", "mma_regs", "poll_frag", "poll_sleep",
                                      "poll_delay", "poll_sentinel", "sentinel_last", "stamps", "cluster",
                                      "group_rows", "w_regs", "tiles_per_warp", "ffma_cols",
                                      "poll_spin", "mma_swap", "wide_h")}[self.kernel]
        out = {"kernel": self.kernel, "path": self.path, **{name: getattr(self, name) for name in fields}}
        if self.note:
            out["note"] = self.note
        return out


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _precision(dtype: torch.dtype) -> str:
    """The name CUDA_MEASURED_OPTIONS and CUDNN_MEASURED key a dtype by ("" for none of theirs)."""
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "")


def _hopper(device: torch.device) -> bool:
    """Whether `device` is a Hopper GPU (sm_90), where CUDA_MEASURED_OPTIONS were measured (clusters need sm_90 or
    later anyway); planning for a CUDA device without a CUDA runtime (the CPU tests' H200) counts as one."""
    return not torch.cuda.is_available() or torch.cuda.get_device_capability(device)[0] == 9


def _persistent_plan(packed: PackedRNN, batch: int, sms: int, serial: bool, num_warps: int | None = None,
                     wide: bool | None = None) -> Plan | None:
    """The persistent kernel's plan, or None where its programs cannot all be resident.

    Every program owns block_n hidden units of one direction and one batch group of block_b rows for the whole
    layer, with their W_hh^T columns on chip. fp16/bf16 past PERSISTENT_SUM_ROWS rows multiply with a batched
    tl.dot (16 rows at least, 4 warps, one k slice each) and one program per multiprocessor; fp32 past 8 rows
    streams its weights (v10) with tl.dot. Fewer rows multiply-and-sum over the real rows with 4-16 warps and
    one program per multiprocessor, or, asked for (num_warps=1 or 2), in one- or two-warp programs that share
    a multiprocessor (every barrier of a step is then a warp's; more programs read h). block_n is the smallest
    that fits the programs on the multiprocessors. `wide` (fp16/bf16, at most 8 rows): the fp32 plan and
    kernel on the 16-bit weights' values widened to fp32 (h exchanged in fp32), instead of tl.dot.
    """
    hp, dirs, hidden = packed.hidden_padded, packed.num_directions, packed.hidden_size
    wide = bool(PERSISTENT_WIDE if wide is None else wide) and packed.dtype != torch.float32 and batch <= 8
    as_fp32 = packed.dtype == torch.float32 or wide
    use_dot = batch > (8 if as_fp32 else PERSISTENT_SUM_ROWS)
    block_b = min(PERSISTENT_MAX_ROWS, _pow2(batch, least=16 if use_dot else 1))
    groups = -(-batch // block_b)
    if num_warps is None:
        # tl.dot: 4 warps (H200: P bf16 258 us, 356 at 8; U 997, 1349 at 8), 8 where h would spill at 4 (Q)
        num_warps = (1 if block_b * hp <= PERSISTENT_ONE_WARP_H else 4) if not use_dot else \
            (4 if block_b * hp <= 16384 else 8)
    # programs a multiprocessor holds: one, except one-warp programs (about 168 registers a lane: 12)
    per_sm = max(1, 12 // num_warps) if num_warps < 4 else 1
    block_n = max(1, min(4, 1024 * num_warps // hp)) if num_warps < 4 else 4
    while True:
        # tiles of a direction: the real units, rounded so that they cover whole 16-wide k chunks
        tiles = -(-hidden // block_n)
        tiles = -(-tiles // max(1, 16 // block_n)) * max(1, 16 // block_n)
        if groups * dirs * tiles <= sms * per_sm:
            break
        block_n *= 2
        if block_n > min(PERSISTENT_MAX_UNITS, hp):
            return None
    kh = tiles * block_n
    if num_warps < 4 and hp * 4 * block_n > 128 * 32 * num_warps:
        # too many weights a lane for so few warps: one program of more warps per multiprocessor
        return _persistent_plan(packed, batch, sms, serial, num_warps=4)
    # W_hh^T on chip, except fp32 with tl.dot (its FMA dot would hold whole k rows per thread). Multiply-and-sum
    # past one warp: warps for at most ~64 weights a lane (H200: P fp32 161 us at 4 warps, 181 at 8; R fp32 368
    # at 8, 425 at 16; S fp32 2518 at 8).
    # (and only while the slice fits on chip: past PERSISTENT_MAX_WEIGHTS it is streamed like fp32's)
    resident = (not as_fp32 or not use_dot) and hp * 4 * block_n <= PERSISTENT_MAX_WEIGHTS
    while not use_dot and num_warps > 1 and num_warps < 16 and hp * 4 * block_n > 64 * 32 * num_warps:
        num_warps *= 2
    return Plan("per-layer", block_b, tiles, 1 if serial else groups * dirs * tiles, block_k=32 if kh % 32 == 0 else 16,
                num_warps=num_warps, block_n=block_n, resident=resident, k_split=min(num_warps, hp // 16),
                wide=wide)


def _cuda_plan(packed: PackedRNN, batch: int, sms: int, mma: bool | None = None,
               w_shared: bool | None = None, mma_regs: bool | None = None,
               poll_frag: bool | None = None, cuda_nb: int | None = None, cluster: bool | int | None = None,
               cluster_rows: int | None = None, tiles_per_warp: int | None = None,
               cuda_kpt: int | None = None, ffma_cols: int | None = None, measured: bool = True) -> Plan | None:
    """The CUDA C++ kernel's plan (see _cuda_layout), with the mma defaults measured on the H200 (2026-12-03,
    docs/fused_kernel.md v17): W_hh^T fragments in registers (mma_regs) on every mma plan where they fit, and
    from padded hidden POLL_FRAG_MIN_HIDDEN on h polled into the fragments (poll_frag) with a first read
    POLL_DELAY_NS after the step starts. Asked-for options are kept as asked (None where they do not fit).
    cluster (True or a size) / cluster_rows / tiles_per_warp: _cluster_plan, a ValueError where it does not fit.
    cuda_kpt (asked only, FFMA): k a thread (the product's k slices: kh / cuda_kpt), a ValueError where it does not
    fit or the plan multiplies with mma.sync. measured: nothing asked, the CUDA_MEASURED_OPTIONS entry of these sizes
    (False: the plain plan; _cuda_choice passes False off the Hopper GPUs they were measured on)."""
    asked = (mma, w_shared, mma_regs, poll_frag, cuda_nb, cluster, cluster_rows, tiles_per_warp, cuda_kpt, ffma_cols)
    options = _measured_options(packed, batch) if measured and all(a is None for a in asked) else None
    if options:
        fields = {name: options.pop(name) for name in MEASURED_PLAN_FIELDS if name in options}
        try:
            plan = _cuda_plan(packed, batch, sms, **options, measured=False)
        except ValueError:  # a size the measured options do not fit: the plain plan
            plan = None
        if plan is not None:
            return replace(plan, **fields)
    if cuda_kpt is not None and cuda_kpt not in CUDA_KPT_CHOICES:
        raise ValueError(f"cuda_kpt must be one of {CUDA_KPT_CHOICES} (k a thread of the FFMA product), got "
                         f"{cuda_kpt!r}")
    if ffma_cols not in (None, 0, 1):
        return _ffma_cols_plan(packed, batch, sms, ffma_cols,
                               _cuda_plan(packed, batch, sms, mma, w_shared, mma_regs, poll_frag, cuda_nb, cluster,
                                          cluster_rows, tiles_per_warp, measured=False), cuda_kpt)
    if cluster or cluster_rows or tiles_per_warp:
        if poll_frag or cuda_nb:
            raise ValueError(f"cluster does not combine with {'poll_frag' if poll_frag else 'cuda_nb'} (a cluster "
                             f"reads h from shared memory, its tiles are the cluster's blocks): leave it out")
        plan = _cluster_plan(packed, batch, sms, mma, w_shared, mma_regs, cluster, cluster_rows, tiles_per_warp,
                             cuda_kpt)
    elif mma_regs is not None or poll_frag is not None:
        plan = _cuda_layout(packed, batch, sms, mma, w_shared, mma_regs, poll_frag, cuda_nb, cuda_kpt)
    else:
        plan = _cuda_default_layout(packed, batch, sms, mma, w_shared, cuda_nb, cuda_kpt)
    if cuda_kpt and (plan is None or plan.mma):
        dtype = str(packed.dtype).removeprefix("torch.")
        why = "this plan multiplies with mma.sync (add mma=False)" if plan is not None else (
            "no block of that many threads fits the registers and shared memory")
        raise ValueError(f"cuda_kpt={cuda_kpt} does not fit hidden {packed.hidden_size} batch {batch} in {dtype}: "
                         f"{why}; leave cuda_kpt out")
    return plan


def _ffma_register_threads(cols: int, kh: int, kpt: int, ffma_cols: int = 1) -> int:
    """The threads of a block whose FFMA product holds W_hh^T in registers, ffma_cols columns and kpt k a thread
    (cols columns, kh k a block), where they are whole warps, at most 1024, and their W fits next to the
    CUDA_OTHER_REGISTERS; else 0."""
    if kh % kpt or cols % ffma_cols:
        return 0
    threads = cols // ffma_cols * (kh // kpt)
    fits = (threads % 32 == 0 and 0 < threads <= 1024
            and ffma_cols * kpt + CUDA_OTHER_REGISTERS <= min(255, 65536 // threads))
    return threads if fits else 0


def _ffma_cols_plan(packed: PackedRNN, batch: int, sms: int, ffma_cols: Any, plan: Plan | None,
                    kpt_asked: int | None = None) -> Plan:
    """`plan` (an FFMA plan with W_hh^T in registers) with ffma_cols columns a thread: the k a thread that fills about
    128 registers with W (ffma_cols x k; or cuda_kpt as asked), threads a whole number of warps, the partial sums (more
    k slices) in shared memory; a one-line ValueError where it does not apply or fit."""
    from .cuda_persistent import shared_bytes  # no cuda.bindings import: sizes only

    if ffma_cols not in CUDA_FFMA_COLS_CHOICES:
        raise ValueError(f"ffma_cols must be one of {CUDA_FFMA_COLS_CHOICES} (columns a thread of the FFMA product), "
                         f"got {ffma_cols!r}")
    dtype = str(packed.dtype).removeprefix("torch.")
    where = f"hidden {packed.hidden_size} batch {batch} in {dtype}"
    if plan is None or plan.mma or plan.w_shared or plan.w_regs or plan.cluster:
        kind = ("no CUDA plan fits" if plan is None else "its plan multiplies with mma.sync (add mma=False)" if plan.mma
                else "its plan keeps W_hh^T in shared memory" if (plan.w_shared or plan.w_regs)
                else "its plan is a cluster (add cluster=False)")
        raise ValueError(f"ffma_cols={ffma_cols} needs the FFMA product with W_hh^T in registers, and at {where} "
                         f"{kind}; leave ffma_cols out")
    cols, kh = 4 * plan.block_n, plan.r_tiles * plan.block_n
    for kpt in (kpt_asked,) if kpt_asked else (128 // ffma_cols, 64 // ffma_cols, 256 // ffma_cols):
        threads = _ffma_register_threads(cols, kh, kpt, ffma_cols)
        if (kpt % 4 == 0 and threads >= 64
                and shared_bytes(False, 32, plan.block_b, kh, plan.block_n, kh // kpt) <= CUDA_MAX_SHARED):
            return replace(plan, ffma_cols=ffma_cols, k_split=kh // kpt, num_warps=threads // 32)
    raise ValueError(f"ffma_cols={ffma_cols} does not fit {where} (no k a thread gives a block of whole warps with "
                     f"W_hh^T in the registers); leave ffma_cols out")


def _measured_options(packed: PackedRNN, batch: int) -> dict[str, Any] | None:
    """The CUDA_MEASURED_OPTIONS entry of these sizes, or None."""
    for largest, options in CUDA_MEASURED_OPTIONS.get((_precision(packed.dtype), packed.hidden_size,
                                                       packed.num_directions), ()):
        if batch <= largest:
            return dict(options)
    return None


def _cuda_default_layout(packed: PackedRNN, batch: int, sms: int, mma: bool | None, w_shared: bool | None,
                         cuda_nb: int | None, cuda_kpt: int | None = None) -> Plan | None:
    """_cuda_plan without mma_regs / poll_frag asked: the measured mma defaults, else W^T in shared memory."""
    frag = packed.hidden_padded >= POLL_FRAG_MIN_HIDDEN
    for regs, polled in ((True, frag), (True, False), (False, False)):
        plan = _cuda_layout(packed, batch, sms, mma, w_shared, regs, polled, cuda_nb, cuda_kpt)
        if plan is not None and (plan.mma_regs == regs or not plan.mma):
            if plan.poll_frag:
                return replace(plan, poll_delay=POLL_DELAY_NS)
            if plan.mma or plan.w_shared:
                return plan
            wide = packed.dtype != torch.float32 and packed.hidden_padded >= 1024
            return replace(plan, poll_delay=POLL_DELAY_FFMA_16BIT_1024_NS if wide else POLL_DELAY_FFMA_NS)
    if w_shared is None:  # fp32 slices past the registers: W^T in shared memory (X 768 bi B8: 923 us, Triton 13343)
        return _cuda_layout(packed, batch, sms, mma, True, None, None, cuda_nb, cuda_kpt)
    return None


def _cuda_layout(packed: PackedRNN, batch: int, sms: int, mma: bool | None = None,
                 w_shared: bool | None = None, mma_regs: bool | None = None,
                 poll_frag: bool | None = None, cuda_nb: int | None = None,
                 cuda_kpt: int | None = None) -> Plan | None:
    """The CUDA C++ kernel's plan (cuda_source.py), or None where it does not fit.

    A block owns nb hidden units of one direction and bb batch rows; nb is the smallest power of two >= 4 for
    which groups x directions x tiles <= SMs, tiles rounded so that the units computed (kh) are a multiple of
    64. 16-bit: mma.sync, bb 16, a warp per (8-column tile, k slice); fp32: FFMA, W_hh^T in registers (one
    column and kh / k_split consecutive k a thread), bb up to CUDA_FFMA_MAX_ROWS real rows; asked for
    (w_shared=True, the default where the registers do not hold the slice), FFMA with W_hh^T in shared memory;
    mma_regs=True: a warp per k slice over every
    column tile with its W_hh^T fragments in registers, h read from shared memory once a step; poll_frag=True
    (implies mma_regs): each warp polls its own k slice of h from the slab straight
    into its A fragments (no h in shared memory, no barrier 1: one block barrier a step), an even number of k
    chunks a warp. cuda_nb (asked only): at least this many hidden units a block (fewer blocks, each reading h
    once for more columns: less L2 traffic a step, a longer product). cuda_kpt (asked only, FFMA): k a thread, in
    place of the first of CUDA_FFMA_KPT that fits (more threads a block, fewer FMA a thread).
    """
    hp, dirs, hidden = packed.hidden_padded, packed.num_directions, packed.hidden_size
    sixteen = packed.dtype != torch.float32
    mma = (sixteen and batch > CUDA_FFMA_16BIT_MAX_ROWS) if mma is None else (bool(mma) and sixteen)
    if hp < 64:
        return None
    bb = CUDA_MMA_ROWS if mma else min(batch, CUDA_FFMA_MAX_ROWS)
    groups = -(-batch // bb)
    nb = 4
    while nb < (cuda_nb or 4):
        nb *= 2
    while True:
        align = max(1, 64 // nb)  # tiles a multiple of align: kh a multiple of 64
        tiles = -(-hidden // nb)
        tiles = -(-tiles // align) * align
        if groups * dirs * tiles <= sms:
            break
        nb *= 2
        if nb > 64:
            return None
    kh = tiles * nb
    if kh > hp:
        return None
    elem_bits = 16 if sixteen else 32
    product = _cuda_product(mma, bool(mma_regs) or bool(poll_frag), bool(poll_frag), bool(w_shared), bb, kh, nb,
                            elem_bits, asked_kpt=cuda_kpt)
    if product is None:
        return None
    return Plan("per-layer", bb, tiles, groups * dirs * tiles, block_n=nb, cuda=True, mma=mma, **product)


def _cuda_product(mma: bool, mma_regs: bool, poll_frag: bool, w_shared: bool, bb: int, kh: int, nb: int,
                  elem_bits: int, cluster: int = 0, w_split: bool = False,
                  tiles_per_warp: int = 1, asked_kpt: int | None = None) -> dict[str, Any] | None:
    """The product's shape for a block of nb units over kh k and bb rows, as Plan fields (num_warps, k_split,
    mma_regs, poll_frag, w_shared, w_regs, tiles_per_warp as they apply), or None where it does not fit the
    registers or shared memory (_cuda_layout). tiles_per_warp (mma with W^T in shared memory): a warp per group of
    that many column tiles and a k slice, CLUSTER_MMA_WARPS warps, so that each A fragment is read once a group.
    w_split (FFMA): a thread's k slice split, w_regs k in registers (what they hold next to the ~90 other registers
    and ~3 a row) and the rest in shared memory (cluster plans of fp32 hidden 512: 256 KiB a block). asked_kpt (FFMA):
    k a thread as asked (cuda_kpt) instead of the first that fits."""
    from .cuda_persistent import shared_bytes  # no cuda.bindings import: sizes only

    cols = 4 * nb
    poll_frag = poll_frag and mma
    mma_regs = (mma_regs or poll_frag) and mma
    if mma_regs:
        n_tiles = cols // 8
        for k_split in (8, 16, 4, 2):  # 8 warps where the fragments fit 255 registers, 16 (128 a thread) else
            chunks = kh // 16 // k_split
            need = 2 * n_tiles * chunks + 4 * chunks + 4 * n_tiles + CUDA_OTHER_REGISTERS
            if ((kh // 16) % k_split == 0 and need <= (255 if k_split <= 8 else 128)
                    and not (poll_frag and chunks % 2)):  # poll_frag: two k chunks a 16-byte read
                break
        else:
            return None
        threads = 32 * k_split
    elif mma and tiles_per_warp > 1:
        n_tiles = cols // 8
        if n_tiles % tiles_per_warp:
            return None
        k_split = max(1, CLUSTER_MMA_WARPS // (n_tiles // tiles_per_warp))
        while k_split > 1 and (kh // 16) % k_split:
            k_split //= 2
        threads = 32 * n_tiles // tiles_per_warp * k_split
        if threads > 1024:
            return None
    elif mma:
        n_tiles = cols // 8
        k_split = max(1, CUDA_MMA_WARPS // n_tiles)
        while k_split > 1 and (kh // 16) % k_split:
            k_split //= 2
        threads = 32 * n_tiles * k_split
        if threads > 1024:
            return None
    elif w_split:
        for kpt in (asked_kpt,) if asked_kpt else (256, 128, 512):
            threads = cols * kh // kpt
            w_regs = (min(255, 65536 // max(threads, 1)) - CUDA_OTHER_REGISTERS - 3 * bb) // 4 * 4
            w_regs = min(w_regs, kpt - 4)
            if (kh % kpt == 0 and threads % 32 == 0 and 64 <= threads <= 1024 and w_regs >= 4
                    and shared_bytes(False, 32, bb, kh, nb, kh // kpt, cluster=cluster, w_regs=w_regs)
                    <= CUDA_MAX_SHARED):
                break
        else:
            return None
        k_split = kh // kpt
        if shared_bytes(False, elem_bits, bb, kh, nb, k_split, cluster=cluster, w_regs=w_regs) > CUDA_MAX_SHARED:
            return None
        return dict(num_warps=threads // 32, k_split=k_split, w_regs=w_regs)
    elif w_shared:
        # at most 512 threads (768 capped the registers at 85 and spilled at hidden 768, one row), and as
        # many as the partial sums leave room for next to W
        for kpt in (asked_kpt,) if asked_kpt else (128, 64, 256, 32):
            threads = cols * kh // kpt
            if (kh % kpt == 0 and threads % 32 == 0 and 64 <= threads <= 512
                    and shared_bytes(False, 32, bb, kh, nb, kh // kpt, True, cluster=cluster) <= CUDA_MAX_SHARED):
                break
        else:
            return None
        k_split = kh // kpt
    else:
        for kpt in (asked_kpt,) if asked_kpt else CUDA_FFMA_KPT:
            threads = _ffma_register_threads(cols, kh, kpt)
            if threads:
                break
        else:
            return None
        k_split = kh // kpt
    w_shared = w_shared and not mma
    if shared_bytes(mma, elem_bits, bb, kh, nb, k_split, w_shared, mma_regs, poll_frag, cluster) > CUDA_MAX_SHARED:
        return None
    tiles = {"tiles_per_warp": tiles_per_warp} if mma and not mma_regs and tiles_per_warp > 1 else {}
    return dict(num_warps=threads // 32, k_split=k_split, mma_regs=mma_regs, poll_frag=poll_frag, w_shared=w_shared,
                **tiles)


def _cluster_plan(packed: PackedRNN, batch: int, sms: int, mma: bool | None, w_shared: bool | None,
                  mma_regs: bool | None, cluster: bool | int | None, cluster_rows: int | None,
                  tiles_per_warp: int | None = None, cuda_kpt: int | None = None) -> Plan:
    """The cluster plan (cuda_source.py, CLUSTER): a thread-block cluster of C blocks holds one (batch group,
    direction), each block nb units (nb x C >= hidden, nb a multiple of a 16-byte group of h: 8 units of 16-bit h,
    4 of fp32), and the blocks exchange h through distributed shared memory. cluster=True takes the largest of
    CLUSTER_SIZES that fits, cluster=C that size; cluster_rows: the real batch rows a cluster (mma: at most its 16
    padded rows, 16 by default; FFMA: at most CUDA_FFMA_MAX_ROWS, by default the fewest with which every cluster
    runs at once, CLUSTER_ACTIVE). Clusters need not be resident together (no block waits on
    another cluster). A one-line ValueError names the option and the size where it does not fit."""
    for name, value in (("cluster_rows", cluster_rows), ("tiles_per_warp", tiles_per_warp)):
        if value and not cluster:
            raise ValueError(f"{name} is an option of cluster plans: add cluster=True (or cluster=C)")
    if cluster is not True and not (isinstance(cluster, int) and 2 <= cluster <= 16):
        raise ValueError(f"cluster must be True or a cluster size from 2 to 16 blocks, got {cluster!r}")
    sixteen = packed.dtype != torch.float32
    # 16-bit at one row: FFMA on the row as without clusters, else (W_hh^T past FFMA's registers) mma
    products = ((False,) if not sixteen or mma is False or (cuda_kpt and not mma)
                else (True,) if mma or batch > CUDA_FFMA_16BIT_MAX_ROWS else (False, True))
    if cluster_rows is not None and not 1 <= cluster_rows <= CUDA_MMA_ROWS:
        raise ValueError(f"cluster_rows={cluster_rows} does not fit a block: at most {CUDA_MMA_ROWS} rows")
    sizes = CLUSTER_SIZES if cluster is True else (cluster,)
    for size in sizes:
        for use_mma in products:
            plan = _cluster_layout(packed, batch, sms, use_mma, w_shared, mma_regs, size, cluster_rows,
                                   tiles_per_warp, cuda_kpt)
            if plan is not None:
                return plan
    size = sizes[0]
    slice_kib = 4 * packed.hidden_padded * packed.hidden_padded * packed.dtype.itemsize / size / 1024
    dtype = str(packed.dtype).removeprefix("torch.")
    raise ValueError(f"cluster={cluster} does not fit hidden {packed.hidden_size} in {dtype}: a block's "
                     f"W_hh^T slice ({slice_kib:.0f} KiB at {size} blocks) with its h buffers fits neither the "
                     f"registers nor {CUDA_MAX_SHARED >> 10} KiB of shared memory; leave cluster out")


def _cluster_layout(packed: PackedRNN, batch: int, sms: int, mma: bool, w_shared: bool | None,
                    mma_regs: bool | None, size: int, cluster_rows: int | None,
                    tiles_per_warp: int | None = None, cuda_kpt: int | None = None) -> Plan | None:
    """_cluster_plan at one cluster size, or None: the fewest units a block that fit; mma with its W_hh^T
    fragments in registers where they fit (mma_regs=None), else W^T in shared memory; FFMA with W_hh^T in
    registers, else in shared memory (w_shared=None)."""
    hp, dirs, hidden = packed.hidden_padded, packed.num_directions, packed.hidden_size
    groups_at_once = max(1, CLUSTER_ACTIVE.get(size, sms // size) // dirs)
    rows = cluster_rows or (CUDA_MMA_ROWS if mma else min(-(-batch // groups_at_once), CUDA_FFMA_MAX_ROWS))
    bb = CUDA_MMA_ROWS if mma else rows
    groups = -(-batch // rows)
    group = 8 if mma else 4  # units a 16-byte group of h (the kernel's pushes)
    elem_bits = 16 if packed.dtype != torch.float32 else 32
    # mma: W^T fragments in registers, else W^T in shared memory with tile groups (CLUSTER_TILES_PER_WARP), else one
    # tile a warp
    regs_options = ((True, 0), (False, tiles_per_warp or CLUSTER_TILES_PER_WARP), (False, 1)) if mma_regs is None \
        else ((True, 0),) if mma_regs else ((False, tiles_per_warp or CLUSTER_TILES_PER_WARP), (False, 1))
    # FFMA (w_shared, w_split): registers, else shared memory, else split between them
    shared_options = (((False, False), (True, False), (False, True)) if w_shared is None
                      else ((bool(w_shared), False),))
    nb = -(-hidden // (size * group)) * group  # the fewest units a block, whole groups
    while nb * size <= hp:
        kh = nb * size
        if kh % 16 == 0:
            for regs, tiles_per in regs_options if mma else ((False, 0),):
                for shared, split in shared_options if not mma else ((False, False),):
                    product = _cuda_product(mma, regs, False, shared, bb, kh, nb, elem_bits, size, split,
                                            max(1, tiles_per), cuda_kpt)
                    if product is not None and (product.get("mma_regs") == regs or not mma):
                        return Plan("per-layer", bb, size, groups * dirs * size, block_n=nb, cuda=True, mma=mma,
                                    cluster=size, group_rows=rows if rows != bb else 0, **product)
        nb += group
    return None


def _cuda_choice(packed: PackedRNN, batch: int, sms: int, on_cuda: bool, cuda: bool | None, mma: bool | None,
                 wide: bool | None, w_shared: bool | None = None, mma_regs: bool | None = None,
                 poll_frag: bool | None = None, cuda_nb: int | None = None, cluster: bool | int | None = None,
                 cluster_rows: int | None = None, tiles_per_warp: int | None = None,
                 cuda_kpt: int | None = None, ffma_cols: int | None = None) -> tuple[Plan | None, str]:
    """(the CUDA kernel's plan, "") where it runs this call, else (None, why not); cluster asked for where the CUDA
    kernel cannot run: a one-line ValueError."""
    if cluster or cluster_rows or tiles_per_warp:
        plan, why = _cuda_choice(packed, batch, sms, on_cuda, cuda, mma, wide)
        if plan is None:
            raise ValueError(f"cluster is an option of the CUDA persistent kernel, which cannot run this call "
                             f"({why}): leave cluster out")
    if cuda is False:
        return None, "cuda=False"
    if not on_cuda:
        return None, "no CUDA device"
    if wide:
        return None, "wide plans run on the Triton kernel"
    if cuda is None and not CUDA_DEFAULT:
        return None, "the CUDA kernel is off by default (CUDA_DEFAULT)"
    from .cuda_persistent import available

    ok, why = available()
    if not ok:
        return None, why
    plan = _cuda_plan(packed, batch, sms, mma, w_shared, mma_regs, poll_frag, cuda_nb, cluster, cluster_rows,
                      tiles_per_warp, cuda_kpt, ffma_cols, measured=_hopper(packed.device))
    if plan is None:
        return None, "the size does not fit the CUDA kernel (blocks, registers or shared memory)"
    return plan, ""


def plan_for(packed: PackedRNN, seq_len: int, batch: int, path: str | None = None, **overrides: Any) -> Plan:
    """Pick the path and tile sizes (_plan_for); the CUDA kernel's own options (CUDA_ONLY_OPTIONS) are refused, in
    a one-line ValueError naming the option, where the plan runs another kernel or where they do not apply."""
    cudnn = overrides.pop("cudnn", None)
    if path == "cudnn" or cudnn is True:
        why = cudnn_unavailable(packed)
        if why:
            raise ValueError(f"cannot hand this call to cuDNN: {why}")
        return Plan("cudnn", batch, 1, 1, note="asked for (path='cudnn')")
    if overrides.get("sentinel_last"):
        overrides["poll_sentinel"] = True  # the sentinel row stored last is for the sentinel poll
    if overrides.get("mma_swap"):
        overrides.setdefault("group_rows", MMA_SWAP_ROWS)  # the B operand's 8 columns: one group of <= 8 rows
    plan = _plan_for(packed, seq_len, batch, path, **overrides)
    _refuse_cuda_options(plan, packed.dtype, batch)
    if not (path is None and not overrides and cudnn is None and CUDNN_HANDOFF):
        return plan  # planned as asked
    measured_why = _cudnn_measured(packed, batch)
    known_loser = plan.kernel == "persistent" or plan.path == "multi-launch"
    if not (measured_why or known_loser) or cudnn_unavailable(packed):
        return plan
    # cuDNN instead, saying why (describe() puts the note in bench records)
    if measured_why:
        return Plan("cudnn", batch, 1, 1, note=f"handed to cuDNN: {measured_why}, than the fused plan ({plan.kernel}); "
                                               f"cudnn=False keeps it")
    ours = "the Triton persistent kernel" if plan.kernel == "persistent" else "one stack launch a step"
    why = f" ({plan.note})" if plan.note else ""
    return Plan("cudnn", batch, 1, 1, note=f"handed to cuDNN: the fused plan here is {ours}{why}, known to lose to "
                                           f"cuDNN; cudnn=False keeps it")


def _cudnn_measured(packed: PackedRNN, batch: int) -> str:
    """Why CUDNN_MEASURED hands a call of these sizes to cuDNN ("" where it does not, or off Hopper)."""
    for (prec, hidden, dirs, layers, least, most), why in CUDNN_MEASURED.items():
        if ((prec, hidden, dirs) == (_precision(packed.dtype), packed.hidden_size, packed.num_directions)
                and packed.num_layers >= layers and least <= batch <= most and packed.device.type == "cuda"
                and _hopper(packed.device)):
            return why
    return ""


def cudnn_unavailable(packed: PackedRNN) -> str:
    """Why a call on `packed` cannot be handed to cuDNN ("" where it can)."""
    if packed.device.type != "cuda" or interpreting():
        return "not on a CUDA device"
    if packed.source is None:
        return "the packed weights keep no reference to the module's parameters (pack_rnn keeps one)"
    if not torch.backends.cudnn.is_available() or not torch.backends.cudnn.enabled:
        return "cuDNN is not available or is disabled (torch.backends.cudnn.enabled)"
    return ""


def _refuse_cuda_options(plan: Plan, dtype: torch.dtype, batch: int) -> None:
    """A one-line ValueError where the plan has a CUDA_ONLY_OPTIONS option it cannot honour: another kernel runs,
    or poll_sentinel where the sentinels would be all of h (one row a block, one 16-byte chunk a producer)."""
    for name in CUDA_ONLY_OPTIONS:
        if getattr(plan, name) and plan.kernel != "persistent-cuda":
            why = f" ({plan.note})" if plan.note else ""
            raise ValueError(f"{name} is an option of the CUDA persistent kernel, and this call's plan runs the "
                             f"{plan.kernel} kernel{why}: leave {name} out, or plan with path='per-layer', cuda=True")
    if plan.stamps not in (0, 1, 2, 3, 4):
        raise ValueError(f"stamps={plan.stamps!r} is not one of False, True (or 1: globaltimer ns, the third stamp "
                         f"when h is stored) or, in clock64 cycles, 2 (the third stamp when the product is done), 3 "
                         f"(past the barrier after it) or 4 (when h is stored)")
    if plan.poll_spin not in (0, 1, 2):
        raise ValueError(f"poll_spin={plan.poll_spin!r} is not one of 0 (the first-read delay slept), 1 (spun on the "
                         f"clock) or 2 (spun and adapted every step)")
    if plan.mma_swap and (not (plan.mma and plan.poll_frag) or batch > MMA_SWAP_ROWS or plan.poll_sentinel
                          or plan.cluster):
        why = (f"{batch} batch rows (h is the mma's {MMA_SWAP_ROWS}-column operand)" if batch > MMA_SWAP_ROWS
               else "sentinels" if plan.poll_sentinel else "a cluster plan" if plan.cluster
               else "a plan without h polled into mma fragments (mma, poll_frag)")
        raise ValueError(f"mma_swap does not fit {why}: leave mma_swap out")
    if plan.wide_h and (dtype == torch.float32 or plan.mma or plan.cluster):
        why = ("fp32 (its h is fp32 words already)" if dtype == torch.float32 else "a plan that multiplies with "
               "mma.sync (add mma=False)" if plan.mma else "a cluster plan (h through shared memory)")
        raise ValueError(f"wide_h does not fit {why}: leave wide_h out")
    if plan.group_rows not in (0, plan.block_b) and not plan.cluster and plan.group_rows < batch:
        # the grid has one batch group a block_b rows; fewer rows a group would leave rows to nobody
        raise ValueError(f"group_rows={plan.group_rows} is fewer than the batch ({batch}) on a plan of "
                         f"{plan.block_b}-row batch groups: ask for group_rows >= {batch}, or leave it out")
    if plan.cluster:
        for name in ("poll_sentinel", "stamps", "poll_frag", "poll_delay", "poll_sleep", "poll_spin"):
            if getattr(plan, name):
                raise ValueError(f"{name} does not apply to a cluster plan (h through distributed shared memory, no "
                                 f"polls): leave {name} or cluster out")
    if plan.poll_sentinel and min(plan.block_b, batch) == 1 and plan.block_n * dtype.itemsize <= 16:
        raise ValueError(f"poll_sentinel does not apply to one batch row a block with {plan.block_n} hidden units "
                         f"(one 16-byte chunk of h a producer: the sentinels would be all of h); ask for it with "
                         f"cuda_nb={32 // dtype.itemsize} or more, or more batch rows")


def _plan_for(packed: PackedRNN, seq_len: int, batch: int, path: str | None = None, **overrides: Any) -> Plan:
    """Pick the path and tile sizes.

    A recurrence unit (one direction's row tile) keeps W_hh^T [HP, 4 * HP / r_tiles] in registers, whole
    columns per thread; r_tiles is the fewest that keeps that under WEIGHT_REGISTERS per thread at
    num_warps <= 4. With r_tiles == 1, h stays in registers. On CUDA every program of a batch tile must be
    resident (grid barriers), so at most one per multiprocessor; otherwise, and on request, multi-launch.
    """
    hp, dirs = packed.hidden_padded, packed.num_directions
    cols = 4 * dirs * hp
    # unit columns spread over lanes and warps, the k sum inside each thread: at most 4 warps (8 warps of 128
    # weight registers spilled on sm_90) and WEIGHT_REGISTERS weights a thread. With h in registers (one row
    # tile) the cell must have at least one element a thread: at HP 64 on 8 warps (2 rows, 128 elements) Triton
    # 3.9 computed the cell of every unit in every thread (sm_90 SASS read on the CPU: 1290 MUFU and 450 spill
    # instructions a step, against 10 and none on 4 warps), and at 1 row so on 4 warps too (650 MUFU): one row is
    # padded to a 2-row tile below (measured on the H200, docs/fused_kernel.md). The layer pipeline keeps its 8
    # warps at HP 64.
    max_warps = 4
    pipe_max_warps = 8 if hp <= 64 else 4
    r_tiles = 1
    while hp * 4 * hp // r_tiles > WEIGHT_REGISTERS * 32 * max_warps and 4 * hp // r_tiles > 1:
        r_tiles *= 2
    num_warps = max(1, min(max_warps, 4 * hp // r_tiles // 32))
    full_rows = min(_pow2(batch, least=1), max(1, 128 // hp))  # h is replicated in every thread
    if r_tiles == 1 and hp > 32 and full_rows * hp < 32 * num_warps:
        # pad the batch tile instead (HP <= 32 has the one-warp plan below): at HP 64 and one row, 2 row tiles
        # exchanging h took 10.7 us a step on the H200 (h64 b1: 1070 us against 48-59 us at 8-64 rows on one
        # tile, 2026-12-03 grid); a masked padding row costs one more cell element a thread
        full_rows = min(_pow2(-(-32 * num_warps // hp), least=1), max(1, 128 // hp))
    block_b = full_rows
    block_c = min(cols, 128 if hp <= 64 else 64)
    block_m = 16 if seq_len * block_b <= 16 else 32
    on_cuda = packed.device.type == "cuda" and not interpreting()
    sms = _sm_count(packed.device) if on_cuda else 1 << 30
    # One warp per direction and batch row (HP <= 32: a unit's W_hh^T is at most 128 weights a thread): batch
    # rows are independent, so each row's step runs on its own multiprocessor with a quarter of the
    # multiply-adds of a 4-row tile, and barriers inside one warp cost little (B: 497 -> 352 us). The cell
    # then has exactly one element a thread: with fewer (a 1-row tile over 4 warps), Triton 3.6 computed the
    # cell of every unit in every thread (330 MUFU a step) and ran 10x slower. Only where the projection is
    # shared by the programs (more than one time tile): a single warp projecting its unit's own columns made
    # the seed model slower at seq 10 (121 vs 99 us); the switch at SMALL_ROWS_MIN_SEQ is not tuned further.
    small_rows = max(1, 32 // hp)
    if (on_cuda and r_tiles == 1 and hp <= 32 and seq_len * small_rows > SMALL_ROWS_MIN_SEQ
            and -(-batch // small_rows) * dirs <= sms):
        block_b, num_warps = min(block_b, small_rows), 1
        block_m, block_c = 16, min(cols, 64)
    batch_tiles = -(-batch // block_b)
    items = -(-seq_len * block_b // block_m) * (cols // block_c)
    # the persistent plan's own choices (its block_n and programs follow the warps)
    cuda_keys = ("cuda", "mma", "w_shared", "mma_regs", "poll_frag", "cuda_nb", "cluster", "cluster_rows",
                 "tiles_per_warp", "cuda_kpt", "ffma_cols")
    per_layer = {k: overrides.pop(k) for k in ("num_warps", "wide", *cuda_keys) if k in overrides} \
        if path in (None, "per-layer") else {}
    cuda, mma, w_shared, mma_regs, poll_frag, cuda_nb, cluster, cluster_rows, tiles_per_warp, cuda_kpt, ffma_cols = (
        per_layer.pop(k, None) for k in cuda_keys)
    persistent = _persistent_plan(packed, batch, sms, serial=not on_cuda, **per_layer)
    cuda_plan, why_not_cuda = _cuda_choice(packed, batch, sms, on_cuda, cuda, mma, per_layer.get("wide"), w_shared,
                                           mma_regs, poll_frag, cuda_nb, cluster, cluster_rows, tiles_per_warp,
                                           cuda_kpt, ffma_cols)
    if (path is None and on_cuda and (persistent is not None or cuda_plan is not None)
            and (hp >= PERSISTENT_MIN_HIDDEN or cluster)):
        path = "per-layer"
    elif path is None and on_cuda and cuda_plan is not None and batch_tiles * dirs * r_tiles > sms:
        # the stack kernel would not be resident and run one launch per (layer, step): the CUDA kernel instead
        # (H200 grid of 2026-12-03: h128 b64 on the multi-launch path lost to cuDNN at every point, 0.46-0.91x)
        path = "per-layer"
    if path != "per-layer":
        per_layer.pop("wide", None)
        overrides.update(per_layer)
    if path == "per-layer":
        if cuda_plan is not None and ("num_warps" not in per_layer or cuda):
            # num_warps (with k_split) shapes the CUDA kernel only where cuda=True is asked, else Triton's
            warps = {"num_warps": per_layer["num_warps"]} if "num_warps" in per_layer else {}
            return replace(cuda_plan, **overrides, **warps)
        if persistent is None:
            raise ValueError(f"the persistent kernel does not fit this size: {dirs} direction(s) x batch {batch} "
                             f"x hidden {packed.hidden_size} need more programs than the {sms} multiprocessors")
        note = why_not_cuda if on_cuda else ""
        return replace(persistent, **{"note": note, **overrides})
    if path is None:
        if not on_cuda:
            path = "single-launch"
        else:
            resident = batch_tiles * dirs * r_tiles <= sms
            path = "single-launch" if resident else "multi-launch"
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}: use one of {PATHS}")
    if path == "single-launch" and not on_cuda:
        r_tiles = 1  # the interpreter runs programs one after another: one program, nobody waits
    # one time tile: each recurrence unit projects its own columns, so no barrier after the projection
    proj_by_unit = path == "single-launch" and seq_len * block_b <= block_m
    if proj_by_unit:
        block_c = min(64, 4 * hp // r_tiles)
    if path == "single-launch" and not on_cuda:
        programs = 1
    elif path == "single-launch" and not proj_by_unit:
        programs = max(dirs * r_tiles, min(items, 32, sms // batch_tiles))
    else:
        programs = dirs * r_tiles
    # Triton 3.6 (the H100 machine's) crashed in RemoveLayoutConversions compiling the h poll at HP 256
    # (2 warps, 16-row tiles); the counter barrier compiles there, so the poll is kept to HP <= 128.
    poll_h = hp <= 128
    # Layer pipeline: every (layer, direction) its own program with all its weights in registers (whole
    # columns per thread: at most WEIGHT_REGISTERS of W_ih and W_hh), all of them resident; CUDA only.
    k_in = max(packed.input_padded, dirs * hp if packed.num_layers > 1 else 0)
    pipe_block_b = overrides.get("block_b", full_rows)
    pipe_warps = max(1, min(pipe_max_warps, 4 * hp // 32))
    pipeline_fits = (4 * hp <= 32 * pipe_max_warps and k_in + hp <= WEIGHT_REGISTERS
                     and -(-batch // pipe_block_b) * packed.num_layers * dirs <= sms)
    pipeline = (on_cuda and path == "single-launch" and pipeline_fits and seq_len <= PIPELINE_MAX_SEQ
                and k_in + hp <= PIPELINE_WEIGHTS and overrides.get("pipeline", True))
    if pipeline:
        programs = packed.num_layers * dirs
        block_b, num_warps, r_tiles = pipe_block_b, pipe_warps, 1
        if seq_len == 1:
            # fewer batch rows per program shorten each program's step (A: 4 rows 20.9 us, 2 rows 17.2, 1 row
            # 16.1), as long as every program stays resident. Not at seq > 1: Triton compiles the time loop
            # at one row into 4x the instructions, with spills.
            while block_b > 1 and -(-batch // (block_b // 2)) * programs <= sms:
                block_b //= 2
    # Relay: the one-warp plan with the projection done row by row by helper programs as the previous layer
    # completes each row, instead of shared by all programs between two grid barriers; CUDA only by default.
    relay_rows = min(full_rows, small_rows)
    relay_tiles = -(-batch // relay_rows)
    relay_helpers = sms // relay_tiles // dirs - 1  # helpers a batch tile and direction the multiprocessors leave
    relay_programs = dirs * (1 + max(1, min(RELAY_HELPERS // dirs, relay_helpers)))
    relay_bytes = 4 * seq_len * batch * packed.num_layers * (cols + 2 * dirs * hp)  # gx and two output sets
    relay_fits = (r_tiles == 1 and hp <= 32 and packed.input_padded <= 64 and relay_bytes <= RELAY_MAX_BYTES
                  and relay_tiles * relay_programs <= sms)
    relay = (on_cuda and path == "single-launch" and not pipeline and num_warps == 1 and relay_fits
             and overrides.get("relay", relay_helpers >= RELAY_MIN_HELPERS))
    if relay:
        programs = relay_programs
    plan = Plan(path, block_b, r_tiles, programs, block_m, block_c, 32 if hp <= 64 else 16, num_warps,
                poll_h=poll_h, proj_by_unit=proj_by_unit, pipeline=pipeline, relay=relay)
    if overrides:
        if overrides.get("pipeline") and not plan.pipeline:
            if not pipeline_fits or path != "single-launch":
                raise ValueError("the layer pipeline does not fit this size (weights per thread or residency)")
            overrides = {"programs": packed.num_layers * dirs, "r_tiles": 1, "block_b": pipe_block_b,
                         "num_warps": pipe_warps, **overrides}
        if overrides.get("relay") and not plan.relay:
            if not relay_fits or path != "single-launch":
                raise ValueError("the relay kernel does not fit this size (hidden or input over 32/64, "
                                 "workspace or residency)")
            overrides = {"programs": relay_programs if on_cuda else 1, "r_tiles": 1, "block_b": relay_rows,
                         "num_warps": 1, "pipeline": False, **overrides}
        plan = replace(plan, **overrides)
    return plan
