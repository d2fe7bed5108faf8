"""CUDA C++ source of the persistent recurrence kernel (``rnn_persistent_cuda``), compiled at run time by NVRTC.

The same algorithm as ``persistent.py``'s ``_rnn_persistent_kernel`` (one layer, both directions, h exchanged
through the poisoned slab ``[T + 2, B, D, HP]``, data as flag), written so that a step costs two block-wide
barriers: Triton's version of it had 11-17 (docs/fused_kernel.md, v11-v13). A block owns NB hidden units
(``COLS = 4 NB`` interleaved gate columns) of one direction and BB batch rows for the whole sequence:

1. (start) its W_hh^T columns on chip once: 16-bit as ``w_s[COLS][KH + 8]`` in shared memory for ``mma.sync``
   m16n8k16 (fp32 accumulation, batch padded to 16 rows); fp32 (or 16-bit with MMA=0) in registers, one column
   and KPT consecutive k a thread, for IEEE FFMA. Its h0/c0 into registers, its h0 into the slab's initial slot.
2. (step) this step's gx into registers (independent of the other blocks: in flight during the wait); every
   thread polls its own 16-byte chunks of the direction's previous h (``ld.relaxed.gpu``, re-read until no
   word is the poison all-ones) and puts them into shared memory: barrier 1;
3. the product: MMA: warp = (n tile of 8 columns, k slice), A (h) by ``ldmatrix.x4``, B from ``w_s``; FFMA:
   thread = (column, k slice), h read as broadcast float4. Partial sums into ``red[KSL][BB][COLS + 8]``:
   barrier 2;
4. the cell: thread = (row, unit), its four gates summed over the k slices plus gx, LSTM/GRU in fp32 with h
   and c in registers; h into the slab (the word is the flag), the user's output, hn/cn.

No barrier closes a step: the next poll writes ``h_s`` only after barrier 2 (every product read done), the next
product writes ``red`` only after the next barrier 1 (every cell read done). A poll past ``spin_limit`` reads
sets the error word (launch.py's raise_if_stalled) and the whole block leaves after barrier 1: never wrong
numbers. Sizes are compile-time constants (the #defines ``cuda_persistent.py`` puts in front).

Options (plan fields; off by default, compiled and tested, not yet measured on a GPU): MMA_REGS, a warp per k slice
over every column tile with its W^T fragments in registers (h's fragments read once a step, not once per column
tile); W_SHARED, the FFMA product with W^T in shared memory (fp32 slices past the registers); POLL_SLEEP, ns of
``__nanosleep`` between two reads of a wait; POLL_DELAY, ns before the first; POLL_FRAG (with MMA_REGS), each warp
polls its own k slice of h from the slab straight into its A fragments (lane (g, t) reads 16 bytes of rows g and g
+ 8: the a0/a2 and a1/a3 words of two k chunks, k permuted inside the slice and W^T's fragments loaded with the
same permutation), so there is no h in shared memory and no barrier 1: one block barrier a step, the partial sums
double-buffered by step parity (a warp may start the next step's product while another still reads this step's sums
in the cell); a wait that gives up leaves after barrier 2.

POLL_SENTINEL (v18, asked only): a wait first polls only a sentinel per producer block of the warp's k range (the
16-byte chunk of that producer's last units in the last real batch row; one lane each) until none is poison, and
only then reads its whole slice as before (every chunk checked, the poisoned ones re-read): a round of the wait reads
1 / rows of the bytes, for one more L2 round trip after the data is there. Both poll paths: with A_DIRECT a warp's
k slice; else a warp polls every row of one k range (WCH chunks, lane-major) into shared memory, so that its
sentinels are exactly its chunks' producers. What guarantees the numbers is unchanged: each slab word is written
once a launch after the poison fill, a relaxed load returns the poison or the final word, and every word the
product uses was checked. The sentinel is a hint only: the stores of one producer (several threads, relaxed, to
different L2 slices) reach L2 in no guaranteed order, so a valid sentinel says nothing about the other words, and
a wrong hint costs one more round of re-reads, never a wrong number. SENTINEL_LAST makes the hint better: the
warps that hold cells meet at a named barrier after issuing every other row's stores, then store the sentinel row
(program and barrier order make the sentinel's store issue last; arrival order is still not guaranteed). A
release/acquire pair would make the hint a guarantee, but a release waits for the earlier stores' completion (an
L2 round trip on the producer's critical path). The spin limit counts the sentinel's reads and the slice's together.

CLUSTER (v19; the default where plan.CUDA_MEASURED_OPTIONS lists it since v20; docs/fused_kernel.md "Clusters (v19)"):
the TILES blocks of one (batch group, direction) are one thread-block cluster (cuLaunchKernelEx with a cluster
dimension), and h goes through distributed shared memory instead of the slab: at the end of a step each block pushes its
h slice (the 16-bit words, or fp32, that the next product reads) into h buffer (s + 1) & 1 of every block of the cluster
(a 16-byte group of units gathered by shuffles, ``mapa`` + ``st.shared::cluster``), then
``barrier.cluster.arrive.release``; the next step loads its gx and ``barrier.cluster.wait.acquire`` replaces the poll
and barrier 1 (the slab, the user's output and hn/cn are stored after the arrive: nobody waits on them). Double
buffering by step parity is enough: a block pushes into buffer (s + 1) & 1 only after its wait of step s, which every
block reaches after its product of step s - 1 (the last read of that buffer). No polls, no poison, no spin limit (no
KernelStalled: a cluster waits on nobody outside it). GROUP_ROWS: the real batch rows a block where fewer than BB (mma's
16 padded rows). W_REGS (FFMA): a thread's first W_REGS k in registers and the rest of its KPT in shared memory (fp32
slices past both alone). MMA_TPW (mma, W^T in shared memory): a warp per MMA_TPW column tiles and a k slice, each A
fragment read once for the group.

POLL_SPIN (v23; the default where plan.CUDA_MEASURED_OPTIONS lists it, else asked for): 1, the first-read delay
(POLL_DELAY ns, SPIN_CYCLES_PER_NS cycles each) spun on ``clock64`` instead of ``__nanosleep`` (whose pause is only
guaranteed to lie in [0, 2 t]); 2, that delay adapted every step by each thread from its own reads: shorter by 1/16
after a first read that found its whole part of h, else a quarter of the way towards the midpoint of its last failed
read and the read that found h (both issue times taken on ``clock64``), within [0, SPIN_MAX] cycles. What the numbers
rest on is unchanged: every word read is checked.

MMA_SWAP (v26, asked only: `mma_swap`; built and compiled on the CPU, its GPU tests not yet run): with POLL_FRAG at
8 batch rows or fewer, W^T is the mma's A operand (16 columns x 16 k, in registers) and h its B operand (16 k x 8
columns: the batch rows), so no mma multiplies padding rows (half of U's today) and a lane polls one row; the partial
sums land in ``red`` as before, so the cell is unchanged. The plan puts the rows in one group of 8 (group_rows).

SLAB_BITS 32 with 16-bit elements (v27, asked only: the plan's `wide_h`; built and compiled on the CPU, its GPU
tests not yet run): an FFMA plan's slab holds h as fp32 words, each the 16-bit value widened (exact), so the numbers
are bit for bit the 16-bit slab's; the poll and the copy into shared memory are the fp32 kernel's (no widening of h
in the wait). For P bf16, which measured 3-4 % slower than P fp32 on its own exchange of 16-bit words.

STAMPS (asked only): thread 0 of every block writes globaltimer ns into ``stamps[block][step][3]`` (the layer's
slice, launch.py's workspace["stamps"]): (a) the step's wait starts, (b) the block's whole h slice is valid (the
last warp's own stamp, taken after its poll and read after the next block barrier), (c) the block's h stores of
the step are issued (the last warp's). Each warp's stamps go through shared memory by step parity; (c) of a step
is written after the next step's barrier (of the last step, after the loop). STAMPS 2-4 (v24) stamp in the
multiprocessor's clock64 cycles (exact inside a block; not comparable between blocks) to split a step's compute, with
(c) taken: 2, when the warp's product is done (its partial sums stored, before the block barrier that gathers them);
3, past that barrier (the cell and the stores follow); 4, where STAMPS 1 takes it (the h stores issued).
"""

