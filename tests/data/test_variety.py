"""How varied the calibration samples are (identical, near-identical, flat), and the agreement check's samples
drawn from the whole stream (reservoir) and mixed into new batches."""

import numpy as np
import pytest

from ckptfix.data.batching import Reservoir, Variety


def _seen(samples, batch=16) -> Variety:
    variety = Variety()
    for start in range(0, len(samples), batch):
        variety.see(samples[start:start + batch])
    return variety


def test_pooled_spread_equals_numpy_on_the_concatenated_samples():
    samples = np.random.default_rng(0).normal(size=(100, 4, 4, 3)) * np.arange(1, 49).reshape(4, 4, 3)
    variety = _seen(samples, batch=7)
    per_channel = samples.reshape(100, 16, 3)
    assert variety.spread == pytest.approx(np.mean(np.var(per_channel, axis=0)))
    assert variety.contrast == pytest.approx(np.mean(np.var(np.mean(per_channel, axis=0), axis=0)))
    assert variety.within == pytest.approx(np.mean(np.var(per_channel, axis=1)))


def test_channels_of_different_offsets_and_feature_vectors_are_not_near_identical():
    """Large per-channel offsets (activations around 1000 and 1) or tabular features are not image structure."""
    rng = np.random.default_rng(5)
    offsets = _seen(rng.normal(size=(64, 6, 6, 2)) * [0.5, 2.0] + [1000.0, 1.0])
    assert not (offsets.near_identical or offsets.flat)
    tabular = _seen(rng.normal(size=(64, 3)) * [1, 2, 3] + [400, -1, 0])
    assert not (tabular.near_identical or tabular.flat)


def test_varied_images_are_neither_identical_near_identical_nor_flat():
    images = np.random.default_rng(1).uniform(size=(64, 8, 8, 3))
    variety = _seen(images)
    assert not (variety.identical or variety.near_identical or variety.flat)


def test_one_image_with_faint_noise_is_near_identical():
    rng = np.random.default_rng(2)
    image = rng.uniform(size=(8, 8, 3))
    copies = image + rng.normal(scale=1e-3, size=(256, 8, 8, 3))
    variety = _seen(copies)
    assert variety.near_identical and not variety.identical


def test_identical_and_flat_samples():
    assert _seen(np.zeros((32, 4, 4, 1))).identical
    levels = np.random.default_rng(3).uniform(size=(32, 1, 1, 1)) * np.ones((32, 4, 4, 3))
    variety = _seen(levels)
    assert variety.flat and not variety.identical and not variety.near_identical
    assert not _seen(np.random.default_rng(4).normal(size=(32, 1))).flat  # one value per sample is never flat


def test_reservoir_keeps_samples_from_the_whole_stream_in_its_proportions():
    """A stream ordered by class (4 classes, 64 batches of 32): each class about a quarter of the kept samples,
    over many seeds (uniform sampling: binomial spread)."""
    shares = []
    for seed in range(50):
        reservoir = Reservoir(256, seed=seed)
        for k in range(64):
            reservoir.offer(np.full((32, 2), k // 16))
        assert reservoir.count == 256
        shares.append(np.bincount(reservoir.kept[:, 0].astype(int), minlength=4) / 256)
    assert np.allclose(np.mean(shares, axis=0), 0.25, atol=0.01)
    assert np.std(np.array(shares)[:, 0]) == pytest.approx(np.sqrt(0.25 * 0.75 / 256), rel=0.35)


def test_a_short_stream_is_kept_whole():
    reservoir = Reservoir(100, seed=0)
    reservoir.offer({"x": np.arange(30.0)[:, None], "y": np.arange(30)})
    reservoir.offer({"x": np.arange(30.0, 60.0)[:, None], "y": np.arange(30, 60)})
    assert reservoir.count == 60 and np.array_equal(reservoir.kept["y"], np.arange(60))
    assert np.array_equal(reservoir.kept["x"][:, 0], np.arange(60.0))


def test_mixed_batches_shuffle_the_kept_samples():
    reservoir = Reservoir(32, seed=0)
    for k in range(4):
        reservoir.offer({"x": np.full((8, 1), k, np.float32)})
    mixed = reservoir.mixed(16, exact=False, seed=1)
    assert [len(batch["x"]) for batch in mixed] == [16, 16]
    assert all(len(np.unique(batch["x"])) > 1 for batch in mixed)
    exact = reservoir.mixed(12, exact=True, seed=1)
    assert [len(batch["x"]) for batch in exact] == [12, 12]  # the remainder (8) dropped for a fixed batch size
    assert sorted(np.concatenate([b["x"] for b in reservoir.mixed(32, exact=False, seed=2)]).ravel()) == \
        sorted(np.repeat(np.arange(4.0), 8))
