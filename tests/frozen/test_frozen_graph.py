"""Frozen GraphDefs (.pb / .pbtxt) of real stale tf-slim models: repaired graphs recover training-mode accuracy,
statistics equal numpy's on the BN inputs, and only the statistics constants change."""

import hashlib
from pathlib import Path

import numpy as np
import pytest

import tensorflow as tf

import ckptfix
from ckptfix.errors import CkptfixError, GraphError, NoBatchNormError, OutputError
from fixtures.runner import bn_inputs
from frozen_models import changed_nodes, const_value, freeze, frozen_accuracy


@pytest.fixture(scope="module")
def frozen(slim_model, tmp_path_factory):
    """Stale models frozen as deployment pipelines do: seed (fused BN) as .pb, nonfused_pretrained as .pbtxt,
    seed folded by optimize_for_inference, and seed mistakenly frozen in training mode."""
    slim_model.prebuild(["seed", "nonfused_pretrained"])
    folder = tmp_path_factory.mktemp("frozen")
    jobs = {
        "fused": (slim_model("seed"), folder / "fused" / "model.pb", False),
        "nonfused": (slim_model("nonfused_pretrained"), folder / "nonfused" / "model.pbtxt", False),
        "folded": (slim_model("seed"), folder / "folded" / "model.pb", True),
        "training": (slim_model("seed"), folder / "training" / "model.pb", False, True),
    }
    for _, path, *_ in jobs.values():
        path.parent.mkdir()
    freeze(list(jobs.values()), folder)
    return {name: (model, path) for name, (model, path, *_) in jobs.items()}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _numpy_statistics(values: np.ndarray, bessel: bool):
    flat = values.astype(np.float64).reshape(-1, values.shape[-1])
    return flat.mean(axis=0), flat.var(axis=0, ddof=1 if bessel else 0)


@pytest.mark.parametrize("kind", ["fused", "nonfused"])
def test_frozen_graph_is_repaired_and_only_statistics_constants_change(frozen, kind, tmp_path):
    model, graph = frozen[kind]
    before = digest(graph)
    output = tmp_path / f"fixed{graph.suffix}"
    report = ckptfix.recalibrate(graph, np.load(model.calib), output=output, batch_size=32, shuffle=False)

    assert digest(graph) == before, "the input graph changed"
    assert report.checkpoint == str(graph) and report.output_checkpoint == str(output)
    assert [layer.name for layer in report.layers] == model.bn_layers
    assert report.input_tensor == "images:0" and report.training_flag is None

    stale, repaired = frozen_accuracy(graph, model), frozen_accuracy(output, model)
    training = model.info["accuracy"]["training"]
    assert stale <= 0.45 < 0.9 <= training
    assert repaired >= training - 0.02, (stale, training, repaired)
    assert report.agreement.top1_after >= 0.98

    changed = changed_nodes(graph, output)
    statistics = {key: (layer, which) for layer in report.layers
                  for key, which in ((layer.mean_key, "mean"), (layer.variance_key, "variance"))}
    assert set(changed) == set(statistics)
    inputs = bn_inputs(model, model.prefix, model.calib, batch_size=32)
    for name, (old, new) in changed.items():
        layer, which = statistics[name]
        assert new.op == "Const" and new.attr["dtype"] == old.attr["dtype"]
        value = const_value(new)
        assert value.dtype == const_value(old).dtype == np.float32 and value.shape == const_value(old).shape
        np.testing.assert_array_equal(value, getattr(layer, f"new_{which}").astype(np.float32))
        expected = _numpy_statistics(inputs[layer.name], layer.variance_convention == "bessel")[which == "variance"]
        np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-5, err_msg=name)