# the element type and the cell's functions, shared with the resident kernel (resident_source.py)
ELEMENT_MATH = r"""
#if ELEM_BITS == 32
typedef float elem_t;
#else
typedef u16 elem_t;
#endif

__device__ __forceinline__ float to_f32(elem_t v) {
#if ELEM_BITS == 32
    return v;
#elif IS_BF16
    return __uint_as_float(((u32)v) << 16);
#else
    float f;
    asm("{.reg .b16 t; mov.b16 t, %1; cvt.f32.f16 %0, t;}" : "=f"(f) : "h"(v));
    return f;
#endif
}

__device__ __forceinline__ float sigmoid_f(float x) {
#if FAST
    float e, r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(x * -1.4426950408889634f));
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(1.0f + e));
    return r;
#else
    return 1.0f / (1.0f + expf(-x));
#endif
}

__device__ __forceinline__ float tanh_f(float x) {
    // 2 sigmoid(2x) - 1: exact limits at +-inf, NaN stays NaN, absolute error ~1e-7 near 0 (as cell.py)
#if FAST
    float e, r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(x * -2.8853900817779268f));
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(1.0f + e));
    return 2.0f * r - 1.0f;
#else
    return 2.0f / (1.0f + expf(-2.0f * x)) - 1.0f;
#endif
}

"""

