"""EMOVO (Costantini et al. 2014), Italian, 6 actors (3 female, 3 male), 14 sentences.

Layout one folder per actor ``f1 f2 f3 m1 m2 m3`` with file names ``emo-spk-sentence.wav``
(``dis-f1-b1.wav``): emotion code (``dis`` disgust, ``gio`` joy, ``neu`` neutral, ``pau`` fear,
``rab`` anger, ``sor`` surprise, ``tri`` sadness), actor, sentence code (``b1``-``b3``,
``d1``-``d2``, ``l1``-``l4``, ``n1``-``n5``). Gender is the actor code's letter. When the file
lies in an actor folder, folder and name must agree.

Extra manifest column: ``sentence``.
"""

from __future__ import annotations

import re
from pathlib import Path

from emobridge.corpora.base import CorpusReader, Utterance, label_from_code, register
from emobridge.corpora.readers._common import match_name
from emobridge.errors import CorpusError

EMOTION_CODES = {
    "dis": "disgust",
    "gio": "happiness",  # gioia
    "neu": "neutral",
    "pau": "fear",  # paura
    "rab": "anger",  # rabbia
    "sor": "surprise",  # sorpresa
    "tri": "sadness",  # tristezza
}
_NAME = re.compile(r"^(?P<emo>[a-z]{3})-(?P<spk>(?P<gender>[fm])\d)-(?P<sentence>[a-z]\d)$")
_ACTOR_DIR = re.compile(r"^[fm]\d$")


@register
class Emovo(CorpusReader):
    name = "emovo"
    language = "it"
    description = "EMOVO, Italian acted, 6 actors, 7 emotions"

    def parse(self, path: Path) -> Utterance:
        m = match_name(_NAME, path, "EMOVO", "dis-f1-b1")
        code = m["emo"]
        emotion = label_from_code(code, EMOTION_CODES, "EMOVO", path)
        spk = m["spk"]
        folder = path.parent.name.lower()
        if _ACTOR_DIR.match(folder) and folder != spk:
            raise CorpusError(f"{path.name}: actor {spk} in the name but the file is in "
                              f"{path.parent.name}/")
        return Utterance(speaker=spk, label=code, emotion=emotion, gender=m["gender"],
                         extra={"sentence": m["sentence"]})
