"""The run's figures and its self-contained ``report.html``.

:func:`write_report` draws, for every (task, feature, method, k) group, the target-test
confusion matrix summed over seeds, the learning curves of every seed (from ``history_``),
and for the first seed a 2-D embedding (PCA and t-SNE, colour = emotion, marker = language)
with the silhouette score by emotion; plus a UA summary and, when the config sweeps the
number of labelled target utterances, a UA-against-k plot. The HTML page embeds every image
(base64) and the tables, so it can be mailed or opened from anywhere; the PNG files also stay
in ``figures/``, and the per-class tables in ``per_class/<group>.csv``.

The page is rendered from the Jinja2 template ``templates/report.html`` with autoescaping,
so names from the config (corpus ids, method labels, descriptions) and error messages are
shown as text, never interpreted as HTML. This module only gathers plain values for it.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jinja2
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
    format_ci,
    format_number,
    format_pct,
    group_id,
    group_records,
    mean_std,
    missing_classes,
    missing_note,
    per_class_table,
    read_embedding,
    summed_confusion,
)
from emobridge.fileio import atomic_path, write_text_atomic

FIGURES_DIR = "figures"
TEMPLATE = "report.html"
#: Groups whose details start unfolded.
_OPEN_GROUPS = 2


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    # Templates ship inside the package (package data), found next to this module.
    return jinja2.Environment(
        loader=jinja2.PackageLoader("emobridge.experiments", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",),
                                            default_for_string=True),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render_report(context: dict[str, Any]) -> str:
    """The HTML page for ``context`` (the values :func:`write_report` gathers)."""
    return _environment().get_template(TEMPLATE).render(**context)


# ---------------------------------------------------------------------- building blocks


def _img(path: Path | None, alt: str) -> dict[str, str] | None:
    """An image for the template (base64 PNG), or ``None`` when nothing was drawn."""
    if path is None or not path.exists():
        return None
    return {"data": base64.b64encode(path.read_bytes()).decode("ascii"), "alt": alt,
            "name": path.name}


def _cell_text(v: Any) -> str:
    if v is None or isinstance(v, float):  # NaN and missing values show as "-"
        return format_number(v)
    return str(v)


def _table(frame: pd.DataFrame, numeric_cols: Sequence[str] = ()) -> dict[str, Any]:
    """A table for the template: column names and rows of ``{text, num}`` cells."""
    columns = [str(c) for c in frame.columns]
    rows = [[{"text": _cell_text(v), "num": c in numeric_cols} for c, v in zip(
        columns, row, strict=True)] for row in frame.itertuples(index=False)]
    return {"columns": columns, "rows": rows}


def _compute_s(records: Sequence[CellRecord]) -> float:
    return float(sum((r.metrics.get("timing") or {}).get("total_s", 0.0)
                     for r in records if r.status == "ok"))


# ---------------------------------------------------------------------- page sections


def _meta(run_dir: Path, cfg: ExperimentConfig, records: Sequence[CellRecord],
          info: dict[str, Any], classes: Sequence[str]) -> list[tuple[str, str]]:
    """The run's key facts, one ``(name, value)`` row each."""
    n_ok = sum(r.status == "ok" for r in records)
    n_failed = sum(r.status == "failed" for r in records)
    split = cfg.protocol.target_split
    rows = [
        ("emobridge version", info.get("emobridge_version")),
        ("git commit", info.get("git_commit") or "unknown"),
        ("started / finished (UTC)", f"{info.get('started')} / {info.get('finished')}"),
        ("time", f"this invocation {info.get('seconds', 0):.1f} s before the report "
                 f"(cells run now: {info.get('n_run', 0)}); cell compute over all finished "
                 f"cells {_compute_s(records):.1f} s"),
        ("device / jobs", f"{info.get('device', cfg.device)} / {info.get('jobs')}"),
        ("cells", f"{len(records)} ({n_ok} finished, {n_failed} failed, "
                  f"{info.get('n_skipped', 0)} reused from an earlier run)"),
        ("classes", ", ".join(classes)),
        ("protocol", f"domain: {cfg.protocol.domain}; target speakers train / validation / "
                     f"test = {split.train:g} / {split.validation:g} / {split.test:g}; "
                     f"validation data: {cfg.protocol.validation}; seeds: "
                     f"{', '.join(map(str, cfg.seeds))}"),
        ("tasks", "; ".join(f"{t['name']}" for t in info.get("tasks", []))),
        ("output", str(run_dir)),
    ]
    return [(name, str(value)) for name, value in rows]


