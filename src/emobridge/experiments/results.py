"""The results folder of a run: cell keys, per-cell files, aggregation into tables.

Layout of a run folder::

    config.yaml            the resolved config (defaults filled in, absolute paths)
    run.json               package version, git commit, host, times, cell counts
    manifest.csv           the utterances used (after the label set), with their corpus ids
    scan_problems.csv      files the readers could not use, and why (when any)
    cells/<cell id>/
        metrics.json       a finished cell: metrics on the target test set (and the source
                           test set when there is one), training history, predictions
        embedding.npz      embed() of test utterances (for the 2-D plots)
        error.json         a failed cell: the error message ...
        traceback.txt      ... and its traceback
    results.csv / .md      one row per (task, feature, method, k): mean +- std over seeds
    cells.csv              one row per finished cell
    figures/*.png          confusion matrices, learning curves, embeddings, summaries
    per_class/<group>.csv  precision / recall / F1 / support per class, summed over seeds
    report.html            everything above in one self-contained page

A cell is finished when its ``metrics.json`` parses, says ``"status": "ok"`` and carries the
hash of the cell's current settings; anything else is run (again).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emobridge.fileio import atomic_path, loads_json, write_json_atomic, write_text_atomic
from emobridge.fileio import jsonable as jsonable  # re-exported: the one JSON sanitiser
from emobridge.metrics import bootstrap_mean_ua, per_class_from_confusion

CELLS_DIR = "cells"
METRICS_FILE = "metrics.json"
ERROR_FILE = "error.json"
TRACEBACK_FILE = "traceback.txt"
EMBEDDING_FILE = "embedding.npz"

#: Columns of the aggregated table, in order (``source_ua_*`` / ``silhouette_*`` may be NaN).
RESULT_COLUMNS: tuple[str, ...] = (
    "task", "source", "target", "feature", "method", "k", "n_seeds", "n_failed",
    "ua_mean", "ua_std", "ua_ci_low", "ua_ci_high", "wa_mean", "wa_std",
    "macro_f1_mean", "macro_f1_std", "source_ua_mean", "source_ua_std",
    "silhouette_emotion_mean", "n_test", "missing_classes",
)


@dataclass(frozen=True)
class Task:
    """One source -> target task: the domains (corpus ids or languages) on each side."""

    name: str
    sources: tuple[str, ...]
    target: str

    @property
    def source_label(self) -> str:
        return "+".join(self.sources)


@dataclass(frozen=True)
class CellKey:
    """One cell of the grid: (task, feature, method, few-shot k, seed).

    ``k`` is the number of labelled target utterances, or ``"all"`` for a method trained on
    every target training label.
    """

    task: str
    feature: str
    method: str
    k: int | str
    seed: int

    @property
    def k_label(self) -> str:
        return str(self.k)

    @property
    def id(self) -> str:
        """Folder name: ``<task>__<feature>__<method>__k<k>__seed<seed>``."""
        return f"{self.task}__{self.feature}__{self.method}__k{self.k}__seed{self.seed}"

    @property
    def group(self) -> tuple[str, str, str, str]:
        """The cell without its seed: what the table aggregates over."""
        return (self.task, self.feature, self.method, self.k_label)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "task": self.task, "feature": self.feature,
                "method": self.method, "k": self.k, "seed": self.seed}


def group_id(group: Sequence[str]) -> str:
    """File-name-safe id of a group (a cell id without the seed)."""
    task, feature, method, k = group
    return f"{task}__{feature}__{method}__k{k}"


def cell_dir(run_dir: str | os.PathLike[str], key: CellKey) -> Path:
    return Path(run_dir) / CELLS_DIR / key.id


# ---------------------------------------------------------------------- cell files


def write_cell_metrics(directory: Path, payload: dict[str, Any]) -> None:
    """Write a finished cell's ``metrics.json`` (atomically) and drop stale error files."""
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(directory / METRICS_FILE, {**payload, "status": "ok"})
    for stale in (ERROR_FILE, TRACEBACK_FILE):
        (directory / stale).unlink(missing_ok=True)


