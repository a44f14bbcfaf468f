"""ESD (Emotional Speech Dataset, Zhou et al. 2021), Mandarin Chinese and English.

20 speakers: ``0001``-``0010`` Mandarin, ``0011``-``0020`` English; 350 parallel sentences in
5 emotions each. Layout ``<spk>/<Emotion>/[train|evaluation|test/]<spk>_<num>.wav`` with
emotion folders ``Angry``, ``Happy``, ``Neutral``, ``Sad``, ``Surprise`` (the split folders
exist in the original release, not in some redistributions; both work), plus a transcript
``<spk>/<spk>.txt``. Utterance numbers follow the emotion: 1-350 neutral, 351-700 angry,
701-1050 happy, 1051-1400 sad, 1401-1750 surprise; a file whose number disagrees with its
emotion folder is reported as a problem. Speaker genders are from the release README.

Language per utterance: ``zh`` for speakers 0001-0010, ``en`` for 0011-0020.
Extra manifest column: ``split`` (``train``/``evaluation``/``test``, or empty).
"""

from __future__ import annotations

import re
from pathlib import Path

from emobridge.corpora.base import CorpusReader, Utterance, register
from emobridge.corpora.readers._common import match_name
from emobridge.errors import CorpusError, LabelError

#: Emotion folder name -> canonical emotion, in utterance-number order (350 each).
EMOTION_FOLDERS = {
    "neutral": "neutral",
    "angry": "anger",
    "happy": "happiness",
    "sad": "sadness",
    "surprise": "surprise",
}
UTTERANCES_PER_EMOTION = 350
SPEAKER_GENDER = {
    "0001": "f", "0002": "f", "0003": "f", "0004": "m", "0005": "m",
    "0006": "m", "0007": "f", "0008": "m", "0009": "f", "0010": "m",
    "0011": "m", "0012": "m", "0013": "m", "0014": "m", "0015": "f",
    "0016": "f", "0017": "f", "0018": "f", "0019": "f", "0020": "m",
}
SPLITS = ("train", "evaluation", "test")
_NAME = re.compile(r"^(?P<spk>\d{4})_(?P<num>\d{6})$")


@register
class Esd(CorpusReader):
    name = "esd"
    language = "zh"
    description = "ESD, Mandarin (0001-0010) + English (0011-0020) acted, 20 speakers, 5 emotions"

    def parse(self, path: Path) -> Utterance:
        m = match_name(_NAME, path, "ESD", "0001_000351")
        spk = m["spk"]
        if spk not in SPEAKER_GENDER:
            raise CorpusError(f"{path.name}: ESD speaker {spk} outside 0001-0020")
        split = path.parent.name.lower() if path.parent.name.lower() in SPLITS else ""
        emotion_dir = path.parent.parent if split else path.parent
        folder = emotion_dir.name
        if folder.lower() not in EMOTION_FOLDERS:
            raise CorpusError(
                f"{path.name}: not in an ESD emotion folder ({', '.join(EMOTION_FOLDERS)}; "
                f"found {folder!r})"
            )
        speaker_dir = emotion_dir.parent.name
        if re.fullmatch(r"\d{4}", speaker_dir) and speaker_dir != spk:
            raise CorpusError(f"{path.name}: speaker {spk} in the name but the file is in "
                              f"{speaker_dir}/")
        emotion = EMOTION_FOLDERS[folder.lower()]
        num = int(m["num"])
        order = list(EMOTION_FOLDERS)
        index = (num - 1) // UTTERANCES_PER_EMOTION
        if not 0 <= index < len(order):
            raise CorpusError(f"{path.name}: ESD utterance number {num} outside 1-1750")
        if order[index] != folder.lower():
            raise LabelError(f"{path.name}: utterance number {num} belongs to "
                             f"{order[index].capitalize()} but the file is in {folder}/")
        return Utterance(speaker=spk, label=folder, emotion=emotion,
                         gender=SPEAKER_GENDER[spk], extra={"split": split})

    def language_of(self, path: Path, utt: Utterance) -> str:
        return "zh" if int(utt.speaker) <= 10 else "en"
