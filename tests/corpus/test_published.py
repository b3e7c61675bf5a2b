"""Published models that PyPI packages ship, run through the CLI as a user would (issue 14).

Per model: ``inspect`` on the shipped file, ``diagnose`` and ``recalibrate`` on a copy made stale (moving means 0,
variances 1), the repaired statistics against an independent float64 reference (``published.py``), and the
repaired file loaded with its publisher's own loading route. What fails today is marked xfail(strict) with the
issue 14 item, so a fix turns the marker into an error to remove.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import published
from conftest import custom_objects
from published import VARIANTS

MEAN_TOLERANCE = 1e-3  # of sqrt(var + eps)
VARIANCE_TOLERANCE = 1e-3  # relative, of (var + eps)

EXPECTED_FAILURES: dict = {}  # (check, variant) -> reason, for a failure found and not fixed yet


def variants(check: str):
    """VARIANTS as parameters, the ones failing today marked xfail(strict) with their reason."""
    out = []
    for variant in VARIANTS:
        reason = EXPECTED_FAILURES.get((check, variant))
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        out.append(pytest.param(variant, marks=marks, id=variant))
    return out


def _ok(run, code: int = 0) -> None:
    assert run.returncode == code, run.describe()


@pytest.mark.parametrize("variant", variants("inspect"))
def test_inspect_lists_every_bn_layer(corpus, variant):
    case = corpus.case(variant)
    run = corpus.run(variant, "inspect")
    _ok(run)
    assert len(run.report["layers"]) == case.model.bn_layers


@pytest.mark.parametrize("variant", variants("diagnose"))
def test_diagnose_finds_the_stale_copy_stale(corpus, variant):
    case = corpus.case(variant)
    run = corpus.run(variant, "diagnose")
    _ok(run, 3)
    verdicts = [layer["drift"]["verdict"] for layer in run.report["layers"]]
    assert len(verdicts) == case.model.bn_layers and set(verdicts) == {"stale"}


def _output_prefix(output: Path) -> str:
    """The one checkpoint prefix in ``output`` (its basename may be empty: ``.index``, which glob skips)."""
    (index,) = [path for path in output.iterdir() if path.name.endswith(".index")]
    return str(index)[: -len(".index")]


def _repaired_statistics(case, output: Path) -> dict[str, published.LayerStats]:
    if case.model.format.startswith("tf1"):
        return published.tf1_stored(_output_prefix(output), hand_written=case.model.format == "tf1-hand-written")
    if case.model.format == "h5-weights":
        return published.deepcut_stored(output)
    if case.model.format == "frozen":
        return published.frozen_stored(output)
    return published.keras_stored(output, custom_objects(case))


@pytest.mark.parametrize("variant", variants("recalibrate"))
def test_recalibrate_writes_a_file_the_publisher_loads(corpus, variant):
    case = corpus.case(variant)
    run, output = corpus.run(variant, "recalibrate"), case.output
    _ok(run)
    new = {layer["name"]: np.asarray(layer["new_mean"]) for layer in run.report["layers"]}
    assert len(new) == case.model.bn_layers
    sample = {k: v[:2] for k, v in case.data.items()} if isinstance(case.data, dict) else case.data[:2]
    if case.model.format == "tf1":
        # musicnn: tf.compat.v1 Saver.restore into the model graph, then inference.
        restored, scores = published.tf1_saver_restore(
            case.meta, _output_prefix(output), sample, input_tensor=published.MUSICNN_INPUT,
            training_flag=published.MUSICNN_FLAG, output_tensor=published.MUSICNN_OUTPUT)
        means = {name.split("/")[-2]: value for name, value in restored.items() if "moving_mean" in name}
        assert scores.shape == (2, 50)
    elif case.model.format == "tf1-hand-written":
        # chiron: its eval restores the model folder into the graph with a Saver, then runs training=False; the
        # input takes exactly 300 segments. The folder keeps the model.json the eval script reads.
        assert (output / "model.json").read_bytes() == (case.shipped / "model.json").read_bytes()
        sample = case.data[:case.model.batch_size]
        restored, scores = published.tf1_saver_restore(
            case.meta, _output_prefix(output), sample, input_tensor=published.CHIRON_INPUT,
            training_flag=published.CHIRON_FLAG, output_tensor=published.CHIRON_OUTPUT)
        means = {name.rpartition("/")[0]: value for name, value in restored.items() if name.endswith("/pop_mean:0")}
    elif case.variant == "crema":
        # crema: CremaModel._instantiate builds the model from model_spec.pkl with its layers, then
        # load_weights(model.h5) (tf_keras and the Keras 2 imports for Keras 2 code), then predict.
        root = case.root / "crema" / "models" / "chord"
        loaded = published.crema_chord_model(root / "model_spec.pkl", output)
        scores = np.concatenate([np.ravel(out) for out in loaded.predict(sample, verbose=0)])
        means = {layer.name: np.asarray(layer.moving_mean) for layer in published.keras_bn_layers(loaded)}
    elif case.variant == "ina":
        # inaSpeechSegmenter: keras.models.load_model of a Keras 2.3.1 Sequential; Keras 3 rebuilds its input as
        # (None, None, 68, 21) and rejects the file as shipped too, so Keras 2 code's route: tf_keras.
        loaded = published._tf_keras().models.load_model(str(output), compile=False)
        scores = loaded.predict(sample, verbose=0)
        means = {layer.name: np.asarray(layer.moving_mean) for layer in published.keras_bn_layers(loaded)}
    elif case.variant == "deepcut":
        # deepcut's tokenizer: get_convo_nn2() then load_weights(the .h5), predict([x_char, x_type]) > 0.5.
        loaded = published.deepcut_model(output)
        scores = loaded.predict([sample[name] for name in published.DEEPCUT_INPUTS], verbose=0)
        means = {name: stats.mean for name, stats in published.deepcut_stored(output).items()}
    elif case.model.format == "frozen":
        # nudity: Nudity() imports the .pb under "import/"; score() reads one photo (its suffix's decoder, resize,
        # (x - 128) / 128) and feeds it alone to import/input, fixed at [1, 224, 224, 3] as shipped; has(): >= 0.8.
        scores, input_shape = published.nudity_scores(output, sorted(case.data_file.iterdir())[:2])
        assert input_shape == (1, 224, 224, 3)
        assert np.all((scores >= 0) & (scores <= 1))
        means = {name: stats.mean for name, stats in published.frozen_stored(output).items()}
    elif case.model.format == "savedmodel":
        # basic-pitch: tf.saved_model.load(path), then model(audio) -> {"contour", "note", "onset"}.
        import tensorflow as tf

        loaded = tf.saved_model.load(str(output))
        scores = np.concatenate([np.asarray(v).ravel() for v in loaded(tf.constant(sample)).values()])
        means = {name: stats.mean for name, stats in published.keras_stored(output).items()}
    else:
        # fer, tempocnn: (tensorflow.)keras.models.load_model(path, compile=False), then predict.
        import keras

        loaded = keras.models.load_model(str(output), compile=False)
        scores = loaded.predict(sample, verbose=0)
        means = {layer.name: np.asarray(layer.moving_mean) for layer in loaded.layers
                 if isinstance(layer, keras.layers.BatchNormalization)}
    assert np.all(np.isfinite(scores))
    assert means.keys() == new.keys()
    for name, mean in means.items():
        np.testing.assert_allclose(mean, new[name], rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("variant", variants("reference"))
def test_recalibrated_statistics_match_float64_reference(corpus, variant):
    case = corpus.case(variant)
    run, output = corpus.run(variant, "recalibrate"), case.output
    _ok(run)
    got = _repaired_statistics(case, output)
    reference = corpus.reference(variant)
    assert got.keys() == reference.keys()
    errors = {}
    for name, ref in reference.items():
        scale = ref.variance + ref.epsilon
        mean_error = np.max(np.abs(got[name].mean - ref.mean) / np.sqrt(scale))
        variance_error = np.max(np.abs(got[name].variance - ref.variance) / scale)
        if mean_error > MEAN_TOLERANCE or variance_error > VARIANCE_TOLERANCE:
            errors[name] = (float(mean_error), float(variance_error))
    assert not errors, f"(mean error / sqrt(var+eps), variance error / (var+eps)) per layer: {errors}"


# ------------------------------------------------------------------ musicnn: the TF 1.x checkpoint as shipped
@pytest.mark.corpus_variant("musicnn")
def test_a_file_of_an_empty_basename_checkpoint_is_accepted(corpus):
    case = corpus.case("musicnn")
    run = corpus.run("musicnn", "inspect-index-file")
    _ok(run)
    assert len(run.report["layers"]) == case.model.bn_layers


@pytest.mark.corpus_variant("musicnn-renamed")
def test_agreement_on_a_tf1_meta_with_an_output_tensor(corpus):
    run = corpus.run("musicnn-renamed", "diagnose-output-tensor")
    _ok(run, 3)
    assert run.report["agreement"] is not None


@pytest.mark.corpus_variant("musicnn-renamed")
def test_output_detection_ignores_the_loss(corpus):
    run = corpus.run("musicnn-renamed", "diagnose")
    _ok(run, 3)
    assert run.report["agreement"] is not None
    assert "no single output tensor" not in run.stderr


@pytest.mark.corpus_variant("musicnn-renamed")
def test_diagnose_measures_shifts_on_the_layer_scale(corpus):
    """On the shipped (healthy) model each layer's largest shift is at most |Δmean| / sqrt(var + eps)."""
    run = corpus.run("musicnn-renamed", "diagnose-shipped")
    # 5 (inconclusive): on 8 samples some of the shipped model's channels show no variance; the report still
    # carries every layer's drift, which is what this test checks
    assert run.returncode in (0, 3, 5), run.describe()
    epsilon = {name: ref.epsilon for name, ref in corpus.reference("musicnn-renamed").items()}
    too_large = {}
    for layer in run.report["layers"]:
        delta = np.abs(np.subtract(layer["old_mean"], layer["new_mean"]))
        floor = np.minimum(layer["old_variance"], layer["new_variance"])
        bound = float(np.max(delta / np.sqrt(floor + epsilon[layer["name"]])))
        if layer["drift"]["mean_shift_max"] > bound * (1 + 1e-6):
            too_large[layer["name"]] = (layer["drift"]["mean_shift_max"], bound)
    assert not too_large, f"(reported, bound) per layer: {too_large}"


