"""Writing in parts and merging them (bounded memory), and sharded input checkpoints: every tensor kept,
dtypes and partition slices kept, deterministic files."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from ckptfix.io import locate_checkpoint
from ckptfix.io.checkpoint_writer import write_recalibrated_checkpoint
from ckptfix.graph.meta import load_meta_graph, partition_layout

NEW = {"bn/moving_mean": np.array([3.25, 4.5]), "bn/moving_variance": np.array([0.1, 0.2]),
       "bn2/moving_mean": np.array([5.0, 6.0])}


def _variables(v1) -> None:
    """Several dtypes, a partitioned variable, a string, an int64 step, and ~40 KB of float32 to split."""
    v1.get_variable("dense/kernel", shape=[10, 4], initializer=v1.initializers.random_normal(seed=1),
                    partitioner=v1.fixed_size_partitioner(3))
    for number in range(4):
        v1.get_variable(f"conv{number}/weights", shape=[50, 50], initializer=v1.initializers.random_normal(seed=number))
    v1.get_variable("bn/moving_mean", initializer=np.array([0.5, -1.5], np.float16), trainable=False)
    v1.get_variable("bn/moving_variance", initializer=np.array([1.0, 2.0], np.float64), trainable=False)
    v1.get_variable("bn2/moving_mean", initializer=tf.constant([1.0, 2.0], tf.bfloat16), trainable=False)
    v1.get_variable("vocab", initializer=tf.constant([b"a", b"bc"]), trainable=False)
    v1.train.get_or_create_global_step()


def _save(folder: Path, sharded: bool) -> Path:
    """A Saver checkpoint; ``sharded``: variables on two CPU devices, saved by ``Saver(sharded=True)``."""
    graph = tf.Graph()
    v1 = tf.compat.v1
    with graph.as_default():
        if sharded:
            with tf.device("/cpu:0"):
                _variables(v1)
            with tf.device("/cpu:1"):
                v1.get_variable("other/table", shape=[30, 7], initializer=v1.initializers.random_normal(seed=9))
        else:
            _variables(v1)
        saver = v1.train.Saver(sharded=sharded)
        config = v1.ConfigProto(device_count={"CPU": 2})
        folder.mkdir(parents=True, exist_ok=True)
        with v1.Session(graph=graph, config=config) as session:
            session.run(v1.global_variables_initializer())
            return Path(saver.save(session, str(folder / "model.ckpt"), global_step=7))


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    return _save(tmp_path_factory.mktemp("single") / "train", sharded=False)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    return _save(tmp_path_factory.mktemp("sharded") / "train", sharded=True)


def _write(prefix: Path, output: Path, **options) -> Path:
    files = locate_checkpoint(prefix)
    return write_recalibrated_checkpoint(files, NEW, output, layout=partition_layout(load_meta_graph(files.meta)),
                                         **options)


def _assert_same_but_statistics(before_prefix: Path, after_prefix: Path) -> None:
    before, after = tf.train.load_checkpoint(str(before_prefix)), tf.train.load_checkpoint(str(after_prefix))
    assert before.get_variable_to_dtype_map() == after.get_variable_to_dtype_map()
    assert before.get_variable_to_shape_map() == after.get_variable_to_shape_map()
    for key in before.get_variable_to_shape_map():
        fresh = after.get_tensor(key)
        if key in NEW:
            np.testing.assert_array_equal(fresh.astype(np.float64), NEW[key])
        elif fresh.dtype == object:
            assert fresh.tolist() == before.get_tensor(key).tolist(), key
        else:
            assert fresh.tobytes() == before.get_tensor(key).tobytes(), key


def _slices(prefix: Path, key: str, specs: list[str], dtype) -> list[bytes]:
    """Each saved slice of ``key`` as RestoreV2 reads it by its spec (fails if the slice is not stored)."""
    tensors = tf.raw_ops.RestoreV2(prefix=str(prefix), tensor_names=[key] * len(specs), shape_and_slices=specs,
                                   dtypes=[dtype] * len(specs))
    return [tensor.numpy().tobytes() for tensor in tensors]


def _digests(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_small_parts_give_several_shards_with_every_tensor_kept(single, tmp_path):
    out = _write(single, tmp_path / "out", part_bytes=8 << 10)
    shards = sorted(p.name for p in (tmp_path / "out").glob("*.data-*"))
    assert len(shards) >= 4 and shards[-1].endswith(f"-of-{len(shards):05d}")
    _assert_same_but_statistics(single, out)
    specs = ["10 4 0,4:0,4", "10 4 4,3:0,4", "10 4 7,3:0,4"]
    assert _slices(out, "dense/kernel", specs, tf.float32) == _slices(single, "dense/kernel", specs, tf.float32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_parts_are_deterministic(single, tmp_path):
    first, second = (_write(single, tmp_path / name, part_bytes=8 << 10).parent for name in ("a", "b"))
    assert _digests(first) == _digests(second)


def test_one_part_is_byte_identical_to_savers_file_except_statistics(single, tmp_path):
    """With nothing replaced and one part, the files are the Saver's own, byte for byte."""
    files = locate_checkpoint(single)
    out = write_recalibrated_checkpoint(files, {}, tmp_path / "out", layout=partition_layout(load_meta_graph(files.meta)))
    for suffix in (".index", ".data-00000-of-00001"):
        assert Path(str(out) + suffix).read_bytes() == Path(str(single) + suffix).read_bytes(), suffix


