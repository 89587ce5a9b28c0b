"""The `kronsearch` command line: run, show, compare, export, plot.

The commands only parse arguments and print; the work is done by kronsearch.search (run) and
kronsearch.report (show, compare, and its export and plot modules), which can be used from Python
directly. Exit codes: 0 ok, 1 runtime failure, 2 bad input, 130 interrupted. Errors are
one line on stderr ("error: ..."; a YAML error adds the line it quotes, with a caret), never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console

import kronsearch
from kronsearch.console import drop_output, ignore_absurd_columns
from kronsearch.errors import RUN_INTERRUPTED, BadInput, RunFailure, Terminated
from kronsearch.record import Strategy
from kronsearch.storage import load_studies, storage_for

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143

app = typer.Typer(
    name="kronsearch", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: flags without a "<bool>" type, lines broken between words
    help="Search block-sparsity patterns (block size, rank, lambdas) of Kronecker-decomposed networks.",
)

StudyArg = Annotated[str, typer.Argument(
    metavar="STUDY", help='A search "N" (all its strategy studies) or one study "N:S".')]
StorageOpt = Annotated[str | None, typer.Option(
    "--storage", metavar="URL", help="Optuna storage URL (default: sqlite:///studies/N.db in the working directory).")]
ArtifactsOpt = Annotated[Path | None, typer.Option(
    "--artifacts", metavar="PATH", help="The folder of the trials' weights, metrics and history, shared by every "
                                        "machine (default: the space's search.artifacts, else where the study "
                                        "recorded them).")]
ToleranceOpt = Annotated[float | None, typer.Option(
    "--tolerance", metavar="POINTS", help="Pick the cheapest trial within POINTS accuracy points (0 to 100) of the "
                                          "best val accuracy (default: the study's search.tolerance, 0.5).")]
WideOpt = Annotated[bool, typer.Option(
    "--wide", help="Every column, headers spelled out; the default fits 80 columns.")]
FormatOpt = Annotated[Literal["table", "json"], typer.Option("--format", help="Rich tables or JSON on stdout.")]


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"kronsearch {kronsearch.__version__}")
        raise typer.Exit()


@app.callback()
def options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Search block-sparsity patterns (block size, rank, lambdas) of Kronecker-decomposed networks."""


def _one_line(err: BaseException) -> str:
    """The message on one line, unless it quotes a line of a file under a caret (keeps_layout: YAML errors)."""
    if getattr(err, "keeps_layout", False):
        return str(err)
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text or type(err).__name__


def _echo(text: str, err: bool = False) -> None:
    """typer.echo that outlives its reader (`run ... | head -1`): once the pipe is closed the rest of the output
    is dropped, and the exit code still says whether the work was done (kronsearch.console)."""
    try:
        typer.echo(text, err=err)
    except BrokenPipeError:
        drop_output(sys.stderr if err else sys.stdout)


