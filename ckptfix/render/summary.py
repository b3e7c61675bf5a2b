"""``--summary FILE.md``: the plot's facts as a short Markdown table, for CI step summaries
(``$GITHUB_STEP_SUMMARY``) and pull-request comments.

One row per BN layer in network order: channels, mean shift (RMS over channels of
``(stored − recomputed mean) / sqrt(recomputed var + ε)``), log variance ratio (RMS of
``ln((stored var + ε) / (recomputed var + ε))``), worst channel values, and the stale verdict; then the output
agreement before -> after and, when the report carries one, the cause read from the training graph.
"""

from __future__ import annotations

from ckptfix.diagnostics.drift import LOG_VARIANCE_RATIO_THRESHOLD, MEAN_SHIFT_THRESHOLD
from ckptfix.render import facts


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _uncertainty(layer: facts.LayerFacts) -> str:
    if layer.mean_standard_error is None or layer.variance_relative_error is None:
        return "n/a"
    return f"±{layer.mean_standard_error:.2g} / {layer.variance_relative_error:.1%}"


def markdown_summary(report: dict) -> str:
    """A recalibration or diagnosis report dict (``to_dict()``) as Markdown: a heading, a table, two lines."""
    lines = [f"### ckptfix {facts.headline(report)}", ""]
    if report.get("checkpoint"):
        lines += [f"Checkpoint `{report['checkpoint']}`"
                  + (f" -> `{report['output_checkpoint']}`" if report.get("output_checkpoint") else ""), ""]
    lines += [
        "| # | BN layer | channels | mean shift (σ) | max | log var ratio | max | ± mean (σ) / var | stored statistics |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for k, layer in enumerate(facts.layers(report), start=1):
        lines.append(
            f"| {k} | {_cell(layer.name)} | {layer.channels} | {layer.mean_shift:.3g} | {layer.mean_shift_max:.3g} "
            f"| {layer.log_variance_ratio:.3g} | {layer.log_variance_ratio_max:.3g} | {_uncertainty(layer)} "
            f"| {'**stale**' if layer.stale else 'fresh'} |"
        )
    lines += ["", f"Stale when mean shift > {MEAN_SHIFT_THRESHOLD:g} σ (σ = sqrt(var + ε) of the recomputed "
                  f"statistics) or log var ratio > {LOG_VARIANCE_RATIO_THRESHOLD:g}."]
    agreement = facts.agreement_line(report)
    lines += ["", f"**Output:** {_cell(agreement) if agreement else 'agreement not measured (no output tensor).'}"]
    cause = facts.cause(report)
    if cause is not None:
        lines += ["", f"**Cause** (`{cause['code']}`): {_cell(cause['message'])}"]
    return "\n".join(lines) + "\n"
