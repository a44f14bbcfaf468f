"""Recording level, silence and spectral balance per corpus and emotion (4 classes).

Why frame-level models trained on RAVDESS fail on EMO-DB without level normalisation: this
measures, per corpus and emotion, the mean RMS level (dBFS), the peak, the share of each file
that is leading / trailing silence (frames more than ``--trim-db`` dB below the loudest
25-ms frame, :func:`emobridge.audio.trim_silence`) and the share of spectral energy below
300 Hz. Writes the ``levels`` section of ``benchmarks/RESULTS.md``.

Run::

    .venv/bin/python benchmarks/corpus_levels.py ../shared/corpora
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from _common import DEFAULT_CORPORA, RESULTS, load_manifest, write_section

CORPORA = {"ravdess": "RAVDESS", "emodb": "EMO-DB", "emovo": "EMOVO"}
CLASSES = ("anger", "happiness", "neutral", "sadness")


def measure(path: str, trim_db: float) -> dict[str, float]:
    """Level, peak, silence share and low-frequency energy share of one file."""
    from emobridge.audio import load_audio, trim_silence

    wave = load_audio(path, 16_000).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(wave)) ** 2
    freqs = np.fft.rfftfreq(wave.size, 1 / 16_000)
    trimmed = trim_silence(wave, 16_000, trim_db)
    return {
        "rms_dbfs": 10 * np.log10(np.mean(wave ** 2) + 1e-20),
        "peak": float(np.abs(wave).max()),
        "silence": 1 - trimmed.size / wave.size,
        "low_share": float(spectrum[freqs < 300].sum() / spectrum.sum()),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpora", type=Path, nargs="?", default=DEFAULT_CORPORA)
    p.add_argument("--trim-db", type=float, default=35.0)
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    rows = []
    for name, title in CORPORA.items():
        manifest = load_manifest(args.corpora, name)
        for emotion in CLASSES:
            paths = manifest.loc[manifest["emotion"] == emotion, "path"]
            values = [measure(path, args.trim_db) for path in paths]
            mean = {k: float(np.mean([v[k] for v in values])) for k in values[0]}
            rows.append(f"| {title} | {emotion} | {len(values)} | {mean['rms_dbfs']:.1f} | "
                        f"{mean['peak']:.2f} | {100 * mean['silence']:.0f} | "
                        f"{100 * mean['low_share']:.0f} |")
            print(rows[-1], flush=True)
    body = "\n".join([
        "## Recording level and silence per corpus (why log-mel models need level "
        "normalisation)",
        "",
        f"`benchmarks/corpus_levels.py`: means over the 4-class utterances. Silence = share of "
        f"each file cut by `trim_silence(top_db={args.trim_db:g})` (leading and trailing frames "
        f"more than {args.trim_db:g} dB below the loudest 25-ms frame). Low = share of the "
        f"spectral energy below 300 Hz.",
        "",
        "| corpus | emotion | files | RMS dBFS | peak | silence % | energy < 300 Hz % |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "EMO-DB files are each peak-normalised (peak 1.00), so its sad and neutral speech, whose "
        "energy sits in the low harmonics, ends up louder in RMS than its angry speech; in "
        "RAVDESS angry speech is much louder than sad speech. A model that learns loudness on "
        "RAVDESS therefore inverts anger and sadness on EMO-DB. The spectral balance (energy "
        "below 300 Hz) points the same way in all three corpora, so it transfers. RAVDESS files "
        "are also about half silence. Hence the log-mel options `trim_db=35,level=rms` used by "
        "the adaptation benchmark.",
    ])
    write_section("levels", body, args.results)
    print(f"wrote the levels section of {args.results}")


if __name__ == "__main__":
    main()
