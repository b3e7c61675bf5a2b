"""The facts both report forms show, read from a report dict (``RecalibrationReport`` / ``DiagnosisReport``
``to_dict()``): per-layer drift in network order, the headline, the output agreement and the cause."""

from __future__ import annotations

from dataclasses import dataclass



@dataclass(frozen=True)
class LayerFacts:
    """One layer's drift of the stored statistics against the recomputed ones (RMS and max over channels)."""

    name: str
    channels: int
    mean_shift: float
    mean_shift_max: float
    log_variance_ratio: float
    log_variance_ratio_max: float
    stale: bool
    #: worst channel's standard errors (mean in σ, variance relative); None when not measured or one batch
    mean_standard_error: float | None = None
    variance_relative_error: float | None = None


def layers(report: dict) -> list[LayerFacts]:
    """The measured layers in the report's order (network order)."""
    return [
        LayerFacts(
            name=layer["name"],
            channels=int(layer["channels"]),
            mean_shift=float(layer["drift"]["mean_shift"]),
            mean_shift_max=float(layer["drift"]["mean_shift_max"]),
            log_variance_ratio=float(layer["drift"]["log_variance_ratio"]),
            log_variance_ratio_max=float(layer["drift"]["log_variance_ratio_max"]),
            stale=layer["drift"]["verdict"] == "stale",
            mean_standard_error=layer.get("uncertainty", {}).get("mean_standard_error"),
            variance_relative_error=layer.get("uncertainty", {}).get("variance_relative_error"),
        )
        for layer in report.get("layers", [])
    ]


def headline(report: dict) -> str:
    """``"diagnosis: stale (2 of 2 BN layers)"`` / ``"recalibration: 2 BN layers, 2 were stale"``."""
    facts = layers(report)
    stale = sum(layer.stale for layer in facts)
    if report.get("kind") == "recalibration":
        return f"recalibration: {len(facts)} BN layers, {stale} were stale"
    verdict = report.get("verdict", "stale" if stale else "fresh")
    return f"diagnosis: {verdict} ({stale} of {len(facts)} BN layers)"


def compared(agreement: dict, outputs: bool = True) -> str:
    """What the agreement's top-1 counted: ``"256 samples"``, ``"1,024 frames (16 samples)"``, and which output(s)
    (``"of logits:0"``, ``"worst of 4 outputs (a, b, c, d)"``)."""
    unit, count, samples = agreement.get("unit", "sample"), agreement.get("num_compared"), agreement["num_samples"]
    units = f"{samples:,} samples" if unit in ("sample", "mixed") or count is None else f"{count:,} {unit}s ({samples:,} samples)"
    several = agreement.get("outputs") or []
    which = f"worst of {len(several)} outputs ({agreement['output_tensor'].replace(',', ', ')})" if several \
        else f"of {agreement['output_tensor']}"
    return f"{units}, {which}" if outputs else units


def agreement_line(report: dict) -> str | None:
    """``"decision agreement of inference with training mode 25% -> 100% of 256 samples, of logits:0 (relative
    error 1.84 -> 0.011); stable to 0.4% under the statistics' uncertainty"``; for a regression output the
    relative error alone; None when not measured."""
    agreement = report.get("agreement")
    if not agreement:
        return None
    error = (f"relative output error {agreement['relative_error_before']:.3g} -> "
             f"{agreement['relative_error_after']:.3g}")
    unstable = agreement.get("unstable")
    stability = "" if unstable is None else f"; stable to {unstable:.1%} under the statistics' uncertainty"
    if agreement.get("top1_before") is None:
        return f"{error} of {compared(agreement)} (a regression output){stability}"
    return (f"decision agreement of inference with training mode {agreement['top1_before']:.0%} -> "
            f"{agreement['top1_after']:.0%} of {compared(agreement)} ({error}){stability}")


def cause(report: dict) -> dict | None:
    """The report's ``cause`` (a :class:`~ckptfix.diagnostics.cause.Cause` dict) when present."""
    return report.get("cause") or None
