"""The labelled cases: a subject (subjects.py), the calibration data a user hands ckptfix, and the options they
pass. Each case's truth is measured (truth.py); what the tool should do follows from it (catalogue.py).

A data builder takes the case's domain and a scratch folder and returns what is passed as DATA: a numpy array
(already preprocessed), a list of batches (an ordered Python dataset: ``shuffle`` does not apply to it), or a
path (a folder of PNGs, a TFRecord file, an ``.npy`` file for the CLI runs). It is called once per case, and
the same data serves the forced measurement run and the tool's runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from decisions.subjects import (CALIBRATION_SEED, KERAS_B_BENIGN, KERAS_B_HARSH, Domain)

Builder = Callable[[Domain, Path], object]


@dataclass(frozen=True)
class Case:
    """One labelled case. ``domain``: where its data and held-out set come from (default: the subject's).
    ``degenerate``: why the data cannot support a verdict (policy), empty when it can. ``cli``: the tool runs
    as ``ckptfix`` processes (the options become flags), else through the Python API."""

    name: str
    subject: str
    what: str
    data: Builder
    options: dict = field(default_factory=dict)
    domain: Domain | None = None
    degenerate: str = ""
    cli: bool = False

    @property
    def adapt(self) -> bool:
        return bool(self.options.get("adapt"))


# --- calibration data -------------------------------------------------------------------------------------

def draw(count: int, seed: int = 0) -> Builder:
    """``count`` samples of the domain, in random order (the usual case)."""
    return lambda domain, folder: domain.sample(count, CALIBRATION_SEED + seed)[0]


def constant(count: int) -> Builder:
    """``count`` all-zero samples (a black-image folder, a broken loader)."""
    return lambda domain, folder: np.zeros_like(domain.sample(count, CALIBRATION_SEED)[0])


def near_duplicates(count: int, noise: float = 1e-3) -> Builder:
    """One sample repeated ``count`` times with Gaussian noise of std ``noise`` (an augmentation bug)."""
    def build(domain: Domain, folder: Path):
        one = domain.sample(1, CALIBRATION_SEED)[0]
        rng = np.random.default_rng(0)
        return (one + rng.normal(0.0, noise, (count, *one.shape[1:]))).astype(np.float32)

    return build


def _by_class(domain: Domain, count: int, pixels: bool = False):
    x, y = (domain.pixels if pixels else domain.sample)(count, CALIBRATION_SEED)
    order = np.argsort(y, kind="stable")
    return x[order], y[order]


def ordered_batches(count: int, batch: int = 32) -> Builder:
    """An ordered Python dataset: a list of batches, sorted by class (a generator over a class-sorted index)."""
    def build(domain: Domain, folder: Path):
        x, _ = _by_class(domain, count)
        return [x[i:i + batch] for i in range(0, count, batch)]

    return build


def class_folders(count: int) -> Builder:
    """PNG files in one folder per class (``class_0/00000.png`` ...): sorted paths are class-ordered."""
    def build(domain: Domain, folder: Path):
        import tensorflow as tf

        pixels, labels = _by_class(domain, count, pixels=True)
        for index, (image, label) in enumerate(zip(pixels, labels)):
            path = folder / "images" / f"class_{label}" / f"{index:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(tf.io.encode_png(image).numpy())
        return folder / "images"

    return build


def sorted_tfrecord(count: int) -> Builder:
    """One TFRecord file of ``count`` PNG-encoded images (feature ``image/encoded``), sorted by class: longer
    than ckptfix's shuffle buffer, as an export sorted by label is."""
    def build(domain: Domain, folder: Path):
        import tensorflow as tf

        pixels, labels = _by_class(domain, count, pixels=True)
        path = folder / "sorted.tfrecord"
        with tf.io.TFRecordWriter(str(path)) as writer:
            for image, label in zip(pixels, labels):
                feature = {
                    "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
                        value=[tf.io.encode_png(image).numpy()])),
                    "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
                }
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
        return path

    return build


# --- the catalogue ----------------------------------------------------------------------------------------

K0 = "keras-stale01"

