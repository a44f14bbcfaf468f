"""The manifest: one row per utterance, the table everything downstream takes.

Columns (:data:`MANIFEST_COLUMNS`): ``path`` (absolute), ``corpus``, ``language`` (ISO 639-1
where one exists, else 639-3), ``speaker`` (namespaced ``corpus:id`` so speakers of
different corpora never collide), ``gender`` (``f``/``m`` or empty when unknown), ``label``
(the corpus's own label), ``emotion`` (canonical, see :mod:`emobridge.corpora.taxonomy`),
``duration_s`` and ``sample_rate`` (of the file as stored). Readers may add extra columns
(``intensity``, ``session``...); they are kept.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from emobridge.errors import CorpusError
from emobridge.fileio import (
    atomic_path,
    check_regular_file,
    parquet_available,
    parquet_engine,
)

MANIFEST_COLUMNS: tuple[str, ...] = (
    "path",
    "corpus",
    "language",
    "speaker",
    "gender",
    "label",
    "emotion",
    "duration_s",
    "sample_rate",
)

_DTYPES = {
    "path": str, "corpus": str, "language": str, "speaker": str, "gender": str,
    "label": str, "emotion": str, "duration_s": "float64", "sample_rate": "int64",
}
#: Columns that must hold a non-empty value in every row.
_TEXT_COLUMNS = ("path", "corpus", "language", "speaker", "label", "emotion")
#: Spellings of a missing value that earlier pandas versions wrote into text columns.
_MISSING_WORDS = frozenset({"", "nan", "none", "<na>", "null"})
_GENDERS = frozenset({"", "f", "m"})
#: Rows named in a validation message (the count says how many there are in all).
_ROWS_SHOWN = 5


def make_manifest(rows: Iterable[dict]) -> pd.DataFrame:
    """Build a validated manifest from row dicts (extra keys become extra columns)."""
    df = pd.DataFrame(list(rows))
    if df.empty:
        df = pd.DataFrame({c: pd.Series(dtype=_DTYPES[c]) for c in MANIFEST_COLUMNS})
    return validate_manifest(df)


def _show(value: object) -> str:
    """A cell for a message: strings quoted, numbers plain (``inf``, not ``np.float64(inf)``)."""
    return repr(value) if isinstance(value, str) else str(value)


def _describe_rows(mask: np.ndarray, values: pd.Series | None = None) -> str:
    """``"3 rows (rows 2, 5, 9)"``: the count and the first few 1-based row numbers."""
    rows = np.flatnonzero(mask)
    shown = [str(r + 1) if values is None else f"{r + 1} ({_show(values.iloc[r])})"
             for r in rows[:_ROWS_SHOWN]]
    more = ", ..." if rows.size > _ROWS_SHOWN else ""
    noun = "row" if rows.size == 1 else "rows"
    return f"{rows.size} {noun} ({noun} {', '.join(shown)}{more})"


def _text_missing(col: pd.Series) -> np.ndarray:
    """Missing (NaN/None) or blank cells, the same under every pandas version."""
    text = col.astype(object).where(col.notna(), "").map(str).str.strip().str.lower()
    return text.isin(_MISSING_WORDS).to_numpy()


def _manifest_problems(df: pd.DataFrame) -> list[str]:
    """Every impossible value in the required columns, one phrase per column and fault."""
    problems = []
    for col in _TEXT_COLUMNS:
        missing = _text_missing(df[col])
        if col == "speaker":  # "corpus:" namespaces an empty speaker id
            missing = missing | df[col].astype(object).map(str).str.endswith(":").to_numpy()
        if missing.any():
            problems.append(f"column {col!r} is empty or missing in {_describe_rows(missing)}")
    gender = df["gender"].astype(object).where(df["gender"].notna(), "").map(str)
    bad = ~gender.isin(_GENDERS).to_numpy()
    if bad.any():
        problems.append(f"column 'gender' is not 'f', 'm' or empty in "
                        f"{_describe_rows(bad, df['gender'])}")
    for col in ("duration_s", "sample_rate"):
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype="float64")
        with np.errstate(invalid="ignore"):
            bad = ~(np.isfinite(values) & (values > 0))
            if col == "sample_rate":
                bad = bad | (np.isfinite(values) & (values != np.round(values)))
        if bad.any():
            kind = "a finite number > 0" if col == "duration_s" else "a positive integer"
            problems.append(f"column {col!r} is not {kind} in {_describe_rows(bad, df[col])}")
    dup = df["path"].astype(object).map(str).duplicated(keep=False).to_numpy()
    dup = dup & ~_text_missing(df["path"])
    if dup.any():
        problems.append(f"column 'path' lists the same file more than once in "
                        f"{_describe_rows(dup, df['path'])}")
    return problems


def validate_manifest(df: pd.DataFrame, source: str = "manifest") -> pd.DataFrame:
    """Check columns and values; return the frame with the standard columns first.

    Every required column is checked: text columns (path, corpus, language, speaker, label,
    emotion) may not be empty, NaN or ``None``; gender is ``f``, ``m`` or empty;
    ``duration_s`` is finite and positive; ``sample_rate`` a positive integer; no path is
    listed twice. Raises one :class:`CorpusError` naming ``source`` and, for each fault, the
    column, the number of rows and the first few (1-based) row numbers with their values.
    """
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise CorpusError(f"{source}: missing manifest columns {missing}")
    problems = _manifest_problems(df)
    if problems:
        raise CorpusError(f"{source}: " + "; ".join(problems))
    df = df.copy()
    df["gender"] = df["gender"].fillna("")
    for col, dtype in _DTYPES.items():
        # Values are checked above: the casts cannot fail or invent "nan" strings.
        if dtype is not str:
            df[col] = pd.to_numeric(df[col]).astype(dtype)
        else:
            df[col] = df[col].astype(dtype)
    extra = [c for c in df.columns if c not in MANIFEST_COLUMNS]
    return df[list(MANIFEST_COLUMNS) + extra].reset_index(drop=True)


def write_manifest(df: pd.DataFrame, path: str | os.PathLike[str]) -> list[Path]:
    """Write a manifest atomically; return the files written.

    ``x.csv`` or ``x.parquet`` writes that format; any other suffix (or none) writes both
    ``x.csv`` and ``x.parquet``, or only ``x.csv`` where pyarrow (the ``parquet`` extra) is
    not installed. ``x.parquet`` without pyarrow raises :class:`CorpusError` saying so.
    """
    df = validate_manifest(df)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".parquet"):
        targets = [path]
    else:
        targets = [path.with_suffix(".csv")]
        if parquet_available():
            targets.append(path.with_suffix(".parquet"))
    for target in targets:
        if target.suffix.lower() == ".csv":
            with atomic_path(target) as tmp:
                df.to_csv(tmp, index=False)
        else:
            with parquet_engine(f"manifest {target}", CorpusError), atomic_path(target) as tmp:
                df.to_parquet(tmp, index=False)
    return targets


def read_manifest(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a manifest written by :func:`write_manifest` (CSV, TSV or Parquet)."""
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"manifest {path} does not exist")
    suffix = path.suffix.lower()
    try:
        check_regular_file(path)
        if suffix == ".parquet":
            with parquet_engine(f"manifest {path}", CorpusError, "a .csv or .tsv manifest"):
                df = pd.read_parquet(path)
        elif suffix in (".csv", ".tsv"):
            df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",",
                             dtype={"speaker": str, "gender": str, "label": str},
                             keep_default_na=False)
        else:
            raise CorpusError(f"manifest {path}: unknown format {suffix!r} (use .csv or .parquet)")
    except CorpusError:
        raise
    except OSError as exc:
        raise CorpusError(f"manifest {path} could not be read: {exc.strerror or exc}") from None
    except Exception as exc:  # pandas/pyarrow raise many types for broken files
        raise CorpusError(f"manifest {path} could not be read: {exc}") from exc
    return validate_manifest(df, source=str(path))


