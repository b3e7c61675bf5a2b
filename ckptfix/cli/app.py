"""``ckptfix`` commands (typer). Each parses its options, calls one API function and prints the result.

Exit codes (the table in README.md and docs/user-guide.md): 0 success (``diagnose``: fresh or differs; ``check``: the
train op runs the BN update ops); 1 user error (one or two lines naming the fix; ``CKPTFIX_DEBUG=1`` shows the
traceback); 2 a bad option or option value (one line); 3 ``diagnose`` found stale statistics (``check``: the train op
never runs some BN update ops); 4 nothing to recalibrate (no BN layer in the graph or none selected; ``check``: no BN
layer); 5 the repair gate refused (``diagnose``: inconclusive; ``check``: the graph cannot tell); 130 interrupted
(Ctrl-C); 143 terminated (SIGTERM).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Callable, List, Optional

import typer

from ckptfix import _quiet
from ckptfix.errors import CkptfixError, OptionError, PreprocessingUnknown, RepairRefused
from ckptfix.options import DataFormat, Estimator, ModelFormat, Options, Preset
from ckptfix.report import DEFAULT_ROWS

STALE_EXIT_CODE = 3

MODEL, DATA, STATISTICS, OUTPUT, SAFETY = "Model", "Data", "Statistics", "Output", "Safety"
PANELS = (MODEL, DATA, STATISTICS, OUTPUT, SAFETY)


def _metavar(param) -> str | None:
    """What follows an option in --help and the usage line: its metavar, the choices of a choice option
    (``pooled|batch-mean``), nothing for a flag; an argument's name in capitals."""
    if param.param_type_name == "argument":
        return param.metavar or param.name.upper()
    if param.is_flag or param.count:
        return None
    if param.metavar:
        return param.metavar
    choices = getattr(param.type, "choices", None)
    if choices:
        return "|".join(str(getattr(choice, "value", choice)) for choice in choices)
    return param.type.name.upper()


def _help_record(param, ctx) -> tuple[str, str] | None:
    """One --help row, the way click and pip print them: ``-o, --output PATH`` then the help; a flag pair's
    default is named (``--shuffle / --no-shuffle ... (default: --shuffle)``), and a value's default when the
    help does not already say it."""
    if getattr(param, "hidden", False):
        return None
    metavar, help_text, default = _metavar(param), param.help or "", param.default
    if param.param_type_name == "argument":
        names, shown = metavar, None if param.required else default
    else:
        names = ", ".join(param.opts) + (f" {metavar}" if metavar else "")
        if param.secondary_opts:
            names += " / " + ", ".join(param.secondary_opts)
            shown = param.opts[0] if default else param.secondary_opts[0]
        else:
            shown = getattr(default, "value", default) if metavar and "default" not in help_text else None
    if shown in (None, ()):
        return names, help_text
    return names, f"{help_text.rstrip('.')} (default: {shown})."


class _HelpNames:
    """``-h, --help`` in that order on every run (click builds the help option from a set of names, so the order
    changed with Python's string hashing between identical runs)."""

    def get_help_option_names(self, ctx) -> list[str]:
        taken = {name for param in self.params for name in (*param.opts, *param.secondary_opts)}
        return [name for name in ctx.help_option_names if name not in taken]


class _Group(_HelpNames, typer.core.TyperGroup):
    """The ``ckptfix`` group: its help option in a fixed order."""


class _Command(_HelpNames, typer.core.TyperCommand):
    """A command whose --help reads like pip's or saved_model_cli's: ``Usage: ckptfix recalibrate [OPTIONS]
    CKPT DATA``, plain metavars, no types on flags, the options grouped into sections (``Model options:``...)."""

    def get_short_help_str(self, limit: int = 45) -> str:
        """The first line of the docstring, whole (the command list wraps it instead of cutting it)."""
        return (self.help or "").strip().splitlines()[0].split(". ")[0].rstrip(".")

    def collect_usage_pieces(self, ctx) -> list[str]:
        arguments = [p for p in self.get_params(ctx) if p.param_type_name == "argument"]
        return [self.options_metavar, *(_metavar(p) if p.required else f"[{_metavar(p)}]" for p in arguments)]

    def format_options(self, ctx, formatter) -> None:
        sections: dict[str, list] = {}
        for param in self.get_params(ctx):
            record = _help_record(param, ctx)
            if record is not None:
                panel = getattr(param, "rich_help_panel", None)
                title = "Arguments" if param.param_type_name == "argument" else f"{panel} options" if panel else "Options"
                sections.setdefault(title, []).append(record)
        for title in ("Arguments", "Options", *(f"{panel} options" for panel in PANELS)):
            if title in sections:
                with formatter.section(title):
                    formatter.write_dl(sections[title])


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: no markup eating '[plot]', no boxes, no <type> after every flag
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
    help="Repair stale BatchNorm moving statistics in TensorFlow checkpoints.",
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"ckptfix {version('ckptfix')}")
        raise typer.Exit()


