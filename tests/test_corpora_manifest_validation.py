"""Issue 18 item 6 / issue 10 A8: impossible manifest values are refused, naming the column,
the rows and the fault, whatever the file format (CSV or Parquet)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emobridge.corpora.manifest import make_manifest, read_manifest, validate_manifest
from emobridge.errors import CorpusError


def _rows(n: int = 8) -> list[dict]:
    return [{"path": f"/data/u{i}.wav", "corpus": "c", "language": "de",
             "speaker": f"c:s{i % 4}", "gender": "f" if i % 2 else "m", "label": "A",
             "emotion": "anger", "duration_s": 1.0 + i, "sample_rate": 16_000}
            for i in range(n)]


def _write(df: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return path


@pytest.fixture(params=[".csv", ".parquet"])
def suffix(request) -> str:
    return request.param


def test_a_clean_manifest_round_trips(tmp_path: Path, suffix: str) -> None:
    df = make_manifest(_rows())
    back = read_manifest(_write(df, tmp_path / f"m{suffix}"))
    assert back["speaker"].tolist() == df["speaker"].tolist()
    assert back["sample_rate"].dtype == np.int64 and back["duration_s"].dtype == np.float64


@pytest.mark.parametrize("value", [np.inf, np.nan, -1.0, 0.0])
def test_impossible_durations_are_refused(tmp_path: Path, suffix: str, value: float) -> None:
    df = pd.DataFrame(_rows())
    df.loc[[2, 5], "duration_s"] = value
    path = _write(df, tmp_path / f"m{suffix}")
    with pytest.raises(CorpusError, match=rf"m\{suffix}: column 'duration_s' is not a finite "
                                          r"number > 0 in 2 rows \(rows 3 \(.*\), 6 \("):
        read_manifest(path)


def test_sixteen_rows_without_speaker_are_refused(tmp_path: Path, suffix: str) -> None:
    # The reported case: 16 rows without a speaker were counted as one speaker.
    df = pd.DataFrame(_rows(20))
    df.loc[df.index[:16], "speaker"] = [None, "", " ", np.nan] * 4
    path = _write(df, tmp_path / f"m{suffix}")
    with pytest.raises(CorpusError, match=r"column 'speaker' is empty or missing in 16 rows "
                                          r"\(rows 1, 2, 3, 4, 5, \.\.\.\)"):
        read_manifest(path)


def test_nan_emotion_and_label_are_refused(tmp_path: Path, suffix: str) -> None:
    df = pd.DataFrame(_rows())
    df.loc[3, "emotion"] = np.nan
    df.loc[7, "label"] = None
    path = _write(df, tmp_path / f"m{suffix}")
    with pytest.raises(CorpusError) as info:
        read_manifest(path)
    msg = str(info.value)
    assert "column 'emotion' is empty or missing in 1 row (row 4)" in msg
    assert "column 'label' is empty or missing in 1 row (row 8)" in msg  # every column named
    assert "\n" not in msg


def test_duplicated_paths_are_refused(tmp_path: Path, suffix: str) -> None:
    df = pd.DataFrame(_rows())
    df.loc[6, "path"] = df.loc[1, "path"]
    path = _write(df, tmp_path / f"m{suffix}")
    with pytest.raises(CorpusError, match=r"column 'path' lists the same file more than once "
                                          r"in 2 rows \(rows 2 \('/data/u1.wav'\), 7"):
        read_manifest(path)


def test_bad_sample_rate_and_gender_are_refused(tmp_path: Path, suffix: str) -> None:
    df = pd.DataFrame(_rows()).astype({"sample_rate": "float64"})
    df.loc[0, "sample_rate"] = np.nan
    df.loc[1, "sample_rate"] = 16_000.5
    df.loc[2, "gender"] = "x"
    path = _write(df, tmp_path / f"m{suffix}")
    with pytest.raises(CorpusError) as info:
        read_manifest(path)
    assert "column 'sample_rate' is not a positive integer in 2 rows (rows 1 (" in str(info.value)
    assert "column 'gender' is not 'f', 'm' or empty in 1 row (row 3 ('x'))" in str(info.value)


def test_empty_speaker_id_and_literal_nan_are_refused() -> None:
    rows = _rows()
    rows[0]["speaker"] = "c:"
    rows[1]["speaker"] = "nan"  # what pandas 2 made of a missing speaker
    with pytest.raises(CorpusError, match=r"combined: column 'speaker' .* in 2 rows \(rows 1, 2\)"):
        validate_manifest(pd.DataFrame(rows), "combined")


def test_message_shows_values_plainly_and_all_faults_at_once() -> None:
    df = pd.DataFrame(_rows())
    df.loc[2, "duration_s"] = np.inf
    df.loc[3, "duration_s"] = -1.0
    df.loc[1, "path"] = df.loc[0, "path"]
    with pytest.raises(CorpusError) as info:
        validate_manifest(df, "m.csv")
    assert str(info.value) == (
        "m.csv: column 'duration_s' is not a finite number > 0 in 2 rows (rows 3 (inf), "
        "4 (-1.0)); column 'path' lists the same file more than once in 2 rows "
        "(rows 1 ('/data/u0.wav'), 2 ('/data/u0.wav'))")
