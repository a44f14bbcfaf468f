"""Every config shipped in ``configs/`` validates (names, parameters, extractor settings)."""

from pathlib import Path

import pytest

from emobridge.experiments.config import load_config
from emobridge.features.registry import build_extractor

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_are_shipped() -> None:
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.methods and cfg.seeds
    for spec in cfg.features.specs():
        if spec.name in ("logmel", "synthetic"):  # cheap to build: checks every setting
            build_extractor(spec.as_spec())
