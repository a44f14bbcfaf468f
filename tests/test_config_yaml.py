"""The config loader refuses hostile YAML with one line (issue 10 B5, issue 18 items 1-2)."""

from __future__ import annotations

import pytest

from emobridge.cli import main
from emobridge.errors import ConfigError
from emobridge.experiments.config import MAX_YAML_DEPTH, expand_env, load_config, read_yaml


def test_alias_bomb_is_refused_quickly(tmp_path):
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 10):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size < 1500
    with pytest.raises(ConfigError, match=r"bomb\.yaml: the config expands to \d+ values"):
        load_config(path)


def test_small_aliases_and_merge_keys_still_work():
    data = read_yaml("base: &b {lr: 0.1, epochs: 3}\nm: {<<: *b, lr: 0.2}\nn: *b\n", "c.yaml")
    assert data["m"] == {"lr": 0.2, "epochs": 3}
    assert data["n"] == {"lr": 0.1, "epochs": 3}


@pytest.mark.parametrize("flow", [False, True])
def test_deep_nesting_is_refused(flow):
    depth = 3000
    text = "[" * depth + "]" * depth if flow else "".join(
        " " * i + f"k{i}:\n" for i in range(depth)) + " " * depth + "v: 1\n"
    with pytest.raises(ConfigError, match=f"nested deeper than {MAX_YAML_DEPTH} levels"):
        read_yaml(text, "deep.yaml")


def test_duplicate_key_is_refused():
    with pytest.raises(ConfigError, match="key 'a' is given twice"):
        read_yaml("a: 1\na: 2\n", "dup.yaml")


def test_env_expansion(monkeypatch):
    monkeypatch.setenv("EMOB_SET", "here")
    monkeypatch.delenv("EMOB_UNSET", raising=False)
    data = {"out": "runs/${EMOB_SET}", "x": ["${EMOB_UNSET:-fallback}", 3]}
    assert expand_env(data, "c.yaml") == {"out": "runs/here", "x": ["fallback", 3]}
    with pytest.raises(ConfigError, match=r"c\.yaml: output_dir: environment variable "
                                          r"EMOB_UNSET is not set"):
        expand_env({"output_dir": "runs/${EMOB_UNSET}"}, "c.yaml")


def test_cli_unset_variable_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("EMOB_UNSET", raising=False)
    path = tmp_path / "c.yaml"
    path.write_text("output_dir: runs/${EMOB_UNSET}\ncorpora: []\n")
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "EMOB_UNSET" in err[0] and "output_dir" in err[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("method, params, says", [
    ("source_only", "{domain_loss: none, domain_loss_params: {kernel: gaussian}}",
     "unknown options"),
    ("deep_wccn", "{smoothing: 2.0}", "smoothing must be in"),
    ("recommended", "{rounds: [0.5, 1.5]}", "rounds must be fractions"),
])
def test_method_rules_are_checked_when_the_config_loads(tmp_path, capsys, method, params,
                                                        says):
    """A value every type check accepts but the method refuses fails at load time, naming
    the method's key, before any corpus is read or feature extracted."""
    path = tmp_path / "c.yaml"
    path.write_text(
        "corpora:\n  - {id: syn, reader: synthetic, options: {languages: [aa, bb]}}\n"
        "protocol: {domain: language, pairs: all_pairs}\n"
        "features: {extractors: [logmel]}\n"
        f"methods:\n  - {{name: ok, method: source_only}}\n"
        f"  - {{name: bad, method: {method}, params: {params}}}\n"
        f"output_dir: {tmp_path / 'out'}\n")
    with pytest.raises(ConfigError, match=f"methods.1.params: .*{says}"):
        load_config(path)
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "methods.1.params" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seeds", ["[-1]", f"[{2**32}]", f"[{2**70}]"])
def test_seeds_out_of_range_fail_when_the_config_loads(tmp_path, seeds):
    path = tmp_path / "c.yaml"
    path.write_text(
        "corpora:\n  - {id: syn, reader: synthetic, options: {languages: [aa, bb]}}\n"
        "protocol: {domain: language, pairs: all_pairs}\n"
        "features: {extractors: [logmel]}\n"
        "methods: [{name: so, method: source_only}]\n"
        f"seeds: {seeds}\noutput_dir: {tmp_path / 'out'}\n")
    with pytest.raises(ConfigError, match="seeds must be in 0 .. 4294967295"):
        load_config(path)


def test_control_characters_are_one_line_config_errors(tmp_path):
    """Found by the fuzz tests: PyYAML's reader refused it before the error handling."""
    from emobridge.errors import ConfigError
    from emobridge.experiments.config import load_config

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("name: a\x1fb\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid YAML: unacceptable character") as err:
        load_config(cfg)
    assert "\n" not in str(err.value)
