"""``emobridge run CONFIG``: run an experiment grid; ``emobridge synth OUT_DIR``: write the
synthetic corpus."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def run(
    config: Path = typer.Argument(..., help="Experiment config (YAML), e.g. "
                                  "configs/quickstart.yaml."),
    out: Path | None = typer.Option(None, "--out", help="Results folder (overrides output_dir)."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Cells run in parallel processes."),
    fail_fast: bool = typer.Option(False, "--fail-fast",
                                   help="Stop at the first failed cell."),
    device: str | None = typer.Option(None, "--device",
                                      help="cpu, cuda, cuda:N or auto (overrides the config)."),
    corpora_root: Path | None = typer.Option(
        None, "--corpora-root", help="Folder the corpus paths are relative to (overrides "
        "corpora_root)."),
    skip_errors: bool = typer.Option(
        False, "--skip-errors", help="Leave out audio files that cannot be decoded (counted "
        "and listed in skipped_files.csv) instead of stopping (sets skip_errors)."),
    executor: str | None = typer.Option(
        None, "--executor", help="local (processes, default) or ray (each cell a Ray task, "
        "features extracted in Ray tasks; needs the ray extra); overrides executor."),
    address: str | None = typer.Option(
        None, "--address", help="Ray cluster: auto, ray://HOST:PORT or HOST:PORT (default: "
        "a local Ray instance); overrides address."),
) -> None:
    """Run every (task, feature, method, k, seed) cell; finished cells are skipped."""
    from emobridge.experiments import ExperimentError, load_config, run_experiment
    from emobridge.experiments.executors import make_executor
    from emobridge.experiments.results import display_table

    if executor is not None:  # an unknown name or a missing extra fails before the config
        make_executor(executor, jobs, address)
    cfg = load_config(config, output_dir=out, device=device, corpora_root=corpora_root)
    if skip_errors:
        cfg.skip_errors = True
    summary = run_experiment(cfg, jobs=jobs, fail_fast=fail_fast, executor=executor,
                             address=address,
                             log=lambda line: console.print(line, highlight=False,
                                                            soft_wrap=True),
                             progress=True)
    shown = display_table(summary.table)
    columns = ["task", "feature", "method", "k", "seeds", "UA %", "UA 95% CI", "WA %"]
    if summary.table["feature"].nunique() == 1:
        columns.remove("feature")
    table = Table(*columns, title=f"{cfg.name}: target test UA / WA (%, mean ± std over seeds)")
    for row in shown[columns].itertuples(index=False):
        table.add_row(*[str(v) for v in row])
    console.print(table)
    console.print(f"tables: {summary.run_dir / 'results.md'}, {summary.run_dir / 'results.csv'}")
    console.print(f"report: {summary.report}")
    if summary.skipped_files:
        console.print(f"{len(summary.skipped_files)} unreadable audio file(s) skipped: "
                      f"{summary.run_dir / 'skipped_files.csv'}")
    if summary.n_failed:
        first = summary.failures[0]
        raise ExperimentError(
            f"{summary.n_failed} of {summary.n_cells} cells failed (first: {first.key.id}: "
            f"{first.error}); tracebacks under {summary.run_dir / 'cells'}; rerun to retry "
            "them")


def synth(
    out_dir: Path = typer.Argument(..., help="Folder to write the corpus into."),
    languages: str = typer.Option("aa,bb", "--languages", help="Comma-separated codes."),
    speakers: int = typer.Option(6, "--speakers", min=1, help="Speakers per language."),
    utterances: int = typer.Option(4, "--utterances", min=1,
                                   help="Utterances per speaker and emotion."),
    emotions: str = typer.Option("anger,happiness,neutral,sadness", "--emotions",
                                 help="Comma-separated canonical emotions."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed."),
) -> None:
    """Write the synthetic two-language emotional corpus (WAV + manifest.csv)."""
    from emobridge.synthetic import MANIFEST_NAME, generate_corpus

    manifest = generate_corpus(
        out_dir, languages=[s.strip() for s in languages.split(",") if s.strip()],
        speakers_per_language=speakers, utterances_per_speaker_per_emotion=utterances,
        seed=seed, emotions=[s.strip() for s in emotions.split(",") if s.strip()])
    console.print(f"wrote {len(manifest)} utterances "
                  f"({manifest['duration_s'].sum() / 60:.1f} min, "
                  f"{manifest['speaker'].nunique()} speakers) to {out_dir}; manifest: "
                  f"{out_dir / MANIFEST_NAME}")


def register(app: typer.Typer) -> None:
    """Add the top-level ``run`` and ``synth`` commands."""
    app.command("run")(run)
    app.command("synth")(synth)
