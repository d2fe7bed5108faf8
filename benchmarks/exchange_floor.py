"""The floor of the exchange of h: what a step of the CUDA persistent kernel costs with no product and no cell.

    PYTHONPATH=src python3 benchmarks/exchange_floor.py                  # the workloads' mimics and the scans
    PYTHONPATH=src python3 benchmarks/exchange_floor.py --only U,T --json floor.json

Every step of the persistent kernel (docs/fused_kernel.md, "The CUDA C++ kernel") is: wait for the whole previous
h of the block's direction and batch group (data as flag: poisoned words re-read until none is left), one block
barrier, the product and the cell, then the block's own h slice stored into the next slot. `xchg` below keeps
exactly the exchange: the same grid, the same bytes read and written a step by each block, the same relaxed
16-byte polls of poisoned words and the same first-read delay as the workload's default plan (`plan_for` on this
GPU), with the product and the cell replaced by nothing (or by `--work NS` of spinning). Its time a step is the
floor of that plan's step: no kernel that exchanges h this way (every block reads all of h from L2 every step)
can step faster. The script prints, per workload, that floor beside the fused-graph time of the real kernel a
step and the target's time a step, and scans the floor over the number of blocks, the bytes a step, the delay
and the work, and over three alternative exchanges, each measured here before it was built: `cluster=C` (a cluster
of C blocks polls h once from L2, each block 1 / C of it, and pushes its part into every block of the cluster through
distributed shared memory, then one cluster barrier), the "hybrid" exchange of docs/fused_kernel.md's list;
`replicas=R` (every block stores its h into R copies and polls copy block % R: 1 / R of the pollers a line); and
`stagger=G` (a second read of every chunk G cycles after the first, then two in flight: a read every half round
trip). All three measured slower than the plain poll (docs/fused_kernel.md v24, v25).

A time a step is (time of a launch of 1000 steps - time of a launch of 200 steps) / 800: launch and fill costs
cancel. CUDA events, median of --iters launches of each.

What it does not copy: the slab here is block-major (a block's chunks contiguous), the kernel's row-major (a row's
units of all blocks contiguous); the store width and the warps that store follow the kernel's cells (`elem`: a word
a thread, 64 cells of U on two warps), not their rows. Measured on the H200 (docs/fused_kernel.md v24), the number of
warps that store a block's h moved the floor by ~200 ns at 16 KiB; the width did not.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import sys
from dataclasses import dataclass

XCHG_SOURCE = r"""
typedef unsigned int u32;
#ifndef CLUSTER
#define CLUSTER 0
#endif
#ifndef REPL
#define REPL 1
#endif
#define SLOT (REPL * NBLK * CH)  // 16-byte chunks a step's slot: REPL copies of every block's h
#define PER_GROUP (NBLK / GROUPS)  // the blocks of a group: the producers every block of it waits on
#define TOT (PER_GROUP * CH)       // 16-byte chunks a block reads a step (the group's whole h)
#if CLUSTER
#define PART (TOT / CLUSTER)       // chunks a block polls from L2; the others arrive through DSMEM
static_assert(TOT % CLUSTER == 0 && PER_GROUP % CLUSTER == 0, "a cluster's blocks share one group, h split evenly");
#else
#define PART TOT
#endif
#define PER ((PART + NT - 1) / NT)
static_assert(PER <= 32, "a thread's chunks fit the pending mask");
#define POISON 0xFFFFFFFFu
#define SPIN_LIMIT 4000000

