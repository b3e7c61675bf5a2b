"""Checkpoints that do not fit their graph, or are corrupt, through the real CLI (issue 22, items 10 and 11): a
statistic stored as float16 / float64 under a float32 graph, any variable stored with another dtype or shape, a
missing key, bytes flipped inside a ``.data`` shard. Each answer names the key, stored vs expected (or the check
that failed) and the fix, in one or two lines, exit 1, nothing written, every input file byte-identical; for the
TF1 checkpoint + ``.meta`` / ``--model``, a TF1 SavedModel and a TF2 object checkpoint."""

import hashlib
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from cli.test_errors import assert_clean_error, run_cli
from cli.test_frozen_cli import USER_MODULE
from cli.test_frozen_cli import run_cli as run_cli_with_path

from ckptfix.io.bundle_index import tensor_entries

VARIANCE = "conv1/BatchNorm/moving_variance"
SHARD = "model.ckpt-150.data-00000-of-00001"
KERAS_TESTS = Path(__file__).resolve().parents[1] / "keras"
KERAS_VARIANCE = "model/_operations/2/moving_variance/.ATTRIBUTES/VARIABLE_VALUE"


def _digest(folder: Path) -> dict:
    """Every path under ``folder``: a file's sha256, a folder's name (so an output folder left behind shows)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(folder.rglob("*"))}


def _rewrite(prefix: Path, change) -> None:
    """Write the checkpoint at ``prefix`` again with TensorFlow's SaveV2, each tensor through ``change(key, value)``
    (None: the key is left out)."""
    reader = tf.train.load_checkpoint(str(prefix))
    names, tensors = [], []
    for key in sorted(reader.get_variable_to_dtype_map()):
        value = change(key, reader.get_tensor(key))
        if value is not None:
            names.append(key)
            tensors.append(tf.constant(value))
    for shard in prefix.parent.glob(prefix.name + ".data-*"):
        shard.unlink()
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)


def _retyped(key: str, dtype: str):
    return lambda k, value: value.astype(dtype) if k == key else value


def _flip(prefix: Path, key: str) -> None:
    """Flip the first four bytes of ``key``'s tensor in its ``.data`` shard (same length: not a truncation)."""
    entry = tensor_entries(Path(f"{prefix}.index"))[key]
    (shard,) = prefix.parent.glob(f"{prefix.name}.data-{entry.shard_id:05d}-of-*")
    data = bytearray(shard.read_bytes())
    for k in range(entry.offset, entry.offset + min(4, entry.size)):
        data[k] ^= 0xFF
    shard.write_bytes(bytes(data))


@pytest.fixture()
def copy(slim_model, tmp_path) -> Path:
    """A private copy of the stale seed checkpoint (prefix path), to damage."""
    model = slim_model("seed")
    shutil.copytree(model.train_dir, tmp_path / "train")
    return tmp_path / "train" / Path(model.prefix).name


def _command(command: str, prefix: Path, data: Path) -> list:
    return [command, prefix] if command == "inspect" else [command, prefix, data]


def _check(result, root: Path, before: dict, *phrases: str) -> None:
    """A clean error naming ``phrases``; every file under ``root`` as before and nothing added."""
    assert_clean_error(result, 1, *phrases)
    assert _digest(root) == before


@pytest.mark.parametrize("dtype, command", [("float16", "recalibrate"), ("float16", "inspect"), ("float64", "recalibrate")])
def test_statistic_stored_in_another_dtype(copy, slim_model, dtype, command):
    _rewrite(copy, _retyped(VARIANCE, dtype))
    before = _digest(copy.parent.parent)
    result = run_cli(*_command(command, copy, slim_model("seed").calib))
    _check(result, copy.parent.parent, before, f"key {VARIANCE} is stored as {dtype}", "float32 variable")


@pytest.mark.parametrize("key, change, phrases", [
    ("conv2/weights", lambda v: v.reshape(3, 3, 16, 8), ["stored with shape [3, 3, 16, 8]", "of shape [3, 3, 8, 16]"]),
    ("global_step", lambda v: v.astype(np.int32), ["stored as int32", "int64 variable"]),
])
def test_any_variable_stored_otherwise(copy, slim_model, key, change, phrases):
    """Not only statistics: every variable the saver restores (a weight, the step counter)."""
    _rewrite(copy, lambda k, value: change(value) if k == key else value)
    before = _digest(copy.parent.parent)
    result = run_cli("recalibrate", copy, slim_model("seed").calib)
    _check(result, copy.parent.parent, before, f"key {key} ", *phrases)


@pytest.mark.parametrize("command", ["recalibrate", "inspect"])
def test_missing_statistic_is_an_incomplete_checkpoint(copy, slim_model, command):
    _rewrite(copy, lambda k, value: None if k == VARIANCE else value)
    before = _digest(copy.parent.parent)
    result = run_cli(*_command(command, copy, slim_model("seed").calib))
    _check(result, copy.parent.parent, before, f"has no key {VARIANCE}", "model.ckpt-150.meta", "incomplete")
    assert "--meta" not in result.stderr  # the .meta beside it is the graph it was saved from


@pytest.mark.parametrize("command", ["recalibrate", "diagnose"])
def test_flipped_bytes_in_a_weight(copy, slim_model, command):
    """Found by the restore (the source reads only the statistics): the key that fails its checksum, named."""
    _flip(copy, "conv2/weights")
    before = _digest(copy.parent.parent)
    result = run_cli(command, copy, slim_model("seed").calib)
    _check(result, copy.parent.parent, before, f"key conv2/weights fails its checksum in {SHARD}", "corrupt")