@app.callback()
def _app(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    """Repair stale BatchNorm moving statistics in TensorFlow checkpoints."""


def _listed(choices) -> str:
    """``"a, b or c"``: the values of an enum of choices, for a help string."""
    values = [choice.value for choice in choices]
    return ", ".join(values[:-1]) + " or " + values[-1]


PRESETS = ", ".join(preset.value for preset in Preset)


def _preprocess(value: str) -> str:
    """--preprocess: a preset, or package.module:function (a usage error otherwise)."""
    if ":" in value or value in {preset.value for preset in Preset}:
        return value
    raise typer.BadParameter(f"must be a preset ({PRESETS}) or package.module:function (got {value})")


def _whole(value: str) -> int:
    """An integer option's value (a usage error naming the option otherwise)."""
    try:
        return int(value)
    except ValueError:
        raise typer.BadParameter(f"must be a whole number (got {value})") from None


def _number(value: str) -> float:
    """A number option's value (a usage error naming the option otherwise)."""
    try:
        return float(value)
    except ValueError:
        raise typer.BadParameter(f"must be a number (got {value})") from None


def _devices(value: str) -> str:
    """--devices: all, a count, or device names (a usage error otherwise); visibility is checked by the run."""
    from ckptfix.scaling.devices import parse_devices

    try:
        parse_devices(value)
    except CkptfixError as error:
        raise typer.BadParameter(str(error).removeprefix("--devices").lstrip(": ")) from None
    return value


# Options shared by several commands, declared once; each named as its ckptfix.options.Options field.
Checkpoint = Annotated[str, typer.Argument(metavar="CKPT", help="Checkpoint prefix, folder with a 'checkpoint' file, or one of its files; a frozen graph (.pb, .pbtxt); a Keras .keras/.h5/.weights.h5 file, TF2 checkpoint or SavedModel.")]
Data = Annotated[Path, typer.Argument(metavar="DATA", help="Folder or file of calibration samples: images, .npy/.npz, or TFRecords.")]

Meta = Annotated[Optional[Path], typer.Option(metavar="PATH", help="The .meta graph, if not beside the checkpoint.", rich_help_panel=MODEL)]
Model = Annotated[Optional[str], typer.Option(metavar="MODULE:FN", help="Runs your code. TF1 checkpoint without .meta: builds its graph (like slim's nets_factory); Keras/TF2 file: returns the model the file's weights are loaded into.", rich_help_panel=MODEL)]
NumClasses = Annotated[Optional[int], typer.Option(parser=_whole, metavar="N", help="With --model: its num_classes.", rich_help_panel=MODEL)]
ModelArg = Annotated[Optional[list[str]], typer.Option(metavar="KEY=VALUE", help="With --model: a keyword argument (Python literal); repeatable.", rich_help_panel=MODEL)]
ModelInputShape = Annotated[Optional[str], typer.Option(metavar="HxWxC", help="With --model: per-sample input shape (default: its default_image_size).", rich_help_panel=MODEL)]
ArgScope = Annotated[Optional[str], typer.Option(metavar="MODULE:FN", help="With --model: returns the slim arg_scope to build under.", rich_help_panel=MODEL)]
# Keras / TF2 models (docs/keras.md). --model-format, not --format: --format picks the calibration data kind.
ModelFormatOption = Annotated[Optional[ModelFormat], typer.Option("--model-format", metavar="FORMAT", help=f"{_listed(ModelFormat)} (default: detected from CKPT).", rich_help_panel=MODEL)]
CustomObjects = Annotated[Optional[List[str]], typer.Option("--import", metavar="MODULE[:NAME]", help="Runs your code. Keras file with custom layers: the module defining or registering them (MODULE:NAME: a dict of custom objects); repeatable.", rich_help_panel=MODEL)]
Architecture = Annotated[Optional[Path], typer.Option(metavar="PATH", help="A .keras file or config .json: the architecture, for files without one.", rich_help_panel=MODEL)]
Signature = Annotated[Optional[str], typer.Option(metavar="NAME", help="SavedModel signature to measure (default: serving_default).", rich_help_panel=MODEL)]
TrainingFlag = Annotated[Optional[str], typer.Option(metavar="TENSOR", help="Boolean training-flag tensor, fed False (default: detected).", rich_help_panel=MODEL)]

BatchSize = Annotated[Optional[int], typer.Option(parser=_whole, metavar="N", help="Samples per forward pass (default: the graph input's fixed batch size, else 32).", rich_help_panel=DATA)]
NumSamples = Annotated[Optional[int], typer.Option(parser=_whole, metavar="N", help="Stop after this many samples (default: all).", rich_help_panel=DATA)]
UntilStable = Annotated[Optional[float], typer.Option(parser=_number, metavar="TOL", help="Stop once every layer's standard errors are below TOL, e.g. 0.01 (checked from 16 batches on).", rich_help_panel=DATA)]
Shuffle = Annotated[bool, typer.Option("--shuffle/--no-shuffle", help="Shuffle the samples (--no-shuffle: sorted files, array order).", rich_help_panel=DATA)]
Seed = Annotated[int, typer.Option(parser=_whole, metavar="N", help="Seed of the shuffle.", rich_help_panel=DATA)]
InputName = Annotated[Optional[List[str]], typer.Option("--input", metavar="TENSOR", help="Tensor(s) fed the batches (default: detected); several: --input a,b or repeat it.", rich_help_panel=DATA)]
Preprocess = Annotated[Optional[str], typer.Option(parser=_preprocess, metavar="PRESET|MODULE:FN", help=f"Image preprocessing: a preset ({PRESETS}) or your function (default: what the model says; images for a model that says nothing need it).", rich_help_panel=DATA)]
ImageSize = Annotated[Optional[str], typer.Option(metavar="H[xW]", help="Size images are resized to (224: 224x224), if the input has none.", rich_help_panel=DATA)]
CentralCrop = Annotated[Optional[float], typer.Option(parser=_number, metavar="F", help="Keep the central F of each image side first (slim's eval: 0.875).", rich_help_panel=DATA)]
DataFormatOption = Annotated[Optional[DataFormat], typer.Option("--format", metavar="KIND", help=f"{_listed(DataFormat)}: the files to use in a folder mixing kinds.", rich_help_panel=DATA)]
Feature = Annotated[str, typer.Option(metavar="NAME", help="TFRecord feature holding the encoded image or raw sample.", rich_help_panel=DATA)]
Strict = Annotated[bool, typer.Option("--strict", help="Stop at the first unreadable file instead of skipping it.", rich_help_panel=DATA)]

Include = Annotated[Optional[str], typer.Option(metavar="REGEX", help="Only BN layers whose scope matches.", rich_help_panel=STATISTICS)]
Exclude = Annotated[Optional[str], typer.Option(metavar="REGEX", help="Skip BN layers whose scope matches.", rich_help_panel=STATISTICS)]
EstimatorOption = Annotated[Estimator, typer.Option("--estimator", metavar="|".join(e.value for e in Estimator), help="pooled: exact statistics of all samples; batch-mean: mean of per-batch ones.", rich_help_panel=STATISTICS)]
OutputTensor = Annotated[Optional[str], typer.Option(metavar="TENSOR", help="Output compared in the agreement check (default: detected logits).", rich_help_panel=STATISTICS)]
AgreementSamples = Annotated[int, typer.Option(parser=_whole, metavar="N", help="How many of the first samples the agreement check uses.", rich_help_panel=STATISTICS)]
Against = Annotated[Optional[Path], typer.Option(metavar="CKPT", help="Another checkpoint (e.g. the pretrained one): statistics identical to it are flagged (evidence of staleness).", rich_help_panel=STATISTICS)]

Output = Annotated[Optional[Path], typer.Option("-o", "--output", metavar="PATH", help="Output folder (default: <checkpoint folder>-recalibrated); a file for .pb/.pbtxt/.keras/.h5 inputs (default: <name>-recalibrated.<ext>).", rich_help_panel=OUTPUT)]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output: a folder only if it holds a model ckptfix writes and nothing else; and existing --report/--summary/--plot files.", rich_help_panel=OUTPUT)]
OverwriteSides = Annotated[bool, typer.Option("--overwrite", help="Replace existing --report/--summary/--plot files.", rich_help_panel=OUTPUT)]
Report = Annotated[Optional[Path], typer.Option(metavar="FILE.json", help="Also write the report as JSON to this file.", rich_help_panel=OUTPUT)]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print the report as JSON (notices stay on stderr).", rich_help_panel=OUTPUT)]
ShowAll = Annotated[bool, typer.Option("--all/--truncate", help=f"Show every layer, or only the first {DEFAULT_ROWS}.", rich_help_panel=OUTPUT)]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show the progress on stderr: a bar on a terminal, plain lines otherwise.", rich_help_panel=OUTPUT)]
Plot = Annotated[Optional[Path], typer.Option(metavar="FILE.png", help="Also draw the per-layer drift and the agreement (.png, .pdf, .svg...; needs pip install 'ckptfix[plot]').", rich_help_panel=OUTPUT)]
Force = Annotated[bool, typer.Option("--force", help="Write statistics the repair gate refuses (worse agreement, too little or degenerate data).", rich_help_panel=OUTPUT)]
Adapt = Annotated[bool, typer.Option("--adapt", help="Also recompute BN layers frozen while training (trainable=False): adapt them to this data.")]
Summary = Annotated[Optional[Path], typer.Option(metavar="FILE.md", help="Also write the facts as a Markdown table (CI step summaries).", rich_help_panel=OUTPUT)]
Devices = Annotated[Optional[str], typer.Option(parser=_devices, metavar="all|N|/GPU:0,...", help="Where whole batches run: all (the default: every GPU, else the CPU), the first N GPUs, or device names; same statistics on any number. Workers: see TF_CONFIG in docs/scaling-out.md.", rich_help_panel=DATA)]
ClusterTimeout = Annotated[Optional[float], typer.Option(parser=_number, metavar="SECONDS", help="TF_CONFIG workers: how long each waits for the others to join at start-up and to send their statistics (default: $CKPTFIX_WORKER_TIMEOUT, else 3600).", rich_help_panel=DATA)]
Verbose = Annotated[bool, typer.Option("-v", "--verbose", help="Show TensorFlow's own log output.", rich_help_panel=OUTPUT)]

Unsafe = Annotated[bool, typer.Option("--unsafe", help="Keras safe mode off: load Lambda layers holding Python code (trust the file).", rich_help_panel=SAFETY)]
AllowUnsafeOps = Annotated[bool, typer.Option("--allow-unsafe-ops", help="Run graphs whose forward pass executes Python or writes files (trust the graph).", rich_help_panel=SAFETY)]

_OPTION_FIELDS = frozenset(field.name for field in dataclasses.fields(Options))


def _options(ctx: typer.Context) -> Options:
    """The command's :class:`Options` from its parsed parameters: those named as Options fields, with
    --num-classes and --model-arg merged into ``model_args``, and notices printed."""
    from ckptfix.graph.model_fn import parse_model_args

    params = ctx.params
    model_args = parse_model_args(params.get("model_arg"))
    if params.get("num_classes") is not None:
        model_args["num_classes"] = params["num_classes"]
    given = {name: value for name, value in params.items() if name in _OPTION_FIELDS}
    return Options(**given, model_args=model_args, on_notice=_notice)


def _notice(message: str) -> None:
    """A notice on its own line of stderr, also while a progress bar is drawn there (tqdm clears the bar,
    prints, and draws it again below)."""
    from tqdm import tqdm

    tqdm.write(f"notice: {message}", file=sys.stderr)


def _close_progress_bars() -> None:
    """Clear bars still on the terminal: Ctrl-C while a tqdm bar is being created (it draws itself before its
    ``with`` block starts) leaves it open, and the message would be glued to it."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _run(action: Callable[[], int | None], ctx: typer.Context | None = None) -> None:
    """Run a command body, turning user errors into a short message and their exit code. Once the output is in
    place (the commit point, :func:`ckptfix.interrupts.commit_scope`) Ctrl-C is ignored to the end of the
    process: the run completes its report and exits 0."""
    from ckptfix.interrupts import commit_scope, ignore_interrupts

    try:
        _check_tensorflow()
        with commit_scope() as scope:
            code = action()
            if scope.committed:
                ignore_interrupts()
    except CkptfixError as error:
        if os.environ.get("CKPTFIX_DEBUG") == "1":
            raise
        typer.echo(f"error: {error}", err=True)
        if isinstance(error, OptionError) and not isinstance(error, PreprocessingUnknown):  # a usage error: click's line
            _see_help(ctx)
        if getattr(error, "user_traceback", None):  # raised inside the user's own code: their traceback
            typer.echo(error.user_traceback.rstrip("\n"), err=True)
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt as interrupt:
        _close_progress_bars()
        raise typer.Exit(_interrupted(interrupt)) from None
    if code:
        raise typer.Exit(code)


def _check_tensorflow() -> None:
    """This environment's TensorFlow inside the supported range, before any work: one line otherwise (an error
    raised, or ``warning: ...`` for a newer, untested TensorFlow)."""
    import warnings

    from ckptfix import compat

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", compat.TensorFlowVersionWarning)
        compat.require_supported_tensorflow()
    for warning in caught:
        if issubclass(warning.category, compat.TensorFlowVersionWarning):
            typer.echo(f"warning: {warning.message}", err=True)


def _print_json(content: dict) -> None:
    typer.echo(json.dumps(content, indent=2))


def _echo_written(options_paths) -> None:
    """Name each side output written (stderr, so --json stays parseable), after what the run printed: they are
    put in place after the model (:mod:`ckptfix.io.outputs`), and ``2>&1`` then reads in the order of the run.
    ``typer.echo`` flushes each line, so stdout's lines are out before these."""
    for path in options_paths:
        if path is not None:
            typer.echo(f"wrote {path}", err=True)


