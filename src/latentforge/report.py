"""Compare training runs in one self-contained HTML page.

    from latentforge.report import compare
    compare(["runs/vae", "runs/dcgan"], "report.html")

The page needs nothing but a browser: CSS is inline, plots and sample grids are
base64-embedded PNGs, there is no JavaScript. It reads only the run-directory
contract (docs/ARCHITECTURE.md, "Run directory"): `config.json`, `metrics.jsonl`,
`samples/step_XXXXXX.png` and, when present, `eval.json` from `latentforge eval --json`.

`load_run_metrics(run_dir)` is the parsing half on its own, for reuse elsewhere.

matplotlib (the `metrics` extra) is imported lazily, inside `compare`, and only through
its object-oriented Agg API: no pyplot, no global backend switch.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import os
import re
import statistics
import warnings
from pathlib import Path
from typing import Any, Iterable

__all__ = ["compare", "load_run_metrics"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SAMPLE_RE = re.compile(r"^step_(\d+)\.png$")

# Keys of an eval line that are bookkeeping, not metrics.
_EVAL_NON_METRIC = {"kind", "step", "time", "n", "n_real", "n_fake", "seed", "epoch"}
# Display order of well-known metrics; anything else follows alphabetically.
_METRIC_ORDER = ["fid", "kid", "precision", "recall", "density", "coverage"]
_LOWER_BETTER = {"fid", "kid"}
_HIGHER_BETTER = {"precision", "recall", "density", "coverage", "is", "inception_score"}
_METRIC_LABEL = {"fid": "FID", "kid": "KID", "is": "IS", "inception_score": "IS"}

# matplotlib's tab10, so the table swatches match the plot colours without importing it.
_COLORS = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
]  # fmt: skip


# --------------------------------------------------------------------------- loading


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    return _is_num(v) and math.isfinite(v)


def _drop_rolled_back(rows: list[dict]) -> list[dict]:
    """Keep the history a resumed run actually followed.

    A run resumed from a checkpoint older than its last logged line logs those steps
    again; the later lines win, the abandoned ones are dropped.
    """
    out: list[dict] = []
    for row in rows:
        while out and out[-1]["step"] >= row["step"]:
            out.pop()
        out.append(row)
    return out


def _read_jsonl(path: Path) -> tuple[list[dict], list[dict], list[int]]:
    """-> (train rows, eval rows, line numbers of malformed lines)."""
    train: list[dict] = []
    evals: list[dict] = []
    bad: list[int] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except ValueError:
                bad.append(lineno)
                continue
            if not isinstance(row, dict) or not _is_num(row.get("step")):
                bad.append(lineno)
                continue
            row["step"] = int(row["step"])
            if not _is_num(row.get("time")):
                row["time"] = None
            kind = row.get("kind")
            if kind == "train":
                train.append(row)
            elif kind == "eval":
                evals.append(row)
            elif kind is None:
                bad.append(lineno)
            # other kinds: a newer writer's extension; not ours to judge, not an error
    return _drop_rolled_back(train), _drop_rolled_back(evals), bad


def load_run_metrics(run_dir: str | Path) -> dict:
    """Parse one run directory.

    Returns a dict with
      name        the folder name
      path        the resolved run directory (Path)
      config      config.json as a dict
      train       training rows of metrics.jsonl, in step order (resume roll-backs removed)
      eval        evaluation rows of metrics.jsonl, likewise
      eval_json   eval.json as a dict, or None
      samples     [(step, Path)] of samples/step_XXXXXX.png, ascending step
      skipped     number of malformed metrics.jsonl lines skipped
      notes       human-readable problems met while reading (also issued as warnings)

    Raises ValueError (one line naming the path) when `run_dir` is not a run directory.
    """
    path = Path(run_dir).expanduser()
    cfg_path = path / "config.json"
    if not path.is_dir():
        raise ValueError(f"not a run directory (no such directory): {path}")
    if not cfg_path.is_file():
        raise ValueError(f"not a run directory (no config.json): {path}")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise ValueError(f"unreadable config.json in {path}: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"config.json is not a JSON object: {cfg_path}")

    notes: list[str] = []
    train: list[dict] = []
    evals: list[dict] = []
    skipped = 0
    metrics_path = path / "metrics.jsonl"
    if metrics_path.is_file():
        train, evals, bad = _read_jsonl(metrics_path)
        skipped = len(bad)
        if bad:
            shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
            notes.append(f"skipped {len(bad)} malformed line(s) in metrics.jsonl (line {shown})")

    eval_json = None
    ej_path = path / "eval.json"
    if ej_path.is_file():
        try:
            eval_json = json.loads(ej_path.read_text(encoding="utf-8"))
            if not isinstance(eval_json, dict):
                raise ValueError("not a JSON object")
        except (ValueError, OSError) as e:
            eval_json = None
            notes.append(f"ignored unreadable eval.json ({e})")

    samples: list[tuple[int, Path]] = []
    sdir = path / "samples"
    if sdir.is_dir():
        for p in sdir.iterdir():
            m = _SAMPLE_RE.match(p.name)
            if m and p.is_file():
                samples.append((int(m.group(1)), p))
        samples.sort()

    for note in notes:
        warnings.warn(f"{path}: {note}", stacklevel=2)
    return {
        "name": path.resolve().name or str(path),
        "path": path.resolve(),
        "config": config,
        "train": train,
        "eval": evals,
        "eval_json": eval_json,
        "samples": samples,
        "skipped": skipped,
        "notes": notes,
    }


# --------------------------------------------------------------------------- summarising


def _metric_keys(rows: Iterable[dict], exclude: set[str]) -> list[str]:
    keys: set[str] = set()
    for r in rows:
        keys.update(k for k, v in r.items() if k not in exclude and _is_num(v))
    # x_std rides along with x when x exists
    keys = {k for k in keys if not (k.endswith("_std") and k[: -len("_std")] in keys)}
    known = [k for k in _METRIC_ORDER if k in keys]
    return known + sorted(keys - set(known))


def _direction(metric: str) -> int:
    """-1 lower is better, +1 higher is better, 0 unknown (never highlighted)."""
    m = metric.lower()
    if m in _LOWER_BETTER or m.startswith(("fid", "kid")) or m.endswith(("_fid", "_kid")):
        return -1
    if m in _HIGHER_BETTER:
        return 1
    return 0


def _label(metric: str) -> str:
    return _METRIC_LABEL.get(metric, metric.replace("_", " "))


def _summarise(run: dict) -> dict:
    train, evals, cfg = run["train"], run["eval"], run["config"]
    last_rows = [r for r in (train[-1:] + evals[-1:])]
    steps_done = max((r["step"] for r in last_rows), default=None)
    times = [r["time"] for r in last_rows if r["time"] is not None]
    ips = [r["images_per_s"] for r in train if _finite(r.get("images_per_s"))]
    fid_rows = [r for r in evals if _finite(r.get("fid"))]
    best = min(fid_rows, key=lambda r: r["fid"]) if fid_rows else None
    ej = run["eval_json"]
    ej_n = None
    if ej is not None:
        proto = ej.get("protocol") if isinstance(ej.get("protocol"), dict) else {}
        ej_n = proto.get("n_fake", ej.get("n"))
    return {
        "steps_done": steps_done,
        "steps_target": cfg.get("steps"),
        "wall": max(times) if times else None,
        "images_per_s": statistics.median(ips) if ips else None,
        "final": evals[-1] if evals else None,
        "best_fid": best,
        "eval_json_n": ej_n if _is_num(ej_n) else None,
    }


# --------------------------------------------------------------------------- formatting

_DASH = '<span class="na">—</span>'


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt_int(v: Any) -> str:
    return f"{int(v):,}" if _is_num(v) else _DASH


def _fmt_metric(v: Any) -> str:
    if not _is_num(v):
        return _DASH
    if not math.isfinite(v):
        return '<span class="bad">' + ("NaN" if math.isnan(v) else ("∞" if v > 0 else "−∞")) + "</span>"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    if a == 0:
        return "0"
    return f"{v:.4f}" if a >= 1e-4 else f"{v:.2e}"


def _fmt_duration(s: Any) -> str:
    if not _finite(s):
        return _DASH
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h {m:02d}m"
    if m:
        return f"{m}m {sec:02d}s"
    return f"{sec}s"


def _b64_png(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


# --------------------------------------------------------------------------- plots


def _ema(values: list[float], span: float) -> list[float]:
    """Debiased exponential moving average (the TensorBoard smoother); NaNs are carried over."""
    alpha = 2.0 / (span + 1.0)
    out, acc, weight = [], 0.0, 0.0
    for v in values:
        if math.isfinite(v):
            acc = (1 - alpha) * acc + alpha * v
            weight = (1 - alpha) * weight + alpha
        out.append(acc / weight if weight > 0 else math.nan)
    return out


def _time_axis(seconds_max: float) -> tuple[float, str]:
    if seconds_max >= 2 * 3600:
        return 3600.0, "hours"
    if seconds_max >= 120:
        return 60.0, "minutes"
    return 1.0, "seconds"


class _Plotter:
    """Figures through matplotlib's object-oriented Agg API; returns PNG data URIs."""

    def __init__(self) -> None:
        try:
            import matplotlib
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                "latentforge.report needs matplotlib: pip install matplotlib (or 'latentforge[metrics]')"
            ) from e
        self._mpl, self._Figure, self._Canvas = matplotlib, Figure, FigureCanvasAgg
        self.rc = {
            "font.size": 9,
            "axes.titlesize": 10,
            "axes.titleweight": "bold",
            "axes.labelsize": 9,
            "axes.labelcolor": "#444",
            "axes.edgecolor": "#bbb",
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.color": "#e6e6e6",
            "grid.linewidth": 0.8,
            "xtick.color": "#555",
            "ytick.color": "#555",
            "legend.frameon": False,
            "legend.fontsize": 9,
            "figure.facecolor": "white",
            "axes.facecolor": "white",
        }

    def figure(self, w: float, h: float, ncols: int):
        with self._mpl.rc_context(self.rc):
            fig = self._Figure(figsize=(w, h), dpi=110, layout="constrained")
            self._Canvas(fig)
            axes = fig.subplots(1, ncols, squeeze=False)[0]
        return fig, list(axes)

    def png(self, fig) -> str:
        buf = io.BytesIO()
        with self._mpl.rc_context(self.rc):
            fig.savefig(buf, format="png", dpi=110)
        return _b64_png(buf.getvalue())

    def metric(self, metric: str, runs: list[dict], colors: dict[str, str]) -> str:
        with self._mpl.rc_context(self.rc):
            fig, (ax_s, ax_t) = self.figure(11.0, 2.9, 2)
            tmax = max(
                (r["time"] for run in runs for r in run["eval"] if r["time"] is not None and metric in r),
                default=0.0,
            )
            tscale, tunit = _time_axis(tmax)
            values: list[float] = []
            for run in runs:
                rows = [r for r in run["eval"] if _is_num(r.get(metric))]
                if not rows:
                    continue
                c = colors[run["name"]]
                steps = [r["step"] for r in rows]
                ys = [float(r[metric]) for r in rows]
                values += [y for y in ys if math.isfinite(y)]
                std = [r.get(metric + "_std") for r in rows]
                kw = dict(color=c, marker="o", markersize=3.5, linewidth=1.6, label=run["name"])
                ax_s.plot(steps, ys, **kw)
                timed = [(r["time"] / tscale, float(r[metric]), s) for r, s in zip(rows, std) if r["time"] is not None]
                if timed:
                    ax_t.plot([t for t, _, _ in timed], [y for _, y, _ in timed], **kw)
                if all(_finite(s) for s in std):
                    lo = [y - s for y, s in zip(ys, std)]
                    hi = [y + s for y, s in zip(ys, std)]
                    ax_s.fill_between(steps, lo, hi, color=c, alpha=0.15, linewidth=0)
                    if len(timed) == len(rows):
                        ax_t.fill_between([t for t, _, _ in timed], lo, hi, color=c, alpha=0.15, linewidth=0)
            d = _direction(metric)
            better = {-1: " (lower is better)", 1: " (higher is better)"}.get(d, "")
            log = bool(values) and min(values) > 0 and max(values) / min(values) > 8
            for ax in (ax_s, ax_t):
                ax.set_ylabel(_label(metric) + (", log scale" if log else ""))
                if log:
                    ax.set_yscale("log")
            ax_s.set_title(f"{_label(metric)} vs step{better}", loc="left")
            ax_t.set_title(f"{_label(metric)} vs wall-clock time", loc="left")
            ax_s.set_xlabel("step")
            ax_t.set_xlabel(f"training time ({tunit})")
            ax_s.legend(loc="best")
            return self.png(fig)

    def losses(self, run: dict, color: str) -> str | None:
        keys = sorted({k for r in run["train"] for k, v in r.items() if k.startswith("loss/") and _is_num(v)})
        if not keys:
            return None
        pref = ["loss/total", "loss/recon", "loss/kl", "loss/D", "loss/G"]
        keys = [k for k in pref if k in keys] + [k for k in keys if k not in pref]
        ncols = len(keys)
        with self._mpl.rc_context(self.rc):
            fig, axes = self.figure(11.0, 2.6 if ncols > 1 else 2.8, ncols)
            for ax, key in zip(axes, keys):
                rows = [r for r in run["train"] if _is_num(r.get(key))]
                steps = [r["step"] for r in rows]
                ys = [float(r[key]) for r in rows]
                span = min(200.0, max(1.0, len(ys) / 15))
                ax.plot(steps, ys, color=color, alpha=0.22, linewidth=0.8)
                ax.plot(steps, _ema(ys, span), color=color, linewidth=1.8)
                fin = sorted(y for y in ys if math.isfinite(y))
                if len(fin) >= 20:  # keep early spikes from flattening the curve
                    lo, hi = fin[int(0.005 * (len(fin) - 1))], fin[int(0.995 * (len(fin) - 1))]
                    pad = 0.06 * (hi - lo or abs(hi) or 1.0)
                    ax.set_ylim(lo - pad, hi + pad)
                ax.set_title(key, loc="left")
                ax.set_xlabel("step")
            return self.png(fig)


