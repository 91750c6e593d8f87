"""The web viewer in a real browser (Debian's Chromium via Playwright) against a real server.

A small synthetic stadium is built and scanned once; `gigaface view` serves it (no tokens:
the page is opened from the URL it prints, whose fragment holds the run's key) and
`gigaface serve --public` serves it again behind tokens, with the anonymised copy public.
Screenshots of each state go to test-artifacts/ at the repository root, for a person to look at.
"""
from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import gigaface
from gigaface.demo.scene import build_stadium
from gigaface.library.store import Library
from bench.harness import KEY_HEADER, Server, run_cli
from tests.helpers import iou


playwright_api = pytest.importorskip("playwright.sync_api")

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
NODE_MODULES = REPO / "src" / "gigaface" / "service" / "web" / "node_modules" / "openseadragon"

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}"),
    pytest.mark.skipif(not NODE_MODULES.is_dir(),
                       reason="OpenSeadragon is not installed: npm ci --prefix src/gigaface/web"),
]


# --- servers ---------------------------------------------------------------------------------

def get_json(url: str, headers: dict | None = None):
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
        return json.load(r)


def wait_until(what: str, check, timeout: float = 120.0, server: subprocess.Popen | None = None):
    """Poll check() until it returns something truthy; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            pytest.fail(f"the server exited with {server.returncode} while waiting for {what}")
        try:
            value = check()
            if value:
                return value
        except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
            pass   # not listening yet
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def get(server: Server, path: str):
    """What a request of the page's kind (with the view's key, if any) answers."""
    return get_json(server.url + path, server.headers)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 3-MP stadium (about 400 faces of 16-60 px, the target among them), scanned;
    yields the stadium, the library and the scan's JSON summary."""
    folder = tmp_path_factory.mktemp("viewer")
    built = build_stadium(folder, megapixels=3, occupancy=0.5)
    assert built.target_box[2] >= 24, "the target must be big enough to be found"
    db = folder / "lib.db"
    result = run_cli("scan", built.panorama, "--db", db, "--json", cwd=folder)
    assert result.returncode == 0, result.stderr
    return built, db, json.loads(result.stdout)[0]


@pytest.fixture(scope="module")
def view_server(scene):
    """`gigaface view` on the scanned library, once its pyramid and exports are built."""
    _, db, _ = scene
    server = Server(db, command="view")
    try:
        # Exports too: the public server started later must find nothing left to build.
        wait_until("the pyramid and exports", lambda: all(
            c["pyramid"] and c["export"] for c in get(server, "/api/captures")) or None,
            server=server.process)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def token_server(scene, view_server):
    """`gigaface serve --public` on the same library (after `view` built its files), with
    one viewer token; yields (server, token)."""
    _, db, _ = scene
    created = run_cli("token", "create", db, "--name", "playwright", "--role", "viewer")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    server = Server(db, "--public")
    try:
        wait_until("the public captures", lambda: get_json(f"{server.url}/public/captures"),
                   server=server.process)
        yield server, token
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser():
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


# --- page helpers -----------------------------------------------------------------------------

def open_viewer(page, server: Server) -> None:
    page.goto(server.url_printed)
    page.wait_for_function("window.gigaface && window.gigaface.ready === true", timeout=60_000)
    wait_for_tiles(page)


def wait_for_tiles(page) -> None:
    """Until the tiles for the current view are drawn and the viewer is at rest."""
    page.wait_for_function("""() => {
        const v = window.gigaface.viewer, item = v.world.getItemAt(0), vp = v.viewport;
        const still = Math.abs(vp.getZoom(true) - vp.getZoom(false)) <= 1e-9 * vp.getZoom(false)
            && vp.getCenter(true).distanceTo(vp.getCenter(false)) <= 1e-9;
        return item && item.getFullyLoaded() && still;
    }""", timeout=30_000)


def screen_point(page, x: float, y: float) -> tuple[float, float]:
    """Page coordinates of image pixel (x, y), from OSD's own viewport conversion."""
    return tuple(page.evaluate("""([x, y]) => {
        const v = window.gigaface.viewer;
        const p = v.viewport.imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y));
        const r = v.element.getBoundingClientRect();
        return [r.left + p.x, r.top + p.y];
    }""", [x, y]))


