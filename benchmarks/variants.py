"""Stress variants of a target corpus (issue "A recipe that holds on real-world targets").

Each variant is a seeded selection of a target corpus's rows, built with its labels and
speakers; the methods never see the labels (they only score). The shared corpora are acted:
every speaker shows every emotion in nearly equal shares. Real targets are not like that:

- ``confounded``: each speaker keeps mostly one emotion (``share`` of its utterances, all of
  its utterances of that class; the class rotates over the speakers in sorted order), as in
  talk shows; every class stays in the corpus;
- ``skewed``: unequal class shares (50 / 25 / 15 / 10 %), ``rotate`` choosing which class
  is largest;
- ``few_speakers``: two speakers only (seeded choice among the speakers with every class);
- ``short``: every utterance cut to its loudest 1-s window (the window of highest RMS on a
  10-ms grid: a window of speech, not of the leading silence), as with isolated words or
  back-channels; utterances shorter than 1 s are kept whole. This one writes new audio
  (:func:`short_manifest`), cached as FLAC under ``benchmarks/out/short``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

VARIANTS = ("confounded", "skewed", "few_speakers", "short")
ROW_VARIANTS = VARIANTS[:3]
SKEWED_SHARES = (0.50, 0.25, 0.15, 0.10)


def confounded(labels: np.ndarray, speakers: np.ndarray, n_classes: int, share: float = 0.8,
               seed: int = 0) -> np.ndarray:
    """Rows of the confounded variant (module docstring), in their original order."""
    rng = np.random.default_rng(seed)
    labels, speakers = np.asarray(labels), np.asarray(speakers).astype(str)
    keep = []
    for i, speaker in enumerate(np.unique(speakers)):
        rows = np.flatnonzero(speakers == speaker)
        dominant = i % n_classes
        main, others = rows[labels[rows] == dominant], rows[labels[rows] != dominant]
        n_other = min(len(others), int(round(len(main) * (1 - share) / share)))
        keep += [main, others[rng.permutation(len(others))[:n_other]]]
    return np.sort(np.concatenate(keep))


def skewed(labels: np.ndarray, n_classes: int, rotate: int = 0, seed: int = 0,
           shares: tuple[float, ...] = SKEWED_SHARES) -> np.ndarray:
    """Rows of the skewed variant: class ``(c + rotate) % n`` gets ``shares[c]`` of the rows,
    as many rows as the scarcest class allows."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    want = {(c + rotate) % n_classes: s for c, s in enumerate(shares[:n_classes])}
    total = min(np.sum(labels == c) / s for c, s in want.items())
    keep = [rng.permutation(np.flatnonzero(labels == c))[:max(1, int(round(total * s)))]
            for c, s in want.items()]
    return np.sort(np.concatenate(keep))


def few_speakers(labels: np.ndarray, speakers: np.ndarray, n_classes: int, count: int = 2,
                 seed: int = 0) -> np.ndarray:
    """Rows of ``count`` speakers drawn (seeded) among those who show every class."""
    rng = np.random.default_rng(seed)
    labels, speakers = np.asarray(labels), np.asarray(speakers).astype(str)
    full = [s for s in np.unique(speakers)
            if len(np.unique(labels[speakers == s])) == n_classes] or list(np.unique(speakers))
    chosen = rng.permutation(full)[:count]
    return np.flatnonzero(np.isin(speakers, chosen))


def variant_rows(kind: str, labels: np.ndarray, speakers: np.ndarray, n_classes: int,
                 rotate: int = 0, seed: int = 0) -> np.ndarray:
    """The rows of variant ``kind`` (one of :data:`VARIANTS`)."""
    if kind == "confounded":
        return confounded(labels, speakers, n_classes, seed=seed)
    if kind == "skewed":
        return skewed(labels, n_classes, rotate=rotate, seed=seed)
    if kind == "few_speakers":
        return few_speakers(labels, speakers, n_classes, seed=seed)
    if kind == "short":  # the audio changes, not the rows
        return np.arange(len(labels))
    raise SystemExit(f"unknown variant {kind!r}; known: {', '.join(VARIANTS)}")


def loudest_window(audio: np.ndarray, sample_rate: int, seconds: float = 1.0,
                   hop_s: float = 0.01) -> np.ndarray:
    """The ``seconds``-long window of ``audio`` with the highest energy, its start on a
    ``hop_s`` grid (the whole signal when it is shorter)."""
    width = int(round(seconds * sample_rate))
    if len(audio) <= width:
        return audio
    energy = np.concatenate([[0.0], np.cumsum(audio.astype(np.float64) ** 2)])
    starts = np.arange(0, len(audio) - width + 1, max(1, int(hop_s * sample_rate)))
    best = starts[np.argmax(energy[starts + width] - energy[starts])]
    return audio[best:best + width]


def short_manifest(manifest: pd.DataFrame, folder: Path, seconds: float = 1.0
                   ) -> pd.DataFrame:
    """``manifest`` with every file replaced by its loudest ``seconds`` window, written (once)
    as FLAC under ``folder``; ids, speakers and labels unchanged."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    out = manifest.copy()
    paths, durations = [], []
    for i, path in enumerate(manifest["path"]):
        target = folder / f"{i:05d}-{Path(path).stem}.flac"
        if not target.exists():
            audio, rate = sf.read(path, dtype="float32", always_2d=True)
            cut = loudest_window(audio.mean(axis=1), rate, seconds)
            sf.write(target.with_suffix(".tmp.flac"), cut, rate)
            target.with_suffix(".tmp.flac").replace(target)
        paths.append(str(target))
        durations.append(sf.info(target).duration)
    out["path"], out["duration_s"] = paths, durations
    return out