def _failed(run_dir: Path, records: Sequence[CellRecord]) -> list[dict[str, str]]:
    """Failed cells (with a link to their traceback), then cells never run."""
    rows = []
    for r in records:
        if r.status == "failed":
            tb = cell_dir(run_dir, r.key) / "traceback.txt"
            rows.append({"id": r.key.id, "error": str((r.error or {}).get("error", "")),
                         "traceback": str(tb.relative_to(run_dir))})
    rows += [{"id": r.key.id, "error": "not run (stopped early)", "traceback": ""}
             for r in records if r.status == "missing"]
    return rows


def _data(run_dir: Path) -> dict[str, Any] | None:
    """Utterances and speakers per corpus, language and emotion (from ``manifest.csv``)."""
    path = run_dir / "manifest.csv"
    if not path.exists():
        return None
    m = pd.read_csv(path, dtype=str, keep_default_na=False)
    counts = pd.crosstab([m["corpus"], m["language"]], m["emotion"])
    counts["utterances"] = counts.sum(axis=1)
    counts["speakers"] = m.groupby(["corpus", "language"])["speaker"].nunique()
    counts = counts.reset_index()
    problems = run_dir / "scan_problems.csv"
    return {"counts": _table(counts, [c for c in counts.columns
                                      if c not in ("corpus", "language")]),
            "n_problems": len(pd.read_csv(problems)) if problems.exists() else 0}


# ---------------------------------------------------------------------- per group


def _seed_table(done: Sequence[CellRecord]) -> dict[str, Any]:
    """One row per finished seed of a group: its metrics, sizes and fit time."""
    rows = []
    for r in done:
        t = r.metrics["target"]
        s = r.metrics.get("source") or {}
        sizes = r.metrics.get("sizes") or {}
        rows.append({
            "seed": r.key.seed, "UA %": format_pct(t.get("ua")),
            "UA 95% CI": format_ci(t.get("ua_ci_low"), t.get("ua_ci_high")),
            "WA %": format_pct(t.get("wa")), "macro-F1 %": format_pct(t.get("macro_f1")),
            "source UA %": format_pct(s.get("ua")),
            "silhouette (emotion)": format_number(
                (r.metrics.get("silhouette") or {}).get("emotion")),
            "test utt.": t.get("n"),
            "labelled target": sizes.get("target_labelled"),
            "fit s": format_number((r.metrics.get("timing") or {}).get("fit_s", 0), 1),
        })
    frame = pd.DataFrame(rows)
    return _table(frame, list(frame.columns)[1:])


def _seed_notes(done: Sequence[CellRecord]) -> list[str]:
    """Per-seed remarks: classes the test set lacks, an embedding that could not be made."""
    notes = []
    for r in done:
        missing = missing_note(missing_classes(r.metrics["target"]))
        if missing:
            notes.append(f"seed {r.key.seed}: {missing}")
        if r.metrics.get("embedding_error"):
            notes.append(f"seed {r.key.seed}: no embedding ({r.metrics['embedding_error']})")
    return notes


def _per_class(run_dir: Path, figs: Path, gid: str, done: Sequence[CellRecord],
               classes: list[str]) -> dict[str, Any]:
    """Confusion figure and per-class table summed over seeds; writes the per-class CSV."""
    cm = summed_confusion(done)
    if cm is None:
        return {"confusion": None, "per_class": None}
    png = plot_confusion(cm, classes, f"{gid}\nconfusion summed over {len(done)} seed(s)",
                         figs / f"confusion__{gid}.png")
    report = per_class_table(cm, classes).reset_index()
    with atomic_path(run_dir / "per_class" / f"{gid}.csv") as tmp:
        report.to_csv(tmp, index=False)
    shown = pd.DataFrame({"class": report["class"], **{
        f"{col} %": [format_pct(v) for v in report[col]] for col in ("precision", "recall", "f1")},
        "support": report["support"]})
    return {"confusion": _img(png, "confusion matrix"),
            "per_class": _table(shown, list(shown.columns)[1:])}


