"""EMO-DB (Berlin Database of Emotional Speech, Burkhardt et al. 2005), German.

Ten actors (5 female, 5 male), ten sentences, seven emotions. Audio in ``wav/`` (the release's
``labels/``, ``lablaut/``, ``silb/`` folders hold no audio and are counted as ignored). File
names ``SSTTTEV.wav``: chars 0-1 speaker (03, 08-16), 2-4 text code (``a01``...``b10``),
5 emotion letter (German initial: ``W`` Wut/anger, ``L`` Langeweile/boredom, ``E`` Ekel/disgust,
``A`` Angst/fear, ``F`` Freude/happiness, ``T`` Trauer/sadness, ``N`` neutral), 6 version
letter. Speaker genders are published in the corpus documentation.

Extra manifest column: ``text`` (the sentence code).
"""

from __future__ import annotations

import re
from pathlib import Path

from emobridge.corpora.base import CorpusReader, Utterance, label_from_code, register
from emobridge.errors import CorpusError

EMOTION_CODES = {
    "W": "anger",  # Wut / Ärger
    "L": "boredom",  # Langeweile
    "E": "disgust",  # Ekel
    "A": "fear",  # Angst
    "F": "happiness",  # Freude
    "T": "sadness",  # Trauer
    "N": "neutral",
}
SPEAKER_GENDER = {"03": "m", "08": "f", "09": "f", "10": "m", "11": "m", "12": "m",
                  "13": "f", "14": "f", "15": "m", "16": "f"}
_NAME = re.compile(r"^(?P<spk>\d\d)(?P<text>[a-z]\d\d)(?P<emo>[A-Z])(?P<ver>[a-z])$")


@register
class EmoDB(CorpusReader):
    name = "emodb"
    language = "de"
    description = "Berlin EMO-DB, German acted, 10 speakers, 7 emotions"

    def parse(self, path: Path) -> Utterance:
        m = _NAME.match(path.stem)
        if not m:
            raise CorpusError(f"{path.name}: not an EMO-DB file name (expected e.g. 03a01Wa)")
        code = m["emo"]
        emotion = label_from_code(code, EMOTION_CODES, "EMO-DB", path)
        spk = m["spk"]
        return Utterance(speaker=spk, label=code, emotion=emotion,
                         gender=SPEAKER_GENDER.get(spk, ""), extra={"text": m["text"]})
