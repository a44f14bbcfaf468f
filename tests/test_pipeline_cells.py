"""One cell assembly for `run` and `train`, names that become folders, leaks by audio
content, output folders, missing classes, skipped files, per-corpus label mappings."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from emobridge.cli import main
from emobridge.errors import ConfigError, EmobridgeWarning, OutputError, SpeakerLeakError
from emobridge.experiments import load_config, run_experiment, validate_config
from emobridge.experiments.runner import expand_cells, expand_tasks, load_corpora
from emobridge.methods import EmotionData, build_method
from emobridge.methods.runner import (
    apply_corpus_mapping,
    cell_data,
    fit_and_evaluate,
    needs_target_labels,
)
from emobridge.protocols import assemble_cell
from emobridge.synthetic import generate_corpus
from tests.conftest import write_tone
from tests.test_cli_train import _args as train_args
from tests.test_cli_train import experiment as train_experiment  # noqa: F401 - a fixture

EXTRACTOR = ("logmel:preset=byols,n_mels=16,n_fft=512,win_length_samples=400,"
             "hop_length_samples=320")
METHOD = {"name": "src", "method": "source_only", "target_labels": "none",
          "params": {"epochs": 1, "batch_size": 8, "backbone": "attention",
                     "backbone_params": {"hidden_dim": 8, "attention_dim": 4}}}


def _cfg(tmp: Path, **overrides) -> dict:
    """A one-cell grid over a small synthetic corpus (aa -> bb)."""
    cfg = {
        "name": "cells",
        "corpora": [{"id": "syn", "reader": "synthetic", "path": str(tmp / "corpus"),
                     "options": {"speakers_per_language": 3,
                                 "utterances_per_speaker_per_emotion": 1, "seed": 2}}],
        "protocol": {"domain": "language", "pairs": [{"source": "aa", "target": "bb"}],
                     "target_split": {"train": 1, "validation": 1, "test": 1}},
        "features": {"extractors": [EXTRACTOR], "store": str(tmp / "store")},
        "methods": [METHOD], "seeds": [0], "device": "cpu",
        "report": {"embeddings": False, "tsne": False, "bootstrap": 0, "max_points": 10},
    }
    cfg.update(overrides)
    return cfg


def _manifest(n_speakers: int = 4, language: str = "de", corpus: str = "c") -> pd.DataFrame:
    rows = [{"path": f"/nowhere/{corpus}/{s}_{e}_{i}.wav", "speaker": f"{corpus}:{s}",
             "emotion": e, "gender": "f" if s % 2 else "m", "language": language,
             "corpus": corpus}
            for s in range(n_speakers) for e in ("anger", "neutral") for i in range(3)]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------- one assembly


def test_assemble_cell_pool_validation_and_k() -> None:
    src, tgt = _manifest(5, "de", "s"), _manifest(5, "it", "t")
    rows = assemble_cell(src, tgt, k=4, seed=1, source_ratios=(0.8, 0.2, 0))
    pool = rows.split.target_train
    # The k labelled utterances come from the pool and stay in it (labels hidden there).
    assert len(rows.labelled) == 4 and set(rows.labelled.index) <= set(pool.index)
    assert rows.unlabelled.index.equals(pool.index)
    # The default validation reads no target label: only held-out source speakers.
    assert set(rows.validation["language"]) == {"de"} and not rows.validation.empty
    assert not set(rows.validation["speaker"]) & set(rows.split.source_train["speaker"])
    everything = assemble_cell(src, tgt, k="all", validation="target", seed=1)
    assert everything.labelled.index.equals(everything.split.target_train.index)
    assert set(everything.validation["language"]) == {"it"}
    # Same inputs, same rows: run's cells and train's one cell cannot drift apart.
    again = assemble_cell(src, tgt, k=4, seed=1, source_ratios=(0.8, 0.2, 0))
    assert again.labelled.index.equals(rows.labelled.index)


def test_method_declares_target_label_needs() -> None:
    from emobridge.methods import available_methods

    methods = available_methods()
    assert needs_target_labels(methods["supervised"])
    assert not needs_target_labels(methods["source_only"])
    assert not needs_target_labels(methods["dann"])


# ---------------------------------------------------------------------- path components


@pytest.mark.parametrize("patch, key", [
    ({"features": {"extractors": [{"name": "logmel", "label": "../../../../x"}]}},
     "features.extractors.0.label"),
    ({"corpora": [{"id": "a", "reader": "emodb", "path": "e", "language": "../../x"}]},
     "corpora.0.language"),
    ({"corpora": [{"id": "s", "reader": "synthetic", "options": {"languages": ["aa", "../b"]}}]},
     "corpora.0"),
])
def test_names_that_become_folders_are_validated(tmp_path: Path, patch: dict, key: str) -> None:
    cfg = {"corpora": [{"synthetic": {}}], "features": {"extractors": ["logmel"]},
           "methods": [{"method": "source_only"}], "protocol": {"domain": "language"}}
    cfg.update(patch)
    with pytest.raises(ConfigError) as info:
        validate_config(cfg, "x.yaml", tmp_path)
    message = str(info.value)
    assert key in message and "../" in message and "\n" not in message


def test_duplicate_cell_ids_and_reader_languages_refused(tmp_path: Path) -> None:
    cfg = validate_config(
        {"corpora": [{"synthetic": {}}], "protocol": {"domain": "language"},
         "features": {"extractors": [{"name": "logmel", "label": "logmel1"}, "logmel",
                                     "logmel"]},
         "methods": [{"method": "source_only"}]}, "x.yaml", tmp_path)
    manifest = pd.DataFrame({"language": ["aa", "bb"], "corpus": ["s", "s"]})
    tasks = expand_tasks(cfg, manifest)
    with pytest.raises(ConfigError, match="two cells share the id 'aa-to-bb__logmel1"):
        expand_cells(cfg, tasks)
    # A language code read from the data becomes part of folder names too.
    with pytest.raises(ConfigError, match=r"language '\.\./up' must be"):
        expand_tasks(cfg, pd.DataFrame({"language": ["aa", "../up"], "corpus": ["s", "s"]}))


def test_all_pairs_and_leave_one_out_takes_every_domain_present(tmp_path: Path) -> None:
    cfg = validate_config(
        {"corpora": [{"synthetic": {}}], "features": {"extractors": ["logmel"]},
         "protocol": {"domain": "language", "pairs": "all_pairs_and_leave_one_out"},
         "methods": [{"method": "source_only"}]}, "x.yaml", tmp_path)
    three = pd.DataFrame({"language": ["aa", "bb", "cc"], "corpus": ["s"] * 3})
    tasks = expand_tasks(cfg, three)
    assert len(tasks) == 6 + 3
    assert {t.target for t in tasks if len(t.sources) == 2} == {"aa", "bb", "cc"}
    two = expand_tasks(cfg, three.head(2))  # with two domains leave-one-out = the pairs
    assert [(t.sources, t.target) for t in two] == [(("aa",), "bb"), (("bb",), "aa")]


# ---------------------------------------------------------------------- leaks by content


def test_same_audio_under_two_corpus_ids_is_a_leak(tmp_path: Path) -> None:
    paths = []
    for s in range(3):
        for e, f0 in (("anger", 300.0), ("neutral", 120.0)):
            paths.append((write_tone(tmp_path / "a" / f"{s}_{e}.wav", 0.1, f0, seed=s), s, e))
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # the same corpus, copied

    def frame(folder: str, cid: str) -> pd.DataFrame:
        return pd.DataFrame([{"path": str(tmp_path / folder / p.name), "speaker": f"{cid}:{s}",
                              "emotion": e, "gender": "", "language": cid, "corpus": cid}
                             for p, s, e in paths])

    with pytest.raises(SpeakerLeakError, match=r"same audio.*a/0_anger\.wav.*b/0_anger\.wav"):
        assemble_cell(frame("a", "one"), frame("b", "two"), stratify_by=None)
    # Through a symlink the run refuses the corpus at load time.
    (tmp_path / "link").symlink_to(tmp_path / "a")
    manifest = frame("a", "one")
    manifest.assign(duration_s=0.1, sample_rate=16000, label=manifest["emotion"]).to_csv(
        tmp_path / "one.csv", index=False)
    other = frame("link", "two")
    other.assign(duration_s=0.1, sample_rate=16000, label=other["emotion"]).to_csv(
        tmp_path / "two.csv", index=False)
    cfg = validate_config(
        {"corpora": [{"id": "one", "reader": "manifest", "path": str(tmp_path / "one.csv")},
                     {"id": "two", "reader": "manifest", "path": str(tmp_path / "two.csv")}],
         "features": {"extractors": ["logmel"]}, "methods": [{"method": "source_only"}]},
        "x.yaml", tmp_path)
    with pytest.raises(ConfigError, match="both contain"):
        load_corpora(cfg, log=lambda line: None)


# ---------------------------------------------------------------------- output folders


@pytest.mark.parametrize("value", ["", ".", "  "])
def test_output_dir_must_be_dedicated(tmp_path: Path, value: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_cfg(tmp_path, output_dir=value)))
    with pytest.raises(ConfigError, match="output_dir"):
        load_config(path)


def test_output_dir_config_folder_and_file_refused(tmp_path: Path, capsys) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_cfg(tmp_path, output_dir=str(tmp_path))))
    with pytest.raises(ConfigError, match="config's own folder"):
        load_config(path)
    (tmp_path / "results.txt").write_text("mine")
    path.write_text(yaml.safe_dump(_cfg(tmp_path, output_dir="results.txt")))
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err
    assert "results.txt: exists and is not a folder" in err and "Traceback" not in err
    assert (tmp_path / "results.txt").read_text() == "mine"
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.md").write_text("keep")
    with pytest.raises(OutputError, match="not made by emobridge"):
        run_experiment(load_config(path, output_dir=tmp_path / "theirs"), log=None)
    assert main(["train", "--source", "s.csv", "--target", "t.csv", "--store", "st",
                 "--extractor", "logmel", "-o", str(tmp_path / "results.txt")]) == 1
    assert "exists and is not a folder" in capsys.readouterr().err


# ---------------------------------------------------------------------- missing classes


def test_missing_test_classes_warned_and_recorded() -> None:
    rng = np.random.default_rng(0)
    classes = ("anger", "happiness", "neutral", "sadness")
    src, tgt = _manifest(4, "de", "s"), _manifest(4, "it", "t")  # only anger and neutral
    rows = assemble_cell(src, tgt, seed=0, validation="none")
    with pytest.warns(EmobridgeWarning, match="source training speakers have no happiness, "
                      "sadness"):
        data = cell_data(rows, lambda f: [rng.standard_normal(6).astype(np.float32)
                                          for _ in range(len(f))], classes)
    method = build_method("source_only", epochs=1, device="cpu", seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fit_and_evaluate(method, data, bootstrap_resamples=0)
    assert result["missing_classes"] == ["happiness", "sadness"]
    assert any(issubclass(w.category, EmobridgeWarning) and "happiness, sadness" in
               str(w.message) for w in caught)
    assert isinstance(data.test, EmotionData)


# ---------------------------------------------------------------------- per-corpus mapping


def test_per_corpus_mapping_before_the_global_one(tmp_path: Path) -> None:
    frames = {}
    for cid in ("tur", "rav"):
        rows = [{"path": str(write_tone(tmp_path / cid / f"{s}_{e}.wav", 0.05, 100 + s,
                                        seed=s)),
                 "speaker": str(s), "emotion": e, "label": e, "gender": "", "language": cid,
                 "corpus": cid, "duration_s": 0.05, "sample_rate": 16000}
                for s in range(2) for e in ("calm", "anger", "neutral")]
        frames[cid] = tmp_path / f"{cid}.csv"
        pd.DataFrame(rows).to_csv(frames[cid], index=False)
    cfg = validate_config(
        {"corpora": [{"id": "tur", "reader": "manifest", "path": str(frames["tur"]),
                      "mapping": {"calm": "neutral"}},
                     {"id": "rav", "reader": "manifest", "path": str(frames["rav"])}],
         "features": {"extractors": ["logmel"]}, "methods": [{"method": "source_only"}]},
        "x.yaml", tmp_path)
    lines: list[str] = []
    manifest, _, summary = load_corpora(cfg, log=lines.append)
    counts = manifest.groupby(["corpus", "emotion"]).size().to_dict()
    assert counts[("tur", "neutral")] == 4 and counts[("rav", "neutral")] == 2
    assert "dropped 2 outside the label set (calm: 2)" in summary  # rav's calm only
    assert any("tur: corpus mapping calm -> neutral: 2" in line for line in lines)
    dropped, note = apply_corpus_mapping(pd.read_csv(frames["rav"]), {"calm": None})
    assert "calm" not in set(dropped["emotion"]) and note.endswith("calm -> dropped: 2")


# ---------------------------------------------------------------------- one run


@pytest.fixture(scope="module")
def broken_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("skip")
    generate_corpus(root / "corpus", speakers_per_language=3,
                    utterances_per_speaker_per_emotion=1, seed=2)
    return root


def test_skip_errors_counts_unreadable_files_and_records_device(broken_corpus: Path,
                                                                capsys) -> None:
    root = broken_corpus
    manifest = pd.read_csv(root / "corpus" / "manifest.csv")
    victim = Path(manifest.loc[manifest["language"] == "aa", "path"].iloc[0])
    victim.write_bytes(victim.read_bytes()[:30])  # truncated inside the header
    manifest.to_csv(root / "m.csv", index=False)
    cfg = _cfg(root, corpora=[{"id": "syn", "reader": "manifest", "path": str(root / "m.csv")}],
               output_dir=str(root / "out"), device="auto")
    path = root / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err
    assert victim.name in err and "Traceback" not in err
    assert main(["run", str(path), "--skip-errors"]) == 0
    assert "1 unreadable audio file(s) skipped" in capsys.readouterr().out
    out = root / "out"
    info = json.loads((out / "run.json").read_text())
    assert info["n_skipped_files"] == 1 and info["device"] == "cpu"
    assert list(pd.read_csv(out / "skipped_files.csv")["path"]) == [str(victim)]
    cell = json.loads(next((out / "cells").glob("*/metrics.json")).read_text())
    assert cell["skipped_files"] == 1 and cell["device"] == "cpu"
    assert "missing_classes" in cell
    assert str(victim) not in set(pd.read_csv(out / "manifest.csv")["path"])
    assert "1 audio file(s) skipped" in (out / "run.log").read_text()


def test_train_maps_each_corpus_and_records_missing_classes(
        train_experiment,  # noqa: F811 - the imported fixture
        capsys,
) -> None:
    root, src, tgt = train_experiment
    out = root / "mapped"
    assert main(train_args(root, src, tgt, out, "--map-target",
                           "neutral=", "--map-source", "sadness=neutral")) == 0
    # the CLI prints an EmobridgeWarning as one line
    assert re.search(r"^warning: .*no utterance of class.*neutral", capsys.readouterr().err,
                     re.MULTILINE)
    config = json.loads((out / "config.json").read_text())
    mapping = config["data"]["label_mapping"]
    assert "neutral -> dropped: 10" in mapping["target"]
    assert "sadness -> neutral: 10" in mapping["source"]
    assert json.loads((out / "metrics.json").read_text())["missing_classes"] == ["neutral"]
    assert json.loads((out / "run.json").read_text())["device"] == "cpu"


def test_source_classes_are_checked_when_the_cell_is_assembled():
    import warnings

    from emobridge.errors import ConfigError, EmobridgeWarning
    from emobridge.methods import EmotionData
    from emobridge.methods.runner import _check_source_classes

    classes = ("anger", "happiness", "neutral", "sadness")

    def data(labels):
        n = len(labels)
        return EmotionData([np.zeros(2, np.float32)] * n, labels, ["s"] * n, ["aa"] * n,
                           [f"{i}.wav" for i in range(n)], classes)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check_source_classes(data([0, 1, 2, 3]), classes)  # all there: silent
    with pytest.warns(EmobridgeWarning, match="no neutral, sadness utterances"):
        _check_source_classes(data([0, 1, 0]), classes)
    with pytest.raises(ConfigError, match=r"single emotion \(happiness\): nothing to learn"):
        _check_source_classes(data([1, 1]), classes)