def test_default_output_sits_beside_the_input_and_rerun_needs_overwrite(frozen, tmp_path):
    model, graph = frozen["nonfused"]
    work = tmp_path / "model.pbtxt"
    work.write_bytes(graph.read_bytes())
    report = ckptfix.recalibrate(work, np.load(model.calib))
    assert report.output_checkpoint == str(tmp_path / "model-recalibrated.pbtxt")
    assert (tmp_path / "model-recalibrated.pbtxt").read_text().startswith("node {")  # text, like the input
    with pytest.raises(OutputError, match="overwrite=True"):
        ckptfix.recalibrate(work, np.load(model.calib))
    binary = ckptfix.recalibrate(work, np.load(model.calib), output=tmp_path / "as-binary.pb")
    assert set(changed_nodes(work, Path(binary.output_checkpoint))) == {
        key for layer in binary.layers for key in (layer.mean_key, layer.variance_key)
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["as-binary.pb", "model-recalibrated.pbtxt", "model.pbtxt"]


def test_folded_batch_norm_is_named_and_nothing_is_written(frozen, tmp_path):
    model, graph = frozen["folded"]
    with pytest.raises(NoBatchNormError, match=r"folded into .*conv1/BatchNorm, conv2/BatchNorm"):
        ckptfix.recalibrate(graph, np.load(model.calib), output=tmp_path / "out.pb")
    with pytest.raises(NoBatchNormError, match="folded"):
        ckptfix.inspect(graph)
    assert not list(tmp_path.iterdir())


def test_inspect_and_diagnose_read_the_constants(frozen):
    model, graph = frozen["fused"]
    inspected = ckptfix.inspect(graph)
    assert [layer.name for layer in inspected.layers] == model.bn_layers
    assert all(layer.flags == ["initial"] for layer in inspected.layers)
    assert inspected.checkpoint == inspected.meta == str(graph)
    diagnosis = ckptfix.diagnose(graph, np.load(model.calib))
    assert diagnosis.stale and diagnosis.checkpoint == str(graph)


def test_bad_outputs_and_options_are_refused(frozen, tmp_path):
    model, graph = frozen["fused"]
    calib = np.load(model.calib)
    with pytest.raises(OutputError, match="is the input graph"):
        ckptfix.recalibrate(graph, calib, output=graph, overwrite=True)
    with pytest.raises(OutputError, match="is the input graph"):
        ckptfix.recalibrate(graph, calib, output=graph.parent)  # a folder: the input's name inside it
    with pytest.raises(OutputError, match=".pb"):
        ckptfix.recalibrate(graph, calib, output=tmp_path / "fixed.ckpt")
    with pytest.raises(CkptfixError, match="frozen graph"):
        ckptfix.recalibrate(graph, calib, output=tmp_path / "x.pb", meta=model.meta)
    with pytest.raises(CkptfixError, match="not available for a frozen graph"):
        ckptfix.inspect(graph, against=graph)
    assert not list(tmp_path.iterdir())


def test_files_that_are_not_graph_defs(tmp_path):
    garbage = tmp_path / "model.pb"
    garbage.write_bytes(b"\xff\xfe not a protobuf")
    with pytest.raises(GraphError, match="not a binary TensorFlow GraphDef"):
        ckptfix.inspect(garbage)
    text = tmp_path / "model.pbtxt"
    text.write_text("node { name: ")
    with pytest.raises(GraphError, match="not a text TensorFlow GraphDef"):
        ckptfix.inspect(text)
    saved_model = tmp_path / "export" / "saved_model.pb"
    saved_model.parent.mkdir()
    saved_model.write_bytes(b"")
    with pytest.raises(GraphError, match="SavedModel"):
        ckptfix.inspect(saved_model)
    with pytest.raises(GraphError, match="no frozen graph"):
        ckptfix.inspect(tmp_path / "missing.pb")


def test_statistics_constants_feeding_bn_directly(frozen, tmp_path):
    """remove_training_nodes (part of optimize_for_inference) drops the Identity reads: Const -> FusedBatchNorm."""
    model, graph = frozen["fused"]
    graph_def = tf.compat.v1.GraphDef.FromString(graph.read_bytes())
    stripped = tf.compat.v1.graph_util.remove_training_nodes(graph_def, ["logits/BiasAdd"])
    assert not any(node.op == "Identity" for node in stripped.node)
    (tmp_path / "stripped.pb").write_bytes(stripped.SerializeToString())
    report = ckptfix.recalibrate(tmp_path / "stripped.pb", np.load(model.calib), output=tmp_path / "fixed.pb")
    assert [layer.name for layer in report.layers] == model.bn_layers
    assert set(changed_nodes(tmp_path / "stripped.pb", tmp_path / "fixed.pb")) == {
        key for layer in report.layers for key in (layer.mean_key, layer.variance_key)}
    assert frozen_accuracy(tmp_path / "fixed.pb", model) >= model.info["accuracy"]["training"] - 0.02


def test_constants_keep_their_dtype(frozen, tmp_path):
    """A float16 statistics constant read through a Cast stays float16, holding the new values rounded to it."""
    model, graph = frozen["fused"]
    graph_def = tf.compat.v1.GraphDef.FromString(graph.read_bytes())
    nodes = {node.name: node for node in graph_def.node}
    const = nodes["conv1/BatchNorm/moving_variance"]
    const.attr["dtype"].type = tf.float16.as_datatype_enum
    const.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(np.ones(8, np.float16)))
    cast = graph_def.node.add(name="conv1/BatchNorm/moving_variance/to_float", op="Cast", input=[const.name])
    cast.attr["SrcT"].type, cast.attr["DstT"].type = tf.float16.as_datatype_enum, tf.float32.as_datatype_enum
    nodes["conv1/BatchNorm/moving_variance/read"].input[0] = cast.name
    (tmp_path / "half.pb").write_bytes(graph_def.SerializeToString())

    report = ckptfix.recalibrate(tmp_path / "half.pb", np.load(model.calib), output=tmp_path / "fixed.pb")
    changed = changed_nodes(tmp_path / "half.pb", tmp_path / "fixed.pb")
    value = const_value(changed["conv1/BatchNorm/moving_variance"][1])
    assert value.dtype == np.float16
    np.testing.assert_array_equal(value, report.layers[0].new_variance.astype(np.float16))
    assert frozen_accuracy(tmp_path / "fixed.pb", model) >= model.info["accuracy"]["training"] - 0.02