# ------------------------------------------------------ crema: a custom layer, GRU sequences, four outputs
@pytest.mark.corpus_variant("crema")
def test_crema_without_its_layer_names_the_class_and_the_option(corpus):
    run = corpus.run("crema", "inspect-no-import")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "unknown layer class SqueezeLayer" in run.stderr and "--import MODULE" in run.stderr


@pytest.mark.corpus_variant("crema")
def test_crema_layers_as_shipped_are_keras3_classes_named_with_the_fix(corpus):
    """crema's layers.py imports ``keras``, Keras 3 under TensorFlow 2.21: its SqueezeLayer calls
    ``keras.backend.squeeze``, which Keras 3 does not have. The error says so and names tf_keras. (Under
    TensorFlow 2.15 ``keras`` is Keras 2: every crema run there uses the layers as shipped, and repairs.)"""
    if published.keras2_is_keras():
        pytest.skip("TensorFlow 2.15: crema's layers.py as shipped is Keras 2 code, which every crema run uses")
    run = corpus.run("crema", "inspect-shipped-layers")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "SqueezeLayer subclasses Keras 3's Layer" in run.stderr and "import tf_keras as keras" in run.stderr


@pytest.mark.corpus_variant("crema")
def test_crema_agreement_is_per_frame_on_each_output(corpus):
    case = corpus.case("crema")
    run = corpus.run("crema", "recalibrate")
    _ok(run)
    agreement = run.report["agreement"]
    frames = case.data.shape[0] * case.data.shape[1]
    assert agreement["unit"] == "frame" and agreement["num_compared"] == frames
    assert [one["output_tensor"] for one in agreement["outputs"]] == ["chord_tag", "chord_pitch", "chord_root", "chord_bass"]