def view_state(page) -> dict:
    """The viewport's centre in image pixels and its zoom, once at rest."""
    return page.evaluate("""() => {
        const vp = window.gigaface.viewer.viewport;
        const c = vp.viewportToImageCoordinates(vp.getCenter(true));
        return {x: c.x, y: c.y, zoom: vp.getZoom(true)};
    }""")


def centre(box) -> tuple[float, float]:
    return box[0] + box[2] / 2, box[1] + box[3] / 2


WEB = REPO / "src" / "gigaface" / "service" / "web"


def api_routes(page) -> list[re.Pattern]:
    """The addresses api.js says the page may ask for, as patterns of a URL's path and query."""
    routes = page.evaluate("import('/static/api.js').then((api) => Object.values(api.ROUTES))")
    assert routes, "api.js lists no routes"
    patterns = []
    for template in routes:
        pattern = re.sub(r"\\\{\w+\\\}", "[^/?&]+", re.escape(template))
        patterns.append(re.compile(pattern + (".*" if template.endswith("/") else "")))
    return patterns


def assert_only_api_js_addresses(page, server_url: str, urls: list[str]) -> None:
    """Every request the page made went to its own origin, to a static file of the page
    (its code, style and OpenSeadragon) or to an address from api.js's table."""
    routes = api_routes(page)
    for url in urls:
        if url.startswith(("data:", "blob:")):
            continue   # the favicon, and face crops already fetched through api.js
        assert url.startswith(server_url + "/"), f"a request left the server: {url}"
        path = url[len(server_url):]
        if path in ("/", "/public") or path.split("?")[0] in ("/", "/public"):
            continue
        if path.startswith("/static/") and not path.startswith("/static/vendor/openseadragon/images/"):
            continue
        assert any(r.fullmatch(path) for r in routes), f"{path} is not an address from api.js"


# --- tests --------------------------------------------------------------------------------------

def test_viewer_loads_every_face_and_draws_them(page, view_server):
    open_viewer(page, view_server)
    capture = page.evaluate("window.gigaface.capture")
    total = get(view_server, f"/api/captures/{capture['id']}/faces?limit=1")["total"]
    assert total > 100
    assert page.evaluate("window.gigaface.faces.length") == total
    # The home view shows the whole image, so every face is drawn (as a box or a dot).
    drawn = int(page.get_attribute("canvas.face-overlay", "data-drawn-count"))
    assert drawn == total
    assert page.locator("canvas.face-overlay").count() == 1   # one canvas, not a node per face
    assert page.text_content("#face-count") == f"{total:,} faces"
    assert page.locator("#capture-select option:checked").text_content() == "stadium.jpg"
    page.screenshot(path=ARTIFACTS / "viewer.png")


def test_listed_faces_are_counted_alike_by_the_cli_the_api_the_service_and_the_viewer(page, view_server, scene):
    """One operating point for what is listed: the scan's summary, `faces`, `captures`, the
    Python API, the service and the viewer count the same faces; the blur-only ones are
    stored (and counted apart by the scan) but listed nowhere."""
    _, db, summary = scene
    open_viewer(page, view_server)
    capture = page.evaluate("window.gigaface.capture")
    shown = page.evaluate("window.gigaface.faces.length")
    assert page.text_content("#face-count") == f"{shown:,} faces"
    assert get(view_server, "/api/captures")[0]["faces"] == shown
    assert get(view_server, f"/api/captures/{capture['id']}/faces?limit=1")["total"] == shown
    assert len(json.loads(run_cli("faces", db, "--json").stdout)) == shown
    assert json.loads(run_cli("captures", db, "--json").stdout)[0]["faces"] == shown
    assert len(gigaface.open_capture(str(db)).faces) == shown
    assert summary["faces"] == shown
    library = Library(str(db))
    stored = library.faces.all(capture["id"], include_unlisted=True)
    assert summary["stored"] == len(stored) > shown  # a crowd this size has faces only to blur
    assert sum(f.listed for f in stored) == shown


