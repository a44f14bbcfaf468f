"""``emobridge corpora list|scan|stats`` through ``emobridge.cli.main`` on generated corpora."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from emobridge.cli import main
from emobridge.commands.corpora import parse_options
from emobridge.corpora import available_readers, read_manifest
from emobridge.errors import ConfigError
from tests.conftest import write_tone

# RAVDESS fixture: (actor, emotion code, intensity, vocal channel)
RAVDESS_FILES = [
    ("01", "05", "01", "01"), ("01", "03", "02", "01"), ("02", "01", "01", "01"),
    ("02", "04", "02", "01"), ("03", "02", "01", "01"), ("03", "05", "02", "02"),
]
RAVDESS_EMOTIONS = {"01": "neutral", "02": "calm", "03": "happiness", "04": "sadness",
                    "05": "anger"}


@pytest.fixture
def ravdess_root(tmp_path: Path) -> Path:
    root = tmp_path / "ravdess"
    for i, (actor, emo, intensity, channel) in enumerate(RAVDESS_FILES):
        name = f"03-{channel}-{emo}-{intensity}-01-01-{actor}.wav"
        write_tone(root / f"Actor_{actor}" / name, duration_s=0.2, seed=i)
    write_tone(root / "Actor_01" / "03-01-11-01-01-01-01.wav", duration_s=0.2)  # bad emotion
    (root / "Actor_01" / "notes.txt").write_text("x")
    return root


def test_list_shows_every_reader(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["corpora", "list"]) == 0
    out = capsys.readouterr().out
    for name in available_readers():
        assert re.search(rf"\b{name}\b", out)
    assert "include_song" in out


def test_scan_writes_manifest_and_lists_problems(
    ravdess_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_stem = tmp_path / "out" / "ravdess"
    rc = main(["corpora", "scan", "ravdess", str(ravdess_root), "-o", str(out_stem),
               "--no-progress", "--problems", str(tmp_path / "problems.csv")])
    assert rc == 0
    out = capsys.readouterr().out
    speech = [f for f in RAVDESS_FILES if f[3] == "01"]
    assert f"{len(speech)} utterances" in out
    assert "skipped 1 files" in out and "include_song" in out
    assert "ignored 1 non-audio files" in out
    assert "03-01-11-01-01-01-01.wav" in out and "unknown RAVDESS emotion code '11'" in out
    for suffix in (".csv", ".parquet"):
        df = read_manifest(out_stem.with_suffix(suffix))
        assert len(df) == len(speech)
        assert Counter(df["emotion"]) == Counter(RAVDESS_EMOTIONS[f[1]] for f in speech)
        assert df["speaker"].nunique() == len({f[0] for f in speech})
    problems = (tmp_path / "problems.csv").read_text()
    assert "03-01-11-01-01-01-01.wav" in problems


def test_scan_reader_options(ravdess_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "with_song.parquet"
    rc = main(["corpora", "scan", "ravdess", str(ravdess_root), "-o", str(out),
               "-O", "include_song=true", "--no-progress"])
    assert rc == 0
    df = read_manifest(out)
    assert len(df) == len(RAVDESS_FILES)
    assert (df["vocal_channel"] == "song").sum() == sum(f[3] == "02" for f in RAVDESS_FILES)
    assert not (tmp_path / "with_song.csv").exists()


def test_scan_strict_fails_naming_the_file(
    ravdess_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "strict.csv"
    rc = main(["corpora", "scan", "ravdess", str(ravdess_root), "-o", str(out), "--strict",
               "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "03-01-11-01-01-01-01.wav" in err
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["-O", "songs=true"], "unknown reader option(s) ['songs']"),
    (["-O", "include_song"], "expected KEY=VALUE"),
    (["-O", "include_song=maybe"], "must be true or false"),
])
def test_scan_bad_options(ravdess_root: Path, args: list[str], message: str,
                          capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["corpora", "scan", "ravdess", str(ravdess_root), "--no-progress", *args])
    assert rc == 1
    assert message in capsys.readouterr().err


def test_scan_folder_reader_with_json_option(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "mycorpus"
    write_tone(root / "wut" / "s1_a.wav", duration_s=0.2)
    write_tone(root / "traurig" / "s2_b.wav", duration_s=0.2)
    assert main(["corpora", "scan", "folder", str(root), "--no-progress"]) == 1
    assert "language" in capsys.readouterr().err
    out = tmp_path / "m.csv"
    rc = main(["corpora", "scan", "folder", str(root), "-o", str(out), "--no-progress",
               "-O", "language=de", "-O", 'label_map={"wut": "anger", "traurig": "sad"}'])
    assert rc == 0
    df = read_manifest(out)
    assert sorted(df["emotion"]) == ["anger", "sadness"]
    assert set(df["language"]) == {"de"} and set(df["corpus"]) == {"mycorpus"}


def test_scan_nothing_usable_is_an_error(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "m.csv"
    assert main(["corpora", "scan", "emodb", str(tmp_path / "empty"), "-o", str(out),
                 "--no-progress"]) == 1
    assert "no usable utterances" in capsys.readouterr().err
    assert not out.exists()
    assert main(["corpora", "scan", "nosuch", str(tmp_path), "--no-progress"]) == 1
    assert "unknown corpus reader 'nosuch'" in capsys.readouterr().err


def test_stats_with_label_set(ravdess_root: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "r.parquet"
    assert main(["corpora", "scan", "ravdess", str(ravdess_root), "-o", str(manifest),
                 "--no-progress"]) == 0
    capsys.readouterr()
    speech = [RAVDESS_EMOTIONS[f[1]] for f in RAVDESS_FILES if f[3] == "01"]
    four = {"anger", "happiness", "neutral", "sadness"}

    assert main(["corpora", "stats", str(manifest), "--label-set", "4class"]) == 0
    out = capsys.readouterr().out
    kept = Counter(e for e in speech if e in four)
    expected = ", ".join(f"{k} {v}" for k, v in sorted(kept.items()))
    assert f"emotions: {expected}" in out
    assert f"{sum(kept.values())} utterances" in out
    assert "dropped" in out and "calm" in out

    assert main(["corpora", "stats", str(manifest), "--label-set", "4class",
                 "--map", "calm=neutral"]) == 0
    out = capsys.readouterr().out
    mapped = Counter("neutral" if e == "calm" else e for e in speech)
    assert f"neutral {mapped['neutral']}" in out

    assert main(["corpora", "stats", str(tmp_path / "missing.csv")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_parse_options() -> None:
    opts = parse_options(["a=true", "b=3", "c=de", 'd={"x": "y"}', "e=null", "f=a=b"])
    assert opts == {"a": True, "b": 3, "c": "de", "d": {"x": "y"}, "e": None, "f": "a=b"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_options(["=3"])
