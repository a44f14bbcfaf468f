"""Generic reader for a corpus described by a listing file (CSV or TSV).

The root argument is the listing itself. Columns: ``path`` (relative paths resolve against
the listing's folder), ``label`` (an emotion word, through
:func:`emobridge.corpora.taxonomy.canonical_emotion` and ``label_map``), ``speaker``,
``language`` (ISO 639 code per row, so one listing may mix languages) and optionally ``gender``
(f/female/m/male or empty). Further columns are kept as extra manifest columns. Files listed but
missing, unknown labels and rows without speaker or language are reported as problems; a
listing without the required columns, with an empty path or with a path listed twice raises
:class:`CorpusError` naming the listing and row.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import pandas as pd

from emobridge.corpora.base import CorpusReader, Utterance, register
from emobridge.corpora.manifest import MANIFEST_COLUMNS
from emobridge.corpora.readers._common import emotion_from_word, gender_from_word
from emobridge.corpora.readers.folder import check_language, corpus_name
from emobridge.errors import ConfigError, CorpusError

REQUIRED_COLUMNS = ("path", "label", "speaker", "language")
_RESERVED = set(MANIFEST_COLUMNS) | set(REQUIRED_COLUMNS) | {"gender"}


@register
class TableReader(CorpusReader):
    """Generic listing-file reader.

    Parameters
    ----------
    root:
        The listing file (``.csv``; ``.tsv``/``.tab`` are read tab-separated).
    corpus:
        Name for the manifest's ``corpus`` column and the speaker namespace. Default: the
        listing's file name without suffix (lower-cased).
    sep:
        Column separator; default from the suffix (tab for ``.tsv``/``.tab``, else comma).
    label_map:
        Label -> emotion for labels that are not emotion words (``{"wut": "anger"}``).
    """

    name = "table"
    language = ""
    description = "Generic: CSV/TSV listing with path, label, speaker, language[, gender]"

    def __init__(
        self,
        root: str | os.PathLike[str],
        corpus: str | None = None,
        sep: str | None = None,
        label_map: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(root)
        self.sep = sep
        if label_map is not None and not isinstance(label_map, Mapping):
            raise ConfigError(f"table: label_map must be a mapping, got {label_map!r}")
        self.label_map = {str(k).lower(): str(v) for k, v in (label_map or {}).items()}
        # Instance name = corpus name (manifest corpus column and speaker namespace).
        self.name = corpus_name(corpus, self.root.stem, "table")
        self._rows: dict[Path, tuple[int, dict[str, str]]] | None = None

    def rows(self) -> dict[Path, tuple[int, dict[str, str]]]:
        """Absolute audio path -> (row number in the listing, row values), in listing order."""
        if self._rows is not None:
            return self._rows
        listing = self.root
        if not listing.is_file():
            raise CorpusError(f"table: listing file {listing} does not exist")
        sep = self.sep
        if sep is None:
            sep = "\t" if listing.suffix.lower() in (".tsv", ".tab") else ","
        try:
            df = pd.read_csv(listing, sep=sep, dtype=str, keep_default_na=False)
        except Exception as exc:  # pandas raises many types for broken files
            raise CorpusError(f"{listing}: cannot read the listing ({exc})") from exc
        df.columns = [str(c).strip() for c in df.columns]
        missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
        if missing:
            raise CorpusError(f"{listing}: missing columns {missing} (has {list(df.columns)}; "
                              f"needs {list(REQUIRED_COLUMNS)}, optional gender)")
        rows: dict[Path, tuple[int, dict[str, str]]] = {}
        for i, record in enumerate(df.to_dict("records")):
            row_no = i + 2  # 1-based, after the header line
            raw = str(record["path"]).strip()
            if not raw:
                raise CorpusError(f"{listing} row {row_no}: empty path")
            path = Path(os.path.normpath(listing.parent / Path(raw).expanduser()))
            if path in rows:
                raise CorpusError(f"{listing} row {row_no}: {raw} already listed in row "
                                  f"{rows[path][0]}")
            rows[path] = (row_no, {k: str(v).strip() for k, v in record.items()})
        self._rows = rows
        return rows

    def candidates(self) -> Iterator[Path]:
        yield from self.rows()

    def _row(self, path: Path) -> tuple[int, dict[str, str]]:
        rows = self.rows()
        key = Path(os.path.normpath(path))
        if key not in rows:
            raise CorpusError(f"{path}: not listed in {self.root.name}")
        return rows[key]

    def parse(self, path: Path) -> Utterance:
        row_no, row = self._row(path)
        where = f"{self.root.name} row {row_no}"
        if not path.is_file():
            raise CorpusError(f"{path.name}: listed in {where} but the file does not exist")
        label = row["label"]
        if not label:
            raise CorpusError(f"{path.name}: empty label in {where}")
        emotion = emotion_from_word(self.label_map.get(label.lower(), label), path, "table")
        speaker = row["speaker"]
        if not speaker:
            raise CorpusError(f"{path.name}: empty speaker in {where}")
        try:
            check_language(row["language"], "table")
        except ConfigError as exc:
            raise CorpusError(f"{path.name}: {where}: {exc}") from None
        gender = gender_from_word(row.get("gender", ""), f"{path.name} ({where})")
        extra: dict[str, object] = {k: v for k, v in row.items() if k not in _RESERVED}
        return Utterance(speaker=speaker, label=label, emotion=emotion, gender=gender,
                         extra=extra)

    def language_of(self, path: Path, utt: Utterance) -> str:
        return self._row(path)[1]["language"].strip().lower()
