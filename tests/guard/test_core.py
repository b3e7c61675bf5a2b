"""The guards' shared rule (ckptfix/guard/core.py): "moved" is a change of float32 bits, decided over windows in
which the weights moved. The truth it is held to is the BN update itself, ``moving -= (moving - batch) * (1 -
momentum)``, computed here in float32 as TensorFlow and Keras compute it: momentum 0.9997 after ten steps moves,
momentum 1.0 and an update never assigned do not."""

import warnings

import numpy as np
import pytest

from ckptfix.errors import StatisticsNotUpdated, StatisticsNotUpdatedWarning
from ckptfix.guard.core import Guard, MovementCheck, Reading, excluded, moved, smallest


def ema_steps(moving, batches, momentum):
    """TF1 / slim ``assign_moving_average`` in float32: ``moving -= (moving - batch) * (1 - momentum)``."""
    moving = np.array(moving, np.float32)
    decay = np.float32(1.0) - np.float32(momentum)
    for batch in batches:
        moving = moving - (moving - np.asarray(batch, np.float32)) * decay
    return moving


def batch_variances(steps, channels=4, values=8 * 6 * 6, seed=0):
    """Per-channel batch variances of unit-normal activations (what a BN layer sees each step)."""
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(values, channels)).var(axis=0) for _ in range(steps)]


def test_momentum_0_9997_moves_the_bits_in_ten_steps_momentum_1_does_not():
    start = np.ones(4, np.float32)  # moving variance initialised to 1, batch variances near 1
    assert moved(start, ema_steps(start, batch_variances(10), 0.9997))
    assert not moved(start, ema_steps(start, batch_variances(10), 1.0))
    # a statistic already equal to the data's (a well-trained network fine-tuned): sampling noise still moves it
    converged = ema_steps(start, batch_variances(20_000, seed=1), 0.99)
    assert moved(converged, ema_steps(converged, batch_variances(10, seed=2), 0.9997))


def test_the_documented_limit_a_batch_within_2_pow_minus_24_over_1_minus_momentum_moves_nothing():
    """The module docstring's bound, both sides: |batch - moving| below 2**-24 / (1 - m) relative rounds back."""
    moving, momentum = np.ones(3, np.float32), 0.9997
    bound = 2.0 ** -24 / (1 - momentum)  # 2e-4 relative
    assert not moved(moving, ema_steps(moving, [moving * (1 + bound / 4)] * 10, momentum))
    assert moved(moving, ema_steps(moving, [moving * (1 + bound * 4)], momentum))


def test_moved_compares_bits():
    a = np.array([0.0, 1.0, np.nan], np.float32)
    assert not moved(a, a.copy())  # the same NaN is no change
    assert moved(a, np.array([-0.0, 1.0, np.nan], np.float32))
    assert moved(a, np.nextafter(a, np.float32(2)))  # one ulp
    assert moved(a, a.astype(np.float64))


def reading(step, weights, **statistics):
    return Reading(step, {name: [np.float32(v)] for name, v in statistics.items()}, [np.float32(weights)])


def test_a_window_waits_for_the_weights_then_names_the_layers_that_stood_still():
    check = MovementCheck(every_n_steps=10)
    assert check.due(0) and check.observe(reading(0, 1.0, a=0.0, b=0.0)) is None
    assert not check.due(9) and check.due(10)
    idle = check.observe(reading(10, 1.0, a=0.5, b=0.0))  # learning rate 0: no verdict on the statistics
    assert not idle.weights_moved and not idle.failed and (idle.start, idle.end) == (0, 10)
    assert not check.due(19) and check.due(20)  # reads stay every 10 steps while the window grows
    verdict = check.observe(reading(20, 2.0, a=0.5, b=0.0))
    assert (verdict.start, verdict.end) == (0, 20)  # compared with step 0's read: a moved there
    assert verdict.failed and verdict.not_updated == ["b"] and verdict.updated == ["a"]
    ok = check.observe(reading(30, 3.0, a=0.25, b=1.0))
    assert (ok.start, ok.end) == (20, 30) and not ok.failed


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "10"])
def test_every_n_steps_must_be_a_positive_whole_number(value):
    with pytest.raises(ValueError, match="every_n_steps must be a whole number"):
        MovementCheck(value)


def run(guard, statistic_moves: bool, steps: int):
    state = {"w": np.float32(0), "s": np.float32(0)}

    def read(step):
        return reading(step, state["w"], layer=state["s"])

    guard.start(read)
    for _ in range(steps):
        state["w"] += np.float32(1)
        state["s"] += np.float32(statistic_moves)
        guard.after_step(read, lambda verdict: f"stood still: {verdict.not_updated}")


def test_the_guard_raises_at_the_end_of_step_n_and_never_when_statistics_move():
    guard = Guard(every_n_steps=5)
    with pytest.raises(StatisticsNotUpdated, match=r"stood still: \['layer'\]"):
        run(guard, statistic_moves=False, steps=50)
    assert guard.step == 5
    quiet = Guard(every_n_steps=5)
    run(quiet, statistic_moves=True, steps=50)
    assert len(quiet.verdicts) == 10 and not any(v.failed for v in quiet.verdicts)


def test_warn_only_warns_once_and_trains_on():
    guard = Guard(every_n_steps=5, warn_only=True)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        run(guard, statistic_moves=False, steps=50)
    assert guard.step == 50 and sum(v.failed for v in guard.verdicts) == 10
    assert [w.category for w in seen] == [StatisticsNotUpdatedWarning]


def test_smallest_and_excluded():
    assert smallest([100, 3, 50, 3, 7], count=3) == [1, 3, 4]
    assert excluded(["conv1/BatchNorm", "logits/BatchNorm"], "^logits") == ["conv1/BatchNorm"]
    assert excluded(["a"], None) == ["a"]