CASES: tuple[Case, ...] = (
    # what the model's statistics are
    Case("keras-stale01-256", K0, "stale at 0/1 (updates dropped), 256 samples in 8 batches of 32", draw(256)),
    Case("keras-earlier-256", "keras-earlier", "stale from an earlier domain (A's statistics, fine-tuned on B)",
         draw(256)),
    Case("keras-partial-256", "keras-partial", "only the first BN layer stale (0/1), the others healthy", draw(256)),
    Case("keras-healthy-256", "keras-healthy", "healthy, in-domain data", draw(256), cli=True),
    Case("keras-healthy-benign-shift", "keras-healthy", "healthy, data with 3 % more contrast, +0.1 brightness",
         draw(256), domain=KERAS_B_BENIGN),
    Case("keras-healthy-harsh-shift", "keras-healthy", "healthy on B, data rescaled x0.3 and moved by -2",
         draw(256), domain=KERAS_B_HARSH),
    Case("keras-frozen-256", "keras-frozen", "BN frozen (trainable=False) while fine-tuning on B", draw(256),
         cli=True),
    Case("keras-frozen-adapt", "keras-frozen", "BN frozen while fine-tuning, adapt=True (domain adaptation asked)",
         draw(256), options={"adapt": True}),
    Case("slim-seed-256", "slim-seed", "slim, stale at 0/1, 256 samples", draw(256)),
    Case("slim-earlier-256", "slim-pretrained", "slim, stale from the pretraining domain (not 0/1)", draw(256),
         cli=True),
    Case("slim-healthy-256", "slim-healthy", "slim, healthy (slim-seed with statistics of 2,560 samples)",
         draw(256, 1)),
    Case("demo-512", "demo", "the demo's TF1 graph, stale at 0/1, 512 samples", draw(512)),
    # how much data
    Case("keras-stale01-1-sample", K0, "one sample", draw(1), degenerate="one sample", cli=True),
    Case("keras-stale01-1-batch", K0, "1 batch of 32", draw(32)),
    Case("keras-stale01-2-batches", K0, "2 batches of 32 (64 samples of a stale model)", draw(64)),
    Case("keras-stale01-4-batches", K0, "4 batches of 32", draw(128)),
    Case("keras-stale01-16-batches", K0, "16 batches of 32", draw(512)),
    Case("slim-seed-64", "slim-seed", "slim, 64 samples of a stale model", draw(64)),
    Case("demo-64", "demo", "the demo, 64 samples", draw(64)),
    Case("keras-healthy-64", "keras-healthy", "healthy, thin data: 64 samples", draw(64)),
    Case("keras-healthy-16", "keras-healthy", "healthy, 16 samples in 2 batches of 8", draw(16),
         options={"batch_size": 8}),
    Case("keras-dense512-128", "keras-dense512", "512-unit Dense BN, 128 samples (draw 1)", draw(128, 1)),
    Case("keras-dense512-192", "keras-dense512", "512-unit Dense BN, 192 samples (draw 2)", draw(192, 2)),
    Case("keras-dense512-256", "keras-dense512", "512-unit Dense BN, 256 samples (draw 3)", draw(256, 3)),
    # batch size
    Case("keras-stale01-batch-1", K0, "batch size 1, 128 samples", draw(128), options={"batch_size": 1},
         degenerate="batch size 1"),
    Case("keras-stale01-batch-2", K0, "batch size 2, 256 samples", draw(256), options={"batch_size": 2}),
    Case("keras-stale01-batch-4", K0, "batch size 4, 256 samples", draw(256), options={"batch_size": 4}),
    Case("keras-stale01-batch-8", K0, "batch size 8, 256 samples", draw(256), options={"batch_size": 8}),
    # degenerate and ordered data
    Case("keras-stale01-zeros", K0, "256 constant (all-zero) samples", constant(256), degenerate="constant samples"),
    Case("keras-stale01-near-duplicates", K0, "one sample + noise of std 1e-3, 256 times", near_duplicates(256),
         degenerate="near-copies of one sample"),
    Case("keras-stale01-ordered", K0, "ordered Python dataset: 32 batches sorted by class", ordered_batches(1024)),
    Case("keras-stale01-ordered-until-stable", K0, "the same, until_stable=0.1", ordered_batches(1024),
         options={"until_stable": 0.1}),
    Case("keras-healthy-ordered-until-stable", "keras-healthy", "healthy, ordered Python dataset, until_stable=0.1",
         ordered_batches(1024), options={"until_stable": 0.1}),
    Case("slim-healthy-class-folders", "slim-healthy", "slim, healthy, a folder per class, --no-shuffle",
         class_folders(256), options={"shuffle": False}, cli=True),
    Case("slim-seed-class-folders", "slim-seed", "a folder per class, --no-shuffle (256 PNGs)", class_folders(256),
         options={"shuffle": False}, cli=True),
    Case("slim-seed-sorted-tfrecord", "slim-seed", "a TFRecord of 4096 images sorted by class", sorted_tfrecord(4096)),
    Case("slim-seed-sorted-tfrecord-until-stable", "slim-seed", "the same, --until-stable 0.1",
         sorted_tfrecord(4096), options={"until_stable": 0.1}, cli=True),
)

#: the options as ``ckptfix`` flags
FLAGS = {"batch_size": "--batch-size", "until_stable": "--until-stable", "num_samples": "--num-samples"}


def cli_flags(options: dict) -> list[str]:
    """``options`` as command-line flags (``shuffle=False`` -> ``--no-shuffle``, ``adapt=True`` -> ``--adapt``)."""
    flags: list[str] = []
    for name, value in options.items():
        if isinstance(value, bool):
            flags.append(f"--{'' if value else 'no-'}{name.replace('_', '-')}")
        else:
            flags += [FLAGS[name], str(value)]
    return flags
