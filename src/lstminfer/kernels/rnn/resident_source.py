"""CUDA C++ source of the resident streaming kernel (``rnn_resident``), compiled at run time by NVRTC.

Launched once per streaming session, it stays on the GPU and runs one command after another (resident.py is the
host side; docs/fused_kernel.md, "The resident streaming kernel", has the protocol and its reasons):

* **Commands** come through mapped pinned host memory (``ctl``, int32 words): the host writes the command, its
  step count and the chunk, then the sequence word ``ctl[CTL_SEQ]`` last.  Only block 0 reads host memory
  for them (``ld.acquire.sys``, ``__nanosleep(POLL_SLEEP)`` between two reads), copies the chunk into a device
  staging buffer and broadcasts the command through device words (``st.release.gpu``), which the other blocks
  poll in L2: one PCIe reader, not G.
* **A block** owns NB hidden units of every layer: their W_ih and W_hh rows (PyTorch gate order; LSTM i, f, g,
  o; GRU r, z, n) and biases in shared memory for the kernel's lifetime, their h and c in shared memory.
* **Between blocks** h travels through ``xch[L][2][B][H]``: 64-bit words {fp32 bits, uint32 step tag} stored
  and polled as one access, a ring of two slots a layer (slot = tag & 1).  The reader waits for the tag it
  expects; a writer can only reuse a slot after every block has read it (writing step s + 2 needs every
  block's step s + 1, which each wrote after reading step s).  No poison refill: the kernel never ends.
* **Outputs** (the last layer's h for every step, fp32; h and c of every layer after the chunk) are written
  straight into mapped pinned host memory; every thread then fences (``__threadfence_system``), block by block
  an arrival counter in device memory counts, and the last block to arrive fences again and writes the
  command's sequence number into ``ctl[CTL_DONE]``, which the host spins on.
* **Commands**: STEP (T steps of the staged chunk), LOAD (h/c of every layer from the host's state buffer;
  the first command after a launch), STOP.  No command for ``idle_ns``: block 0 tells the others to leave,
  writes ``CTL_STATUS = ST_IDLE`` and the kernel ends (the host relaunches it on the next command).
* **A wait that gives up** (a block's h not there after ``spin_ns``) writes which block waited for which word
  into ``ctl`` (the first such block only), ``CTL_STATUS = ST_STALLED``, and the block leaves; the others give
  up in turn.  The host raises KernelStalled: never wrong numbers.

Math: fp32 accumulation (FFMA; 16-bit weights converted as they are read), h and c in fp32, the activations of
cuda_source.py (``ex2.approx``/``rcp.approx`` with FAST).  Sizes are compile-time constants (#defines that
resident.py puts in front): IS_LSTM, NL, B, IN, H, NB, G, NT, KIN, KMAX, ELEM_BITS, IS_BF16, FAST.
"""

from .cuda_source import ELEMENT_MATH

