"""Waiting between programs: counters, acquire loads, and polls of poisoned (data-as-flag) words. CUDA only
where noted: every waiting program must be resident."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _load_acquire(ptr):
    """One 32-bit load with acquire semantics at GPU scope (cheaper to poll than an atomic RMW)."""
    return tl.inline_asm_elementwise("ld.global.acquire.gpu.b32 $0, [$1];", "=r,l", [ptr], dtype=tl.int32,
                                     is_pure=False, pack=1)


@triton.jit
def _pin(x, ON_GPU: tl.constexpr):
    """An identity in PTX, so that a layout conversion after it stays after it. Used on the polled h: Triton
    3.9 otherwise carried h across the step loop in the broadcast layout and spilled (216 bytes of stack at
    HP 128). Triton 3.6 ignored it on the loop-carried h of workload B (its layout pass moves elementwise asm
    too), so it is no general fix. The interpreter runs no PTX."""
    if ON_GPU:
        return tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [x], dtype=x.dtype, is_pure=False, pack=1)
    else:
        return x


@triton.jit
def _arrive(counter_ptr):
    """Count this program's arrival at `counter_ptr`, after every store its threads made before."""
    tl.debug_barrier()  # every thread's stores of this program happen before its arrival
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")


@triton.jit
def _wait_count(counter_ptr, target, ON_GPU: tl.constexpr):
    """Wait until `target` arrivals were counted at `counter_ptr`; loads after it see what they published.
    The spin limit (about a second) turns a broken residency assumption into wrong numbers, not a hang.
    Under the interpreter (programs run one after another) the count is complete or never will be."""
    if ON_GPU:
        seen = _load_acquire(counter_ptr)
        spins = 0
        while (seen < target) & (spins < 20_000_000):
            seen = _load_acquire(counter_ptr)
            spins += 1
    tl.debug_barrier()


@triton.jit
def _grid_barrier(counter_ptr, target):
    """Wait until `target` arrivals were counted at `counter_ptr`, this one's included (CUDA only: all
    programs resident)."""
    _arrive(counter_ptr)
    _wait_count(counter_ptr, target, True)


@triton.jit
def _spin_load(ptrs, mask):
    """Each thread loads its words until none is the poison 0xFFFFFFFF (masked-off words: 0). CUDA only.

    The spin is per thread, in PTX: no reduction over the program and no barrier per poll. It gives up
    after 20 M polls, so a broken residency assumption gives wrong numbers instead of a hang.
    """
    return tl.inline_asm_elementwise(
        """{
        .reg .pred %p<3>;
        .reg .u32 %n;
        mov.b32 $0, 0;
        mov.u32 %n, 0;
        setp.eq.s32 %p0, $2, 0;
        @%p0 bra DONE${:uid};
        SPIN${:uid}:
        ld.volatile.global.b32 $0, [$1];
        add.u32 %n, %n, 1;
        setp.eq.s32 %p1, $0, -1;
        setp.lt.u32 %p2, %n, 20000000;
        and.pred %p1, %p1, %p2;
        @%p1 bra SPIN${:uid};
        DONE${:uid}:
        }""",
        "=r,l,r", [ptrs, mask.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _wait_h(words_ptr, row_stride, rows, BLOCK_B: tl.constexpr, WIDTH: tl.constexpr):
    """Wait until no word of h[rows, WIDTH] is still the poison 0xFFFFFFFF the launcher filled them with,
    and return the words: once none is poison they are h. CUDA only.

    A GPU never computes that NaN (its NaNs are canonical), so each word says itself whether it has been
    written: no fence and no counter, saving the atomic of a counter barrier; the caller bitcasts the words
    instead of reading h again.
    """
    offs = tl.arange(0, BLOCK_B)[:, None] * row_stride + tl.arange(0, WIDTH)[None, :]
    return _spin_load(words_ptr + offs, tl.arange(0, BLOCK_B)[:, None] < rows)


@triton.jit
def _load_relaxed(ptrs):
    """One 32-bit load a word, relaxed at GPU scope (Triton's volatile loads are system scope). CUDA only."""
    return tl.inline_asm_elementwise("ld.relaxed.gpu.global.b32 $0, [$1];", "=r,l", [ptrs], dtype=tl.int32,
                                     is_pure=False, pack=1)