def _echo_cause(result, stale: bool) -> None:
    """The cause read from the training graph: when it names one, or what it says of stale statistics."""
    if result.cause is not None and (result.cause.found or stale):
        typer.echo(f"\ncause: {result.cause.message}")


# The options of each command, by group; each option is declared once, above, and each group once, here.
_REQUIRED = inspect.Parameter.empty
CKPT_ARGUMENT = (("checkpoint", Checkpoint, _REQUIRED),)
DATA_ARGUMENT = (("data", Data, _REQUIRED),)
MODEL_OPTIONS = (
    ("meta", Meta, None), ("model", Model, None), ("num_classes", NumClasses, None), ("model_arg", ModelArg, None),
    ("input_shape", ModelInputShape, None), ("arg_scope", ArgScope, None), ("model_format", ModelFormatOption, None),
    ("architecture", Architecture, None), ("signature", Signature, None), ("custom_objects", CustomObjects, None),
)
FEED_OPTIONS = (("training_flag", TrainingFlag, None),)
DATA_OPTIONS = (
    ("batch_size", BatchSize, None), ("num_samples", NumSamples, None), ("until_stable", UntilStable, None),
    ("shuffle", Shuffle, True), ("seed", Seed, 0),
    ("input_name", InputName, None), ("preprocess", Preprocess, None), ("image_size", ImageSize, None),
    ("central_crop", CentralCrop, None), ("data_format", DataFormatOption, None), ("feature", Feature, "image/encoded"),
    ("strict", Strict, False), ("devices", Devices, None), ("cluster_timeout", ClusterTimeout, None),
)
STATISTICS_OPTIONS = (
    ("include", Include, None), ("exclude", Exclude, None), ("estimator", EstimatorOption, Estimator.POOLED),
    ("output_tensor", OutputTensor, None), ("agreement_samples", AgreementSamples, 256), ("adapt", Adapt, False),
)
WRITE_OPTIONS = (("output", Output, None), ("overwrite", Overwrite, False), ("force", Force, False))
REPORT_OPTIONS = (("report", Report, None), ("plot", Plot, None), ("summary", Summary, None))
PRINT_OPTIONS = (("json_output", JsonOutput, False),)
RUN_OPTIONS = (("progress", Progress, True), ("verbose", Verbose, False))
SAFETY_OPTIONS = (("unsafe", Unsafe, False), ("allow_unsafe_ops", AllowUnsafeOps, False))


