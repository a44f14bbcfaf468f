"""``emobridge model info [--model BUNDLE]``: show a bundle's model card (the default model
without ``--model``)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

app = typer.Typer(help="Inspect model bundles.", no_args_is_help=True)
console = Console()


def card_lines(card: dict[str, Any]) -> list[str]:
    """The card as ``key: value`` lines (nested values as compact JSON)."""
    lines = []
    for key, value in card.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, ensure_ascii=False)
        lines.append(f"{key}: {value}")
    return lines


@app.command("info")
def info(
    model: Annotated[Path | None, typer.Option(
        "--model", "-m", help="Model bundle folder (default: the model shipped with "
        "emobridge).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the card as JSON.")] = False,
) -> None:
    """Print the model card: method, classes, features, training data and licences,
    intended use, limits, measured accuracy. Checks the bundle's checksums."""
    from emobridge.inference.bundle import CARD_FILE, read_bundle_meta
    from emobridge.inference.recognizer import default_model_path

    folder = model if model is not None else default_model_path()
    if model is None and not (folder / "bundle.json").exists():
        from emobridge.inference.recognizer import Recognizer

        Recognizer.default()  # raises the error that says how to build the default model
    meta = read_bundle_meta(folder)
    from emobridge.inference.bundle import Bundle

    card = Bundle(folder, None, meta).card
    files = [folder / name for name in meta["files"]] + [folder / "bundle.json"]
    card["size_mb"] = round(sum(f.stat().st_size for f in files) / 1e6, 2)
    if as_json:
        typer.echo(json.dumps(card, indent=2, ensure_ascii=False))
        return
    text = folder / CARD_FILE
    if text.exists():
        console.print(text.read_text(encoding="utf-8"), highlight=False, markup=False)
    for line in card_lines(card):
        console.print(line, highlight=False, markup=False, soft_wrap=True)


class ExportFormat(str, Enum):
    onnx = "onnx"


@app.command("export")
def export(
    model: Annotated[Path | None, typer.Argument(
        help="Model bundle folder (default: the model shipped with emobridge).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Export folder (new or empty, or "
                                      "an earlier export).")] = ...,
    fmt: Annotated[ExportFormat, typer.Option("--format", help="Export format.")] = (
        ExportFormat.onnx),
) -> None:
    """Write the bundle's encoder and head as ONNX with a runner that needs only
    onnxruntime, numpy, soundfile and soxr (``python DIR/emobridge_onnx.py DIR FILE...``).
    The export is checked against the torch path before it is kept."""
    from emobridge.inference.export import export_onnx
    from emobridge.inference.recognizer import Recognizer

    rec = Recognizer.load(model) if model is not None else Recognizer.default()
    manifest = export_onnx(rec, out)
    sizes = sum((out / name).stat().st_size for name in manifest["sha256"]) / 1e6
    console.print(f"exported {rec.bundle.path} -> {out} ({sizes:.1f} MB; largest "
                  f"difference to the torch path {manifest['max_difference']:.1g})",
                  highlight=False)
