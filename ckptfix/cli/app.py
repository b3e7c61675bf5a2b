"""``ckptfix`` commands (typer). Each parses its options, calls one API function and prints the result.

Exit codes: 0 success (``diagnose``: fresh); 1 user error (one or two lines naming the fix;
``CKPTFIX_DEBUG=1`` shows the traceback); 2 usage error; 3 ``diagnose`` found stale statistics; 4 nothing to
recalibrate (no BN layer in the graph or none selected); 130 interrupted.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Callable, List, Optional

import typer

from ckptfix import _quiet
from ckptfix.errors import CkptfixError, OutputError

STALE_EXIT_CODE = 3

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Repair stale BatchNorm moving statistics in TensorFlow checkpoints.",
)

# Options shared by several commands, declared once.
Checkpoint = Annotated[str, typer.Argument(help="Checkpoint prefix, folder with a 'checkpoint' file, or one of its files; a frozen graph (.pb, .pbtxt); a Keras .keras/.h5/.weights.h5 file, TF2 checkpoint or SavedModel.")]
Data = Annotated[Path, typer.Argument(help="Folder or file of calibration samples: images, .npy/.npz, or TFRecords.")]
Meta = Annotated[Optional[Path], typer.Option(help="The .meta graph, if not beside the checkpoint.")]
BatchSize = Annotated[int, typer.Option(help="Samples per forward pass.")]
NumSamples = Annotated[Optional[int], typer.Option(help="Stop after this many samples (default: all).")]
Shuffle = Annotated[bool, typer.Option("--shuffle/--no-shuffle", help="Shuffle sample order (--no-shuffle: sorted files, array order).")]
Seed = Annotated[int, typer.Option(help="Seed of the shuffle.")]
InputName = Annotated[Optional[List[str]], typer.Option("--input", help="Tensor to feed calibration batches to (default: detected). Several inputs: --input a,b or --input a --input b.")]
TrainingFlag = Annotated[Optional[str], typer.Option(help="Boolean training-flag tensor, fed False (default: detected).")]
Include = Annotated[Optional[str], typer.Option(help="Only BN layers whose scope matches this regex.")]
Exclude = Annotated[Optional[str], typer.Option(help="Skip BN layers whose scope matches this regex.")]
EstimatorOption = Annotated[str, typer.Option("--estimator", help="pooled: exact statistics of all samples; batch-mean: mean of per-batch statistics.")]
Preprocess = Annotated[str, typer.Option(help="Image preprocessing preset: inception ([-1,1]), vgg, caffe, torch, unit ([0,1]), raw; or package.module:function (runs your code).")]
ImageSize = Annotated[Optional[str], typer.Option(help="H or HxW images are resized to, when the input has no static size.")]
CentralCrop = Annotated[Optional[float], typer.Option(help="Keep the central FRACTION of each image side before resizing (slim's Inception eval: 0.875).")]
DataFormat = Annotated[Optional[str], typer.Option("--format", help="images, numpy or tfrecord: the kind of file to use in a folder that mixes kinds.")]
Feature = Annotated[str, typer.Option(help="TFRecord feature holding the encoded image or the raw float sample.")]
Strict = Annotated[bool, typer.Option("--strict", help="Stop at the first unreadable file instead of skipping it.")]
OutputTensor = Annotated[Optional[str], typer.Option(help="Model output compared in the agreement check (default: detected logits).")]
AllowUnsafeOps = Annotated[bool, typer.Option(help="Run graphs whose forward pass executes Python or writes files (trust the graph).")]
AgreementSamples = Annotated[int, typer.Option(help="How many of the first samples the output agreement check uses.")]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout (notices stay on stderr).")]
ShowAll = Annotated[bool, typer.Option("--all", help="Show every layer (long lists are truncated otherwise).")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar on stderr.")]
Verbose = Annotated[bool, typer.Option("-v", "--verbose", help="Show TensorFlow's own log output.")]
Model = Annotated[Optional[str], typer.Option(help="package.module:function (runs your code): for a TF1 checkpoint without .meta, builds its graph (called like slim's nets_factory); for Keras/TF2 files without an architecture, returns the built Keras model.")]
NumClasses = Annotated[Optional[int], typer.Option(help="With --model: num_classes passed to the function.")]
ModelArg = Annotated[Optional[list[str]], typer.Option(help="With --model: key=value keyword argument (value a Python literal); repeat for more.")]
ModelInputShape = Annotated[Optional[str], typer.Option(help="With --model: per-sample input shape HxWxC (default: the function's default_image_size, 3 channels).")]
ArgScope = Annotated[Optional[str], typer.Option(help="With --model: package.module:function returning the slim arg_scope to build under (e.g. tf_slim.nets.resnet_v1:resnet_arg_scope).")]

# Keras / TF2 models (docs/keras.md). --model-format, not --format: --format picks the calibration data kind.
ModelFormat = Annotated[Optional[str], typer.Option(help="keras, h5, weights-h5, tf-checkpoint, savedmodel or tf1 (default: detected from CKPT).")]
Architecture = Annotated[Optional[Path], typer.Option(help="A .keras file or model config .json giving the architecture, for files without one.")]
Unsafe = Annotated[bool, typer.Option("--unsafe", help="Turn Keras' safe mode off: load Lambda layers holding Python code (trust the file).")]


def _model_options(model, num_classes, model_arg, input_shape, arg_scope) -> dict:
    """The API's model keyword arguments from the --model options."""
    from ckptfix.graph.model_fn import parse_model_args

    model_args = parse_model_args(model_arg)
    if num_classes is not None:
        model_args["num_classes"] = num_classes
    return dict(model=model, model_args=model_args, input_shape=input_shape, arg_scope=arg_scope)


