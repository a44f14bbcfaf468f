"""Corpus readers on generated fixture trees in each corpus's published naming.

Every reader gets well-formed files (some with quirks: stereo, 44.1/48 kHz, AIFF data behind a
``.wav`` name), at least one malformed file that must come back as a problem naming it, and a
non-audio file that must be counted as ignored.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf

from emobridge.corpora import available_readers, get_reader
from emobridge.corpora.base import CorpusReader, create_reader, reader_options
from emobridge.corpora.taxonomy import CANONICAL_EMOTIONS
from emobridge.errors import AudioError, ConfigError, CorpusError, LabelError, UnknownNameError
from tests.conftest import write_tone

STEREO = {"channels": 2}
RATE_44K = {"sample_rate_hz": 44_100}
RATE_48K = {"sample_rate_hz": 48_000}
AIFF = {"fmt": "AIFF"}  # AIFF bytes behind a .wav name, as in some corpus copies

# reader -> (language, good files, bad files). Good: relpath -> (speaker, emotion, gender,
# write_tone kwargs). Bad: relpath -> (how to write it, substring the reason must contain).
# "tone" writes valid audio (the name is what is wrong), "garbage" undecodable bytes.
CASES: dict[str, tuple[str, dict, dict]] = {
    "emodb": ("de", {
        "wav/03a01Wa.wav": ("03", "anger", "m", {}),
        "wav/08b02Fc.wav": ("08", "happiness", "f", STEREO),
        "wav/16a05Lb.wav": ("16", "boredom", "f", RATE_44K),
    }, {
        "wav/03a01Xa.wav": ("tone", "unknown EMO-DB emotion code 'X'"),
        "wav/notemodb.wav": ("tone", "not an EMO-DB file name"),
    }),
    "ravdess": ("en", {
        "Actor_01/03-01-05-02-01-01-01.wav": ("01", "anger", "m", RATE_48K),
        "Actor_02/03-01-02-01-02-02-02.wav": ("02", "calm", "f", {}),
        "Actor_02/03-01-08-01-01-01-02.wav": ("02", "surprise", "f", AIFF),
    }, {
        "Actor_01/03-01-09-01-01-01-01.wav": ("tone", "unknown RAVDESS emotion code '09'"),
        "Actor_01/03-01-01-01-01-01-03.wav": ("tone", "file is in Actor_01"),
        "Actor_02/03-01-03-01-01-01-02.wav": ("garbage", "cannot read audio header"),
    }),
    "tess": ("en", {
        "OAF_angry/OAF_back_angry.wav": ("OAF", "anger", "f", {}),
        "YAF_pleasant_surprised/YAF_bite_ps.wav": ("YAF", "surprise", "f", RATE_44K),
        "YAF_Fear/YAF_dog_Fear.wav": ("YAF", "fear", "f", {}),
    }, {
        "OAF_angry/OAF_back_bored.wav": ("tone", "unknown TESS emotion code 'bored'"),
        "OAF_angry/XYZ_back_angry.wav": ("tone", "unknown TESS speaker"),
    }),
    "savee": ("en", {
        "AudioData/DC/a01.wav": ("DC", "anger", "m", RATE_44K),
        "AudioData/KL/sa15.wav": ("KL", "sadness", "m", {}),
        "ALL/JE_su03.wav": ("JE", "surprise", "m", STEREO),
    }, {
        "AudioData/DC/x01.wav": ("tone", "unknown SAVEE emotion code 'x'"),
        "ALL/a02.wav": ("tone", "outside a speaker folder"),
        "AudioData/JK/JE_n01.wav": ("tone", "speaker JE in the name"),
    }),
    "cremad": ("en", {
        "AudioWAV/1001_DFA_ANG_XX.wav": ("1001", "anger", "m", {}),
        "AudioWAV/1002_IEO_HAP_HI.wav": ("1002", "happiness", "f", {}),
        "AudioWAV/1091_WSI_NEU_XX.wav": ("1091", "neutral", "", {}),
    }, {
        "AudioWAV/1001_DFA_BOR_XX.wav": ("tone", "unknown CREMA-D emotion code 'BOR'"),
        "AudioWAV/1001_ABC_SAD_XX.wav": ("tone", "unknown CREMA-D sentence code 'ABC'"),
        "AudioWAV/1076_MTI_SAD_XX.wav": ("garbage", "cannot read audio header"),
    }),
    "urdu": ("ur", {
        "Angry/SM1_F1_A01.wav": ("SM1", "anger", "m", {}),
        "Sad/SF3_F12_S07.wav": ("SF3", "sadness", "f", RATE_44K),
    }, {
        "Happy/SM1_F1_Q01.wav": ("tone", "unknown URDU emotion code 'Q'"),
        "Happy/SM2_F1_N02.wav": ("tone", "disagrees with the folder Happy"),
    }),
    "shemo": ("fa", {
        "female/F01A01.wav": ("F01", "anger", "f", {}),
        "male/M12W03.wav": ("M12", "surprise", "m", {}),
        "female/F02F05.wav": ("F02", "fear", "f", STEREO),
    }, {
        "male/M01X01.wav": ("tone", "unknown ShEMO emotion code 'X'"),
        "female/M03N01.wav": ("tone", "disagrees with the folder female"),
    }),
    "emovo": ("it", {
        "f1/dis-f1-b1.wav": ("f1", "disgust", "f", RATE_48K),
        "m3/gio-m3-n5.wav": ("m3", "happiness", "m", {}),
        "m1/pau-m1-l2.wav": ("m1", "fear", "m", AIFF),
    }, {
        "f2/abc-f2-b1.wav": ("tone", "unknown EMOVO emotion code 'abc'"),
        "f2/tri-f3-b1.wav": ("tone", "file is in f2"),
    }),
    "cafe": ("fr", {
        "Colère/Faible/01-C-1-1.wav": ("01", "anger", "m", RATE_48K),
        "Neutre/04-N-3.wav": ("04", "neutral", "f", {}),
        "Tristesse/Fort/12-T-2-6.aiff": ("12", "sadness", "f", {}),
    }, {
        "Joie/Fort/03-J-6.wav": ("tone", "needs an intensity field"),
        "Joie/Fort/03-X-2-1.wav": ("tone", "unknown CaFE emotion code 'X'"),
    }),
    "esd": ("zh", {  # language per speaker: checked in test_esd_language_per_speaker
        "0001/Angry/train/0001_000351.wav": ("0001", "anger", "f", {}),
        "0011/Neutral/0011_000001.wav": ("0011", "neutral", "m", {}),
        "0020/Surprise/test/0020_001750.wav": ("0020", "surprise", "m", {}),
    }, {
        "0001/Happy/train/0001_000351.wav": ("tone", "belongs to Angry"),
        "0002/Fun/0002_000010.wav": ("tone", "not in an ESD emotion folder"),
        "0021/Sad/0021_001100.wav": ("tone", "outside 0001-0020"),
    }),
    "aesdd": ("el", {
        "anger/a01 (1).wav": ("1", "anger", "", RATE_44K),
        "happiness/h20 (5).wav": ("5", "happiness", "", {}),
        "sadness/s05 (3)b.wav": ("3", "sadness", "", {}),
    }, {
        "fear/f01 (2).wav": ("garbage", "cannot read audio header"),
        "fear/x01 (2).wav": ("tone", "unknown AESDD emotion code 'x'"),
        "disgust/a02 (1).wav": ("tone", "disagrees with the folder disgust"),
    }),
    "subesco": ("bn", {
        "SUBESCO/F_01_OISHI_S_1_ANGRY_1.wav": ("F_01", "anger", "f", {}),
        "SUBESCO/M_10_RAFI_S_10_SURPRISE_5.wav": ("M_10", "surprise", "m", {}),
    }, {
        "SUBESCO/F_02_MIM_S_1_BORED_1.wav": ("tone", "unknown SUBESCO emotion code 'BORED'"),
        "SUBESCO/F_02_MIM_1_SAD_1.wav": ("tone", "not a SUBESCO file name"),
    }),
    "turevdb": ("tr", {
        "Sound Source/Angry/1157_kz_acik.wav": ("1157", "anger", "", {}),
        "Sound Source/Calm/6783_sk_algi.wav": ("6783", "calm", "", STEREO),
        "Sound Source/Sad/1234_hl_beste.wav": ("1234", "sadness", "", {}),
    }, {
        "Sound Source/Happy/1358_zz_cay.wav": ("tone", "unknown TurEV-DB emotion code 'zz'"),
        "Sound Source/Happy/1358_kz_cay.wav": ("tone", "disagrees with the folder Happy"),
    }),
    "ased": ("am", {
        "05Angry/a5-03-01-02-50.wav": ("50", "anger", "m", {}),
        "04Sad/S4-04-02-01-29.wav": ("29", "sadness", "f", STEREO),  # upper-case letter
        "02Fearful/f2-01-01-01-05.wav": ("05", "fear", "f", {}),
    }, {
        "03Happy/h3-01-01-03-05.wav": ("tone", "unknown ASED gender code '03'"),
        "03Happy/a5-01-01-01-05.wav": ("tone", "disagrees with the folder 03Happy"),
        "01Neutral/n2-01-01-01-05.wav": ("tone", "goes with folder number 1, not 2"),
        "01Neutral/x1-01-01-01-05.wav": ("tone", "unknown ASED emotion code 'x'"),
    }),
    "emotiontts": ("ko", {
        "plain-to-emotional/ema/wav/ema00001.wav": ("A", "neutral", "f", {}),
        "emotional-to-emotional/nea/wav/nea00203.wav": ("A", "sadness", "f", {}),
        "emotional-to-emotional/nek/wav/nek00301.wav": ("K", "anger", "m", RATE_44K),
    }, {
        "emotional-to-emotional/nek/wav/nek00401.wav": ("tone", "outside the emotiontts blocks"),
        "emotional-to-emotional/nez/wav/nez00001.wav": ("tone", "unknown emotiontts voice"),
        "emotional-to-emotional/neb/wav/nec00001.wav": ("tone", "the file is in neb/"),
        "emotional-to-emotional/emf/wav/emf00001.wav": ("tone", "plain-script voice in"),
    }),
}


#: Side files a corpus release carries next to the audio.
SIDE_FILES = {
    "cremad": {"VideoDemographics.csv": "ActorID,Age,Sex,Race,Ethnicity\n"
               "1001,51,Male,Caucasian,Not Hispanic\n1002,21,Female,Caucasian,Not Hispanic\n"},
}


def build_tree(root: Path, good: dict, bad: dict, name: str = "") -> None:
    for rel, text in SIDE_FILES.get(name, {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    for i, (rel, (*_, kwargs)) in enumerate(good.items()):
        write_tone(root / rel, duration_s=0.2 + 0.1 * (i % 4), seed=i, **kwargs)
    for rel, (how, _) in bad.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if how == "garbage":
            path.write_bytes(b"RIFF\x00\x00not really audio at all")
        else:
            write_tone(path, duration_s=0.2)
    # non-audio files next to the audio (where every reader walks)
    audio_dir = (root / next(iter(good))).parent
    (audio_dir / "README.txt").write_text("corpus documentation\n")
    (audio_dir / ".DS_Store").write_bytes(b"\x00\x01")


@pytest.mark.parametrize("name", sorted(CASES))
def test_reader_on_fixture_tree(tmp_path: Path, name: str) -> None:
    language, good, bad = CASES[name]
    root = tmp_path / name
    build_tree(root, good, bad, name)
    result = get_reader(name)(root).scan()
    df = result.manifest.set_index("path")

    assert set(df.index) == {str(root / rel) for rel in good}
    for rel, (speaker, emotion, gender, kwargs) in good.items():
        row = df.loc[str(root / rel)]
        assert row["speaker"] == f"{name}:{speaker}"
        assert row["emotion"] == emotion
        assert row["gender"] == gender
        assert row["corpus"] == name
        assert row["sample_rate"] == kwargs.get("sample_rate_hz", 16_000)
        info = sf.info(str(root / rel))
        assert row["duration_s"] == pytest.approx(info.frames / info.samplerate)
    assert set(df["emotion"]) <= set(CANONICAL_EMOTIONS)
    if name != "esd":
        assert set(df["language"]) == {language}

    problems = {p.path: p.reason for p in result.problems}
    assert set(problems) == {str(root / rel) for rel in bad}
    for rel, (_, expected) in bad.items():
        reason = problems[str(root / rel)]
        assert expected in reason
        assert Path(rel).name in reason
    assert result.n_ignored == 2  # README.txt and .DS_Store


@pytest.mark.parametrize("name", sorted(CASES))
def test_strict_scan_raises_naming_the_file(tmp_path: Path, name: str) -> None:
    _, good, bad = CASES[name]
    build_tree(tmp_path, good, bad, name)
    with pytest.raises((CorpusError, LabelError, AudioError)) as info:
        get_reader(name)(tmp_path).scan(strict=True)
    assert any(Path(rel).name in str(info.value) for rel in bad)


def test_every_reader_declares_its_contract() -> None:
    readers = available_readers()
    assert set(CASES) | {"iemocap", "folder", "table"} <= set(readers)
    for name, cls in readers.items():
        assert issubclass(cls, CorpusReader)
        assert cls.name == name
        assert cls.description
        if name not in ("folder", "table"):  # language is an option / per row there
            assert cls.language in {"de", "en", "it", "fa", "ur", "fr", "el", "bn", "tr", "zh",
                                    "am", "ko"}


def test_missing_root_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        get_reader("emovo")(tmp_path / "nowhere").scan()


# --- RAVDESS: songs and extra columns ---------------------------------------------------


def _ravdess_tree(root: Path) -> None:
    write_tone(root / "Audio_Speech_Actors_01-24/Actor_03/03-01-01-01-01-01-03.wav")
    write_tone(root / "Audio_Speech_Actors_01-24/Actor_03/03-01-04-02-02-01-03.wav")
    write_tone(root / "Audio_Song_Actors_01-24/Actor_03/03-02-03-02-01-01-03.wav")


def test_ravdess_songs_skipped_and_counted_by_default(tmp_path: Path) -> None:
    _ravdess_tree(tmp_path)
    result = get_reader("ravdess")(tmp_path).scan()
    assert len(result.manifest) == 2
    assert result.n_skipped == 1
    assert "include_song" in next(iter(result.skipped))
    assert not result.problems
    by_name = result.manifest.set_index(result.manifest["path"].map(lambda p: Path(p).name))
    assert by_name.loc["03-01-04-02-02-01-03.wav", "intensity"] == "strong"
    assert by_name.loc["03-01-01-01-01-01-03.wav", "intensity"] == "normal"
    assert set(by_name["vocal_channel"]) == {"speech"}


def test_ravdess_include_song(tmp_path: Path) -> None:
    _ravdess_tree(tmp_path)
    result = create_reader("ravdess", tmp_path, {"include_song": True}).scan()
    assert len(result.manifest) == 3 and result.n_skipped == 0
    song = result.manifest[result.manifest["vocal_channel"] == "song"]
    assert song["emotion"].tolist() == ["happiness"]
    # speech and song of one actor are the same speaker
    assert result.manifest["speaker"].nunique() == 1
    with pytest.raises(ConfigError, match="include_song"):
        create_reader("ravdess", tmp_path, {"include_song": "perhaps"})


# --- IEMOCAP ------------------------------------------------------------------------------


def _iemocap_tree(root: Path, extra_line: str = "") -> dict[str, str]:
    labels = {
        "Ses01F_impro01_F000": "neu",
        "Ses01F_impro01_M001": "exc",
        "Ses01F_impro01_F002": "xxx",
        "Ses01F_script01_1_M003": "ang",
    }
    session = root / "Session1"
    evals: dict[str, list[str]] = {}
    for i, (utt, label) in enumerate(labels.items()):
        dialog = utt.rsplit("_", 1)[0]
        write_tone(session / "sentences/wav" / dialog / f"{utt}.wav", duration_s=0.2, seed=i)
        evals.setdefault(dialog, []).append(
            f"[{i}.5000 - {i + 1}.2500]\t{utt}\t{label}\t[2.5000, 3.0000, 2.0000]\n"
            f"C-E1:\tNeutral state;\t()\nA-E2:\tval 3; act 2; dom  2;\t()\n\n"
        )
    eval_dir = session / "dialog/EmoEvaluation"
    eval_dir.mkdir(parents=True)
    for dialog, blocks in evals.items():
        header = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
        (eval_dir / f"{dialog}.txt").write_text(header + "".join(blocks) + extra_line)
    # a whole-dialog recording and an unlabelled utterance
    write_tone(session / "dialog/wav/Ses01F_impro01.wav", duration_s=0.3)
    write_tone(session / "sentences/wav/Ses01F_impro01/Ses01F_impro01_M009.wav", duration_s=0.2)
    (session / "sentences/wav/Ses01F_impro01/notes.pk").write_bytes(b"\x80\x04")
    return labels


def test_iemocap_labels_speakers_and_merge(tmp_path: Path) -> None:
    labels = _iemocap_tree(tmp_path)
    result = get_reader("iemocap")(tmp_path).scan()
    df = result.manifest.set_index(result.manifest["path"].map(lambda p: Path(p).stem))
    assert set(df.index) == set(labels)  # the dialog recording is not an utterance
    assert df.loc["Ses01F_impro01_M001", "emotion"] == "happiness"  # merge_excited default
    assert df.loc["Ses01F_impro01_M001", "label"] == "exc"
    assert df.loc["Ses01F_impro01_F002", "emotion"] == "other"  # xxx: no agreement
    assert df.loc["Ses01F_script01_1_M003", "speaker"] == "iemocap:Ses01M"
    assert df.loc["Ses01F_impro01_F000", "speaker"] == "iemocap:Ses01F"
    assert df.loc["Ses01F_impro01_F000", "gender"] == "f"
    assert df.loc["Ses01F_impro01_F000", "activation"] == pytest.approx(3.0)
    assert [Path(p.path).name for p in result.problems] == ["Ses01F_impro01_M009.wav"]
    assert "no categorical label" in result.problems[0].reason
    assert result.n_ignored == 1

    unmerged = create_reader("iemocap", tmp_path, {"merge_excited": False}).scan().manifest
    assert "excitement" in set(unmerged["emotion"])


def test_iemocap_malformed_evaluation_line(tmp_path: Path) -> None:
    _iemocap_tree(tmp_path, extra_line="[1.0 - 2.0]\tSes01F_impro01_F010\tneu\n")
    with pytest.raises(CorpusError, match=r"Ses01F_impro01\.txt:\d+: not an IEMOCAP"):
        get_reader("iemocap")(tmp_path).scan()


def test_iemocap_needs_sessions(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    with pytest.raises(CorpusError, match="no Session1..Session5"):
        get_reader("iemocap")(tmp_path).scan()


# --- CREMA-D demographics, ESD languages --------------------------------------------------


def test_cremad_without_demographics_and_mp3_copies(tmp_path: Path) -> None:
    write_tone(tmp_path / "AudioWAV/1001_DFA_ANG_XX.wav")
    write_tone(tmp_path / "AudioMP3/1001_DFA_ANG_XX.wav", sample_rate_hz=44_100)
    result = get_reader("cremad")(tmp_path).scan()
    assert result.manifest["gender"].tolist() == [""]
    assert result.manifest["intensity"].tolist() == ["unspecified"]
    assert "AudioWAV" in result.manifest["path"].iloc[0]


def test_cremad_bad_demographics(tmp_path: Path) -> None:
    write_tone(tmp_path / "AudioWAV/1001_DFA_ANG_XX.wav")
    (tmp_path / "VideoDemographics.csv").write_text("ActorID,Sex\n1001,Robot\n")
    with pytest.raises(CorpusError, match="Robot"):
        get_reader("cremad")(tmp_path).scan()


def test_esd_language_per_speaker(tmp_path: Path) -> None:
    _, good, bad = CASES["esd"]
    build_tree(tmp_path, good, {})
    df = get_reader("esd")(tmp_path).scan().manifest
    lang = dict(zip(df["speaker"], df["language"], strict=True))
    assert lang == {"esd:0001": "zh", "esd:0011": "en", "esd:0020": "en"}
    assert sorted(df["split"]) == ["", "test", "train"]


# --- generic readers ----------------------------------------------------------------------


def test_folder_reader_speakers_labels_and_options(tmp_path: Path) -> None:
    root = tmp_path / "My Corpus"
    write_tone(root / "angry/spk1_001.wav")
    write_tone(root / "Happy/spk2_002.wav", channels=2)
    write_tone(root / "wut/spk1_003.wav")  # only with label_map
    write_tone(root / "alice/sad/take1.wav")  # speaker folder above the label folder
    write_tone(root / "calm/nounderscore.wav")  # no speaker
    write_tone(root / "loose.wav")  # not in a label folder
    (root / "angry/notes.md").write_text("x")

    with pytest.raises(ConfigError, match="language"):
        get_reader("folder")(root)
    result = create_reader("folder", root, {"language": "de", "label_map": {"WUT": "anger"}}).scan()
    df = result.manifest.set_index(result.manifest["path"].map(lambda p: Path(p).name))
    assert df.loc["spk1_001.wav", ["speaker", "emotion", "label"]].tolist() == [
        "my_corpus:spk1", "anger", "angry"]
    assert df.loc["spk2_002.wav", "emotion"] == "happiness"
    assert df.loc["spk1_003.wav", "emotion"] == "anger"
    assert df.loc["take1.wav", ["speaker", "emotion"]].tolist() == ["my_corpus:alice", "sadness"]
    assert set(df["corpus"]) == {"my_corpus"} and set(df["language"]) == {"de"}
    reasons = {Path(p.path).name: p.reason for p in result.problems}
    assert set(reasons) == {"nounderscore.wav", "loose.wav"}
    assert "speaker_pattern" in reasons["nounderscore.wav"]
    assert "directly in the corpus folder" in reasons["loose.wav"]
    assert result.n_ignored == 1

    # without the label map the unknown folder is a problem naming file and label
    plain = create_reader("folder", root, {"language": "de", "corpus": "x1"}).scan()
    reason = {Path(p.path).name: p.reason for p in plain.problems}["spk1_003.wav"]
    assert "'wut'" in reason
    assert set(plain.manifest["speaker"].str.split(":").str[0]) == {"x1"}

    pattern = r"^take(?P<speaker>\d)"
    patterned = create_reader("folder", root / "alice",
                              {"language": "en", "speaker_pattern": pattern}).scan()
    assert patterned.manifest["speaker"].tolist() == ["alice:1"]
    with pytest.raises(ConfigError, match="named group"):
        create_reader("folder", root, {"language": "de", "speaker_pattern": r"(\d+)"})
    with pytest.raises(ConfigError, match="ISO 639"):
        create_reader("folder", root, {"language": "German"})


def test_folder_reader_gender_group(tmp_path: Path) -> None:
    write_tone(tmp_path / "c/neutral/F_07_a.wav")
    write_tone(tmp_path / "c/neutral/M_08_a.wav")
    pattern = r"^(?P<gender>[FM])_(?P<speaker>\d+)"
    df = create_reader("folder", tmp_path / "c",
                       {"language": "tr", "speaker_pattern": pattern}).scan().manifest
    assert dict(zip(df["speaker"], df["gender"], strict=True)) == {"c:07": "f", "c:08": "m"}


def test_table_reader(tmp_path: Path) -> None:
    audio = tmp_path / "audio"
    write_tone(audio / "a.wav")
    write_tone(audio / "b.flac", sample_rate_hz=48_000)
    write_tone(audio / "c.wav", fmt="AIFF")
    absolute = write_tone(tmp_path / "elsewhere/d.wav")
    (audio / "e.wav").write_bytes(b"not audio")
    listing = tmp_path / "lists/mix.tsv"
    listing.parent.mkdir()
    listing.write_text(
        "path\tlabel\tspeaker\tlanguage\tgender\tsplit\n"
        "../audio/a.wav\tangry\ts1\tde\tfemale\ttrain\n"
        "../audio/b.flac\tJoy\ts2\tEN\tm\ttest\n"
        "../audio/c.wav\tsad\ts1\tde\t\ttrain\n"
        f"{absolute}\tneutral\ts3\tfa\tF\ttest\n"
        "../audio/missing.wav\tsad\ts1\tde\tf\ttrain\n"
        "../audio/e.wav\tsad\ts1\tde\tf\ttrain\n"
        "../audio/a2.wav\twistful\ts1\tde\tf\ttrain\n"
        "../audio/notes.txt\tsad\ts1\tde\tf\ttrain\n"
    )
    write_tone(audio / "a2.wav")
    result = get_reader("table")(listing).scan()
    df = result.manifest.set_index(result.manifest["path"].map(lambda p: Path(p).name))
    assert list(df.index) == ["a.wav", "b.flac", "c.wav", "d.wav"]
    assert df["language"].tolist() == ["de", "en", "de", "fa"]
    assert df["gender"].tolist() == ["f", "m", "", "f"]
    assert df["emotion"].tolist() == ["anger", "happiness", "sadness", "neutral"]
    assert df["split"].tolist() == ["train", "test", "train", "test"]
    assert df.loc["b.flac", "sample_rate"] == 48_000
    assert set(df["speaker"]) == {"mix:s1", "mix:s2", "mix:s3"}
    reasons = {Path(p.path).name: p.reason for p in result.problems}
    assert set(reasons) == {"missing.wav", "e.wav", "a2.wav"}
    assert "does not exist" in reasons["missing.wav"]
    assert "cannot read audio header" in reasons["e.wav"]
    assert "'wistful'" in reasons["a2.wav"]
    assert result.n_ignored == 1


@pytest.mark.parametrize("content, match", [
    ("path,label,speaker\nx.wav,sad,s1\n", "missing columns \\['language'\\]"),
    ("path,label,speaker,language\nx.wav,sad,s1,de\nx.wav,sad,s1,de\n", "already listed in row 2"),
    ("path,label,speaker,language\n,sad,s1,de\n", "row 2: empty path"),
])
def test_table_reader_broken_listing(tmp_path: Path, content: str, match: str) -> None:
    listing = tmp_path / "list.csv"
    listing.write_text(content)
    with pytest.raises(CorpusError, match=match):
        get_reader("table")(listing).scan()


def test_create_reader_rejects_unknown_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="accepted: include_song"):
        create_reader("ravdess", tmp_path, {"songs": True})
    with pytest.raises(UnknownNameError, match="unknown corpus reader"):
        create_reader("nosuch", tmp_path)
    assert reader_options(get_reader("iemocap")) == {"merge_excited": True}
