"""The HTML report rendered by a real browser: headless Chromium draws it, we check the pixels and the DOM.

A page that parses but does not render (a broken data URI, a table outside the viewport, an empty body)
passes every string test in test_report.py; here Chromium loads the file offline, takes a screenshot and
dumps the DOM it built.  Needs Chromium on PATH (Debian/Ubuntu: `apt-get install -y chromium`); skips
with that reason elsewhere.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lstminfer.report.render import write_report
from test_report import bench_record, verify_record

BROWSER = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="needs Chromium on PATH (apt-get install -y chromium)")

WIDTH, HEIGHT = 1280, 4200
# tab10's first colours, the lines of onnxruntime[cpu] and openvino[cpu]: only the embedded plots have them
PLOT_COLOURS = [(31, 119, 180), (255, 127, 14)]


def chromium(*args: str) -> str:
    # --no-sandbox: CI containers run as root, where Chromium refuses its sandbox
    done = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--allow-file-access-from-files", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bench, verify = [], []
    for backend, factor in (("torch", 1.0), ("onnxruntime", 0.3), ("openvino", 0.5)):
        for seq_len in (1, 16, 128):
            for batch in (1, 8):
                bench.append(bench_record(backend, seq_len, batch, factor * (0.05 + 0.004 * seq_len) * (1 + batch)))
                verify.append(verify_record(backend, seq_len, batch, 1e-7 * seq_len))
    verify.append({**verify_record("torch", 16, 8, 0.02), "precision": "fp16", "atol": 1e-2, "rtol": 1e-2,
                   "passed": False})
    results = {"machine": {"cpu": "Test CPU", "cpu_count": 2}, "model": {"name": "tiny"}, "verify": verify,
               "bench": bench}
    return write_report(results, tmp_path_factory.mktemp("browser") / "report.html", "html")


def test_chromium_draws_the_tables_and_the_embedded_plots(report: Path) -> None:
    import matplotlib.image

    shot = report.with_name("screenshot.png")
    chromium(f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}", report.as_uri())
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (HEIGHT, WIDTH)
    rgb = np.round(pixels[..., :3] * 255).astype(int)
    not_white = (rgb < 245).any(axis=-1)
    assert not_white.mean() > 0.05  # text, tables and plots, not a blank page
    for colour in PLOT_COLOURS:  # the plots' line colours: the data-URI images were decoded and drawn
        close = (np.abs(rgb - np.array(colour)) <= 12).all(axis=-1)
        assert close.sum() > 200, colour
    # the failed fp16 verification is drawn in the report's red (#b00)
    assert ((np.abs(rgb - np.array((187, 0, 0))) <= 30).all(axis=-1)).sum() > 20


def test_chromium_dom_holds_every_table_and_image(report: Path) -> None:
    dom = chromium("--dump-dom", report.as_uri())
    assert dom.count("<table>") == 3  # fastest per point, benchmark, verification
    assert len(re.findall(r'<img alt="[^"]+" src="data:image/png;base64,', dom)) == 4
    for title in ("Fastest backend per point", "Plots", "Benchmark", "Verification"):
        assert f"<h2>{title}</h2>" in dom
    assert '<td class="failed">FAILED</td>' in dom
    assert "Times in ms." in dom