def test_the_run_key_leaves_the_address_bar_and_goes_with_every_request(page, view_server):
    """`gigaface view`'s page keeps the key of its URL's fragment for the tab and sends it
    with every API and tile request (a page of another site has no way to learn it)."""
    sent: list[tuple[str, dict]] = []
    page.on("request", lambda r: "/api/" in r.url and sent.append((r.url, r.headers)))
    open_viewer(page, view_server)
    assert "key=" not in page.url   # not bookmarked, shared or shown
    assert page.evaluate("sessionStorage.getItem('gigaface.key')") == view_server.key
    tiles = [url for url, _ in sent if re.search(r"/pyramid/\w+_files/", url)]
    assert tiles and [url for url, _ in sent if "/api/me" in url]
    assert all(headers.get(KEY_HEADER.lower()) == view_server.key for _, headers in sent)


def test_the_viewer_opened_without_its_key_says_where_to_find_it(page, view_server):
    page.goto(view_server.url + "/")
    message = page.locator("#stage-message[data-kind='error']")
    message.wait_for(timeout=30_000)
    assert "gigaface view printed" in message.text_content()
    assert page.evaluate("window.gigaface.ready") is not True


def test_hover_shows_tooltip_and_click_selects_face(page, view_server):
    open_viewer(page, view_server)
    faces = page.evaluate("window.gigaface.faces")
    rect = page.evaluate("(() => { const r = window.gigaface.viewer.element.getBoundingClientRect();"
                         " return [r.left, r.top, r.width, r.height]; })()")

    def central(face) -> bool:   # well away from the zoom buttons, legend and navigator
        x, y = screen_point(page, *centre(face["box"]))
        return (rect[0] + 0.25 * rect[2] < x < rect[0] + 0.75 * rect[2]
                and rect[1] + 0.25 * rect[3] < y < rect[1] + 0.75 * rect[3])

    face = max(filter(central, faces), key=lambda f: f["box"][3])
    x, y = screen_point(page, *centre(face["box"]))

    page.mouse.move(x - 40, y - 40)
    page.mouse.move(x, y, steps=4)
    tooltip = page.locator("#tooltip")
    tooltip.wait_for(state="visible")
    assert f"Face #{face['id']}" in tooltip.text_content()
    assert f"score {face['score']:.2f}" in tooltip.text_content()

    zoom_before = view_state(page)["zoom"]
    page.mouse.click(x, y)
    page.wait_for_function("id => window.gigaface.selected === id", arg=face["id"])
    page.wait_for_function("() => { const i = document.getElementById('face-crop');"
                           " return i.complete && i.naturalWidth > 0; }")
    assert page.is_visible("#face-detail") and not page.is_visible("#face-empty")
    assert page.text_content("#face-id") == f"#{face['id']}"
    assert page.text_content("#face-score") == f"{face['score']:.2f}"
    assert page.text_content("#face-size") == f"{int(face['quality']['size'] + 0.5)} px"   # JS rounds half up
    assert view_state(page)["zoom"] == pytest.approx(zoom_before)   # a click picks, it does not zoom
    page.screenshot(path=ARTIFACTS / "viewer-face.png")

    # A click on empty background (just above the image's top edge) clears the selection.
    width = page.evaluate("window.gigaface.capture.width")
    bx, by = screen_point(page, width / 2, -20)
    assert rect[1] < by and page.evaluate(
        "([x, y]) => { const r = window.gigaface.viewer.element.getBoundingClientRect();"
        " return window.gigaface.overlay.faceAt(x - r.left, y - r.top); }", [bx, by]) is None
    page.mouse.click(bx, by)
    page.wait_for_function("window.gigaface.selected === null")
    assert page.is_visible("#face-empty")