@pytest.mark.corpus_variant("crema")
def test_crema_model_option_builds_the_publishers_architecture(corpus):
    """--model on the full-model file: crema's own architecture (model_spec.pkl), the file's weights; the same
    repair as with --import."""
    case = corpus.case("crema")
    by_model, by_import = corpus.run("crema", "recalibrate-model"), corpus.run("crema", "recalibrate")
    _ok(by_model)
    _ok(by_import)
    assert (case.workdir / "model.h5").read_bytes() == case.output.read_bytes()


# ------------------------------------------------- nudity: a frozen MobileNet v1, fixed at batch 1, photos
@pytest.mark.corpus_variant("nudity")
def test_nudity_preprocessing_read_from_the_model_and_given_by_the_user(corpus):
    """Photos need a preprocessing. Told nothing (diagnose), ckptfix reads tf-slim's choice for MobilenetV1 from
    the graph's scopes: inception, x / 127.5 - 1 (tf-slim's preprocessing_factory maps mobilenet_v1 to it). nudity's
    own code scales (x - 128) / 128, which no preset is, so the repair gets the user's function (recalibrate) and
    the notice names it, with the model's suggestion beside."""
    read = [n for n in corpus.run("nudity", "diagnose").report["notices"] if n.startswith("images preprocessed")]
    assert len(read) == 1 and "with inception: x / 127.5 - 1" in read[0]
    assert "chosen because it is the tf-slim network MobilenetV1" in read[0]
    given = [n for n in corpus.run("nudity", "recalibrate").report["notices"] if n.startswith("images preprocessed")]
    assert len(given) == 1 and "--preprocess published:nudity_preprocess" in given[0]
    assert "the model suggests inception" in given[0]


@pytest.mark.corpus_variant("nudity")
def test_nudity_batches_of_32_through_an_input_fixed_at_1(corpus):
    """The graph's input is fixed at [1, 224, 224, 3]; ckptfix frees it in its working copy and runs the 64 photos
    in 2 batches of 32 (the reference's batches: batch statistics depend on them), while the repaired file keeps
    the input as shipped (checked in the publisher's route)."""
    case = corpus.case("nudity")
    report = corpus.run("nudity", "recalibrate").report
    assert report["num_samples"] == case.model.num_samples and report["num_batches"] == 2
