"""SUBESCO (SUST Bangla Emotional Speech Corpus, Sultana et al. 2021), Bangla.

7000 utterances, 20 speakers (10 female, 10 male, numbered 01-10 per gender), 10 sentences,
7 emotions, 5 repetitions. All files in one folder, named
``G_NN_NAME_S_K_EMOTION_R.wav`` (``F_01_OISHI_S_1_ANGRY_1.wav``): gender (``F``/``M``), speaker
number, speaker name, ``S`` + sentence number, emotion (``ANGRY``, ``DISGUST``, ``FEAR``,
``HAPPY``, ``NEUTRAL``, ``SAD``, ``SURPRISE``) and repetition. Speaker = gender + number
(``F_01``).

Extra manifest columns: ``sentence``, ``repetition``.
"""

from __future__ import annotations

import re
from pathlib import Path

from emobridge.corpora.base import CorpusReader, Utterance, label_from_code, register
from emobridge.corpora.readers._common import gender_from_letter, match_name

EMOTION_CODES = {
    "ANGRY": "anger",
    "DISGUST": "disgust",
    "FEAR": "fear",
    "HAPPY": "happiness",
    "NEUTRAL": "neutral",
    "SAD": "sadness",
    "SURPRISE": "surprise",
}
_NAME = re.compile(
    r"^(?P<gender>[MF])_(?P<num>\d+)_(?P<name>[A-Za-z]+)_S_(?P<sentence>\d+)"
    r"_(?P<emo>[A-Za-z]+)_(?P<rep>\d+)$"
)


@register
class Subesco(CorpusReader):
    name = "subesco"
    language = "bn"
    description = "SUBESCO, Bangla acted, 20 speakers, 7 emotions"

    def parse(self, path: Path) -> Utterance:
        m = match_name(_NAME, path, "SUBESCO", "F_01_OISHI_S_1_ANGRY_1")
        code = m["emo"].upper()
        emotion = label_from_code(code, EMOTION_CODES, "SUBESCO", path)
        return Utterance(speaker=f"{m['gender']}_{int(m['num']):02d}", label=code,
                         emotion=emotion, gender=gender_from_letter(m["gender"], path, "SUBESCO"),
                         extra={"sentence": m["sentence"], "repetition": m["rep"]})
