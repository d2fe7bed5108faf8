"""Where a step of the CUDA persistent kernel goes, by Nsight Compute's warp-stall samples (no instrumentation).

    PYTHONPATH=src python3 benchmarks/kernel_profile.py --only "P 256->512 B1 fp32,U 128->1024 B8 T200 bf16"
    PYTHONPATH=src python3 benchmarks/kernel_profile.py --csv-dir DIR --only U   # also keep ncu's per-SASS tables

For each workload (fused_vs_cudnn.py's names; its default plan, ours also where cuDNN is the default) `ncu` profiles
the second launch of layer 0 (`--clock-control none`, the SourceCounters section) and exports its per-instruction
table (`--page source --csv --print-source sass`). The samples (a warp's state, taken at a fixed interval on every
multiprocessor) are then summed over the parts of the step loop, found from its SASS: the loop is the span of the
last backward branch; its block barriers (BAR.SYNC / BAR.RED) cut it into

    wait      the loop's start to the first barrier (the first-read delay, the poll of h and, without A
              fragments, h into shared memory); with A fragments (one barrier a step), to the first HMMA
    barrier1  the barrier that ends the wait and the two instructions after it (where its waiting is sampled)
    product   from there to the barrier after the product
    barrier2  that barrier and the two instructions after it
    cell      the rest of the loop (the cell and the h stores, on the warps that hold cells)

as percentages of all samples (every warp's time, so a part done by a few warps weighs less), with each part's top
stall reasons. What the stamps (kernel_stamps.py) cannot give: no bookkeeping of its own on the critical path
(docs/fused_kernel.md v25). Needs ncu on the PATH and a GPU it can read counters on.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

PARTS = ("wait", "barrier1", "product", "barrier2", "cell")
SAMPLES = "Warp Stall Sampling (All Samples)"


def read_source_csv(text: str) -> list[dict]:
    """ncu's --page source --csv table -> rows of {address (int), sass, samples, stalls: Counter}, in address order.
    The first line names the kernel; the second is the header."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('"Address"'))
    reader = csv.DictReader(io.StringIO("\n".join(lines[start:])))
    rows = []
    for r in reader:
        try:
            address = int(r["Address"], 16)
        except (KeyError, ValueError):
            continue
        stalls = Counter({k[len("stall_"):]: int(v) for k, v in r.items()
                          if k.startswith("stall_") and "Not Issued" not in k and v and v.isdigit() and int(v)})
        rows.append({"address": address, "sass": r["Source"].strip(), "samples": int(r[SAMPLES] or 0),
                     "stalls": stalls})
    return sorted(rows, key=lambda r: r["address"])


def loop_parts(rows: list[dict]) -> dict[str, tuple[int, int]]:
    """The step loop's parts as index ranges [first, last) of `rows`: the loop is the last backward branch's span
    (the step loop closes the kernel); its block barriers cut it as the module docstring says."""
    index = {r["address"]: i for i, r in enumerate(rows)}
    head = end = None
    for i, r in enumerate(rows):
        m = re.search(r"\bBRA\s+(?:`\()?0x([0-9a-f]+)", r["sass"])
        if m and int(m.group(1), 16) < r["address"] and int(m.group(1), 16) in index:
            head, end = index[int(m.group(1), 16)], i + 1
    if head is None:
        raise ValueError("no backward branch in the SASS: not the persistent kernel's step loop")
    barriers = [i for i in range(head, end) if re.match(r"(@!?U?P\w+\s+)?BAR\.(SYNC|RED)", rows[i]["sass"])
                and not re.search(r"BAR\.SYNC(\.DEFER_BLOCKING)?\s+0x[1-9]", rows[i]["sass"])]  # named barriers
    if len(barriers) >= 2:
        b1, b2 = barriers[0], barriers[-1]
    elif len(barriers) == 1:  # A fragments: no barrier 1; the wait ends at the first mma
        b2 = barriers[0]
        b1 = next((i for i in range(head, b2) if rows[i]["sass"].startswith("HMMA")), head)
    else:
        raise ValueError("no block barrier in the step loop")
    one = len(barriers) == 1
    return {"wait": (head, b1), "barrier1": (b1, b1 if one else b1 + 3), "product": (b1 if one else b1 + 3, b2),
            "barrier2": (b2, b2 + 3), "cell": (b2 + 3, end)}