SOURCE = r"""
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define NGATE (IS_LSTM ? 4 : 3)
#define ROWS (NGATE * NB)
#define NWARPS (NT / 32)
#define CELLS (B * NB)
#define PB 4

// ctl: int32 words in mapped pinned host memory (resident.py names the same offsets)
#define CTL_SEQ 0
#define CTL_CMD 1
#define CTL_T 2
#define CTL_DONE 32
#define CTL_STATUS 33
#define CTL_ERR_BLOCK 34
#define CTL_ERR_LAYER 35
#define CTL_ERR_STEP 36
#define CTL_ERR_WHAT 37
#define CTL_ERR_ROW 38
#define CTL_ERR_UNIT 39
#define CTL_ERR_TAG 40
#define CTL_ERR_SEEN 41
#define CTL_STARTED 42
#define CMD_STEP 1
#define CMD_LOAD 2
#define CMD_STOP 3
#define CMD_EXIT 4
#define ST_IDLE 1
#define ST_STOPPED 2
#define ST_STALLED 3
// dev: u32 words in device memory
#define DEV_SEQ 0
#define DEV_CMD 1
#define DEV_T 2
#define DEV_HSEQ 3
#define DEV_ARRIVE 8
#define DEV_ERR 16

""" + ELEMENT_MATH + r"""
__device__ __forceinline__ u64 now_ns() {
    u64 t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

__device__ __forceinline__ int ld_acquire_sys(const int* p) {
    int v;
    asm volatile("ld.acquire.sys.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ int ld_relaxed_sys(const int* p) {
    int v;
    asm volatile("ld.relaxed.sys.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ void st_relaxed_sys(int* p, int v) {
    asm volatile("st.relaxed.sys.global.b32 [%0], %1;" :: "l"(p), "r"(v) : "memory");
}

__device__ __forceinline__ float ld_host_f32(const float* p) {  // mapped host memory, never an L1 copy
    float v;
    asm volatile("ld.relaxed.sys.global.f32 %0, [%1];" : "=f"(v) : "l"(p) : "memory");
    return v;
}

// the chunk's 16-byte pieces: no "memory" clobber, so a thread's loads are all in flight before the stores that
// use them (bar.sync after the acquire of the sequence word orders them after it)
__device__ __forceinline__ float4 ld_host_v4(const float* p) {
    float4 v;
    asm volatile("ld.relaxed.sys.global.v4.f32 {%0, %1, %2, %3}, [%4];"
                 : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "l"(p));
    return v;
}

__device__ __forceinline__ u32 ld_acquire_gpu(const u32* p) {
    u32 v;
    asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ u32 ld_relaxed_gpu(const u32* p) {
    u32 v;
    asm volatile("ld.relaxed.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ void st_release_gpu(u32* p, u32 v) {
    asm volatile("st.release.gpu.global.b32 [%0], %1;" :: "l"(p), "r"(v) : "memory");
}

__device__ __forceinline__ void st_relaxed_gpu(u32* p, u32 v) {
    asm volatile("st.relaxed.gpu.global.b32 [%0], %1;" :: "l"(p), "r"(v) : "memory");
}

// a tagged h word: one 64-bit access, so the value and its tag are seen together
__device__ __forceinline__ void st_word(u64* p, float h, u32 tag) {
    const u64 w = ((u64)tag << 32) | (u64)__float_as_uint(h);
    asm volatile("st.relaxed.gpu.global.u64 [%0], %1;" :: "l"(p), "l"(w) : "memory");
}

__device__ __forceinline__ u64 ld_word(const u64* p) {
    u64 w;
    asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(w) : "l"(p) : "memory");
    return w;
}

// the kernel's first wait that gave up, for the host's message (the first block to get here writes it)
__device__ void report_stall(int* ctl, u32* dev, int layer, int step, int what, int row, int unit, u32 tag,
                             u32 seen) {
    if (atomicCAS(dev + DEV_ERR, 0u, 1u) == 0u) {
        st_relaxed_sys(ctl + CTL_ERR_BLOCK, blockIdx.x);
        st_relaxed_sys(ctl + CTL_ERR_LAYER, layer);
        st_relaxed_sys(ctl + CTL_ERR_STEP, step);
        st_relaxed_sys(ctl + CTL_ERR_WHAT, what);
        st_relaxed_sys(ctl + CTL_ERR_ROW, row);
        st_relaxed_sys(ctl + CTL_ERR_UNIT, unit);
        st_relaxed_sys(ctl + CTL_ERR_TAG, (int)tag);
        st_relaxed_sys(ctl + CTL_ERR_SEEN, (int)seen);
        __threadfence_system();
        st_relaxed_sys(ctl + CTL_STATUS, ST_STALLED);
    }
}

// this thread's share of the x part (KX inputs from hin[.][0..KX)) and the h part (H inputs from
// hin[.][KIN..KIN + H)) of row r: the lane's k strided by 32, summed over the warp
template <int KX>
__device__ __forceinline__ void row_dot(const elem_t* wrow, const float* hin, int lane, float ax[B], float ah[B]) {
#pragma unroll
    for (int b = 0; b < B; ++b) ax[b] = ah[b] = 0.f;
#pragma unroll 4
    for (int k = lane; k < KX; k += 32) {
        const float w = to_f32(wrow[k]);
#pragma unroll
        for (int b = 0; b < B; ++b) ax[b] = fmaf(w, hin[b * KMAX + k], ax[b]);
    }
#pragma unroll 4
    for (int k = lane; k < H; k += 32) {
        const float w = to_f32(wrow[KIN + k]);
#pragma unroll
        for (int b = 0; b < B; ++b) ah[b] = fmaf(w, hin[b * KMAX + KIN + k], ah[b]);
    }
#pragma unroll
    for (int b = 0; b < B; ++b) {
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            ax[b] += __shfl_xor_sync(0xffffffffu, ax[b], off);
            ah[b] += __shfl_xor_sync(0xffffffffu, ah[b], off);
        }
    }
}

// wait for `count` tagged words from `src` ([B][H], all tagged `tag`) and put their values into
// hin[b][dst0 + k]; false if a word was not there after spin_ns (reported)
__device__ bool poll_words(const u64* src, u32 tag, float* hin, int dst0, long long spin_ns, int* ctl, u32* dev,
                           int layer, int step, int what) {
    const int count = B * H;
    for (int base = 0; base < count; base += NT * PB) {
        u64 v[PB];
        u32 pending = 0;
#pragma unroll
        for (int i = 0; i < PB; ++i) {
            const int q = base + threadIdx.x + i * NT;
            v[i] = 0;
            if (q < count) {
                v[i] = ld_word(src + q);
                pending |= 1u << i;
            }
        }
        u64 t0 = 0;
        while (true) {
            u32 bad = 0;
#pragma unroll
            for (int i = 0; i < PB; ++i)
                if (((pending >> i) & 1u) && (u32)(v[i] >> 32) != tag) bad |= 1u << i;
            if (bad == 0) break;
            const u64 t = now_ns();
            if (t0 == 0) t0 = t;
            else if ((long long)(t - t0) > spin_ns) {
                const int i = __ffs(bad) - 1;
                const int q = base + threadIdx.x + i * NT;
                report_stall(ctl, dev, layer, step, what, q / H, q % H, tag, (u32)(v[i] >> 32));
                return false;
            }
#pragma unroll
            for (int i = 0; i < PB; ++i)
                if ((bad >> i) & 1u) v[i] = ld_word(src + base + threadIdx.x + i * NT);
        }
#pragma unroll
        for (int i = 0; i < PB; ++i) {
            const int q = base + threadIdx.x + i * NT;
            if ((pending >> i) & 1u) hin[(q / H) * KMAX + dst0 + q % H] = __uint_as_float((u32)v[i]);
        }
    }
    return true;
}

extern "C" __global__ void __launch_bounds__(NT, 1) rnn_resident(
    const elem_t* __restrict__ wpack,  // [G][NL][ROWS][KMAX]: a block's rows, x part at 0, h part at KIN
    const float* __restrict__ bpack,   // [G][NL][ROWS][2]: b_ih, b_hh
    u64* xch,                          // [NL][2][B][H] tagged h words
    float* stage,                      // [TMAX][B][IN]: the chunk, copied by block 0
    u32* dev,                          // device control words (DEV_*)
    int* ctl,                          // mapped host control words (CTL_*)
    const float* x_host,               // mapped host [TMAX][B][IN]
    float* y_host,                     // mapped host [TMAX][B][H]
    const float* state_in,             // mapped host [2][NL][B][H]: h, c
    float* state_out,                  // mapped host [2][NL][B][H]
    long long idle_ns, long long spin_ns, int poll_sleep_ns)
{
    extern __shared__ __align__(16) unsigned char smem[];
    elem_t* w_s = (elem_t*)smem;                                          // [NL][ROWS][KMAX]
    float* hin = (float*)(smem + sizeof(elem_t) * NL * ROWS * KMAX);     // [B][KMAX]
    float* red = hin + B * KMAX;                                          // [B][ROWS][2]
    float* bias = red + B * ROWS * 2;                                     // [NL][ROWS][2]
    float* c_s = bias + NL * ROWS * 2;                                    // [NL][B][NB]
    float* h_s = c_s + NL * B * NB;                                       // [NL][B][NB]
    __shared__ int s_cmd, s_T, s_seq, s_abort;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int n0 = blockIdx.x * NB;

    {   // this block's weights and biases on chip for the kernel's lifetime
        const uint4* src = (const uint4*)(wpack + (long long)blockIdx.x * NL * ROWS * KMAX);
        uint4* dst = (uint4*)w_s;
        const int n16 = (int)(sizeof(elem_t) * NL * ROWS * KMAX / 16);
        for (int i = tid; i < n16; i += NT) dst[i] = src[i];
        const float* bsrc = bpack + (long long)blockIdx.x * NL * ROWS * 2;
        for (int i = tid; i < NL * ROWS * 2; i += NT) bias[i] = bsrc[i];
        for (int i = tid; i < B * KMAX; i += NT) hin[i] = 0.f;
        for (int i = tid; i < NL * B * NB; i += NT) c_s[i] = h_s[i] = 0.f;
    }
    if (tid == 0) s_abort = 0;
    if (blockIdx.x == 0 && tid == 0) st_relaxed_sys(ctl + CTL_STARTED, 1);
    __syncthreads();

    u32 step = 0;        // the tag of the newest h in xch (every layer)
    u32 ncmd = 0;        // commands done (the arrival counter's target is ncmd G)
    u32 bcast = 0;       // the last broadcast seen
    int last_seq = 0;    // block 0: the last host sequence number taken (the host starts at 1)

    while (true) {
        // ---- the next command ----------------------------------------------------------------------------
        if (blockIdx.x == 0) {
            if (tid == 0) {
                const u64 t0 = now_ns();
                int seq = 0, cmd = CMD_EXIT, T = 0;
                for (u32 polls = 1;; ++polls) {
                    seq = ld_acquire_sys(ctl + CTL_SEQ);
                    if (seq != last_seq) {
                        cmd = ld_relaxed_sys(ctl + CTL_CMD);
                        T = ld_relaxed_sys(ctl + CTL_T);
                        last_seq = seq;
                        break;
                    }
                    if ((long long)(now_ns() - t0) > idle_ns) { cmd = CMD_EXIT; break; }
                    // a block gave up a wait (read now and then: each read is a round trip between two polls)
                    if ((polls & 63u) == 0u && ld_relaxed_gpu(dev + DEV_ERR)) { cmd = CMD_EXIT; break; }
                    if (poll_sleep_ns > 0) __nanosleep(poll_sleep_ns);
                }
                s_cmd = cmd; s_T = T; s_seq = seq;
            }
            __syncthreads();
            if (s_cmd == CMD_STEP) {  // the chunk into the staging buffer: 4 x 16 bytes in flight a thread
                const int n = s_T * B * IN, n4 = n / 4;
                for (int i0 = tid; i0 < n4; i0 += 4 * NT) {
                    float4 v[4];
#pragma unroll
                    for (int j = 0; j < 4; ++j)
                        if (i0 + j * NT < n4) v[j] = ld_host_v4(x_host + 4 * (i0 + j * NT));
#pragma unroll
                    for (int j = 0; j < 4; ++j)
                        if (i0 + j * NT < n4) *(float4*)(stage + 4 * (i0 + j * NT)) = v[j];
                }
                for (int i = 4 * n4 + tid; i < n; i += NT) stage[i] = ld_host_f32(x_host + i);
            }
            __syncthreads();
            if (tid == 0) {
                st_relaxed_gpu(dev + DEV_CMD, (u32)s_cmd);
                st_relaxed_gpu(dev + DEV_T, (u32)s_T);
                st_relaxed_gpu(dev + DEV_HSEQ, (u32)s_seq);
                __threadfence();  // the chunk and the command before the broadcast
                st_release_gpu(dev + DEV_SEQ, ++bcast);
            }
        } else {
            if (tid == 0) {
                const u64 t0 = now_ns();
                int cmd = CMD_EXIT, T = 0;
                while (true) {
                    const u32 b = ld_acquire_gpu(dev + DEV_SEQ);
                    if (b != bcast) {
                        bcast = b;
                        cmd = (int)ld_relaxed_gpu(dev + DEV_CMD);
                        T = (int)ld_relaxed_gpu(dev + DEV_T);
                        s_seq = (int)ld_relaxed_gpu(dev + DEV_HSEQ);
                        break;
                    }
                    // block 0 has left by then (its own idle limit), or never ran
                    if ((long long)(now_ns() - t0) > idle_ns + 2000000000LL) { cmd = CMD_EXIT; break; }
                    // a block gave up a wait (this one finished the chunk before): nothing more will come
                    if (ld_relaxed_gpu(dev + DEV_ERR)) { cmd = CMD_EXIT; break; }
                    __nanosleep(32);
                }
                s_cmd = cmd; s_T = T;
            }
            __syncthreads();
        }
        const int cmd = s_cmd, T = s_T;
        if (cmd == CMD_EXIT || cmd == CMD_STOP) {
            if (blockIdx.x == 0 && tid == 0 && ld_relaxed_gpu(dev + DEV_ERR) == 0u) {  // a stall keeps its status
                __threadfence_system();
                st_relaxed_sys(ctl + CTL_STATUS, cmd == CMD_STOP ? ST_STOPPED : ST_IDLE);
            }
            return;
        }

        // ---- LOAD: h and c of this block's units from the host, h into the exchange --------------------
        if (cmd == CMD_LOAD) {
            const u32 tag = step + 1;
            for (int j = tid; j < CELLS; j += NT) {
                const int b = j / NB, u = j % NB, n = n0 + u;
                if (n >= H) continue;
#pragma unroll 1
                for (int l = 0; l < NL; ++l) {
                    const int si = (l * B + b) * H + n;
                    const float h = ld_host_f32(state_in + si);
                    h_s[(l * B + b) * NB + u] = h;
                    c_s[(l * B + b) * NB + u] = IS_LSTM ? ld_host_f32(state_in + NL * B * H + si) : 0.f;
                    st_word(xch + ((long long)(l * 2 + (tag & 1)) * B + b) * H + n, h, tag);
                }
            }
            step = tag;
        }

        // ---- STEP: T steps of every layer ------------------------------------------------------------------
        if (cmd == CMD_STEP) {
#pragma unroll 1
            for (int t = 0; t < T; ++t) {
                const u32 prev = step, next = step + 1;
#pragma unroll 1
                for (int l = 0; l < NL; ++l) {
                    // inputs into hin: x (layer 0, staged) or layer l - 1's new h, and layer l's previous h
                    bool ok = true;
                    if (l == 0) {
                        for (int i = tid; i < B * IN; i += NT)
                            hin[(i / IN) * KMAX + i % IN] = __ldcg(stage + (long long)t * B * IN + i);
                    } else {
                        ok = poll_words(xch + (long long)((l - 1) * 2 + (next & 1)) * B * H, next, hin, 0, spin_ns,
                                        ctl, dev, l - 1, t, 1);
                    }
                    if (ok)
                        ok = poll_words(xch + (long long)(l * 2 + (prev & 1)) * B * H, prev, hin, KIN, spin_ns, ctl,
                                        dev, l, t, 0);
                    if (!ok) s_abort = 1;
                    __syncthreads();  // barrier 1: the inputs are in hin
                    if (s_abort) return;

                    // the product: warp w takes rows w, w + NWARPS, ...
                    const elem_t* wl = w_s + l * ROWS * KMAX;
#pragma unroll 1
                    for (int r = warp; r < ROWS; r += NWARPS) {
                        float ax[B], ah[B];
                        if (l == 0) row_dot<IN>(wl + r * KMAX, hin, lane, ax, ah);
                        else row_dot<H>(wl + r * KMAX, hin, lane, ax, ah);
                        const float bx = bias[(l * ROWS + r) * 2], bh = bias[(l * ROWS + r) * 2 + 1];
#pragma unroll
                        for (int b = 0; b < B; ++b)
                            if (lane == b)
                                *(float2*)(red + (b * ROWS + r) * 2) = make_float2(ax[b] + bx, ah[b] + bh);
                    }
                    __syncthreads();  // barrier 2: the gate sums are in red

                    // the cells: h and c in fp32; h out to the other blocks, the host's outputs and state
                    for (int j = tid; j < CELLS; j += NT) {
                        const int b = j / NB, u = j % NB, n = n0 + u;
                        if (n >= H) continue;
                        const float2* g = (const float2*)(red + b * ROWS * 2);
                        const int si = (l * B + b) * NB + u;
                        float h, c = 0.f;
#if IS_LSTM
                        const float2 pi = g[u], pf = g[NB + u], pg = g[2 * NB + u], po = g[3 * NB + u];
                        c = sigmoid_f(pf.x + pf.y) * c_s[si] + sigmoid_f(pi.x + pi.y) * tanh_f(pg.x + pg.y);
                        h = sigmoid_f(po.x + po.y) * tanh_f(c);
                        c_s[si] = c;
#else
                        const float2 pr = g[u], pz = g[NB + u], pn = g[2 * NB + u];
                        const float z = sigmoid_f(pz.x + pz.y);
                        const float nn = tanh_f(pn.x + sigmoid_f(pr.x + pr.y) * pn.y);
                        h = (1.0f - z) * nn + z * h_s[si];
#endif
                        h_s[si] = h;
                        st_word(xch + ((long long)(l * 2 + (next & 1)) * B + b) * H + n, h, next);
                        if (l == NL - 1) y_host[((long long)t * B + b) * H + n] = h;
                        if (t == T - 1) {
                            state_out[(l * B + b) * H + n] = h;
                            if (IS_LSTM) state_out[NL * B * H + (l * B + b) * H + n] = c;
                        }
                    }
                }
                step = next;
            }
        }

        // ---- done: every write to the host seen before the done word -------------------------------------
        __threadfence_system();
        __syncthreads();
        ++ncmd;
        if (tid == 0) {
            const u32 old = atomicAdd(dev + DEV_ARRIVE, 1u);
            if (old == ncmd * (u32)G - 1u) {  // the last block of this command (u32 wraps alike on both sides)
                __threadfence_system();
                st_relaxed_sys(ctl + CTL_DONE, s_seq);
            }
        }
    }
}
"""