def test_graph_frozen_in_training_mode_gets_a_notice(frozen, tmp_path):
    model, graph = frozen["training"]
    notices = []
    report = ckptfix.recalibrate(graph, np.load(model.calib), output=tmp_path / "fixed.pb", on_notice=notices.append)
    assert any("frozen in training mode (conv1/BatchNorm" in notice for notice in notices)
    assert notices[-1] in report.notices


def test_one_graph_import_per_run(frozen, tmp_path, monkeypatch):
    """The thawed model is imported once, by the measuring session (its saver is built beside a graph of the
    statistics variables alone, imported on their own)."""
    model, graph = frozen["fused"]
    imports, import_graph_def = [], tf.compat.v1.import_graph_def

    def counting_import(graph_def, *args, **kwargs):
        imports.append(len(graph_def.node))
        return import_graph_def(graph_def, *args, **kwargs)

    monkeypatch.setattr(tf.compat.v1, "import_graph_def", counting_import)
    report = ckptfix.recalibrate(graph, np.load(model.calib)[:64], output=tmp_path / "fixed.pb", batch_size=32,
                                 agreement_samples=32)
    assert report.agreement is not None
    statistics = 2 * len(report.layers)
    assert [n for n in imports if n > statistics] == [max(imports)], imports  # the model, once
    assert len(imports) <= 2 and all(n == statistics for n in imports if n != max(imports)), imports


def test_two_logical_cpus_match_one_device(frozen, tmp_path):
    """Issue 16 through the frozen-graph source: whole batches on two devices, the one-device statistics."""
    from scaling.helpers import assert_same_statistics, run_api

    model, graph = frozen["nonfused"]
    options = dict(batch_size=24, shuffle=True, seed=4)
    one = ckptfix.diagnose(graph, np.load(model.calib), **options).to_dict()
    two = run_api(graph, model.calib, tmp_path / "two.json", logical_cpus=2, command="diagnose", **options)
    assert_same_statistics(one, two)
    assert [row["device"] for row in two["devices"]] == ["/CPU:0", "/CPU:1"]
    assert all(row["batches"] > 0 for row in two["devices"])
