"""``emobridge corpora``: list readers, scan a corpus into a manifest, print statistics."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from emobridge.corpora import (
    LabelSet,
    available_readers,
    get_reader,
    manifest_stats,
    read_manifest,
    write_manifest,
)
from emobridge.errors import CorpusError

app = typer.Typer(help="Corpus readers and manifests.", no_args_is_help=True)
console = Console()


@app.command("list")
def list_readers() -> None:
    """List the corpus readers."""
    table = Table("name", "language", "description")
    for name, cls in available_readers().items():
        table.add_row(name, cls.language, cls.description)
    console.print(table)


@app.command()
def scan(
    name: str = typer.Argument(..., help="Reader name (see `emobridge corpora list`)."),
    path: Path = typer.Argument(..., help="The corpus folder."),
    output: Path | None = typer.Option(
        None, "-o", "--output",
        help="Manifest file: x.csv, x.parquet, or a stem for both (default: print only)."),
    strict: bool = typer.Option(False, "--strict", help="Fail on the first unusable file."),
    problems_file: Path | None = typer.Option(
        None, "--problems", help="Also write the unusable files and reasons to this CSV."),
) -> None:
    """Scan a corpus folder into a manifest; unusable files are listed with the reason."""
    reader = get_reader(name)(path)
    result = reader.scan(strict=strict, progress=True)
    df = result.manifest
    console.print(
        f"[bold]{name}[/]: {len(df)} utterances, {df['speaker'].nunique()} speakers, "
        f"{df['emotion'].nunique()} emotions, {df['duration_s'].sum() / 3600:.2f} h"
    )
    if result.n_ignored:
        console.print(f"ignored {result.n_ignored} non-audio files")
    if result.problems:
        console.print(f"[yellow]{len(result.problems)} unusable files:[/]")
        for p in result.problems:
            console.print(f"  {p.path}: {p.reason}", soft_wrap=True)
        if problems_file:
            from emobridge.fileio import atomic_path

            with atomic_path(problems_file) as tmp:
                result.problems_frame().to_csv(tmp, index=False)
    if output is not None:
        for written in write_manifest(df, output):
            console.print(f"wrote {written}")
    if df.empty:
        raise CorpusError(f"{name}: no usable utterances under {path}")


@app.command()
def stats(
    manifest: Path = typer.Argument(..., help="Manifest (.csv or .parquet)."),
    label_set: str | None = typer.Option(
        None, "--label-set", help="Map to a named label set first (4class, 5class, 7class...)."),
    map_: list[str] = typer.Option(
        [], "--map", help="Extra mapping FROM=TO (e.g. calm=neutral); repeatable."),
) -> None:
    """Print counts per corpus, language, emotion and speaker."""
    df = read_manifest(manifest)
    if label_set:
        mapping = {}
        for item in map_:
            if "=" not in item:
                raise CorpusError(f"--map {item!r}: expected FROM=TO")
            k, v = item.split("=", 1)
            mapping[k] = v
        df, report = LabelSet.named(label_set, mapping).apply(df)
        console.print(f"{label_set}: {report.summary()}")
    console.print(f"{len(df)} utterances, {df['speaker'].nunique()} speakers, "
                  f"{df['duration_s'].sum() / 3600:.2f} h")
    for col, counts in manifest_stats(df).items():
        table = Table(col, "utterances", "hours", title=f"per {col}")
        for key, row in counts.iterrows():
            table.add_row(str(key), str(int(row["utterances"])), f"{row['hours']:.3f}")
        console.print(table)
