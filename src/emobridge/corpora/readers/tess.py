"""TESS (Toronto Emotional Speech Set, Dupuis & Pichora-Fuller 2010), Canadian English.

Two female speakers, ``OAF`` (older, 64 years) and ``YAF`` (younger, 26 years), say 200 target
words in the carrier phrase "Say the word ...". File names ``SPK_word_emotion.wav``
(``OAF_back_angry.wav``) with emotion ``angry``, ``disgust``, ``fear``, ``happy``, ``neutral``,
``ps`` (pleasant surprise) or ``sad``. The published archive is flat; the common redistribution
puts files in ``OAF_angry/``, ``YAF_pleasant_surprised/``... folders. Only the file name is
read, so both layouts work. Emotion words are matched case-insensitively.

Extra manifest column: ``word`` (the target word).
"""

from __future__ import annotations

import re
from pathlib import Path

from emobridge.corpora.base import CorpusReader, Utterance, label_from_code, register
from emobridge.corpora.readers._common import match_name
from emobridge.errors import CorpusError

EMOTION_CODES = {
    "angry": "anger",
    "disgust": "disgust",
    "fear": "fear",
    "happy": "happiness",
    "neutral": "neutral",
    "ps": "surprise",
    "sad": "sadness",
}
SPEAKERS = ("OAF", "YAF")
_NAME = re.compile(r"^(?P<spk>[A-Za-z]{3})_(?P<word>[A-Za-z]+)_(?P<emo>[A-Za-z]+)$")


@register
class Tess(CorpusReader):
    name = "tess"
    language = "en"
    description = "TESS, Canadian English acted, 2 female speakers, 7 emotions"

    def parse(self, path: Path) -> Utterance:
        m = match_name(_NAME, path, "TESS", "OAF_back_angry")
        spk = m["spk"].upper()
        if spk not in SPEAKERS:
            raise CorpusError(f"{path.name}: unknown TESS speaker {m['spk']!r} (OAF or YAF)")
        code = m["emo"].lower()
        emotion = label_from_code(code, EMOTION_CODES, "TESS", path)
        return Utterance(speaker=spk, label=code, emotion=emotion, gender="f",
                         extra={"word": m["word"].lower()})
