"""The run's figures and its self-contained ``report.html``.

:func:`write_report` draws, for every (task, feature, method, k) group, the target-test
confusion matrix summed over seeds, the learning curves of every seed (from ``history_``),
and for the first seed a 2-D embedding (PCA and t-SNE, colour = emotion, marker = language)
with the silhouette score by emotion; plus a UA summary and, when the config sweeps the
number of labelled target utterances, a UA-against-k plot. The HTML page embeds every image
(base64) and the tables, so it can be mailed or opened from anywhere; the PNG files also stay
in ``figures/``, and the per-class tables in ``per_class/<group>.csv``.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emobridge.experiments.config import ExperimentConfig
from emobridge.experiments.plots import (
    plot_confusion,
    plot_embeddings,
    plot_k_sweep,
    plot_learning_curves,
    plot_summary,
)
from emobridge.experiments.results import (
    CellRecord,
    cell_dir,
    display_table,
    group_id,
    per_class_table,
    read_embedding,
    summed_confusion,
)
from emobridge.fileio import atomic_path, write_text_atomic

FIGURES_DIR = "figures"

_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 0 auto; max-width: 1180px; padding: 24px 32px; color: #1d1d1f;
       line-height: 1.45; font-size: 15px; background: #fff; }
h1 { font-size: 26px; margin-bottom: 4px; }
h2 { font-size: 20px; margin-top: 34px; border-bottom: 2px solid #e3e3e8; padding-bottom: 4px; }
h3 { font-size: 16px; margin: 8px 0; }
.sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 10px 0 18px 0; font-size: 13px; }
th, td { border: 1px solid #d5d5dc; padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: #f1f1f5; font-weight: 600; }
tr:nth-child(even) td { background: #fafafc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.meta td:first-child { font-weight: 600; background: #f7f7fa; }
img { max-width: 100%; height: auto; border: 1px solid #eee; margin: 6px 0; }
.figs { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
.figs > div { flex: 0 1 auto; }
details { border: 1px solid #e3e3e8; border-radius: 6px; padding: 6px 12px; margin: 10px 0; }
summary { cursor: pointer; font-weight: 600; font-size: 15px; }
pre { background: #f6f6f9; padding: 10px; overflow-x: auto; font-size: 12px; }
.bad { color: #b00020; }
.note { color: #555; font-size: 13px; }
"""


def _img(path: Path | None, alt: str) -> str:
    if path is None or not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" '
            f'title="{html.escape(path.name)}">')


def _table_html(frame: pd.DataFrame, index: bool = False, numeric_cols: Sequence[str] = ()
                ) -> str:
    cols = ([frame.index.name or ""] if index else []) + [str(c) for c in frame.columns]
    out = ["<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols)
           + "</tr></thead><tbody>"]
    for idx, row in frame.iterrows():
        cells = []
        if index:
            cells.append(f"<td>{html.escape(str(idx))}</td>")
        for c, v in zip(frame.columns, row, strict=True):
            cls = ' class="num"' if c in numeric_cols else ""
            cells.append(f"<td{cls}>{html.escape(_cell_text(v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _cell_text(v: Any) -> str:
    if isinstance(v, float):
        return "-" if not np.isfinite(v) else f"{v:.3f}"
    return str(v)


def _pct(x: Any) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x * 100:.1f}%"


def _compute_s(records: Sequence[CellRecord]) -> float:
    return float(sum((r.metrics.get("timing") or {}).get("total_s", 0.0)
                     for r in records if r.status == "ok"))


def _group_records(records: Sequence[CellRecord]) -> dict[tuple[str, ...], list[CellRecord]]:
    groups: dict[tuple[str, ...], list[CellRecord]] = {}
    for r in records:
        groups.setdefault(r.key.group, []).append(r)
    return groups


def _data_section(run_dir: Path) -> str:
    path = run_dir / "manifest.csv"
    if not path.exists():
        return ""
    m = pd.read_csv(path, dtype=str, keep_default_na=False)
    counts = pd.crosstab([m["corpus"], m["language"]], m["emotion"])
    counts["utterances"] = counts.sum(axis=1)
    counts["speakers"] = m.groupby(["corpus", "language"])["speaker"].nunique()
    counts = counts.reset_index()
    text = _table_html(counts, numeric_cols=[c for c in counts.columns
                                             if c not in ("corpus", "language")])
    problems = run_dir / "scan_problems.csv"
    if problems.exists():
        n = len(pd.read_csv(problems))
        text += (f'<p class="note">{n} file(s) could not be used; see '
                 f'<a href="scan_problems.csv">scan_problems.csv</a>.</p>')
    return "<h2>Data</h2>" + text


