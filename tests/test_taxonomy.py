import pandas as pd
import pytest

from emobridge.corpora.taxonomy import LabelSet, canonical_emotion
from emobridge.errors import LabelError


def _manifest(emotions):
    return pd.DataFrame({"path": [f"/x/{i}.wav" for i in range(len(emotions))],
                         "emotion": emotions})


def test_synonyms_and_unknown() -> None:
    assert canonical_emotion("Angry") == "anger"
    assert canonical_emotion("joy") == "happiness"
    with pytest.raises(LabelError, match="'wistful'"):
        canonical_emotion("wistful")


def test_apply_maps_and_counts_drops() -> None:
    ls = LabelSet.named("4class", {"calm": "neutral", "excited": "happiness"})
    kept, report = ls.apply(_manifest(["anger", "calm", "excitement", "fear", "fear", "sadness"]))
    assert kept["emotion"].tolist() == ["anger", "neutral", "happiness", "sadness"]
    assert kept["label_index"].tolist() == [0, 2, 1, 3]
    assert report.dropped == {"fear": 2}
    assert report.remapped == {"calm": 1, "excitement": 1}
    assert "dropped 2" in report.summary()


def test_error_policy_and_bad_mapping() -> None:
    with pytest.raises(LabelError, match="fear"):
        LabelSet.named("4class", policy="error").apply(_manifest(["anger", "fear"]))
    with pytest.raises(LabelError, match="not in the label set"):
        LabelSet.named("4class", {"calm": "boredom"})
    with pytest.raises(LabelError, match="unknown label set"):
        LabelSet.named("9class")
