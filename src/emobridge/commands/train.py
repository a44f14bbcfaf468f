"""``emobridge train``: one source -> target cell from two manifests and a feature store.

Thin: parsing here; the cell is assembled and run by :mod:`emobridge.methods.runner`
exactly as a cell of ``emobridge run`` (same split, few-shot draw and validation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from emobridge.errors import ConfigError, EmobridgeError

console = Console()


def _ratios(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(r) for r in text.split(","))
    except ValueError:
        raise ConfigError(f"--target-ratios {text!r}: expected numbers like 0.6,0.2,0.2"
                          ) from None


def _few_shot(text: str) -> int | str:
    """``--target-labelled-k``: ``"25"`` -> 25 utterances, ``"150s"`` -> seconds of speech."""
    from emobridge.protocols import parse_few_shot

    value: int | str = int(text) if text.strip().isdigit() else text.strip()
    try:
        parse_few_shot(value)
    except EmobridgeError:
        raise ConfigError(f"--target-labelled-k {text!r}: expected a number of utterances "
                          "(25) or seconds of speech (150s)") from None
    return value


def _corpus_mapping(items: list[str] | None, what: str) -> dict[str, str | None]:
    """``FROM=TO`` pairs; an empty ``TO`` drops that emotion."""
    from emobridge.parsing import parse_pairs

    return {k: (v or None) for k, v in parse_pairs(items or [], what, typed=False).items()}


def _build(method: str, param: list[str], defaults: dict[str, Any]):
    """The method with ``-p`` parameters, plus the run's defaults where it takes them."""
    from emobridge.methods import available_methods, build_method
    from emobridge.parsing import parse_pairs

    methods = available_methods()
    if method not in methods:
        build_method(method)  # raises UnknownNameError listing the known methods
    cls = methods[method]
    params = parse_pairs(param, "--param")
    accepted = set(cls.param_names())
    for key, value in defaults.items():
        if key in accepted:
            params.setdefault(key, value)
    return cls, build_method(method, **params)


def _write_outputs(out: Path, model: Any, method: str, data: Any, result: dict[str, Any],
                   save_model: bool, extractor: str, label_set: str) -> None:
    from emobridge.fileio import atomic_path, write_json_atomic
    from emobridge.methods.runner import environment, predictions_table
    from emobridge.training import write_history_csv

    with atomic_path(out / "predictions.csv") as tmp:
        predictions_table(data, result.pop("test_proba")).to_csv(tmp, index=False)
    result.pop("source_pred")
    if result["history"]:
        write_history_csv(result["history"], out / "history.csv")
    if save_model and hasattr(model, "get_state"):
        _save_bundle(out / "model", model, data, result, extractor, label_set)
    write_json_atomic(out / "metrics.json", {"method": method, **result,
                                             "environment": environment()})


def _save_bundle(folder: Path, model: Any, data: Any, result: dict[str, Any], extractor: str,
                 label_set: str) -> None:
    """The trained method as a model bundle (``emobridge predict --model OUT/model``), with
    the source data as its memory when the features are vectors, so that ``emobridge
    adapt`` can adapt it (frame sequences would make the bundle as large as the store)."""
    from emobridge.inference.bundle import save_bundle, training_summary
    from emobridge.inference.memory import SourceMemory

    scores = {k: result["test"][k] for k in ("ua", "wa", "macro_f1", "n")
              if k in result["test"]}
    memory = None if data.source.is_sequence else SourceMemory.from_data(data.source)
    save_bundle(model, folder, extractor=extractor, label_set=label_set, memory=memory,
                training=training_summary(data.source, target=data.target_unlabelled,
                                          metrics={"target_test": scores}))


Opt = typer.Option
SourceOpt = Annotated[Path, Opt("--source", help="Source-language manifest.")]
TargetOpt = Annotated[Path, Opt("--target", help="Target-language manifest.")]
StoreOpt = Annotated[Path, Opt("--store", help="Feature store folder.")]
ExtractorOpt = Annotated[str | None, Opt(
    "--extractor", "-e", help="Extractor spec, e.g. 'logmel:preset=nnpm'; default: the "
    "method's own features (the recommended recipe's Whisper layers).")]
OutOpt = Annotated[Path, Opt("--out", "-o", help="Output folder (new, or one made by "
                             "emobridge train).")]
MethodOpt = Annotated[str, Opt("--method", "-m", help="Method name.")]
ParamOpt = Annotated[list[str] | None, Opt(
    "--param", "-p", help="Method parameter KEY=VALUE (JSON values); repeatable.")]
LabelSetOpt = Annotated[str, Opt("--label-set", help="Label set name.")]
MapOpt = Annotated[list[str] | None, Opt(
    "--map", help="Mapping FROM=TO into the label set, for both corpora; repeatable.")]
MapSourceOpt = Annotated[list[str] | None, Opt(
    "--map-source", help="The source corpus's own mapping FROM=TO (an empty TO drops the "
    "emotion), applied before --map; repeatable.")]
MapTargetOpt = Annotated[list[str] | None, Opt(
    "--map-target", help="The target corpus's own mapping FROM=TO, as --map-source.")]
KOpt = Annotated[str, Opt("--target-labelled-k",
                          help="Labelled target speech (few-shot): a number of utterances "
                          "(25) or seconds of speech (150s).")]
