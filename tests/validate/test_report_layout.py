"""report.html as a release engineer sees it: a real demo release that fails its gates, rendered in headless Chromium
(Debian's chromium-headless-shell, fetched once into a cache: tests/browser.py) at 1400 px (a desktop) and 390 px
(a phone). The verdict and why it failed come before anything else and, on the desktop, without scrolling; nothing
makes the page wider than the window (wide tables scroll inside their own box).

``EDGESHIP_SCREENSHOTS=DIR`` also saves the two first screens as DIR/report-1400.png and DIR/report-390.png (the
ones in docs/ were made so)."""

from __future__ import annotations

import os
import shutil
import struct
import time
from pathlib import Path

import pytest

from tests.browser import Page, Unavailable, headless_chromium

#: (width, height, as a phone): a desktop window, and a phone's viewport (where the page's viewport tag applies)
SCREENS = {"1400": (1400, 900, False), "390": (390, 844, True)}

# The demo's int8 file has an SQNR near 21 dB and its float file runs in well under a millisecond: this policy fails
# the int8 on SQNR and the float on latency, the two kinds of reason a release stops for
TIGHT_POLICY = """\
[int8]
sqnr_db = 40.0

[latency.tflite.fp32]
p50_ms = 0.001
"""


@pytest.fixture(scope="session")
def chromium():
    start = time.monotonic()
    try:
        found = headless_chromium()
    except Unavailable as e:
        pytest.skip(f"headless Chromium unavailable: {e}")
    print(f"\nheadless Chromium ready in {time.monotonic() - start:.1f} s: {found[0]}")
    return found


@pytest.fixture(scope="module")
def failing_report(demo_release, tmp_path_factory) -> Path:
    """report.html of the session's demo release (TFLite fp32 and int8) validated on the demo's 360 held-out images
    under :data:`TIGHT_POLICY`."""
    from edgeship.validate.pipeline import validate

    out, _ = demo_release
    root = tmp_path_factory.mktemp("layout")
    (root / "policy.toml").write_text(TIGHT_POLICY)
    report = validate([out], policy=root / "policy.toml", report_dir=root / "report", iterations=5, warmup=1,
                      kernel_path_samples=0, progress=False)
    assert not report.passed and [a.status.value for a in report.artifacts] == ["failed", "failed"]
    return root / "report" / "report.html"


@pytest.fixture(scope="module")
def page(chromium):
    with Page(*chromium) as p:
        yield p


# Every element's box, the verdict header's, and the failure reasons', in CSS pixels of the page
_LAYOUT = """(() => {
  const box = e => { const r = e.getBoundingClientRect();
                     return {top: r.top + scrollY, bottom: r.bottom + scrollY, left: r.left, right: r.right}; };
  const header = document.querySelector('header');
  const rest = [...document.body.querySelectorAll('*')].filter(e => !header.contains(e) && e.getClientRects().length);
  const scroller = document.querySelector('#summary .scroll');
  return {
    header: box(header),
    verdict: box(header.querySelector('h1')),
    verdictText: header.querySelector('h1').textContent,
    reasons: [...header.querySelectorAll('ul.failing > li > ul > li')].map(e => ({text: e.textContent, ...box(e)})),
    firstOther: Math.min(...rest.map(e => box(e).top)),
    firstOtherTag: rest.map(e => [box(e).top, e.tagName + '#' + e.id]).sort((a, b) => a[0] - b[0])[0][1],
    viewport: [innerWidth, innerHeight],
    scrollWidth: document.documentElement.scrollWidth,
    topSectionRight: Math.max(...[header, ...header.querySelectorAll('*')].map(e => box(e).right)),
    summary: scroller && {scrollWidth: scroller.scrollWidth, clientWidth: scroller.clientWidth,
                          overflowX: getComputedStyle(scroller).overflowX},
    missed: [...document.querySelectorAll('#summary td.missed')].map(e => getComputedStyle(e).backgroundColor),
    plain: getComputedStyle(document.querySelector('#summary td:not(.missed)')).backgroundColor,
  };
})()"""


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("screen", list(SCREENS))
def test_verdict_and_reasons_come_first_and_nothing_overflows(page, failing_report, screen, tmp_path):
    width, height, mobile = SCREENS[screen]
    page.open(failing_report, width, height, mobile=mobile)
    got = page.evaluate(_LAYOUT)

    # the verdict, then every reason, above everything else on the page
    assert got["verdictText"].endswith("FAILED")
    texts = [r["text"] for r in got["reasons"]]
    assert any(t.startswith("sqnr_db ") and "misses >= 40" in t for t in texts), texts
    assert any(t.startswith("latency_p50_ms ") and "misses <= 0.001" in t for t in texts), texts
    assert got["header"]["bottom"] <= got["firstOther"], f"{got['firstOtherTag']} starts above the end of the why"
    assert all(r["bottom"] <= got["header"]["bottom"] for r in got["reasons"])
    if screen == "1400":  # the whole why without scrolling
        assert got["header"]["bottom"] <= height
    else:  # a phone: the verdict and the first reason on its first screen
        assert got["verdict"]["bottom"] <= height and got["reasons"][0]["top"] < height

    # nothing wider than the window: not the page, not the top section; the summary table scrolls in its own box
    assert got["scrollWidth"] <= width, got
    assert got["topSectionRight"] <= width
    assert got["summary"] and got["summary"]["overflowX"] == "auto"
    if screen == "1400":  # a desktop shows the whole summary table
        assert got["summary"]["scrollWidth"] <= got["summary"]["clientWidth"], got["summary"]

    # the figures that missed their gate stand out from the others: the int8's SQNR, the fp32's p50
    assert len(got["missed"]) == 2 and all(c != got["plain"] for c in got["missed"])

    shot = tmp_path / f"report-{screen}.png"
    page.screenshot(shot)
    assert _png_size(shot) == (width, height)
    if os.environ.get("EDGESHIP_SCREENSHOTS"):
        target = Path(os.environ["EDGESHIP_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target / shot.name)
