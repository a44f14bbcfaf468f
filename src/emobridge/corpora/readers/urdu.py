"""URDU (Latif et al. 2018, "Cross Lingual Speech Emotion Recognition: Urdu vs. Western
Languages"), Urdu, spontaneous speech from Urdu TV talk shows.

400 utterances, 38 speakers (27 male, 11 female), 4 emotions. Layout ``Angry/``, ``Happy/``,
``Neutral/``, ``Sad/`` with file names ``SM1_F1_A01.wav``: ``S`` + speaker gender (``M``/``F``)
+ speaker number, ``F`` + file (recording) number, emotion letter (``A`` angry, ``H`` happy,
``N`` neutral, ``S`` sad) + utterance number. When a file lies in an emotion folder, folder and
letter must agree.

Extra manifest column: ``recording`` (the ``F`` number).
"""

from __future__ import annotations

import re
from pathlib import Path

from emobridge.corpora.base import CorpusReader, Utterance, label_from_code, register
from emobridge.corpora.readers._common import gender_from_letter, match_name
from emobridge.errors import CorpusError

EMOTION_CODES = {"A": "anger", "H": "happiness", "N": "neutral", "S": "sadness"}
FOLDERS = {"angry": "A", "happy": "H", "neutral": "N", "sad": "S"}
_NAME = re.compile(
    r"^(?P<spk>S(?P<gender>[MF])\d+)_F(?P<rec>\d+)_(?P<emo>[A-Z])(?P<num>\d+)$"
)


@register
class Urdu(CorpusReader):
    name = "urdu"
    language = "ur"
    description = "URDU, Urdu spontaneous (TV talk shows), 38 speakers, 4 emotions"

    def parse(self, path: Path) -> Utterance:
        m = match_name(_NAME, path, "URDU", "SM1_F1_A01")
        code = m["emo"]
        emotion = label_from_code(code, EMOTION_CODES, "URDU", path)
        folder_code = FOLDERS.get(path.parent.name.lower())
        if folder_code is not None and folder_code != code:
            raise CorpusError(f"{path.name}: emotion letter {code} disagrees with the folder "
                              f"{path.parent.name}/")
        return Utterance(speaker=m["spk"], label=code, emotion=emotion,
                         gender=gender_from_letter(m["gender"], path, "URDU"),
                         extra={"recording": m["rec"]})