def _notice(message: str) -> None:
    typer.echo(f"notice: {message}", err=True)


def _run(action: Callable[[], int | None]) -> None:
    """Run a command body, turning user errors into a short message and their exit code."""
    try:
        code = action()
    except CkptfixError as error:
        if os.environ.get("CKPTFIX_DEBUG") == "1":
            raise
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: nothing was written.", err=True)
        raise typer.Exit(130) from None
    if code:
        raise typer.Exit(code)


def _print_json(content: dict) -> None:
    typer.echo(json.dumps(content, indent=2))


def _write_json(path: Path, content: dict) -> None:
    try:
        path.write_text(json.dumps(content, indent=2) + "\n")
    except OSError as error:
        raise OutputError(f"cannot write the report to {path}: {error.strerror}.") from None


@app.command()
def recalibrate(
    checkpoint: Checkpoint,
    data: Data,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output folder (default: <checkpoint folder>-recalibrated); an output file for .pb/.pbtxt and .keras/.h5/.weights.h5 (default: <name>-recalibrated.<ext> beside it).")] = None,
    meta: Meta = None,
    model: Model = None,
    num_classes: NumClasses = None,
    model_arg: ModelArg = None,
    input_shape: ModelInputShape = None,
    arg_scope: ArgScope = None,
    model_format: ModelFormat = None,
    architecture: Architecture = None,
    unsafe: Unsafe = False,
    batch_size: BatchSize = 32,
    num_samples: NumSamples = None,
    shuffle: Shuffle = True,
    seed: Seed = 0,
    input_name: InputName = None,
    training_flag: TrainingFlag = None,
    include: Include = None,
    exclude: Exclude = None,
    estimator: EstimatorOption = "pooled",
    preprocess: Preprocess = "inception",
    image_size: ImageSize = None,
    central_crop: CentralCrop = None,
    data_format: DataFormat = None,
    feature: Feature = "image/encoded",
    strict: Strict = False,
    output_tensor: OutputTensor = None,
    agreement_samples: AgreementSamples = 256,
    allow_unsafe_ops: AllowUnsafeOps = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty output folder.")] = False,
    report: Annotated[Optional[Path], typer.Option(help="Also write the report as JSON to this file.")] = None,
    json_output: JsonOutput = False,
    show_all: ShowAll = True,
    progress: Progress = True,
    verbose: Verbose = False,
) -> None:
    """Recompute every BN layer's moving mean/variance from calibration data and write a new checkpoint."""

    def action() -> None:
        from ckptfix.api import recalibrate as run

        result = run(
            checkpoint, data, output=output, meta=meta, batch_size=batch_size, num_samples=num_samples,
            shuffle=shuffle, seed=seed, input_name=input_name, training_flag=training_flag, include=include,
            exclude=exclude, estimator=estimator, preprocess=preprocess, output_tensor=output_tensor,
            agreement_samples=agreement_samples, allow_unsafe_ops=allow_unsafe_ops, overwrite=overwrite, progress=progress, on_notice=_notice,
            image_size=image_size, central_crop=central_crop, data_format=data_format, feature=feature, strict=strict,
            **_model_options(model, num_classes, model_arg, input_shape, arg_scope),
            model_format=model_format, architecture=architecture, unsafe=unsafe,
        )
        if report is not None:
            _write_json(report, result.to_dict())
        if json_output:
            _print_json(result.to_dict())
            return
        typer.echo(result.format_table(show_all))
        typer.echo(f"\n{len(result.layers)} BN layers recalibrated from {result.num_samples} samples "
                   f"in {result.num_batches} batches ({result.estimator} estimator).")
        if result.samples_skipped:
            typer.echo(f"{result.samples_skipped} unreadable file(s) or record(s) skipped: {', '.join(result.skipped_files)}")
        if result.agreement is not None:
            typer.echo(result.agreement.summary())
        if result.untouched_layers:
            typer.echo(f"{len(result.untouched_layers)} layers left as they were: {', '.join(result.untouched_layers)}")
        typer.echo(f"wrote {result.output_checkpoint}")

    _run(action)


