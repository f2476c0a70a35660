"""latentforge.report: HTML comparison of run directories, built from fake runs on disk."""

from __future__ import annotations

import base64
import io
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("matplotlib")

from latentforge.report import compare, load_run_metrics  # noqa: E402

DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def make_run(
    root: Path,
    name: str,
    evals: list[dict] | None = None,
    model: str = "dcgan",
    steps: int = 200,
    sample_steps: tuple[int, ...] = (100, 200),
    extra_lines: list[str] = (),
    eval_json: dict | None = None,
) -> Path:
    """A run directory as train.py writes it: config.json, metrics.jsonl, samples/step_XXXXXX.png."""
    d = root / name
    (d / "samples").mkdir(parents=True)
    cfg = {"model": model, "data": "fashion-mnist", "resolution": 28, "steps": steps, "batch_size": 64, "seed": 0}
    (d / "config.json").write_text(json.dumps(cfg))
    lines = []
    for s in range(10, steps + 1, 10):
        losses = {"loss/D": 1.4 - s / 400, "loss/G": 0.7 + s / 300} if model == "dcgan" else {"loss/total": 300 - s / 2}
        lines.append(json.dumps({"kind": "train", "step": s, "time": s * 0.5, "images_per_s": 1000.0 + s, **losses}))
    for e in evals or []:
        lines.append(json.dumps({"kind": "eval", "time": e["step"] * 0.5 + 1, **e}))
    lines += list(extra_lines)
    (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(len(name))
    for s in sample_steps:
        Image.fromarray(rng.integers(0, 255, (30, 30), dtype=np.uint8), "L").save(d / "samples" / f"step_{s:06d}.png")
    if eval_json is not None:
        (d / "eval.json").write_text(json.dumps(eval_json))
    return d


def row(page: str, run: str) -> str:
    m = re.search(rf'<tr data-run="{re.escape(run)}">(.*?)</tr>', page, re.S)
    assert m, f"no table row for {run}"
    return m.group(1)


def cell(row_html: str, col: str) -> tuple[str, str]:
    """-> (class attribute, inner html) of the cell with data-col=col."""
    m = re.search(rf"<td class=[\"']([^\"']*)[\"'] data-col=[\"']{re.escape(col)}[\"']>(.*?)</td>", row_html, re.S)
    assert m, f"no {col} cell in row"
    return m.group(1), m.group(2)


def ev(step: int, fid: float, n: int = 1000, **kw) -> dict:
    return {"step": step, "n": n, "fid": fid, **kw}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    a_evals = [ev(100, 80.0, kid=0.05, kid_std=0.004, precision=0.6), ev(200, 42.5, kid=0.02, kid_std=0.002, precision=0.7)]
    a = make_run(root, "gan-a", a_evals)
    # b: best FID mid-training (30.25 at step 100), worse at the end (55.5)
    b = make_run(root, "gan-b", [ev(100, 30.25, kid=0.03, precision=0.9), ev(200, 55.5, kid=0.04, precision=0.8)])
    out = compare([a, b], root / "out" / "report.html", title="My comparison")
    return out, out.read_text(encoding="utf-8")


def test_writes_one_self_contained_page(two_runs):
    out, page = two_runs
    assert out.name == "report.html" and out.is_file()
    assert page.startswith("<!DOCTYPE html>") and "<title>My comparison</title>" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page and "<link" not in page
    assert re.search(r"Generated \d{4}-\d{2}-\d{2}", page)
    assert "How to read this" in page and "Compare FIDs only at equal n" in page
    assert not list(out.parent.glob("*.tmp"))


def test_table_has_a_row_per_run_with_final_metrics(two_runs):
    _, page = two_runs
    a, b = row(page, "gan-a"), row(page, "gan-b")
    assert cell(a, "fid")[1] == "42.50" and cell(b, "fid")[1] == "55.50"
    assert "dcgan" in a and "fashion-mnist" in a and "28 px" in a
    assert cell(a, "steps")[1].startswith("200")
    assert cell(a, "n")[1].startswith("1,000")
    assert "± 0.0020" in cell(a, "kid")[1]
    assert cell(a, "images_per_s")[1] == "1,105"  # median of 1010..1200
    assert cell(a, "wall")[1] == "1m 41s"  # last eval line: 200 * 0.5 + 1 s


def test_best_values_are_highlighted_on_the_right_run(two_runs):
    _, page = two_runs
    a, b = row(page, "gan-a"), row(page, "gan-b")
    assert "best" in cell(a, "fid")[0] and "best" not in cell(b, "fid")[0]  # final: 42.5 < 55.5
    assert "best" in cell(a, "kid")[0] and "best" not in cell(b, "kid")[0]
    assert "best" in cell(b, "precision")[0] and "best" not in cell(a, "precision")[0]  # higher is better
    cls, inner = cell(b, "best_fid")  # best during training: b's 30.25 at step 100
    assert "best" in cls and "30.25" in inner and "step 100" in inner
    assert "best" not in cell(a, "best_fid")[0]


def test_embedded_images_decode_as_png_and_show_the_latest_samples(two_runs):
    _, page = two_runs
    blobs = [base64.b64decode(s) for s in DATA_URI.findall(page)]
    # fid, kid, precision plots + one loss figure per run + one sample grid per run
    assert len(blobs) == 3 + 2 + 2
    for blob in blobs:
        with Image.open(io.BytesIO(blob)) as im:
            assert im.format == "PNG" and im.size[0] > 0
    samples = two_runs[0].parent.parent / "gan-a" / "samples"
    latest = (samples / "step_000200.png").read_bytes()
    older = (samples / "step_000100.png").read_bytes()
    assert latest in blobs and older not in blobs
    assert "step 200" in page


def test_no_warning_when_n_is_equal(two_runs):
    _, page = two_runs
    assert 'id="n-mismatch"' not in page and "warn" not in cell(row(page, "gan-a"), "n")[0]


def test_different_n_is_flagged_and_not_ranked(tmp_path):
    a = make_run(tmp_path, "small-n", [ev(200, 40.0, n=500)])
    b = make_run(tmp_path, "big-n", [ev(200, 60.0, n=5000)])
    page = compare([a, b], tmp_path / "r.html").read_text()
    banner = re.search(r'<div class="banner" id="n-mismatch".*?</div>', page, re.S)
    assert banner and "not comparable" in banner.group(0)
    assert "n=500" in banner.group(0) and "n=5,000" in banner.group(0)
    for run in ("small-n", "big-n"):
        assert "warn" in cell(row(page, run), "n")[0]
        assert "best" not in cell(row(page, run), "fid")[0]


def test_run_without_evals_or_samples_still_renders(tmp_path):
    a = make_run(tmp_path, "fresh", evals=None, sample_steps=(), model="vae", steps=50)
    b = make_run(tmp_path, "done", [ev(200, 33.0, kid=0.01)])
    page = compare([a, b], tmp_path / "r.html").read_text()
    fresh = row(page, "fresh")
    assert "no evaluations yet" in fresh and "vae" in fresh
    assert "—" in cell(fresh, "best_fid")[1]
    assert "No samples yet" in page and "No evaluations yet: fresh" in page
    assert cell(row(page, "done"), "fid")[1] == "33.00"

    alone = compare([a], tmp_path / "alone.html").read_text()
    assert "no evaluations yet" in alone and "No evaluations yet in any run" in alone


def test_missing_metric_is_a_dash(tmp_path):
    a = make_run(tmp_path, "with-kid", [ev(200, 30.0, kid=0.01)])
    b = make_run(tmp_path, "no-kid", [ev(200, 31.0)])
    page = compare([a, b], tmp_path / "r.html").read_text()
    assert "—" in cell(row(page, "no-kid"), "kid")[1]


def test_not_a_run_directory_raises_naming_it(tmp_path):
    good = make_run(tmp_path, "good", [ev(200, 30.0)])
    bad = tmp_path / "just-a-folder"
    bad.mkdir()
    with pytest.raises(ValueError, match="just-a-folder") as err:
        compare([good, bad], tmp_path / "r.html")
    assert "config.json" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="does-not-exist"):
        compare([tmp_path / "does-not-exist"], tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_malformed_lines_are_skipped_with_a_counted_warning(tmp_path):
    junk = ['{"kind": "train", "step": 7', "not json at all", "[1, 2, 3]", '{"kind": "eval", "fid": 3.0}']
    d = make_run(tmp_path, "messy", [ev(200, 25.0)], extra_lines=junk)
    with pytest.warns(UserWarning, match="skipped 4 malformed line"):
        run = load_run_metrics(d)
    assert run["skipped"] == 4 and len(run["train"]) == 20 and len(run["eval"]) == 1
    with pytest.warns(UserWarning, match="messy"):
        page = compare([d], tmp_path / "r.html").read_text()
    assert cell(row(page, "messy"), "fid")[1] == "25.00"
    assert "skipped 4 malformed line(s)" in page


def test_load_run_metrics_structure_and_resume(tmp_path):
    # a resume from step 100 after logging up to 150: the abandoned 110..150 lines are dropped
    resumed = [
        json.dumps({"kind": "train", "step": s, "time": 100.0 + s, "images_per_s": 5.0, "loss/D": 0.1}) for s in (110, 120)
    ]
    d = make_run(tmp_path, "resumed", [ev(100, 50.0)], steps=150, extra_lines=resumed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = load_run_metrics(d)
    assert run["config"]["model"] == "dcgan" and run["config"]["resolution"] == 28
    assert [r["step"] for r in run["train"]][-3:] == [100, 110, 120]
    assert run["train"][-1]["time"] == 220.0
    assert [r["step"] for r in run["eval"]] == [100]
    assert [s for s, _ in run["samples"]] == [100, 200]
    assert run["eval_json"] is None and run["skipped"] == 0 and run["name"] == "resumed"


def test_eval_json_is_shown_and_its_n_checked(tmp_path):
    proto = {"n_fake": 10000, "n_real": 10000}
    ej_a = {"fid": 12.34, "kid": 0.005, "kid_std": 0.001, "recall": 0.5, "protocol": proto}
    ej_b = {"fid": 15.0, "kid": 0.007, "recall": 0.6, "protocol": {**proto, "n_fake": 2000}}
    a = make_run(tmp_path, "a", [ev(200, 40.0)], eval_json=ej_a)
    b = make_run(tmp_path, "b", [ev(200, 45.0)], eval_json=ej_b)
    c = make_run(tmp_path, "c", [ev(200, 50.0)])
    page = compare([a, b, c], tmp_path / "r.html").read_text()
    assert "Final eval" in page and "eval.json" in page
    ra = row(page, "a")
    assert cell(ra, "ej_fid")[1] == "12.34" and cell(ra, "ej_n")[1] == "10,000"
    assert "no eval.json" in row(page, "c")
    assert 'id="n-mismatch-evaljson"' in page and 'id="n-mismatch"' not in page
    for r in (ra, row(page, "b")):  # different n_fake: nothing in the eval.json group is ranked
        assert "best" not in cell(r, "ej_fid")[0] and "best" not in cell(r, "ej_recall")[0]
    assert "best" in cell(ra, "fid")[0]  # the metrics.jsonl group (equal n) still is


def test_names_are_escaped_and_nan_never_wins(tmp_path):
    a = make_run(tmp_path, "run<b>x", [ev(200, float("nan"))])
    b = make_run(tmp_path, "ok", [ev(100, 70.0), ev(200, 60.0)])
    page = compare([a, b], tmp_path / "r.html").read_text()
    assert "run<b>x" not in page and "run&lt;b&gt;x" in page
    assert "NaN" in cell(row(page, "run&lt;b&gt;x"), "fid")[1]
    assert "best" not in cell(row(page, "ok"), "fid")[0]  # only one finite value: nothing to rank