def test_flipped_bytes_in_a_statistic(copy):
    _flip(copy, VARIANCE)
    before = _digest(copy.parent.parent)
    _check(run_cli("inspect", copy), copy.parent.parent, before, f"key {VARIANCE} fails its checksum in {SHARD}")


def test_against_a_corrupt_checkpoint(copy, slim_model, tmp_path):
    """``inspect --against`` reads the other checkpoint's statistics: a corrupt one is named, not a traceback."""
    other = tmp_path / "other"
    shutil.copytree(slim_model("seed").train_dir, other)
    _flip(other / copy.name, VARIANCE)
    before = _digest(tmp_path)
    result = run_cli("inspect", copy, "--against", other / copy.name)
    _check(result, tmp_path, before, f"key {VARIANCE} fails its checksum in {SHARD}")


def test_error_reason_reads_past_graph_execution_error(copy):
    """A session's error says "Graph execution error:" first; the reason, below the node's stack, is what counts."""
    from ckptfix.errors import error_reason

    _rewrite(copy, _retyped(VARIANCE, "float16"))
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        read = tf.raw_ops.RestoreV2(prefix=str(copy), tensor_names=[VARIANCE], shape_and_slices=[""], dtypes=[tf.float32])
        with pytest.raises(tf.errors.InvalidArgumentError) as raised:
            session.run(read)
    assert str(raised.value.message).startswith("Graph execution error:")
    assert error_reason(raised.value) == f"tensor_name = {VARIANCE}; expected dtype float does not equal original dtype half"


def test_model_option_graph_checked_too(copy, slim_model, tmp_path):
    """The graph ``--model`` builds restores float32 where the checkpoint stores float16."""
    copy.with_name(copy.name + ".meta").unlink()
    _rewrite(copy, _retyped(VARIANCE, "float16"))
    code = tmp_path / "code"
    code.mkdir()
    (code / "my_nets.py").write_text(textwrap.dedent(USER_MODULE))
    before = _digest(copy.parent.parent)
    result = run_cli_with_path("recalibrate", copy, slim_model("seed").calib, "--model", "my_nets:small_net",
                               "--num-classes", "4", "--input-shape", "12x12x3", pythonpath=code)
    _check(result, copy.parent.parent, before, f"key {VARIANCE} is stored as float16", "the graph --model built")


@pytest.fixture()
def tf1_saved_model(slim_model, tmp_path) -> Path:
    """The seed checkpoint saved again as a TF1 SavedModel (``simple_save``: its graph and saver as they are)."""
    model = slim_model("seed")
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
        tf.compat.v1.train.import_meta_graph(model.prefix + ".meta").restore(session, model.prefix)
        tf.compat.v1.saved_model.simple_save(session, str(tmp_path / "saved"), {"images": graph.get_tensor_by_name("images:0")},
                                             {"logits": graph.get_tensor_by_name("logits/BiasAdd:0")})
    return tmp_path / "saved"


@pytest.mark.parametrize("damage, phrases", [
    ("float16", [f"key {VARIANCE} is stored as float16", "float32 variable"]),
    ("flip", [f"key {VARIANCE} fails its checksum in variables.data-00000-of-00001"]),
])
def test_tf1_saved_model(tf1_saved_model, slim_model, damage, phrases):
    prefix = tf1_saved_model / "variables" / "variables"
    if damage == "flip":
        _flip(prefix, VARIANCE)
    else:
        _rewrite(prefix, _retyped(VARIANCE, damage))
    before = _digest(tf1_saved_model.parent)
    result = run_cli("diagnose", tf1_saved_model, slim_model("seed").calib)
    _check(result, tf1_saved_model.parent, before, *phrases)


@pytest.fixture()
def tf2_checkpoint(tmp_path) -> Path:
    """A Keras 3 model's TF2 object checkpoint (``tf.train.Checkpoint(model=...)``), and calibration data beside."""
    import keras

    sys.path.insert(0, str(KERAS_TESTS))
    import keras_models as km

    tf.train.Checkpoint(model=km.flat_keras3()).write(str(tmp_path / "ckpt" / "ckpt-1"))
    np.save(tmp_path / "calibration.npy", km.images(32, km.DOMAIN_A, 3)[0])
    assert keras.backend.backend() == "tensorflow"
    return tmp_path / "ckpt" / "ckpt-1"


@pytest.mark.parametrize("damage, phrases", [
    ("float16", [f"key {KERAS_VARIANCE} is stored as float16", "float32 variable"]),
    ("flip", [f"key {KERAS_VARIANCE} fails its checksum in ckpt-1.data-00000-of-00001", "corrupt"]),
])
@pytest.mark.subprocess
def test_tf2_object_checkpoint(tf2_checkpoint, damage, phrases):
    if damage == "flip":
        _flip(tf2_checkpoint, KERAS_VARIANCE)
    else:
        _rewrite(tf2_checkpoint, _retyped(KERAS_VARIANCE, damage))
    root = tf2_checkpoint.parent.parent
    before = _digest(root)
    result = run_cli("diagnose", tf2_checkpoint, root / "calibration.npy", "--model", "keras_models:flat_keras3",
                     "--model-format", "tf-checkpoint", cwd=KERAS_TESTS)
    _check(result, root, before, *phrases)