def summarize(rows: list[dict]) -> dict:
    """Samples a part (fractions of the kernel's) and each part's top stall reasons."""
    total = sum(r["samples"] for r in rows) or 1
    out = {}
    for name, (first, last) in loop_parts(rows).items():
        stalls = Counter()
        for r in rows[first:last]:
            stalls.update(r["stalls"])
        samples = sum(r["samples"] for r in rows[first:last])
        out[name] = {"fraction": samples / total, "top": stalls.most_common(3)}
    out["outside the loop"] = {"fraction": 1.0 - sum(p["fraction"] for p in out.values()), "top": []}
    return out


def run_workload(name: str) -> None:
    """ncu's target: the workload's default plan (ours where cuDNN is the default), one eager call twice."""
    import torch
    from fused_vs_cudnn import DTYPES, WORKLOADS, setup  # the sibling script

    from lstminfer.kernels.rnn import pack_rnn, plan_for, rnn_forward

    w = next(w for w in WORKLOADS if w.name == name)
    module, x, h0, c0, _ = setup(w, with_ref=False)
    dtype = DTYPES[w.precision]
    packed = pack_rnn(module, "cuda", dtype)
    plan = plan_for(packed, w.seq_len, w.batch, cudnn=False)
    if not plan.cuda:
        sys.exit(f"{name}: its plan runs the {plan.kernel} kernel, not the CUDA persistent one")
    args = [t.to("cuda", dtype) for t in (x, h0, c0)]
    for _ in range(2):
        rnn_forward(packed, *args, plan=plan)
    torch.cuda.synchronize()


def profile(name: str, work: Path) -> str:
    """ncu on `name` -> its per-instruction CSV text."""
    report = work / re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                                                    os.environ.get("PYTHONPATH", "")])))
    subprocess.run(["ncu", "--clock-control", "none", "-k", "regex:rnn_persistent_cuda", "--launch-skip", "1", "-c",
                    "1", "--section", "SourceCounters", "--import-source", "no", "-f", "-o", str(report),
                    sys.executable, __file__, "--run", name], check=True, env=env, capture_output=True, text=True)
    return subprocess.run(["ncu", "-i", f"{report}.ncu-rep", "--page", "source", "--csv", "--print-source", "sass"],
                          check=True, capture_output=True, text=True).stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="P 256->512 B1 fp32,R 80->1024 B1 T200 fp32,U 128->1024 B8 T200 bf16",
                        help="comma-separated workload names or prefixes (fused_vs_cudnn.py's)")
    parser.add_argument("--csv-dir", help="keep ncu's per-instruction table of each workload here")
    parser.add_argument("--from-csv", nargs="+", metavar="CSV", help="summarize these exported tables (no GPU)")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # ncu's target
    args = parser.parse_args(argv)
    if args.run:
        run_workload(args.run)
        return 0
    sources: list[tuple[str, str]] = []
    if args.from_csv:
        sources = [(path, Path(path).read_text()) for path in args.from_csv]
    else:
        if shutil.which("ncu") is None:
            print("kernel_profile.py needs Nsight Compute's ncu on the PATH", file=sys.stderr)
            return 2
        from fused_vs_cudnn import WORKLOADS

        prefixes = [p.strip() for p in args.only.split(",") if p.strip()]
        names = [w.name for w in WORKLOADS if any(w.name.startswith(p) for p in prefixes)]
        if not names:
            print(f"--only {args.only!r} names no workload", file=sys.stderr)
            return 2
        with tempfile.TemporaryDirectory() as tmp:
            for name in names:
                try:
                    text = profile(name, Path(tmp))
                except subprocess.CalledProcessError as err:  # no counters, no GPU, a kernel that failed
                    last = (err.stderr or err.stdout or "").strip().splitlines()[-1:] or ["no output"]
                    print(f"{name}: ncu failed (exit {err.returncode}): {last[0]}", file=sys.stderr)
                    continue
                sources.append((name, text))
                if args.csv_dir:
                    Path(args.csv_dir).mkdir(parents=True, exist_ok=True)
                    (Path(args.csv_dir) / (re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") + ".csv")).write_text(text)
    if not sources:
        return 1
    print("| workload | " + " | ".join(PARTS) + " | outside the loop | top stalls (wait; product; cell) |")
    print("|---|" + "---|" * (len(PARTS) + 2))
    for name, text in sources:
        parts = summarize(read_source_csv(text))
        tops = "; ".join(", ".join(f"{k} {v}" for k, v in parts[p]["top"][:2]) for p in ("wait", "product", "cell"))
        print(f"| {name} | " + " | ".join(f"{100 * parts[p]['fraction']:.1f} %" for p in (*PARTS, "outside the loop"))
              + f" | {tops} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
