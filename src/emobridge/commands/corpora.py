"""``emobridge corpora``: list readers, scan a corpus into a manifest, print statistics."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from emobridge.corpora import (
    LabelSet,
    available_readers,
    manifest_stats,
    read_manifest,
    write_manifest,
)
from emobridge.corpora.base import create_reader, reader_options
from emobridge.errors import ConfigError, CorpusError
from emobridge.fileio import atomic_path
from emobridge.parsing import parse_pairs

app = typer.Typer(help="Corpus readers and manifests.", no_args_is_help=True)
console = Console()


def parse_options(items: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` strings -> options; values parsed as JSON where possible, else strings.

    ``include_song=true`` gives ``True``, ``label_map={"wut":"anger"}`` a dict and
    ``language=de`` the string ``"de"``.
    """
    options = parse_pairs(items, "-O")
    for key in options:
        if not key.isidentifier():
            raise ConfigError(f"-O {key!r}: expected KEY=VALUE with KEY a reader option name")
    return options


def _format_options(cls: type) -> str:
    parts = []
    for key, default in reader_options(cls).items():
        if default is inspect.Parameter.empty or (key == "language" and default is None):
            parts.append(f"{key} (required)")
        else:
            parts.append(f"{key}={json.dumps(default)}")
    return ", ".join(parts)


@app.command("list")
def list_readers() -> None:
    """List the corpus readers, their language and options (-O KEY=VALUE)."""
    table = Table("name", "language", "description", "options")
    for name, cls in available_readers().items():
        table.add_row(name, cls.language or "(option)", escape(cls.description),
                      escape(_format_options(cls)))
    console.print(table)


def _print_emotion_counts(df) -> None:
    if len(df):
        counts = df["emotion"].value_counts().sort_index()
        console.print("emotions: " + ", ".join(f"{k} {v}" for k, v in counts.items()),
                      markup=False, highlight=False, soft_wrap=True)


def _relative(path: str, root: Path) -> str:
    if root.is_file():  # the table reader's root is its listing
        root = root.parent
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


@app.command()
def scan(
    name: str = typer.Argument(..., help="Reader name (see `emobridge corpora list`)."),
    path: Path = typer.Argument(..., help="The corpus folder (for `table`: the listing file)."),
    output: Path | None = typer.Option(
        None, "-o", "--output",
        help="Manifest file: x.csv, x.parquet, or a stem for both (only x.csv without "
        "pyarrow; default: print only)."),
    option: list[str] = typer.Option(
        [], "-O", "--option",
        help="Reader option KEY=VALUE (value parsed as JSON where possible); repeatable."),
    strict: bool = typer.Option(False, "--strict", help="Fail on the first unusable file."),
    problems_file: Path | None = typer.Option(
        None, "--problems", help="Also write the unusable files and reasons to this CSV."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Scan a corpus folder into a manifest; unusable files are listed with the reason."""
    reader = create_reader(name, path, parse_options(option))
    result = reader.scan(strict=strict, progress=progress)
    df = result.manifest
    console.print(
        f"[bold]{escape(reader.name)}[/]: {len(df)} utterances, {df['speaker'].nunique()} "
        f"speakers, {df['emotion'].nunique()} emotions, {df['duration_s'].sum() / 3600:.2f} h"
    )
    _print_emotion_counts(df)
    if result.n_ignored:
        console.print(f"ignored {result.n_ignored} non-audio files")
    for reason, count in sorted(result.skipped.items()):
        console.print(f"skipped {count} files: {reason}", markup=False)
    if result.problems:
        console.print(f"[yellow]{len(result.problems)} unusable files:[/]")
        for p in result.problems:
            console.print(f"  {_relative(p.path, reader.root)}: {p.reason}",
                          markup=False, highlight=False, soft_wrap=True)
        if problems_file:
            with atomic_path(problems_file) as tmp:
                result.problems_frame().to_csv(tmp, index=False)
            console.print(f"wrote {problems_file}", markup=False)
    if df.empty:
        raise CorpusError(f"{name}: no usable utterances under {path}")
    if output is not None:
        for written in write_manifest(df, output):
            console.print(f"wrote {written}", markup=False)


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
    if map_ and not label_set:
        raise ConfigError("--map needs --label-set")
    if label_set:
        mapping = parse_pairs(map_, "--map", typed=False)
        df, report = LabelSet.named(label_set, mapping).apply(df)
        console.print(f"{label_set}: {report.summary()}", markup=False, soft_wrap=True)
    console.print(f"{len(df)} utterances, {df['speaker'].nunique()} speakers, "
                  f"{df['duration_s'].sum() / 3600:.2f} h")
    _print_emotion_counts(df)
    for col, counts in manifest_stats(df).items():
        table = Table(col, "utterances", "hours", title=f"per {col}")
        for key, row in counts.iterrows():
            table.add_row(escape(str(key)), str(int(row["utterances"])), f"{row['hours']:.3f}")
        console.print(table)
