"""benchmarks/kernel_profile.py on the CPU: ncu's per-instruction table read, the step loop found from its SASS and cut
at its block barriers, the samples summed a part (two barriers a step, and the A-fragment plans' one). The profiles
themselves need ncu and the H200."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
HEADER = ('"Kernel Name","rnn_persistent_cuda",\n"Address","Source","Warp Stall Sampling (All Samples)",'
          '"Warp Stall Sampling (Not-issued Samples)","stall_barrier","stall_long_sb","stall_selected",'
          '"stall_barrier (Not Issued)"\n')


@pytest.fixture(scope="module")
def prof():
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("kernel_profile", BENCHMARKS / "kernel_profile.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(BENCHMARKS))


def table(instructions):
    """(sass, samples, {stall: n}) a 16-byte instruction from 0x1000 -> ncu's CSV text."""
    lines = [HEADER]
    for i, (sass, samples, stalls) in enumerate(instructions):
        cells = [f"0x{0x1000 + 16 * i:x}", f"      {sass}", samples, 0, stalls.get("barrier", 0),
                 stalls.get("long_sb", 0), stalls.get("selected", 0), 0]
        lines.append(",".join(f'"{c}"' for c in cells) + "\n")
    return "".join(lines)


def test_a_two_barrier_step_is_cut_into_wait_barrier_product_barrier_cell(prof):
    head = 0x1000 + 16 * 2
    rows = prof.read_source_csv(table([
        ("LDC R1, c[0x0][0x28]", 10, {"selected": 10}),  # outside the loop
        ("MOV R2, RZ", 0, {}),
        ("NANOSLEEP 0xfa", 30, {}),  # the loop's head: the wait
        ("LDG.E.128.STRONG.GPU R56, desc[UR6][R68.64]", 5, {"selected": 5}),
        ("ISETP.NE.AND P3, PT, R57, -0x1, PT", 50, {"long_sb": 50}),
        ("BAR.SYNC.DEFER_BLOCKING 0x0", 2, {}),  # barrier 1 and the two after it
        ("UMOV UR4, 0x400", 20, {"barrier": 20}),
        ("LDS R64, [UR4]", 3, {}),
        ("FFMA R88, R189, R72, RZ", 40, {"selected": 40}),  # the product
        ("BAR.SYNC.DEFER_BLOCKING 0x0", 1, {}),  # barrier 2
        ("BSSY B0, 0x2000", 9, {"barrier": 9}),
        ("LDS.128 R64, [R169]", 0, {}),
        ("MUFU.EX2 R92, R92", 25, {"selected": 25}),  # the cell
        (f"@!P3  BRA 0x{head:x}", 5, {}),
        ("EXIT", 0, {}),
    ]))
    assert [r["samples"] for r in rows][:3] == [10, 0, 30] and rows[4]["stalls"] == {"long_sb": 50}
    parts = prof.summarize(rows)
    total = 200
    assert {p: round(parts[p]["fraction"] * total) for p in (*prof.PARTS, "outside the loop")} == {
        "wait": 85, "barrier1": 25, "product": 40, "barrier2": 10, "cell": 30, "outside the loop": 10}
    assert parts["wait"]["top"][0] == ("long_sb", 50) and parts["barrier1"]["top"] == [("barrier", 20)]


def test_the_a_fragment_step_waits_until_its_first_mma_and_has_one_barrier(prof):
    rows = prof.read_source_csv(table([
        ("NANOSLEEP 0x1f4", 20, {}),
        ("IADD3 R93, -R52, -0x10002, RZ", 60, {"long_sb": 60}),
        ("HMMA.16816.F32.BF16 R88, R88, R4, R88", 15, {"selected": 15}),
        ("BAR.RED.OR.DEFER_BLOCKING 0x0, P0", 1, {}),
        ("PLOP3.LUT P0, PT, P0, PT, PT, 0x80, 0x0", 30, {"barrier": 30}),
        ("@P0   EXIT", 0, {}),
        ("MUFU.EX2 R84, R84", 14, {"selected": 14}),
        ("BAR.SYNC 0x1, 0x40", 5, {}),  # a named barrier (sentinel_last): not a block barrier
        ("@!P0  BRA 0x1000", 0, {}),
        ("EXIT", 0, {}),
    ]))
    parts = prof.summarize(rows)
    assert {p: round(parts[p]["fraction"] * 145) for p in prof.PARTS} == {
        "wait": 80, "barrier1": 0, "product": 15, "barrier2": 31, "cell": 19}


def test_a_table_without_the_step_loop_is_refused_by_name(prof):
    rows = prof.read_source_csv(table([("MOV R2, RZ", 1, {}), ("EXIT", 0, {})]))
    with pytest.raises(ValueError, match="no backward branch"):
        prof.loop_parts(rows)
