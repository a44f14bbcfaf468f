"""``emobridge features``: extract features into a store, list / prune it, list extractors,
tune Whisper layers into a weight delta."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from emobridge.errors import FeatureError

app = typer.Typer(help="Feature extraction and the feature store.", no_args_is_help=True)
console = Console()


def _human(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.1f} TiB"  # pragma: no cover


def _echo(line: str) -> None:
    console.print(line, highlight=False)


@app.command()
def extract(
    manifest: Path = typer.Argument(..., help="Manifest (.csv or .parquet)."),
    extractor: str = typer.Option(..., "--extractor", "-e",
                                  help="Extractor spec, e.g. 'logmel:preset=nnpm'."),
    output: Path = typer.Option(..., "-o", "--output", help="Feature store folder."),
    workers: int = typer.Option(1, "--workers", "-j", help="Threads decoding audio."),
    batch_size: int = typer.Option(16, "--batch-size", help="Waveforms per extractor call."),
    device: str | None = typer.Option(None, "--device",
                                      help="cpu or cuda, for extractors that take a device."),
    skip_errors: bool = typer.Option(False, "--skip-errors",
                                     help="Count and list unusable files instead of failing."),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress",
        help="Show a progress bar (default: when stderr is a terminal)."),
    executor: str = typer.Option(
        "local", "--executor", help="local (this process) or ray (manifest split into "
        "shards, each extracted by a Ray task into the store; needs the ray extra)."),
    address: str | None = typer.Option(
        None, "--address", help="Ray cluster: auto, ray://HOST:PORT or HOST:PORT (default: "
        "a local Ray instance)."),
    shards: int | None = typer.Option(
        None, "--shards", min=1, help="Ray tasks (default: two per CPU of the cluster)."),
) -> None:
    """Extract features of every manifest row into the store (cached rows are reused)."""
    from emobridge.experiments.executors import make_executor
    from emobridge.features import FeatureStore, build_extractor, parse_spec
    from emobridge.features.distributed import extract_with_ray
    from emobridge.features.registry import takes_device

    make_executor(executor, 1, address)  # refuses unknown names, bad addresses, missing ray

    name, params = parse_spec(extractor)
    if device not in (None, "cpu") and not takes_device(name):
        raise FeatureError(f"extractor {name!r} has no device parameter: it runs on the CPU "
                           f"only, got --device {device}")
    ext = build_extractor({"name": name, "params": params}, device=device)
    store = FeatureStore(output)
    if progress is None:
        progress = sys.stderr.isatty()
    if executor == "ray":
        report = extract_with_ray(store, manifest, ext, address=address, shards=shards,
                                  batch_size=batch_size, skip_errors=skip_errors,
                                  log=_echo if progress else None)
    else:
        report = store.extract(manifest, ext, workers=workers, batch_size=batch_size,
                               progress=progress, skip_errors=skip_errors)
    console.print(report.summary(), soft_wrap=True)
    if report.failures:
        console.print(f"[yellow]{report.failed} files failed:[/]")
        for path, reason in report.failures:
            console.print(f"  {path}: {reason}", soft_wrap=True)
    console.print(f"extractor id: {ext.id}")


@app.command()
def tune(
    manifests: list[Path] = typer.Argument(..., help="Labelled manifests (.csv or .parquet)."),
    output: Path = typer.Option(..., "-o", "--output", help="Weight-delta file to write."),
    store: Path = typer.Option(..., "--store", help="Feature store for the frames."),
    label_set: str = typer.Option("4class", "--label-set", help="Label set name."),
    model: str = typer.Option("base", "--model", help="Whisper model (as the extractor's)."),
    level: str = typer.Option("rms", "--level", help="Audio level: rms, peak or none."),
    first: int = typer.Option(2, "--first", help="First tuned hidden state."),
    last: int = typer.Option(4, "--last", help="Last tuned hidden state."),
    rank: int = typer.Option(16, "--rank", min=0,
                             help="Rank of each matrix's stored change; 0: whole."),
    epochs: int = typer.Option(3, "--epochs", min=1),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    lr_layers: float = typer.Option(2e-5, "--lr-layers", min=0.0),
    lr_heads: float = typer.Option(1e-3, "--lr-heads", min=0.0),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress",
        help="Show progress bars (default: when stderr is a terminal)."),
) -> None:
    """Tune Whisper hidden states FIRST..LAST on labelled manifests; write their change as a
    weight delta for the whisper extractor's delta=<file>."""
    import time

    import pandas as pd

    from emobridge.corpora import LabelSet, read_manifest
    from emobridge.methods.recommended import RECIPE_FEATURES
    from emobridge.models.layer_delta import write_delta
    from emobridge.training.encoder_tuning import tune_on_manifest

    labels, parts = LabelSet.named(label_set), []
    for path in manifests:
        kept, report = labels.apply(read_manifest(path))
        console.print(f"{path}: {label_set}: {report.summary()}", markup=False, soft_wrap=True)
        parts.append(kept)
    manifest = pd.concat(parts, ignore_index=True)
    if output.is_dir():
        raise FeatureError(f"--output {output} is a folder; give the delta file's path")
    start = time.perf_counter()
    delta, settings = tune_on_manifest(
        manifest, store, labels.classes, model=model, level=level, first=first, last=last,
        rank=rank or None, epochs=epochs, batch_size=batch_size, lr_layers=lr_layers,
        lr_heads=lr_heads, seed=seed, device=device,
        progress=sys.stderr.isatty() if progress is None else progress)
    write_delta(output, delta, settings)
    console.print(f"tuned hidden states {first}-{last} on {len(manifest)} utterances in "
                  f"{time.perf_counter() - start:.0f} s; wrote {output} "
                  f"({_human(output.stat().st_size)})", soft_wrap=True)
    if model == "base" and level == "rms" and (first, last) == (2, 4):
        console.print(f"features: {RECIPE_FEATURES},delta={output.resolve()}", soft_wrap=True)