def _command(*groups, show_all: bool):
    """Register ``body`` as a command taking the parameters of ``groups`` (in order) and ``--all/--truncate``
    with this command's default; typer reads them from the signature set here, ``body`` gets them as keywords."""

    def register(body):
        def command(ctx: typer.Context, **params) -> None:
            body(ctx, **params)

        parameters = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
        for name, annotation, default in (*(entry for group in groups for entry in group), ("show_all", ShowAll, show_all)):
            parameters.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=annotation, default=default))
        command.__signature__ = inspect.Signature(parameters)
        command.__name__, command.__doc__ = body.__name__, body.__doc__
        return app.command(name=body.__name__.rstrip("_"), cls=_Command)(command)

    return register


@_command(CKPT_ARGUMENT, DATA_ARGUMENT, MODEL_OPTIONS, FEED_OPTIONS, DATA_OPTIONS, STATISTICS_OPTIONS, WRITE_OPTIONS,
          REPORT_OPTIONS, PRINT_OPTIONS, RUN_OPTIONS, SAFETY_OPTIONS, show_all=True)
def recalibrate(ctx, checkpoint, data, report, plot, summary, json_output, show_all, **_) -> None:
    """Recompute every BN layer's moving mean/variance from calibration data and write a new checkpoint."""

    def action() -> None:
        from ckptfix.api import run
        from ckptfix.data.batching import name_few

        result = run("recalibrate", checkpoint, data, _options(ctx))
        if result.worker != 0:
            typer.echo(f"worker {result.worker} of {result.num_workers}: statistics combined; the chief (worker 0) "
                       f"writes {result.output_checkpoint} and reports.")
            return
        if json_output:
            _print_json(result.to_dict())
            _echo_written((report, summary, plot))
            return
        typer.echo(result.format_table(show_all))
        typer.echo(f"\n{len(result.layers)} BN layers recalibrated ({result.estimator} estimator) from "
                   f"{result.stop_summary()}.")
        if result.devices_summary():
            typer.echo(result.devices_summary())
        if result.samples_skipped:
            typer.echo(f"{result.samples_skipped} unreadable file(s) or record(s) skipped: {name_few(result.skipped_files)}")
        if result.agreement is not None:
            typer.echo(result.agreement.summary())
        if result.untouched_layers:
            typer.echo(f"{len(result.untouched_layers)} layers left as they were: {', '.join(result.untouched_layers)}")
        _echo_cause(result, stale=False)
        typer.echo(f"wrote {result.output_checkpoint}")
        _echo_written((report, summary, plot))

    _run(action, ctx)