def test_sharded_input_keeps_its_shards_byte_identical(sharded, tmp_path):
    shards = sorted(p.name for p in sharded.parent.glob(sharded.name + ".data-*"))
    assert len(shards) == 2  # the fixture really is sharded: other/table lives on the second device
    out = _write(sharded, tmp_path / "out")
    _assert_same_but_statistics(sharded, out)
    assert tf.train.latest_checkpoint(str(tmp_path / "out")) == str(out)
    assert sorted(p.name for p in out.parent.glob(out.name + ".data-*")) == shards
    # the shard without statistics is the Saver's file byte for byte
    second = shards[1]
    assert (out.parent / second).read_bytes() == (sharded.parent / second).read_bytes()

    unchanged = write_recalibrated_checkpoint(locate_checkpoint(sharded), {}, tmp_path / "same",
                                              layout=partition_layout(load_meta_graph(Path(str(sharded) + ".meta"))))
    for name in shards + [sharded.name + ".index"]:
        assert (unchanged.parent / name).read_bytes() == (sharded.parent / name).read_bytes(), name


def test_shard_index_is_parsed(sharded, single):
    from ckptfix.io.bundle_index import shard_of_each_tensor

    read = shard_of_each_tensor(Path(str(sharded) + ".index"))
    assert read == {key: int(key == "other/table") for key in tf.train.load_checkpoint(str(sharded)).get_variable_to_dtype_map()}
    assert set(shard_of_each_tensor(Path(str(single) + ".index")).values()) == {0}
    assert "dense/kernel" in read  # a partitioned variable: its shard comes from its slices' entries


def test_unparsable_index_falls_back_to_one_shard_grouping(tmp_path):
    """A damaged .index gives no shard map (the writer then cuts parts by size only), never an exception."""
    from ckptfix.io.bundle_index import shard_of_each_tensor

    damaged = tmp_path / "model.ckpt.index"
    damaged.write_bytes(b"\x00garbage" * 10)
    assert shard_of_each_tensor(damaged) is None
    assert shard_of_each_tensor(tmp_path / "missing.index") is None


def test_index_with_damaged_blocks_gives_no_usable_shard_map(single, tmp_path):
    """Scrambled blocks parse to nothing or to keys that are not the checkpoint's: the writer ignores both."""
    from ckptfix.io.bundle_index import shard_of_each_tensor

    data = bytearray(Path(str(single) + ".index").read_bytes())
    for position in range(0, len(data) - 48, 7):  # scramble the blocks, keep the footer (and its magic)
        data[position] ^= 0xA5
    damaged = tmp_path / "model.ckpt.index"
    damaged.write_bytes(bytes(data))
    found = shard_of_each_tensor(damaged)
    assert found is None or set(found) != set(tf.train.load_checkpoint(str(single)).get_variable_to_dtype_map())


@pytest.mark.parametrize("fixture", ["single", "sharded"])
def test_in_place_copy_writes_the_files_of_the_parts_route(fixture, request, tmp_path, monkeypatch):
    """Shards that each fit in one part are copied as they are, the statistics (half, double, bfloat16) written
    over the old bytes and the index's checksums patched: the very files the parts route writes."""
    from ckptfix.io import checkpoint_writer

    prefix = request.getfixturevalue(fixture)
    taken = []
    in_place = checkpoint_writer._copy_in_place
    monkeypatch.setattr(checkpoint_writer, "_copy_in_place", lambda *a: taken.append(in_place(*a)) or taken[-1])
    fast = _write(prefix, tmp_path / "fast")
    monkeypatch.setattr(checkpoint_writer, "_copy_in_place", lambda *a: False)
    parts = _write(prefix, tmp_path / "parts")
    assert taken == [True]
    _assert_same_but_statistics(prefix, fast)
    assert _digests(fast.parent) == _digests(parts.parent)


def test_in_place_copy_is_verified_byte_for_byte(single, tmp_path, monkeypatch):
    """A copied shard that differs from the input outside the statistics is caught, and nothing is kept."""
    from ckptfix.errors import OutputError
    from ckptfix.io import checkpoint_writer

    def corrupting_copy(source, target):
        data = bytearray(Path(source).read_bytes())
        data[len(data) // 2] ^= 0xFF  # inside the conv weights (the statistics' keys sort first)
        Path(target).write_bytes(bytes(data))

    monkeypatch.setattr(checkpoint_writer.shutil, "copyfile", corrupting_copy)
    with pytest.raises(OutputError, match="did not read back"):
        _write(single, tmp_path / "out")
    assert not (tmp_path / "out").exists()