def write_report(run_dir: Path, cfg: ExperimentConfig, records: Sequence[CellRecord],
                 table: pd.DataFrame, info: dict[str, Any],
                 log: Callable[[str], None] | None = None) -> Path:
    """Draw the figures into ``run_dir/figures`` and write ``run_dir/report.html``.

    Runs with one BLAS / OpenMP thread: the projections are small, and t-SNE's OpenMP
    gradient slows down many-fold when its threads compete with other processes.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _write_report(Path(run_dir), cfg, records, table, info)


def _write_report(run_dir: Path, cfg: ExperimentConfig, records: Sequence[CellRecord],
                  table: pd.DataFrame, info: dict[str, Any]) -> Path:
    figs = run_dir / FIGURES_DIR
    figs.mkdir(parents=True, exist_ok=True)
    classes = list(info.get("classes") or cfg.taxonomy.build().classes)
    chance = 1.0 / len(classes) if classes else None
    parts: list[str] = []

    title = html.escape(cfg.name or "experiment")
    parts.append(f"<h1>emobridge run: {title}</h1>")
    if cfg.description:
        parts.append(f'<p class="sub">{html.escape(cfg.description)}</p>')
    n_ok = sum(r.status == "ok" for r in records)
    n_failed = sum(r.status == "failed" for r in records)
    meta = [
        ("emobridge version", info.get("emobridge_version")),
        ("git commit", info.get("git_commit") or "unknown"),
        ("started / finished (UTC)", f"{info.get('started')} / {info.get('finished')}"),
        ("time", f"this invocation {info.get('seconds', 0):.1f} s before the report "
                 f"(cells run now: {info.get('n_run', 0)}); cell compute over all finished "
                 f"cells {_compute_s(records):.1f} s"),
        ("device / jobs", f"{cfg.device} / {info.get('jobs')}"),
        ("cells", f"{len(records)} ({n_ok} finished, {n_failed} failed, "
                  f"{info.get('n_skipped', 0)} reused from an earlier run)"),
        ("classes", ", ".join(classes)),
        ("protocol", f"domain: {cfg.protocol.domain}; target speakers train / validation / "
                     f"test = {cfg.protocol.target_split.train:g} / "
                     f"{cfg.protocol.target_split.validation:g} / "
                     f"{cfg.protocol.target_split.test:g}; validation data: "
                     f"{cfg.protocol.validation}; seeds: "
                     f"{', '.join(map(str, cfg.seeds))}"),
        ("tasks", "; ".join(f"{t['name']}" for t in info.get("tasks", []))),
        ("output", str(run_dir)),
    ]
    parts.append('<table class="meta">' + "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in meta)
        + "</table>")

    # ---------------------------------------------------------------- summary
    parts.append("<h2>Results</h2>")
    parts.append('<p class="note">Target test speakers. UA = unweighted average recall, '
                 "WA = accuracy, both in %, mean ± std over seeds; UA 95% CI = bootstrap over "
                 "test utterances of the mean UA; source UA = on held-out source speakers "
                 "(when the protocol keeps some); silhouette = of the embedding by emotion. "
                 f'Chance UA = {_pct(chance)}. Raw numbers: <a href="results.csv">results.csv'
                 '</a>, <a href="cells.csv">cells.csv</a>.</p>')
    parts.append(_table_html(display_table(table), numeric_cols=(
        "UA %", "UA 95% CI", "WA %", "macro-F1 %", "source UA %", "silhouette")))
    summary_png = plot_summary(table, figs / "summary_ua.png", chance)
    sweep_png = plot_k_sweep(table, figs / "k_sweep_ua.png", chance)
    parts.append('<div class="figs">' + "".join(
        f"<div>{_img(p, alt)}</div>" for p, alt in ((summary_png, "UA summary"),
                                                    (sweep_png, "UA against k")) if p)
        + "</div>")

    failed = [r for r in records if r.status == "failed"]
    missing = [r for r in records if r.status == "missing"]
    if failed or missing:
        parts.append('<h2 class="bad">Failed cells</h2>')
        rows = []
        for r in failed:
            tb = cell_dir(run_dir, r.key) / "traceback.txt"
            rows.append(f"<tr><td>{html.escape(r.key.id)}</td><td>"
                        f"{html.escape(str((r.error or {}).get('error', '')))}</td><td>"
                        f'<a href="{html.escape(str(tb.relative_to(run_dir)))}">traceback</a>'
                        "</td></tr>")
        for r in missing:
            rows.append(f"<tr><td>{html.escape(r.key.id)}</td><td>not run (stopped early)"
                        "</td><td></td></tr>")
        parts.append("<table><thead><tr><th>cell</th><th>error</th><th></th></tr></thead>"
                     "<tbody>" + "".join(rows) + "</tbody></table>")

    # ---------------------------------------------------------------- per group
    parts.append("<h2>Details per task, feature, method and k</h2>")
    n_embedding_plots = 0
    for gi, (group, members) in enumerate(_group_records(records).items()):
        gid = group_id(group)
        done = [r for r in members if r.status == "ok"]
        task, feature, method, k = group
        uas = [r.metrics["target"]["ua"] for r in done]
        head = (f"{task} · {feature} · {method} · k={k}: UA "
                f"{_pct(float(np.mean(uas))) if uas else '-'}"
                f" over {len(done)} seed(s)")
        body: list[str] = []
        if not done:
            body.append('<p class="bad">No finished seed.</p>')
        else:
            body.append(_group_details(run_dir, figs, gid, head, done, classes, cfg))
            if (cfg.report.embeddings and n_embedding_plots < cfg.report.max_embedding_plots):
                emb_html = _embedding_figure(run_dir, figs, gid, group, done, classes, cfg)
                if emb_html:
                    n_embedding_plots += 1
                    body.append(emb_html)
        is_open = " open" if gi < 2 else ""
        parts.append(f"<details{is_open}><summary>{html.escape(head)}</summary>"
                     + "".join(body) + "</details>")

    parts.append(_data_section(run_dir))
    parts.append("<h2>Configuration</h2>"
                 '<p class="note">As resolved (defaults filled in, absolute paths); also in '
                 '<a href="config.yaml">config.yaml</a>. Run information: '
                 '<a href="run.json">run.json</a>, log: <a href="run.log">run.log</a>.</p>'
                 f"<details><summary>config.yaml</summary><pre>{html.escape(cfg.to_yaml())}"
                 "</pre></details>")
    page = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>emobridge: {title}</title><style>{_CSS}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")
    out = run_dir / "report.html"
    write_text_atomic(out, page)
    return out


def _group_details(run_dir: Path, figs: Path, gid: str, head: str, done: list[CellRecord],
                   classes: list[str], cfg: ExperimentConfig) -> str:
    body = []
    rows = []
    for r in done:
        t = r.metrics["target"]
        s = r.metrics.get("source") or {}
        sil = r.metrics.get("silhouette") or {}
        sizes = r.metrics.get("sizes") or {}
        rows.append({
            "seed": r.key.seed, "UA %": _pct(t.get("ua")),
            "UA 95% CI": (f"[{t['ua_ci_low'] * 100:.1f}, {t['ua_ci_high'] * 100:.1f}]"
                          if t.get("ua_ci_low") is not None else "-"),
            "WA %": _pct(t.get("wa")), "macro-F1 %": _pct(t.get("macro_f1")),
            "source UA %": _pct(s.get("ua")) if s else "-",
            "silhouette (emotion)": "-" if sil.get("emotion") is None
            else f"{sil['emotion']:.3f}",
            "test utt.": t.get("n"),
            "labelled target": sizes.get("target_labelled"),
            "fit s": f"{(r.metrics.get('timing') or {}).get('fit_s', 0):.1f}",
        })
    body.append(_table_html(pd.DataFrame(rows), numeric_cols=list(rows[0])[1:]))
    for r in done:
        if r.metrics.get("embedding_error"):
            body.append(f'<p class="note">seed {r.key.seed}: no embedding '
                        f"({html.escape(r.metrics['embedding_error'])})</p>")
    figures = []
    cm = summed_confusion(done)
    if cm is not None:
        png = plot_confusion(cm, classes, f"{gid}\nconfusion summed over "
                             f"{len(done)} seed(s)", figs / f"confusion__{gid}.png")
        figures.append(_img(png, "confusion matrix"))
        report = per_class_table(cm, classes).reset_index()
        with atomic_path(run_dir / "per_class" / f"{gid}.csv") as tmp:
            report.to_csv(tmp, index=False)
        for col in ("precision", "recall", "f1"):
            report[col] = [_pct(v) for v in report[col]]
        per_class_html = ("<div><h3>Per class (summed over seeds)</h3>"
                          + _table_html(report, numeric_cols=("precision", "recall", "f1",
                                                              "support")) + "</div>")
    else:
        per_class_html = ""
    histories = {r.key.seed: r.metrics.get("history") or [] for r in done}
    curve = plot_learning_curves(histories, f"{gid}: learning curves",
                                 figs / f"curves__{gid}.png")
    body.append('<div class="figs">' + "".join(f"<div>{f}</div>" for f in figures)
                + per_class_html + "</div>")
    if curve is not None:
        body.append(f'<div class="figs"><div>{_img(curve, "learning curves")}</div></div>')
    else:
        body.append('<p class="note">No training history (the method records no per-epoch '
                    "values).</p>")
    return "".join(body)


def _embedding_figure(run_dir: Path, figs: Path, gid: str, group: tuple[str, ...],
                      done: list[CellRecord], classes: list[str],
                      cfg: ExperimentConfig) -> str:
    first = min(done, key=lambda r: r.key.seed)
    emb = read_embedding(cell_dir(run_dir, first.key))
    if emb is None or len(emb["x"]) < 3:
        return ""
    sil = first.metrics.get("silhouette") or {}
    sil_text = ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in sil.items()
                         if v is not None)
    title = (f"{gid} (seed {first.key.seed}): embed() of test utterances, colour = emotion, "
             f"marker = language\nsilhouette by {sil_text}")
    png = plot_embeddings(emb["x"], emb["emotion"], emb["language"], title,
                          figs / f"embedding__{gid}.png", tsne=cfg.report.tsne,
                          seed=first.key.seed, classes=classes)
    return (f'<div class="figs"><div>{_img(png, "embedding")}</div></div>'
            '<p class="note">Silhouette (in [-1, 1], higher = emotions form tighter, better '
            "separated clusters) is computed on the full embedding, over target and source "
            "utterances together (\"emotion\"), by language (\"language\": high means the "
            "languages stay apart) and over target utterances only.</p>")
