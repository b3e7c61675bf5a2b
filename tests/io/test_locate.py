"""CKPT as a prefix, a folder with a state file, or any file of the prefix; clear errors otherwise."""

import shutil
from pathlib import Path

import pytest
import tensorflow as tf

from ckptfix.io import locate_checkpoint
from ckptfix.errors import CheckpointError, GraphError


@pytest.fixture()
def prefix(tmp_path) -> Path:
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.get_variable("w", shape=[2])
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            return Path(saver.save(session, str(tmp_path / "train" / "model.ckpt"), global_step=3))


@pytest.mark.parametrize("form", ["prefix", "folder", ".index", ".meta", ".data-00000-of-00001"])
def test_every_form_names_the_same_checkpoint(prefix, form):
    given = {"prefix": prefix, "folder": prefix.parent}.get(form, Path(str(prefix) + form))
    files = locate_checkpoint(given)
    assert files.prefix == prefix and files.meta == Path(str(prefix) + ".meta")


def test_folder_without_state_file_names_the_fix(prefix):
    (prefix.parent / "checkpoint").unlink()
    with pytest.raises(CheckpointError, match="pass the checkpoint prefix"):
        locate_checkpoint(prefix.parent)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        locate_checkpoint(tmp_path / "nothing" / "model.ckpt-1")


def test_missing_shard(prefix):
    Path(str(prefix) + ".data-00000-of-00001").unlink()
    with pytest.raises(CheckpointError, match="no .data shard"):
        locate_checkpoint(prefix)


def test_missing_meta_names_the_option(prefix, tmp_path):
    moved = tmp_path / "elsewhere.meta"
    shutil.move(str(prefix) + ".meta", moved)
    with pytest.raises(GraphError, match="--meta PATH"):
        locate_checkpoint(prefix)
    assert locate_checkpoint(prefix, meta=moved).meta == moved


def test_state_file_paths_are_looked_up_inside_the_folder_only(prefix, tmp_path):
    state = prefix.parent / "checkpoint"
    # Saver writes absolute paths; a copied folder still resolves to its own files
    state.write_text(f'model_checkpoint_path: "/somewhere/else/{prefix.name}"\n')
    assert locate_checkpoint(prefix.parent).prefix == prefix
    outside = tmp_path / "outside"
    outside.mkdir()
    for f in prefix.parent.glob(prefix.name + ".*"):
        (outside / f.name.replace(prefix.name, "model.ckpt-9")).write_bytes(f.read_bytes())
    state.write_text('model_checkpoint_path: "../outside/model.ckpt-9"\n')
    with pytest.raises(CheckpointError, match="not in that folder"):
        locate_checkpoint(prefix.parent)
