"""CaFE (Canadian French Emotional speech dataset, Gournay, Lahaie & Lefebvre 2018), Canadian
French, 12 actors (odd numbers men, even numbers women), 6 sentences.

Layout ``Colère/Faible/``, ``Colère/Fort/``, ... ``Neutre/`` (``.wav`` in the 48 kHz release,
``.aiff`` in the 192 kHz one). File names ``AA-E-I-S``: actor (01-12), emotion letter (``C``
colère/anger, ``D`` dégoût/disgust, ``J`` joie/happiness, ``N`` neutre/neutral, ``P``
peur/fear, ``S`` surprise, ``T`` tristesse/sadness), intensity (``1`` faible/low, ``2``
fort/high) and sentence (1-6). Neutral files have no intensity field (``AA-N-S``). Only the file
name is read, so accented folder names in any Unicode normalisation do not matter.

Extra manifest columns: ``intensity`` (``low``/``high``, empty for neutral), ``sentence``.
"""

from __future__ import annotations

import re
from pathlib import Path

from emobridge.corpora.base import CorpusReader, Utterance, label_from_code, register
from emobridge.corpora.readers._common import match_name, odd_is_male
from emobridge.errors import CorpusError

EMOTION_CODES = {
    "C": "anger",  # Colère
    "D": "disgust",  # Dégoût
    "J": "happiness",  # Joie
    "N": "neutral",  # Neutre
    "P": "fear",  # Peur
    "S": "surprise",
    "T": "sadness",  # Tristesse
}
INTENSITY_CODES = {"1": "low", "2": "high"}
_NAME = re.compile(
    r"^(?P<actor>\d\d)-(?P<emo>[A-Z])(?:-(?P<intensity>\d))?-(?P<sentence>\d)$"
)


@register
class Cafe(CorpusReader):
    name = "cafe"
    language = "fr"
    description = "CaFE, Canadian French acted, 12 actors, 7 emotions x 2 intensities"

    def parse(self, path: Path) -> Utterance:
        m = match_name(_NAME, path, "CaFE", "01-C-1-1 or 01-N-1")
        code = m["emo"]
        emotion = label_from_code(code, EMOTION_CODES, "CaFE", path)
        intensity = m["intensity"]
        if intensity is None:
            if code != "N":
                raise CorpusError(f"{path.name}: CaFE emotion {code} needs an intensity field "
                                  "(expected e.g. 01-C-1-1)")
            intensity_name = ""
        elif intensity in INTENSITY_CODES:
            intensity_name = INTENSITY_CODES[intensity]
        else:
            raise CorpusError(f"{path.name}: unknown CaFE intensity {intensity!r} (1 or 2)")
        actor = m["actor"]
        if not 1 <= int(actor) <= 12:
            raise CorpusError(f"{path.name}: CaFE actor {actor} outside 01-12")
        return Utterance(speaker=actor, label=code, emotion=emotion,
                         gender=odd_is_male(int(actor)),
                         extra={"intensity": intensity_name, "sentence": m["sentence"]})
