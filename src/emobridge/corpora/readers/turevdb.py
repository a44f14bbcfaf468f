"""TurEV-DB (Turkish Emotion-Voice Database, Canpolat, Ormanoğlu & Zeyrek 2020), Turkish.

About 1735 single-word recordings of 82 words by 6 speakers in 4 emotions. Layout
``Sound Source/<Angry|Calm|Happy|Sad>/`` with file names ``SPK_EE_word.wav``
(``1157_kz_acik.wav``): speaker id (digits), Turkish emotion code (``kz`` kızgın/angry, ``sk``
sakin/calm, ``mt`` mutlu/happy, ``hl`` hüzünlü/sad) and the word. When a file lies in an
emotion folder, folder and code must agree. The release does not give speaker genders, so
gender is left empty.

Extra manifest column: ``word``.
"""

from __future__ import annotations

import re
from pathlib import Path

from emobridge.corpora.base import CorpusReader, Utterance, label_from_code, register
from emobridge.corpora.readers._common import match_name
from emobridge.errors import CorpusError

EMOTION_CODES = {
    "kz": "anger",  # kızgın
    "sk": "calm",  # sakin
    "mt": "happiness",  # mutlu
    "hl": "sadness",  # hüzünlü
}
FOLDERS = {"angry": "kz", "calm": "sk", "happy": "mt", "sad": "hl"}
_NAME = re.compile(r"^(?P<spk>\d+)_(?P<emo>[A-Za-z]{2})_(?P<word>\w+)$")


@register
class TurevDB(CorpusReader):
    name = "turevdb"
    language = "tr"
    description = "TurEV-DB, Turkish acted single words, 6 speakers, 4 emotions"

    def parse(self, path: Path) -> Utterance:
        m = match_name(_NAME, path, "TurEV-DB", "1157_kz_acik")
        code = m["emo"].lower()
        emotion = label_from_code(code, EMOTION_CODES, "TurEV-DB", path)
        folder_code = FOLDERS.get(path.parent.name.lower())
        if folder_code is not None and folder_code != code:
            raise CorpusError(f"{path.name}: emotion code {code} disagrees with the folder "
                              f"{path.parent.name}/")
        return Utterance(speaker=m["spk"], label=code, emotion=emotion,
                         extra={"word": m["word"].lower()})
