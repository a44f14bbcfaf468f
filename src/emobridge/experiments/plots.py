"""Figures of a run: confusion matrices, learning curves, 2-D embeddings, summaries.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend state,
so it works in worker processes and on machines without a display). Every figure is saved
atomically as PNG.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from emobridge.fileio import atomic_path

_MARKERS = ("o", "^", "s", "D", "v", "P", "X", "*", "<", ">")
_DPI = 110


def _figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI)
    return path


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def plot_confusion(confusion: np.ndarray, classes: Sequence[str], title: str,
                   path: str | os.PathLike[str]) -> Path:
    """Row-normalised confusion matrix (colour and %) with the counts in brackets."""
    cm = np.asarray(confusion, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.nan_to_num(cm / cm.sum(axis=1, keepdims=True))
    n = len(classes)
    size = 1.2 + 0.75 * n
    fig = _figure(size + 0.8, size)
    ax = fig.add_subplot()
    im = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), labels=classes, rotation=35, ha="right")
    ax.set_yticks(range(n), labels=classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            colour = "white" if rates[i, j] > 0.55 else "black"
            ax.text(j, i, f"{rates[i, j] * 100:.0f}%\n({int(cm[i, j])})", ha="center",
                    va="center", fontsize=8, color=colour)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def _numeric_keys(history: Sequence[Mapping[str, Any]]) -> list[str]:
    keys: list[str] = []
    for record in history:
        for k, v in record.items():
            if k in ("epoch", "lr", "time_s", "seconds", "step") or k in keys:
                continue
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                keys.append(k)
    return keys


def plot_learning_curves(histories: Mapping[int, Sequence[Mapping[str, Any]]], title: str,
                         path: str | os.PathLike[str]) -> Path | None:
    """Per-epoch curves of every seed: losses on the left, scores (UA, accuracy...) on the
    right. ``None`` (nothing drawn) when no history has a numeric entry."""
    keys: list[str] = []
    for history in histories.values():
        for k in _numeric_keys(history):
            if k not in keys:
                keys.append(k)
    if not keys:
        return None
    losses = [k for k in keys if "loss" in k or k in ("ce", "mse", "kl")]
    scores = [k for k in keys if k not in losses]
    panels = [(p, name) for p, name in ((losses, "loss"), (scores, "score")) if p]
    fig = _figure(5.2 * len(panels), 3.4)
    colours = dict(zip(keys, _colours(len(keys)), strict=True))
    styles = ("-", "--", ":", "-.")
    for pi, (panel_keys, ylabel) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), pi + 1)
        for si, (_seed, history) in enumerate(sorted(histories.items())):
            for key in panel_keys:
                xs, ys = [], []
                for i, record in enumerate(history):
                    v = record.get(key)
                    if isinstance(v, (int, float)) and np.isfinite(v):
                        xs.append(record.get("epoch", i + 1))
                        ys.append(v)
                if xs:
                    ax.plot(xs, ys, styles[si % len(styles)], color=colours[key],
                            label=key if si == 0 else None, linewidth=1.3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    seeds = ", ".join(str(s) for s in sorted(histories))
    fig.suptitle(f"{title}\n(seeds {seeds}: line styles - -- : -.)", fontsize=9)
    return _save(fig, path)


def project_2d(x: np.ndarray, how: str, seed: int = 0) -> np.ndarray:
    """2-D projection: ``"pca"`` or ``"tsne"`` (scikit-learn; perplexity adapted to n).

    Dimensions are standardised first, so one large-valued unit does not decide the view."""
    x = np.asarray(x, dtype=np.float64)
    std = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(std > 1e-12, std, 1.0)
    if x.shape[1] < 2:
        return np.column_stack([x[:, 0], np.zeros(len(x))])
    if how == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if how == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(max(2.0, min(30.0, (len(x) - 1) / 3.0)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                    learning_rate="auto").fit_transform(x)
    raise ValueError(f"unknown projection {how!r}; use 'pca' or 'tsne'")


def plot_embeddings(x: np.ndarray, emotion: Sequence[str], language: Sequence[str], title: str,
                    path: str | os.PathLike[str], tsne: bool = True, seed: int = 0,
                    classes: Sequence[str] | None = None) -> Path:
    """PCA (and t-SNE) of an embedding: colour = emotion, marker = language."""
    emotion = np.asarray(emotion, dtype=str)
    language = np.asarray(language, dtype=str)
    classes = list(classes) if classes else sorted(set(emotion))
    languages = sorted(set(language))
    colours = dict(zip(classes, _colours(len(classes)), strict=True))
    markers = {lang: _MARKERS[i % len(_MARKERS)] for i, lang in enumerate(languages)}
    views = [("PCA", project_2d(x, "pca", seed))]
    if tsne and len(x) >= 8:
        views.append(("t-SNE", project_2d(x, "tsne", seed)))
    fig = _figure(4.6 * len(views) + 1.6, 4.3)
    for vi, (name, xy) in enumerate(views):
        ax = fig.add_subplot(1, len(views), vi + 1)
        for lang in languages:
            for emo in classes:
                sel = (language == lang) & (emotion == emo)
                if sel.any():
                    ax.scatter(xy[sel, 0], xy[sel, 1], s=16, marker=markers[lang],
                               color=colours[emo], alpha=0.75, linewidths=0.3,
                               edgecolors="black")
        # Frame the central 99 % of the points: a few outliers must not squash the rest.
        lo, hi = np.quantile(xy, [0.005, 0.995], axis=0)
        pad = 0.08 * np.maximum(hi - lo, 1e-9)
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Line2D([], [], marker="o", linestyle="", color=colours[e], label=e)
               for e in classes]
    handles += [Line2D([], [], marker=markers[lang], linestyle="", color="grey",
                       label=f"lang {lang}") for lang in languages]
    fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def plot_summary(table: pd.DataFrame, path: str | os.PathLike[str],
                 chance: float | None = None) -> Path | None:
    """Mean UA (± std over seeds) per task, one bar per feature / method / k."""
    if table.empty or table["ua_mean"].isna().all():
        return None
    with_feature = table["feature"].nunique() > 1
    labels = pd.Series([f"{f} / {m} / k={k}" if with_feature else f"{m} / k={k}"
                        for f, m, k in zip(table["feature"], table["method"], table["k"],
                                           strict=True)], index=table.index)
    variants = list(dict.fromkeys(labels))
    tasks = list(dict.fromkeys(table["task"]))
    width = 0.8 / max(1, len(variants))
    fig = _figure(max(5.0, 1.1 + len(tasks) * (0.5 + 0.28 * len(variants))), 3.8)
    ax = fig.add_subplot()
    colours = _colours(len(variants))
    for vi, variant in enumerate(variants):
        xs, ys, es = [], [], []
        for ti, task in enumerate(tasks):
            rows = table[(table["task"] == task) & (labels == variant)]
            if rows.empty:
                continue
            row = rows.iloc[0]
            xs.append(ti + (vi - (len(variants) - 1) / 2) * width)
            ys.append(row["ua_mean"] * 100)
            es.append((row["ua_std"] if np.isfinite(row["ua_std"]) else 0.0) * 100)
        ax.bar(xs, ys, width=width, yerr=es, capsize=2, color=colours[vi], label=variant)
    if chance:
        ax.axhline(chance * 100, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(range(len(tasks)), labels=tasks, rotation=20 if len(tasks) > 3 else 0,
                  ha="right" if len(tasks) > 3 else "center", fontsize=8)
    ax.set_ylabel("UA on target test (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), fontsize=7, loc="outside right center",
               frameon=False)
    fig.suptitle("Unweighted accuracy per task (mean ± std over seeds)", fontsize=9)
    return _save(fig, path)


def plot_k_sweep(table: pd.DataFrame, path: str | os.PathLike[str],
                 chance: float | None = None) -> Path | None:
    """UA against the number of labelled target utterances, one panel per task and feature.

    Methods run at several ``k`` are lines; methods run once (lower / upper bounds,
    ``k = all``) are horizontal dashed lines. ``None`` when no method has two ``k`` values.
    """
    numeric = table[table["k"].astype(str).str.fullmatch(r"\d+")]
    counts = numeric.groupby(["task", "feature", "method"])["k"].nunique()
    if counts.empty or counts.max() < 2:
        return None
    panels = list(dict.fromkeys(zip(table["task"], table["feature"], strict=True)))
    cols = min(3, len(panels))
    rows_n = int(np.ceil(len(panels) / cols))
    fig = _figure(4.4 * cols + 1.8, 3.3 * rows_n)
    methods = list(dict.fromkeys(table["method"]))
    colours = dict(zip(methods, _colours(len(methods)), strict=True))
    for pi, (task, feature) in enumerate(panels):
        ax = fig.add_subplot(rows_n, cols, pi + 1)
        sub = table[(table["task"] == task) & (table["feature"] == feature)]
        for method in methods:
            rows = sub[sub["method"] == method]
            if rows.empty:
                continue
            ks = rows["k"].astype(str)
            if ks.str.fullmatch(r"\d+").all() and len(rows) > 1:
                order = np.argsort(ks.astype(int).to_numpy())
                x = ks.astype(int).to_numpy()[order]
                y = rows["ua_mean"].to_numpy()[order] * 100
                e = np.nan_to_num(rows["ua_std"].to_numpy()[order]) * 100
                ax.errorbar(x, y, yerr=e, marker="o", capsize=2, color=colours[method],
                            label=method)
            else:
                for _, row in rows.iterrows():
                    ax.axhline(row["ua_mean"] * 100, linestyle="--", color=colours[method],
                               label=f"{method} (k={row['k']})")
        if chance:
            ax.axhline(chance * 100, color="grey", linestyle=":", linewidth=1, label="chance")
        ks_all = sorted({int(k) for k in sub["k"].astype(str) if k.isdigit()})
        if ks_all:
            ax.set_xticks(ks_all)
        ax.set_xlabel("labelled target utterances k")
        ax.set_ylabel("UA (%)")
        ax.set_title(f"{task} / {feature}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)
