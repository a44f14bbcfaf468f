"""emotiontts open DB, emotional part (KAIST / Selvas AI, 2017-2018), Korean, read dialogue
sentences; the public release is 5 % of the corpus.

Layout ``plain-to-emotional/<voice>/wav/<voice>NNNNN.wav`` (neutral scripts read with an
emotion; voices ``ema emb`` female, ``emf emg emh`` male) and
``emotional-to-emotional/<voice>/wav/<voice>NNNNN.wav`` (emotional scripts; ``nea``-``nee``
female, ``nek``-``neo`` male); ``script/`` and ``transcript/`` hold the texts (not audio).

Labels come from the file number: ``00001``-``00100`` neutral, ``00101``-``00200`` happy,
``00201``-``00300`` **sad**, ``00301``-``00400`` **angry**. The corpus README lists the last two
the other way round, but its own scripts show this order: for every emotional-script voice,
files 00201-00205 are sad texts (``nea00203``: an enlistment notice, "so depressed") and
00301-00305 angry ones (scolding), and a classifier trained on other corpora predicts the
README's "angry" files as sad and its "sad" files as angry for all 15 voices.

Speakers: the README names each voice by a speaker letter, and gives ``ema`` and ``nea`` the
same letter (speaker A), likewise ``emb`` and ``neb`` (speaker B). They may be the same people,
so the speaker id is the letter (``A`` for both ``ema`` and ``nea``): each such pair counts as
one speaker and falls on one side of every speaker-independent split. 13 speakers, 15 voices.
Gender follows the letter (A-E female, F-O male).

Extra manifest columns: ``voice`` (the folder, e.g. ``nea``) and ``script`` (``plain`` or
``emotional``).
"""

from __future__ import annotations

import re
from pathlib import Path

from emobridge.corpora.base import CorpusReader, Utterance, register
from emobridge.corpora.readers._common import match_name
from emobridge.errors import CorpusError, LabelError

#: (first, last file number, label, canonical emotion), in the corrected order (see above).
BLOCKS = (
    (1, 100, "neutral", "neutral"),
    (101, 200, "happy", "happiness"),
    (201, 300, "sad", "sadness"),
    (301, 400, "angry", "anger"),
)
SCRIPTS = {"em": "plain", "ne": "emotional"}
SCRIPT_FOLDERS = {"plain-to-emotional": "em", "emotional-to-emotional": "ne"}
#: Speaker letters of the release by script, with their gender.
LETTERS = {"em": {"a": "f", "b": "f", "f": "m", "g": "m", "h": "m"},
           "ne": {"a": "f", "b": "f", "c": "f", "d": "f", "e": "f",
                  "k": "m", "l": "m", "m": "m", "n": "m", "o": "m"}}
_NAME = re.compile(r"^(?P<voice>(?P<script>em|ne)(?P<letter>[a-z]))(?P<num>\d{5})$")
_VOICE_DIR = re.compile(r"^(em|ne)[a-z]$")


def _label(number: int, path: Path) -> tuple[str, str]:
    for first, last, label, emotion in BLOCKS:
        if first <= number <= last:
            return label, emotion
    raise LabelError(f"{path.name}: file number {number} is outside the emotiontts blocks "
                     "1-400 (neutral, happy, sad, angry)")


@register
class EmotionTTS(CorpusReader):
    name = "emotiontts"
    language = "ko"
    description = "emotiontts open DB (emotional), Korean read speech, 13 speakers, 4 emotions"

    def parse(self, path: Path) -> Utterance:
        m = match_name(_NAME, path, "emotiontts", "nea00203")
        voice, script, letter = m["voice"], m["script"], m["letter"]
        if letter not in LETTERS[script]:
            raise CorpusError(f"{path.name}: unknown emotiontts voice {voice!r} (known: "
                              + ", ".join(s + x for s, xs in LETTERS.items() for x in xs) + ")")
        folder = path.parent.parent if path.parent.name == "wav" else path.parent
        if _VOICE_DIR.match(folder.name) and folder.name != voice:
            raise CorpusError(f"{path.name}: voice {voice} in the name but the file is in "
                              f"{folder.name}/")
        expected = SCRIPT_FOLDERS.get(folder.parent.name)
        if expected is not None and expected != script:
            raise CorpusError(f"{path.name}: a {SCRIPTS[script]}-script voice in "
                              f"{folder.parent.name}/")
        label, emotion = _label(int(m["num"]), path)
        return Utterance(speaker=letter.upper(), label=label, emotion=emotion,
                         gender=LETTERS[script][letter],
                         extra={"voice": voice, "script": SCRIPTS[script]})