@_command(CKPT_ARGUMENT, DATA_ARGUMENT, MODEL_OPTIONS, FEED_OPTIONS, DATA_OPTIONS, STATISTICS_OPTIONS,
          (("against", Against, None),), REPORT_OPTIONS, (("overwrite", OverwriteSides, False),), PRINT_OPTIONS,
          RUN_OPTIONS, SAFETY_OPTIONS, show_all=False)
def diagnose(ctx, checkpoint, data, report, plot, summary, json_output, show_all, **_) -> None:
    """Measure how stale the stored statistics are (writes nothing). Exit 0 fresh (or differs), 3 stale, 5
    inconclusive, 1 error."""

    def action() -> int:
        from ckptfix.api import run

        result = run("diagnose", checkpoint, data, _options(ctx))
        if result.worker != 0:
            typer.echo(f"worker {result.worker} of {result.num_workers}: statistics combined; the chief (worker 0) reports.")
            return 0
        if json_output:
            _print_json(result.to_dict())
        else:
            typer.echo(result.format_table(show_all))
            if result.devices_summary():
                typer.echo(result.devices_summary())
            if result.agreement is not None:
                typer.echo("\n" + result.agreement.summary())
            if result.noise_layers:
                typer.echo(f"\n{len(result.noise_layers)} layer(s) over a threshold by no more than the noise of this "
                           f"data (more data would tell): {', '.join(result.noise_layers)}")
            typer.echo(f"\ndata: {result.stop_summary()}")
            typer.echo(_verdict(result, _command_line(ctx, 'recalibrate', REPAIR_LEAVES_OUT)))
            _echo_cause(result, result.stale)
        _echo_written((report, summary, plot))
        return {"stale": STALE_EXIT_CODE, "inconclusive": RepairRefused.exit_code}.get(result.verdict, 0)

    _run(action, ctx)


