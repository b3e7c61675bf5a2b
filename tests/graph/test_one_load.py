"""One load per run: a TF1 recalibration with the output-agreement check imports the graph once and restores
the checkpoint once, on every graph shape that has an inference mode (Python-bool flag baked in, TF1 tf.cond on a
placeholder, TF2 If ops). TensorFlow's own functions run; they are only counted."""

import numpy as np
import pytest
import tensorflow as tf

import ckptfix
from ckptfix.graph.meta import load_meta_graph


@pytest.mark.parametrize("variant", ["seed", "placeholder_cond", "tf2_control_flow"])
def test_one_import_and_one_restore_per_run(slim_model, variant, tmp_path, monkeypatch):
    model = slim_model(variant)
    restore_op = load_meta_graph(model.meta).saver_def.restore_op_name
    imports, restores = [], []
    import_graph_def, session_run = tf.compat.v1.import_graph_def, tf.compat.v1.Session.run

    def counting_import(graph_def, *args, **kwargs):
        imports.append(len(graph_def.node))
        return import_graph_def(graph_def, *args, **kwargs)

    def counting_run(session, fetches, *args, **kwargs):
        if fetches == restore_op:
            restores.append(fetches)
        return session_run(session, fetches, *args, **kwargs)

    monkeypatch.setattr(tf.compat.v1, "import_graph_def", counting_import)
    monkeypatch.setattr(tf.compat.v1.Session, "run", counting_run)
    report = ckptfix.recalibrate(model.prefix, np.load(model.calib), output=tmp_path / "out", shuffle=False,
                                 agreement_samples=64)

    assert report.agreement is not None and report.agreement.num_samples == 64
    assert report.agreement.top1_before <= 0.5 and report.agreement.top1_after >= 0.95
    assert len(imports) == 1, f"{len(imports)} graph imports"
    assert len(restores) == 1, f"{len(restores)} checkpoint restores"