def test_find_me_ranks_the_target_first_and_flies_to_it(page, view_server, scene):
    built, _, _ = scene
    open_viewer(page, view_server)
    before = view_state(page)

    assert page.is_disabled("#find-search")
    page.set_input_files("#find-photos", str(built.reference))
    assert page.text_content("#find-files") == built.reference.name
    page.click("#find-search")
    page.wait_for_selector("#find-results .match", timeout=120_000)
    page.wait_for_function("() => [...document.querySelectorAll('#find-results img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")

    matches = page.evaluate("window.gigaface.matches")
    first = page.locator("#find-results .match").first
    assert first.get_attribute("data-rank") == "1"
    assert first.get_attribute("data-match") == "true"
    assert "is-match" in first.get_attribute("class")
    assert first.locator(".badge").text_content() == "match"
    assert iou(matches[0]["box"], built.target_box) > 0.3
    # Weak results look different from matches.
    weak = page.locator("#find-results .match.is-weak")
    assert weak.count() == sum(not m["match"] for m in matches) > 0
    assert weak.first.locator(".badge").count() == 0
    assert "match" in page.text_content("#find-status")

    first.locator("button").click()
    page.wait_for_function("id => window.gigaface.selected === id", arg=matches[0]["face_id"])
    wait_for_tiles(page)
    after = view_state(page)
    tx, ty = centre(built.target_box)
    size = built.target_box[3]
    assert after["zoom"] > 2 * before["zoom"]
    assert abs(after["x"] - tx) < 2 * size and abs(after["y"] - ty) < 2 * size
    assert page.text_content("#face-id") == f"#{matches[0]['face_id']}"
    assert int(page.get_attribute("canvas.face-overlay", "data-drawn-count")) > 0
    page.screenshot(path=ARTIFACTS / "viewer-search.png")


def test_find_me_reports_a_photo_without_a_face(page, view_server, scene, tmp_path):
    from tests.helpers import background, write_image

    blank = write_image(tmp_path / "wall.jpg", background(320, 240))
    open_viewer(page, view_server)
    page.set_input_files("#find-photos", str(blank))
    page.click("#find-search")
    status = page.locator("#find-status[data-kind='error']")
    status.wait_for(timeout=60_000)
    assert "no face" in status.text_content()
    assert page.locator("#find-results .match").count() == 0
    assert page.is_enabled("#find-search")


def test_only_api_js_knows_the_services_addresses(page, view_server, scene):
    """The other modules call api.js's functions; the page asks for nothing else."""
    for module in sorted(WEB.glob("*.js")):
        if module.name == "api.js":
            continue
        source = module.read_text()
        assert not re.search(r"[\"'`]/(api|public)\b", source), f"{module.name} builds a service address"
        assert "fetch(" not in source, f"{module.name} fetches on its own"

    built, _, _ = scene
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    open_viewer(page, view_server)
    face = page.evaluate("window.gigaface.faces[0]")
    page.evaluate("id => window.gigaface.overlay.onClick(window.gigaface.overlay.faceById(id))", face["id"])
    page.wait_for_function("() => { const i = document.getElementById('face-crop');"
                           " return i.complete && i.naturalWidth > 0; }")
    page.set_input_files("#find-photos", str(built.reference))
    page.click("#find-search")
    page.wait_for_selector("#find-results .match", timeout=120_000)
    paths = [u[len(view_server.url):] for u in urls]
    for needed in ("/api/me", "/api/captures", "/search?limit=20", "/crop.jpg", "/faces?offset=0"):
        assert any(needed in p for p in paths), f"the page never asked for {needed}"
    assert_only_api_js_addresses(page, view_server.url, urls)


def test_the_legend_and_the_boxes_follow_one_table_of_score_bands(page, view_server):
    open_viewer(page, view_server)
    legend = page.locator("#legend span").all_text_contents()
    assert legend == ["score \u2265 0.75", "0.6\u20130.75", "< 0.6", "match"]
    colours = page.evaluate("""() => import('/static/palette.js').then((p) => {
        const css = getComputedStyle(document.documentElement);
        const swatch = (cls) => getComputedStyle(document.querySelector(`#legend .${cls}`)).borderTopColor;
        return p.SCORE_BANDS.map((b) => [b.colour, css.getPropertyValue(`--score-${b.name}`).trim(),
                                        swatch(`score-${b.name}`), p.scoreBand(b.from).name === b.name])
            .concat([[p.MARKS.match, css.getPropertyValue('--match').trim(), swatch('is-match'), true]]);
    })""")
    for table, variable, swatch, own_band in colours:
        assert variable == table and own_band
        r, g, b = (int(table[i:i + 2], 16) for i in (1, 3, 5))
        assert swatch == f"rgb({r}, {g}, {b})"