# --------------------------------------------------------------------------- HTML

_CSS = """
:root { --fg:#1d2330; --muted:#6b7280; --line:#e5e7eb; --bg:#f6f7f9; --card:#fff;
        --best:#dcfce7; --best-fg:#14532d; --warn:#fff7e0; --warn-line:#f2c14e; --accent:#3b5bdb; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
       font: 14px/1.5 -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1380px; margin: 0 auto; padding: 24px 24px 44px; }
header { margin-bottom: 18px; }
h1 { font-size: 26px; margin: 0 0 4px; letter-spacing: -0.01em; }
h2 { font-size: 18px; margin: 0 0 12px; }
h3 { font-size: 14px; margin: 0 0 6px; }
.meta { color: var(--muted); margin-bottom: 12px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
        padding: 18px 18px; margin: 16px 0; box-shadow: 0 1px 2px rgba(16,24,40,.04); }
ul.runs { list-style: none; padding: 0; margin: 0; display: flex; flex-wrap: wrap; gap: 8px 10px; }
ul.runs li { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 6px 10px; }
ul.runs code { color: var(--muted); font-size: 12px; }
.swatch { display:inline-block; width:10px; height:10px; border-radius:3px; margin-right:6px; vertical-align: 0; }
.howto { border-left: 4px solid var(--accent); }
.howto ul { margin: 6px 0 0; padding-left: 20px; }
.howto li { margin: 2px 0; }
.banner { background: var(--warn); border: 1px solid var(--warn-line); border-radius: 8px;
          padding: 10px 14px; margin: 0 0 12px; }
.banner b { color: #8a5a00; }
.tablewrap { overflow-x: auto; }
table { border-collapse: separate; border-spacing: 0; width: 100%; font-size: 13px; }
th, td { padding: 6px 8px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top;
         white-space: nowrap; }
thead th { background: #fafbfc; font-weight: 600; color: #374151; }
thead tr.group th { font-size: 11px; text-transform: uppercase; letter-spacing: .05em; color: var(--muted);
                    border-bottom: 0; padding-bottom: 0; }
thead tr.group th.g { border-left: 1px solid var(--line); }
td.gs, th.gs { border-left: 1px solid var(--line); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:hover td { background: #fafbff; }
tbody tr:last-child td { border-bottom: 0; }
td.best { background: var(--best); color: var(--best-fg); font-weight: 700; }
td.warn { background: var(--warn); color: #8a5a00; font-weight: 600; }
td.empty { color: var(--muted); font-style: italic; text-align: center; }
.sub { display: block; font-size: 11px; color: var(--muted); font-weight: 400;
       text-transform: none; letter-spacing: 0; }
.sub.inline { display: inline; }
td.best .sub { color: #2f6b45; }
.na { color: #b6bcc6; }
.bad { color: #b42318; font-weight: 700; }
.runname { font-weight: 600; }
.data { max-width: 180px; overflow: hidden; text-overflow: ellipsis; }
.legend-note { color: var(--muted); font-size: 12px; margin-top: 8px; }
.plot { margin: 6px 0 16px; }
.plot img { width: 100%; height: auto; display: block; }
.plot:last-child { margin-bottom: 0; }
.samples { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 16px; }
figure { margin: 0; }
figure.sample { background: #fafbfc; border: 1px solid var(--line); border-radius: 8px; padding: 12px; }
figure.sample img { width: 100%; height: auto; display: block; image-rendering: pixelated; border-radius: 4px;
                    background: #fff; }
figcaption { margin-top: 8px; font-size: 13px; }
figcaption .sub { display: inline; margin-left: 6px; }
.muted { color: var(--muted); }
.notes { color: #8a5a00; font-size: 12px; }
footer { color: var(--muted); font-size: 12px; text-align: center; margin-top: 24px; }
@media print { body { background: #fff; } .card { box-shadow: none; break-inside: avoid; } }
"""


