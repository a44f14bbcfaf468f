"""SAVEE (Surrey Audio-Visual Expressed Emotion, Haq & Jackson 2009), British English.

Four male speakers ``DC``, ``JE``, ``JK``, ``KL``; 15 sentences per emotion (30 neutral).
The file name starts with the emotion code, then the sentence number: ``a`` anger, ``d``
disgust, ``f`` fear, ``h`` happiness, ``n`` neutral, ``sa`` sadness, ``su`` surprise.

Two layouts are read:

* the original release ``AudioData/DC/a01.wav`` (speaker = folder name), and
* the flat redistribution ``DC_a01.wav`` (speaker = file-name prefix). When a flat name sits
  in a speaker folder, the two must agree.

Extra manifest column: ``sentence`` (the two-digit number).
"""

from __future__ import annotations

import re
from pathlib import Path

from emobridge.corpora.base import CorpusReader, Utterance, label_from_code, register
from emobridge.errors import CorpusError

EMOTION_CODES = {
    "a": "anger",
    "d": "disgust",
    "f": "fear",
    "h": "happiness",
    "n": "neutral",
    "sa": "sadness",
    "su": "surprise",
}
SPEAKERS = ("DC", "JE", "JK", "KL")
_ORIGINAL = re.compile(r"^(?P<emo>[a-z]{1,2})(?P<num>\d\d)$")
_FLAT = re.compile(r"^(?P<spk>[A-Za-z]{2})_(?P<emo>[a-z]{1,2})(?P<num>\d\d)$")


@register
class Savee(CorpusReader):
    name = "savee"
    language = "en"
    description = "SAVEE, British English acted, 4 male speakers, 7 emotions"

    def parse(self, path: Path) -> Utterance:
        folder = path.parent.name.upper()
        flat = _FLAT.match(path.stem)
        original = _ORIGINAL.match(path.stem)
        if flat:
            spk = flat["spk"].upper()
            if folder in SPEAKERS and folder != spk:
                raise CorpusError(f"{path.name}: speaker {spk} in the name but the file is in "
                                  f"{path.parent.name}/")
            m = flat
        elif original:
            if folder not in SPEAKERS:
                raise CorpusError(
                    f"{path.name}: SAVEE file outside a speaker folder "
                    f"({'/'.join(SPEAKERS)}); use the flat name DC_a01.wav or AudioData/DC/"
                )
            spk = folder
            m = original
        else:
            raise CorpusError(
                f"{path.name}: not a SAVEE file name (expected e.g. a01 in a speaker folder, "
                "or DC_a01)"
            )
        if spk not in SPEAKERS:
            raise CorpusError(f"{path.name}: unknown SAVEE speaker {spk!r} "
                              f"(known: {', '.join(SPEAKERS)})")
        code = m["emo"]
        emotion = label_from_code(code, EMOTION_CODES, "SAVEE", path)
        return Utterance(speaker=spk, label=code, emotion=emotion, gender="m",
                         extra={"sentence": m["num"]})
