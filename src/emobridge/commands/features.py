"""``emobridge features``: extract features into a store, list / prune it, list extractors."""

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
