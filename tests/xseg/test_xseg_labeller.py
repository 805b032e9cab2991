"""The browser labeller (engine.xseg.labeller): its HTTP API over DFLJPG polygons (always), and the page
itself driven in a real headless Chromium through Playwright (when both are installed; CI without them
skips that one test with the reason)."""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request

import numpy as np
import pytest

from engine.faces import dfljpg
from engine.errors import DataError
from engine.xseg import apply as ap
from engine.xseg.labeller import LabelServer, polygons_from_mask
from engine.xseg.polys import parse_polys


@pytest.fixture
def server(xseg_faces):
    s = LabelServer(xseg_faces)
    s.start()
    yield s
    s.shutdown()


def _req(server, path, method="GET", body=None, token=True, host=None):
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode())
    if token:
        req.add_header("X-Token", server.token)
    if host:
        req.add_header("Host", host)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_api_reads_and_writes_dfl_polygons(server, xseg_faces):
    assert server.httpd.server_address[0] == "127.0.0.1"
    code, body = _req(server, "/api/faces")
    faces = json.loads(body)["faces"]
    assert code == 200 and len(faces) == 6 and faces[0]["polygons"] == 1 and faces[0]["width"] == 128
    name = faces[2]["name"]
    code, body = _req(server, f"/api/faces/{name}/image")
    assert code == 200 and body == (xseg_faces / name).read_bytes()
    new = {"polygons": [{"type": "include", "points": [[10, 10], [100, 12], [90, 110], [12, 100]]},
                        {"type": "exclude", "points": [[40, 40], [60, 40], [50, 60]]}]}
    code, body = _req(server, f"/api/faces/{name}/polygons", "PUT", new)
    assert code == 200 and json.loads(body)["polygons"] == 2
    stored = dfljpg.load(xseg_faces / name).meta["seg_ie_polys"]  # DFL's editor format
    assert [p["type"] for p in stored["polys"]] == [1, 0] and stored["polys"][0]["pts"].dtype == np.float32
    np.testing.assert_array_equal(stored["polys"][1]["pts"], np.float32([[40, 40], [60, 40], [50, 60]]))
    code, body = _req(server, f"/api/faces/{name}/polygons")
    assert json.loads(body) == new
    assert len(list((xseg_faces / ap.BACKUP_DIR).glob("*-label.zip"))) == 1  # first save backs everything up


def test_api_refuses_bad_input_and_foreign_requests(server, xseg_faces):
    name = sorted(p.name for p in xseg_faces.glob("*.jpg"))[0]
    before = (xseg_faces / name).read_bytes()
    bad = {"polygons": [{"type": "include", "points": [[1, 2, 3]]}]}
    code, body = _req(server, f"/api/faces/{name}/polygons", "PUT", bad)
    assert code == 400 and "points must be a list of [x, y] pairs" in json.loads(body)["error"]
    code, body = _req(server, f"/api/faces/{name}/polygons", "PUT", {"polygons": [{"type": "maybe", "points": []}]})
    assert code == 400 and "polygon type 'maybe' is not valid" in json.loads(body)["error"]
    assert _req(server, "/api/faces", token=False)[0] == 403
    assert _req(server, "/api/faces", host="evil.example:80")[0] == 403  # DNS rebinding
    assert _req(server, "/api/faces/..%2F..%2Fetc%2Fpasswd/image")[0] == 404
    assert _req(server, f"/api/faces/{name}/suggest")[0] == 404  # no --model
    assert (xseg_faces / name).read_bytes() == before


def test_labeller_refuses_a_folder_with_non_dfljpg_files(xseg_faces):
    (xseg_faces / "x.jpg").write_bytes(dfljpg.encode_jpeg(np.zeros((4, 4, 3), np.uint8)))
    with pytest.raises(DataError, match="x.jpg: not a DFLJPG"):
        LabelServer(xseg_faces)


def test_polygons_from_mask_trace_outlines_and_holes():
    m = np.zeros((64, 64), np.float32)
    m[8:56, 8:56] = 1
    m[24:40, 24:40] = 0
    polys = polygons_from_mask(m)
    assert [p.type for p in polys] == [1, 0]
    from engine.xseg.polys import rasterize

    assert (rasterize(polys, (64, 64))[..., 0] != m).mean() < 0.02


# No sandbox (CI runs as root); no background networking: the machine's network is closed, and Chromium's
# own connections would otherwise be refused many at a time.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _browser():
    """playwright (in the lock) and a Chromium binary (.ci/run installs Debian's). Outside CI a missing
    browser skips the test with the fix; in CI (CI=true) it fails, so the page is never silently untested."""
    missing = None
    try:
        import playwright.sync_api as pw
    except ImportError:
        pw, missing = None, "playwright not installed (it is in requirements.lock: make venv)"
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        missing = missing or "no Chromium on this machine (apt-get install chromium)"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    return pw, exe


def test_page_labels_a_face_in_a_headless_browser(server, xseg_faces):
    pw, exe = _browser()
    names = sorted(p.name for p in xseg_faces.glob("*.jpg"))
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url)
            page.wait_for_selector("body[data-ready='1']", timeout=20000)
            assert page.locator("#faces li").count() == 6
            page.locator(f"#faces li[data-name='{names[1]}']").click()
            page.wait_for_function(f"document.getElementById('status').textContent.includes('{names[1]}')")
            scale = page.evaluate("document.getElementById('canvas').width") / 128
            box = page.locator("#canvas").bounding_box()

            def click(x, y, **kw):  # image pixels -> page coordinates
                page.mouse.click(box["x"] + x * scale, box["y"] + y * scale, **kw)

            page.locator("#clear").click()
            for x, y in [(20, 20), (100, 20), (100, 100), (20, 100)]:
                click(x, y)
            page.keyboard.press("Enter")
            page.keyboard.press("e")  # exclude mode
            for x, y in [(50, 50), (70, 50), (60, 70)]:
                click(x, y)
            click(50, 50)  # clicking the first point closes the polygon
            page.keyboard.press("Control+s")
            page.wait_for_function("document.getElementById('status').textContent.includes('saved') && "
                                   "!document.getElementById('status').textContent.includes('unsaved')")
            # right-click deletes a point; undo brings it back; navigating with D saves the change
            click(60, 70, button="right")
            page.keyboard.press("Control+z")
            page.keyboard.press("d")
            page.wait_for_function(f"document.getElementById('status').textContent.includes('{names[2]}')")
            assert not errors, errors
        finally:
            browser.close()
    polys = parse_polys(dfljpg.load(xseg_faces / names[1]).meta["seg_ie_polys"], names[1])
    assert [p.type for p in polys] == [1, 0]
    np.testing.assert_allclose(polys[0].pts, [[20, 20], [100, 20], [100, 100], [20, 100]], atol=1.0)
    np.testing.assert_allclose(polys[1].pts, [[50, 50], [70, 50], [60, 70]], atol=1.0)
