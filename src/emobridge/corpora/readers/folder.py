"""Generic reader for corpora kept as one sub-folder per emotion label.

Layouts ``<root>/<label>/<file>`` and ``<root>/<speaker>/<label>/<file>``. The label is the
name of the folder holding the file, translated through ``label_map`` (if given) and then
:func:`emobridge.corpora.taxonomy.canonical_emotion` (so ``Angry``, ``happy``, ``sad`` work).
The speaker comes from ``speaker_pattern`` when given, else from the folder above the label
folder when there is one below the root, else from the file-name prefix before the first
``_``. Files directly in the root, unknown labels and names without a speaker are reported as
problems.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from emobridge.corpora.base import CorpusReader, Utterance, register
from emobridge.corpora.readers._common import emotion_from_word, gender_from_word
from emobridge.errors import ConfigError, CorpusError

_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]+)?$")
_CORPUS = re.compile(r"^[A-Za-z0-9_.-]+$")


def corpus_name(value: object | None, default_from: str, reader: str) -> str:
    """A corpus name for the manifest and the speaker namespace (validated)."""
    if value is None:
        name = re.sub(r"[^a-z0-9_.-]+", "_", default_from.lower()).strip("_") or reader
    else:
        name = str(value)
    if not _CORPUS.match(name):
        raise ConfigError(f"{reader}: corpus name {name!r} may only hold letters, digits, "
                          "'_', '.' and '-'")
    return name


def check_language(value: object, reader: str) -> str:
    """Validate an ISO 639 language code given as a reader option."""
    code = str(value).strip().lower() if value is not None else ""
    if not code:
        raise ConfigError(f"{reader}: the language option is required (e.g. -O language=de)")
    if not _LANGUAGE.match(code):
        raise ConfigError(f"{reader}: language {value!r} is not an ISO 639 code like 'de' or 'fa'")
    return code


@register
class FolderReader(CorpusReader):
    """Generic one-folder-per-emotion reader.

    Parameters
    ----------
    root:
        The corpus folder.
    language:
        ISO 639-1 code (639-3 where none exists) of every utterance. Required.
    speaker_pattern:
        Regular expression searched in the file name (with extension) with a named group
        ``speaker`` (and optionally ``gender``, whose value is read as f/female/m/male).
        Default: the speaker folder above the label folder, else the name's prefix before
        the first ``_``.
    corpus:
        Name written to the manifest's ``corpus`` column and used to namespace speakers.
        Default: the root folder's name (lower-cased), so two corpora scanned with this reader
        never share a speaker id.
    label_map:
        Folder name -> emotion for folder names that are not emotion words
        (``{"wut": "anger"}``); matched case-insensitively.
    """

    name = "folder"
    language = ""
    description = "Generic: one sub-folder per emotion label; -O language=xx required"

    def __init__(
        self,
        root: str | os.PathLike[str],
        language: str | None = None,
        speaker_pattern: str | None = None,
        corpus: str | None = None,
        label_map: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(root)
        self.language = check_language(language, "folder")
        self.speaker_pattern = speaker_pattern
        self._speaker_re: re.Pattern[str] | None = None
        if speaker_pattern is not None:
            try:
                self._speaker_re = re.compile(str(speaker_pattern))
            except re.error as exc:
                raise ConfigError(f"folder: speaker_pattern {speaker_pattern!r} is not a "
                                  f"regular expression ({exc})") from None
            if "speaker" not in self._speaker_re.groupindex:
                raise ConfigError(f"folder: speaker_pattern {speaker_pattern!r} needs a named "
                                  "group (?P<speaker>...)")
        if label_map is not None and not isinstance(label_map, Mapping):
            raise ConfigError(f"folder: label_map must be a mapping, got {label_map!r}")
        self.label_map = {str(k).lower(): str(v) for k, v in (label_map or {}).items()}
        # The instance's name is the corpus name: it fills the manifest's corpus column and
        # namespaces the speakers (CorpusReader.scan / speaker_id read self.name).
        self.name = corpus_name(corpus, self.root.name, "folder")

    def parse(self, path: Path) -> Utterance:
        label_dir = path.parent
        if label_dir == self.root:
            raise CorpusError(f"{path.name}: lies directly in the corpus folder; expected "
                              "<root>/<emotion>/<file>")
        label = label_dir.name
        word = self.label_map.get(label.lower(), label)
        emotion = emotion_from_word(word, path, "folder")
        gender = ""
        if self._speaker_re is not None:
            m = self._speaker_re.search(path.name)
            if m is None or not m["speaker"]:
                raise CorpusError(f"{path.name}: speaker_pattern {self.speaker_pattern!r} does "
                                  "not match")
            speaker = m["speaker"]
            if "gender" in self._speaker_re.groupindex and m["gender"]:
                gender = gender_from_word(m["gender"], path.name)
        elif label_dir.parent != self.root and self.root in label_dir.parents:
            speaker = label_dir.parent.name
        elif "_" in path.stem and path.stem.split("_", 1)[0]:
            speaker = path.stem.split("_", 1)[0]
        else:
            raise CorpusError(f"{path.name}: cannot tell the speaker (no speaker folder and no "
                              "'_' in the name); pass -O speaker_pattern=REGEX")
        return Utterance(speaker=speaker, label=label, emotion=emotion, gender=gender)

