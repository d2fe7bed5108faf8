"""The CUDA C++ persistent kernel (cuda_source.py): NVRTC compile, one cached module per size, launch.

``cuda.bindings`` (NVIDIA's cuda-python, the optional `gpu` extra) is imported on first use only; without it,
or without NVRTC, ``available()`` says why and the plan keeps the Triton persistent kernel. Sizes are
compile-time constants (#defines in front of the source); a module is compiled once per (sizes, dtype, cell)
key and device, loaded with cuModuleLoadData and launched with cuLaunchKernel (cluster plans: cuLaunchKernelEx with a
cluster dimension) on torch's current stream, so a CUDA-graph capture records it like any other kernel.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from typing import Any

from .cuda_source import SOURCE

KERNEL_NAME = b"rnn_persistent_cuda"


# the CudaConfig fields that are Plan fields of the same name (the plan's options of this kernel, passed by name)
PLAN_OPTIONS = ("poll_sleep", "w_shared", "mma_regs", "poll_frag", "poll_delay", "poll_sentinel", "sentinel_last",
                "stamps", "cluster", "group_rows", "w_regs", "tiles_per_warp", "ffma_cols", "poll_spin",
                "mma_swap")


@dataclass(frozen=True)
class CudaConfig:
    """The compile-time constants of one kernel variant (the #defines of cuda_source.SOURCE)."""

    is_lstm: bool
    dirs: int  # D
    hidden_padded: int  # HP
    kh: int  # hidden units computed per direction (tiles x nb), a multiple of 64
    nb: int  # hidden units a block
    tiles: int  # blocks a direction and batch group
    bb: int  # batch rows a block (16 with MMA)
    threads: int  # NT
    k_slices: int  # KSL
    mma: bool
    elem_bits: int  # 32 (fp32) or 16 (fp16 / bf16)
    bf16: bool
    has_state: bool
    fast: bool = True
    poll_sleep: int = 0  # ns of __nanosleep between two reads of a wait (0: none, the default)
    w_shared: bool = False  # FFMA: W^T in shared memory (fp32) instead of registers
    mma_regs: bool = False  # MMA: a warp per k slice over every column tile, W^T fragments in registers
    poll_frag: bool = False  # mma_regs: each warp polls its k slice of h straight into its A fragments
    poll_delay: int = 0  # ns of __nanosleep before the first read of a wait (0: none, the default)
    poll_sentinel: bool = False  # a wait polls one chunk a producer block (of the last row) before the whole slice
    sentinel_last: bool = False  # poll_sentinel: the producers store the sentinel row after their other rows
    stamps: bool | int = False  # thread 0 of every block writes per-step stamps, [blocks, T, 3]: 1 globaltimer ns,
    # 2-4 clock64 cycles with the third stamp moved (see cuda_source)
    cluster: int = 0  # blocks a thread-block cluster (== tiles): h through distributed shared memory (0: the slab)
    group_rows: int = 0  # real batch rows a block (0: bb; fewer with mma, whose bb is the 16 padded rows)
    w_regs: int = 0  # FFMA: k a thread in registers, the rest of its KPT in shared memory (0: not split)
    tiles_per_warp: int = 0  # mma with W^T in shared memory: column tiles a warp (0 or 1: one)
    ffma_cols: int = 0  # FFMA with W^T in registers: columns a thread (0 or 1: one)
    poll_spin: int = 0  # the first-read delay: 0 __nanosleep, 1 spun on clock64, 2 spun and adapted every step
    mma_swap: bool = False  # poll_frag at <= 8 rows: W^T the mma's A operand, h its B (no padding rows multiplied)
    slab_bits: int = 0  # bits of a slab word (0: elem_bits; 32 with 16-bit elements: the plan's wide_h)

    def defines(self) -> str:
        values = dict(IS_LSTM=self.is_lstm, D=self.dirs, HP=self.hidden_padded, KH=self.kh, NB=self.nb,
                      TILES=self.tiles, BB=self.bb, NT=self.threads, KSL=self.k_slices, MMA=self.mma,
                      ELEM_BITS=self.elem_bits, IS_BF16=self.bf16, HAS_STATE=self.has_state, FAST=self.fast,
                      POLL_SLEEP=self.poll_sleep, W_SHARED=self.w_shared and not self.mma,
                      MMA_REGS=self.mma_regs and self.mma, POLL_FRAG=self.poll_frag and self.mma_regs and self.mma,
                      POLL_DELAY=self.poll_delay, POLL_SENTINEL=self.poll_sentinel or self.sentinel_last,
                      SENTINEL_LAST=self.sentinel_last, STAMPS=self.stamps, CLUSTER=self.cluster,
                      GROUP_ROWS=self.group_rows or self.bb, W_REGS=0 if self.mma else self.w_regs,
                      MMA_TPW=max(1, self.tiles_per_warp) if self.mma and not self.mma_regs else 1,
                      FCOLS=max(1, self.ffma_cols), POLL_SPIN=self.poll_spin,
                      MMA_SWAP=self.mma_swap and self.poll_frag and self.mma_regs and self.mma,
                      SLAB_BITS=self.slab_bits or self.elem_bits)
        return "".join(f"#define {k} {int(v)}\n" for k, v in values.items())

    def shared_bytes(self) -> int:
        """Dynamic shared memory of a block: h, (MMA: W^T), the partial sums."""
        return shared_bytes(self.mma, self.elem_bits, self.bb, self.kh, self.nb, self.k_slices, self.w_shared,
                            self.mma_regs, self.poll_frag, self.cluster, 0 if self.mma else self.w_regs)


def shared_bytes(mma: bool, elem_bits: int, bb: int, kh: int, nb: int, k_slices: int, w_shared: bool = False,
                 mma_regs: bool = False, poll_frag: bool = False, cluster: int = 0, w_regs: int = 0) -> int:
    cols = 4 * nb
    red = 4 * k_slices * bb * (cols + 8)
    hbuf = 2 if cluster else 1  # a cluster's h by step parity (the others push the next while this step reads)
    if mma and mma_regs and poll_frag:
        return 2 * red  # no h in shared memory; the partial sums by step parity
    if mma:
        return (elem_bits // 8) * (hbuf * bb * (kh + 8) + (0 if mma_regs else cols * (kh + 8))) + red
    w = 4 * cols * (kh + 4) if w_shared else 4 * cols * (kh - k_slices * w_regs + 4) if w_regs else 0
    return 4 * hbuf * bb * k_slices * (kh // k_slices + 4) + red + w


def _bindings() -> tuple[Any, Any]:
    """cuda-python's driver and nvrtc modules (cuda.bindings since 12.6; cuda.cuda / cuda.nvrtc before)."""
    try:
        from cuda.bindings import driver, nvrtc
    except ImportError:
        from cuda import cuda as driver
        from cuda import nvrtc
    return driver, nvrtc


@functools.lru_cache(maxsize=1)
def available() -> tuple[bool, str]:
    """(True, "") where cuda.bindings and NVRTC load; else (False, why). Never raises."""
    try:
        driver, nvrtc = _bindings()
    except ImportError as err:
        return False, f"cuda-bindings is not installed ({err}): pip install 'lstminfer[gpu]'"
    try:
        result, major, minor = nvrtc.nvrtcVersion()
    except Exception as err:  # the NVRTC library itself is missing
        return False, f"NVRTC did not load: {err}"
    if int(result) != 0:
        return False, f"NVRTC did not load: {result}"
    return True, ""


def _check(result: Any, what: str) -> Any:
    """Unpack a cuda.bindings (error, values...) tuple; raise on an error code."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"{what} failed: {err}")
    return values[0] if len(values) == 1 else tuple(values)


def compile_cubin(cfg: Any, arch: str = "sm_90", source: str = SOURCE,
                  name: str = "rnn_persistent_cuda") -> tuple[bytes, str]:
    """NVRTC: the variant's cubin for `arch` and the compiler's log (ptxas's registers and spills).  `cfg` is
    anything with ``defines()`` (a CudaConfig; resident.py's ResidentConfig with its own `source`)."""
    _, nvrtc = _bindings()
    text = (cfg.defines() + source).encode()
    program = _check(nvrtc.nvrtcCreateProgram(text, f"{name}.cu".encode(), 0, [], []), "nvrtcCreateProgram")
    options = [f"--gpu-architecture={arch}".encode(), b"-std=c++17", b"--ptxas-options=-v"]
    try:
        result = nvrtc.nvrtcCompileProgram(program, len(options), options)
        size = _check(nvrtc.nvrtcGetProgramLogSize(program), "nvrtcGetProgramLogSize")
        log = b" " * size
        _check(nvrtc.nvrtcGetProgramLog(program, log), "nvrtcGetProgramLog")
        log_text = log.decode(errors="replace").rstrip("\x00 \n")
        if int(result[0]) != 0:
            raise RuntimeError(f"NVRTC could not compile {name} ({cfg}):\n{log_text}")
        size = _check(nvrtc.nvrtcGetCUBINSize(program), "nvrtcGetCUBINSize")
        cubin = b" " * size
        _check(nvrtc.nvrtcGetCUBIN(program, cubin), "nvrtcGetCUBIN")
    finally:
        nvrtc.nvrtcDestroyProgram(program)
    return cubin, log_text


class _Loaded:
    """A variant's module and function on one device, its shared memory raised, its residency checked.  Shared
    by the persistent kernel (compile_cubin, KERNEL_NAME) and the resident one (resident.py: its own compile and
    kernel name); `what` names the kernel and `fix` ends the refusal of check_resident."""

    def __init__(self, cfg: Any, device_index: int, cubin_of: Any = None, name: bytes = KERNEL_NAME,
                 what: str = "the CUDA persistent kernel", fix: str = ": use cuda=False or path='multi-launch'"):
        import torch

        driver, _ = _bindings()
        major, minor = torch.cuda.get_device_capability(device_index)
        self.cubin, self.log = (cubin_of or compile_cubin)(cfg, f"sm_{major}{minor}")
        self.what, self.fix = what, fix
        _ensure_context(device_index)
        self.module = _check(driver.cuModuleLoadData(self.cubin), "cuModuleLoadData")
        self.function = _check(driver.cuModuleGetFunction(self.module, name), "cuModuleGetFunction")
        self.shared = cfg.shared_bytes()
        _check(driver.cuFuncSetAttribute(
            self.function, driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            self.shared), "cuFuncSetAttribute")
        self.registers = _check(driver.cuFuncGetAttribute(
            driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_NUM_REGS, self.function), "cuFuncGetAttribute")
        self.per_sm = _check(driver.cuOccupancyMaxActiveBlocksPerMultiprocessor(self.function, cfg.threads,
                                                                                 self.shared),
                             "cuOccupancyMaxActiveBlocksPerMultiprocessor")
        self.sms = torch.cuda.get_device_properties(device_index).multi_processor_count
        self.cluster = getattr(cfg, "cluster", 0)
        if self.cluster:
            if self.cluster > 8:  # Hopper allows 16 blocks a cluster, past the portable 8, where the kernel asks
                _check(driver.cuFuncSetAttribute(
                    self.function, driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED,
                    1), "cuFuncSetAttribute")
            config = launch_config(driver, self.cluster, cfg.threads, self.shared, self.cluster, driver.CUstream(0))
            self.max_clusters = _check(driver.cuOccupancyMaxActiveClusters(self.function, config),
                                       "cuOccupancyMaxActiveClusters")

    def check_resident(self, programs: int) -> None:
        """Refuse a grid whose blocks cannot all be resident at once on an idle GPU: their waits would never
        end (cuOccupancyMaxActiveBlocksPerMultiprocessor x multiprocessors >= blocks). Clusters wait on nobody
        outside themselves: one cluster must fit (cuOccupancyMaxActiveClusters >= 1), the others may follow."""
        if self.cluster:
            if self.max_clusters < 1:
                raise ValueError(f"{self.what}'s cluster of {self.cluster} blocks does not fit the device "
                                 f"({self.registers} registers a thread, {self.shared} bytes of shared memory a "
                                 f"block){self.fix}")
            return
        if self.per_sm * self.sms < programs:
            raise ValueError(f"{self.what}'s {programs} blocks cannot all be resident "
                             f"({self.per_sm} a multiprocessor at {self.registers} registers a thread and "
                             f"{self.shared} bytes of shared memory, {self.sms} multiprocessors){self.fix}")


def launch_config(driver: Any, blocks: int, threads: int, shared: int, cluster: int, stream: Any) -> Any:
    """cuLaunchKernelEx's configuration: `blocks` blocks of `threads`, in clusters of `cluster` blocks."""
    attr = driver.CUlaunchAttribute()
    attr.id = driver.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
    attr.value.clusterDim.x, attr.value.clusterDim.y, attr.value.clusterDim.z = cluster, 1, 1
    config = driver.CUlaunchConfig()
    config.gridDimX, config.gridDimY, config.gridDimZ = blocks, 1, 1
    config.blockDimX, config.blockDimY, config.blockDimZ = threads, 1, 1
    config.sharedMemBytes, config.hStream = shared, stream
    config.attrs, config.numAttrs = [attr], 1
    return config


def _ensure_context(device_index: int) -> None:
    """Make the device's primary context (torch's) current on this thread for the driver calls (the caller
    holds torch.cuda.device(device_index), so the runtime has made it current already where torch ran)."""
    import torch

    driver, _ = _bindings()
    torch.cuda.init()
    torch.cuda.set_device(device_index)  # inside the caller's torch.cuda.device: restored after
    ctx = _check(driver.cuCtxGetCurrent(), "cuCtxGetCurrent")
    if ctx is None or int(ctx) == 0:
        device = _check(driver.cuDeviceGet(device_index), "cuDeviceGet")
        ctx = _check(driver.cuDevicePrimaryCtxRetain(device), "cuDevicePrimaryCtxRetain")
        _check(driver.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")


_LOADED: dict[tuple[Any, int], _Loaded] = {}


def loaded(cfg: Any, device_index: int, **kernel: Any) -> _Loaded:
    """The compiled and loaded variant (compiled on first use, then cached for the process); `kernel`: _Loaded's
    cubin_of / name / what / fix for a kernel other than the persistent one (its config type keeps the keys
    apart)."""
    key = (cfg, device_index)
    entry = _LOADED.get(key)
    if entry is None:
        entry = _LOADED[key] = _Loaded(cfg, device_index, **kernel)
    return entry


_ARG_TYPES = (ctypes.c_void_p,) * 7 + (ctypes.c_longlong,) * 3 + (ctypes.c_void_p,) * 2 + (ctypes.c_int,) * 5 \
    + (ctypes.c_longlong, ctypes.c_void_p)


def launch(cfg: CudaConfig, programs: int, gx: Any, w_hh: Any, slab: Any, err: Any, h0: Any, c0: Any, out: Any,
           stride_ot: int, stride_ob: int, stride_ok: int, hn: Any, cn: Any, seq_len: int, batch: int, hidden: int,
           layer: int, is_last: bool, spin_limit: int, stamps: Any = None) -> None:
    """One layer's recurrence: `programs` blocks of cfg.threads on torch's current stream (see cuda_source).
    `stamps` (cfg.stamps only): the layer's int64 [programs, seq_len, 3] tensor the kernel writes."""
    import torch

    driver, _ = _bindings()
    device = gx.device.index if gx.device.index is not None else torch.cuda.current_device()
    with torch.cuda.device(device):  # the module is loaded into, and launched on, the tensors' device's context
        kernel = loaded(cfg, device)
        _launch(driver, kernel, cfg, programs, gx, w_hh, slab, err, h0, c0, out, stride_ot, stride_ob, stride_ok,
                hn, cn, seq_len, batch, hidden, layer, is_last, spin_limit, stamps)


def _launch(driver: Any, kernel: _Loaded, cfg: CudaConfig, programs: int, gx: Any, w_hh: Any, slab: Any,
            err: Any, h0: Any, c0: Any, out: Any, stride_ot: int, stride_ob: int, stride_ok: int, hn: Any, cn: Any,
            seq_len: int, batch: int, hidden: int, layer: int, is_last: bool, spin_limit: int,
            stamps: Any = None) -> None:
    import torch

    kernel.check_resident(programs)
    if bool(cfg.stamps) != (stamps is not None):
        raise ValueError("a variant compiled with stamps needs its stamps tensor, and only it takes one")
    if stamps is not None and (stamps.dtype != torch.int64 or tuple(stamps.shape) != (programs, seq_len, 3)
                               or not stamps.is_contiguous()):
        raise ValueError(f"stamps must be a contiguous int64 [{programs}, {seq_len}, 3] tensor, got "
                         f"{stamps.dtype} {tuple(stamps.shape)}")
    values = (gx.data_ptr(), w_hh.data_ptr(), slab.data_ptr(), err.data_ptr(), h0.data_ptr(), c0.data_ptr(),
              out.data_ptr(), stride_ot, stride_ob, stride_ok, hn.data_ptr(), cn.data_ptr(), seq_len, batch, hidden,
              layer, int(is_last), spin_limit, stamps.data_ptr() if stamps is not None else 0)
    # kernelParams as an array of pointers to each argument's bytes (cuda-python's own examples pass it so)
    boxed = [kind(value) for kind, value in zip(_ARG_TYPES, values)]
    pointers = (ctypes.c_void_p * len(boxed))(*(ctypes.addressof(b) for b in boxed))
    stream = driver.CUstream(torch.cuda.current_stream(gx.device).cuda_stream)
    if cfg.cluster:  # a launch with a cluster dimension (on the same stream: a graph capture records it too)
        if programs % cfg.cluster:
            raise ValueError(f"{programs} blocks are not whole clusters of {cfg.cluster}")
        config = launch_config(driver, programs, cfg.threads, kernel.shared, cfg.cluster, stream)
        _check(driver.cuLaunchKernelEx(config, kernel.function, ctypes.addressof(pointers), 0), "cuLaunchKernelEx")
        return
    _check(driver.cuLaunchKernel(kernel.function, programs, 1, 1, cfg.threads, 1, 1, kernel.shared, stream,
                                 ctypes.addressof(pointers), 0), "cuLaunchKernel")