def _embedding_figure(run_dir: Path, figs: Path, gid: str, done: Sequence[CellRecord],
                      classes: list[str], cfg: ExperimentConfig) -> dict[str, str] | None:
    """The first seed's 2-D embedding, or ``None`` when it has none (or too few points)."""
    first = min(done, key=lambda r: r.key.seed)
    emb = read_embedding(cell_dir(run_dir, first.key))
    if emb is None or len(emb["x"]) < 3:
        return None
    sil = first.metrics.get("silhouette") or {}
    sil_text = ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in sil.items()
                         if v is not None)
    title = (f"{gid} (seed {first.key.seed}): embed() of test utterances, colour = emotion, "
             f"marker = language\nsilhouette by {sil_text}")
    png = plot_embeddings(emb["x"], emb["emotion"], emb["language"], title,
                          figs / f"embedding__{gid}.png", tsne=cfg.report.tsne,
                          seed=first.key.seed, classes=classes)
    return _img(png, "embedding")


def _group(run_dir: Path, figs: Path, group: tuple[str, ...], members: list[CellRecord],
           classes: list[str], cfg: ExperimentConfig, embed: bool) -> dict[str, Any]:
    """Everything the page shows for one (task, feature, method, k) group."""
    gid = group_id(group)
    done = [r for r in members if r.status == "ok"]
    task, feature, method, k = group
    ua = mean_std(r.metrics["target"]["ua"] for r in done)[0]
    ua_text = format_pct(ua) + (" %" if done else "")
    head = f"{task} · {feature} · {method} · k={k}: UA {ua_text} over {len(done)} seed(s)"
    out: dict[str, Any] = {"head": head, "done": bool(done), "embedding": None}
    if not done:
        return out
    if any(missing_classes(r.metrics["target"]) for r in done):
        out["head"] += " (test set lacks classes)"
    out["seeds"] = _seed_table(done)
    out["notes"] = _seed_notes(done)
    out.update(_per_class(run_dir, figs, gid, done, classes))
    curves = plot_learning_curves({r.key.seed: r.metrics.get("history") or [] for r in done},
                                  f"{gid}: learning curves", figs / f"curves__{gid}.png")
    out["curves"] = _img(curves, "learning curves")
    if embed:
        out["embedding"] = _embedding_figure(run_dir, figs, gid, done, classes, cfg)
    return out


def _groups(run_dir: Path, figs: Path, records: Sequence[CellRecord], classes: list[str],
            cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """Every group's section; embeddings for the first ``max_embedding_plots`` that have
    one (when the config asks for embeddings)."""
    out, n_embeddings = [], 0
    for i, (group, members) in enumerate(group_records(records).items()):
        embed = cfg.report.embeddings and n_embeddings < cfg.report.max_embedding_plots
        section = _group(run_dir, figs, group, members, classes, cfg, embed)
        n_embeddings += section["embedding"] is not None
        section["open"] = i < _OPEN_GROUPS
        out.append(section)
    return out


# ---------------------------------------------------------------------- the page


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
    shown = display_table(table)
    context = {
        "title": cfg.name or "experiment", "description": cfg.description or "",
        "meta": _meta(run_dir, cfg, records, info, classes),
        "chance": f"{format_pct(chance)}%" if chance else "-",
        "results": _table(shown, ("UA %", "UA 95% CI", "WA %", "macro-F1 %", "source UA %",
                                  "silhouette")),
        "summary_figures": [
            _img(plot_summary(table, figs / "summary_ua.png", chance), "UA summary"),
            _img(plot_k_sweep(table, figs / "k_sweep_ua.png", chance), "UA against k")],
        "failed": _failed(run_dir, records),
        "groups": _groups(run_dir, figs, records, classes, cfg),
        "data": _data(run_dir),
        "config_yaml": cfg.to_yaml(),
    }
    out = run_dir / "report.html"
    write_text_atomic(out, render_report(context))
    return out