#: the options of a diagnose or inspect run that its suggested next command leaves out (they only shape what is
#: printed or written beside it, or are not the next command's)
REPAIR_LEAVES_OUT = frozenset({"against", "report", "plot", "summary", "overwrite", "json_output", "show_all", "progress",
                               "verbose"})


def _command_line(ctx: typer.Context, command: str, leave_out: frozenset[str], data: str | None = None) -> str:
    """``ckptfix COMMAND CKPT DATA`` with the options given on this command line (``--num-samples 40``,
    ``--model ...``, ``--import ...``) but ``leave_out``'s, quoted for a shell, so the suggested next command
    measures the same; ``data``: DATA's placeholder when this command takes none."""
    import shlex

    arguments = [str(ctx.params[p.name]) for p in ctx.command.params if p.param_type_name == "argument"]
    options = []
    for param in ctx.command.params:
        value, source = ctx.params.get(param.name), ctx.get_parameter_source(param.name)
        if (param.param_type_name == "argument" or param.name in leave_out or value is None
                or source is None or source.name != "COMMANDLINE"):
            continue
        if param.is_flag:
            options.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            for each in value if isinstance(value, (list, tuple)) else [value]:
                options += [param.opts[-1], str(getattr(each, "value", each))]
    line = shlex.join(["ckptfix", command, *arguments])
    return " ".join([line, *([data] if data else []), *([shlex.join(options)] if options else [])])


