"""``ckptfix`` commands (typer). Each parses its options, calls one API function and prints the result.

Exit codes: 0 success; 1 user error (one or two lines naming the fix; ``CKPTFIX_DEBUG=1`` shows the
traceback); 2 usage error; 4 nothing to recalibrate (no BN layer in the graph or none selected); 130
interrupted.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from ckptfix import _quiet
from ckptfix.errors import CkptfixError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Repair stale BatchNorm moving statistics in TensorFlow checkpoints.",
)

Verbose = Annotated[bool, typer.Option("-v", "--verbose", help="Show TensorFlow's own log output.")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar on stderr.")]


def _notice(message: str) -> None:
    typer.echo(f"notice: {message}", err=True)


def _run(action: Callable[[], None]) -> None:
    """Run a command body, turning user errors into a short message and their exit code."""
    try:
        action()
    except CkptfixError as error:
        if os.environ.get("CKPTFIX_DEBUG") == "1":
            raise
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: nothing was written.", err=True)
        raise typer.Exit(130) from None


@app.command()
def recalibrate(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint prefix, folder with a 'checkpoint' file, or one of its files.")],
    data: Annotated[Path, typer.Argument(help="Folder or file of calibration samples: images, .npy or .npz.")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output folder (default: <checkpoint folder>-recalibrated).")] = None,
    meta: Annotated[Optional[Path], typer.Option(help="The .meta graph, if not beside the checkpoint.")] = None,
    batch_size: Annotated[int, typer.Option(help="Samples per forward pass.")] = 32,
    num_samples: Annotated[Optional[int], typer.Option(help="Stop after this many samples (default: all).")] = None,
    shuffle: Annotated[bool, typer.Option("--shuffle/--no-shuffle", help="Shuffle sample order (--no-shuffle: sorted files, array order).")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the shuffle.")] = 0,
    input_name: Annotated[Optional[str], typer.Option("--input", help="Tensor to feed calibration batches to (default: detected).")] = None,
    training_flag: Annotated[Optional[str], typer.Option(help="Boolean training-flag tensor, fed False (default: detected).")] = None,
    include: Annotated[Optional[str], typer.Option(help="Only BN layers whose scope matches this regex.")] = None,
    exclude: Annotated[Optional[str], typer.Option(help="Skip BN layers whose scope matches this regex.")] = None,
    estimator: Annotated[str, typer.Option(help="pooled: exact statistics of all samples; batch-mean: mean of per-batch statistics.")] = "pooled",
    preprocess: Annotated[str, typer.Option(help="Image scaling: inception ([-1,1]), vgg (RGB mean subtraction), unit ([0,1]), raw.")] = "inception",
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty output folder.")] = False,
    report: Annotated[Optional[Path], typer.Option(help="Also write the report as JSON to this file.")] = None,
    progress: Progress = True,
    verbose: Verbose = False,
) -> None:
    """Recompute every BN layer's moving mean/variance from calibration data and write a new checkpoint."""

    def action() -> None:
        from ckptfix.api import recalibrate as run

        result = run(
            checkpoint,
            data,
            output=output,
            meta=meta,
            batch_size=batch_size,
            num_samples=num_samples,
            shuffle=shuffle,
            seed=seed,
            input_name=input_name,
            training_flag=training_flag,
            include=include,
            exclude=exclude,
            estimator=estimator,
            preprocess=preprocess,
            overwrite=overwrite,
            progress=progress,
            on_notice=_notice,
        )
        typer.echo(result.format_table())
        typer.echo(f"\n{len(result.layers)} BN layers recalibrated from {result.num_samples} samples "
                   f"in {result.num_batches} batches ({result.estimator} estimator).")
        if result.untouched_layers:
            typer.echo(f"{len(result.untouched_layers)} layers left as they were: {', '.join(result.untouched_layers)}")
        typer.echo(f"wrote {result.output_checkpoint}")
        if report is not None:
            _write_json(report, result.to_dict())

    _run(action)


@app.command()
def demo(
    directory: Annotated[Path, typer.Argument(help="Where to write the demo's model, data and repaired checkpoint.")] = Path("ckptfix-demo"),
    progress: Progress = True,
    verbose: Verbose = False,
) -> None:
    """Build a small stale model, show its inference-mode collapse, repair it, and show the recovery."""

    def action() -> None:
        from ckptfix.demo import run_demo

        run_demo(directory, progress=progress, echo=typer.echo)

    _run(action)


def _write_json(path: Path, content: dict) -> None:
    from ckptfix.errors import OutputError

    try:
        path.write_text(json.dumps(content, indent=2) + "\n")
    except OSError as error:
        raise OutputError(f"cannot write the report to {path}: {error.strerror}.") from None


def main() -> None:
    """Console entry point: quiet TensorFlow (unless -v) before anything imports it, then run the app."""
    verbose = bool({"-v", "--verbose"} & set(sys.argv[1:]))
    _quiet.silence_tensorflow(verbose=verbose)
    with _quiet.native_stderr_silenced(enabled=not verbose):
        app()
