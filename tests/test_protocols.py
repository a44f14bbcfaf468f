"""Speaker-independent protocols on small synthetic manifests (no audio needed)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from emobridge.corpora.manifest import make_manifest
from emobridge.errors import CorpusError, SpeakerLeakError
from emobridge.protocols import (
    CrossCorpusSplit,
    ProtocolError,
    Split,
    apportion,
    check_speaker_independence,
    cross_corpus_split,
    explicit_folds,
    few_shot_subset,
    leave_one_out,
    speaker_folds,
    speaker_split,
)

EMOTIONS = ("anger", "happiness", "neutral", "sadness")


def synth_manifest(corpus: str = "c1", language: str = "de", n_speakers: int = 10,
                   per_speaker: int = 8, emotions=EMOTIONS, seed: int = 0) -> pd.DataFrame:
    """A manifest of ``n_speakers`` (alternating f/m) with random emotions."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_speakers):
        for u in range(per_speaker):
            rows.append({
                "path": f"/data/{corpus}/s{s:02d}_{u:03d}.wav", "corpus": corpus,
                "language": language, "speaker": f"{corpus}:{s:02d}",
                "gender": "f" if s % 2 == 0 else "m", "label": "x",
                "emotion": str(rng.choice(emotions)), "duration_s": 1.0, "sample_rate": 16000,
            })
    return make_manifest(rows)


def pooled() -> pd.DataFrame:
    parts = [synth_manifest("emodb", "de", 10, seed=1), synth_manifest("emovo", "it", 6, seed=2),
             synth_manifest("ravdess", "en", 12, seed=3), synth_manifest("iemocap", "en", 8,
                                                                         seed=4)]
    return make_manifest(pd.concat(parts).to_dict("records"))


def assert_disjoint(parts: dict[str, pd.DataFrame]) -> None:
    """Independent re-check (not using the module under test)."""
    sets = {n: set(f["speaker"]) for n, f in parts.items()}
    for a, b in itertools.combinations(sets, 2):
        assert not sets[a] & sets[b], (a, b, sets[a] & sets[b])


def assert_covers(manifest: pd.DataFrame, parts) -> None:
    """Partitions are disjoint row subsets whose union is the whole manifest."""
    idx = np.concatenate([p.index.to_numpy() for p in parts])
    assert len(idx) == len(set(idx)) == len(manifest)


# --------------------------------------------------------------------------- leak check


def test_leak_check_names_speaker_and_partitions():
    m = synth_manifest(n_speakers=4)
    train = m[m.speaker.isin(["c1:00", "c1:01", "c1:02"])]
    test = m[m.speaker.isin(["c1:02", "c1:03"])]
    with pytest.raises(SpeakerLeakError, match=r"'c1:02' is in train, test"):
        check_speaker_independence({"train": train, "test": test})
    check_speaker_independence({"train": train, "test": m[m.speaker == "c1:03"]})


def test_leak_check_lists_several_and_split_refuses_leak():
    m = synth_manifest(n_speakers=4)
    with pytest.raises(SpeakerLeakError) as err:
        check_speaker_independence({"a": m, "b": m.iloc[0:0], "c": m[m.speaker != "c1:00"]})
    msg = str(err.value)
    assert "3 speaker(s)" in msg and "'c1:01' is in a, c" in msg and "c1:00" not in msg
    with pytest.raises(SpeakerLeakError, match="c1:00"):
        Split(m, m.iloc[0:0], m[m.speaker == "c1:00"])
    with pytest.raises(CorpusError, match="speaker"):
        check_speaker_independence({"x": m.drop(columns="speaker")})


# --------------------------------------------------------------------------- apportion


@pytest.mark.parametrize("n,ratios,expected", [
    (10, (0.6, 0.2, 0.2), [6, 2, 2]),
    (4, (0.6, 0.2, 0.2), [2, 1, 1]),
    (3, (0.6, 0.2, 0.2), [1, 1, 1]),
    (24, (0.6, 0.2, 0.2), [14, 5, 5]),
    (7, (8, 1, 1), [5, 1, 1]),
    (5, (1, 0, 1), [3, 0, 2]),
])
def test_apportion(n, ratios, expected):
    assert apportion(n, ratios) == expected


