"""``emobridge adapt PATH... [--model BUNDLE] -o ADAPTED``: adapt a model bundle, without
labels, to the user's own recordings and write the adapted bundle; also the shared part of
``emobridge predict --adapt``."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from emobridge.errors import EmobridgeError, EmobridgeWarning

console = Console()

# shared with ``predict --adapt``
SpeakersOpt = Annotated[str, typer.Option(
    "--speakers", help="Speakers of the recordings: auto (estimated from speaker "
    "embeddings), none (per-corpus statistics) or a manifest COLUMN naming them.")]
StoreOpt = Annotated[Path | None, typer.Option(
    "--store", help="Feature-store folder caching the recordings' features (a second run "
    "over the same files skips extraction).")]
SeedOpt = Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1,
                                      help="Seed of the adaptation (same files, same seed: "
                                      "same result).")]


def inputs_and_speakers(paths: list[Path], speakers: str) -> tuple[list[str], Any]:
    """The files to adapt to and the ``speakers`` argument for
    :meth:`~emobridge.inference.Recognizer.adapt_predict` (a list for a manifest column)."""
    from emobridge.commands.predict import collect_inputs, collect_speakers

    if speakers in ("auto", "none"):
        files = collect_inputs(paths)
        if not files:
            raise EmobridgeError(f"no audio files found in {', '.join(map(str, paths))} "
                                 "(extensions looked for in folders: wav, flac, ogg, mp3...)")
        return files, speakers
    files, ids = collect_speakers(paths, speakers)
    if not files:
        raise EmobridgeError(f"no audio files listed in {', '.join(map(str, paths))}")
    return files, ids


def run_adaptation(rec: Any, files: list[str], speakers: Any, *, store: Path | None,
                   seed: int, show_progress: bool) -> tuple[Any, Any]:
    """Adapt ``rec`` to ``files`` with a progress bar; warnings become ``warning:`` lines
    and a summary line says what was done. Returns the adapted recognizer and the table."""
    from emobridge.commands.predict import _progress

    with _progress(show_progress, len(files)) as bar:
        task = bar.add_task("reading and encoding", total=len(files))
        adapted, table = rec.adapt_predict(files, speakers=speakers, seed=seed, store=store,
                                           on_item=lambda: bar.advance(task))
    for note in table.attrs.get("warnings", []):
        warnings.warn(note, EmobridgeWarning, stacklevel=1)
    info = adapted.adaptation
    spk = info["speakers"]
    found = f", {spk['count']} found" if spk.get("mode") == "auto" else ""
    console.print(f"adapted to {info['files']} files ({info['hours'] * 60:.1f} min of audio; "
                  f"speakers {spk['mode']}{found}; normalisation {info['normalisation']}) in "
                  f"{info['seconds']:.1f} s", highlight=False)
    return adapted, table


def adapt(
    paths: Annotated[list[Path], typer.Argument(help="Audio files, folders (searched "
                                                "recursively) or manifests.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the adapted bundle "
                                      "(new, empty, or an earlier bundle).")],
    model: Annotated[Path | None, typer.Option("--model", "-m", help="Model bundle to adapt "
                                               "(default: the shipped model).")] = None,
    speakers: SpeakersOpt = "auto", store: StoreOpt = None, seed: SeedOpt = 0,
    skip_errors: Annotated[bool, typer.Option("--skip-errors", help="Leave out unreadable "
                                              "files (counted and reported).")] = False,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N, mps or "
                                        "auto.")] = "cpu",
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress")] = None,
) -> None:
    """Adapt a model to your recordings without labels (their own statistics, estimated
    speakers, self-training) and write the adapted bundle, for predict / serve --model."""
    from emobridge.commands.predict import _report_errors, load_recognizer
    from emobridge.fileio import prepare_output_dir
    from emobridge.inference.bundle import BUNDLE_JSON, interrupted_save_files

    # refused before any audio is read (a folder of the user's own files, a read-only path);
    # a folder made here is removed again when the adaptation fails
    created = not out.exists()
    prepare_output_dir(out, marker=BUNDLE_JSON, what="bundle folder",
                       allow=interrupted_save_files())
    try:
        files, spk = inputs_and_speakers(paths, speakers)
        rec = load_recognizer(model, device)
        adapted, table = run_adaptation(rec, files, spk, store=store, seed=seed,
                                        show_progress=sys.stderr.isatty() if progress is None
                                        else progress)
        _report_errors(table.attrs.get("errors", {}), len(files), skip_errors)
        adapted.save(out)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    console.print(f"adapted bundle -> {out}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``adapt`` as a top-level command."""
    app.command("adapt")(adapt)