__device__ __forceinline__ uint4 ld_poll(const uint4* p) {
    uint4 v;
    asm volatile("ld.relaxed.gpu.global.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p) : "memory");
    return v;
}

#if ELEM == 2  // h stored as 16-bit words: a chunk is valid once none of its eight halves is poison; the kernel's
// test (cuda_source.py poison_mask: a zero 16-bit lane of ~w, three operations a word)
__device__ __forceinline__ bool poisoned(uint4 v) {
    return ((((~v.x - 0x00010001u) & v.x) | ((~v.y - 0x00010001u) & v.y) | ((~v.z - 0x00010001u) & v.z)
             | ((~v.w - 0x00010001u) & v.w)) & 0x80008000u) != 0u;
}
#else
__device__ __forceinline__ bool poisoned(uint4 v) {
    return v.x == POISON || v.y == POISON || v.z == POISON || v.w == POISON;
}
#endif

// the chunks of `todo` that are still poisoned in `set`; the others' values into `found`
__device__ __forceinline__ u32 sift(const uint4 (&set)[PER], uint4 (&found)[PER], u32 todo) {
    u32 bad = 0;
#pragma unroll
    for (int i = 0; i < PER; ++i)
        if ((todo >> i) & 1u) {
            if (poisoned(set[i])) bad |= 1u << i;
            else found[i] = set[i];
        }
    return bad;
}

// the chunks of `which` read again into `set`, all in flight together
__device__ __forceinline__ void reread(uint4 (&set)[PER], const uint4* src, int tid, u32 which) {
#pragma unroll
    for (int i = 0; i < PER; ++i)
        if ((which >> i) & 1u) set[i] = ld_poll(src + tid + i * NT);
}

#if CLUSTER
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
    asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
}
#endif

// slab: u32 [steps + 1][REPL][NBLK][CH][4], poisoned (all ones) but slot 0 (REPL > 1: every block stores its h into
// REPL copies and reads copy blk % REPL, so that 1 / REPL of the blocks poll each line); err[0]: a wait gave up
// (timed on the host)
extern "C" __global__ void __launch_bounds__(NT, 1) xchg(uint4* slab, int* err, int steps) {
    const int blk = blockIdx.x, tid = threadIdx.x;
    const int group = blk / PER_GROUP;
    u32 acc = 0;
#if CLUSTER
    extern __shared__ uint4 hbuf[];  // [2][TOT]: h by step parity
    u32 rank;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
    cluster_sync();  // every block of the cluster runs before anyone writes into its shared memory
#else
    const u32 rank = 0;
#endif
    for (int s = 0; s < steps; ++s) {
        const uint4* src = slab + (size_t)s * SLOT + (size_t)(blk % REPL) * NBLK * CH + (size_t)group * TOT
                           + rank * PART;
#if DELAY
        if (s) __nanosleep(DELAY);
#endif
        // as the kernel polls: every read of a round issued before any is checked (a check between two reads
        // would wait for the first one's round trip before issuing the second)
        uint4 v[PER];
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            const int q = tid + i * NT;
            v[i] = make_uint4(0, 0, 0, 0);
            if (q < PART) v[i] = ld_poll(src + q);
        }
        int spins = 0;
#if STAGGER
        // a second read of every chunk STAGGER cycles after the first, and from then on two in flight: each set
        // re-read as soon as it is checked, so reads of a chunk go out about every half round trip (not every
        // round trip) and h is found sooner after it lands, for twice the polls
        {
            const long long t0 = clock64();
            while (clock64() - t0 < STAGGER) {}
        }
        uint4 u[PER], w[PER];
        u32 todo = 0;
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            const int q = tid + i * NT;
            u[i] = w[i] = make_uint4(0, 0, 0, 0);
            if (q < PART) {
                u[i] = ld_poll(src + q);
                todo |= 1u << i;
            }
        }
        while (true) {  // the older set, then the newer, each re-read as soon as it is checked
            todo = sift(v, w, todo);
            if (todo == 0) break;
            if (++spins > SPIN_LIMIT) {
                atomicExch(err, 1);
                break;
            }
            reread(v, src, tid, todo);
            todo = sift(u, w, todo);
            if (todo == 0) break;
            reread(u, src, tid, todo);
        }
#pragma unroll
        for (int i = 0; i < PER; ++i) v[i] = w[i];
