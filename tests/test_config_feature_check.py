"""A config pairing a method with features it cannot use is refused when it loads, naming
``methods.N.features`` (issue "Reliability beyond a fixed list", item 1)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from emobridge.cli import main
from emobridge.errors import ConfigError
from emobridge.experiments.config import load_config, validate_config
from emobridge.features.registry import build_extractor
from emobridge.methods.base import build_method

WHISPER_ONE_LAYER = "whisper:backend=torch,layer=3,pooling=mean"  # 512 dims: not 3 blocks
WHISPER_FRAMES = "whisper:backend=torch,layer=3,pooling=none"
WHISPER_RECIPE = "whisper:backend=torch,layer=[2,3,4],pooling=mean,level=rms"


def _config(extractors: list, methods: list[dict]) -> dict:
    return {
        "corpora": [{"synthetic": {"id": "syn", "languages": ["aa", "bb"]}}],
        "protocol": {"domain": "language", "pairs": [{"source": "aa", "target": "bb"}]},
        "features": {"extractors": extractors},
        "methods": methods,
    }


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("feature, reason", [
    ("logmel", "got frame sequences"),
    (WHISPER_FRAMES, "got frame sequences"),
    (WHISPER_ONE_LAYER, "512 feature dims do not split into views=3"),
])
def test_recommended_on_unusable_features_is_refused_at_load(tmp_path, feature, reason):
    path = _write(tmp_path, _config([feature], [{"method": "recommended"}]))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}: methods.0.features: ")
    assert reason in lines[0]
    assert not (tmp_path / "runs").exists()  # refused before anything is written


def test_only_the_pairs_the_grid_runs_are_checked():
    data = _config(["logmel", {"name": "whisper", "label": "wb",
                               "params": {"backend": "torch", "layer": [2, 3, 4]}}],
                   [{"method": "source_only", "params": {"epochs": 1}},
                    {"method": "recommended", "features": ["wb"]}])
    cfg = validate_config(data, "c.yaml")  # recommended never meets logmel
    assert [m.features for m in cfg.methods] == [None, ["wb"]]
    data["methods"][1]["features"] = ["logmel"]
    with pytest.raises(ConfigError, match=r"^c\.yaml: methods\.1\.features: method "
                                          r"'recommended' cannot run on feature 'logmel'"):
        validate_config(data, "c.yaml")


def test_views_are_taken_into_account():
    data = _config([WHISPER_ONE_LAYER], [{"method": "recommended", "params": {"views": 2}}])
    assert validate_config(data, "c.yaml").methods[0].params == {"views": 2}  # 512 = 2 x 256
    data["methods"][0]["params"]["views"] = 5
    with pytest.raises(ConfigError, match="views=5"):
        validate_config(data, "c.yaml")


def test_valid_pairing_loads(tmp_path):
    path = _write(tmp_path, _config([WHISPER_RECIPE], [{"method": "recommended"}]))
    cfg = load_config(path)
    assert cfg.methods[0].method == "recommended"


def test_mmd_with_vgg_needs_frames():
    data = _config(["opensmile"], [{"method": "mmd"}])
    with pytest.raises(ConfigError, match=r"methods\.0\.features: .*backbone 'vgg' needs frame"):
        validate_config(data, "c.yaml")
    data["methods"][0]["params"] = {"backbone": "mlp"}
    validate_config(data, "c.yaml")
    validate_config(_config(["logmel"], [{"method": "mmd"}]), "c.yaml")


def test_one_line_per_bad_pair_and_each_names_its_method():
    data = _config(["logmel"], [{"method": "recommended"}, {"method": "mmd"},
                                {"name": "r2", "method": "recommended"}])
    with pytest.raises(ConfigError) as info:
        validate_config(data, "c.yaml")
    lines = str(info.value).splitlines()
    assert [line.split(": ")[1] for line in lines] == ["methods.0.features",
                                                       "methods.2.features"]


def test_device_of_the_run_does_not_matter(tmp_path):
    # the extractors are built on the CPU for the check: a CUDA config validates anywhere
    data = _config([WHISPER_ONE_LAYER], [{"method": "recommended"}])
    data["device"] = "cuda:7"
    with pytest.raises(ConfigError, match="methods.0.features"):
        validate_config(data, "c.yaml")


def test_bad_extractor_parameters_name_the_extractor():
    data = _config(["logmel:n_mels=0"], [{"method": "source_only"}])
    with pytest.raises(ConfigError, match=r"features\.extractors\.0: .*n_mels"):
        validate_config(data, "c.yaml")


def test_hook_matches_fit_time_check():
    method = build_method("recommended")
    method.check_features("vector", None)  # unknown width: only the kind is checked
    method.check_features("vector", 1536)
    for output, dim in (("frames", 80), ("vector", 512)):
        with pytest.raises(ConfigError):
            method.check_features(output, dim)
    assert build_method("source_only").check_features("frames", None) is None


def test_extractor_dims_known_without_a_model():
    assert build_extractor(WHISPER_RECIPE).dim == 3 * 512
    assert build_extractor("whisper:backend=torch,layer=3,pooling=meanstd").dim == 1024
    assert build_extractor("whisper:backend=torch,model=openai/whisper-small").dim is None
    assert build_extractor("logmel").dim is None


def test_cli_refuses_with_one_error_line(tmp_path, capsys):
    path = _write(tmp_path, _config(["logmel"], [{"method": "recommended"}]))
    assert main(["run", str(path)]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ") and "methods.0.features" in err[0]
    assert "Traceback" not in captured.err + captured.out
