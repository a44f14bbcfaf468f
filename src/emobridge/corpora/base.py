"""The corpus-reader contract and the scan that turns a folder into a manifest.

A reader knows one corpus's published layout: which files are utterances and how a file's
path encodes speaker, label and gender. :meth:`CorpusReader.scan` walks the folder, asks the
reader to parse every audio file, reads each header for duration and sample rate, and
returns a manifest plus a list of :class:`ScanProblem` for every file that could not be
used: nothing is dropped silently. Files whose extension is not audio (``.txt``, ``.DS_Store``)
are not utterances; they are counted in :attr:`ScanResult.n_ignored`. Audio files that a
reader's options exclude on purpose (RAVDESS songs with ``include_song=False``) raise
:class:`SkipFile` from :meth:`CorpusReader.parse`; they are counted per reason in
:attr:`ScanResult.skipped`.
"""

from __future__ import annotations

import inspect
import os
import warnings
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pandas as pd
from tqdm import tqdm

from emobridge.audio import audio_info
from emobridge.corpora.manifest import make_manifest, speaker_emotion_confound
from emobridge.errors import (
    AudioError,
    ConfigError,
    CorpusError,
    EmobridgeWarning,
    LabelError,
)
from emobridge.registry import Registry

#: Extensions treated as audio. libsndfile decides the real format from the header.
AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    {".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".aifc", ".au", ".snd", ".mp3",
     ".opus", ".caf", ".w64", ".rf64", ".sph", ".nist"}
)


@dataclass(frozen=True)
class Utterance:
    """What a reader learns about one file from its path (and side files)."""

    speaker: str
    label: str
    emotion: str
    gender: str = ""
    extra: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class ScanProblem:
    """A file that is not in the manifest, and why."""

    path: str
    reason: str


class SkipFile(Exception):
    """Raised by :meth:`CorpusReader.parse` for an audio file the reader's options exclude.

    The message is the reason; :meth:`CorpusReader.scan` counts skipped files per reason.
    """


@dataclass
class ScanResult:
    """A scan's manifest, problems, count of ignored non-audio files and skips by option."""

    manifest: pd.DataFrame
    problems: list[ScanProblem]
    n_ignored: int = 0
    #: Reason -> number of audio files excluded on purpose by a reader option.
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def problems_frame(self) -> pd.DataFrame:
        return pd.DataFrame([p.__dict__ for p in self.problems], columns=["path", "reason"])


class CorpusReader(ABC):
    """Base class: subclasses set ``name``, ``language`` and implement :meth:`parse`.

    Parameters
    ----------
    root:
        The corpus folder as published (or as the user keeps it).
    """

    #: Registry name (``emobridge corpora scan NAME``).
    name: ClassVar[str]
    #: ISO 639 code of the corpus language.
    language: ClassVar[str]
    #: One line for ``emobridge corpora list``.
    description: ClassVar[str] = ""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()

    def candidates(self) -> Iterator[Path]:
        """All files under the root (sorted), audio or not. Override to narrow the walk."""
        if not self.root.is_dir():
            raise CorpusError(f"{self.name}: corpus folder {self.root} does not exist")
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            for f in sorted(filenames):
                yield Path(dirpath) / f

    @abstractmethod
    def parse(self, path: Path) -> Utterance:
        """Speaker, label, canonical emotion and gender of one audio file.

        Raise :class:`LabelError` or :class:`CorpusError` with the reason when the file name
        does not follow the corpus's convention.
        """

    def language_of(self, path: Path, utt: Utterance) -> str:
        """Language of an utterance; multilingual corpora override this."""
        return self.language

    def speaker_id(self, raw: str) -> str:
        """Namespace a corpus-local speaker id so corpora never share a speaker by accident."""
        return f"{self.name}:{raw}"

    def scan(self, strict: bool = False, progress: bool = False) -> ScanResult:
        """Walk the corpus and build its manifest.

        ``strict=True`` raises on the first problem instead of collecting it. A manifest
        whose speaker field looks wrong (one speaker, or most speakers with a single emotion:
        :func:`~emobridge.corpora.manifest.speaker_emotion_confound`) gives an
        :class:`~emobridge.errors.EmobridgeWarning`.
        """
        rows: list[dict] = []
        problems: list[ScanProblem] = []
        n_ignored = 0
        skipped: Counter[str] = Counter()
        files: Iterable[Path] = self.candidates()
        if progress:
            files = tqdm(list(files), desc=f"scan {self.name}", unit="file")
        for path in files:
            if path.suffix.lower() not in AUDIO_EXTENSIONS or path.name.startswith("._"):
                n_ignored += 1
                continue
            try:
                utt = self.parse(path)
                duration_s, rate = audio_info(path)
            except SkipFile as exc:
                skipped[str(exc)] += 1
                continue
            except (LabelError, CorpusError, AudioError) as exc:
                if strict:
                    raise
                problems.append(ScanProblem(str(path), str(exc)))
                continue
            rows.append({
                "path": str(path),
                "corpus": self.name,
                "language": self.language_of(path, utt),
                "speaker": self.speaker_id(utt.speaker),
                "gender": utt.gender,
                "label": utt.label,
                "emotion": utt.emotion,
                "duration_s": duration_s,
                "sample_rate": rate,
                **utt.extra,
            })
        manifest = make_manifest(rows)
        for reason in speaker_emotion_confound(manifest):
            warnings.warn(f"{self.name} ({self.root}): {reason}", EmobridgeWarning, stacklevel=2)
        return ScanResult(manifest, problems, n_ignored, dict(skipped))


_READERS: Registry[type[CorpusReader]] = Registry("corpus reader", "emobridge.corpora.readers")

#: Class decorator adding a reader to the registry under ``cls.name``.
register = _READERS.register


def available_readers() -> dict[str, type[CorpusReader]]:
    """Registered readers by name (importing the built-in readers first)."""
    return _READERS.available()


def get_reader(name: str) -> type[CorpusReader]:
    """The reader class for ``name``; raises :class:`UnknownNameError` listing known names."""
    return _READERS.get(name)


def reader_options(cls: type[CorpusReader]) -> dict[str, object]:
    """A reader's keyword options (``__init__`` parameters after ``root``) and their defaults.

    Required options map to :data:`inspect.Parameter.empty`.
    """
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]  # self, root
    return {p.name: p.default for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def create_reader(name: str, root: str | os.PathLike[str],
                  options: Mapping[str, object] | None = None) -> CorpusReader:
    """Instantiate reader ``name`` on ``root`` with keyword ``options``.

    Raises :class:`ConfigError` naming an unknown option and listing the accepted ones.
    """
    cls = get_reader(name)
    options = dict(options or {})
    accepted = reader_options(cls)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        known = ", ".join(accepted) or "none"
        raise ConfigError(f"{name}: unknown reader option(s) {unknown}; accepted: {known}")
    return cls(root, **options)


def label_from_code(code: str, codes: dict[str, str], corpus: str, path: Path) -> str:
    """Look up a label code; raise :class:`LabelError` naming file and code when unknown."""
    try:
        return codes[code]
    except KeyError:
        raise LabelError(
            f"{path.name}: unknown {corpus} emotion code {code!r} (known: {', '.join(codes)})"
        ) from None