def test_apportion_properties_random():
    rng = np.random.default_rng(0)
    for _ in range(300):
        r = rng.random(3) * (rng.random(3) > 0.3)
        if r.sum() == 0:
            continue
        n = int(rng.integers(np.count_nonzero(r), 40))
        counts = apportion(n, r)
        assert sum(counts) == n
        assert all((c > 0) == (x > 0) for c, x in zip(counts, r, strict=True))
        quota = n * r / r.sum()
        if np.all(quota[r > 0] >= 1):  # no min-one fix needed: within one of the quota
            assert np.all(np.abs(np.array(counts) - quota) < 1)
    with pytest.raises(ProtocolError, match="at least one of 2"):
        apportion(2, (0.6, 0.2, 0.2))


# --------------------------------------------------------------------------- speaker_split


def test_speaker_split_ratios_strata_and_describe():
    m = synth_manifest(n_speakers=10)
    split = speaker_split(m, (0.6, 0.2, 0.2), seed=3)
    spk = split.speakers()
    assert [len(spk[p]) for p in ("train", "validation", "test")] == [6, 2, 2]
    # Stratified by gender: 5 f + 5 m -> 3 + 3 / 1 + 1 / 1 + 1.
    gender = m.groupby("speaker")["gender"].first()
    for part, n_each in zip(("train", "validation", "test"), (3, 1, 1), strict=True):
        assert (gender[spk[part]] == "f").sum() == n_each
    assert_covers(m, split)
    table = split.describe()
    assert table.loc["train", "utterances"] == len(split.train)
    assert table.loc["test", "speakers"] == 2
    assert table[list(EMOTIONS)].to_numpy().sum() == len(m)
    # Round trip through a single frame.
    again = Split.from_frame(split.to_frame())
    assert again.speakers() == spk


def test_speaker_split_property_over_seeds():
    m = pooled()
    n = m.speaker.nunique()
    for seed in range(25):
        for strat in ("gender", "corpus", None):
            split = speaker_split(m, (0.7, 0.1, 0.2), seed=seed, stratify_by=strat)
            assert_disjoint(split.partitions())
            assert_covers(m, split)
            sizes = [f.speaker.nunique() for f in split]
            assert sizes == apportion(n, (0.7, 0.1, 0.2))


def test_speaker_split_seed_reproducible_and_order_free():
    m = pooled()
    a = speaker_split(m, seed=7).speakers()
    assert speaker_split(m, seed=7).speakers() == a
    assert speaker_split(m.sample(frac=1.0, random_state=1), seed=7).speakers() == a
    others = [speaker_split(m, seed=s).speakers()["test"] for s in range(8)]
    assert len({tuple(o) for o in others}) > 1


def test_speaker_split_stratified_by_corpus_spreads_corpora():
    m = pooled()
    split = speaker_split(m, (0.5, 0.0, 0.5), seed=0, stratify_by="corpus")
    assert split.validation.empty and list(split.validation.columns) == list(m.columns)
    for corpus, n in m.groupby("corpus").speaker.nunique().items():
        in_test = split.test[split.test.corpus == corpus].speaker.nunique()
        assert abs(in_test - n / 2) <= 1, corpus


def test_speaker_split_errors():
    m = synth_manifest(n_speakers=2)
    with pytest.raises(ProtocolError, match="2 speaker.*need at least 3"):
        speaker_split(m)
    with pytest.raises(ProtocolError, match="ratios"):
        speaker_split(m, (0.5, -0.1, 0.6))
    with pytest.raises(ProtocolError, match="3 entries"):
        speaker_split(m, (0.5, 0.5))
    with pytest.raises(ProtocolError, match="stratify_by=None"):
        speaker_split(m.drop(columns="gender"), (1, 0, 1))
    bad = m.copy()
    bad.loc[0, "gender"] = "m"  # speaker c1:00 is otherwise 'f'
    with pytest.raises(ProtocolError, match="c1:00"):
        speaker_split(bad, (1, 0, 1))
    with pytest.raises(CorpusError, match="speaker"):
        speaker_split(m.drop(columns="speaker"))


# --------------------------------------------------------------------------- folds