def speaker_emotion_confound(df: pd.DataFrame) -> list[str]:
    """Reasons to doubt a manifest's speaker field (empty list when there are none).

    One speaker in the whole corpus usually means a reader took a folder name for the speaker
    (the ``folder`` reader pointed one level too high). When most speakers carry a single
    emotion, speaker and emotion are confounded: per-speaker normalisation then removes the
    emotion along with the speaker, and a speaker-independent split has classes missing.
    """
    if df.empty:
        return []
    speakers = df["speaker"].nunique()
    if speakers == 1:
        plural = "s" if len(df) != 1 else ""
        return [f"only one speaker ({df['speaker'].iloc[0]}) in {len(df)} utterance{plural}: "
                "is the speaker field right (a folder reader pointed one level too high takes the "
                "corpus folder for the speaker)? Speaker-independent splits are impossible"]
    if df["emotion"].nunique() < 2:
        return []
    per_speaker = df.groupby("speaker")["emotion"].nunique()
    single = per_speaker.index[per_speaker == 1]
    if len(single) * 2 <= speakers:
        return []
    examples = ", ".join(str(s) for s in single[:3])
    return [f"{len(single)} of {speakers} speakers carry a single emotion (e.g. {examples}): "
            "speaker and emotion are confounded, so per-speaker normalisation would erase the "
            "emotion; check the speaker field (does it name an emotion folder or a session?)"]


def manifest_stats(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Counts per emotion, speaker, language and corpus (for ``emobridge corpora stats``)."""
    out = {}
    for col in ("corpus", "language", "emotion", "speaker"):
        counts = df.groupby(col).agg(utterances=("path", "size"), hours=("duration_s", "sum"))
        counts["hours"] = counts["hours"] / 3600.0
        out[col] = counts.sort_index()
    return out