@app.command()
def diagnose(
    checkpoint: Checkpoint,
    data: Data,
    meta: Meta = None,
    model: Model = None,
    num_classes: NumClasses = None,
    model_arg: ModelArg = None,
    input_shape: ModelInputShape = None,
    arg_scope: ArgScope = None,
    model_format: ModelFormat = None,
    architecture: Architecture = None,
    unsafe: Unsafe = False,
    batch_size: BatchSize = 32,
    num_samples: NumSamples = None,
    shuffle: Shuffle = True,
    seed: Seed = 0,
    input_name: InputName = None,
    training_flag: TrainingFlag = None,
    include: Include = None,
    exclude: Exclude = None,
    estimator: EstimatorOption = "pooled",
    preprocess: Preprocess = "inception",
    image_size: ImageSize = None,
    central_crop: CentralCrop = None,
    data_format: DataFormat = None,
    feature: Feature = "image/encoded",
    strict: Strict = False,
    output_tensor: OutputTensor = None,
    agreement_samples: AgreementSamples = 256,
    allow_unsafe_ops: AllowUnsafeOps = False,
    json_output: JsonOutput = False,
    show_all: ShowAll = False,
    progress: Progress = True,
    verbose: Verbose = False,
) -> None:
    """Measure how stale the stored statistics are (writes nothing). Exit 0 fresh, 3 stale, 1 error."""

    def action() -> int:
        from ckptfix.api import diagnose as run

        result = run(
            checkpoint, data, meta=meta, batch_size=batch_size, num_samples=num_samples, shuffle=shuffle,
            seed=seed, input_name=input_name, training_flag=training_flag, include=include, exclude=exclude,
            estimator=estimator, preprocess=preprocess, output_tensor=output_tensor,
            agreement_samples=agreement_samples, allow_unsafe_ops=allow_unsafe_ops, progress=progress, on_notice=_notice,
            image_size=image_size, central_crop=central_crop, data_format=data_format, feature=feature, strict=strict,
            **_model_options(model, num_classes, model_arg, input_shape, arg_scope),
            model_format=model_format, architecture=architecture, unsafe=unsafe,
        )
        if json_output:
            _print_json(result.to_dict())
        else:
            typer.echo(result.format_table(show_all))
            if result.agreement is not None:
                typer.echo("\n" + result.agreement.summary())
            verdict = (f"STALE: {len(result.stale_layers)} of {len(result.layers)} BN layers; "
                       f"repair with: ckptfix recalibrate {checkpoint} {data}"
                       + (" and the same --model options" if model else "")) if result.stale else \
                f"fresh: all {len(result.layers)} BN layers match the calibration data"
            typer.echo(f"\n{verdict} ({result.num_samples} samples)")
        return STALE_EXIT_CODE if result.stale else 0

    _run(action)


@app.command()
def inspect(
    checkpoint: Checkpoint,
    meta: Meta = None,
    model: Model = None,
    num_classes: NumClasses = None,
    model_arg: ModelArg = None,
    input_shape: ModelInputShape = None,
    arg_scope: ArgScope = None,
    model_format: ModelFormat = None,
    architecture: Architecture = None,
    unsafe: Unsafe = False,
    against: Annotated[Optional[str], typer.Option(help="Another checkpoint (e.g. the pretrained one): flag statistics identical to it.")] = None,
    json_output: JsonOutput = False,
    show_all: ShowAll = False,
    verbose: Verbose = False,
) -> None:
    """List every BN layer and its stored statistics; flag never-updated ones. Needs no data; exit 0."""

    def action() -> None:
        from ckptfix.api import inspect as run

        result = run(checkpoint, meta=meta, against=against, model_format=model_format, architecture=architecture,
                     unsafe=unsafe, **_model_options(model, num_classes, model_arg, input_shape, arg_scope))
        if json_output:
            _print_json(result.to_dict())
            return
        typer.echo(result.format_table(show_all))
        flagged = result.flagged
        typer.echo(f"\n{len(result.layers)} BN layers; " + (
            f"{len(flagged)} look never updated (initial 0/1 or identical to --against): "
            f"check with: ckptfix diagnose {checkpoint} DATA" if flagged else "none flagged"))

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


def main() -> None:
    """Console entry point: quiet TensorFlow (unless -v) and pick its CPU allocator before anything imports
    it, then run the app.

    CPU tensors go to TensorFlow's BFC allocator (``TF_CPU_ALLOCATOR_USE_BFC``, unless the environment sets
    it): it keeps one pool sized by the largest batch, so peak memory stays flat however many batches stream
    through, where glibc's heap fragments and its peak creeps up with the stream's length
    (docs/performance.md). The CLI owns its process; the Python API leaves its host's allocators alone.
    """
    verbose = bool({"-v", "--verbose"} & set(sys.argv[1:]))
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
    _quiet.silence_tensorflow(verbose=verbose)
    with _quiet.native_stderr_silenced(enabled=not verbose):
        app()