def test_speaker_folds_structure_over_seeds():
    m = pooled()
    speakers = set(m.speaker)
    for seed in range(10):
        folds = speaker_folds(m, 5, seed=seed)
        assert len(folds) == 5
        tested = [s for f in folds for s in f.speakers()["test"]]
        assert sorted(tested) == sorted(speakers)  # each speaker tested exactly once
        sizes = [len(f.speakers()["test"]) for f in folds]
        assert max(sizes) - min(sizes) <= 1
        for i, fold in enumerate(folds):
            assert_disjoint(fold.partitions())
            assert_covers(m, fold)
            assert fold.speakers()["validation"] == folds[(i + 1) % 5].speakers()["test"]
    assert [f.speakers() for f in speaker_folds(m, 4, seed=2)] == \
        [f.speakers() for f in speaker_folds(m, 4, seed=2)]


def test_speaker_folds_without_validation_and_errors():
    m = synth_manifest(n_speakers=6)
    folds = speaker_folds(m, 2, validation=False)
    assert all(f.validation.empty for f in folds)
    assert all(len(f.speakers()["train"]) == 3 for f in folds)
    with pytest.raises(ProtocolError, match=">= 3"):
        speaker_folds(m, 2)
    with pytest.raises(ProtocolError, match="at least 7 speakers"):
        speaker_folds(m, 7)


def test_explicit_folds():
    m = synth_manifest(n_speakers=5)
    folds = explicit_folds(m, [
        {"train": ["c1:00", "c1:01"], "validation": ["c1:02"], "test": ["c1:03", "c1:04"]},
        {"test": ["c1:00"]},
    ])
    assert folds[0].speakers() == {"train": ["c1:00", "c1:01"], "validation": ["c1:02"],
                                   "test": ["c1:03", "c1:04"]}
    assert folds[1].speakers()["train"] == ["c1:01", "c1:02", "c1:03", "c1:04"]
    assert folds[1].validation.empty
    with pytest.raises(ProtocolError, match=r"fold 1 test.*\['c1:77', 'zz'\]"):
        explicit_folds(m, [{"test": ["c1:00"]}, {"test": ["c1:01", "zz", "c1:77"]}])
    with pytest.raises(SpeakerLeakError, match="'c1:01' is in fold 0 train, fold 0 test"):
        explicit_folds(m, [{"train": ["c1:00", "c1:01"], "test": ["c1:01"]}])
    with pytest.raises(ProtocolError, match="dev"):
        explicit_folds(m, [{"dev": ["c1:00"], "test": ["c1:01"]}])


# --------------------------------------------------------------------------- leave one out


def test_leave_one_language_out_covers_each_language_once():
    m = pooled()
    out = leave_one_out(m, by="language")
    assert [v for v, _ in out] == ["de", "en", "it"]
    for value, split in out:
        assert set(split.test.language) == {value}
        assert value not in set(split.train.language)
        assert len(split.train) + len(split.test) == len(m)
        assert split.validation.empty
    tested = pd.concat([s.test for _, s in out])
    assert sorted(tested.index) == list(m.index)


def test_leave_one_corpus_out_with_validation_over_seeds():
    m = pooled()
    for seed in range(10):
        out = leave_one_out(m, by="corpus", validation_ratio=0.2, seed=seed)
        assert [v for v, _ in out] == sorted(set(m.corpus))
        for value, split in out:
            assert_disjoint(split.partitions())
            assert_covers(m, split)
            n_train_side = m[m.corpus != value].speaker.nunique()
            assert split.validation.speaker.nunique() == apportion(n_train_side, (0.8, 0.2))[1]
            assert value not in set(split.validation.corpus)


def test_leave_one_out_detects_bilingual_speaker_and_errors():
    m = pooled()
    m.loc[m.speaker == "emodb:00", "language"] = "en"
    m.loc[m.index[m.speaker == "emodb:00"][0], "language"] = "de"  # speaks de and en
    with pytest.raises(SpeakerLeakError, match="emodb:00"):
        leave_one_out(m, by="language")
    with pytest.raises(ProtocolError, match="two values"):
        leave_one_out(synth_manifest(), by="language")
    with pytest.raises(CorpusError, match="accent"):
        leave_one_out(synth_manifest(), by="accent")


# --------------------------------------------------------------------------- few-shot


