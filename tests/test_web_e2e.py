"""The web page in a real headless Chromium: it loads, shows a generated image, and "Another one"
changes it. Needs Debian's chromium at /usr/bin/chromium (the Makefile installs it); Python
playwright drives it without downloading a browser of its own.

Screenshots of the page go to test-artifacts/ (gitignored) for people to look at: web.png (dark),
web-light.png and web-narrow.png (a phone-sized viewport);
LATENTFORGE_E2E_RUN=path/to/run uses that run instead of the tiny one (for a nicer screenshot).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                "(apt-get install -y chromium; `make test` installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_run(root: Path) -> Path:
    from latentforge.config import TrainConfig
    from latentforge.train import train

    rng = np.random.default_rng(0)
    imgs = []
    for i in range(32):
        img = np.full((28, 28), 20, np.uint8)
        a, b = rng.integers(4, 12, 2)
        img[a : a + 12, b : b + 12] = 230 if i % 2 else 120
        imgs.append(img)
    np.savez(root / "tiny.npz", images=np.stack(imgs), labels=np.arange(32) % 2, class_names=np.array(["a", "b"]))
    cfg = TrainConfig(model="vae", data=str(root / "tiny.npz"), out=str(root / "run"), resolution=28, steps=4,
                      batch_size=8, width=8, z_dim=8, log_every=2, sample_every=4, checkpoint_every=4)
    train(cfg, progress=False, log=lambda m: None)
    return root / "run"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    import uvicorn

    from latentforge.serve import create_app

    run = os.environ.get("LATENTFORGE_E2E_RUN") or _tiny_run(tmp_path_factory.mktemp("web"))
    port = _free_port()
    config = uvicorn.Config(create_app(run), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start within 30 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def _wait_until(page, js_function: str, arg=None, timeout_s: float = 20.0) -> None:
    """Poll a JS predicate with page.evaluate. (page.wait_for_function evaluates its predicate with
    eval(), which the page's Content-Security-Policy rightly forbids.)"""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(js_function, arg):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {js_function}")
        time.sleep(0.1)


def _image_digest(page) -> str:
    """SHA-256 of the bytes behind the main image's current src, computed in the page."""
    return page.evaluate("""async () => {
        const src = document.getElementById('main-image').src;
        const buf = await (await fetch(src)).arrayBuffer();
        const digest = await crypto.subtle.digest('SHA-256', buf);
        return Array.from(new Uint8Array(digest)).map(b => b.toString(16).padStart(2, '0')).join('');
    }""")


def test_page_generates_and_another_one_changes_the_image(server: str) -> None:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1320, "height": 940}, color_scheme="dark")
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(server + "/", wait_until="domcontentloaded")
            _wait_until(page, "() => { const i = document.getElementById('main-image');"
                              " return i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0; }")
            assert page.locator("#model-name").inner_text() not in ("", "loading model…")
            first_src = page.get_attribute("#main-image", "src")
            first_seed = page.get_attribute("#main-image", "data-seed")
            first_digest = _image_digest(page)

            page.get_by_role("button", name="Another one").click()
            _wait_until(page, "(old) => { const i = document.getElementById('main-image');"
                              " return i.src !== old && i.complete && i.naturalWidth > 0; }", first_src)
            assert page.get_attribute("#main-image", "src") != first_src
            assert page.get_attribute("#main-image", "data-seed") != first_seed
            assert _image_digest(page) != first_digest
            assert page.locator("#gallery button").count() == 2  # both images are in "Recent"
            # The sliders come from /api/directions; wait so the screenshot shows them.
            page.wait_for_selector("#dir-0", timeout=20_000)
            page.get_by_role("button", name="Play interpolation").click()
            _wait_until(page, "() => { const g = document.getElementById('gif');"
                              " return g.src.startsWith('blob:') && g.complete && g.naturalWidth > 0; }")
            page.locator("#dir-0").fill("1.5")  # a latent slider re-renders the image
            _wait_until(page, "(old) => document.getElementById('main-image').src !== old",
                        page.get_attribute("#main-image", "src"))
            assert page.locator("#gallery button").count() == 2  # slider moves don't fill "Recent"
            page.evaluate("() => window.scrollTo(0, 0)")  # sticky header and stage: shoot from the top
            page.locator("#another").hover()
            page.screenshot(path=str(ARTIFACTS / "web.png"), full_page=True)
            page.emulate_media(color_scheme="light")
            page.screenshot(path=str(ARTIFACTS / "web-light.png"), full_page=True)
            page.set_viewport_size({"width": 420, "height": 900})  # responsive: one column, still usable
            page.evaluate("() => window.scrollTo(0, 0)")
            page.screenshot(path=str(ARTIFACTS / "web-narrow.png"), full_page=True)
            assert page.locator("#another").is_visible()
        finally:
            browser.close()
    assert not errors, f"the page logged errors: {errors}"
    assert (ARTIFACTS / "web.png").stat().st_size > 10_000