RatiosOpt = Annotated[str, Opt("--target-ratios",
                               help="Target speaker shares train,val,test.")]
ValidationOpt = Annotated[str, Opt(
    "--validation", help="Early-stopping data: source (held-out source speakers; reads no "
    "target label), target (target validation speakers), both or none.")]
SeedOpt = Annotated[int, Opt("--seed", help="Seed of the split and the method.")]
DeviceOpt = Annotated[str, Opt("--device", help="cpu, cuda, cuda:N, mps or auto.")]
ComputeOpt = Annotated[bool, Opt("--compute-missing",
                                 help="Extract features missing from the store.")]
ResumeOpt = Annotated[bool, Opt("--resume", help="Checkpoint every epoch in OUT/checkpoints "
                                "and continue an interrupted run from there.")]
SaveOpt = Annotated[bool, Opt("--save-model/--no-save-model",
                              help="Save the trained model as a bundle in OUT/model "
                              "(for emobridge predict).")]
ProgressOpt = Annotated[bool, Opt("--progress", help="Show a progress bar.")]


def train(
    source: SourceOpt, target: TargetOpt, store: StoreOpt, out: OutOpt,
    extractor: ExtractorOpt = None, method: MethodOpt = "recommended", param: ParamOpt = None,
    label_set: LabelSetOpt = "4class", map_: MapOpt = None, map_source: MapSourceOpt = None,
    map_target: MapTargetOpt = None, target_labelled_k: KOpt = "0",
    target_ratios: RatiosOpt = "0.6,0.2,0.2", validation: ValidationOpt = "source",
    seed: SeedOpt = 0, device: DeviceOpt = "auto", compute_missing: ComputeOpt = False,
    resume: ResumeOpt = False, save_model: SaveOpt = True, progress: ProgressOpt = False,
) -> None:
    """Train a method on the source, adapt to the target, evaluate on held-out target
    speakers (one cell of ``emobridge run``); write run.json, config.json, metrics.json,
    predictions.csv, history.csv and the model bundle OUT/model (for emobridge predict)
    to OUT."""
    from emobridge.fileio import prepare_output_dir, write_json_atomic
    from emobridge.methods.runner import (
        environment,
        fit_and_evaluate,
        load_experiment_data,
        needs_target_labels,
    )
    from emobridge.parsing import parse_pairs
    from emobridge.runtime import resolve_device

    used_device = resolve_device(device)
    defaults: dict[str, Any] = {"seed": seed, "device": used_device, "progress": progress,
                                "log_csv": str(out / "history.csv")}
    if resume:
        defaults.update(checkpoint_dir=str(out / "checkpoints"), resume=True)
    cls, model = _build(method, param or [], defaults)
    extractor = extractor or cls.default_features
    if extractor is None:
        raise ConfigError(f"method {method!r} has no default features: give -e SPEC")
    prepare_output_dir(out, marker="run.json", allow=(".lock",))
    k: int | str = "all" if needs_target_labels(cls) else _few_shot(target_labelled_k)
    data = load_experiment_data(
        source, target, store, extractor, label_set=label_set,
        mapping=parse_pairs(map_ or [], "--map", typed=False), seed=seed,
        target_ratios=_ratios(target_ratios),
        target_labelled_k=k, validation=validation,
        source_ratios=(0.8, 0.2, 0.0) if validation in ("source", "both") else (1.0, 0, 0),
        compute_missing=compute_missing,
        source_mapping=_corpus_mapping(map_source, "--map-source"),
        target_mapping=_corpus_mapping(map_target, "--map-target"), device=used_device)
    summary = data.summary()
    console.print(f"{method}: source {summary['source']['utterances']} utt, target train "
                  f"{summary['target_unlabelled']['utterances']}, validation "
                  f"{summary['validation']['utterances']}, test {summary['test']['utterances']}")
    write_json_atomic(out / "run.json", {"command": "train", "device": used_device,
                                         "environment": environment()})
    _write_config(out, model, data, {
        "command": "train", "method": method, "source": str(source), "target": str(target),
        "store": str(store), "extractor": extractor, "label_set": label_set,
        "target_labelled_k": k, "target_ratios": list(_ratios(target_ratios)),
        "validation": validation, "seed": seed, "device": used_device})
    result = fit_and_evaluate(model, data, seed=seed)
    _write_outputs(out, model, method, data, result, save_model, extractor, label_set)
    test = result["test"]
    console.print(f"test UA {test['ua']:.4f}  WA {test['wa']:.4f}  macro-F1 "
                  f"{test['macro_f1']:.4f}  ({test['n']} utterances) -> {out}")


def _write_config(out: Path, model: Any, data: Any, settings: dict[str, Any]) -> None:
    """``config.json``: the settings, the method's parameters, the extractor and the data."""
    from emobridge.features.registry import parse_spec
    from emobridge.fileio import write_json_atomic
    from emobridge.methods.runner import environment

    name, ext_params = parse_spec(settings["extractor"])
    write_json_atomic(out / "config.json", {
        **settings, "params": model.get_params(),
        "extractor": {"name": name, "params": ext_params, "id": data.extractor_id},
        "data": data.summary(), "environment": environment()})


def register(app: typer.Typer) -> None:
    """Add ``train`` as a top-level command."""
    app.command("train")(train)
