"""``--plot FILE.png``: the drift of every BN layer and the output agreement, in one picture.

Left, two panels sharing the x axis (layers in network order): the RMS over channels of the mean shift
``(stored − recomputed mean) / sqrt(recomputed var + ε)`` and of the log variance ratio
``ln((stored var + ε) / (recomputed var + ε))``, as bars (red: stale, blue: fresh) with the largest channel as
a dot, on a log scale, the stale thresholds of :mod:`ckptfix.diagnostics.drift` dashed. Right: top-1
agreement of inference mode with training mode using the stored and the recomputed statistics.

matplotlib is an optional extra, imported only here and only when plotting; the figure is drawn on an Agg
canvas of its own, so the caller's pyplot state and backend are left alone.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

from ckptfix.diagnostics.drift import LOG_VARIANCE_RATIO_THRESHOLD, MEAN_SHIFT_THRESHOLD
from ckptfix.errors import CkptfixError
from ckptfix.render import facts

_FLOOR = 1e-3  # drift values below this are drawn at it (log scale)
_STALE, _FRESH = "#d62728", "#1f77b4"
_MAX_LABELS = 40  # past this many layers, only every k-th layer is labelled


def image_format(path: str | Path) -> str:
    """The picture format ``path``'s extension names (``png``, ``pdf``, ``svg``...), checked before a long run:
    a CkptfixError when matplotlib is missing or does not write that format."""
    Figure, FigureCanvasAgg, _, _ = _matplotlib()
    supported = FigureCanvasAgg(Figure()).get_supported_filetypes()
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in supported:
        raise CkptfixError(f"--plot {path}: name the file with a picture format's extension "
                           f"({', '.join('.' + name for name in sorted(supported))}).")
    return suffix


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch
    except ImportError:
        raise CkptfixError("--plot needs matplotlib: pip install 'ckptfix[plot]'") from None
    return Figure, FigureCanvasAgg, Line2D, Patch


def _short_names(names: list[str]) -> list[str]:
    """Layer names without their common scope prefix and a trailing ``/BatchNorm``-like part."""
    parts = [name.split("/") for name in names]
    common = 0
    while parts and all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
        common += 1
    short = []
    for p in parts:
        rest = p[common:]
        if len(rest) > 1 and rest[-1].lower() in {"batchnorm", "batch_normalization", "bn"}:
            rest = rest[:-1]
        short.append("/".join(rest))
    return short


def plot_report(report: dict, image: str) -> bytes:
    """Draw a recalibration or diagnosis report dict (``to_dict()``) as an ``image`` file (``png``, ``pdf``...:
    :func:`image_format`); returns its bytes."""
    content = io.BytesIO()
    draw_report(report).savefig(content, format=image)
    return content.getvalue()


def _title(report: dict, width: float) -> str:
    """The headline, and the cause's first line wrapped to the figure's width (never cut)."""
    title = f"ckptfix {facts.headline(report)}"
    found = facts.cause(report)
    if found is not None:
        per_line = int(width * 72 / (_TITLE_SIZE * 0.62))  # DejaVu Sans averages ~0.6 em per character
        title += "\n" + textwrap.fill(f"cause: {found['message'].splitlines()[0]}", per_line)
    return title


_TITLE_SIZE = 10


def draw_report(report: dict):
    """The report's picture as a matplotlib ``Figure`` on an Agg canvas of its own (see the module docstring)."""
    Figure, FigureCanvasAgg, Line2D, Patch = _matplotlib()
    layers = facts.layers(report)
    count = max(len(layers), 1)
    width = min(max(8.0, 4.0 + 0.1 * count), 20.0)
    figure = Figure(figsize=(width, 6.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(2, 2, width_ratios=[max(4.0, width - 3.0), 2.6])
    shift_axes = figure.add_subplot(grid[0, 0])
    ratio_axes = figure.add_subplot(grid[1, 0], sharex=shift_axes)
    agreement_axes = figure.add_subplot(grid[:, 1])

    positions = list(range(len(layers)))
    colours = [_STALE if layer.stale else _FRESH for layer in layers]
    for axes, rms, worst, threshold, label in (
        (shift_axes, [l.mean_shift for l in layers], [l.mean_shift_max for l in layers], MEAN_SHIFT_THRESHOLD,
         "mean shift (σ = sqrt(var + ε))"),
        (ratio_axes, [l.log_variance_ratio for l in layers], [l.log_variance_ratio_max for l in layers],
         LOG_VARIANCE_RATIO_THRESHOLD, "|ln((var + ε) ratio)|"),
    ):
        axes.bar(positions, [max(v, _FLOOR) for v in rms], width=0.8, color=colours)
        axes.plot(positions, [max(v, _FLOOR) for v in worst], "o", color="black",
                  markersize=4 if count <= _MAX_LABELS else 2)
        axes.axhline(threshold, color="black", linestyle="--", linewidth=1)
        axes.annotate(f"{threshold:g}", (1.0, threshold), xycoords=("axes fraction", "data"), xytext=(2, 0),
                      textcoords="offset points", va="center", fontsize=7)
        axes.set_yscale("log")
        axes.set_ylim(bottom=_FLOOR * 0.8, top=max([threshold * 4, *[max(v, _FLOOR) * 2.5 for v in worst]]))
        axes.set_ylabel(label)
        axes.grid(axis="y", which="major", alpha=0.3)
    shift_axes.tick_params(labelbottom=False)
    shift_axes.set_title("stored vs recomputed BN statistics, RMS over channels", fontsize=10, loc="left")
    handles = [Patch(color=colour, label=f"{name} layer") for colour, name in ((_STALE, "stale"), (_FRESH, "fresh"))
               if colour in colours]  # only the kinds of layer drawn
    handles += [Line2D([], [], marker="o", linestyle="", color="black", markersize=4, label="worst channel"),
                Line2D([], [], linestyle="--", color="black", label="stale threshold")]
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)

    step = max(1, -(-len(layers) // _MAX_LABELS))
    shown = positions[::step]
    names = _short_names([layer.name for layer in layers])
    ratio_axes.set_xticks(shown)
    ratio_axes.set_xticklabels([f"{k}: {names[k]}" if step > 1 else names[k] for k in shown], rotation=60,
                               ha="right", fontsize=8 if len(shown) <= 20 else 6)
    ratio_axes.set_xlim(-0.6, max(len(layers), 1) - 0.4)
    ratio_axes.set_xlabel("BN layers in network order" + (f" (every {step}th labelled)" if step > 1 else ""))

    _draw_agreement(agreement_axes, report)
    figure.suptitle(_title(report, width), fontsize=_TITLE_SIZE, x=0.01, ha="left")
    return figure


def _draw_agreement(axes, report: dict) -> None:
    agreement = report.get("agreement")
    axes.set_title("output agreement", fontsize=11)
    if not agreement:
        axes.text(0.5, 0.5, "not measured\n(no output tensor)", ha="center", va="center", transform=axes.transAxes)
        axes.set_axis_off()
        return
    if agreement.get("top1_before") is None:  # a regression output: no decisions to count
        axes.text(0.5, 0.5, f"regression output\nrelative error {agreement['relative_error_before']:.3g} -> "
                  f"{agreement['relative_error_after']:.3g}", ha="center", va="center", transform=axes.transAxes)
        axes.set_axis_off()
        return
    values = [agreement["top1_before"] * 100, agreement["top1_after"] * 100]
    errors = [agreement["relative_error_before"], agreement["relative_error_after"]]
    bars = axes.bar([0, 1], values, color=["#999999", "#2ca02c"], width=0.6)
    for bar, value, error in zip(bars, values, errors):
        axes.text(bar.get_x() + bar.get_width() / 2, value + 2, f"{value:.0f}%\nrel. err {error:.2g}",
                  ha="center", va="bottom", fontsize=9)
    axes.set_xticks([0, 1])
    axes.set_xticklabels(["stored\nstatistics", "recomputed\nstatistics"])
    axes.set_ylim(0, 125)
    axes.set_yticks([0, 25, 50, 75, 100])
    axes.set_ylabel(f"decision agreement with training mode (%),\n{facts.compared(agreement, outputs=False)}")
