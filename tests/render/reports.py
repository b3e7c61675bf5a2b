"""Synthetic report dicts of any size for the render tests."""

import numpy as np


def synthetic_report(layers: int, kind: str = "diagnosis") -> dict:
    """A report dict shaped like ``DiagnosisReport.to_dict()``: every third layer fresh, the others stale."""
    rng = np.random.default_rng(layers)
    rows = []
    for k in range(layers):
        stale = k % 3 != 0
        shift = float(rng.uniform(0.5, 20.0) if stale else rng.uniform(1e-3, 0.1))
        ratio = float(rng.uniform(0.4, 5.0) if stale else rng.uniform(1e-3, 0.1))
        rows.append({
            "name": f"InceptionV3/Mixed_{k // 10}/Branch_{k % 4}|x/Conv2d_{k}/BatchNorm", "channels": 32 + k,
            "drift": {"mean_shift": shift, "mean_shift_max": 3 * shift, "log_variance_ratio": ratio,
                      "log_variance_ratio_max": 2 * ratio, "worst_channel": k % 7,
                      "score": max(shift / 0.25, ratio / 0.3), "verdict": "stale" if stale else "fresh"},
        })
    report = {"schema_version": 1, "kind": kind, "checkpoint": "train/model.ckpt-1000", "layers": rows,
              "agreement": {"output_tensor": "logits:0", "num_samples": 256, "top1_before": 0.25,
                            "top1_after": 0.99, "relative_error_before": 1.8, "relative_error_after": 0.02}}
    if kind == "diagnosis":
        report.update(verdict="stale", stale_layers=[r["name"] for r in rows if r["drift"]["verdict"] == "stale"])
    return report
