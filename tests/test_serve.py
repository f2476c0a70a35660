"""latentforge.serve: the HTTP API on tiny runs trained here (a GAN and a VAE, 4 steps each).

Every endpoint; bad input gives 4xx with a message, never 5xx; provenance metadata; determinism;
GIF frame counts; upload hardening (garbage, empty, bombs, streaming size limit); deadlines;
coalescing of concurrent requests; 20 concurrent clients; the CLI command; and a schemathesis fuzz
run over the OpenAPI spec asserting no 5xx.
"""

from __future__ import annotations

import base64
import io
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import schemathesis
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from PIL import Image

from latentforge.config import TrainConfig
from latentforge.images import to_uint8
from latentforge.sample import load
from latentforge.serve import Limits, ServeError, create_app
from latentforge.serve import app as app_module
from latentforge.serve.app import SEED_MAX, ModelWorker, gif_bytes
from latentforge.train import train

# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, make_tiny_npz) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    data = make_tiny_npz(root / "tiny.npz", n=48)
    out = {}
    for model in ("dcgan", "vae"):
        cfg = TrainConfig(model=model, data=str(data), out=str(root / model), resolution=28, steps=4, batch_size=8,
                          width=8, z_dim=8, log_every=2, sample_every=4, checkpoint_every=4, seed=0)
        train(cfg, progress=False, log=lambda m: None)
        out[model] = root / model
    return out


@pytest.fixture(scope="module")
def gan(runs: dict[str, Path]) -> TestClient:
    return TestClient(create_app(runs["dcgan"]))


@pytest.fixture(scope="module")
def vae(runs: dict[str, Path]) -> TestClient:
    return TestClient(create_app(runs["vae"]))


