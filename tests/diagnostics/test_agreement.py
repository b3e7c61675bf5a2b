"""Agreement figures say what they counted (issue 24 item 3): samples for (N, K) outputs, frames for sequence
outputs (N, T, K); several outputs each compared, the combined figures the worst output's."""

import numpy as np

from ckptfix.diagnostics.agreement import compare


def _pair(shape, flipped: int, seed: int = 0):
    """Reference outputs and a copy whose first ``flipped`` units (flattened over all but the last axis) pick
    another class."""
    reference = np.random.default_rng(seed).normal(size=shape)
    other = reference.reshape(-1, shape[-1]).copy()
    other[:flipped] = -other[:flipped]
    return reference, other.reshape(shape)


def test_sequence_outputs_are_counted_per_frame():
    reference, before = _pair((4, 16, 5), flipped=32)
    agreement = compare("chord_tag", reference, before, reference)
    assert (agreement.unit, agreement.num_compared, agreement.num_samples) == ("frame", 64, 4)
    assert agreement.top1_before == 0.5 and agreement.top1_after == 1.0
    assert agreement.summary().startswith("inference mode agrees with training mode on 50% of 64 frames (4 samples) of chord_tag")


def test_logits_with_unit_spatial_axes_are_per_sample():
    reference, before = _pair((8, 1, 1, 3), flipped=2)
    agreement = compare("logits:0", reference, before, reference)
    assert (agreement.unit, agreement.num_compared) == ("sample", 8)
    assert "on 75% of 8 samples of logits:0" in agreement.summary()


def test_several_outputs_are_each_compared_and_combined_by_the_worst():
    tag, tag_before = _pair((2, 10, 6), flipped=5, seed=1)
    root, root_before = _pair((2, 10, 3), flipped=15, seed=2)
    agreement = compare("tag,root", {"tag": tag, "root": root}, {"tag": tag_before, "root": root_before},
                        {"tag": tag, "root": root_before})
    assert [one.output_tensor for one in agreement.outputs] == ["tag", "root"]
    assert agreement.top1_before == 0.25 and agreement.top1_after == 0.25
    assert agreement.relative_error_after == agreement.outputs[1].relative_error_after > 0
    assert agreement.summary().startswith("inference mode agrees with training mode on 20 frames (2 samples) of each of 2 outputs")
    assert agreement.to_dict()["outputs"][0]["top1_after"] == 1.0