SOURCE = r"""
typedef unsigned short u16;
typedef unsigned int u32;

#define COLS (4 * NB)
#define RROW (COLS + 8)
#if MMA
#define HROW (KH + 8)
#else
#define KPT (KH / KSL)
#define HROW (KSL * (KPT + 4))
#define WROW (KH + 4)
#endif
#ifndef W_SHARED
#define W_SHARED 0
#endif
#ifndef W_REGS
#define W_REGS 0
#endif
#ifndef MMA_TPW
#define MMA_TPW 1
#endif
#ifndef FCOLS
#define FCOLS 1
#endif
#if FCOLS > 1
// FFMA with W^T in registers, FCOLS consecutive columns a thread (and KPT k): each float4 of h read from shared memory
// feeds FCOLS x 4 FMAs instead of 4 (v21; Q fp32 at one column a thread: 512 128-bit shared loads a thread a step,
// the product ~2x its FMA issue time by the stamps, docs/fused_kernel.md)
static_assert(!MMA && !W_SHARED && !W_REGS && !CLUSTER && (FCOLS == 2 || FCOLS == 4) && COLS % FCOLS == 0
              && KPT % 4 == 0, "FCOLS: the FFMA product with W in registers, 2 or 4 columns a thread");
#endif
#if MMA && !MMA_REGS && MMA_TPW > 1
// mma with W^T in shared memory and a warp per (group of MMA_TPW column tiles, k slice): each A fragment (h) read
// once a group instead of once a tile (16 warps of one tile each read all of h: 256 KiB a step at hidden 512 on
// 16-row blocks, against W^T's 128 KiB)
static_assert((COLS / 8) % MMA_TPW == 0 && (KH / 16) % KSL == 0, "whole tile groups and k slices");
#endif
#if W_REGS
// FFMA with the slice split: a thread's first W_REGS k of its KPT in registers, the other WS_K in shared memory as
// [COLS][KSL * WS_K + 4] (fp32 slices past both alone, e.g. hidden 512 on 16 blocks of a cluster: 256 KiB a block)
static_assert(!MMA && !W_SHARED && W_REGS < KPT && W_REGS % 4 == 0, "a split FFMA slice");
#define WS_K (KPT - W_REGS)
#define WSROW (KSL * WS_K + 4)
#define WACC (BB <= 2 ? 4 : 2)
#endif
#ifndef MMA_REGS
#define MMA_REGS 0
#endif
#ifndef POLL_FRAG
#define POLL_FRAG 0
#endif
#ifndef POLL_DELAY
#define POLL_DELAY 0
#endif
#ifndef POLL_SPIN
#define POLL_SPIN 0
#endif
// POLL_SPIN: cycles a ns of POLL_DELAY (the H200's 1980 MHz), and the longest adapted delay (~4 us)
#define SPIN_CYCLES_PER_NS 2
#define SPIN_MAX 8192
#ifndef POLL_SENTINEL
#define POLL_SENTINEL 0
#endif
#ifndef SENTINEL_LAST
#define SENTINEL_LAST 0
#endif
#ifndef STAMPS
#define STAMPS 0
#endif
#ifndef CLUSTER
#define CLUSTER 0
#endif
#ifndef GROUP_ROWS
#define GROUP_ROWS BB
#endif
#if CLUSTER
// a cluster of CLUSTER blocks holds every tile of one (batch group, direction): h through distributed shared memory
static_assert(TILES == CLUSTER, "a cluster is the TILES blocks of one batch group and direction");
static_assert(!POLL_FRAG && !POLL_SENTINEL && !STAMPS && !POLL_DELAY && !POLL_SLEEP && !POLL_SPIN,
              "clusters do not poll");
#define HBUF 2  // h in shared memory by step parity: written by the cluster's blocks while this step reads the other
#else
#define HBUF 1
#endif
static_assert(GROUP_ROWS <= BB, "the real rows of a batch group fit the block's rows");
#if MMA && MMA_REGS
#define NTILES (COLS / 8)
#define CPW (KH / 16 / KSL)
#endif
#ifndef MMA_SWAP
#define MMA_SWAP 0
#endif
#ifndef SLAB_BITS
#define SLAB_BITS ELEM_BITS
#endif
// SLAB_BITS 32 with 16-bit elements (wide_h, v27): the FFMA plans exchange h as fp32 words, the 16-bit values widened
static_assert(SLAB_BITS == ELEM_BITS || (SLAB_BITS == 32 && !MMA && !CLUSTER), "wide_h: 16-bit FFMA plans, no cluster");
#if MMA && MMA_REGS && POLL_FRAG
#define A_DIRECT 1
#if MMA_SWAP
// (asked only, mma_swap) at most 8 batch rows: W^T is the mma's A operand (16 columns x 16 k, in registers) and h its
// B (16 k x 8 rows: the batch, no padding rows), so a warp issues COLS / 16 x CPW mma instead of COLS / 8 x CPW, half
// of them on padding rows; lane (g, t) polls 16 bytes of row g a 32-k group (two k chunks' b0/b1), as A_DIRECT's k
// permutation
static_assert(GROUP_ROWS <= 8 && COLS % 16 == 0 && CPW % 2 == 0, "mma_swap: at most 8 rows, whole 16-column tiles");
#define MTILES (COLS / 16)
#define NPOLL (CPW / 2)
#else
#define NPOLL CPW
#endif
#define RED_SIZE (KSL * BB * RROW)
static_assert(CPW % 2 == 0, "h polled into A fragments: two k chunks a 16-byte read");
#define SWCH (KH / KSL / CE)
#elif POLL_SENTINEL
// a warp polls every row of one k range of WCH chunks (the producers its sentinels watch), lane-major
#define A_DIRECT 0
#define WCH ((CPR + NT / 32 - 1) / (NT / 32))
#define SWCH WCH
#define NPOLL ((BB * WCH + 31) / 32)
#else
#define A_DIRECT 0
#define NPOLL PC
#endif
#define CE (16 / (SLAB_BITS / 8))
#define CPR (KH / CE)
#define NCH (BB * CPR)
#define PC ((NCH + NT - 1) / NT)
#define CELLS (GROUP_ROWS * NB)
#define CPT ((CELLS + NT - 1) / NT)
#define CELL_THREADS (CELLS >= NT ? NT : (CELLS + 31) / 32 * 32)  // the warps that hold cells
#if POLL_SENTINEL
// sentinels: in a warp's k range of SWCH chunks, one chunk a producer block (its last unit's; a chunk of
// 16-bit h holds two producers' words at NB 4), of the last real row
#define SPP (NB * SLAB_BITS / 8 >= 16 ? NB * SLAB_BITS / 8 / 16 : 1)
#define NSW ((SWCH + SPP - 1) / SPP)
#define SPL ((NSW + 31) / 32)
static_assert(SPL <= 32, "at most 32 sentinels a lane (a bit mask)");
#endif
#define MMA_BATCH 8
static_assert(PC <= 32, "at most 32 poll chunks a thread (a bit mask)");
static_assert(NPOLL <= 32, "at most 32 poll chunks a thread (a bit mask)");

""" + ELEMENT_MATH + r"""
#if MMA
typedef elem_t hs_t;
#else
typedef float hs_t;
#endif
#if SLAB_BITS == 32
typedef float slab_t;
#else
typedef elem_t slab_t;
#endif

__device__ __forceinline__ elem_t from_f32(float f) {
#if ELEM_BITS == 32
    return f;
#elif IS_BF16
    u16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
#else
    u16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
#endif
}

// an h word as the slab holds it (wide_h: the 16-bit value widened, exactly)
__device__ __forceinline__ slab_t to_slab(elem_t hv) {
#if SLAB_BITS == 32 && ELEM_BITS == 16
    return to_f32(hv);
#else
    return hv;
#endif
}

__device__ __forceinline__ uint4 ld_poll(const void* p) {
    uint4 v;
    asm volatile("ld.relaxed.gpu.global.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p) : "memory");
    return v;
}

#if STAMPS
// STAMPS 1: globaltimer ns (one clock for every block: the exchange and the skew compare blocks); 2-4: this
// multiprocessor's clock64 cycles, exact inside a block (globaltimer moves in ~256 ns steps as read on the H200)
__device__ __forceinline__ long long stamp_clock() {
    long long t;
#if STAMPS == 1
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t) :: "memory");
#else
    asm volatile("mov.u64 %0, %%clock64;" : "=l"(t) :: "memory");
#endif
    return t;
}

// thread 0, after a block barrier: step s's "whole h slice valid" (the last warp's) and step s - 1's "h stored"
// (the last warp's), from the warps' own stamps in shared memory (double-buffered by step parity)
__device__ __forceinline__ void write_stamps(long long* st, const long long (*s_stamp)[NT / 32][2], int s, int T) {
    long long valid = 0, stored = 0;
#pragma unroll 1
    for (int w = 0; w < NT / 32; ++w) {
        valid = max(valid, s_stamp[s & 1][w][0]);
        stored = max(stored, s_stamp[(s + 1) & 1][w][1]);
    }
    if (s < T) st[3 * s + 1] = valid;
    if (s > 0) st[3 * (s - 1) + 2] = stored;
}
#endif

__device__ __forceinline__ bool has_poison(uint4 v) {
#if SLAB_BITS == 32
    return (v.x == 0xffffffffu) | (v.y == 0xffffffffu) | (v.z == 0xffffffffu) | (v.w == 0xffffffffu);
#else
    // a 16-bit word all ones (a NaN no GPU computes: its NaNs are 0x7fff / 0x7fc0 ...)
    const u32 w[4] = {v.x, v.y, v.z, v.w};
    bool any = false;
#pragma unroll
    for (int i = 0; i < 4; ++i) any |= ((w[i] & 0xffffu) == 0xffffu) | (w[i] >= 0xffff0000u);
    return any;
#endif
}

#if A_DIRECT
// nonzero iff a 16-bit word of v is all ones (the poison): "has a zero lane" of ~w, (~w - 0x00010001) & w &
// 0x80008000, exact (no borrow crosses a nonzero lane); branch-free, ~3 instructions a word
__device__ __forceinline__ u32 poison_mask(uint4 v) {
    return (((~v.x - 0x00010001u) & v.x) | ((~v.y - 0x00010001u) & v.y) | ((~v.z - 0x00010001u) & v.z)
            | ((~v.w - 0x00010001u) & v.w)) & 0x80008000u;
}
#endif

#if A_DIRECT
// poll slot i of thread tid: its batch row b and first k; false where the slot holds no real row. A warp reads
// its own k slice of h straight into its mma A fragments: lane (g, t) reads 16 bytes of row g + 8 (i & 1) at
// k = slice + 32 (i >> 1) + 8 t, the a0/a2 (a1/a3) words of k chunks 2 (i >> 1) and 2 (i >> 1) + 1 (k permuted
// inside the slice; the B fragments are loaded with the same permutation). (Without A_DIRECT: slot i is chunk
// q = tid + i NT, row q / CPR, k (q % CPR) CE, written inline.)
__device__ __forceinline__ bool poll_slot(int i, int tid, int nrows, int& b, int& k) {
    const int lane = tid & 31;
#if MMA_SWAP
    b = lane >> 2;  // the B operand's 8 columns: row g only
    k = (tid >> 5) * (KH / KSL) + i * 32 + (lane & 3) * 8;
#else
    b = (lane >> 2) + 8 * (i & 1);
    k = (tid >> 5) * (KH / KSL) + (i >> 1) * 32 + (lane & 3) * 8;
#endif
    return b < nrows;
}
#endif

__device__ __forceinline__ int h_index(int b, int k) {
#if MMA
    return b * HROW + k;
#else
    return b * HROW + (k / KPT) * (KPT + 4) + (k % KPT);
#endif
}

#if CLUSTER
__device__ __forceinline__ void cluster_arrive() {
    asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
}

__device__ __forceinline__ void cluster_wait() {
    asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
}

// lanes a 16-byte group of h: HG consecutive units of one row (the cells j = tid + i NT of HG consecutive lanes)
#define HG (16 / (int)sizeof(hs_t))
static_assert(NB % HG == 0, "a block's units are whole 16-byte groups of h");

// every lane of the warp calls it (shuffles): the lane's h value (its cell's, `real` where the cell exists) joins
// its group's 16 bytes, which the group's lanes store into `at` (the group's first unit in this block's buffer)
// of every block of the cluster, CLUSTER / HG blocks a lane (mapa + st.shared::cluster)
__device__ __forceinline__ void push_h(hs_t* at, bool real, hs_t value) {
    const int lane = threadIdx.x & 31;
#if MMA
    const u32 bits = (u32)value;
#else
    const u32 bits = __float_as_uint(value);
#endif
    u32 w[HG];
#pragma unroll
    for (int e = 0; e < HG; ++e) w[e] = __shfl_sync(0xffffffffu, bits, (lane & ~(HG - 1)) + e);
#if MMA
    const uint4 q = make_uint4(w[0] | (w[1] << 16), w[2] | (w[3] << 16), w[4] | (w[5] << 16), w[6] | (w[7] << 16));
#else
    const uint4 q = make_uint4(w[0], w[1], w[2], w[3]);
#endif
    if (!real) return;
    const u32 local = (u32)__cvta_generic_to_shared(at);
#pragma unroll
    for (int m = 0; m < (CLUSTER + HG - 1) / HG; ++m) {
        const u32 rank = (u32)(lane % HG + m * HG);
        if (rank < CLUSTER) {
            u32 remote;
            asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
            asm volatile("st.shared::cluster.v4.u32 [%0], {%1, %2, %3, %4};"
                         :: "r"(remote), "r"(q.x), "r"(q.y), "r"(q.z), "r"(q.w) : "memory");
        }
    }
}

// the value the next product reads of an h: the 16-bit word (mma) or it widened (FFMA), as the slab path reads it
__device__ __forceinline__ hs_t h_value(elem_t hv) {
#if MMA
    return hv;
#else
    return to_f32(hv);
#endif
}
#endif

// one (row, unit)'s h into the user's output (last layer) and, at the last step, into hn and cn (the cluster
// path stores them after its arrive, the others as each cell finishes)
#if IS_LSTM
#define STORE_CN(si, c) (cn[si] = from_f32(c))
#else
#define STORE_CN(si, c) ((void)0)
#endif
#define STORE_OUTPUTS(row, n, hv, c)                                                          \
    do {                                                                                      \
        if ((n) < H) {                                                                        \
            if (is_last) out[t * stride_ot + (row) * stride_ob + (d * H + (n)) * stride_ok] = (hv); \
            if (s == T - 1) {                                                                 \
                const long long si_ = ((long long)(layer * D + d) * B + (row)) * H + (n);     \
                hn[si_] = (hv);                                                               \
                STORE_CN(si_, c);                                                             \
            }                                                                                 \
        }                                                                                     \
    } while (0)

extern "C" __global__ void __launch_bounds__(NT, 1) rnn_persistent_cuda(
    const float* __restrict__ gx, const elem_t* __restrict__ w_hh, slab_t* slab, int* err,
    const elem_t* __restrict__ h0, const elem_t* __restrict__ c0, elem_t* out,
    long long stride_ot, long long stride_ob, long long stride_ok, elem_t* hn, elem_t* cn,
    int T, int B, int H, int layer, int is_last, long long spin_limit, long long* stamps)
{
    extern __shared__ __align__(16) unsigned char smem[];
#if !A_DIRECT
    __shared__ int s_abort;
#endif
#if STAMPS
    // [step parity][warp][0: the warp's h slice valid, 1: the warp's h stores issued], globaltimer ns
    __shared__ long long s_stamp[2][NT / 32][2];
    long long* const my_stamps = stamps + (long long)blockIdx.x * T * 3;  // this layer's [blocks, T, 3]
#endif
    hs_t* const h_buf = (hs_t*)smem;  // CLUSTER: [2][BB][HROW] by step parity
    hs_t* h_s = h_buf;
#if A_DIRECT
    float* const red_base = (float*)smem;  // [2][KSL][BB][RROW]: a step's partial sums, by step parity
#elif MMA && MMA_REGS
    float* red = (float*)(smem + sizeof(hs_t) * HBUF * BB * HROW);
#elif MMA
    elem_t* w_s = (elem_t*)(smem + sizeof(hs_t) * HBUF * BB * HROW);
    float* red = (float*)(smem + sizeof(hs_t) * HBUF * BB * HROW + sizeof(elem_t) * COLS * HROW);
#elif W_SHARED
    float* w_s = (float*)(smem + sizeof(hs_t) * HBUF * BB * HROW);
    float* red = (float*)(smem + sizeof(hs_t) * HBUF * BB * HROW + sizeof(float) * COLS * WROW);
#elif W_REGS
    float* w_s = (float*)(smem + sizeof(hs_t) * HBUF * BB * HROW);
    float* red = (float*)(smem + sizeof(hs_t) * HBUF * BB * HROW + sizeof(float) * COLS * WSROW);
#else
    float* red = (float*)(smem + sizeof(hs_t) * HBUF * BB * HROW);
#endif
    const int tid = threadIdx.x;
#if !A_DIRECT
    if (tid == 0) s_abort = 0;
#endif
    const int unit = blockIdx.x;
    const int group = unit / (D * TILES);
    const int d = (unit / TILES) % D;
    const int n0 = (unit % TILES) * NB;
    const int row0 = group * GROUP_ROWS;
    const int nrows = min(GROUP_ROWS, B - row0);
    const long long RT = (long long)D * HP;
    const long long C = RT * 4;
    const elem_t* w_dir = w_hh + (long long)(layer * D + d) * HP * (HP * 4) + n0 * 4;

#if !A_DIRECT
    // h rows past the batch stay 0 (the MMA reads 16 rows; their results are never stored)
#if CLUSTER
    for (int i = tid; i < HBUF * BB * HROW; i += NT) {
        if (i % (BB * HROW) / HROW >= nrows) h_buf[i] = (hs_t)0;
    }
#else
    for (int i = tid; i < BB * HROW; i += NT) {
        if (i / HROW >= nrows) h_s[i] = (hs_t)0;
    }
#endif
#endif
#if MMA && MMA_REGS
    // a warp per k slice over every column tile: its B fragments (W^T) in registers for the layer, its A
    // fragments (h) read from shared memory once a step (the warp-per-column-tile layout reads W and, once
    // per column tile, h from shared memory every step: ~190 KiB a step at hidden 1024)
    const int lane = tid & 31, warp = tid >> 5;
    const int ks = warp;
#if MMA_SWAP
    // W^T as the A operand: register r of (tile mt, chunk kc) holds column mt 16 + g + 8 (r & 1) at the two k of
    // half r >> 1, k permuted as the B fragments below (poll_slot's permutation)
    u32 aw[MTILES][CPW][4];
#pragma unroll
    for (int mt = 0; mt < MTILES; ++mt)
#pragma unroll
        for (int kc = 0; kc < CPW; ++kc)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int k = ks * (CPW * 16) + (kc >> 1) * 32 + (lane & 3) * 8 + (kc & 1) * 4 + (r >> 1) * 2;
                const elem_t* p = w_dir + (long long)k * (HP * 4) + mt * 16 + (lane >> 2) + 8 * (r & 1);
                aw[mt][kc][r] = (u32)p[0] | ((u32)p[HP * 4] << 16);
            }
#else
    u32 bw[NTILES][CPW][2];
#pragma unroll
    for (int nt = 0; nt < NTILES; ++nt)
#pragma unroll
        for (int kc = 0; kc < CPW; ++kc)
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
#if A_DIRECT
                // chunk kc's logical k 2t + 8 hf + {0, 1} at slice + 32 (kc / 2) + 8 t + 4 (kc % 2) + 2 hf + {0, 1}
                // (poll_slot's permutation)
                const int k = ks * (CPW * 16) + (kc >> 1) * 32 + (lane & 3) * 8 + (kc & 1) * 4 + hf * 2;
#else
                const int k = (ks * CPW + kc) * 16 + hf * 8 + (lane & 3) * 2;
#endif
                const elem_t* p = w_dir + (long long)k * (HP * 4) + nt * 8 + (lane >> 2);
                bw[nt][kc][hf] = (u32)p[0] | ((u32)p[HP * 4] << 16);
            }
#endif
#elif MMA
    // 16-byte loads along a row's columns, several in flight, transposed into w_s (v15 loaded one 2-byte word
    // an iteration: ~100 dependent round trips a launch)
#pragma unroll 8
    for (int i = tid; i < KH * (COLS / 8); i += NT) {
        const int k = i / (COLS / 8), c = (i % (COLS / 8)) * 8;
        const uint4 q = __ldg((const uint4*)(w_dir + (long long)k * (HP * 4) + c));
        const u32 ww[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            w_s[(c + 2 * e) * HROW + k] = (elem_t)(ww[e] & 0xffffu);
            w_s[(c + 2 * e + 1) * HROW + k] = (elem_t)(ww[e] >> 16);
        }
    }
    const int lane = tid & 31, warp = tid >> 5;
    const int ks = warp % KSL;
    const int nt = warp / KSL;  // one m tile: BB == 16; MMA_TPW > 1: the warp's tile group
#elif W_SHARED
    // W^T columns in shared memory as fp32 [COLS][KH + 4] (rows 4 words apart: a quarter warp's float4 reads of
    // consecutive columns hit distinct banks), for slices past the registers
    const int col = tid % COLS, ks = tid / COLS;
#pragma unroll 8
    for (int i = tid; i < KH * COLS; i += NT) {
        const int k = i / COLS, c = i % COLS;
        w_s[c * WROW + k] = to_f32(w_dir[(long long)k * (HP * 4) + c]);
    }
#elif W_REGS
    const int col = tid % COLS, ks = tid / COLS;
    float w[W_REGS];
#pragma unroll
    for (int i = 0; i < W_REGS; ++i) w[i] = to_f32(w_dir[(long long)(ks * KPT + i) * (HP * 4) + col]);
#pragma unroll 8
    for (int i = tid; i < COLS * KSL * WS_K; i += NT) {
        const int c = i % COLS, ks2 = i / COLS / WS_K, kk = i / COLS % WS_K;
        w_s[c * WSROW + ks2 * WS_K + kk] = to_f32(w_dir[(long long)(ks2 * KPT + W_REGS + kk) * (HP * 4) + c]);
    }
#elif FCOLS > 1
    // a thread: columns col .. col + FCOLS - 1 (lanes of a warp: consecutive groups, one k slice: h reads broadcast)
    const int col = (tid % (COLS / FCOLS)) * FCOLS, ks = tid / (COLS / FCOLS);
    float w[FCOLS][KPT];
#pragma unroll
    for (int i = 0; i < KPT; ++i)
#pragma unroll
        for (int c = 0; c < FCOLS; ++c) w[c][i] = to_f32(w_dir[(long long)(ks * KPT + i) * (HP * 4) + col + c]);
#else
    const int col = tid % COLS, ks = tid / COLS;
    float w[KPT];
#pragma unroll
    for (int i = 0; i < KPT; ++i) w[i] = to_f32(w_dir[(long long)(ks * KPT + i) * (HP * 4) + col]);
#endif

    // the cells this thread owns: (row b, unit u), j = tid + i NT
    float h_st[CPT], c_st[CPT];
    const int init_slot = d == 0 ? 0 : T + 1;
#pragma unroll
    for (int i = 0; i < CPT; ++i) {
        const int j = tid + i * NT, b = j / NB, n = n0 + j % NB;
        h_st[i] = 0.0f;
        c_st[i] = 0.0f;
        if (j < CELLS && b < nrows) {
#if HAS_STATE
            if (n < H) {
                const long long si = ((long long)(layer * D + d) * B + row0 + b) * H + n;
                h_st[i] = to_f32(h0[si]);
#if IS_LSTM
                c_st[i] = to_f32(c0[si]);
#endif
            }
#endif
            slab[((long long)init_slot * B + row0 + b) * RT + d * HP + n] = to_slab(from_f32(h_st[i]));
        }
    }
#if CLUSTER
    // every block of the cluster has started (its shared memory may be written) and zeroed its padding rows; then
    // each block's h0 into buffer 0 of every block, which step 0's wait finds complete
    cluster_arrive();
    cluster_wait();
#pragma unroll
    for (int i = 0; i < CPT; ++i) {
        const int j = tid + i * NT, b = j / NB, u = j % NB;
        push_h(h_buf + h_index(b, n0 + (u & ~(HG - 1))), j < CELLS && b < nrows, h_value(from_f32(h_st[i])));
    }
    cluster_arrive();
#else
    __syncthreads();
#endif

#if POLL_SPIN
    int spin_wait = POLL_DELAY * SPIN_CYCLES_PER_NS;  // this thread's first-read delay, cycles (POLL_SPIN 2: adapted)
#endif
    for (int s = 0; s < T; ++s) {
        const int t = d == 0 ? s : T - 1 - s;
        const long long read_slot = d == 0 ? t : t + 2;
#if STAMPS
        if (tid == 0) my_stamps[3 * s] = stamp_clock();  // (a) the step's wait starts (before the gx loads)
#endif
        // this step's projection: no other block's work, so in flight during the wait
        float4 g[CPT];
#pragma unroll
        for (int i = 0; i < CPT; ++i) {
            const int j = tid + i * NT, b = j / NB, n = n0 + j % NB;
            g[i] = make_float4(0.f, 0.f, 0.f, 0.f);
            if (j < CELLS && b < nrows)
                g[i] = __ldg((const float4*)(gx + ((long long)t * B + row0 + b) * C + (d * HP + n) * 4));
        }
#if CLUSTER
        // the previous h is in this block's shared memory once every block of the cluster has arrived (each pushed
        // its slice there before; release / acquire at cluster scope): no polls, no L2 round trip. The wait also
        // orders this step's partial sums after every thread's cell of the previous step (barrier 1's other job)
        cluster_wait();
        h_s = h_buf + (s & 1) * (BB * HROW);
#else
        // wait for the previous h: every thread its own 16-byte chunks, all in flight; the chunks still holding
        // poison are re-read together, so a wait costs one L2 round trip after the data is there, not one a
        // chunk (v15 re-read them one after another: 4-8 round trips a step at 16 rows)
        const slab_t* src = slab + (read_slot * B + row0) * RT + d * HP;
        uint4 v[NPOLL];
        u32 pending = 0;
#if A_DIRECT
        // slot i at a compile-time offset from the lane's first (poll_slot): no address arithmetic in the wait
        const slab_t* const pbase = src + (long long)((tid & 31) >> 2) * RT + (tid >> 5) * (KH / KSL) + (tid & 3) * 8;
#if MMA_SWAP
#define POLL_PTR(i) (pbase + (i) * 32)
#else
#define POLL_PTR(i) (pbase + ((i) & 1) * 8 * RT + ((i) >> 1) * 32)
#endif
#else
#define POLL_PTR(i) (src + b * RT + k)
#endif
#if !A_DIRECT && POLL_SENTINEL
        // slot i of a lane: chunk q = lane + 32 i of its warp's k range, every row (the producers its sentinels
        // watch)
#define SLOT(i) const int q = (tid & 31) + 32 * (i), b = q / WCH, k = ((tid >> 5) * WCH + q % WCH) * CE
#define SLOT_REAL (q < BB * WCH && b < nrows && k < KH)
#elif !A_DIRECT
#define SLOT(i) const int q = tid + (i) * NT, b = q / CPR, k = (q % CPR) * CE
#define SLOT_REAL (q < NCH && b < nrows)
#endif
        bool gave_up = false;
        long long spins = 1;
#if POLL_SPIN
        // the first read after spin_wait cycles of clock64 (no memory traffic; __nanosleep's pause is only
        // guaranteed to be in [0, 2 t])
        const long long t0 = clock64();
        while (clock64() - t0 < spin_wait) {
        }
#if POLL_SPIN == 2
        int issued_before = spin_wait, issued_last = spin_wait;  // the last two read rounds' issue, cycles after t0
#endif
#elif POLL_DELAY
        // the first read later: a read before the others' h is there only costs this multiprocessor's L2
        // bandwidth (a round of h is 16-32 KiB a block at 8-16 rows) ahead of the read that finds it
        __nanosleep(POLL_DELAY);
#endif
#if POLL_SENTINEL
        {
            // first only the sentinels of the warp's k range (one chunk a producer block, in the last real row,
            // which SENTINEL_LAST makes each producer store last), until none is poison: a round of the wait
            // reads 1 / rows of the bytes. A hint only: the reads below still check every word of the slice and
            // re-read the chunks that hold poison; nothing orders the sentinel before the other words
            const int lane = tid & 31, wc0 = (tid >> 5) * SWCH;
            const slab_t* const srow = src + (long long)(nrows - 1) * RT;
            uint4 sv[SPL];
            u32 spend = 0;
#pragma unroll
            for (int m = 0; m < SPL; ++m) {
                const int c = wc0 + min((lane + 32 * m) * SPP + SPP - 1, SWCH - 1);
                sv[m] = make_uint4(0u, 0u, 0u, 0u);
                if (lane + 32 * m < NSW && c < CPR) {
                    sv[m] = ld_poll(srow + c * CE);
                    spend |= 1u << m;
                }
            }
            while (true) {
                u32 sbad = 0;
#pragma unroll
                for (int m = 0; m < SPL; ++m)
                    if (((spend >> m) & 1u) && has_poison(sv[m])) sbad |= 1u << m;
                if (!__any_sync(0xffffffffu, sbad != 0u)) break;  // the warp's whole range: uniform
                if (spins >= spin_limit) { gave_up = true; break; }  // the reads below find poison: no wait
#if POLL_SLEEP
                __nanosleep(POLL_SLEEP);
#endif
#pragma unroll
                for (int m = 0; m < SPL; ++m) {
                    const int c = wc0 + min((lane + 32 * m) * SPP + SPP - 1, SWCH - 1);
                    if ((sbad >> m) & 1u) sv[m] = ld_poll(srow + c * CE);
                }
                ++spins;
            }
        }
#endif
#pragma unroll
        for (int i = 0; i < NPOLL; ++i) {
#if A_DIRECT
            int b, k;
            v[i] = make_uint4(0u, 0u, 0u, 0u);  // rows past the batch multiply as 0
            if (poll_slot(i, tid, nrows, b, k)) {
#else
            SLOT(i);
            if (SLOT_REAL) {
#endif
                v[i] = ld_poll(POLL_PTR(i));
                pending |= 1u << i;
            }
        }
        while (true) {
            u32 bad = 0;
#if A_DIRECT
#pragma unroll
            for (int i = 0; i < NPOLL; ++i) bad |= (u32)(poison_mask(v[i]) != 0u) << i;  // no real row: v[i] 0
#else
#pragma unroll
            for (int i = 0; i < NPOLL; ++i)
                if (((pending >> i) & 1u) && has_poison(v[i])) bad |= 1u << i;
#endif
            if (bad == 0) break;
            if (spins >= spin_limit) { gave_up = true; break; }
#if POLL_SLEEP
            __nanosleep(POLL_SLEEP);  // fewer re-reads while the others compute (every re-read is L2 traffic)
#endif
#if POLL_SPIN == 2
            issued_before = issued_last;
            issued_last = (int)(clock64() - t0);
#endif
#pragma unroll
            for (int i = 0; i < NPOLL; ++i) {
#if !A_DIRECT
                SLOT(i);
#endif
                if ((bad >> i) & 1u) v[i] = ld_poll(POLL_PTR(i));
            }
            ++spins;
        }
#if POLL_SPIN == 2
        // adapt the delay to when h arrives: a first read that found all of this thread's chunks may have come
        // later than needed (1/16 earlier next step); else h landed between the last failed read and the one that
        // found it: a quarter of the way towards their midpoint. Each thread alone, from its own reads
        if (spins == 1)
            spin_wait -= (spin_wait >> 4) + 8;
        else
            spin_wait += (((issued_before + issued_last) >> 1) - spin_wait) >> 2;
        spin_wait = min(max(spin_wait, 0), SPIN_MAX);
#endif
#if STAMPS
        __syncwarp();
        if ((tid & 31) == 0) s_stamp[s & 1][tid >> 5][0] = stamp_clock();  // the warp's part of h is valid
#endif
#if A_DIRECT
        if (gave_up) atomicMax(err, 1);  // the whole block leaves at barrier 2 (its OR)
        float* const red = red_base + (s & 1) * RED_SIZE;  // a warp may run a step ahead of another's cell
#else
        if (!gave_up) {
#pragma unroll
            for (int i = 0; i < NPOLL; ++i) {
                SLOT(i);
                if ((pending >> i) & 1u) {
#if MMA || SLAB_BITS == 32
                    *(uint4*)(h_s + h_index(b, k)) = v[i];
#else
                    const u32 ww[4] = {v[i].x, v[i].y, v[i].z, v[i].w};
                    float f[8];
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        f[2 * e] = to_f32((elem_t)(ww[e] & 0xffffu));
                        f[2 * e + 1] = to_f32((elem_t)(ww[e] >> 16));
                    }
                    *(float4*)(h_s + h_index(b, k)) = make_float4(f[0], f[1], f[2], f[3]);
                    *(float4*)(h_s + h_index(b, k + 4)) = make_float4(f[4], f[5], f[6], f[7]);
#endif
                }
            }
        }
        if (gave_up) {
            atomicMax(err, 1);
            s_abort = 1;
        }
        __syncthreads();  // barrier 1: h is in shared memory
        if (s_abort) return;  // (a barrier's OR here instead measured 1.5-4 % slower on the FFMA plans, v25)
#if STAMPS
        if (tid == 0) write_stamps(my_stamps, s_stamp, s, T);
#endif
#endif
#endif  // CLUSTER

#if MMA_SWAP
        {
            // W^T (A, registers) times h (B, straight from the poll): chunk kc's b0 / b1 are the words x / y (kc
            // even) or z / w (odd) of the lane's 16 bytes of group kc / 2. C: column mt 16 + g (+ 8), rows 2t, 2t + 1
            float acc[MTILES][4];
#pragma unroll
            for (int mt = 0; mt < MTILES; ++mt) acc[mt][0] = acc[mt][1] = acc[mt][2] = acc[mt][3] = 0.f;
#pragma unroll
            for (int kc = 0; kc < CPW; ++kc) {
                const uint4 q = v[kc >> 1];
                const u32 b0 = (kc & 1) ? q.z : q.x, b1 = (kc & 1) ? q.w : q.y;
#pragma unroll
                for (int mt = 0; mt < MTILES; ++mt) {
#if IS_BF16
                    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
#else
                    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
#endif
                        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                        : "+f"(acc[mt][0]), "+f"(acc[mt][1]), "+f"(acc[mt][2]), "+f"(acc[mt][3])
                        : "r"(aw[mt][kc][0]), "r"(aw[mt][kc][1]), "r"(aw[mt][kc][2]), "r"(aw[mt][kc][3]), "r"(b0),
                          "r"(b1));
                }
            }
#pragma unroll
            for (int mt = 0; mt < MTILES; ++mt) {
                float* r = red + (ks * BB + 2 * (lane & 3)) * RROW + mt * 16 + (lane >> 2);
                r[0] = acc[mt][0];
                r[RROW] = acc[mt][1];
                r[8] = acc[mt][2];
                r[RROW + 8] = acc[mt][3];
            }
        }
#elif MMA && MMA_REGS
        {
            float acc[NTILES][4];
#pragma unroll
            for (int nt = 0; nt < NTILES; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
            u32 af[CPW][4];
#if A_DIRECT
            // a0/a2 from row g's 16 bytes, a1/a3 from row g + 8's (poll_slot)
#pragma unroll
            for (int kc = 0; kc < CPW; ++kc) {
                const uint4 lo = v[2 * (kc >> 1)], hi = v[2 * (kc >> 1) + 1];
                af[kc][0] = (kc & 1) ? lo.z : lo.x;
                af[kc][2] = (kc & 1) ? lo.w : lo.y;
                af[kc][1] = (kc & 1) ? hi.z : hi.x;
                af[kc][3] = (kc & 1) ? hi.w : hi.y;
            }
#else
            const u32 a_base = (u32)__cvta_generic_to_shared(h_s + (lane & 15) * HROW + (lane >> 4) * 8
                                                             + ks * (KH / KSL));
#pragma unroll
            for (int kc = 0; kc < CPW; ++kc)
                asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                             : "=r"(af[kc][0]), "=r"(af[kc][1]), "=r"(af[kc][2]), "=r"(af[kc][3])
                             : "r"(a_base + kc * 32) : "memory");
#endif
#pragma unroll
            for (int kc = 0; kc < CPW; ++kc) {
#pragma unroll
                for (int nt = 0; nt < NTILES; ++nt) {
#if IS_BF16
                    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
#else
                    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
#endif
                        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                        : "+f"(acc[nt][0]), "+f"(acc[nt][1]), "+f"(acc[nt][2]), "+f"(acc[nt][3])
                        : "r"(af[kc][0]), "r"(af[kc][1]), "r"(af[kc][2]), "r"(af[kc][3]), "r"(bw[nt][kc][0]),
                          "r"(bw[nt][kc][1]));
                }
            }
#pragma unroll
            for (int nt = 0; nt < NTILES; ++nt) {
                float* r = red + (ks * BB + (lane >> 2)) * RROW + nt * 8 + (lane & 3) * 2;
                *(float2*)r = make_float2(acc[nt][0], acc[nt][1]);
                *(float2*)(r + 8 * RROW) = make_float2(acc[nt][2], acc[nt][3]);
            }
        }
#elif MMA && MMA_TPW > 1
        {
            // the warp's MMA_TPW column tiles over its k slice: an A fragment a chunk, used for every tile of the group
            float acc[MMA_TPW][4];
#pragma unroll
            for (int a = 0; a < MMA_TPW; ++a) acc[a][0] = acc[a][1] = acc[a][2] = acc[a][3] = 0.f;
            const int kbeg = ks * (KH / KSL);
            const u32 a_base = (u32)__cvta_generic_to_shared(h_s + (lane & 15) * HROW + (lane >> 4) * 8 + kbeg);
            const elem_t* b_base = w_s + (nt * MMA_TPW * 8 + (lane >> 2)) * HROW + (lane & 3) * 2 + kbeg;
#pragma unroll
            for (int kc = 0; kc < KH / KSL / 16; ++kc) {
                u32 af[4], bf[MMA_TPW][2];
                asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                             : "=r"(af[0]), "=r"(af[1]), "=r"(af[2]), "=r"(af[3]) : "r"(a_base + kc * 32) : "memory");
#pragma unroll
                for (int tw = 0; tw < MMA_TPW; ++tw) {
                    bf[tw][0] = *(const u32*)(b_base + tw * 8 * HROW + kc * 16);
                    bf[tw][1] = *(const u32*)(b_base + tw * 8 * HROW + kc * 16 + 8);
                }
#pragma unroll
                for (int tw = 0; tw < MMA_TPW; ++tw) {
#if IS_BF16
                    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
#else
                    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
#endif
                        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                        : "+f"(acc[tw][0]), "+f"(acc[tw][1]), "+f"(acc[tw][2]), "+f"(acc[tw][3])
                        : "r"(af[0]), "r"(af[1]), "r"(af[2]), "r"(af[3]), "r"(bf[tw][0]), "r"(bf[tw][1]));
                }
            }
#pragma unroll
            for (int tw = 0; tw < MMA_TPW; ++tw) {
                float* r = red + (ks * BB + (lane >> 2)) * RROW + (nt * MMA_TPW + tw) * 8 + (lane & 3) * 2;
                *(float2*)r = make_float2(acc[tw][0], acc[tw][1]);
                *(float2*)(r + 8 * RROW) = make_float2(acc[tw][2], acc[tw][3]);
            }
        }
#elif MMA
        {
            // fragments of MMA_BATCH k chunks loaded before their mma's (all loads in flight together), four
            // accumulators (v15 issued load, mma, load, mma: a shared-memory latency every chunk)
            float acc[4][4];
#pragma unroll
            for (int a = 0; a < 4; ++a) acc[a][0] = acc[a][1] = acc[a][2] = acc[a][3] = 0.f;
            const int kbeg = ks * (KH / KSL);
            const u32 a_base = (u32)__cvta_generic_to_shared(h_s + (lane & 15) * HROW + (lane >> 4) * 8 + kbeg);
            const elem_t* b_base = w_s + (nt * 8 + (lane >> 2)) * HROW + (lane & 3) * 2 + kbeg;
#pragma unroll
            for (int k0 = 0; k0 < KH / KSL / 16; k0 += MMA_BATCH) {
                u32 af[MMA_BATCH][4], bf[MMA_BATCH][2];
#pragma unroll
                for (int j = 0; j < MMA_BATCH; ++j) {
                    if (k0 + j < KH / KSL / 16) {
                        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                                     : "=r"(af[j][0]), "=r"(af[j][1]), "=r"(af[j][2]), "=r"(af[j][3])
                                     : "r"(a_base + (k0 + j) * 32) : "memory");
                        bf[j][0] = *(const u32*)(b_base + (k0 + j) * 16);
                        bf[j][1] = *(const u32*)(b_base + (k0 + j) * 16 + 8);
                    }
                }
#pragma unroll
                for (int j = 0; j < MMA_BATCH; ++j) {
                    if (k0 + j < KH / KSL / 16) {
                        float* c = acc[j & 3];
#if IS_BF16
                        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
#else
                        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
#endif
                            "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                            : "r"(af[j][0]), "r"(af[j][1]), "r"(af[j][2]), "r"(af[j][3]), "r"(bf[j][0]),
                              "r"(bf[j][1]));
                    }
                }
            }
            float* r = red + (ks * BB + (lane >> 2)) * RROW + nt * 8 + (lane & 3) * 2;
            *(float2*)r = make_float2((acc[0][0] + acc[1][0]) + (acc[2][0] + acc[3][0]),
                                      (acc[0][1] + acc[1][1]) + (acc[2][1] + acc[3][1]));
            *(float2*)(r + 8 * RROW) = make_float2((acc[0][2] + acc[1][2]) + (acc[2][2] + acc[3][2]),
                                                   (acc[0][3] + acc[1][3]) + (acc[2][3] + acc[3][3]));
        }
#elif W_SHARED
        {
            // every float4 of the W column read once a step and used for every row (h reads: broadcasts)
            const float* wcol = w_s + col * WROW + ks * KPT;
            const float* hbase = h_s + ks * (KPT + 4);
            float acc[BB][2];
#pragma unroll
            for (int b = 0; b < BB; ++b) acc[b][0] = acc[b][1] = 0.f;
#pragma unroll 4
            for (int i = 0; i < KPT / 4; ++i) {
                const float4 wv = *(const float4*)(wcol + 4 * i);
#pragma unroll
                for (int b = 0; b < BB; ++b) {
                    if (b < nrows) {
                        const float4 hv = *(const float4*)(hbase + b * HROW + 4 * i);
                        acc[b][0] = fmaf(hv.x, wv.x, acc[b][0]);
                        acc[b][1] = fmaf(hv.y, wv.y, acc[b][1]);
                        acc[b][0] = fmaf(hv.z, wv.z, acc[b][0]);
                        acc[b][1] = fmaf(hv.w, wv.w, acc[b][1]);
                    }
                }
            }
#pragma unroll
            for (int b = 0; b < BB; ++b)
                if (b < nrows) red[(ks * BB + b) * RROW + col] = acc[b][0] + acc[b][1];
        }
#elif W_REGS
        {
            // the register part of the k slice, then the shared-memory part (each float4 of W read once a step and
            // used for every row); h reads are broadcasts
            const float* wcol = w_s + col * WSROW + ks * WS_K;
            const float* hbase = h_s + ks * (KPT + 4);
            float acc[BB][WACC];  // 4 chains at 1-2 rows (a row's FFMAs are a dependent chain)
#pragma unroll
            for (int b = 0; b < BB; ++b)
#pragma unroll
                for (int a = 0; a < WACC; ++a) acc[b][a] = 0.f;
#pragma unroll
            for (int i = 0; i < W_REGS / 4; ++i) {
#pragma unroll
                for (int b = 0; b < BB; ++b) {
                    if (b < nrows) {
                        const float4 hv = *(const float4*)(hbase + b * HROW + 4 * i);
                        acc[b][0] = fmaf(hv.x, w[4 * i], acc[b][0]);
                        acc[b][1] = fmaf(hv.y, w[4 * i + 1], acc[b][1]);
                        acc[b][2 % WACC] = fmaf(hv.z, w[4 * i + 2], acc[b][2 % WACC]);
                        acc[b][3 % WACC] = fmaf(hv.w, w[4 * i + 3], acc[b][3 % WACC]);
                    }
                }
            }
#pragma unroll 4
            for (int i = 0; i < WS_K / 4; ++i) {
                const float4 wv = *(const float4*)(wcol + 4 * i);
#pragma unroll
                for (int b = 0; b < BB; ++b) {
                    if (b < nrows) {
                        const float4 hv = *(const float4*)(hbase + b * HROW + W_REGS + 4 * i);
                        acc[b][0] = fmaf(hv.x, wv.x, acc[b][0]);
                        acc[b][1] = fmaf(hv.y, wv.y, acc[b][1]);
                        acc[b][2 % WACC] = fmaf(hv.z, wv.z, acc[b][2 % WACC]);
                        acc[b][3 % WACC] = fmaf(hv.w, wv.w, acc[b][3 % WACC]);
                    }
                }
            }
#pragma unroll
            for (int b = 0; b < BB; ++b)
                if (b < nrows)
                    red[(ks * BB + b) * RROW + col] = WACC == 4
                        ? (acc[b][0] + acc[b][1]) + (acc[b][2 % WACC] + acc[b][3 % WACC]) : acc[b][0] + acc[b][1];
        }
#elif FCOLS > 1
#pragma unroll 1
        for (int b = 0; b < nrows; ++b) {
            const float4* hp = (const float4*)(h_s + b * HROW + ks * (KPT + 4));
            float a[FCOLS][2];
#pragma unroll
            for (int c = 0; c < FCOLS; ++c) a[c][0] = a[c][1] = 0.f;
#pragma unroll
            for (int i = 0; i < KPT / 4; ++i) {
                const float4 hv = hp[i];
#pragma unroll
                for (int c = 0; c < FCOLS; ++c) {
                    a[c][0] = fmaf(hv.x, w[c][4 * i], a[c][0]);
                    a[c][1] = fmaf(hv.y, w[c][4 * i + 1], a[c][1]);
                    a[c][0] = fmaf(hv.z, w[c][4 * i + 2], a[c][0]);
                    a[c][1] = fmaf(hv.w, w[c][4 * i + 3], a[c][1]);
                }
            }
            float* const r = red + (ks * BB + b) * RROW + col;
#if FCOLS == 4
            *(float4*)r = make_float4(a[0][0] + a[0][1], a[1][0] + a[1][1], a[2][0] + a[2][1], a[3][0] + a[3][1]);
#else
            *(float2*)r = make_float2(a[0][0] + a[0][1], a[1][0] + a[1][1]);
#endif
        }
#else
#pragma unroll 1
        for (int b = 0; b < nrows; ++b) {
            const float4* hp = (const float4*)(h_s + b * HROW + ks * (KPT + 4));
            float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma unroll
            for (int i = 0; i < KPT / 4; ++i) {
                const float4 hv = hp[i];
                a0 = fmaf(hv.x, w[4 * i], a0);
                a1 = fmaf(hv.y, w[4 * i + 1], a1);
                a2 = fmaf(hv.z, w[4 * i + 2], a2);
                a3 = fmaf(hv.w, w[4 * i + 3], a3);
            }
            red[(ks * BB + b) * RROW + col] = (a0 + a1) + (a2 + a3);
        }
#endif
#if STAMPS == 2
        __syncwarp();
        if ((tid & 31) == 0) s_stamp[s & 1][tid >> 5][1] = stamp_clock();  // (c) in mode 2: the warp's product is done
#endif
#if A_DIRECT
        // barrier 2: the partial sums are in shared memory. A wait that gave up (its product was garbage, never
        // stored) makes the whole block leave here: the barrier's OR is the flag, no shared-memory word read after
        // it on every step (v25)
        if (__syncthreads_or(gave_up)) return;
#else
        __syncthreads();  // barrier 2: the partial sums are in shared memory
#endif
#if STAMPS == 3
        // (c) in mode 3: past barrier 2, before thread 0's write_stamps below (its bookkeeping is not the step's)
        if ((tid & 31) == 0) s_stamp[s & 1][tid >> 5][1] = stamp_clock();
#endif
#if A_DIRECT
#if STAMPS
        if (tid == 0) write_stamps(my_stamps, s_stamp, s, T);
#endif
#endif

#if SENTINEL_LAST
        u32 deferred = 0;  // the cells of the sentinel row (the last real one): stored after the others
        elem_t h_last[CPT];
#endif
#if CLUSTER
        elem_t h_new[CPT];  // pushed to the cluster first, then stored to global memory after the arrive
#pragma unroll
        for (int i = 0; i < CPT; ++i) h_new[i] = (elem_t)0;
#endif
#pragma unroll
        for (int i = 0; i < CPT; ++i) {
            const int j = tid + i * NT, b = j / NB, u = j % NB, n = n0 + u;
            if (j < CELLS && b < nrows) {
                float4 p = g[i];
#pragma unroll
                for (int k2 = 0; k2 < KSL; ++k2) {
                    const float4 r = *(const float4*)(red + (k2 * BB + b) * RROW + u * 4);
                    p.x += r.x; p.y += r.y; p.z += r.z; p.w += r.w;
                }
                float h;
#if IS_LSTM
                const float c = sigmoid_f(p.y) * c_st[i] + sigmoid_f(p.x) * tanh_f(p.z);
                h = sigmoid_f(p.w) * tanh_f(c);
                c_st[i] = c;
#else
                const float z = sigmoid_f(p.y);
                const float nn = tanh_f(p.w + sigmoid_f(p.x) * p.z);
                h = (1.0f - z) * nn + z * h_st[i];
#endif
                h_st[i] = h;
                const int row = row0 + b;
                const elem_t hv = from_f32(h);
#if CLUSTER
                h_new[i] = hv;
#elif SENTINEL_LAST
                if (b == nrows - 1) {
                    h_last[i] = hv;
                    deferred |= 1u << i;
                } else {
                    slab[((long long)(t + 1) * B + row) * RT + d * HP + n] = to_slab(hv);  // the word is the flag
                }
#else
                slab[((long long)(t + 1) * B + row) * RT + d * HP + n] = to_slab(hv);  // the word is the flag
#endif
#if !CLUSTER
                STORE_OUTPUTS(row, n, hv, c_st[i]);
#endif
            }
        }
#if CLUSTER
        if (s < T - 1) {  // the last step's h is read by no block
#pragma unroll
            for (int i = 0; i < CPT; ++i) {
                const int j = tid + i * NT, b = j / NB, u = j % NB;
                push_h(h_buf + ((s + 1) & 1) * (BB * HROW) + h_index(b, n0 + (u & ~(HG - 1))), j < CELLS && b < nrows,
                       h_value(h_new[i]));
            }
            cluster_arrive();
        }
        // the global stores, which nobody waits on (the next layer's GEMM, the user's output), after the arrive:
        // they overlap the other blocks' cells and this block's next wait
#pragma unroll
        for (int i = 0; i < CPT; ++i) {
            const int j = tid + i * NT, b = j / NB, n = n0 + j % NB;
            if (j < CELLS && b < nrows) {
                const int row = row0 + b;
                const elem_t hv = h_new[i];
                slab[((long long)(t + 1) * B + row) * RT + d * HP + n] = hv;
                STORE_OUTPUTS(row, n, hv, c_st[i]);
            }
        }
#endif
#if SENTINEL_LAST
        // the warps that hold cells meet (named barrier 1) once every other row's h store is issued, then store
        // the sentinel row: "sentinel valid" becomes a better predictor that the rest is there. Still no order a
        // consumer may rely on (relaxed stores to different L2 slices): the poison check decides
        asm volatile("bar.sync 1, %0;" :: "n"(CELL_THREADS) : "memory");
#pragma unroll
        for (int i = 0; i < CPT; ++i) {
            const int j = tid + i * NT, n = n0 + j % NB;
            if ((deferred >> i) & 1u)
                slab[((long long)(t + 1) * B + row0 + nrows - 1) * RT + d * HP + n] = to_slab(h_last[i]);
        }
#endif
#if STAMPS == 1 || STAMPS == 4
        __syncwarp();
        if ((tid & 31) == 0) s_stamp[s & 1][tid >> 5][1] = stamp_clock();  // the warp's h stores are issued
#endif
    }
#if STAMPS
    __syncthreads();
    if (tid == 0) write_stamps(my_stamps, s_stamp, T, T);  // (c) of the last step (no step T: its (b) is not kept)
#endif
}
"""