def _verdict(result, repair: str) -> str:
    """The diagnosis in one line, ending with the command to run next when there is one (see
    :class:`ckptfix.report.DiagnosisReport` for the verdicts). The repair command is suggested only when the
    repair gate passes on this data (``recalibrate`` would write); otherwise the line says why it would not."""
    drifted = f"{len(result.stale_layers)} of {len(result.layers)} BN layers on {result.num_samples} samples"
    if result.verdict == "inconclusive":
        return f"INCONCLUSIVE ({result.num_samples} samples): {result.gate.reasons[0]}"
    refused = result.gate is not None and not result.gate.passed
    next_step = (f"but a repair from this data would be refused: {result.gate.reasons[0]}" if refused
                 else f"repair with: {repair}")
    if result.verdict == "stale":
        return f"STALE: {drifted} ({result.evidence[0]}); {next_step}"
    if result.verdict == "differs":
        if refused:
            return (f"DIFFERS: the stored statistics of {drifted} differ from this data, with no sign of a training "
                    f"bug (a domain shift looks the same); {next_step}")
        return (f"DIFFERS: the stored statistics of {drifted} differ from this data, with no sign of a training bug "
                f"(a domain shift looks the same); recalibrating would adapt the model to this data: {repair}")
    return f"fresh: all {len(result.layers)} BN layers match the calibration data ({result.num_samples} samples)"


@_command(CKPT_ARGUMENT, MODEL_OPTIONS, (("against", Against, None),), PRINT_OPTIONS, (("verbose", Verbose, False),),
          (("unsafe", Unsafe, False),), show_all=False)
def inspect_(ctx, checkpoint, json_output, show_all, **_) -> None:
    """List every BN layer and its stored statistics; flag never-updated ones. Needs no data; exit 0."""

    def action() -> None:
        from ckptfix.api import run

        result = run("inspect", checkpoint, None, _options(ctx))
        if json_output:
            _print_json(result.to_dict())
            return
        typer.echo(result.format_table(show_all))
        flagged = result.flagged
        why = "initial 0/1 or identical to --against" if result.against is not None else "initial 0/1"
        typer.echo(f"\n{len(result.layers)} BN layers; " + (
            f"{len(flagged)} look never updated ({why}): "
            f"check with: {_command_line(ctx, 'diagnose', REPAIR_LEAVES_OUT - {'against'}, data='DATA')}" if flagged else "none flagged"))
        _echo_cause(result, bool(flagged))

    _run(action, ctx)


#: ``ckptfix check``'s exit code per verdict
CHECK_EXIT_CODES = {"pass": 0, "fail": STALE_EXIT_CODE, "unknown": RepairRefused.exit_code}


@app.command(cls=_Command)
def check(
    graph: Annotated[Path, typer.Argument(metavar="GRAPH", help="The training graph: the .meta tf.compat.v1.train.export_meta_graph() wrote once the train op was built, or a training checkpoint's .meta, prefix or folder.")],
    json_output: JsonOutput = False,
    verbose: Verbose = False,
) -> None:
    """Check that the train op runs the BN update ops, before training or in CI. Exit 0 it does, 3 it does not
    (the layers and the fix are named), 5 the graph cannot tell, 4 no BN layer, 1 error."""

    def action() -> int:
        from ckptfix.api import check as check_graph

        result = check_graph(graph)
        if json_output:
            _print_json(result.to_dict())
        else:
            typer.echo(result.summary())
        return CHECK_EXIT_CODES[result.verdict]

    _run(action)