@app.command("list")
def list_store(store: Path = typer.Argument(..., help="Feature store folder.")) -> None:
    """List the extractor ids in a store with their entries and size."""
    from emobridge.features import FeatureStore

    if not store.is_dir():
        raise FeatureError(f"feature store {store} does not exist")
    df = FeatureStore(store).list()
    table = Table("extractor id", "spec", "entries", "shards", "size")
    for row in df.itertuples():
        table.add_row(row.extractor_id, row.spec, str(row.entries), str(row.shards),
                      _human(row.bytes))
    console.print(table)
    if df.empty:
        console.print("(empty store)")


@app.command()
def prune(
    store: Path = typer.Argument(..., help="Feature store folder."),
    extractor_id: str | None = typer.Option(
        None, "--extractor", help="Extractor id to prune (alone: delete all its features)."),
    keep: Path | None = typer.Option(
        None, "--keep", help="Manifest: keep only features of its audio."),
) -> None:
    """Delete features of an extractor, keep only a manifest's, compact shards, clean up."""
    from emobridge.features import FeatureStore

    if not store.is_dir():
        raise FeatureError(f"feature store {store} does not exist")
    report = FeatureStore(store).prune(extractor_id=extractor_id, keep_paths=keep)
    removed = ", ".join(report.removed_extractors) or "none"
    console.print(f"removed extractors: {removed}; entries removed: {report.removed_entries}; "
                  f"freed {_human(report.freed_bytes)}")


@app.command("extractors")
def list_extractors() -> None:
    """List the registered extractors."""
    from emobridge.features import available_extractors

    table = Table("name", "class", "description")
    for name, cls in available_extractors().items():
        doc = (inspect.getdoc(cls) or "").split("\n")[0]
        table.add_row(name, cls.__name__, doc)
    console.print(table)