def _highlight(values: list[Any], direction: int) -> set[int]:
    """Indices of the best finite value(s); empty when fewer than two runs have one."""
    if direction == 0:
        return set()
    idx = [i for i, v in enumerate(values) if _finite(v)]
    if len(idx) < 2:
        return set()
    best = (min if direction < 0 else max)(values[i] for i in idx)
    return {i for i in idx if values[i] == best}


def _n_banner(kind: str, pairs: list[tuple[str, Any]], element_id: str) -> str:
    listed = " · ".join(f"<b>{_e(name)}</b> n={_fmt_int(n) if _is_num(n) else 'unknown'}" for name, n in pairs)
    return (
        f'<div class="banner" id="{element_id}" role="alert">⚠ <b>{kind} were evaluated at different n</b> '
        f"({listed}). FID and KID depend on the number of samples — FID is biased upward at smaller n — so "
        "these numbers are <b>not comparable</b>; best-value highlighting is switched off for them. "
        "Re-evaluate every run at the same n.</div>"
    )


def _table(runs: list[dict], sums: list[dict], colors: dict[str, str]) -> tuple[str, list[str]]:
    """-> (html of the summary table, banners to show above it)."""
    banners: list[str] = []
    evaled = [(run, s) for run, s in zip(runs, sums) if s["final"] is not None]
    metrics = _metric_keys((s["final"] for _, s in evaled), _EVAL_NON_METRIC)
    final_ns = {s["final"].get("n") for _, s in evaled}
    final_comparable = len(final_ns) <= 1
    if not final_comparable:
        pairs = [(run["name"], s["final"].get("n")) for run, s in evaled]
        banners.append(_n_banner("The last in-training evaluations", pairs, "n-mismatch"))
    best_rows = [(run, s["best_fid"]) for run, s in zip(runs, sums) if s["best_fid"] is not None]
    best_comparable = len({r.get("n") for _, r in best_rows}) <= 1
    if not best_comparable and final_comparable:
        pairs = [(run["name"], r.get("n")) for run, r in best_rows]
        banners.append(_n_banner("The best-FID evaluations", pairs, "n-mismatch-best"))

    ej_runs = [(run, s) for run, s in zip(runs, sums) if run["eval_json"] is not None]
    ej_metrics = _metric_keys((run["eval_json"] for run, _ in ej_runs), _EVAL_NON_METRIC | {"protocol"})
    ej_comparable = len({s["eval_json_n"] for _, s in ej_runs}) <= 1
    if not ej_comparable:
        pairs = [(run["name"], s["eval_json_n"]) for run, s in ej_runs]
        banners.append(_n_banner("The final evaluations (eval.json)", pairs, "n-mismatch-evaljson"))
    protos = [run["eval_json"].get("protocol") for run, _ in ej_runs]
    protos = [p for p in protos if isinstance(p, dict)]
    if len(protos) > 1:
        def distinct(k: str) -> int:
            return len({json.dumps(p.get(k), sort_keys=True) for p in protos})

        differ = sorted(k for k in set().union(*protos) if k != "n_fake" and distinct(k) > 1)
        if differ:
            banners.append(
                '<div class="banner" id="protocol-mismatch">⚠ <b>eval.json protocols differ</b> in: '
                + ", ".join(f"<code>{_e(k)}</code>" for k in differ)
                + ". Numbers measured under different protocols are not directly comparable.</div>"
            )

    # ---- header
    n_final = 1 + len(metrics)
    group = ['<tr class="group"><th colspan="4">Run</th>']
    group.append(
        f'<th class="g" colspan="{n_final}">Last in-training eval <span class="sub inline">metrics.jsonl</span></th>'
    )
    group.append('<th class="g">Best</th><th class="g" colspan="2">Speed</th>')
    if ej_runs:
        group.append(
            f'<th class="g" colspan="{1 + len(ej_metrics)}">Final eval <span class="sub inline">eval.json</span></th>'
        )
    group.append("</tr>")
    head = ["<tr>", "<th>run</th><th>model</th><th>data</th><th class='num'>steps</th>"]
    head.append("<th class='num gs'>n</th>")
    head += [f"<th class='num'>{_e(_label(m))}</th>" for m in metrics]
    head.append("<th class='num gs'>best FID</th><th class='num gs'>img/s</th><th class='num'>wall time</th>")
    if ej_runs:
        head.append("<th class='num gs'>n</th>")
        head += [f"<th class='num'>{_e(_label(m))}</th>" for m in ej_metrics]
    head.append("</tr>")

    # ---- which cells are the best
    best_final = {
        m: _highlight([s["final"].get(m) if s["final"] else None for s in sums], _direction(m))
        if final_comparable
        else set()
        for m in metrics
    }
    best_best = (
        _highlight([s["best_fid"]["fid"] if s["best_fid"] else None for s in sums], -1) if best_comparable else set()
    )
    best_ej = {
        m: (
            _highlight([run["eval_json"].get(m) if run["eval_json"] else None for run in runs], _direction(m))
            if ej_comparable
            else set()
        )
        for m in ej_metrics
    }
    best_speed = _highlight([s["images_per_s"] for s in sums], +1)

    def metric_cell(row: dict, m: str, best: bool, col: str) -> str:
        v = row.get(m)
        std = row.get(m + "_std")
        sub = f'<span class="sub">± {_fmt_metric(std)}</span>' if _finite(std) else ""
        cls = "num best" if best else "num"
        return f'<td class="{cls}" data-col="{_e(col)}">{_fmt_metric(v)}{sub}</td>'

    body = []
    for i, (run, s) in enumerate(zip(runs, sums)):
        cfg = run["config"]
        name = run["name"]
        tip = " · ".join(f"{k}={cfg[k]}" for k in ("batch_size", "seed") if k in cfg)
        data = cfg.get("data")
        data_txt = Path(str(data)).name if isinstance(data, str) and ("/" in data or os.sep in data) else data
        res = cfg.get("resolution")
        cells = [
            f'<td class="runname" title="{_e(tip)}">'
            f'<span class="swatch" style="background:{colors[name]}"></span>{_e(name)}</td>',
            f"<td data-col='model'>{_e(cfg['model']) if 'model' in cfg else _DASH}"
            f"<span class='sub' data-col='resolution'>{_e(res) + ' px' if _is_num(res) else '— px'}</span></td>",
            f'<td class="data" title="{_e(data)}">{_e(data_txt) if data is not None else _DASH}</td>',
        ]
        steps = _fmt_int(s["steps_done"]) if s["steps_done"] is not None else "0"
        target = (
            f'<span class="sub">of {_fmt_int(s["steps_target"])}</span>'
            if _is_num(s["steps_target"]) and s["steps_target"] != s["steps_done"]
            else ""
        )
        cells.append(f"<td class='num' data-col='steps'>{steps}{target}</td>")
        f = s["final"]
        if f is None:
            cells.append(f'<td class="empty gs" colspan="{n_final}" data-col="eval">no evaluations yet</td>')
        else:
            ncls = "num gs" if final_comparable else "num gs warn"
            cells.append(
                f"<td class='{ncls}' data-col='n'>{_fmt_int(f.get('n'))}"
                f"<span class='sub' data-col='eval_step'>step {_fmt_int(f['step'])}</span></td>"
            )
            cells += [metric_cell(f, m, i in best_final[m], m) for m in metrics]
        b = s["best_fid"]
        if b is None:
            cells.append(f"<td class='num gs' data-col='best_fid'>{_DASH}</td>")
        else:
            cls = "num gs best" if i in best_best else "num gs"
            n_note = f" · n={_fmt_int(b.get('n'))}" if not best_comparable else ""
            cells.append(
                f"<td class='{cls}' data-col='best_fid'>{_fmt_metric(b['fid'])}"
                f"<span class='sub'>at step {_fmt_int(b['step'])}{n_note}</span></td>"
            )
        ips = s["images_per_s"]
        cells.append(
            f"<td class='num gs{' best' if i in best_speed else ''}' data-col='images_per_s'>"
            f"{_fmt_int(round(ips)) if ips is not None else _DASH}</td>"
        )
        cells.append(f"<td class='num' data-col='wall'>{_fmt_duration(s['wall'])}</td>")
        if ej_runs:
            ej = run["eval_json"]
            if ej is None:
                span = 1 + len(ej_metrics)
                cells.append(f'<td class="empty gs" colspan="{span}" data-col="eval_json">no eval.json</td>')
            else:
                ncls = "num gs" if ej_comparable else "num gs warn"
                cells.append(f"<td class='{ncls}' data-col='ej_n'>{_fmt_int(s['eval_json_n'])}</td>")
                cells += [metric_cell(ej, m, i in best_ej[m], "ej_" + m) for m in ej_metrics]
        body.append(f'<tr data-run="{_e(name)}">' + "".join(cells) + "</tr>")

    table = (
        '<div class="tablewrap"><table id="summary"><thead>'
        + "".join(group)
        + "".join(head)
        + "</thead><tbody>"
        + "".join(body)
        + "</tbody></table></div>"
        + '<div class="legend-note"><span class="swatch" style="background:var(--best)"></span>'
        "best value in its column (lower FID/KID, higher precision/recall/img/s) · "
        "± is the KID standard deviation over subsets · n is the number of generated images an evaluation used, "
        "with its step below · hover a run name for batch size and seed.</div>"
    )
    return table, banners


