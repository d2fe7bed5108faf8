"""benchmarks/exchange_floor.py on the CPU: its exchange kernel compiles for sm_90a without spills in every shape the
benchmark runs (copies of h, two staggered reads in flight among them), bad shapes are refused by name, and a
workload's mimic carries its plan's grid, bytes and delay. The timings themselves need the H200 (the benchmark, not a
test)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

from lstminfer.kernels.rnn import pack_rnn
from lstminfer.kernels.rnn.plan import _cuda_plan

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def floor():
    sys.path.insert(0, str(BENCHMARKS))  # it imports its sibling fused_vs_cudnn lazily
    spec = importlib.util.spec_from_file_location("exchange_floor", BENCHMARKS / "exchange_floor.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(BENCHMARKS))


def _nvrtc():
    pytest.importorskip("cuda.bindings", reason="cuda-bindings is not installed (pip install 'lstminfer[dev]')")
    from lstminfer.kernels.rnn.cuda_persistent import available

    ok, why = available()
    if not ok:
        pytest.skip(why)


def test_every_scanned_exchange_compiles_without_spills(floor):
    """The scans' kernels (L2 polls, delays, spun work, DSMEM pushes to clusters of 2-8) for sm_90a: a cubin, and
    ptxas reports no spill (a spilled poll loop would time local memory, not the exchange)."""
    _nvrtc()
    configs = {c for scan in floor.scans().values() for c in scan}
    configs.add(floor.XConfig(128, 4, 32))  # Q's: 4 batch groups of 32 blocks
    assert len(configs) > 20
    for config in configs:
        cubin, log = floor.compile_xchg(config)
        assert cubin[:4] == b"\x7fELF", config
        assert re.search(r"\b0 bytes spill stores", log), (config, log)


@pytest.mark.parametrize("kwargs, message", [
    (dict(blocks=100, groups=3, chunks=1), "blocks must be whole groups"),
    (dict(blocks=96, groups=1, chunks=1, cluster=5), "a group must be whole clusters"),
    (dict(blocks=128, groups=1, chunks=128), "at most 32 chunks a thread"),
    (dict(blocks=128, groups=1, chunks=1, threads=100), "threads must be 32-1024"),
    (dict(blocks=128, groups=1, chunks=1, elem=8), "elem must be 2, 4 or 16 bytes"),
    (dict(blocks=128, groups=1, chunks=1, gather=True), "gather needs words of 2 or 4 bytes"),
    (dict(blocks=128, groups=1, chunks=1, replicas=0), "replicas must be 1 to blocks"),
    (dict(blocks=128, groups=1, chunks=1, replicas=2, cluster=2), "replicas and cluster do not combine"),
    (dict(blocks=128, groups=1, chunks=1, stagger=-1), "stagger must be 0 or more cycles"),
])
def test_shapes_the_kernel_cannot_run_are_refused_by_name(floor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        floor.XConfig(**kwargs)


def _plan(hidden, batch, dtype, bidirectional=False):
    module = torch.nn.LSTM(64, hidden, bidirectional=bidirectional)
    packed = pack_rnn(module, "cpu", dtype)
    return packed, _cuda_plan(packed, batch, 132)  # the CUDA kernel's plan as on an H200


def test_a_mimic_has_its_plans_blocks_groups_bytes_threads_and_delay(floor):
    # U: 128 blocks of 8 units, 8 real rows of 16-bit h (the mma's 16 padded rows are not stored)
    packed, plan = _plan(1024, 8, torch.bfloat16)
    u = floor.mimic(plan, packed, 8)
    assert (u.blocks, u.groups, u.chunks * 16, u.threads, u.delay) == (
        plan.programs, 1, plan.block_n * 8 * 2, plan.num_warps * 32, plan.poll_delay)
    assert u.read_bytes == 1024 * 8 * 2 and u.delay > 0  # the whole h of the batch, and poll_frag's delay
    assert u.elem == 2  # stored a 16-bit word a cell, as the kernel's cells do
    packed, plan = _plan(1024, 1, torch.float32)  # R fp32: one row, fp32 words
    r = floor.mimic(plan, packed, 1)
    assert (r.blocks, r.chunks * 16, r.elem) == (plan.programs, plan.block_n * 4, 4)
    # Q bf16: 4 batch groups of 16 rows, each block waits on its group's blocks only
    packed, plan = _plan(512, 64, torch.bfloat16)
    q = floor.mimic(plan, packed, 64, cluster=2)
    assert (q.groups, q.read_bytes, q.cluster) == (4, 512 * 16 * 2, 2)
    # bidirectional: one group a direction
    packed, plan = _plan(512, 8, torch.bfloat16, bidirectional=True)
    assert floor.mimic(plan, packed, 8).groups == 2
