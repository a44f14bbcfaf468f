"""ASED v1, the Amharic Speech Emotion Dataset (Retta et al., ACM TALLIP 2022), Amharic, acted
by 65 speakers (25 female, 40 male), 5 emotions, 2,474 recordings.

Layout one folder per emotion, ``01Neutral 02Fearful 03Happy 04Sad 05Angry``, with file names
``xN-SS-RR-GG-PP.wav`` (``a5-03-01-02-50.wav``): emotion letter and folder number (``n1``
neutral, ``f2`` fear, ``h3`` happiness, ``s4`` sadness, ``a5`` anger; the letter's case varies
in the release, e.g. ``S4-04-02-01-29``), sentence, repetition, gender (``01`` female, ``02``
male) and speaker (``01``-``65``). Letter and number must agree, and so must the emotion folder
when the file lies in one.

Gender belongs to the speaker (the protocols stratify speakers by it and refuse a speaker with
two values), but a few files' gender field contradicts the rest of their speaker's files. Each
speaker therefore gets the gender most of its files carry (counted from the file names, nothing
decoded; a tie leaves it empty), and each file's own field is kept in ``gender_code``.

Extra manifest columns: ``sentence``, ``repetition``, ``gender_code``.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

from emobridge.corpora.base import CorpusReader, Utterance, label_from_code, register
from emobridge.corpora.readers._common import match_name
from emobridge.errors import CorpusError

EMOTION_CODES = {"n": "neutral", "f": "fear", "h": "happiness", "s": "sadness", "a": "anger"}
#: Emotion letter -> the folder number that goes with it (and the folder's name).
FOLDER_NUMBERS = {"n": "1", "f": "2", "h": "3", "s": "4", "a": "5"}
FOLDERS = {"01neutral": "n", "02fearful": "f", "03happy": "h", "04sad": "s", "05angry": "a"}
GENDER_CODES = {"01": "f", "02": "m"}
_NAME = re.compile(
    r"^(?P<emo>[a-z])(?P<num>\d)-(?P<sentence>\d{2})-(?P<rep>\d{2})-(?P<gender>\d{2})"
    r"-(?P<spk>\d{2})$",
    re.IGNORECASE,
)


@register
class Ased(CorpusReader):
    name = "ased"
    language = "am"
    description = "ASED v1, Amharic acted, 65 speakers, 5 emotions"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        super().__init__(root)
        self._speaker_gender: dict[str, str] | None = None

    def speaker_genders(self) -> dict[str, str]:
        """Speaker -> the gender most of its files' names carry (``""`` on a tie)."""
        if self._speaker_gender is None:
            votes: dict[str, Counter[str]] = {}
            for path in self.candidates():
                m = _NAME.match(path.stem)
                if m is not None and m["gender"] in GENDER_CODES:
                    votes.setdefault(m["spk"], Counter())[GENDER_CODES[m["gender"]]] += 1
            self._speaker_gender = {}
            for spk, counts in votes.items():
                (top, n), *rest = counts.most_common()
                self._speaker_gender[spk] = "" if rest and rest[0][1] == n else top
        return self._speaker_gender

    def parse(self, path: Path) -> Utterance:
        m = match_name(_NAME, path, "ASED", "a5-03-01-02-50")
        code = m["emo"].lower()
        emotion = label_from_code(code, EMOTION_CODES, "ASED", path)
        if FOLDER_NUMBERS[code] != m["num"]:
            raise CorpusError(f"{path.name}: emotion letter {m['emo']} goes with folder number "
                              f"{FOLDER_NUMBERS[code]}, not {m['num']}")
        folder_code = FOLDERS.get(path.parent.name.lower())
        if folder_code is not None and folder_code != code:
            raise CorpusError(f"{path.name}: emotion letter {m['emo']} disagrees with the folder "
                              f"{path.parent.name}/")
        if m["gender"] not in GENDER_CODES:
            raise CorpusError(f"{path.name}: unknown ASED gender code {m['gender']!r} "
                              "(expected 01 female or 02 male)")
        gender = self.speaker_genders().get(m["spk"], GENDER_CODES[m["gender"]])
        return Utterance(speaker=m["spk"], label=code, emotion=emotion, gender=gender,
                         extra={"sentence": m["sentence"], "repetition": m["rep"],
                                "gender_code": m["gender"]})
