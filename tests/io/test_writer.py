"""Writing the recalibrated checkpoint: byte-identical elsewhere, dtypes kept, atomic, refuses bad outputs."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from ckptfix.io import locate_checkpoint
from ckptfix.io.checkpoint_writer import check_output_dir, write_recalibrated_checkpoint
from ckptfix.errors import OutputError
from ckptfix.graph.meta import load_meta_graph, partition_layout


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A Saver checkpoint with a partitioned variable, several dtypes, a string and an int64 tensor."""
    folder = tmp_path_factory.mktemp("writer") / "train"
    graph = tf.Graph()
    with graph.as_default():
        v1 = tf.compat.v1
        v1.get_variable("dense/kernel", shape=[10, 4], initializer=v1.initializers.random_normal(seed=1),
                        partitioner=v1.fixed_size_partitioner(3))
        v1.get_variable("bn/moving_mean", initializer=np.array([0.5, -1.5], np.float16), trainable=False)
        v1.get_variable("bn/moving_variance", initializer=np.array([1.0, 2.0], np.float64), trainable=False)
        v1.get_variable("bn2/moving_mean", initializer=tf.constant([1.0, 2.0], tf.bfloat16), trainable=False)
        v1.get_variable("vocab", initializer=tf.constant([b"a", b"bc"]), trainable=False)
        v1.train.get_or_create_global_step()
        saver = v1.train.Saver()
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            saver.save(session, str(folder / "model.ckpt"), global_step=7)
    return folder / "model.ckpt-7"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _layout(files):
    return partition_layout(load_meta_graph(files.meta))


def test_rewrite_without_changes_is_byte_identical(saved, tmp_path):
    files = locate_checkpoint(saved)
    out = write_recalibrated_checkpoint(files, {}, tmp_path / "out", layout=_layout(files))
    for suffix in (".index", ".data-00000-of-00001"):
        assert _digest(Path(str(out) + suffix)) == _digest(Path(str(saved) + suffix))
    assert (tmp_path / "out" / "model.ckpt-7.meta").read_bytes() == files.meta.read_bytes()
    assert tf.train.latest_checkpoint(str(tmp_path / "out")) == str(out)


def test_partitioned_variable_keeps_its_slices(saved):
    layout = _layout(locate_checkpoint(saved))
    assert [part.spec for part in layout["dense/kernel"]] == ["10 4 0,4:0,4", "10 4 4,3:0,4", "10 4 7,3:0,4"]


def test_replaced_statistics_keep_their_dtype_and_nothing_else_changes(saved, tmp_path):
    files = locate_checkpoint(saved)
    new = {"bn/moving_mean": np.array([3.25, 4.5]), "bn/moving_variance": np.array([0.1, 0.2]),
           "bn2/moving_mean": np.array([5.0, 6.0])}
    out = write_recalibrated_checkpoint(files, new, tmp_path / "out", layout=_layout(files))
    before, after = tf.train.load_checkpoint(str(saved)), tf.train.load_checkpoint(str(out))
    assert before.get_variable_to_dtype_map() == after.get_variable_to_dtype_map()
    for key in before.get_variable_to_shape_map():
        if key in new:
            np.testing.assert_array_equal(after.get_tensor(key).astype(np.float64), new[key])
        else:
            old, fresh = before.get_tensor(key), after.get_tensor(key)
            assert old.dtype == fresh.dtype, key
            if old.dtype == object:  # strings: compare the bytes objects, not the pointers
                assert old.tolist() == fresh.tolist(), key
            else:
                assert old.tobytes() == fresh.tobytes(), key


def test_no_staging_folder_is_left_behind(saved, tmp_path):
    files = locate_checkpoint(saved)
    write_recalibrated_checkpoint(files, {}, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_refuses_non_empty_output_unless_overwrite(saved, tmp_path):
    """Without overwrite, a non-empty folder is refused; with it, only one holding a checkpoint ckptfix writes
    and nothing else is replaced (a folder of the user's files never is)."""
    files = locate_checkpoint(saved)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="--overwrite"):
        check_output_dir(files, tmp_path / "out", overwrite=False)
    with pytest.raises(OutputError, match="holds keep.txt, which ckptfix did not write"):
        write_recalibrated_checkpoint(files, {}, tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    write_recalibrated_checkpoint(files, {}, tmp_path / "earlier")
    write_recalibrated_checkpoint(files, {}, tmp_path / "earlier", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier", "out"]


@pytest.mark.parametrize("where", ["same", "inside", "parent"])
def test_refuses_output_that_touches_the_input(saved, where):
    files = locate_checkpoint(saved)
    output = {"same": saved.parent, "inside": saved.parent / "fixed", "parent": saved.parent.parent}[where]
    with pytest.raises(OutputError, match="-o/--output"):
        check_output_dir(files, output, overwrite=True)


def test_same_inputs_give_byte_identical_outputs(slim_model, tmp_path):
    import ckptfix

    model = slim_model("seed")
    outputs = [ckptfix.recalibrate(model.prefix, model.images_dir, output=tmp_path / name, seed=3)
               for name in ("a", "b")]
    for suffix in (".index", ".data-00000-of-00001", ".meta"):
        first, second = (Path(report.output_checkpoint + suffix) for report in outputs)
        assert _digest(first) == _digest(second), suffix