def _fail(message: str, code: int) -> typer.Exit:
    _echo(f"error: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def _errors(interrupted: str = "interrupted") -> Iterator[None]:
    """Turn exceptions into a one-line stderr message and an exit code, by class (kronsearch.errors)."""
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except Terminated:
        raise _fail(f"terminated (SIGTERM): {interrupted}", EXIT_TERMINATED) from None
    except KeyboardInterrupt:
        raise _fail(interrupted, EXIT_INTERRUPTED) from None
    except SystemExit as err:  # typer.Exit is no SystemExit: this is code kronsearch ran (a user's) calling sys.exit
        raise _fail(f"code run by kronsearch called sys.exit({err.code!r}) (SystemExit); {interrupted}",
                    EXIT_FAILURE) from None
    except BadInput as err:  # SpaceError, ModelError, DatasetError, StudyNotFound, bad blocks and files
        raise _fail(_one_line(err), EXIT_BAD_INPUT) from None
    except (RunFailure, OSError) as err:  # StorageError, ExportError, a missing dataset, a full disk
        raise _fail(_one_line(err), EXIT_FAILURE) from None
    except Exception as err:  # noqa: BLE001 - the CLI never shows a traceback
        raise _fail(f"{type(err).__name__}: {_one_line(err)}", EXIT_FAILURE) from None


def _load(studies: list[str], storage: str | None, artifacts: Path | None = None) -> list:
    """Every study the names resolve to, without repeats, in the order given."""
    loaded, seen = [], set()
    for name in studies:
        for study in load_studies(name, storage, artifacts):
            if study.study_name not in seen:
                seen.add(study.study_name)
                loaded.append(study)
    return loaded


def _print_json(data: object) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


@app.command()
def run(
    space: Annotated[Path, typer.Argument(metavar="SPACE", help="The search space YAML file, or the name of a bundled "
                                                                "space (`kronsearch spaces` lists them).")],
    trials: Annotated[int | None, typer.Option(
        "--trials", min=1, metavar="N", help="Trials to run (default: the space's).")] = None,
    strategy: Annotated[Strategy | None, typer.Option(
        "--strategy", help="Search strategy (default: the space's).")] = None,
    storage: StorageOpt = None,
    artifacts: ArtifactsOpt = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Delete the existing study and start over.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and exit without training.")] = False,
    device: Annotated[Literal["auto", "cpu", "cuda"] | None, typer.Option("--device", help="Training device.")] = None,
    backend: Annotated[Literal["local", "ray"] | None, typer.Option("--backend", help="Where trials run.")] = None,
    address: Annotated[str | None, typer.Option(
        "--address", metavar="ADDRESS", help="Ray cluster address (--backend ray).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No per-trial progress.")] = False,
    wide: Annotated[bool, typer.Option("--wide", help="With --dry-run: the plan's lines unbroken; by default it "
                                                      "fits 80 columns.")] = False,
) -> None:
    """Run (or resume) a search over the patterns of SPACE (a file, or a bundled space's name: `kronsearch run vit`)."""
    with _errors(RUN_INTERRUPTED):
        from kronsearch.search import run_search

        summary = run_search(space, trials=trials, strategy=strategy and strategy.value, storage=storage, fresh=fresh,
                             dry_run=dry_run, device=device, backend=backend, address=address, progress=not quiet,
                             wide=wide, artifacts=artifacts)
        if dry_run and summary.plan_text:
            _echo(summary.plan_text)
        if summary.failed:
            raise _fail(summary.message, EXIT_FAILURE)
        _echo(summary.message)
        if summary.race_note:
            _echo(summary.race_note)


spaces_app = typer.Typer(no_args_is_help=False, add_completion=False, rich_markup_mode=None,
                         help="The example spaces bundled with kronsearch: list them, or copy one out to edit.")
app.add_typer(spaces_app, name="spaces")


@spaces_app.callback(invoke_without_command=True)
def spaces(ctx: typer.Context) -> None:
    """List the bundled spaces (run one: `kronsearch run vit`; copy one: `kronsearch spaces copy vit my.yaml`)."""
    if ctx.invoked_subcommand is not None:
        return
    from kronsearch.bundled import bundled_spaces, space_summary

    found = bundled_spaces()
    width = max(map(len, found), default=0)
    for name, path in found.items():
        typer.echo(f"{name:<{width}}  {space_summary(path)}")
    typer.echo("run one: kronsearch run NAME; copy one to edit: kronsearch spaces copy NAME FILE")


@spaces_app.command("copy")
def spaces_copy(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A bundled space (`kronsearch spaces` lists them).")],
    destination: Annotated[Path, typer.Argument(metavar="FILE", help="Where to write it (a folder: FOLDER/NAME.yaml).")]
    = Path("."),
    force: Annotated[bool, typer.Option("--force", help="Overwrite FILE if it exists.")] = False,
) -> None:
    """Copy bundled space NAME to FILE, to edit and run."""
    from kronsearch.bundled import copy_space

    with _errors():
        typer.echo(f"wrote {copy_space(name, destination, overwrite=force)}")


@app.command()
def init(
    path: Annotated[Path, typer.Argument(metavar="FILE.yaml", help="The space file to write.")],
    model: Annotated[str | None, typer.Option(
        "--model", metavar="REF", help="Your model factory 'package.module:function' (called with input_shape, "
                                       "num_classes), a built-in model or 'timm:<name>' (default: mlp).")] = None,
    data: Annotated[str | None, typer.Option(
        "--data", metavar="REF", help="Your data factory 'package.module:function' or a built-in dataset "
                                      "(default: digits).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite FILE.yaml if it exists.")] = False,
) -> None:
    """Write a starting space file for your own model, every key commented; `kronsearch run FILE.yaml --dry-run`
    accepts it as it is."""
    from kronsearch.starter import write_starting_space

    with _errors():
        written = write_starting_space(path, model, data, overwrite=force)
        typer.echo(f"wrote {written}; check it with: kronsearch run {written} --dry-run")


def _stdout() -> Console:
    """Rich output for stdout: the terminal's width, or unlimited when piped (nothing is cut)."""
    console = Console()
    return console if console.is_terminal else Console(width=100_000)


@app.command(short_help="A study's trials and its pick or Pareto front.")
def show(
    study: StudyArg,
    storage: StorageOpt = None,
    artifacts: ArtifactsOpt = None,
    output_format: FormatOpt = "table",
    wide: Annotated[bool, typer.Option("--wide", help="Every column (kind, training params, selection, notes) in "
                                                     "the table; the default fits 80 columns.")] = False,
    tolerance: ToleranceOpt = None,
) -> None:
    """List a study's trials, its pick (the cheapest within --tolerance of the best val accuracy) and, with
    several objectives, its Pareto front."""
    from kronsearch.report import render_show, show_data

    with _errors():
        data = show_data(load_studies(study, storage, artifacts), tolerance)
        _print_json(data) if output_format == "json" else render_show(data, _stdout(), wide=wide)


@app.command(short_help="One-round pick vs per-pattern ranking, and cost.")
def compare(
    studies: Annotated[list[str], typer.Argument(
        metavar="STUDY...", help='Studies to compare; "N" expands to all of N\'s studies.')],
    storage: StorageOpt = None,
    artifacts: ArtifactsOpt = None,
    output_format: FormatOpt = "table",
    wide: WideOpt = False,
    tolerance: ToleranceOpt = None,
) -> None:
    """One-round selection against per-pattern training: picks, ranking, agreement and compute."""
    from kronsearch.report import compare_data, render_compare

    with _errors():
        data = compare_data(_load(studies, storage, artifacts), tolerance)
        _print_json(data) if output_format == "json" else render_compare(data, _stdout(), wide=wide)


@app.command()
def export(
    study: Annotated[str, typer.Argument(
        metavar="STUDY", help='One study: "N:S", or "N" when search N has one study.')],
    out: Annotated[Path, typer.Option(
        "--out", metavar="FILE.yaml", help="The pattern file to write (YAML, see kronsearch.load_plan).")],
    trial: Annotated[int | None, typer.Option(
        "--trial", min=0, metavar="N", help="Trial number (default: the pick, see --tolerance; with several objectives "
                                            "the best-val Pareto trial).")] = None,
    weights: Annotated[Path | None, typer.Option(
        "--weights", metavar="FILE", help="Also write the trial's weights: .safetensors (copied) or .pt "
                                          "(torch state dict).")] = None,
    bsr: Annotated[bool, typer.Option(
        "--bsr", help="Also write every Kronecker layer's merged weight in BSR form to "
                      "<weights stem>.bsr.safetensors.")] = False,
    storage: StorageOpt = None,
    artifacts: ArtifactsOpt = None,
    tolerance: ToleranceOpt = None,
) -> None:
    """Export one trial's pattern (and weights) from a single study."""
    from kronsearch.report.export import export_trial

    with _errors():
        found = load_studies(study, storage, artifacts)
        if len(found) != 1:
            names = " or ".join(s.study_name for s in found)
            raise _fail(f"{study!r} names {len(found)} studies; export takes one: give {names}", EXIT_BAD_INPUT)
        result = export_trial(found[0], out, trial=trial, storage_url=storage_for(study, storage),
                              weights=weights, bsr=bsr, tolerance=tolerance)
        typer.echo(f"exported trial {result.trial} of {result.study} ({result.accuracies})")
        for path in result.paths():
            typer.echo(f"wrote {path}")
        for note in result.notes:
            typer.echo(f"note: {note}")


@app.command(short_help="PNGs: history, accuracy vs cost, selection.")
def plot(
    study: StudyArg,
    out: Annotated[Path, typer.Option(
        "--out", metavar="FOLDER", help="Folder for the PNG files (created if missing).")],
    storage: StorageOpt = None,
    artifacts: ArtifactsOpt = None,
    trial: Annotated[int | None, typer.Option(
        "--trial", min=0, metavar="N", help="The one-round trial of the selection plot (one study N:S; default: "
                                            "the best one-round trial).")] = None,
) -> None:
    """Plot optimization history, accuracy vs training MACs, and one-round selection trajectories."""
    from kronsearch.report.plot import plot_studies

    with _errors():
        result = plot_studies(load_studies(study, storage, artifacts), out, trial=trial)
        for note in result.notes:
            typer.echo(f"note: {note}")
        if not result.paths:
            raise _fail(f"nothing to plot for {study!r}", EXIT_FAILURE)
        for path in result.paths:
            typer.echo(f"wrote {path}")


def main() -> None:
    """Console-script entry point.

    A Ctrl-C (or SIGTERM) while click still parses the command line (before any command's own handling) is
    turned by typer into a silent exit 130; it gets its one line (and SIGTERM its 143) here."""
    ignore_absurd_columns()
    try:
        app()
    except SystemExit as exit:
        cause = getattr(exit.__context__, "__cause__", None)
        if exit.code == EXIT_INTERRUPTED and isinstance(cause, Terminated):
            _echo("error: terminated (SIGTERM)", err=True)
            sys.exit(EXIT_TERMINATED)
        if exit.code == EXIT_INTERRUPTED and isinstance(cause, KeyboardInterrupt):
            _echo("error: interrupted", err=True)
        raise


if __name__ == "__main__":
    main()
