"""URDU (Latif et al. 2018, "Cross Lingual Speech Emotion Recognition: Urdu vs. Western
Languages"), Urdu, spontaneous speech from Urdu TV talk shows.

400 utterances, documented as 38 speakers (27 male, 11 female), 4 emotions. Layout ``Angry/``,
``Happy/``, ``Neutral/``, ``Sad/`` with file names ``SGX_FXX_EYY`` (``SM1_F1_A01.wav``), as the
corpus's README defines them:

* ``SGX``: ``S``, the speaker's gender ``G`` (``M``/``F``) and the speaker number ``X``, "the
  same for a particular speaker in all the emotions". The speaker id is gender plus number
  (``SM1`` and ``SF1`` are two people), with leading zeros dropped (``SM01`` is ``SM1``).
* ``FXX``: the number of the file *for that speaker* (its 1st, 2nd... utterance), not a
  session or talk show. It must not become part of the speaker id: ``SM1_F1`` and ``SM1_F2``
  are the same person, and splitting them would put one voice on both sides of a
  speaker-independent split.
* ``EYY``: emotion letter (``A`` angry, ``H`` happy, ``N`` neutral, ``S`` sad) and the file's
  number within that emotion.

Letters are read case-insensitively. When a file lies in an emotion folder, folder and letter
must agree. A copy whose names carry fewer distinct ``SGX`` ids than the 38 speakers the paper
counts (29 were reported) is read as named: the names are the only speaker information, and
merging two real speakers keeps a split speaker-independent where inventing ids could not.

Extra manifest column: ``recording`` (the ``F`` number: the speaker's file number).
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
    r"^S(?P<gender>[MF])(?P<num_spk>\d+)_F(?P<rec>\d+)_(?P<emo>[A-Z])(?P<num>\d+)$",
    re.IGNORECASE,
)


@register
class Urdu(CorpusReader):
    name = "urdu"
    language = "ur"
    description = "URDU, Urdu spontaneous (TV talk shows), 38 speakers, 4 emotions"

    def parse(self, path: Path) -> Utterance:
        m = match_name(_NAME, path, "URDU", "SM1_F1_A01")
        code = m["emo"].upper()
        emotion = label_from_code(code, EMOTION_CODES, "URDU", path)
        folder_code = FOLDERS.get(path.parent.name.lower())
        if folder_code is not None and folder_code != code:
            raise CorpusError(f"{path.name}: emotion letter {code} disagrees with the folder "
                              f"{path.parent.name}/")
        # Gender letter + number without leading zeros: SM01 and SM1 name one speaker.
        speaker = f"S{m['gender'].upper()}{int(m['num_spk'])}"
        return Utterance(speaker=speaker, label=code, emotion=emotion,
                         gender=gender_from_letter(m["gender"], path, "URDU"),
                         extra={"recording": m["rec"]})
