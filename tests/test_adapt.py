"""Label-free adaptation to a user's recordings: source memory in bundles,
``Recognizer.adapt``, ``emobridge adapt`` and ``predict --adapt``, and their hostile cases."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from emobridge.cli import main
from emobridge.errors import EmobridgeError
from emobridge.inference.bundle import load_bundle
from emobridge.inference.recognizer import Recognizer
from tests.conftest import write_tone
from tests.inference_fixtures import (
    CLASSES,
    F0,
    build_adaptable_bundle,
    shared_adaptable_bundle,
    shared_tiny_bundle,
    user_folder,
)


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    return shared_adaptable_bundle(tmp_path_factory)


@pytest.fixture(scope="session")
def recordings(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user")
    return user_folder(folder), folder


def truth(paths):
    return np.asarray([p.name.split("_")[1] for p in paths])


def test_memory_round_trip_and_card(bundle):
    loaded = load_bundle(bundle)
    memory = loaded.load_memory()
    assert len(memory) == 48 and memory.features.shape == (48, 88)
    assert set(memory.speakers) == {"s0", "s1", "s2"} and set(memory.languages) == {"xx", "yy"}
    assert memory.speaker_embeddings is not None and memory.speaker_embeddings.shape == (48, 88)
    card = loaded.card
    assert card["source_memory"]["utterances"] == 48 and card["source_memory"]["bytes"] > 0
    assert card["source_memory"]["dtype"] == "float16" and "adaptation" not in card


def test_adapt_predict_table_determinism_and_original_unchanged(bundle, recordings):
    paths, _ = recordings
    rec = Recognizer.load(bundle)
    before = rec.predict(paths[0]).probabilities
    adapted, table = rec.adapt_predict(paths, speakers="none", seed=3)
    again = rec.adapt_predict(paths, speakers="none", seed=3)[1]
    assert list(table["path"]) == [str(p) for p in paths]
    assert {"speaker", "stats", "adaptation"} <= set(table.columns)
    assert set(table["adaptation"]) == {"transductive (48 files, speakers none)"}
    cols = [f"p_{c}" for c in CLASSES]
    np.testing.assert_array_equal(table[cols].to_numpy(), again[cols].to_numpy())
    assert rec.predict(paths[0]).probabilities == before and rec.adaptation is None
    info = adapted.adaptation
    assert info["files"] == 48 and info["speakers"]["mode"] == "none"
    assert len(info["file_list_sha256"]) == 16 and info["hours"] > 0
    assert info["pseudo_labels"][0]["round"] == 1
    assert set(info["pseudo_labels"][0]["predicted_shares"]) == set(CLASSES)
    # the shifted folder is learnable: adaptation must keep most labels right
    assert (table["emotion"].to_numpy() == truth(paths)).mean() >= 0.6


def test_saved_adapted_bundle_uses_domain_statistics(bundle, recordings, tmp_path):
    paths, _ = recordings
    rec = Recognizer.load(bundle)
    adapted = rec.adapt(paths, speakers="none")
    out = adapted.save(tmp_path / "adapted")
    reloaded = Recognizer.load(out)
    assert reloaded.adaptation["file_list_sha256"] == adapted.adaptation["file_list_sha256"]
    one = reloaded.predict(paths[5])
    assert one.stats == "adapted domain" and one.adaptation.startswith("adapted (48 files")
    np.testing.assert_allclose(list(one.probabilities.values()),
                               list(adapted.predict(paths[5]).probabilities.values()),
                               atol=1e-5)
    # the adapted domain's statistics differ from the training corpora's pooled ones
    assert not np.allclose(list(one.probabilities.values()),
                           list(rec.predict(paths[5]).probabilities.values()), atol=1e-3)
    assert "## Adaptation" in (out / "card.md").read_text()
    assert load_bundle(out).load_memory().features.shape == (48, 88)  # can adapt again


def test_given_speakers_and_auto_fallback(bundle, recordings):
    paths, _ = recordings
    rec = Recognizer.load(bundle)
    ids = [p.name.split("_")[0] for p in paths]
    given, table = rec.adapt_predict(paths, speakers=ids)
    assert set(table["speaker"]) == {"u0", "u1"} and set(table["stats"]) == {"per speaker"}
    # real speakers keep the recipe's association test; estimated voice groups do not
    assert "confound_association" not in given.adaptation["overrides"]
    with pytest.raises(EmobridgeError, match="3 ids for 48"):
        rec.adapt_predict(paths, speakers=ids[:3])
    one_voice = rec.adapt_predict(paths[:24], speakers="auto")  # one 'speaker' (u0)
    assert any("single group" in w for w in one_voice[1].attrs["warnings"])
    assert one_voice[0].adaptation["overrides"]["confound_association"] == 1.0


def test_guards_dominant_class_and_far_recordings(bundle, tmp_path):
    rec = Recognizer.load(bundle)
    mostly = [write_tone(tmp_path / "a" / f"{e}{i}.wav", 0.4, F0[e] * (1 + 0.004 * i),
                         seed=i + 50 * c)
              for c, (e, n) in enumerate(zip(CLASSES, (18, 2, 2, 2), strict=True))
              for i in range(n)]
    warnings = rec.adapt_predict(mostly, speakers="none")[1].attrs["warnings"]
    assert any("anger takes" in w and "of the predictions" in w for w in warnings)
    noise = []
    for i in range(12):  # white noise: nothing like the tones the model learnt
        path = tmp_path / "n" / f"{i}.wav"
        path.parent.mkdir(exist_ok=True)
        import soundfile as sf

        sf.write(path, np.random.default_rng(i).uniform(-0.9, 0.9, 6400), 16000)
        noise.append(path)
    warnings = rec.adapt_predict(noise, speakers="none")[1].attrs["warnings"]
    assert any("far from the training data" in w for w in warnings)
    assert any("only 12 recordings" in w for w in warnings)


def test_too_few_and_unreadable_recordings(bundle, recordings, tmp_path):
    paths, _ = recordings
    rec = Recognizer.load(bundle)
    with pytest.raises(EmobridgeError, match="at least 8 readable recordings"):
        rec.adapt_predict(paths[:1], speakers="none")
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF0000WAVEjunk")
    _, table = rec.adapt_predict([*paths[:12], broken], speakers="none")
    assert len(table) == 12 and list(table.attrs["errors"]) == [str(broken)]


def test_bundle_without_memory_and_tampered_memory(tmp_path_factory, tmp_path, recordings):
    paths, _ = recordings
    plain = Recognizer.load(shared_tiny_bundle(tmp_path_factory))
    with pytest.raises(EmobridgeError, match="no source memory"):
        plain.adapt(paths)
    copy = tmp_path / "copy"
    shutil.copytree(build_adaptable_bundle(tmp_path / "b", speaker_embeddings=False), copy)
    data = bytearray((copy / "memory.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (copy / "memory.safetensors").write_bytes(bytes(data))
    with pytest.raises(EmobridgeError, match="memory.safetensors: checksum mismatch"):
        Recognizer.load(copy)
    meta = json.loads((copy / "bundle.json").read_text())
    del meta["files"]["memory.safetensors"]  # a memory that escapes the checksums
    (copy / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(EmobridgeError, match="not among the bundle's checksummed files"):
        Recognizer.load(copy).adapt(paths)


def test_cli_adapt_then_predict_with_the_adapted_bundle(bundle, recordings, tmp_path, capsys):
    paths, folder = recordings
    out = tmp_path / "adapted"
    store = tmp_path / "store"
    assert main(["adapt", str(folder), "-m", str(bundle), "-o", str(out), "--speakers",
                 "none", "--store", str(store), "--no-progress"]) == 0
    assert "adapted to 48 files" in capsys.readouterr().out
    assert (out / "memory.safetensors").exists() and any(store.iterdir())
    csv = tmp_path / "one.csv"
    assert main(["predict", "-m", str(out), str(paths[0]), "-o", str(csv)]) == 0
    row = pd.read_csv(csv).iloc[0]
    assert row["stats"] == "adapted domain" and row["adaptation"].startswith("adapted (48")
    assert "adapted domain" in capsys.readouterr().out
    assert main(["model", "info", "-m", str(out), "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["adaptation"]["files"] == 48 and card["source_memory"]["utterances"] == 48


def test_cli_predict_adapt_with_a_speaker_column(bundle, recordings, tmp_path, capsys):
    paths, _ = recordings
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"path": [str(p) for p in paths],
                  "who": [p.name.split("_")[0] for p in paths]}).to_csv(manifest, index=False)
    out = tmp_path / "p.csv"
    assert main(["predict", "--adapt", "-m", str(bundle), str(manifest), "--speakers", "who",
                 "-o", str(out), "--no-progress"]) == 0
    table = pd.read_csv(out)
    assert len(table) == 48 and set(table["speaker"]) == {"u0", "u1"}
    assert "transductive (48 files, speakers given)" in capsys.readouterr().out


@pytest.mark.parametrize("args, message, code", [
    (["--speakers", "who"], "is not a .csv, .tsv or .parquet manifest", 1),
    (["--segment", "fixed"], "--adapt labels whole files", 1),
    (["--speakers", "nope", "MANIFEST"], "has no such column", 1),
])
def test_cli_adapt_usage_mistakes(bundle, recordings, tmp_path, capsys, args, message, code):
    paths, folder = recordings
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"path": [str(p) for p in paths]}).to_csv(manifest, index=False)
    target = [str(manifest) if a == "MANIFEST" else a for a in args]
    inputs = [] if "MANIFEST" in args else [str(folder)]
    assert main(["predict", "--adapt", "-m", str(bundle), *inputs, *target]) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("error:") == 1


def test_cli_adapt_hostile_folders(bundle, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["adapt", str(empty), "-m", str(bundle), "-o", str(tmp_path / "o")]) == 1
    assert "no audio files found" in capsys.readouterr().err
    one = tmp_path / "one"
    write_tone(one / "a.wav")
    assert main(["adapt", str(one), "-m", str(bundle), "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "at least 8 readable recordings" in err and err.count("error:") == 1
    silence = tmp_path / "silence"
    silence.mkdir()
    import soundfile as sf

    for i in range(10):
        sf.write(silence / f"{i}.wav", np.zeros(8000, dtype=np.float32), 16000)
    code = main(["adapt", str(silence), "-m", str(bundle), "-o", str(tmp_path / "s"),
                 "--speakers", "none"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code == 1 and err.count("error:") == 1 or "warning:" in err
    assert not (tmp_path / "o").exists()


def test_confounded_given_speakers_fall_back_to_the_folder_statistics(bundle, recordings):
    paths, _ = recordings
    rec = Recognizer.load(bundle)
    by_emotion = [p.name.split("_")[1] for p in paths]  # each 'speaker' shows one emotion
    adapted, table = rec.adapt_predict(paths, speakers=by_emotion)
    assert any("look confounded with emotions" in w for w in table.attrs["warnings"])
    assert adapted.adaptation["speakers"]["fallback"] == "speakers confounded with emotions"
    assert set(table["stats"]) == {"domain"} and set(table["speaker"]) == {""}
    plain = rec.adapt_predict(paths, speakers="none")[1]
    cols = [f"p_{c}" for c in CLASSES]
    np.testing.assert_allclose(table[cols].to_numpy(), plain[cols].to_numpy(), atol=1e-9)


def test_cli_adapt_refuses_a_folder_of_other_files_before_reading_audio(bundle, recordings,
                                                                         tmp_path, capsys):
    _, folder = recordings
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(["adapt", str(folder), "-m", str(bundle), "-o", str(mine)]) == 1
    captured = capsys.readouterr()
    assert "not empty and not made by emobridge" in captured.err
    assert "adapted to" not in captured.out and (mine / "notes.txt").read_text() == "keep"


def test_cli_adapt_completes_a_save_killed_before_its_bundle_json(bundle, recordings,
                                                                   tmp_path, capsys):
    _, folder = recordings
    out = tmp_path / "adapted"
    assert main(["adapt", str(folder), "-m", str(bundle), "-o", str(out),
                 "--speakers", "none"]) == 0
    (out / "bundle.json").unlink()  # what a kill between the arrays and bundle.json leaves
    (out / ".run.json.abcd1234.tmp").write_text("{")  # and a temporary file of a kill
    capsys.readouterr()
    assert main(["adapt", str(folder), "-m", str(bundle), "-o", str(out),
                 "--speakers", "none"]) == 0, capsys.readouterr().err
    assert Recognizer.load(out).adaptation is not None


@pytest.mark.parametrize("damage, message", [
    ("nan", "non-finite feature values"),
    ("index", "index out of range"),
    ("labels", "labels outside the 4 classes"),
])
def test_crafted_memory_with_valid_checksums_is_refused(tmp_path, recordings, damage, message):
    """A memory rewritten with matching checksums (a crafted bundle) is still checked."""
    from safetensors.numpy import load_file, save_file

    from emobridge.fileio import sha256_file

    paths, _ = recordings
    folder = build_adaptable_bundle(tmp_path / "b", speaker_embeddings=False)
    arrays = load_file(str(folder / "memory.safetensors"))
    if damage == "nan":
        arrays["features"][3, 5] = np.nan
    elif damage == "index":
        arrays["speaker_index"][0] = 999
    else:
        arrays["labels"][0] = 7
    save_file(arrays, str(folder / "memory.safetensors"))
    meta = json.loads((folder / "bundle.json").read_text())
    meta["files"]["memory.safetensors"] = sha256_file(folder / "memory.safetensors")
    (folder / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(EmobridgeError, match=message):
        Recognizer.load(folder).adapt(paths, speakers="none")