def test_few_shot_stratified_counts_and_rounding():
    m = synth_manifest(n_speakers=10, per_speaker=10)  # ~25 per emotion
    for k in (0, 1, 3, 4, 10, 23, 40):
        sub = few_shot_subset(m, k, seed=5)
        assert len(sub) == k
        counts = sub.emotion.value_counts().reindex(EMOTIONS, fill_value=0)
        assert counts.max() - counts.min() <= 1 if k else counts.sum() == 0
        assert set(sub.index) <= set(m.index)
    assert list(few_shot_subset(m, 0).columns) == list(m.columns)


def test_few_shot_small_class_gives_all_it_has():
    m = synth_manifest(n_speakers=4, per_speaker=10)
    rare = m.index[m.emotion == "anger"][2:]
    m = m.drop(index=rare)  # two anger utterances left
    sub = few_shot_subset(m, 20, seed=1)
    counts = sub.emotion.value_counts()
    assert counts["anger"] == 2
    others = counts.drop("anger")
    assert others.sum() == 18 and others.max() - others.min() <= 1


def test_few_shot_nested_deterministic_and_seeded():
    m = synth_manifest(n_speakers=10, per_speaker=10)
    for stratify in (True, False):
        for seed in range(5):
            prev = set()
            for k in (1, 5, 25, 50, 80):
                cur = set(few_shot_subset(m, k, seed=seed, stratify=stratify).path)
                assert prev <= cur
                prev = cur
            a = few_shot_subset(m, 25, seed=seed, stratify=stratify)
            assert a.path.tolist() == few_shot_subset(m, 25, seed=seed,
                                                      stratify=stratify).path.tolist()
            shuffled = m.sample(frac=1.0, random_state=seed)
            assert set(few_shot_subset(shuffled, 25, seed=seed, stratify=stratify).path) == \
                set(a.path)
        assert len({tuple(few_shot_subset(m, 8, seed=s, stratify=stratify).path)
                    for s in range(6)}) > 1


def test_few_shot_errors():
    m = synth_manifest(n_speakers=2, per_speaker=3)
    assert len(few_shot_subset(m, 6)) == 6
    with pytest.raises(ProtocolError, match="k=7.*only 6"):
        few_shot_subset(m, 7)
    with pytest.raises(ProtocolError, match="non-negative"):
        few_shot_subset(m, -1)


# --------------------------------------------------------------------------- cross-corpus


def test_cross_corpus_split_disjoint_over_seeds():
    src, tgt = synth_manifest("emodb", "de", 10, seed=1), synth_manifest("emovo", "it", 6)
    for seed in range(15):
        cc = cross_corpus_split(src, tgt, (0.5, 0.17, 0.33), seed=seed,
                                source_validation_ratio=0.2)
        assert isinstance(cc, CrossCorpusSplit)
        assert_disjoint(cc.partitions())
        assert_covers(src, [cc.source_train, cc.source_validation])
        assert_covers(tgt, [cc.target_train, cc.target_validation, cc.target_test])
        spk = cc.speakers()
        assert [len(spk[p]) for p in ("target_train", "target_validation", "target_test")] \
            == apportion(6, (0.5, 0.17, 0.33))
        assert len(spk["source_validation"]) == 2
    cc = cross_corpus_split(src, tgt, seed=3)
    assert len(cc.source_train) == len(src) and cc.source_validation.empty
    assert cc.describe().loc["target_test", "speakers"] == len(cc.speakers()["target_test"])


def test_cross_corpus_split_refuses_shared_speakers():
    m = synth_manifest("emodb", "de", 6)
    with pytest.raises(SpeakerLeakError, match="source_train, target_"):
        cross_corpus_split(m, m, seed=0)


def test_cross_corpus_split_source_test_share():
    src, tgt = synth_manifest("emodb", "de", 10, seed=1), synth_manifest("emovo", "it", 6)
    cc = cross_corpus_split(src, tgt, seed=2, source_ratios=(6, 2, 2))
    spk = cc.speakers()
    assert [len(spk[p]) for p in ("source_train", "source_validation", "source_test")] \
        == [6, 2, 2]
    assert_disjoint(cc.partitions())
    assert_covers(src, [cc.source_train, cc.source_validation, cc.source_test])
    # Without a source test share the piece is empty but present.
    assert cross_corpus_split(src, tgt, seed=2).source_test.empty
    with pytest.raises(ProtocolError, match="no source speakers to train on"):
        cross_corpus_split(src, tgt, source_ratios=(0, 1, 1))
