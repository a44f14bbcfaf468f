"""Helpers shared by the built-in readers (file-name matching, gender codes, words)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from emobridge.corpora.taxonomy import canonical_emotion
from emobridge.errors import ConfigError, CorpusError, LabelError


def match_name(pattern: re.Pattern[str], path: Path, corpus: str, example: str) -> re.Match[str]:
    """Match ``pattern`` against the file stem or raise :class:`CorpusError` naming the file."""
    m = pattern.match(path.stem)
    if m is None:
        raise CorpusError(f"{path.name}: not a {corpus} file name (expected e.g. {example})")
    return m


def gender_from_letter(letter: str, path: Path, corpus: str) -> str:
    """``'f'``/``'m'`` from a corpus's F/M (or W for woman) code; anything else raises."""
    code = letter.strip().lower()
    if code in ("f", "w"):
        return "f"
    if code == "m":
        return "m"
    raise CorpusError(f"{path.name}: unknown {corpus} gender code {letter!r} (expected F or M)")


def gender_from_word(value: str, source: str) -> str:
    """Normalise ``f``/``female``/``woman``/``m``/``male``/``man``/empty to ``f``/``m``/``''``."""
    key = str(value).strip().lower()
    if key in ("", "nan", "none", "unknown", "u", "x"):
        return ""
    if key in ("f", "female", "woman", "w"):
        return "f"
    if key in ("m", "male", "man"):
        return "m"
    raise CorpusError(f"{source}: unknown gender {value!r} (expected f/female, m/male or empty)")


def odd_is_male(number: int) -> str:
    """Gender for corpora whose odd-numbered actors are men (RAVDESS, CaFE)."""
    return "m" if number % 2 == 1 else "f"


def emotion_from_word(word: str, path: Path, corpus: str) -> str:
    """Canonical emotion of a label word; :class:`LabelError` names the file and the word."""
    try:
        return canonical_emotion(word)
    except LabelError as exc:
        raise LabelError(
            f"{path.name}: {corpus} label {word!r} is not an emotion ({exc})"
        ) from None


def walk_files(folder: Path, corpus: str) -> Iterator[Path]:
    """Every file under ``folder``, sorted, like :meth:`CorpusReader.candidates`."""
    if not folder.is_dir():
        raise CorpusError(f"{corpus}: corpus folder {folder} does not exist")
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for f in sorted(filenames):
            yield Path(dirpath) / f


def as_bool(value: object, option: str, reader: str) -> bool:
    """A boolean reader option; accepts bools and true/false/yes/no/1/0 (CLI strings)."""
    if isinstance(value, bool):
        return value
    key = str(value).strip().lower()
    if key in ("true", "yes", "1", "on"):
        return True
    if key in ("false", "no", "0", "off"):
        return False
    raise ConfigError(f"{reader}: option {option} must be true or false, got {value!r}")