def test_overlay_draws_culls_and_hit_tests_20000_faces(page, view_server):
    """Synthetic faces on the real image: one full redraw, culling, and hit tests."""
    open_viewer(page, view_server)
    timing = page.evaluate("""() => {
        const g = window.gigaface, W = g.capture.width, H = g.capture.height;
        let seed = 7;
        const rnd = () => (seed = (seed * 16807) % 2147483647) / 2147483647;
        const faces = Array.from({length: 20000}, (_, i) => {
            const s = 4 + 20 * rnd();
            return {id: 1e6 + i, box: [rnd() * (W - s), rnd() * (H - s), s, s], score: rnd(), quality: {}};
        });
        g.overlay.setFaces(faces);
        let t = performance.now();
        for (let i = 0; i < 10; i++) g.overlay.draw();
        const draw = (performance.now() - t) / 10;
        const drawnAll = Number(g.overlay.canvas.dataset.drawnCount);
        t = performance.now();
        let hits = 0;
        for (let i = 0; i < 5000; i++) hits += g.overlay.faceAt(rnd() * 1000, rnd() * 800) ? 1 : 0;
        const hit = (performance.now() - t) / 5000;
        g.viewer.viewport.zoomTo(g.viewer.viewport.getZoom() * 8, null, true);
        g.overlay.draw();
        return {draw, drawnAll, hit, hits, drawnZoomed: Number(g.overlay.canvas.dataset.drawnCount)};
    }""")
    assert timing["drawnAll"] == 20000               # the whole image is in view
    assert timing["drawnZoomed"] < 20000 / 16         # 8x zoom shows ~1/64 of the image
    assert timing["hits"] > 0
    # Times are for reading (-s), not asserting: ~5 ms a redraw and ~0.01 ms a hit test
    # measured on a 2-core machine, which a test on a shared CI machine cannot hold to.
    print(f"overlay, 20,000 faces: redraw {timing['draw']:.1f} ms, hit test {timing['hit'] * 1000:.1f} us")


def test_sign_in_with_a_token(page, token_server):
    server, token = token_server
    page.goto(server.url + "/")
    card = page.locator("#signin")
    card.wait_for(state="visible")
    page.screenshot(path=ARTIFACTS / "signin.png")

    page.fill("#signin-token", "not-a-token")
    page.click("#signin-form button[type=submit]")
    page.locator("#signin-error").wait_for(state="visible")
    assert "not accepted" in page.text_content("#signin-error")

    tiles: list[dict] = []
    page.on("request", lambda r: re.search(r"/pyramid/\w+_files/", r.url) and tiles.append(r.headers))
    page.fill("#signin-token", token)
    page.click("#signin-form button[type=submit]")
    page.wait_for_function("window.gigaface && window.gigaface.ready === true", timeout=60_000)
    wait_for_tiles(page)
    assert card.is_hidden()
    assert page.text_content("#role") == "playwright · viewer"
    assert page.is_visible("#sign-out")
    # Tiles go through XHR so that they too carry the token.
    assert tiles and all(h.get("authorization") == f"Bearer {token}" for h in tiles)
    assert page.evaluate("sessionStorage.getItem('gigaface.token')") == token


