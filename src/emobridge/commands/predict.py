"""``emobridge predict [--model BUNDLE] PATH...``: label audio files with a model bundle
(the default model without ``--model``)."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from emobridge.commands.adapt import SeedOpt, SpeakersOpt, StoreOpt
from emobridge.errors import ConfigError, EmobridgeError, EmobridgeWarning
from emobridge.fileio import (
    check_regular_file,
    parquet_available,
    parquet_engine,
    parquet_missing,
)

console = Console()
err_console = Console(stderr=True)

MANIFEST_SUFFIXES = (".csv", ".tsv", ".parquet", ".txt")
OUTPUT_SUFFIXES = (".csv", ".json", ".parquet")


def _manifest_frame(path: Path) -> tuple[list[str], Any]:
    """Paths listed in a manifest (a table with a ``path`` column, or a text file with one
    path per line; relative paths are taken from the manifest's folder) and the table's
    rows for them (``None`` for a text file)."""
    import pandas as pd

    suffix = path.suffix.lower()
    frame = None
    try:
        check_regular_file(path)
        if suffix == ".txt":
            items = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            items = [x for x in items if x and not x.startswith("#")]
        else:
            if suffix == ".parquet":
                with parquet_engine(f"manifest {path}", ConfigError,
                                    "a .csv, .tsv or .txt list"):
                    frame = pd.read_parquet(path)
            else:
                frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str,
                                    keep_default_na=False)
            if "path" not in frame.columns:
                raise ConfigError(f"manifest {path}: no 'path' column (columns: "
                                  f"{', '.join(map(str, frame.columns[:8]))})")
            frame = frame[[bool(str(x).strip()) for x in frame["path"]]]
            items = [str(x) for x in frame["path"]]
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"manifest {path}: cannot be read ({exc})") from None
    return [x if os.path.isabs(x) or os.path.exists(x) else str(path.parent / x)
            for x in items], frame


def collect_speakers(inputs: list[Path], column: str) -> tuple[list[str], list[str]]:
    """Files and their speaker ids from the ``column`` of manifests (``--speakers
    COLUMN``); any other input, or a row without a speaker, raises :class:`ConfigError`."""
    paths: list[str] = []
    speakers: list[str] = []
    for item in inputs:
        if not (item.suffix.lower() in MANIFEST_SUFFIXES and item.suffix.lower() != ".txt"
                and item.is_file()):
            raise ConfigError(f"--speakers {column}: speaker ids come from a manifest column, "
                              f"and {item} is not a .csv, .tsv or .parquet manifest (use "
                              "--speakers auto or none for files and folders)")
        found, frame = _manifest_frame(item)
        if column not in frame.columns:
            raise ConfigError(f"--speakers {column}: manifest {item} has no such column "
                              f"(columns: {', '.join(map(str, frame.columns[:8]))})")
        ids = [str(x).strip() for x in frame[column]]
        if any(not x or x.lower() == "nan" for x in ids):
            raise ConfigError(f"--speakers {column}: manifest {item} has rows without a "
                              "speaker id")
        paths += found
        speakers += ids
    return paths, speakers


def collect_inputs(inputs: list[Path]) -> list[str]:
    """Files to label: files as given, folders searched recursively for audio files (by
    extension, sorted), manifests expanded. A missing input stays in the list (its error is
    reported with the others)."""
    from emobridge.inference.recognizer import AUDIO_EXTENSIONS

    found: list[str] = []
    for item in inputs:
        if item.is_dir():
            # Not is_file(): a FIFO or device named *.wav is listed, then refused as unreadable.
            found += sorted(str(p) for p in item.rglob("*")
                            if p.suffix.lower() in AUDIO_EXTENSIONS and not p.is_dir())
        elif item.suffix.lower() in MANIFEST_SUFFIXES and item.is_file():
            found += _manifest_frame(item)[0]
        else:
            found.append(str(item))
    return found


def write_table(table: Any, out: Path, extra: dict[str, Any]) -> None:
    """``table`` to ``out`` by its suffix (CSV, JSON with ``extra`` beside the rows, Parquet),
    atomically."""
    from emobridge.fileio import atomic_path, write_json_atomic

    suffix = out.suffix.lower()
    if suffix == ".json":
        write_json_atomic(out, {**extra, "rows": table.to_dict(orient="records")})
        return
    with atomic_path(out) as tmp:
        if suffix == ".csv":
            table.to_csv(tmp, index=False)
        else:
            with parquet_engine(f"--out {out}", ConfigError, "a .csv or .json file"):
                table.to_parquet(tmp, index=False)


def _show(table: Any) -> None:
    """The table on the terminal: file names when they are unique (paths otherwise), class
    names as probability headers and the statistics used as a caption, to fit a terminal."""
    from rich.table import Table

    names = table["path"].map(lambda p: Path(p).name)
    if names.nunique() == table["path"].nunique():
        table = table.assign(path=names).rename(columns={"path": "file"})
    notes = []
    if "start_s" in table.columns and table["file" if "file" in table else "path"].nunique() == 1:
        notes.append(str(table.iloc[0, 0]))  # one file's timeline: its name as the caption
        table = table.iloc[:, 1:]
    for col, what in (("stats", "statistics"), ("adaptation", "adaptation")):
        if col in table.columns and table[col].nunique() == 1:
            notes.append(f"{what}: {table[col].iloc[0]}")
            table = table.drop(columns=col)
    caption = "; ".join(notes) or None
    table = table.rename(columns=lambda c: c[2:] if c.startswith("p_") else
                         {"duration_s": "sec"}.get(c, c))
    view = Table(caption=caption)
    for col in table.columns:
        text = col in ("file", "path")
        view.add_column(str(col), justify="left" if text else "right", min_width=12 if text
                        else None, overflow="fold" if text else "ellipsis", no_wrap=not text)
    for row in table.itertuples(index=False):
        view.add_row(*[f"{v:.2f}" if isinstance(v, float) else str(v) for v in row])
    console.print(view)


def _progress(enabled: bool, total: int) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress("[progress.description]{task.description}", BarColumn(),
                    MofNCompleteColumn(), TimeRemainingColumn(), console=err_console,
                    disable=not enabled, transient=True)


def _run(rec: Any, paths: list[str], stats: str, segment: str | None, window: float,
         hop: float, show_progress: bool) -> tuple[Any, dict[str, str]]:
    """Predictions (or timelines) for ``paths``, and the unreadable files with reasons."""
    import pandas as pd

    errors: dict[str, str] = {}
    with _progress(show_progress, len(paths)) as bar:
        task = bar.add_task("labelling", total=len(paths))
        if segment is None:
            done = []
            for item in rec.iter_predict(paths, stats, on_item=lambda: bar.advance(task)):
                if isinstance(item, tuple):
                    errors[item[0]] = item[1]
                else:
                    done.append(item)
            return rec.table(done), errors
        parts = []
        for path in paths:
            try:
                parts.append(rec.timeline(path, segment=segment, window_s=window, hop_s=hop))
            except (EmobridgeError, OSError) as exc:
                errors[path] = str(exc)
            bar.advance(task)
    columns = ["path", "start_s", "end_s", "emotion", *[f"p_{c}" for c in rec.classes], "stats"]
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    return table, errors


Opt = typer.Option
ModelOpt = Annotated[Path | None, Opt("--model", "-m", help="Model bundle folder (default: "
                                      "the model shipped with emobridge).")]
OutOpt = Annotated[Path | None, Opt("--out", "-o", help="Write the table to .csv, .json or "
                                    ".parquet (by suffix) instead of printing it.")]
SkipOpt = Annotated[bool, Opt("--skip-errors", help="Leave out unreadable files (counted and "
                              "reported) and exit 0.")]
SegmentOpt = Annotated[str, Opt("--segment", help="none (one row per file), vad (speech "
                                "regions, Silero VAD) or fixed (--window / --hop).")]
WindowOpt = Annotated[float, Opt("--window", min=0.1, max=3600.0, help="Segment length in "
                                 "seconds (fixed), the longest speech region (vad, at least "
                                 "10 s).")]
HopOpt = Annotated[float, Opt("--hop", min=0.01, max=3600.0,
                              help="Step between fixed windows in seconds.")]
PlotOpt = Annotated[Path | None, Opt("--plot", help="With --segment: draw the probabilities "
                                     "over time to this image (.png, .svg, .pdf).")]
StatsOpt = Annotated[str, Opt("--stats", help="Standardisation statistics: bundle (the "
                              "training corpora's, or an adapted bundle's domain), domain (the "
                              "files given, at least 20), or auto (domain for 20 files or more "
                              "with per-corpus or per-speaker models, else bundle).")]
DeviceOpt = Annotated[str, Opt("--device", help="cpu, cuda, cuda:N, mps or auto.")]
ProgressOpt = Annotated[bool | None, Opt("--progress/--no-progress", help="Progress bar "
                                         "(default: when stderr is a terminal).")]
AdaptOpt = Annotated[bool, Opt("--adapt", help="Adapt the model to the files given (no "
                              "labels: their statistics, estimated speakers, self-training), "
                              "then label them; see 'emobridge adapt'.")]


def load_recognizer(model: Path | None, device: str) -> Any:
    """The recognizer of ``model`` (the default model when ``None``) on ``device``."""
    from emobridge.inference.recognizer import Recognizer
    from emobridge.runtime import resolve_device

    used = resolve_device(device)
    return Recognizer.load(model, device=used) if model is not None \
        else Recognizer.default(device=used)


def predict(
    paths: Annotated[list[Path], typer.Argument(help="Audio files, folders (searched "
                                                "recursively) or manifests (.csv / .tsv / "
                                                ".parquet with a path column, or .txt).")],
    model: ModelOpt = None, out: OutOpt = None, skip_errors: SkipOpt = False,
    segment: SegmentOpt = "none", window: WindowOpt = 3.0, hop: HopOpt = 1.0,
    plot: PlotOpt = None, stats: StatsOpt = "auto", device: DeviceOpt = "cpu",
    progress: ProgressOpt = None, adapt: AdaptOpt = False,
    speakers: SpeakersOpt = "auto", store: StoreOpt = None, seed: SeedOpt = 0,
) -> None:
    """Label audio files: path, duration, predicted emotion, one probability per class, and
    which statistics and adaptation produced each row."""

    if out is not None and out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ConfigError(f"--out {out}: use a .csv, .json or .parquet file name")
    if out is not None and out.suffix.lower() == ".parquet" and not parquet_available():
        # said now, not after the model has labelled every file
        raise ConfigError(parquet_missing(f"--out {out}", "a .csv or .json file"))
    if segment not in ("none", "vad", "fixed"):
        raise ConfigError(f"--segment {segment!r}: use none, vad or fixed")
    if plot is not None and segment == "none":
        raise ConfigError("--plot draws a timeline: add --segment vad or --segment fixed")
    if adapt and segment != "none":
        raise ConfigError("--adapt labels whole files: leave out --segment (or adapt first "
                          "with 'emobridge adapt' and use --model)")
    if not adapt and (speakers != "auto" or store is not None):
        raise ConfigError("--speakers and --store go with --adapt")
    show = sys.stderr.isatty() if progress is None else progress
    if adapt:
        from emobridge.commands.adapt import inputs_and_speakers, run_adaptation

        files, spk = inputs_and_speakers(paths, speakers)
        rec = load_recognizer(model, device)
        table = run_adaptation(rec, files, spk, store=store, seed=seed, show_progress=show)[1]
        errors = table.attrs.get("errors", {})
    else:
        files = collect_inputs(paths)
        if not files:
            raise EmobridgeError(f"no audio files found in {', '.join(map(str, paths))} "
                                 f"(extensions looked for in folders: wav, flac, ogg, mp3...)")
        rec = load_recognizer(model, device)
        table, errors = _run(rec, files, stats, None if segment == "none" else segment,
                             window, hop, show)
    _emit(rec, table, errors, out, plot)
    _report_errors(errors, len(files), skip_errors)


def _emit(rec: Any, table: Any, errors: dict[str, str], out: Path | None,
          plot: Path | None) -> None:
    """The table to ``out`` (with one summary line of the statistics and adaptation used)
    or the terminal, and the timeline plot."""
    from emobridge.inference.recognizer import plot_timeline

    if out is not None:
        extra = {"model": str(rec.bundle.path), "classes": list(rec.classes), "errors": errors,
                 "warnings": table.attrs.get("warnings", [])}
        write_table(table, out, extra)
        used = "; ".join(f"{c}: {', '.join(map(str, table[c].unique()[:3]))}"
                         for c in ("stats", "adaptation") if c in table.columns and len(table))
        console.print(f"{len(table)} rows -> {out}" + (f" ({used})" if used else ""),
                      highlight=False)
    elif len(table):
        _show(table)  # its caption names the statistics and adaptation
    if plot is not None and len(table):
        plot_timeline(table, plot)
        console.print(f"timeline -> {plot}", highlight=False)


def _report_errors(errors: dict[str, str], total: int, skip_errors: bool) -> None:
    if not errors:
        return
    if skip_errors:
        warnings.warn(f"skipped {len(errors)} of {total} files that could not be read: "
                      + "; ".join(list(errors.values())[:3])
                      + (" ..." if len(errors) > 3 else ""), EmobridgeWarning, stacklevel=1)
        return
    for reason in errors.values():
        err_console.print(f"unreadable: {reason}", highlight=False, soft_wrap=True)
    raise EmobridgeError(f"{len(errors)} of {total} files could not be read (listed above; "
                         "--skip-errors leaves them out)")


def register(app: typer.Typer) -> None:
    """Add ``predict`` as a top-level command."""
    app.command("predict")(predict)