def compare(run_dirs: list[str | Path], out: str | Path, title: str | None = None) -> Path:
    """Write one self-contained HTML page comparing `run_dirs`; returns the path written.

    Raises ValueError naming the first path that is not a run directory (no config.json).
    Malformed metrics.jsonl lines are skipped with a warning and counted on the page.
    """
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    if not run_dirs:
        raise ValueError("compare needs at least one run directory")
    runs = [load_run_metrics(d) for d in run_dirs]
    # Two runs may share a folder name (runs/a/vae, runs/b/vae): qualify with the parent.
    names = [r["name"] for r in runs]
    for r in runs:
        if names.count(r["name"]) > 1:
            r["name"] = f"{r['path'].parent.name}/{r['path'].name}"
    seen: dict[str, int] = {}
    for r in runs:  # still equal (the same directory twice): number them
        k = seen[r["name"]] = seen.get(r["name"], 0) + 1
        if k > 1:
            r["name"] = f"{r['name']} ({k})"

    colors = {r["name"]: _COLORS[i % len(_COLORS)] for i, r in enumerate(runs)}
    sums = [_summarise(r) for r in runs]
    plotter = _Plotter()

    title = title or "latentforge — run comparison"
    now = _dt.datetime.now().astimezone()
    version = next((r["config"].get("version") for r in runs if r["config"].get("version")), None)

    parts: list[str] = []
    # ---- header
    run_items = []
    for r in runs:
        cfg = r["config"]
        bits = [str(cfg[k]) for k in ("model", "data") if k in cfg]
        notes = f'<div class="notes">⚠ {_e("; ".join(r["notes"]))}</div>' if r["notes"] else ""
        run_items.append(
            f'<li><span class="swatch" style="background:{colors[r["name"]]}"></span><b>{_e(r["name"])}</b> '
            f'<span class="muted">{_e(" · ".join(bits))}</span><br><code>{_e(r["path"])}</code>{notes}</li>'
        )
    meta = f"Generated {now:%Y-%m-%d %H:%M %Z} · {len(runs)} run{'s' if len(runs) != 1 else ''}"
    if version:
        meta += f" · latentforge {_e(version)}"
    parts.append(
        f"<header><h1>{_e(title)}</h1><div class='meta'>{meta}</div>"
        f"<ul class='runs'>{''.join(run_items)}</ul></header>"
    )

    # ---- how to read
    parts.append(
        '<section class="card howto"><h3>How to read this</h3><ul>'
        "<li><b>Lower FID and KID are better</b>; higher precision (fidelity) and recall (diversity) are better.</li>"
        "<li><b>FID depends on n</b>, the number of generated images it was computed from: smaller n gives a "
        "higher (worse) FID for the same model. <b>Compare FIDs only at equal n</b> — "
        "the table warns when they differ. "
        "KID is unbiased in n but its noise (±) is larger at small n.</li>"
        "<li>In-training evaluations (metrics.jsonl) often use a smaller n than a final "
        "<code>latentforge eval</code> (eval.json); compare like with like.</li>"
        "<li>Loss curves: the faint line is the raw value, the solid line an exponential moving average. "
        "GAN losses are not a quality measure — watch them for divergence, judge quality by FID and samples.</li>"
        "</ul></section>"
    )

    # ---- table
    table, banners = _table(runs, sums, colors)
    parts.append('<section class="card"><h2>Summary</h2>' + "".join(banners) + table + "</section>")

    # ---- eval plots
    metrics = _metric_keys((row for r in runs for row in r["eval"]), _EVAL_NON_METRIC)
    sec = ['<section class="card"><h2>Evaluation metrics</h2>']
    if not metrics:
        sec.append('<p class="muted">No evaluations yet in any run (train with <code>--eval-every</code>).</p>')
    else:
        no_eval = [r["name"] for r in runs if not r["eval"]]
        if no_eval:
            sec.append(f'<p class="muted">No evaluations yet: {_e(", ".join(no_eval))}.</p>')
        for m in metrics:
            uri = plotter.metric(m, runs, colors)
            sec.append(f'<figure class="plot"><img alt="{_e(_label(m))} vs step and time" src="{uri}"></figure>')
    sec.append("</section>")
    parts.append("".join(sec))

    # ---- loss plots
    sec = ['<section class="card"><h2>Training losses</h2>']
    for r in runs:
        uri = plotter.losses(r, colors[r["name"]])
        sec.append(f'<h3><span class="swatch" style="background:{colors[r["name"]]}"></span>{_e(r["name"])}</h3>')
        if uri is None:
            sec.append('<p class="muted">No training lines yet.</p>')
        else:
            sec.append(f'<figure class="plot"><img alt="losses of {_e(r["name"])}" src="{uri}"></figure>')
    sec.append("</section>")
    parts.append("".join(sec))

    # ---- samples
    cards = []
    for r in runs:
        cap_name = f'<span class="swatch" style="background:{colors[r["name"]]}"></span><b>{_e(r["name"])}</b>'
        if not r["samples"]:
            body = '<p class="muted">No samples yet.</p>'
        else:
            step, p = r["samples"][-1]
            try:
                data = p.read_bytes()
            except OSError as e:
                data, err = b"", str(e)
            else:
                err = "not a PNG file"
            if data.startswith(_PNG_SIGNATURE):
                body = f'<img alt="samples of {_e(r["name"])} at step {step}" src="{_b64_png(data)}">'
                cap_name += f'<span class="sub" title="{_e(p)}">step {step:,}</span>'
            else:
                body = f'<p class="bad">Could not read {_e(p.name)}: {_e(err)}</p>'
        cards.append(f'<figure class="sample">{body}<figcaption>{cap_name}</figcaption></figure>')
    parts.append(
        '<section class="card"><h2>Latest samples</h2><div class="samples">' + "".join(cards) + "</div></section>"
    )

    parts.append(f"<footer>latentforge.report · {_e(now.isoformat(timespec='seconds'))}</footer>")
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(parts)}</main></body></html>\n"
    )

    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out