def test_public_page_shows_only_the_anonymised_image(page, token_server):
    server, _ = token_server
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(server.url + "/public")
    page.wait_for_function("window.gigaface && window.gigaface.ready === true", timeout=60_000)
    wait_for_tiles(page)
    capture = page.evaluate("window.gigaface.capture")
    assert page.locator("#capture-select option:checked").text_content() == capture["name"]
    assert "Faces are blurred; people who opted in are shown." in page.text_content("#public-note")
    assert page.locator("canvas.face-overlay").count() == 0
    assert page.locator("input[type=file], #find-panel, #face-panel, #legend").count() == 0
    # Every image request went to the anonymised pyramid, none to the private API.
    tiles = [u for u in requests if "_files/" in u]
    assert tiles and all(u.startswith(f"{server.url}{capture['url'][:-len('.dzi')]}_files/") for u in tiles)
    assert not [u for u in requests if "/api/" in u]
    page.screenshot(path=ARTIFACTS / "public.png")


# The job is niced: on a machine whose cores the other test process keeps busy it gets a
# small share of them, and its scan may take minutes, not seconds.
@pytest.mark.timeout(600)
def test_a_capture_being_scanned_shows_progress_then_opens(page, tmp_path):
    """Its own library and server: a capture added through the API is scanned by the
    server's job while the page watches."""
    from gigaface.library.store import Library

    built = build_stadium(tmp_path, megapixels=3, occupancy=0.5, seed=3)
    db = tmp_path / "scanning.db"
    Library(str(db), create=True).close()
    server = Server(db, "--data-dir", tmp_path, command="view")
    try:
        wait_until("the server", lambda: get(server, "/api/me"), server=server.process)
        # accurate: a scan long enough to show the page a few of its steps
        body = json.dumps({"path": str(built.panorama), "preset": "accurate"}).encode()
        request = urllib.request.Request(f"{server.url}/api/captures", data=body, method="POST",
                                         headers={"Content-Type": "application/json", **server.headers})
        with urllib.request.urlopen(request, timeout=30) as r:
            capture = json.load(r)
        assert capture["state"] in ("queued", "running")

        # Every request, and every text the progress label shows; the first event stream
        # is cut off, as a dropped connection would be: the page must come back to it.
        urls: list[str] = []
        streams: list[dict] = []
        page.on("request", lambda r: urls.append(r.url))
        page.on("request", lambda r: r.url.endswith("/events") and streams.append(r.headers))
        page.route(re.compile(r".*/events$"), lambda route: route.abort("connectionreset"), times=1)
        page.add_init_script("""new MutationObserver(() => {
            const label = document.getElementById('scan-label');
            const seen = (window.scanLabels = window.scanLabels || []);
            if (label && label.textContent && seen[seen.length - 1] !== label.textContent) seen.push(label.textContent);
        }).observe(document, {subtree: true, childList: true, characterData: true});""")
        page.goto(f"{server.url}/?capture={capture['id']}#key={server.key}")
        progress = page.locator("#scan-progress")
        progress.wait_for(state="visible")
        assert page.evaluate("window.gigaface.ready") is False
        assert page.is_visible("#stage-message")
        page.wait_for_function("/^Scanning · \\w+ \\d+\\/\\d+/.test("
                               "document.getElementById('scan-label').textContent)", timeout=120_000)
        page.screenshot(path=ARTIFACTS / "viewer-scanning.png")

        page.wait_for_function("window.gigaface.ready === true", timeout=480_000)
        assert progress.is_hidden() and page.is_hidden("#stage-message")
        total = get(server, f"/api/captures/{capture['id']}/faces?limit=1")["total"]
        assert total > 100 and page.evaluate("window.gigaface.faces.length") == total
        assert page.locator("#capture-select option:checked").text_content() == built.panorama.name

        # The progress came through the event stream: the capture itself was asked for when
        # the page opened and when the cut stream was retried, not every second of the scan.
        asked = [u for u in urls if u == f"{server.url}/api/captures/{capture['id']}"]
        labels = page.evaluate("window.scanLabels")
        scanning = [t for t in labels if t.startswith("Scanning · ")]
        assert 2 <= len(streams) <= 4 and len(asked) <= len(streams), (asked, streams)
        assert all(h.get(KEY_HEADER.lower()) == server.key for h in streams)
        assert len(scanning) > len(asked) + 1, labels   # more updates than the page asked for
        assert_only_api_js_addresses(page, server.url, urls)
    finally:
        server.stop()
