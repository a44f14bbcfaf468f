"""CREMA-D (Crowd-sourced Emotional Multimodal Actors Dataset, Cao et al. 2014), US English.

91 actors (1001-1091), 12 sentences, 6 emotions. Audio in ``AudioWAV/`` (16 kHz) and the same
utterances again in ``AudioMP3/`` (44.1 kHz); file names ``AAAA_SSS_EEE_LL.wav``: actor id,
sentence code (``IEO``, ``TIE``, ``IOM``, ``IWW``, ``TAI``, ``MTI``, ``IWL``, ``ITH``, ``DFA``,
``ITS``, ``TSI``, ``WSI``), emotion (``ANG``, ``DIS``, ``FEA``, ``HAP``, ``NEU``, ``SAD``) and
level (``LO``, ``MD``, ``HI``, ``XX`` unspecified). The labels are the acted (intended)
emotions. Speaker sex is in ``VideoDemographics.csv`` (columns ``ActorID``, ``Sex``), looked
for in the root and its parent; without it the gender column stays empty. The release has one
file without signal (``1076_MTI_SAD_XX``), reported as a problem by the scan.

Extra manifest columns: ``sentence``, ``intensity`` (``low``/``medium``/``high``/
``unspecified``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from emobridge.corpora.base import CorpusReader, Utterance, label_from_code, register
from emobridge.corpora.readers._common import gender_from_word, match_name, walk_files
from emobridge.errors import CorpusError

EMOTION_CODES = {
    "ANG": "anger",
    "DIS": "disgust",
    "FEA": "fear",
    "HAP": "happiness",
    "NEU": "neutral",
    "SAD": "sadness",
}
SENTENCES = ("IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI")
LEVELS = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}
DEMOGRAPHICS_FILE = "VideoDemographics.csv"
_NAME = re.compile(
    r"^(?P<actor>\d{4})_(?P<sentence>[A-Z]{3})_(?P<emo>[A-Z]{3})_(?P<level>[A-Z]{2})$"
)


@register
class CremaD(CorpusReader):
    """CREMA-D audio.

    Parameters
    ----------
    root:
        The CREMA-D folder (with ``AudioWAV/``) or the audio folder itself.
    audio_dir:
        Sub-folder of ``root`` to scan; by default ``AudioWAV`` when it exists (so the MP3
        copies of the same utterances are not listed twice), else ``root`` itself.
    demographics:
        Path of ``VideoDemographics.csv``; by default looked for in ``root`` and its parent.
    """

    name = "cremad"
    language = "en"
    description = "CREMA-D, US English acted, 91 actors, 6 emotions"

    def __init__(self, root: str | os.PathLike[str], audio_dir: str | None = None,
                 demographics: str | os.PathLike[str] | None = None) -> None:
        super().__init__(root)
        self.audio_dir = audio_dir
        self.demographics = demographics
        self._genders: dict[str, str] | None = None

    def _audio_root(self) -> Path:
        if self.audio_dir is not None:
            folder = self.root / self.audio_dir
            if not folder.is_dir():
                raise CorpusError(f"cremad: audio_dir {folder} does not exist")
            return folder
        default = self.root / "AudioWAV"
        return default if default.is_dir() else self.root

    def candidates(self) -> Iterator[Path]:
        self.genders()  # a broken demographics file stops the scan, naming the file
        return walk_files(self._audio_root(), self.name)

    def _demographics_path(self) -> Path | None:
        if self.demographics is not None:
            path = Path(self.demographics).expanduser()
            if not path.is_file():
                raise CorpusError(f"cremad: demographics file {path} does not exist")
            return path
        for folder in (self.root, self.root.parent):
            if (folder / DEMOGRAPHICS_FILE).is_file():
                return folder / DEMOGRAPHICS_FILE
        return None

    def genders(self) -> dict[str, str]:
        """Actor id -> ``f``/``m`` from the demographics table (empty when there is none)."""
        if self._genders is None:
            path = self._demographics_path()
            genders: dict[str, str] = {}
            if path is not None:
                try:
                    table = pd.read_csv(path, dtype=str, keep_default_na=False)
                except Exception as exc:  # pandas raises many types for broken files
                    raise CorpusError(f"{path}: cannot read CREMA-D demographics ({exc})") from exc
                missing = {"ActorID", "Sex"} - set(table.columns)
                if missing:
                    raise CorpusError(f"{path}: missing columns {sorted(missing)}")
                pairs = zip(table["ActorID"], table["Sex"], strict=True)
                for row, (actor, sex) in enumerate(pairs):
                    genders[actor.strip()] = gender_from_word(sex, f"{path} row {row + 2}")
            self._genders = genders
        return self._genders

    def parse(self, path: Path) -> Utterance:
        m = match_name(_NAME, path, "CREMA-D", "1001_DFA_ANG_XX")
        if m["sentence"] not in SENTENCES:
            raise CorpusError(f"{path.name}: unknown CREMA-D sentence code {m['sentence']!r}")
        emotion = label_from_code(m["emo"], EMOTION_CODES, "CREMA-D", path)
        if m["level"] not in LEVELS:
            raise CorpusError(f"{path.name}: unknown CREMA-D level {m['level']!r} "
                              f"(known: {', '.join(LEVELS)})")
        actor = m["actor"]
        return Utterance(speaker=actor, label=m["emo"], emotion=emotion,
                         gender=self.genders().get(actor, ""),
                         extra={"sentence": m["sentence"], "intensity": LEVELS[m["level"]]})
