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

import pandas as pd

from emobridge.errors import CorpusError
from emobridge.fileio import atomic_path

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


def make_manifest(rows: Iterable[dict]) -> pd.DataFrame:
    """Build a validated manifest from row dicts (extra keys become extra columns)."""
    df = pd.DataFrame(list(rows))
    if df.empty:
        df = pd.DataFrame({c: pd.Series(dtype=_DTYPES[c]) for c in MANIFEST_COLUMNS})
    return validate_manifest(df)


def validate_manifest(df: pd.DataFrame, source: str = "manifest") -> pd.DataFrame:
    """Check columns and types; return the frame with the standard columns first.

    Raises :class:`CorpusError` naming ``source`` and the missing column or bad row.
    """
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise CorpusError(f"{source}: missing manifest columns {missing}")
    df = df.copy()
    df["gender"] = df["gender"].fillna("")
    for col, dtype in _DTYPES.items():
        try:
            df[col] = df[col].astype(dtype)
        except (TypeError, ValueError) as exc:
            raise CorpusError(f"{source}: column {col!r} is not {dtype}: {exc}") from None
    for col in ("path", "speaker", "emotion", "corpus", "language"):
        empty = df[col].str.len() == 0
        if empty.any():
            row = int(empty.idxmax())
            raise CorpusError(f"{source}: empty {col!r} in row {row} ({df.loc[row, 'path']})")
    dup = df["path"].duplicated()
    if dup.any():
        raise CorpusError(f"{source}: path listed twice: {df.loc[dup, 'path'].iloc[0]}")
    extra = [c for c in df.columns if c not in MANIFEST_COLUMNS]
    return df[list(MANIFEST_COLUMNS) + extra].reset_index(drop=True)


def write_manifest(df: pd.DataFrame, path: str | os.PathLike[str]) -> list[Path]:
    """Write a manifest atomically; return the files written.

    ``x.csv`` or ``x.parquet`` writes that format; any other suffix (or none) writes both
    ``x.csv`` and ``x.parquet``.
    """
    df = validate_manifest(df)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".parquet"):
        targets = [path]
    else:
        targets = [path.with_suffix(".csv"), path.with_suffix(".parquet")]
    for target in targets:
        with atomic_path(target) as tmp:
            if target.suffix.lower() == ".csv":
                df.to_csv(tmp, index=False)
            else:
                df.to_parquet(tmp, index=False)
    return targets


def read_manifest(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a manifest written by :func:`write_manifest` (CSV, TSV or Parquet)."""
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"manifest {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pd.read_parquet(path)
        elif suffix in (".csv", ".tsv"):
            df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",",
                             dtype={"speaker": str, "gender": str, "label": str},
                             keep_default_na=False)
        else:
            raise CorpusError(f"manifest {path}: unknown format {suffix!r} (use .csv or .parquet)")
    except CorpusError:
        raise
    except Exception as exc:  # pandas/pyarrow raise many types for broken files
        raise CorpusError(f"manifest {path} could not be read: {exc}") from exc
    return validate_manifest(df, source=str(path))


def manifest_stats(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Counts per emotion, speaker, language and corpus (for ``emobridge corpora stats``)."""
    out = {}
    for col in ("corpus", "language", "emotion", "speaker"):
        counts = df.groupby(col).agg(utterances=("path", "size"), hours=("duration_s", "sum"))
        counts["hours"] = counts["hours"] / 3600.0
        out[col] = counts.sort_index()
    return out