#else
        while (true) {  // the chunks still poisoned, re-read together: one round trip a round
            u32 bad = 0;
#pragma unroll
            for (int i = 0; i < PER; ++i) bad |= (u32)poisoned(v[i]) << i;
            if (bad == 0) break;
            if (++spins > SPIN_LIMIT) {
                atomicExch(err, 1);
                break;
            }
            reread(v, src, tid, bad);
        }
#endif
#if CLUSTER
        uint4* mine = hbuf + (s & 1) * TOT + rank * PART;
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            const int q = tid + i * NT;
            if (q < PART) {
                const u32 local = (u32)__cvta_generic_to_shared(mine + q);
#pragma unroll
                for (u32 r = 0; r < CLUSTER; ++r) {
                    u32 remote;
                    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(r));
                    asm volatile("st.shared::cluster.v4.u32 [%0], {%1, %2, %3, %4};"
                                 :: "r"(remote), "r"(v[i].x), "r"(v[i].y), "r"(v[i].z), "r"(v[i].w) : "memory");
                }
            }
        }
        cluster_sync();
        for (int q = tid; q < TOT; q += NT) {  // the whole h from this block's shared memory, as a product reads it
            const uint4 w = hbuf[(s & 1) * TOT + q];
            acc += w.x ^ w.w;
        }
#else
#pragma unroll
        for (int i = 0; i < PER; ++i) acc += v[i].x ^ v[i].w;
        __syncthreads();
#endif
#if WORK
        {  // the product and the cell, as time
            const long long until = clock64() + 2LL * WORK;
            while (clock64() < until) {}
        }
#endif
#pragma unroll 1
        for (int copy = 0; copy < REPL; ++copy) {
            uint4* dst = slab + (size_t)(s + 1) * SLOT + (size_t)copy * NBLK * CH + (size_t)blk * CH;
#if GATHER  // words of ELEM bytes a thread, as the cells compute them, gathered by shuffles: a 16-byte store a group
            for (int e0 = 0; e0 < CH * (16 / ELEM); e0 += NT) {
                const int e = e0 + tid, lane = tid & 31, first = lane & ~(16 / ELEM - 1);
                const u32 bits = ELEM == 2 ? ((s + e + acc) & 0x3FFFu) + 1u : (u32)(s + 1 + e) ^ (acc & 0x7FFF0000u);
                u32 w[16 / ELEM];
#pragma unroll
                for (int q = 0; q < 16 / ELEM; ++q) w[q] = __shfl_sync(0xffffffffu, bits, first + q);
                if (e < CH * (16 / ELEM) && lane == first) {
#if ELEM == 2
                    ((uint4*)dst)[e / 8] = make_uint4(w[0] | (w[1] << 16), w[2] | (w[3] << 16), w[4] | (w[5] << 16),
                                                      w[6] | (w[7] << 16));
#else
                    ((uint4*)dst)[e / 4] = make_uint4(w[0], w[1], w[2], w[3]);
#endif
                }
            }
#elif ELEM == 16
            for (int c = tid; c < CH; c += NT) dst[c] = make_uint4(s + 1, blk, c, acc & 0x7FFFFFFFu);
#elif ELEM == 4  // a word a thread, as the fp32 kernel's cells store h
            for (int e = tid; e < CH * 4; e += NT) ((u32*)dst)[e] = (u32)(s + 1 + e) ^ (acc & 0x7FFF0000u);
#else  // a 16-bit word a thread, as the 16-bit kernel's cells store h (never 0xFFFF)
            for (int e = tid; e < CH * 8; e += NT)
                ((unsigned short*)dst)[e] = (unsigned short)(((s + e + acc) & 0x3FFFu) + 1u);
#endif
        }  // copies
    }
#if CLUSTER
    cluster_sync();  // nobody leaves while another block can still write into it
