"""The demo's report.html opened in a real headless browser (Chromium).

A copy of the page gets a small probe script: it records console errors and uncaught
exceptions, and after the load event writes what it found (images that did not decode, table of
contents links without a target, elements wider than the 1280 px viewport) into the DOM, which
`chromium --dump-dom` prints. A full-page screenshot must not be blank. Skipped, with the
reason, on machines without a Chromium binary (install Debian's `chromium` package to run it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from emodebias.cli import app

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome", "chrome")
                if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no Chromium binary on PATH (apt-get install chromium to run it)")

WIDTH = 1280
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e)));
const origError = console.error;
console.error = (...a) => { window.__errors.push(a.join(' ')); origError(...a); };
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt);
  const links = [...document.querySelectorAll('nav a[href^="#"]')];
  const dangling = links.filter(a => {
    const t = document.getElementById(a.getAttribute('href').slice(1));
    return !t || !/^H[1-6]$/.test(t.tagName);
  }).map(a => a.getAttribute('href'));
  const vw = document.documentElement.clientWidth;
  const wide = [...document.body.querySelectorAll('*')].filter(el => {
    const r = el.getBoundingClientRect();
    return r.right > vw + 1 && !(el.parentElement && el.parentElement.closest('.wide'));
  }).map(el => el.tagName + ':' + (el.id || el.className || ''));
  const out = document.createElement('pre');
  out.id = '__probe';
  out.textContent = JSON.stringify({images: imgs.length, broken, links: links.length,
    dangling, wide, errors: window.__errors, scrollWidth: document.documentElement.scrollWidth,
    viewport: vw});
  document.body.appendChild(out);
});
</script>"""


def chromium(*args: str, height: int = 900, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--disable-dev-shm-usage", f"--window-size={WIDTH},{height}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def report_page(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    res = CliRunner().invoke(app, ["demo", "--quick", "--workers", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out / "report" / "report.html"


def test_report_loads_in_chromium_images_decode_toc_resolves(report_page: Path,
                                                            tmp_path: Path) -> None:
    page = report_page.read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("<head>", "<head>" + PROBE, 1))
    res = chromium("--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    found = re.search(r"<pre id=\"__probe\">(.*?)</pre>", res.stdout, flags=re.S)
    assert found, f"the page did not finish loading: {res.stderr[-2000:]}"
    probe = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&")
                       .replace("&lt;", "<").replace("&gt;", ">"))
    n_img = page.count("<img ")
    assert probe["images"] == n_img >= 3
    assert probe["broken"] == [], probe["broken"]
    n_toc = len(re.findall(r"<li[^>]*><a href='#", page))
    assert probe["links"] == n_toc >= 8 and probe["dangling"] == []
    assert probe["errors"] == []
    # nothing wider than the viewport at 1280 px (wide tables scroll inside their own box)
    assert probe["wide"] == [] and probe["scrollWidth"] <= probe["viewport"]


def test_report_screenshot_is_not_blank(report_page: Path, tmp_path: Path) -> None:
    from PIL import Image

    shot = tmp_path / "shot.png"
    res = chromium(f"--screenshot={shot}", report_page.as_uri(), height=4000)
    assert shot.is_file(), res.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size[0] == WIDTH
        gray = np.asarray(im.convert("L"))
    assert gray.std() > 10 and (gray < 128).mean() > 0.01  # text, tables and figures drawn