@app.command(cls=_Command)
def demo(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Where to write the demo's model, data and repaired checkpoint.")] = Path("ckptfix-demo"),
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
    (docs/performance.md).

    CPU kernels are TensorFlow's Eigen ones (``TF_ENABLE_ONEDNN_OPTS=0``, unless the environment sets it), with
    -v too: TensorFlow turns oneDNN on by default on some x86 CPUs (newer AVX-512 ones), and there its kernels
    round the forward pass differently (musicnn's stale copy: repaired means 3.4e-3 of sqrt(var + eps) from
    the float64 reference with oneDNN, 2.4e-4 with Eigen; issue 25 item 14). The CLI owns its process; the
    Python API leaves its host's allocators, kernels and environment alone.
    """
    from ckptfix.interrupts import take_sigterm

    take_sigterm()  # SIGTERM (timeout, Kubernetes, Slurm) taken as Ctrl-C: cleaned up, one line, exit 143
    verbose = bool({"-v", "--verbose"} & set(sys.argv[1:]))
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    if not verbose:
        _quiet.quiet_native_logs()
    _quiet.silence_tensorflow(verbose=verbose)
    with _quiet.native_stderr_silenced(enabled=not verbose):
        sys.exit(_main())


def _main() -> int:
    """The app's exit code; a bad option value or usage is one line and exit 2, as :class:`OptionError` is."""
    try:
        code = app(standalone_mode=False)
    except Exception as error:
        # click's UsageError (bundled by recent typer, a dependency of older ones): matched by name
        if not any(kind.__name__ == "UsageError" for kind in type(error).__mro__):
            raise
        if type(error).__name__ == "NoArgsIsHelpError":  # no arguments: the help, as click prints it
            typer.echo(error.format_message())
            return 2
        typer.echo(f"error: {_usage_message(error)}", err=True)
        _see_help(getattr(error, "ctx", None))
        return 2
    except KeyboardInterrupt as interrupt:
        return _interrupted(interrupt)
    return code if isinstance(code, int) else 0


def _see_help(context) -> None:
    """The line after every usage error: where the command's options are listed."""
    typer.echo(f"see '{context.command_path if context is not None else 'ckptfix'} --help'.", err=True)


#: how close (difflib's ratio) an unknown option must be to a known one to be suggested: ``--batchsize`` gets
#: ``--batch-size``; ``--bogus`` gets no ``--verbose`` (click's own cut-off, 0.6, suggests it)
SUGGESTION_CUTOFF = 0.8


def _suggestions(error) -> str:
    """``(Possible options: --batch-size)`` for an unknown option close to known ones, else nothing."""
    import difflib

    known = getattr(error, "possibilities", None) or []
    close = difflib.get_close_matches(error.option_name, known, cutoff=SUGGESTION_CUTOFF) if known else []
    return f" (Possible options: {', '.join(sorted(close))})" if close else ""


def _interrupted(interrupt: KeyboardInterrupt) -> int:
    """The line and exit code of a run stopped by Ctrl-C (130) or SIGTERM (143), before its commit point."""
    from ckptfix.interrupts import Terminated

    if isinstance(interrupt, Terminated):
        typer.echo("terminated: nothing was written.", err=True)
        return Terminated.exit_code
    typer.echo("interrupted: nothing was written.", err=True)
    return 130


def _usage_message(error) -> str:
    """click's message in the form every bad option value takes (:class:`OptionError`'s too): ``--batch-size
    must be a whole number (got abc)``, ``--estimator must be one of pooled, batch-mean (got foo)``; none of
    the validation library's wording (``Value error, ...``, ``Input should be a valid integer...``)."""
    if type(error).__name__ == "NoSuchOption":
        return f"No such option: {error.option_name}{_suggestions(error)}"
    message = error.format_message().strip()
    invalid = re.fullmatch(r"Invalid value for (.+?): (.*)", message, re.S)
    if invalid is None:
        return message
    names, reason = invalid.groups()
    option = "/".join(re.findall(r"'([^']+)'", names)) or names
    choice = re.fullmatch(r"(?:Value error, )?'(.*)' is not one of (.*?)\.?", reason)
    if choice is not None:
        values = ", ".join(re.findall(r"'([^']*)'", choice.group(2)))
        reason = f"must be one of {values} (got {choice.group(1)})"
    reason = re.sub(r"^(?:Value error, )?Input should be a valid (\w+).*$", r"must be a valid \1", reason)
    return f"{option} {reason.rstrip('.')}."
