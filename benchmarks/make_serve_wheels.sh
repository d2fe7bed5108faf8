#!/usr/bin/env bash
# Builds .whl-serve/: the wheels `lstminfer serve` and `lstminfer loadtest` need on the H200 machine (x86-64,
# Python 3.12, no network), small enough to carry (a call carries 64 MiB in all, the repository included).
# Run from the repository root on a machine with network access and pip; then benchmarks/serve_gpu.sh uses
# the folder on the GPU machine.
#
#   nvidia-pytriton 0.7.0 (55 MB): repacked as nvidia_pytriton-0.7.0+lstminfer.stripped, holding what
#     `lstminfer serve` runs (serve/server.py starts the bundled tritonserver itself on a repository it
#     writes; PyTriton's Python API is never imported): bin/tritonserver, the Python backend, the
#     Python-backend stubs for $STUBS only, the local cache, and the vendored libraries those link
#     (readelf's NEEDED, followed from each binary), symbols stripped (strip --strip-unneeded). Left out:
#     the stubs for the other Pythons and the vendored libpython3.13 that nothing we run links. The
#     Python package and its metadata stay, so `importlib` finds `pytriton` and its version.
#   tritonclient[http,grpc] and the dependencies the GPU image lacks (KINDS.md's package list): its
#     HTTP client's geventhttpclient, gevent, greenlet, zope.event, zope.interface, brotli, and
#     python-rapidjson; cp312 manylinux wheels as the registry has them. grpcio, protobuf, numpy,
#     urllib3, certifi, packaging, ml-dtypes and aiohttp are already in the image.
#
# Reproducible: the same downloads give byte-identical wheels (sorted entries, fixed timestamps, fixed
# compression level). Usage: benchmarks/make_serve_wheels.sh [DEST] (default .whl-serve); STUBS="3.11 3.12"
# keeps the stubs for those Pythons (3.11 is this CPU machine's, to test the set here).
set -euo pipefail
DEST=${1:-.whl-serve}
STUBS=${STUBS:-"3.11 3.12"}
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$DEST" "$WORK/dl"

download() {  # cp312 x86-64 binary wheels, no dependencies (each one is named here)
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$WORK/dl" "$@"
}
download nvidia-pytriton==0.7.0
download tritonclient==2.73.0 python-rapidjson==1.25 geventhttpclient==2.6.1 gevent==26.9.0 greenlet==3.3.2 \
  zope.event==6.2 zope.interface==8.7 brotli==1.2.1

rm -f "$DEST"/*.whl
for wheel in "$WORK"/dl/*.whl; do
  case "$(basename "$wheel")" in
    nvidia_pytriton-*) ;;
    *) cp "$wheel" "$DEST/" ;;
  esac
done

STUBS="$STUBS" "$PYTHON" - "$WORK"/dl/nvidia_pytriton-0.7.0-*.whl "$WORK/pytriton" "$DEST" <<'EOF'
"""Unpack the nvidia-pytriton wheel, keep what `lstminfer serve` runs, strip it, repack it reproducibly."""
import base64
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

wheel, work, dest = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
stubs = os.environ["STUBS"].split()
version, new_version = "0.7.0", "0.7.0+lstminfer.stripped"
with zipfile.ZipFile(wheel) as z:
    z.extractall(work)
    # extractall drops the permission bits: the binaries' executable bits come from the original entries
    modes = {i.filename: (i.external_attr >> 16) & 0o777 for i in z.infolist() if not i.is_dir()}
server = work / "pytriton" / "tritonserver"
libs = work / "nvidia_pytriton.libs"
for folder in (server / "python_backend_stubs").iterdir():
    if folder.name not in stubs:
        shutil.rmtree(folder)


def needed(path: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    return [line.split("[", 1)[1].split("]", 1)[0] for line in out.splitlines() if "(NEEDED)" in line]


roots = [server / "bin" / "tritonserver", *server.glob("backends/**/*.so"), *server.glob("caches/**/*.so"),
         *server.glob("python_backend_stubs/*/triton_python_backend_stub")]
vendored = {p.name for p in libs.iterdir()}
keep, todo = set(), list(roots)
while todo:
    for name in needed(todo.pop()):
        if name in vendored and name not in keep:
            keep.add(name)
            todo.append(libs / name)
for name in sorted(vendored - keep):
    print(f"dropped {name} (nothing we run links it)")
    (libs / name).unlink()
for path in [*roots, *(libs / name for name in keep)]:
    subprocess.run(["strip", "--strip-unneeded", str(path)], check=True)

old_info = work / f"nvidia_pytriton-{version}.dist-info"
info = work / f"nvidia_pytriton-{new_version}.dist-info"
old_info.rename(info)
for name in ("METADATA", "WHEEL", "RECORD", "entry_points.txt", "top_level.txt"):  # their new paths
    modes[f"{info.name}/{name}"] = modes.get(f"{old_info.name}/{name}", 0o644)
metadata = (info / "METADATA").read_text().replace(f"\nVersion: {version}\n", f"\nVersion: {new_version}\n", 1)
(info / "METADATA").write_text(metadata)


def digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


files = sorted(p for p in work.rglob("*") if p.is_file() and p.name != "RECORD" and "__pycache__" not in p.parts)
record = [f"{p.relative_to(work).as_posix()},{digest(p.read_bytes())},{p.stat().st_size}" for p in files]
record.append(f"{info.name}/RECORD,,")
(info / "RECORD").write_text("\n".join(record) + "\n")
out = dest / wheel.name.replace(f"-{version}-", f"-{new_version}-")
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
    for path in [*files, info / "RECORD"]:
        entry = zipfile.ZipInfo(path.relative_to(work).as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
        entry.external_attr = (0o100000 | (modes.get(entry.filename) or 0o644)) << 16
        entry.compress_type = zipfile.ZIP_DEFLATED
        z.writestr(entry, path.read_bytes(), compresslevel=9)
print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB (from {wheel.stat().st_size / 2**20:.1f} MiB)")
EOF
ls -l "$DEST"
du -ch "$DEST"/*.whl | tail -1
