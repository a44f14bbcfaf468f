"""AESDD (Acted Emotional Speech Dynamic Database v1, Vryzas et al. 2018), Greek.

Professional actors (5 in v1: 3 female, 2 male; later versions add actors with the same
naming), 19 scripted utterances plus one improvised per emotion. Layout one folder per emotion
(``anger``, ``disgust``, ``fear``, ``happiness``, ``sadness``) with file names ``xAA (B).wav``:
``x`` the emotion's first letter (``a`` anger, ``d`` disgust, ``f`` fear, ``h`` happiness,
``s`` sadness), ``AA`` utterance number (01-20), ``B`` speaker number; a few utterances have
further takes, marked by a suffix after the parenthesis (kept in ``take``). The release does
not publish which speaker number is which gender, so gender is left empty. When a file lies
in an emotion folder, folder and letter must agree.

Extra manifest columns: ``utterance``, ``take``.
"""

from __future__ import annotations

import re
from pathlib import Path

from emobridge.corpora.base import CorpusReader, Utterance, label_from_code, register
from emobridge.corpora.readers._common import match_name
from emobridge.errors import CorpusError

EMOTION_CODES = {
    "a": "anger",
    "d": "disgust",
    "f": "fear",
    "h": "happiness",
    "s": "sadness",
}
_NAME = re.compile(r"^(?P<emo>[a-z])(?P<num>\d\d) ?\((?P<spk>\d+)\)(?P<take>[A-Za-z0-9_ -]*)$")


@register
class Aesdd(CorpusReader):
    name = "aesdd"
    language = "el"
    description = "AESDD, Greek acted, 5+ actors, 5 emotions"

    def parse(self, path: Path) -> Utterance:
        m = match_name(_NAME, path, "AESDD", "a01 (1)")
        code = m["emo"]
        emotion = label_from_code(code, EMOTION_CODES, "AESDD", path)
        folder = path.parent.name.lower()
        if folder in EMOTION_CODES.values() and folder != emotion:
            raise CorpusError(f"{path.name}: emotion letter {code} disagrees with the folder "
                              f"{path.parent.name}/")
        return Utterance(speaker=str(int(m["spk"])), label=code, emotion=emotion,
                         extra={"utterance": m["num"], "take": m["take"].strip()})