def png_of(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def open_image(content: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(content))
    img.load()
    return img


def pixels(content: bytes) -> np.ndarray:
    return np.asarray(open_image(content)).astype(int)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header claims width x height grey pixels: 10^10 here, from 100 bytes of file."""
    idat = zlib.compress(b"\x00" * 64)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))


SAMPLE_UPLOAD = png_of(Image.new("RGB", (40, 30), (200, 30, 30)))


# ------------------------------------------------------------------------------------ meta endpoints


def test_health_and_info(gan: TestClient, vae: TestClient, runs: dict[str, Path]) -> None:
    h = gan.get("/api/health")
    assert h.status_code == 200 and h.json()["status"] == "ok"
    info = gan.get("/api/info").json()
    assert info["family"] == "gan" and info["architecture"] == "dcgan"
    assert (info["resolution"], info["channels"], info["z_dim"]) == (28, 1, 8)
    assert info["classes"] == ["square", "disc"] and info["conditional"] is False
    assert info["run"] == runs["dcgan"].name and info["can_reconstruct"] is False and info["steps"] == 4
    assert info["limits"]["max_n"] == 64 and info["limits"]["max_frames"] == 120
    assert vae.get("/api/info").json()["can_reconstruct"] is True


def test_openapi_spec_has_typed_bounded_requests(gan: TestClient) -> None:
    spec = gan.get("/openapi.json").json()
    paths = spec["paths"]
    assert {"/api/health", "/api/info", "/api/generate", "/api/interpolate", "/api/reconstruct", "/api/vary",
            "/api/directions"} <= set(paths)
    gen = spec["components"]["schemas"]["GenerateRequest"]["properties"]
    assert gen["n"]["maximum"] == 64 and gen["truncation"]["minimum"] == 0 and gen["truncation"]["maximum"] == 2
    assert "class" in gen
    interp = spec["components"]["schemas"]["InterpolateRequest"]["properties"]
    assert interp["frames"]["maximum"] == 120
    assert "image/png" in paths["/api/generate"]["post"]["responses"]["200"]["content"]


def test_page_and_static_files(gan: TestClient) -> None:
    page = gan.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "Another one" in page.text and "/static/app.js" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    for name, kind in (("app.js", "javascript"), ("style.css", "css")):
        r = gan.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
    assert gan.get("/static/../app.py").status_code == 404


# ------------------------------------------------------------------------------------ generate


def test_generate_one_png_with_provenance(gan: TestClient, runs: dict[str, Path]) -> None:
    r = gan.post("/api/generate", json={"seed": 7, "truncation": 0.8})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = open_image(r.content)
    assert img.size == (28, 28) and img.mode == "L"
    meta = img.text
    assert meta["synthetic image"] == "true" and meta["seed"] == "7" and meta["truncation"] == "0.8"
    assert meta["model"] == "dcgan" and meta["model name"] == runs["dcgan"].name
    assert meta["run"] == runs["dcgan"].name and meta["checkpoint"] == "latest" and "latentforge" in meta
    assert str(runs["dcgan"].parent) not in str(meta)  # no server paths leak
    assert r.headers["x-seeds"] == "7"


def test_same_seed_same_bytes_and_matches_library(gan: TestClient, runs: dict[str, Path]) -> None:
    import latentforge

    a = gan.post("/api/generate", json={"seed": 123}).content
    b = gan.post("/api/generate", json={"seed": 123}).content
    c = gan.post("/api/generate", json={"seed": 124}).content
    assert a == b and a != c
    expected = latentforge.load(runs["dcgan"]).sample(1, seed=123)[0, :, :, 0]
    assert np.abs(pixels(a) - expected.astype(int)).max() <= 1


def test_generate_grid_json_and_scale(gan: TestClient) -> None:
    grid = gan.post("/api/generate", json={"n": 6, "seed": 10, "nrow": 3})
    assert grid.status_code == 200
    assert open_image(grid.content).size == (3 * 30 + 2, 2 * 30 + 2)  # make_grid: 2 px padding
    assert open_image(grid.content).text["seeds"] == "10,11,12,13,14,15"
    js = gan.post("/api/generate", json={"seeds": [10, 99, 11], "format": "json"})
    assert js.status_code == 200
    items = js.json()["images"]
    assert [i["seed"] for i in items] == [10, 99, 11]
    import base64

    single = pixels(gan.post("/api/generate", json={"seed": 99}).content)
    assert np.abs(pixels(base64.b64decode(items[1]["png"])) - single).max() <= 1
    big = gan.post("/api/generate", json={"seed": 5, "scale": 4})
    assert open_image(big.content).size == (112, 112)
    small = pixels(gan.post("/api/generate", json={"seed": 5}).content)
    assert (pixels(big.content)[::4, ::4] == small).all()  # nearest-neighbour: crisp pixels


def test_random_seed_when_none_given(gan: TestClient) -> None:
    r = gan.post("/api/generate", json={})
    assert r.status_code == 200
    seed = int(r.headers["x-seeds"])
    assert 0 <= seed <= SEED_MAX and open_image(r.content).text["seed"] == str(seed)


def test_truncation_zero_is_the_mean_image(gan: TestClient) -> None:
    a = gan.post("/api/generate", json={"seed": 1, "truncation": 0}).content
    b = gan.post("/api/generate", json={"seed": 2, "truncation": 0}).content
    assert (pixels(a) == pixels(b)).all()


@pytest.mark.parametrize("family", ["gan", "vae"])
def test_directions_and_offsets(family: str, request: pytest.FixtureRequest) -> None:
    client: TestClient = request.getfixturevalue(family)
    r = client.get("/api/directions")
    assert r.status_code == 200
    d = r.json()
    assert d["method"] == ("ganspace" if family == "gan" else "pca-posterior-means")
    assert len(d["directions"]) == 5
    v = np.array([x["vector"] for x in d["directions"]])
    assert v.shape == (5, 8) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4)
    ratios = [x["explained_variance_ratio"] for x in d["directions"]]
    assert ratios == sorted(ratios, reverse=True) and 0 < sum(ratios) <= 1 + 1e-6
    assert client.get("/api/directions").json() == d  # computed once, deterministic
    base = client.post("/api/generate", json={"seed": 3}).content
    assert client.post("/api/generate", json={"seed": 3, "offsets": [0, 0]}).content == base
    moved = client.post("/api/generate", json={"seed": 3, "offsets": [3, 0, -2]}).content
    assert moved != base and "offsets" in open_image(moved).text


def test_class_on_unconditional_model_is_a_clear_400(gan: TestClient) -> None:
    for value in (1, "square"):
        r = gan.post("/api/generate", json={"seed": 1, "class": value})
        assert r.status_code == 400
        assert "unconditional" in r.json()["detail"]


@pytest.mark.parametrize("path,body", [
    ("/api/generate", {"n": 0}),
    ("/api/generate", {"n": 65}),
    ("/api/generate", {"n": 10**9}),
    ("/api/generate", {"n": "many"}),
    ("/api/generate", {"seed": -1}),
    ("/api/generate", {"seed": SEED_MAX + 1}),
    ("/api/generate", {"seed": SEED_MAX, "n": 2}),
    ("/api/generate", {"seeds": []}),
    ("/api/generate", {"seeds": list(range(65))}),
    ("/api/generate", {"seeds": [1.5]}),
    ("/api/generate", {"seeds": [1], "n": 3}),
    ("/api/generate", {"truncation": 2.5}),
    ("/api/generate", {"truncation": -0.1}),
    ("/api/generate", {"truncation": "high"}),
    ("/api/generate", {"offsets": [1, 2, 3, 4, 5, 6]}),
    ("/api/generate", {"offsets": [99]}),
    ("/api/generate", {"scale": 17}),
    ("/api/generate", {"format": "gif"}),
    ("/api/generate", {"colour": "red"}),
    ("/api/generate", {"class": {"a": 1}}),
    ("/api/generate", [1, 2]),
    ("/api/generate", "seed"),
    ("/api/interpolate", {"seeds": [1], "frames": 10}),
    ("/api/interpolate", {"seeds": [1, 2], "frames": 121}),
    ("/api/interpolate", {"seeds": [1, 2], "frames": 1}),
    ("/api/interpolate", {"seeds": list(range(17))}),
    ("/api/interpolate", {"seeds": [1, 2], "duration_ms": 0}),
    ("/api/interpolate", {"frames": 10}),
])
def test_bad_json_is_4xx_with_a_message(gan: TestClient, path: str, body: object) -> None:
    r = gan.post(path, json=body)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.json()["detail"]


def test_malformed_bodies_are_4xx(gan: TestClient) -> None:
    for content, ctype in ((b"{not json", "application/json"), (b"", "application/json"), (b"\xff\xfe", "text/plain"),
                           (b"seed=1", "application/x-www-form-urlencoded")):
        r = gan.post("/api/generate", content=content, headers={"content-type": ctype})
        assert 400 <= r.status_code < 500, (content, r.status_code, r.text)
    assert gan.get("/api/generate").status_code == 405
    assert gan.get("/api/nothing").status_code == 404
    assert gan.post("/api/generate", content=b"{}", headers={"content-type": "application/json",
                                                               "content-length": "abc"}).status_code in (400, 422)


def test_output_size_limit(runs: dict[str, Path]) -> None:
    client = TestClient(create_app(runs["dcgan"], limits=Limits(max_output_pixels=5000)))
    r = client.post("/api/generate", json={"n": 16, "seed": 0, "scale": 4})
    assert r.status_code == 400 and "pixels" in r.json()["detail"]
    assert client.post("/api/interpolate", json={"seeds": [1, 2], "frames": 100}).status_code == 400


# ------------------------------------------------------------------------------------ interpolate


@pytest.mark.parametrize("frames,loop", [(7, False), (24, True), (120, True)])
def test_interpolate_gif_has_exactly_frames_frames(gan: TestClient, frames: int, loop: bool) -> None:
    r = gan.post("/api/interpolate", json={"seeds": [1, 2, 3], "frames": frames, "loop": loop, "duration_ms": 50})
    assert r.status_code == 200 and r.headers["content-type"] == "image/gif"
    gif = Image.open(io.BytesIO(r.content))
    assert gif.format == "GIF" and gif.n_frames == frames and gif.size == (28, 28)
    assert gif.info["loop"] == 0 and gif.info["duration"] == 50
    assert b"synthetic image" in gif.info["comment"] and b'"seeds": [1, 2, 3]' in gif.info["comment"]


def test_interpolate_provenance_reads_back_with_explore(gan: TestClient, tmp_path: Path) -> None:
    from latentforge.explore import read_info

    path = tmp_path / "walk.gif"
    path.write_bytes(gan.post("/api/interpolate", json={"seeds": [1, 2], "frames": 4}).content)
    info = read_info(path)
    assert info["synthetic image"] == "true" and info["model"] == "dcgan" and info["frames"] == "4"


def test_interpolate_endpoints_are_the_seed_images(gan: TestClient) -> None:
    r = gan.post("/api/interpolate", json={"seeds": [4, 9], "frames": 5, "loop": False, "truncation": 0.7})
    gif = Image.open(io.BytesIO(r.content))
    first = np.asarray(gif.convert("L")).astype(int)
    gif.seek(4)
    last = np.asarray(gif.convert("L")).astype(int)
    assert np.abs(first - pixels(gan.post("/api/generate", json={"seed": 4, "truncation": 0.7}).content)).max() <= 1
    assert np.abs(last - pixels(gan.post("/api/generate", json={"seed": 9, "truncation": 0.7}).content)).max() <= 1


def test_identical_frames_are_kept() -> None:
    frames = torch.zeros(6, 1, 8, 8, dtype=torch.uint8)  # PIL's save_all would merge these into one
    assert Image.open(io.BytesIO(gif_bytes(frames, 40))).n_frames == 6
    rgb = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    gif = Image.open(io.BytesIO(gif_bytes(rgb, 40, scale=2)))
    assert gif.n_frames == 4 and gif.size == (16, 16)


# ------------------------------------------------------------------------------------ uploads


def test_reconstruct_and_vary_need_a_vae(gan: TestClient) -> None:
    for path in ("/api/reconstruct", "/api/vary"):
        r = gan.post(path, files={"file": ("a.png", SAMPLE_UPLOAD, "image/png")})
        assert r.status_code == 400 and "VAE" in r.json()["detail"]


def test_reconstruct(vae: TestClient) -> None:
    r = vae.post("/api/reconstruct", files={"file": ("a.png", SAMPLE_UPLOAD, "image/png")}, data={"scale": "2"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = open_image(r.content)
    assert img.size == (2 * 62, 2 * 32)  # two 28 px tiles with 2 px padding, upscaled 2x
    assert float(r.headers["x-reconstruction-mse"]) >= 0 and "reconstruction" in img.text["content"]
    for fmt, im in (("JPEG", Image.new("RGB", (64, 64), "white")), ("GIF", Image.new("P", (20, 50))),
                    ("PNG", Image.new("RGBA", (33, 33), (0, 0, 0, 0))), ("WEBP", Image.new("RGB", (16, 16))),
                    ("BMP", Image.new("L", (5, 500)))):
        r = vae.post("/api/reconstruct", files={"file": (f"x.{fmt.lower()}", png_of(im, fmt), "image/*")},
                     data={"invert": "true"})
        assert r.status_code == 200, (fmt, r.text)


def test_vary(vae: TestClient) -> None:
    r = vae.post("/api/vary", files={"file": ("a.png", SAMPLE_UPLOAD, "image/png")}, data={"n": "4", "seed": "3"})
    assert r.status_code == 200
    img = open_image(r.content)
    assert img.size == (62, 62) and img.text["seeds"] == "3-6"
    again = vae.post("/api/vary", files={"file": ("a.png", SAMPLE_UPLOAD, "image/png")}, data={"n": "4", "seed": "3"})
    assert again.content == r.content
    still = vae.post("/api/vary", files={"file": ("a.png", SAMPLE_UPLOAD, "image/png")}, data={"n": "4", "spread": "0"})
    tiles = pixels(still.content)
    assert (tiles[2:30, 2:30] == tiles[2:30, 32:60]).all()  # no noise: every draw is the posterior mean
    assert vae.post("/api/vary", files={"file": ("a.png", SAMPLE_UPLOAD, "image/png")},
                    data={"n": "65"}).status_code == 422


@pytest.mark.parametrize("content,status,words", [
    (b"", 400, "empty"),
    (b"hello, I am not an image", 415, "not an image"),
    (b"%PDF-1.4\n" + b"0" * 5000, 415, "not an image"),
    (SAMPLE_UPLOAD[: len(SAMPLE_UPLOAD) // 2], 400, "decode"),
    (bomb_png(), 413, "pixels"),
    (bomb_png(5000, 5000), 413, "pixels"),
    (png_of(Image.new("RGB", (8, 8)), "TIFF"), 415, "not an image"),
])
def test_bad_uploads_are_4xx(vae: TestClient, content: bytes, status: int, words: str) -> None:
    for path in ("/api/reconstruct", "/api/vary"):
        r = vae.post(path, files={"file": ("upload.png", content, "image/png")})
        assert r.status_code == status, (path, r.status_code, r.text)
        assert words in r.json()["detail"]


def test_upload_form_mistakes_are_422(vae: TestClient) -> None:
    assert vae.post("/api/reconstruct").status_code == 422
    assert vae.post("/api/reconstruct", data={"scale": "2"}).status_code == 422
    assert vae.post("/api/reconstruct", files={"image": ("a.png", SAMPLE_UPLOAD, "image/png")}).status_code == 422
    r = vae.post("/api/reconstruct", files={"file": ("a.png", SAMPLE_UPLOAD, "image/png")}, data={"scale": "big"})
    assert r.status_code == 422
    assert vae.post("/api/reconstruct", json={"file": "abc"}).status_code == 422


def test_upload_size_limit_while_streaming(runs: dict[str, Path]) -> None:
    client = TestClient(create_app(runs["vae"], max_upload_bytes=20_000))
    big = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    r = client.post("/api/reconstruct", files={"file": ("big.png", big, "image/png")})  # with Content-Length
    assert r.status_code == 413 and "larger than" in r.json()["detail"]

    boundary = "latentforgeboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()
    def chunks():  # no Content-Length: chunked transfer, the limit must be enforced as bytes arrive
        yield head
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post("/api/reconstruct", content=chunks(),
                    headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413 and "larger than" in r.json()["detail"]
    ok = client.post("/api/reconstruct", files={"file": ("a.png", SAMPLE_UPLOAD, "image/png")})
    assert ok.status_code == 200


def test_pixel_limit(runs: dict[str, Path]) -> None:
    client = TestClient(create_app(runs["vae"], limits=Limits(max_pixels=50 * 50)))
    r = client.post("/api/reconstruct", files={"file": ("a.png", png_of(Image.new("L", (60, 60))), "image/png")})
    assert r.status_code == 413
    r = client.post("/api/reconstruct", files={"file": ("a.png", png_of(Image.new("L", (50, 50))), "image/png")})
    assert r.status_code == 200


# ------------------------------------------------------------------------------------ load, deadlines


def test_twenty_concurrent_clients(runs: dict[str, Path]) -> None:
    app = create_app(runs["dcgan"])
    results: dict[int, tuple[int, bytes]] = {}
    with TestClient(app) as client:  # one event loop: the 20 requests really are concurrent inside the app
        barrier = threading.Barrier(20)

        def worker(i: int) -> None:
            barrier.wait()
            r = client.post("/api/generate", json={"seed": 1000 + i, "n": 1 + i % 3})
            results[i] = (r.status_code, r.content)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert sorted(results) == list(range(20))
        assert all(status == 200 for status, _ in results.values())
        for i in (0, 7, 19):  # each got its own seeds' images (1 grey level of float slack for batching)
            alone = client.post("/api/generate", json={"seed": 1000 + i, "n": 1 + i % 3}).content
            assert np.abs(pixels(results[i][1]) - pixels(alone)).max() <= 1
        worker_ = app.state.worker
        assert worker_.images >= sum(1 + i % 3 for i in range(20)) and worker_.batches <= 20 + 3


def slowed(app, seconds: float):
    """Make the app's model slow (the worker thread calls model.generate)."""
    model = app.state.model
    fast = model.generate

    def slow(z):
        time.sleep(seconds)
        return fast(z)

    model.generate = slow
    return model, fast


def test_concurrent_requests_are_coalesced(runs: dict[str, Path]) -> None:
    app = create_app(runs["dcgan"])
    slowed(app, 0.4)
    with TestClient(app) as client:
        statuses = []

        def call(i: int) -> None:
            statuses.append(client.post("/api/generate", json={"seed": i}).status_code)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
        threads[0].start()
        time.sleep(0.15)  # the first request is running; the next five wait together
        for t in threads[1:]:
            t.start()
        for t in threads:
            t.join(timeout=30)
    assert statuses == [200] * 6
    assert app.state.worker.images == 6 and app.state.worker.batches <= 3


def test_batching_can_be_turned_off(runs: dict[str, Path]) -> None:
    app = create_app(runs["dcgan"], batching=False)
    with TestClient(app) as client:
        threads = [threading.Thread(target=client.post, args=("/api/generate",), kwargs={"json": {"seed": i}})
                   for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    assert app.state.worker.batches == 4


def test_deadline_gives_503_and_the_server_recovers(runs: dict[str, Path]) -> None:
    app = create_app(runs["dcgan"], timeout_s=0.3)
    model, fast = slowed(app, 1.0)
    with TestClient(app) as client:
        r = client.post("/api/generate", json={"seed": 1})
        assert r.status_code == 503 and "deadline" in r.json()["detail"] and r.headers["retry-after"]
        model.generate = fast
        time.sleep(1.0)  # the slow call in flight finishes
        assert client.post("/api/generate", json={"seed": 1}).status_code == 200


def test_full_queue_gives_503(runs: dict[str, Path]) -> None:
    app = create_app(runs["dcgan"], limits=Limits(max_queue=1, timeout_s=10))
    model, fast = slowed(app, 0.5)
    statuses = []
    with TestClient(app) as client:
        threads = [threading.Thread(target=lambda i=i: statuses.append(
            client.post("/api/generate", json={"seed": i}).status_code)) for i in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    assert 503 in statuses and 200 in statuses and set(statuses) <= {200, 503}


# ------------------------------------------------------------------------------------ setup and CLI


def test_no_run_serves_the_bundled_model_or_says_it_is_missing(runs: dict[str, Path], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "DEFAULT_ASSET", tmp_path / "missing")
    with pytest.raises(ServeError, match="bundled Fashion-MNIST model is missing"):
        create_app()
    monkeypatch.setattr(app_module, "DEFAULT_ASSET", runs["dcgan"])
    client = TestClient(create_app())
    assert client.get("/api/info").json()["run"] == runs["dcgan"].name


def test_bad_run_directories(tmp_path: Path) -> None:
    with pytest.raises(ServeError, match="not a directory"):
        create_app(tmp_path / "nope")
    with pytest.raises(ServeError, match="config.json"):
        create_app(tmp_path)


def test_cli_serve(runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import socket

    import typer
    from typer.testing import CliRunner

    from latentforge.cli import UserError
    from latentforge.cli_serve import register

    cli = typer.Typer()
    register(cli)

    @cli.command()
    def other() -> None:  # a second command, so typer keeps `serve` as a subcommand
        pass

    runner = CliRunner()
    help_text = runner.invoke(cli, ["serve", "--help"]).output
    assert "--host" in help_text and "--port" in help_text and "127.0.0.1" in help_text

    calls = []
    monkeypatch.setattr(app_module, "serve", lambda run, **kw: calls.append((run, kw)))
    assert runner.invoke(cli, ["serve", str(runs["dcgan"])]).exit_code == 0
    web, kw = calls[0]
    assert web.state.model.run_dir == runs["dcgan"] and kw["host"] == "127.0.0.1" and kw["port"] == 8000

    r = runner.invoke(cli, ["serve", str(tmp_path / "missing")])
    assert isinstance(r.exception, UserError) and "not a directory" in str(r.exception)
    r = runner.invoke(cli, ["serve", str(tmp_path)])  # a folder that is no run
    assert isinstance(r.exception, UserError) and "config.json" in str(r.exception)
    r = runner.invoke(cli, ["serve", str(runs["dcgan"]), "--port", "70000"])
    assert isinstance(r.exception, UserError) and "port" in str(r.exception)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        r = runner.invoke(cli, ["serve", str(runs["dcgan"]), "--port", str(busy)])
        assert isinstance(r.exception, UserError) and "in use" in str(r.exception)


# ------------------------------------------------------------------------------------ fuzzing


FUZZ_OPERATIONS = [("GET", "/api/health"), ("GET", "/api/info"), ("GET", "/api/directions"),
                   ("POST", "/api/generate"), ("POST", "/api/interpolate"), ("POST", "/api/reconstruct"),
                   ("POST", "/api/vary")]


@pytest.fixture(scope="module")
def fuzz_schema(runs: dict[str, Path]):
    """The VAE app (it has every endpoint working) with small bounds, so the fuzzer's favourite
    edge cases (the largest n, scale and frames) stay quick."""
    app = create_app(runs["vae"], limits=Limits(max_n=8, max_scale=4, max_frames=16, max_path_seeds=4))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_fuzz_covers_every_operation(fuzz_schema) -> None:
    ops = {(r.ok().method.upper(), r.ok().path) for r in fuzz_schema.get_all_operations()}
    assert ops == set(FUZZ_OPERATIONS)


@pytest.mark.parametrize("method,path,mode", [(m, p, mode) for m, p in FUZZ_OPERATIONS
                                               for mode in (("positive", "negative") if m == "POST" else ("positive",))])
def test_fuzz_openapi_no_server_errors(fuzz_schema, method: str, path: str, mode: str) -> None:
    """Property: for whatever schemathesis derives from the OpenAPI spec, valid ("positive") and
    invalid ("negative") requests alike, the answer is never a 5xx, and it conforms to the spec.
    (schemathesis' pytest loader `from_fixture` breaks on pytest 9; its strategy API does not.)"""
    from schemathesis import GenerationMode
    from hypothesis import given

    strategy = fuzz_schema[path][method].as_strategy(generation_mode=GenerationMode(mode))

    @given(case=strategy)
    @settings(max_examples=20, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case) -> None:
        response = case.call()
        assert response.status_code < 500, f"{case.method} {case.path} -> {response.status_code}: {response.text[:300]}"

    check()


# ------------------------------------------------------------------------------------ conditional runs


@pytest.fixture(scope="module")
def cond_runs(tmp_path_factory: pytest.TempPathFactory, make_tiny_npz) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve_cond")
    data = make_tiny_npz(root / "tiny.npz", n=48)  # classes "square" (0) and "disc" (1)
    out = {}
    for model in ("dcgan", "vae"):
        cfg = TrainConfig(model=model, data=str(data), out=str(root / model), resolution=28, steps=3, batch_size=8,
                          width=8, z_dim=8, log_every=3, sample_every=3, checkpoint_every=3, seed=0, conditional=True)
        train(cfg, progress=False, log=lambda m: None)
        out[model] = root / model
    return out


def test_conditional_generate_takes_class_names_and_indices(cond_runs: dict[str, Path]) -> None:
    client = TestClient(create_app(cond_runs["dcgan"]))
    info = client.get("/api/info").json()
    assert info["conditional"] is True and info["classes"] == ["square", "disc"]
    m = load(cond_runs["dcgan"])
    by_name = client.post("/api/generate", json={"seed": 7, "class": "DISC"})
    by_index = client.post("/api/generate", json={"seed": 7, "class": 1})
    assert by_name.status_code == 200 and by_name.content == by_index.content
    assert open_image(by_name.content).text["class"] == "disc"
    expected = to_uint8(m.generate(m.latents([7]), classes="disc"))[0, 0].numpy()
    assert np.array_equal(pixels(by_name.content), expected)
    square = client.post("/api/generate", json={"seed": 7, "class": "square"}).content
    assert square != by_name.content  # the class steers the image
    # no class: seed s gets class s mod 2, so seed 7 is a disc and seed 8 a square
    assert client.post("/api/generate", json={"seed": 7}).content == by_name.content
    assert client.post("/api/generate", json={"seed": 8}).content == \
        client.post("/api/generate", json={"seed": 8, "class": 0}).content
    grid = client.post("/api/generate", json={"seeds": [7, 8], "format": "json"}).json()["images"]
    assert [open_image(base64.b64decode(i["png"])).text["class"] for i in grid] == ["disc", "square"]
    for bad in ("sneaker", 2, "-1"):
        r = client.post("/api/generate", json={"seed": 1, "class": bad})
        assert r.status_code == 400 and "square, disc" in r.json()["detail"], r.text
    gif = client.post("/api/interpolate", json={"seeds": [1, 2], "frames": 4, "class": "square"})
    assert gif.status_code == 200 and '"class": "square"' in Image.open(io.BytesIO(gif.content)).info["comment"].decode()


def test_coalesced_jobs_keep_their_own_classes(cond_runs: dict[str, Path]) -> None:
    m = load(cond_runs["dcgan"])
    worker = ModelWorker(m, max_batch=64, max_queue=8)
    z = m.latents([1, 2, 3])
    with worker._cond:  # both jobs are queued before the worker thread can take one: one batch
        a = worker.generate(z[:2], torch.tensor([0, 1]))
        b = worker.generate(z[2:], torch.tensor([1]))
    got = torch.cat([a.result(timeout=60), b.result(timeout=60)])
    assert worker.batches == 1
    expected = to_uint8(m.generate(z, classes=[0, 1, 1])).cpu()
    assert (got.int() - expected.int()).abs().max() <= 1  # batch-size rounding, as documented
    worker.close()


def test_conditional_vae_reconstruct_needs_the_image_class(cond_runs: dict[str, Path]) -> None:
    client = TestClient(create_app(cond_runs["vae"]))
    upload = {"file": ("a.png", SAMPLE_UPLOAD, "image/png")}
    for path in ("/api/reconstruct", "/api/vary"):
        r = client.post(path, files=upload)
        assert r.status_code == 400 and "class-conditional" in r.json()["detail"] and "square, disc" in r.json()["detail"]
        ok = client.post(path, files=upload, data={"class": "square"})
        assert ok.status_code == 200, ok.text
        assert client.post(path, files=upload, data={"class": "1"}).content != ok.content
