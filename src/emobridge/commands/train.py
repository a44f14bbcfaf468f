"""``emobridge train``: one source -> target experiment from manifests and a feature store.

Thin: parsing here, the work in :mod:`emobridge.methods.runner`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from emobridge.errors import ConfigError

console = Console()


def _parse_pairs(items: list[str], what: str, parse_json: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{what} {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        key = key.strip()
        if parse_json:
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError:
                out[key] = value
        else:
            out[key] = value.strip()
    return out


def train(
    source: Path = typer.Option(..., "--source", help="Source-language manifest."),
    target: Path = typer.Option(..., "--target", help="Target-language manifest."),
    store: Path = typer.Option(..., "--store", help="Feature store folder."),
    extractor: str = typer.Option(..., "--extractor", "-e",
                                  help="Extractor spec, e.g. 'logmel:preset=nnpm'."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    method: str = typer.Option("source_only", "--method", "-m", help="Method name."),
    param: list[str] = typer.Option(
        [], "--param", "-p", help="Method parameter KEY=VALUE (JSON values); repeatable."),
    label_set: str = typer.Option("4class", "--label-set", help="Label set name."),
    map_: list[str] = typer.Option([], "--map", help="Extra mapping FROM=TO; repeatable."),
    target_labelled_k: int | None = typer.Option(
        None, "--target-labelled-k", help="Labelled target utterances (few-shot)."),
    target_ratios: str = typer.Option(
        "0.6,0.2,0.2", "--target-ratios", help="Target speaker shares train,val,test."),
    validation: str = typer.Option(
        "target", "--validation",
        help="Early-stopping data: target (validation speakers), source (held-out source "
             "speakers) or none."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split and the method."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    compute_missing: bool = typer.Option(
        False, "--compute-missing", help="Extract features missing from the store."),
    resume: bool = typer.Option(
        False, "--resume", help="Checkpoint every epoch in OUT/checkpoints and continue an "
                                "interrupted run from there."),
    save_model: bool = typer.Option(True, "--save-model/--no-save-model",
                                    help="Save the trained model to OUT/model."),
    progress: bool = typer.Option(False, "--progress", help="Show a progress bar."),
) -> None:
    """Train a method on the source, adapt to the target, evaluate on held-out target
    speakers; write metrics.json, config.json, predictions.csv, history.csv to OUT."""
    from emobridge.features.registry import parse_spec
    from emobridge.fileio import atomic_path, write_json_atomic
    from emobridge.methods import available_methods, build_method
    from emobridge.methods.runner import environment, load_experiment_data, run_experiment
    from emobridge.training import write_history_csv

    methods = available_methods()
    if method not in methods:
        raise ConfigError(f"unknown method {method!r}; known: {', '.join(methods)}")
    params = _parse_pairs(param, "--param", parse_json=True)
    accepted = set(methods[method].param_names())
    defaults = {"seed": seed, "device": device, "progress": progress,
                "log_csv": str(out / "history.csv")}
    if resume:
        defaults.update(checkpoint_dir=str(out / "checkpoints"), resume=True)
    for key, value in defaults.items():
        if key in accepted:
            params.setdefault(key, value)
    try:
        model = build_method(method, **params)
    except ValueError as exc:  # unknown parameter: the registry says which are valid
        raise ConfigError(str(exc)) from None
    try:
        ratios = tuple(float(r) for r in target_ratios.split(","))
    except ValueError:
        raise ConfigError(f"--target-ratios {target_ratios!r}: expected numbers like "
                          "0.6,0.2,0.2") from None

    data = load_experiment_data(
        source, target, store, extractor, label_set=label_set,
        mapping=_parse_pairs(map_, "--map", parse_json=False), seed=seed, target_ratios=ratios,
        target_labelled_k=target_labelled_k, all_target_labels=(method == "supervised"),
        validation=validation, compute_missing=compute_missing)  # type: ignore[arg-type]
    summary = data.summary()
    console.print(f"{method}: source {summary['source']['utterances']} utt, target train "
                  f"{summary['target_unlabelled']['utterances']}, validation "
                  f"{summary['validation']['utterances']}, test {summary['test']['utterances']}")
    out.mkdir(parents=True, exist_ok=True)
    name, ext_params = parse_spec(extractor)
    write_json_atomic(out / "config.json", {
        "command": "train", "method": method, "params": model.get_params(),
        "source": str(source), "target": str(target), "store": str(store),
        "extractor": {"name": name, "params": ext_params, "id": data.extractor_id},
        "label_set": label_set, "target_labelled_k": target_labelled_k,
        "target_ratios": list(ratios), "validation": validation, "seed": seed,
        "data": summary, "environment": environment(),
    })
    result = run_experiment(model, data, seed=seed)
    predictions = result.pop("predictions")
    with atomic_path(out / "predictions.csv") as tmp:
        predictions.to_csv(tmp, index=False)
    if result["history"]:
        write_history_csv(result["history"], out / "history.csv")
    if save_model and hasattr(model, "save"):
        model.save(out / "model")
    write_json_atomic(out / "metrics.json", {"method": method, **result,
                                             "environment": environment()})
    test = result["test"]
    console.print(f"test UA {test['ua']:.4f}  WA {test['wa']:.4f}  macro-F1 "
                  f"{test['macro_f1']:.4f}  ({test['n']} utterances) -> {out}")


def register(app: typer.Typer) -> None:
    """Add ``train`` as a top-level command."""
    app.command("train")(train)