def write_cell_error(directory: Path, key: CellKey, cell_hash: str, error: BaseException,
                     traceback_text: str) -> None:
    """Record a failed cell: ``error.json`` (message) and ``traceback.txt``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / METRICS_FILE).unlink(missing_ok=True)
    write_text_atomic(directory / TRACEBACK_FILE, traceback_text)
    write_json_atomic(directory / ERROR_FILE, {
        "status": "failed", "cell": key.as_dict(), "cell_hash": cell_hash,
        "error_type": type(error).__name__, "error": str(error),
        "traceback": str(directory / TRACEBACK_FILE),
    })


def read_cell_metrics(directory: Path, cell_hash: str | None = None) -> dict[str, Any] | None:
    """The cell's metrics when it finished (valid JSON, status ok, same settings hash)."""
    path = directory / METRICS_FILE
    try:
        doc = loads_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("status") != "ok":
        return None
    target = doc.get("target")
    if not isinstance(target, dict) or not isinstance(target.get("ua"), (int, float)):
        return None
    if cell_hash is not None and doc.get("cell_hash") != cell_hash:
        return None
    return doc


def read_cell_error(directory: Path) -> dict[str, Any] | None:
    try:
        doc = loads_json((directory / ERROR_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def write_embedding(directory: Path, embedding: np.ndarray, emotion: Sequence[str],
                    language: Sequence[str], part: Sequence[str]) -> None:
    """Store an embedding for the plots (float32; strings as unicode arrays)."""
    with atomic_path(directory / EMBEDDING_FILE) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, x=np.asarray(embedding, dtype=np.float32),
                            emotion=np.asarray(emotion, dtype=str),
                            language=np.asarray(language, dtype=str),
                            part=np.asarray(part, dtype=str))


def read_embedding(directory: Path) -> dict[str, np.ndarray] | None:
    path = directory / EMBEDDING_FILE
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------- aggregation


@dataclass
class CellRecord:
    """A cell of the current grid with its outcome (metrics, error, or not run)."""

    key: CellKey
    task: Task
    status: str  # "ok", "failed" or "missing"
    metrics: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    @property
    def directory_name(self) -> str:
        return self.key.id


def collect(run_dir: str | os.PathLike[str], cells: Iterable[tuple[CellKey, Task, str]]
            ) -> list[CellRecord]:
    """Outcome of every cell of the grid: ``(key, task, cell_hash)`` triples."""
    out = []
    for key, task, cell_hash in cells:
        d = cell_dir(run_dir, key)
        metrics = read_cell_metrics(d, cell_hash)
        if metrics is not None:
            out.append(CellRecord(key, task, "ok", metrics=metrics))
            continue
        error = read_cell_error(d)
        if error is not None and error.get("cell_hash") == cell_hash:
            out.append(CellRecord(key, task, "failed", error=error))
        else:
            out.append(CellRecord(key, task, "missing"))
    return out


def mean_std(values: Iterable[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 with one value) over seeds, ignoring missing
    and non-finite values; ``(nan, nan)`` when none is left."""
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def missing_classes(metrics: dict[str, Any] | None) -> list[str]:
    """Classes without a test utterance in an :func:`emobridge.metrics.evaluate` result.

    Read from its ``missing_classes``; results written before that key existed give it
    through their per-class supports of 0.
    """
    if not metrics:
        return []
    if "missing_classes" in metrics:
        return [str(c) for c in metrics["missing_classes"] or []]
    return [str(c) for c, row in (metrics.get("per_class") or {}).items()
            if isinstance(row, dict) and row.get("support") == 0]


def _missing_over_seeds(targets: Sequence[dict[str, Any]]) -> str:
    """Classes missing from the test set of any seed, ``;``-joined in class order."""
    seen: dict[str, None] = {}
    for t in targets:
        seen.update(dict.fromkeys(missing_classes(t)))
    return ";".join(seen)


def cells_frame(records: Sequence[CellRecord]) -> pd.DataFrame:
    """One row per cell: key, status and headline metrics (NaN where not finished)."""
    rows = []
    for r in records:
        m = r.metrics or {}
        target = m.get("target") or {}
        source = m.get("source") or {}
        sil = m.get("silhouette") or {}
        rows.append({
            "cell": r.key.id, "task": r.key.task, "source": r.task.source_label,
            "target": r.task.target, "feature": r.key.feature, "method": r.key.method,
            "k": r.key.k_label, "seed": r.key.seed, "status": r.status,
            "ua": target.get("ua"), "wa": target.get("wa"), "macro_f1": target.get("macro_f1"),
            "ua_ci_low": target.get("ua_ci_low"), "ua_ci_high": target.get("ua_ci_high"),
            "source_ua": source.get("ua"), "silhouette_emotion": sil.get("emotion"),
            "silhouette_language": sil.get("language"), "n_test": target.get("n"),
            "missing_classes": ";".join(missing_classes(target)),
            "fit_s": (m.get("timing") or {}).get("fit_s"),
            "error": (r.error or {}).get("error"),
        })
    return pd.DataFrame(rows)


def group_records(records: Sequence[CellRecord]
                  ) -> dict[tuple[str, str, str, str], list[CellRecord]]:
    """Records by group (the cell key without its seed), in the grid's order."""
    groups: dict[tuple[str, str, str, str], list[CellRecord]] = {}
    for r in records:
        groups.setdefault(r.key.group, []).append(r)
    return groups


def _group_row(group: tuple[str, str, str, str], members: Sequence[CellRecord],
               n_resamples: int, seed: int) -> dict[str, Any]:
    """One row of the results table: statistics over the finished seeds of a group."""
    done = [r for r in members if r.status == "ok"]
    task = members[0].task
    row: dict[str, Any] = {
        "task": group[0], "source": task.source_label, "target": task.target,
        "feature": group[1], "method": group[2], "k": group[3],
        "n_seeds": len(done), "n_failed": sum(r.status == "failed" for r in members),
    }
    targets = [r.metrics["target"] for r in done]
    for metric in ("ua", "wa", "macro_f1"):
        row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std(t.get(metric) for t in targets)
    preds = [(r.metrics["predictions"]["target"]["y_true"],
              r.metrics["predictions"]["target"]["y_pred"])
             for r in done if r.metrics.get("predictions")]
    n_classes = len(done[0].metrics["classes"]) if done else 0
    row["ua_ci_low"], row["ua_ci_high"] = bootstrap_mean_ua(preds, n_classes, n_resamples,
                                                            seed=seed)
    row["source_ua_mean"], row["source_ua_std"] = mean_std(
        (r.metrics.get("source") or {}).get("ua") for r in done)
    row["silhouette_emotion_mean"] = mean_std(
        (r.metrics.get("silhouette") or {}).get("emotion") for r in done)[0]
    row["n_test"] = float(np.mean([t.get("n", 0) for t in targets])) if targets else 0.0
    row["missing_classes"] = _missing_over_seeds(targets)
    return row


def aggregate(records: Sequence[CellRecord], n_resamples: int = 1000,
              seed: int = 0) -> pd.DataFrame:
    """The results table: one row per (task, feature, method, k), statistics over seeds.

    ``*_mean`` / ``*_std`` are the mean and sample standard deviation over the finished
    seeds; ``ua_ci_low`` / ``ua_ci_high`` the bootstrap 95 % CI of the mean UA
    (:func:`emobridge.metrics.bootstrap_mean_ua`); ``missing_classes`` the classes absent
    from the target test set of some seed (``;``-joined; UA is over the present classes).
    Rows keep the grid's order.
    """
    rows = [_group_row(group, members, n_resamples, seed)
            for group, members in group_records(records).items()]
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def summed_confusion(records: Sequence[CellRecord]) -> np.ndarray | None:
    """Target-test confusion counts summed over the finished seeds of one group."""
    mats = [np.asarray(r.metrics["target"]["confusion"]) for r in records
            if r.status == "ok" and r.metrics["target"].get("confusion") is not None]
    return np.sum(mats, axis=0) if mats else None


def per_class_table(confusion: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Precision / recall / F1 / support per class from confusion counts (rows true);
    see :func:`emobridge.metrics.per_class_from_confusion`."""
    return per_class_from_confusion(confusion, list(classes))


# ---------------------------------------------------------------------- formatting


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and bool(np.isfinite(x))


def format_pct(x: Any, std: Any = None) -> str:
    """A fraction as a percentage with one decimal (``"61.3"``), ``"61.3 ± 2.0"`` with a
    finite ``std``, ``"-"`` when ``x`` is missing or not finite."""
    if not _finite(x):
        return "-"
    return f"{x * 100:.1f} ± {std * 100:.1f}" if _finite(std) else f"{x * 100:.1f}"


def format_ci(low: Any, high: Any) -> str:
    """A CI of fractions in percent: ``"[55.0, 67.5]"``, or ``"-"``."""
    if not (_finite(low) and _finite(high)):
        return "-"
    return f"[{low * 100:.1f}, {high * 100:.1f}]"


def format_number(x: Any, digits: int = 3) -> str:
    """A plain number with ``digits`` decimals, or ``"-"``."""
    return f"{x:.{digits}f}" if _finite(x) else "-"


def missing_note(missing: Any) -> str:
    """The note for a row whose test set lacks classes (``;``-joined names or a list)."""
    if isinstance(missing, str):
        names = [c for c in missing.split(";") if c]
    elif isinstance(missing, (list, tuple)):
        names = [str(c) for c in missing]
    else:  # NaN from a CSV round trip, None
        names = []
    return f"UA over present classes; no test utterance of: {', '.join(names)}" if names \
        else ""


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The results table formatted for people: metrics in % as ``mean ± std``; a ``note``
    column when some test set lacks classes."""

    def pct(metric: str) -> list[str]:
        return [format_pct(m, s)
                for m, s in zip(table[f"{metric}_mean"], table[f"{metric}_std"], strict=True)]

    shown = pd.DataFrame({
        "task": table["task"], "feature": table["feature"], "method": table["method"],
        "k": table["k"], "seeds": [
            f"{int(n)}" + (f" ({int(f)} failed)" if f else "")
            for n, f in zip(table["n_seeds"], table["n_failed"], strict=True)],
        "UA %": pct("ua"),
        "UA 95% CI": [format_ci(lo, hi)
                      for lo, hi in zip(table["ua_ci_low"], table["ua_ci_high"], strict=True)],
        "WA %": pct("wa"),
        "macro-F1 %": pct("macro_f1"),
        "source UA %": pct("source_ua"),
        "silhouette": [format_number(m) for m in table["silhouette_emotion_mean"]],
    })
    notes = [missing_note(m) for m in table.get("missing_classes", [""] * len(table))]
    if any(notes):
        shown["note"] = notes
    return shown


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in frame.itertuples(index=False):
        cells = [str(v).replace("|", "\\|") for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(run_dir: str | os.PathLike[str], table: pd.DataFrame,
                 cells: pd.DataFrame) -> list[Path]:
    """Write ``results.csv`` (raw fractions), ``results.md`` (formatted) and ``cells.csv``."""
    run_dir = Path(run_dir)
    written = []
    for name, frame in (("results.csv", table), ("cells.csv", cells)):
        with atomic_path(run_dir / name) as tmp:
            frame.to_csv(tmp, index=False)
        written.append(run_dir / name)
    md = ("UA, WA and macro-F1 on the target test speakers, in %, mean ± std over seeds; "
          "UA 95% CI: bootstrap over test utterances of the mean UA. A note names the "
          "classes a target test set lacks (UA is then over the present classes).\n\n"
          + to_markdown(display_table(table)))
    write_text_atomic(run_dir / "results.md", md)
    written.append(run_dir / "results.md")
    return written
