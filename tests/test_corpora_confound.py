"""Issue 10 B11: suspicious speaker fields are warned about; the URDU speaker id."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import pytest

from emobridge.corpora.base import create_reader
from emobridge.corpora.manifest import speaker_emotion_confound
from emobridge.errors import EmobridgeWarning
from tests.conftest import write_tone


def _frame(pairs: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(pairs, columns=["speaker", "emotion"])


def test_confound_helper() -> None:
    ok = _frame([(s, e) for s in "abcd" for e in ("anger", "sadness")])
    assert speaker_emotion_confound(ok) == []
    assert speaker_emotion_confound(ok.iloc[:0]) == []
    [one] = speaker_emotion_confound(_frame([("c:x", "anger"), ("c:x", "sadness")]))
    assert "only one speaker (c:x) in 2 utterances" in one
    # 3 of 4 speakers carry one emotion each: speaker and emotion are confounded
    mixed = _frame([("a", "anger"), ("b", "sadness"), ("c", "anger"), ("d", "anger"),
                    ("d", "sadness")])
    [reason] = speaker_emotion_confound(mixed)
    assert reason.startswith("3 of 4 speakers carry a single emotion (e.g. a, b, c)")
    # half of the speakers is not "most"; a one-emotion corpus has nothing to erase
    half = _frame([("a", "anger"), ("b", "sadness"), ("c", "anger"), ("c", "sadness"),
                   ("d", "anger"), ("d", "sadness")])
    assert speaker_emotion_confound(half) == []
    assert speaker_emotion_confound(_frame([("a", "anger"), ("b", "anger")])) == []


def test_folder_reader_one_level_too_high_warns(tmp_path: Path) -> None:
    corpus = tmp_path / "mycorpus"
    for emo in ("angry", "sad"):
        for spk in ("s1", "s2"):
            write_tone(corpus / emo / f"{spk}_{emo}.wav", duration_s=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the right root: no warning
        good = create_reader("folder", corpus, {"language": "de"}).scan()
    assert good.manifest["speaker"].nunique() == 2
    # Pointed at the folder above: the corpus folder becomes the only speaker.
    with pytest.warns(EmobridgeWarning, match=r"only one speaker \(.*:mycorpus\) in 4 "
                                              r"utterances") as record:
        high = create_reader("folder", tmp_path, {"language": "de"}).scan()
    assert high.manifest["speaker"].nunique() == 1 and len(record) == 1
    assert str(tmp_path) in str(record[0].message)


def test_speakers_with_one_emotion_each_warn(tmp_path: Path) -> None:
    # Files named <emotion code>_<n>.wav in <emotion>/ folders: the folder reader's fallback
    # takes the prefix for the speaker, so every "speaker" carries exactly one emotion.
    for emo in ("angry", "sad", "happy"):
        for n in (1, 2):
            write_tone(tmp_path / "c" / emo / f"{emo[:3]}_{n}.wav", duration_s=0.05)
    with pytest.warns(EmobridgeWarning, match=r"3 of 3 speakers carry a single emotion .*"
                                              r"per-speaker normalisation would erase"):
        result = create_reader("folder", tmp_path / "c", {"language": "de"}).scan()
    assert result.manifest["speaker"].nunique() == 3


def test_urdu_speaker_is_gender_and_number(tmp_path: Path) -> None:
    names = {
        "Angry/SM1_F1_A01.wav": "urdu:SM1",
        "Happy/SM1_F2_H01.wav": "urdu:SM1",   # the speaker's 2nd file: same person
        "Neutral/SM01_F3_N01.wav": "urdu:SM1",  # zero-padded number: same person
        "Sad/SF1_F1_S01.wav": "urdu:SF1",     # female speaker 1 is another person
        "Sad/sm12_f1_s02.wav": "urdu:SM12",   # lower-case letters
    }
    for name in names:
        write_tone(tmp_path / name, duration_s=0.05)
    result = create_reader("urdu", tmp_path).scan()
    assert not result.problems
    got = dict(zip((Path(p).relative_to(tmp_path).as_posix() for p in result.manifest["path"]),
                   result.manifest["speaker"], strict=True))
    assert got == names
    assert result.manifest["speaker"].nunique() == 3
    assert result.manifest.set_index("speaker")["recording"].loc["urdu:SM1"].tolist() == [
        "1", "2", "3"]
