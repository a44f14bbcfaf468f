"""RAVDESS (Ryerson Audio-Visual Database of Emotional Speech and Song, Livingstone & Russo
2018), North American English, 24 actors.

Layout ``Audio_Speech_Actors_01-24/Actor_XX/MM-VV-EE-II-SS-RR-AA.wav`` (songs in
``Audio_Song_Actors_01-24``). The seven two-digit fields are modality (01 full-AV, 02 video-only,
03 audio-only), vocal channel (01 speech, 02 song), emotion (01 neutral, 02 calm, 03 happy,
04 sad, 05 angry, 06 fearful, 07 disgust, 08 surprised), intensity (01 normal, 02 strong; none
strong for neutral), statement (01 "Kids are talking by the door", 02 "Dogs are sitting by the
door"), repetition (01, 02) and actor (01-24; odd = male, even = female).

Extra manifest columns: ``intensity`` (``normal``/``strong``), ``statement``, ``repetition``,
``vocal_channel`` (``speech``/``song``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from emobridge.corpora.base import CorpusReader, SkipFile, Utterance, label_from_code, register
from emobridge.corpora.readers._common import as_bool, match_name, odd_is_male
from emobridge.errors import CorpusError

EMOTION_CODES = {
    "01": "neutral",
    "02": "calm",
    "03": "happiness",
    "04": "sadness",
    "05": "anger",
    "06": "fear",
    "07": "disgust",
    "08": "surprise",
}
INTENSITY_CODES = {"01": "normal", "02": "strong"}
_NAME = re.compile(
    r"^(?P<modality>\d\d)-(?P<channel>\d\d)-(?P<emo>\d\d)-(?P<intensity>\d\d)"
    r"-(?P<statement>\d\d)-(?P<repetition>\d\d)-(?P<actor>\d\d)$"
)
_ACTOR_DIR = re.compile(r"^Actor_(\d\d)$")


@register
class Ravdess(CorpusReader):
    """RAVDESS audio files.

    Parameters
    ----------
    root:
        Folder holding ``Actor_XX`` folders (or the ``Audio_*_Actors_01-24`` folders).
    include_song:
        Keep the sung utterances (vocal channel 02). Off by default because song and speech
        differ acoustically; skipped songs are counted in the scan result.
    """

    name = "ravdess"
    language = "en"
    description = "RAVDESS, North American English acted, 24 actors, 8 emotions (speech/song)"

    def __init__(self, root: str | os.PathLike[str], include_song: bool = False) -> None:
        super().__init__(root)
        self.include_song = as_bool(include_song, "include_song", self.name)

    def parse(self, path: Path) -> Utterance:
        m = match_name(_NAME, path, "RAVDESS", "03-01-06-01-02-01-12")
        if m["modality"] not in ("01", "02", "03"):
            raise CorpusError(f"{path.name}: unknown RAVDESS modality {m['modality']!r}")
        if m["channel"] not in ("01", "02"):
            raise CorpusError(f"{path.name}: unknown RAVDESS vocal channel {m['channel']!r}")
        if m["channel"] == "02" and not self.include_song:
            raise SkipFile("RAVDESS song (vocal channel 02; include_song=False)")
        emotion = label_from_code(m["emo"], EMOTION_CODES, "RAVDESS", path)
        if m["intensity"] not in INTENSITY_CODES:
            raise CorpusError(f"{path.name}: unknown RAVDESS intensity {m['intensity']!r}")
        actor = m["actor"]
        if not 1 <= int(actor) <= 24:
            raise CorpusError(f"{path.name}: RAVDESS actor {actor} outside 01-24")
        folder = _ACTOR_DIR.match(path.parent.name)
        if folder and folder.group(1) != actor:
            raise CorpusError(
                f"{path.name}: actor {actor} in the name but the file is in {path.parent.name}"
            )
        return Utterance(
            speaker=actor,
            label=m["emo"],
            emotion=emotion,
            gender=odd_is_male(int(actor)),
            extra={
                "intensity": INTENSITY_CODES[m["intensity"]],
                "statement": m["statement"],
                "repetition": m["repetition"],
                "vocal_channel": "speech" if m["channel"] == "01" else "song",
            },
        )
