"""ShEMO (Sharif Emotional Speech Database, Mohamad Nezami et al. 2019), Persian.

3000 utterances from radio plays, 87 speakers (31 female, 56 male). Layout ``female/`` and
``male/`` with file names ``F01A01.wav``: gender (``F``/``M``) + two-digit speaker number
(numbered per gender), emotion letter (``A`` anger, ``F`` fear, ``H`` happiness, ``N``
neutral, ``S`` sadness, ``W`` surprise), two-digit utterance number. When the file lies in a
``female``/``male`` folder, it must agree with the gender letter.
"""

from __future__ import annotations

import re
from pathlib import Path

from emobridge.corpora.base import CorpusReader, Utterance, label_from_code, register
from emobridge.corpora.readers._common import gender_from_letter, match_name
from emobridge.errors import CorpusError

EMOTION_CODES = {
    "A": "anger",
    "F": "fear",
    "H": "happiness",
    "N": "neutral",
    "S": "sadness",
    "W": "surprise",
}
_NAME = re.compile(r"^(?P<spk>(?P<gender>[FM])\d\d)(?P<emo>[A-Z])(?P<num>\d\d)$")


@register
class Shemo(CorpusReader):
    name = "shemo"
    language = "fa"
    description = "ShEMO, Persian semi-natural (radio plays), 87 speakers, 6 emotions"

    def parse(self, path: Path) -> Utterance:
        m = match_name(_NAME, path, "ShEMO", "F01A01")
        code = m["emo"]
        emotion = label_from_code(code, EMOTION_CODES, "ShEMO", path)
        gender = gender_from_letter(m["gender"], path, "ShEMO")
        folder = {"female": "f", "male": "m"}.get(path.parent.name.lower())
        if folder is not None and folder != gender:
            raise CorpusError(f"{path.name}: gender letter {m['gender']} disagrees with the "
                              f"folder {path.parent.name}/")
        return Utterance(speaker=m["spk"], label=code, emotion=emotion, gender=gender)
