"""IEMOCAP (Interactive Emotional Dyadic Motion Capture, Busso et al. 2008), US English.

Five sessions, each one female and one male actor. Utterance audio lies in
``SessionN/sentences/wav/<dialog>/<UTT_ID>.wav`` with ``UTT_ID`` like
``Ses01F_impro01_F000`` or ``Ses01M_script01_1_M012``: session, the dialog's first speaker
(F/M), the dialog, and last the utterance's own speaker letter (F/M) with the turn number.
Categorical labels are in ``SessionN/dialog/EmoEvaluation/<dialog>.txt``, one summary line per
utterance::

    [6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]

(start - end in seconds, id, majority label, mean valence / activation / dominance). Lines
not starting with ``[`` (the individual evaluators' ratings) are not read; a line starting with
``[`` that does not parse raises :class:`CorpusError` naming the file and line. Labels:
``ang`` anger, ``hap`` happiness, ``exc`` excitement (happiness with ``merge_excited``),
``sad``, ``neu``, ``fru`` frustration, ``sur`` surprise, ``fea`` fear, ``dis`` disgust,
``oth`` other and ``xxx`` (no majority among the evaluators), which maps to ``other``.

Only ``SessionN/sentences/wav`` is walked (the whole-dialog recordings in ``dialog/wav`` are
not utterances). Speaker = session + the utterance's speaker letter (``Ses01F``); the
session's two actors are different people, so this is one id per actor.

Extra manifest columns: ``dialog``, ``valence``, ``activation``, ``dominance``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from emobridge.corpora.base import CorpusReader, Utterance, label_from_code, register
from emobridge.corpora.readers._common import as_bool, match_name, walk_files
from emobridge.errors import CorpusError, LabelError

EMOTION_CODES = {
    "ang": "anger",
    "hap": "happiness",
    "exc": "excitement",
    "sad": "sadness",
    "neu": "neutral",
    "fru": "frustration",
    "sur": "surprise",
    "fea": "fear",
    "dis": "disgust",
    "oth": "other",
    "xxx": "other",
}
_NUM = r"-?\d+(?:\.\d*)?"
_LINE = re.compile(
    rf"^\[\s*(?P<start>{_NUM})\s*-\s*(?P<end>{_NUM})\s*\]\s+(?P<utt>\S+)\s+(?P<label>\S+)\s+"
    rf"\[\s*(?P<v>{_NUM})\s*,\s*(?P<a>{_NUM})\s*,\s*(?P<d>{_NUM})\s*\]\s*$"
)
_UTT = re.compile(r"^Ses(?P<session>\d\d)(?P<first>[FM])_(?P<rest>.+)_(?P<spk>[FM])(?P<turn>\w+)$")
_SESSION_DIR = re.compile(r"^Session\d+$")


@register
class Iemocap(CorpusReader):
    """IEMOCAP utterances with their categorical (majority) labels.

    Parameters
    ----------
    root:
        The release folder holding ``Session1`` ... ``Session5`` (or one ``SessionN`` folder).
    merge_excited:
        Map ``exc`` (excited) to ``happiness``, as most IEMOCAP 4-class work does. With
        ``False`` it stays ``excitement`` (and is dropped by the 4-class set unless mapped).
    """

    name = "iemocap"
    language = "en"
    description = "IEMOCAP, US English dyadic (acted/improvised), 10 speakers, categorical labels"

    def __init__(self, root: str | os.PathLike[str], merge_excited: bool = True) -> None:
        super().__init__(root)
        self.merge_excited = as_bool(merge_excited, "merge_excited", self.name)
        self._labels: dict[Path, dict[str, tuple[str, float, float, float]]] = {}

    def session_dirs(self) -> list[Path]:
        if not self.root.is_dir():
            raise CorpusError(f"iemocap: corpus folder {self.root} does not exist")
        if _SESSION_DIR.match(self.root.name):
            return [self.root]
        dirs = sorted(p for p in self.root.iterdir() if p.is_dir() and _SESSION_DIR.match(p.name))
        if not dirs:
            raise CorpusError(f"iemocap: no Session1..Session5 folders under {self.root}")
        return dirs

    def candidates(self) -> Iterator[Path]:
        for session in self.session_dirs():
            wav_dir = session / "sentences" / "wav"
            if not wav_dir.is_dir():
                raise CorpusError(f"iemocap: {session.name} has no sentences/wav folder")
            # Read the labels first: a broken evaluation file stops the scan with its name
            # instead of turning every utterance into the same problem.
            self.session_labels(session)
            yield from walk_files(wav_dir, self.name)

    def session_labels(self, session: Path) -> dict[str, tuple[str, float, float, float]]:
        """UTT_ID -> (label, valence, activation, dominance) from one session's EmoEvaluation."""
        if session in self._labels:
            return self._labels[session]
        labels: dict[str, tuple[str, float, float, float]] = {}
        eval_dir = session / "dialog" / "EmoEvaluation"
        files = sorted(eval_dir.glob("*.txt")) if eval_dir.is_dir() else []
        for txt in files:
            if txt.name.startswith("._"):
                continue
            with open(txt, encoding="utf-8", errors="replace") as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.startswith("["):
                        continue
                    m = _LINE.match(line.rstrip("\r\n"))
                    if m is None:
                        raise CorpusError(
                            f"{txt}:{lineno}: not an IEMOCAP evaluation line "
                            f"(expected '[start - end]<TAB>UTT_ID<TAB>label<TAB>[v, a, d]'): "
                            f"{line.strip()!r}"
                        )
                    utt = m["utt"]
                    entry = (m["label"], float(m["v"]), float(m["a"]), float(m["d"]))
                    if utt in labels and labels[utt][0] != entry[0]:
                        raise CorpusError(f"{txt}:{lineno}: {utt} labelled twice "
                                          f"({labels[utt][0]!r} and {entry[0]!r})")
                    labels[utt] = entry
        self._labels[session] = labels
        return labels

    def parse(self, path: Path) -> Utterance:
        m = match_name(_UTT, path, "IEMOCAP", "Ses01F_impro01_F000")
        dialog = path.stem.rsplit("_", 1)[0]
        if path.parent.name != dialog:
            raise CorpusError(f"{path.name}: belongs to dialog {dialog} but lies in "
                              f"{path.parent.name}/")
        # .../SessionN/sentences/wav/<dialog>/<utt>.wav
        session = path.parents[3] if len(path.parents) > 3 else path.parent
        labels = self.session_labels(session)
        if path.stem not in labels:
            raise LabelError(f"{path.name}: no categorical label for {path.stem} in "
                             f"{session.name}/dialog/EmoEvaluation/{dialog}.txt")
        code, valence, activation, dominance = labels[path.stem]
        emotion = label_from_code(code, EMOTION_CODES, "IEMOCAP", path)
        if code == "exc" and self.merge_excited:
            emotion = "happiness"
        spk = m["spk"]
        return Utterance(
            speaker=f"Ses{m['session']}{spk}",
            label=code,
            emotion=emotion,
            gender=spk.lower(),
            extra={"dialog": dialog, "valence": valence, "activation": activation,
                   "dominance": dominance},
        )