#endif
    if (acc == 0x7F7F7F7Fu) err[1] = 1;  // keeps the reads
}
"""


@dataclass(frozen=True)
class XConfig:
    """One exchange: `blocks` blocks in `groups` independent groups (batch groups x directions), each block writing
    `chunks` 16-byte chunks of h a step and reading its group's (blocks / groups x chunks), `threads` a block,
    `delay` ns before a wait's first read, `work` ns spun after the wait, `cluster` blocks sharing one poll."""

    blocks: int
    groups: int
    chunks: int
    threads: int = 256
    delay: int = 0
    work: int = 0
    cluster: int = 0
    elem: int = 16  # bytes a thread stores: 16 (a chunk), or a word of h as the kernel's cells do (4: fp32, 2: 16-bit)
    gather: bool = False  # elem 2 / 4: a word a thread, gathered by shuffles into one 16-byte store a group
    replicas: int = 1  # copies of h a step: each block stores into every copy and polls copy (block % replicas)
    stagger: int = 0  # cycles between a wait's first read of a chunk and a second; then two reads in flight (0: one)

    def __post_init__(self) -> None:
        per_group = self.blocks // self.groups
        part = per_group * self.chunks // max(self.cluster, 1)
        problems = [why for bad, why in (
            (self.blocks % self.groups, "blocks must be whole groups"),
            (self.cluster and per_group % self.cluster, "a group must be whole clusters"),
            (self.cluster and (per_group * self.chunks) % self.cluster, "h must split evenly over a cluster"),
            (-(-part // self.threads) > 32, "at most 32 chunks a thread"),
            (self.threads % 32 or not 32 <= self.threads <= 1024, "threads must be 32-1024, whole warps"),
            (self.elem not in (2, 4, 16), "elem must be 2, 4 or 16 bytes"),
            (self.gather and self.elem == 16, "gather needs words of 2 or 4 bytes"),
            (not 1 <= self.replicas <= self.blocks, "replicas must be 1 to blocks"),
            (self.replicas > 1 and self.cluster, "replicas and cluster do not combine"),
            (self.stagger < 0, "stagger must be 0 or more cycles"),
        ) if bad]
        if problems:
            raise ValueError(f"exchange {self}: {'; '.join(problems)}")

    @property
    def read_bytes(self) -> int:
        """Bytes of h a block reads a step (from L2, or L2 and DSMEM with a cluster)."""
        return self.blocks // self.groups * self.chunks * 16

    def defines(self) -> str:
        return (f"#define NBLK {self.blocks}\n#define GROUPS {self.groups}\n#define CH {self.chunks}\n"
                f"#define NT {self.threads}\n#define DELAY {self.delay}\n#define WORK {self.work}\n"
                f"#define CLUSTER {self.cluster}\n#define ELEM {self.elem}\n#define GATHER {int(self.gather)}\n"
                f"#define REPL {self.replicas}\n#define STAGGER {self.stagger}\n")

    def shared_bytes(self) -> int:
        return 2 * self.read_bytes if self.cluster else 0

    def label(self) -> str:
        named = ("delay", "work", "cluster", "replicas", "stagger")
        extra = "".join(f" {name}={getattr(self, name)}" for name in named if getattr(self, name) not in (0, 1)) + (
            f" stores of {self.elem} B" if self.elem != 16 else "") + (" gathered" if self.gather else "")
        return (f"{self.blocks} blocks / {self.groups} groups, {self.chunks * 16} B a block, "
                f"{self.read_bytes // 1024 if self.read_bytes >= 1024 else self.read_bytes / 1024:g} KiB read{extra}")


def mimic(plan, packed, batch: int, **changes) -> XConfig:
    """The exchange of `plan` (a CUDA persistent kernel plan of `packed` at `batch` rows): its blocks, groups, the
    bytes of h each block stores a step (units x real rows of a group x the slab's element size, at least one
    16-byte chunk), its threads and first-read delay; `changes` replace fields (e.g. work, cluster)."""
    rows = min(plan.group_rows or plan.block_b, batch)
    stored = plan.block_n * rows * packed.dtype.itemsize
    config = XConfig(blocks=plan.programs, groups=plan.programs // plan.r_tiles, chunks=max(1, stored // 16),
                     threads=plan.num_warps * 32, delay=plan.poll_delay, elem=packed.dtype.itemsize)
    return dataclasses.replace(config, **changes)


def compile_xchg(config: XConfig, arch: str = "sm_90a") -> tuple[bytes, str]:
    """NVRTC: the cubin and ptxas's report (through the persistent kernel's compile, cuda_persistent.py)."""
    from lstminfer.kernels.rnn.cuda_persistent import compile_cubin

    return compile_cubin(config, arch, source=XCHG_SOURCE, name="xchg")


def step_ns(config: XConfig, iters: int = 5, short: int = 200, long: int = 1000) -> dict:
    """ns a step of `config` on the current GPU: (a launch of `long` steps - one of `short`) / (long - short),
    medians of `iters` launches each; and whether any wait gave up."""
    import ctypes

    import torch

    from lstminfer.kernels.rnn.cuda_persistent import _bindings, _check, launch_config, loaded

    driver, _ = _bindings()
    device = torch.cuda.current_device()
    kernel = loaded(config, device, cubin_of=compile_xchg, name=b"xchg",
                    what="the exchange benchmark", fix="")
    kernel.check_resident(config.blocks)
    slot = config.replicas * config.blocks * config.chunks * 4  # int32 words a step's slot
    words = (long + 1) * slot
    slab = torch.empty(words, dtype=torch.int32, device="cuda")
    err = torch.zeros(2, dtype=torch.int32, device="cuda")
    stream = torch.cuda.current_stream()
    cu_stream = driver.CUstream(stream.cuda_stream)

    def prepare() -> None:
        slab.fill_(-1)
        slab[:slot].zero_()  # slot 0: the initial h

    def launch(steps: int) -> None:
        values = (ctypes.c_void_p(slab.data_ptr()), ctypes.c_void_p(err.data_ptr()), ctypes.c_int(steps))
        pointers = (ctypes.c_void_p * 3)(*(ctypes.addressof(v) for v in values))
        if config.cluster:
            cfg = launch_config(driver, config.blocks, config.threads, kernel.shared, config.cluster, cu_stream)
            _check(driver.cuLaunchKernelEx(cfg, kernel.function, ctypes.addressof(pointers), 0), "cuLaunchKernelEx")
        else:
            _check(driver.cuLaunchKernel(kernel.function, config.blocks, 1, 1, config.threads, 1, 1, kernel.shared,
                                         cu_stream, ctypes.addressof(pointers), 0), "cuLaunchKernel")

    def median_us(steps: int) -> float:
        prepare()
        launch(steps)  # warm-up
        times = []
        for _ in range(iters):
            prepare()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            launch(steps)
            end.record(stream)
            end.synchronize()
            times.append(start.elapsed_time(end) * 1000.0)
        return statistics.median(times)

    t_short, t_long = median_us(short), median_us(long)
    stalled = bool(err[0].item())
    return {"ns_a_step": 1000.0 * (t_long - t_short) / (long - short), "us_short": t_short, "us_long": t_long,
            "stalled": stalled, "registers": kernel.registers}


# the scans: each varies one thing of a U-like exchange (128 blocks, 128 B a block: 16 KiB read a step)
def scans() -> dict[str, list[XConfig]]:
    return {
        "blocks (2 KiB of h a step)": [XConfig(n, 1, max(1, 128 // n)) for n in (2, 8, 16, 32, 64, 128)],
        "bytes (128 blocks)": [XConfig(128, 1, c) for c in (1, 2, 4, 8, 16, 32)],
        "delay (128 blocks, 16 KiB)": [XConfig(128, 1, 8, delay=d) for d in (0, 250, 500, 1000)],
        "work (128 blocks, 16 KiB, delay 500)": [XConfig(128, 1, 8, delay=500, work=w) for w in (0, 250, 500, 1000)],
        "cluster (128 blocks, 16 KiB)": [XConfig(128, 1, 8, cluster=c) for c in (0, 2, 4, 8)],
        "cluster (128 blocks, 32 KiB)": [XConfig(128, 1, 16, cluster=c) for c in (0, 2, 4, 8)],
        "cluster (128 blocks, 2 KiB)": [XConfig(128, 1, 1, cluster=c) for c in (0, 2, 4, 8)],
        "store width (128 blocks, 16 KiB, delay 500)": [XConfig(128, 1, 8, delay=500, elem=e) for e in (16, 4, 2)]
        + [XConfig(128, 1, 8, delay=500, elem=2, gather=True), XConfig(128, 1, 8, delay=500, elem=4, gather=True)],
        "store width (128 blocks, 2 KiB, delay 250)": [XConfig(128, 1, 1, delay=250, elem=e) for e in (16, 4, 2)]
        + [XConfig(128, 1, 1, delay=250, elem=2, gather=True)],
        "blocks (16 KiB of h a step, delay 500)": [XConfig(n, 1, 1024 // n, delay=500) for n in (32, 64, 128)],
        # h stored into several copies, each polled by 1 / copies of the blocks (fewer pollers a line)
        "replicas (128 blocks, 2 KiB)": [XConfig(128, 1, 1, replicas=r) for r in (1, 2, 4, 8, 16)],
        "replicas (128 blocks, 2 KiB, delay 250)": [XConfig(128, 1, 1, delay=250, replicas=r) for r in (1, 4, 16)],
        "replicas (128 blocks, 16 KiB, delay 500)": [XConfig(128, 1, 8, delay=500, replicas=r) for r in (1, 2, 4, 8)],
        # two reads of a chunk in flight, `stagger` cycles apart (a read every half round trip)
        "stagger (2 blocks, 2 KiB)": [XConfig(2, 1, 64, stagger=g) for g in (0, 200, 400)],
        "stagger (128 blocks, 2 KiB, delay 250)": [XConfig(128, 1, 1, delay=250, stagger=g)
                                                   for g in (0, 100, 200, 400, 800)],
        "stagger (128 blocks, 4 KiB, delay 250, stores of 4 B)": [XConfig(128, 1, 2, delay=250, elem=4, stagger=g)
                                                                  for g in (0, 200, 400)],
        "stagger (128 blocks, 16 KiB, delay 500)": [XConfig(128, 1, 8, delay=500, stagger=g)
                                                    for g in (0, 200, 400, 800)],
    }


MIMICKED = ("P 256->512 B1 fp32", "P 256->512 B1 bf16", "Q 256->512 B64 bf16", "S speech 2L bi 80->512 B8 bf16",
            "R 80->1024 B1 T200 fp32", "R 80->1024 B1 T200 bf16", "U 128->1024 B8 T200 bf16",
            "V 128->768 B16 T1024 fp16", "T 4L 1024->1024 B16 T50 bf16")


# a workload's exchange as its plan does it (c0), and the alternatives: clusters of 2 and 4 blocks sharing a poll, h
# stored into 4 copies, two reads of a chunk in flight 200 and 400 cycles apart
ALTERNATIVES = {"c0": {}, "c2": dict(cluster=2), "c4": dict(cluster=4), "r4": dict(replicas=4),
                "s200": dict(stagger=200), "s400": dict(stagger=400)}


def workload_rows(names, iters: int) -> list[dict]:
    """Per workload: its default plan's exchange floor (and each of the ALTERNATIVES where it fits), the real
    kernel's fused-graph us a layer-step, and the target's."""
    import torch
    from fused_vs_cudnn import DTYPES, WORKLOADS, graphed, setup, time_calls  # the sibling script

    from lstminfer.kernels.rnn import pack_rnn, plan_for, rnn_forward

    rows = []
    stream = torch.cuda.Stream()
    for w in (w for w in WORKLOADS if w.name in names):
        module, x, h0, c0, _ = setup(w, with_ref=False)
        packed = pack_rnn(module, "cuda", DTYPES[w.precision])
        plan = plan_for(packed, w.seq_len, w.batch, cudnn=False)  # ours, also where cuDNN is the default (V)
        if not plan.cuda:
            rows.append({"workload": w.name, "kernel": plan.kernel, "skipped": "not the CUDA persistent kernel"})
            continue
        xd = x.to("cuda", DTYPES[w.precision])
        h0d, c0d = h0.to("cuda", DTYPES[w.precision]), c0.to("cuda", DTYPES[w.precision])
        workspace: dict = {}
        run = graphed(functools.partial(rnn_forward, packed, xd, h0d, c0d, plan=plan, workspace=workspace,
                                        check=False), stream)
        fused_us = time_calls(run, 3, iters * 4, stream)
        layer_steps = w.seq_len * w.num_layers
        row = {"workload": w.name, "plan": plan.describe(), "layer_steps": layer_steps,
               "fused_graph_us": fused_us, "fused_ns_a_step": 1000.0 * fused_us / layer_steps,
               "target_ns_a_step": 1000.0 * w.target_us / layer_steps if w.target_us else None}
        for key, change in ALTERNATIVES.items():
            try:
                config = mimic(plan, packed, w.batch, **change)
            except ValueError as e:
                row[f"floor_{key}"] = str(e)
                continue
            row[f"config_{key}"] = config.label()
            row[f"floor_{key}"] = step_ns(config, iters)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated workload name prefixes (default: the issue-12 workloads)")
    parser.add_argument("--no-scans", action="store_true", help="the workloads only")
    parser.add_argument("--no-workloads", action="store_true", help="the scans only")
    parser.add_argument("--iters", type=int, default=5, help="launches a median (default 5)")
    parser.add_argument("--json", help="write every number to this file")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("exchange_floor.py needs a CUDA GPU", file=sys.stderr)
        return 2
    print(f"{torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).multi_processor_count} SMs")
    result: dict = {"scans": {}, "workloads": []}
    if not args.no_scans:
        for title, configs in scans().items():
            print(f"\n## {title}")
            for config in configs:
                r = step_ns(config, args.iters)
                result["scans"].setdefault(title, []).append({"config": dataclasses.asdict(config), **r})
                print(f"  {config.label():60s} {r['ns_a_step']:8.0f} ns a step"
                      f"{'  STALLED' if r['stalled'] else ''}", flush=True)
    if not args.no_workloads:
        prefixes = tuple(p.strip() for p in args.only.split(",")) if args.only else None
        names = [n for n in MIMICKED if prefixes is None or n.startswith(prefixes)]
        print("\n## workloads: the default plan's exchange floor a layer-step (ns) against the kernel's and the "
              "target's")
        heads = ("floor", "C2", "C4", "R4", "S200", "S400", "kernel", "target")
        print(f"  {'workload':34s} " + "".join(f"{h:>7s} " for h in heads) + " exchange")
        for row in workload_rows(names, args.iters):
            result["workloads"].append(row)
            if "skipped" in row:
                print(f"  {row['workload']:34s} skipped: {row['kernel']} ({row['skipped']})")
                continue
            cells = [row[f"floor_{key}"]["ns_a_step"] if isinstance(row[f"floor_{key}"], dict) else float("nan")
                     for key in ALTERNATIVES]
            target = row["target_ns_a_step"] or float("nan")
            print(f"  {row['workload']:34s} " + "".join(f"{c:7.0f} " for c in cells) +
                  f"{row['fused_ns_a_step']:7.0f} {target:7.0f}  {row['config_c0']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
