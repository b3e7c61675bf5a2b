"""Options: each validation message, the normalised values (enums, input names, paths), the keyword arguments
each command takes, and what the pipeline reads from it (data options, TF1-only flags)."""

import dataclasses
from pathlib import Path

import pytest

import ckptfix
from ckptfix.data import FORMATS, PRESETS
from ckptfix.errors import CkptfixError, DataError, GraphError, OptionError
from ckptfix.keras.formats import MODEL_FORMATS
from ckptfix.options import DataFormat, Estimator, ModelFormat, Options, Preset
from ckptfix.stats import pooled


def test_enums_are_the_owning_modules_lists():
    assert Estimator is pooled.Estimator
    assert [e.value for e in ModelFormat] == list(MODEL_FORMATS)
    assert [e.value for e in DataFormat] == list(FORMATS)
    assert [e.value for e in Preset] == list(PRESETS)
    assert f"{ModelFormat.WEIGHTS_H5}" == "weights-h5" and ModelFormat.WEIGHTS_H5 == "weights-h5"


def test_defaults_are_the_api_defaults():
    options = Options()
    # batch_size None: the graph input's fixed batch size, else 32 (ckptfix.pipeline.batch_size)
    assert (options.batch_size, options.shuffle, options.seed, options.agreement_samples) == (None, True, 0, 256)
    # preprocess None: what the model says (ckptfix.data.conventions)
    assert options.estimator is Estimator.POOLED and options.preprocess is None
    assert options.feature == "image/encoded" and options.input_name is None and options.model_format is None


def test_strings_become_enums_and_paths():
    options = Options(estimator="batch-mean", model_format="weights-h5", data_format="numpy", preprocess="vgg",
                      meta="a/b.meta", architecture="arch.json", output="out", against="other/model.ckpt-1")
    assert options.estimator is Estimator.BATCH_MEAN and options.model_format is ModelFormat.WEIGHTS_H5
    assert options.data_format is DataFormat.NUMPY and options.preprocess is Preset.VGG
    assert options.meta == Path("a/b.meta") and isinstance(options.architecture, Path)
    assert options.output == Path("out") and options.against == Path("other/model.ckpt-1")


def test_user_preprocessing_is_kept_as_given():
    def mine(image):
        return image

    assert Options(preprocess="my_pkg.prep:fn").preprocess == "my_pkg.prep:fn"
    assert Options(preprocess=mine).preprocess is mine


@pytest.mark.parametrize("keywords, error, message", [
    (dict(estimator="median"), CkptfixError, "--estimator must be one of pooled, batch-mean (got median)."),
    (dict(model_format="onnx"), CkptfixError,
     "--model-format must be one of keras, h5, weights-h5, tf-checkpoint, savedmodel, tf1 (got onnx)."),
    (dict(data_format="csv"), DataError, "--format must be one of images, numpy, tfrecord (got csv)."),
    (dict(preprocess="imagenet"), CkptfixError,
     "--preprocess must be one of inception, vgg, caffe, torch, unit, raw (got imagenet)."),
    (dict(batch_size=0), CkptfixError, "--batch-size must be at least 1 (got 0)."),
    (dict(num_samples=0), CkptfixError, "--num-samples must be at least 1 (got 0)."),
    (dict(agreement_samples=-1), CkptfixError, "--agreement-samples must be at least 0 (got -1)."),
    (dict(include="("), CkptfixError, "--include '(' is not a valid regular expression"),
    (dict(exclude="[a"), CkptfixError, "--exclude '[a' is not a valid regular expression"),
    (dict(input_name=" , "), GraphError, "--input is empty"),
    (dict(model_args={"num_classes": 4}), CkptfixError,
     "--num-classes, --model-arg, --input-shape and --arg-scope apply only with --model."),
    (dict(input_shape="8x8x3"), CkptfixError, "--num-classes, --model-arg, --input-shape and --arg-scope apply"),
    (dict(arg_scope="nets:scope"), CkptfixError, "--num-classes, --model-arg, --input-shape and --arg-scope apply"),
])
def test_each_bad_value_is_named(keywords, error, message):
    with pytest.raises(error) as raised:
        Options(**keywords)
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize("keywords, message", [
    (dict(central_crop=1.5), "--central-crop must be above 0 and at most 1, e.g. 0.875 (got 1.5)."),
    (dict(central_crop=0), "--central-crop must be above 0 and at most 1, e.g. 0.875 (got 0)."),
    (dict(image_size="0x8"), "--image-size takes H or HxW in pixels, like 224 or 224x160 (got 0x8)."),
    (dict(image_size=(8, 0)), "--image-size takes H or HxW in pixels"),
    (dict(image_size="8x8x8"), "--image-size takes H or HxW in pixels"),
    (dict(cluster_timeout=0), "--cluster-timeout must be a number of seconds above 0 (got 0)."),
])
def test_options_out_of_range_are_usage_errors_before_any_work(keywords, message):
    """Issue 33 item 5: checked when the options are built (exit 2), not once the model is loaded."""
    with pytest.raises(OptionError) as raised:
        Options(**keywords)
    assert raised.value.exit_code == 2 and str(raised.value).startswith(message)
    assert Options(central_crop=1.0, image_size="8x6").image_size == (8, 6)


def test_model_options_with_model_are_fine():
    options = Options(model="nets:build", model_args={"num_classes": 4}, input_shape="8x8x3", arg_scope="nets:scope")
    assert options.model_args == {"num_classes": 4} and options.agreement_samples == 256
    assert Options(agreement_samples=0).agreement_samples == 0


@pytest.mark.parametrize("given, names", [
    (None, None),
    ([], None),  # the CLI without --input
    ("images", ("images",)),
    ("images, side:0", ("images", "side:0")),
    (["images", "side"], ("images", "side")),
    (("images",), ("images",)),
    (["images,side", "extra"], ("images", "side", "extra")),  # the CLI's list, items in the comma form
])
def test_input_name_forms(given, names):
    assert Options(input_name=given).input_name == names


def test_options_are_frozen_and_replace_revalidates():
    options = Options(batch_size=8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.batch_size = 4
    with pytest.raises(CkptfixError, match="--batch-size"):
        dataclasses.replace(options, batch_size=0)


@pytest.mark.parametrize("command, refused", [
    ("recalibrate", ["against"]),
    ("diagnose", ["output", "force"]),
    ("inspect", ["batch_size", "output", "estimator", "training_flag", "progress", "on_notice", "data_format"]),
])
def test_keywords_a_command_does_not_take_are_type_errors(command, refused):
    for name in refused:
        with pytest.raises(TypeError, match=rf"{command}\(\) got an unexpected keyword argument '{name}'"):
            Options.build(None, {name: None}, command)


def test_keywords_each_command_takes():
    fields = {f.name for f in dataclasses.fields(Options)}
    assert Options.COMMANDS["recalibrate"] == fields - {"against"}
    assert Options.COMMANDS["diagnose"] == fields - {"output", "force"}  # its overwrite: for the side outputs
    assert Options.COMMANDS["inspect"] == {
        "meta", "model", "model_args", "input_shape", "arg_scope", "model_format", "architecture", "unsafe", "signature",
        "custom_objects",
        "against"}
    assert Options.build(None, {"against": "x"}, "inspect").against == Path("x")


def test_build_applies_keywords_to_a_given_options():
    base = Options(batch_size=8, estimator="batch-mean", output="out")
    assert Options.build(base, {}, "recalibrate") is base
    built = Options.build(base, {"seed": 3}, "diagnose")  # one Options serves several commands
    assert (built.batch_size, built.seed, built.estimator) == (8, 3, Estimator.BATCH_MEAN)
    with pytest.raises(CkptfixError, match="--num-samples"):
        Options.build(base, {"num_samples": 0}, "recalibrate")
    with pytest.raises(TypeError, match="must be a ckptfix.options.Options"):
        Options.build({"batch_size": 8}, {}, "recalibrate")


def test_the_api_refuses_unknown_keywords_before_any_work(tmp_path):
    with pytest.raises(TypeError, match="unexpected keyword argument 'against'"):
        ckptfix.recalibrate(tmp_path / "missing", tmp_path / "data", against="x")
    with pytest.raises(TypeError, match="unexpected keyword argument 'batch_size'"):
        ckptfix.inspect(tmp_path / "missing", batch_size=4)
    with pytest.raises(CkptfixError, match="estimator must be one of"):  # the API names the keyword
        ckptfix.diagnose(tmp_path / "missing", tmp_path / "data", Options(), estimator="median")


def test_data_options_and_tf1_only_flags():
    options = Options(image_size="8x8", central_crop=0.875, data_format="images", feature="x", strict=True)
    assert options.data_options == dict(image_size=(8, 8), central_crop=0.875, data_format=DataFormat.IMAGES,
                                        feature="x", strict=True)  # the size parsed (and checked) once
    assert Options().tf1_only() == []
    flagged = Options(training_flag="is_training", output_tensor="logits", allow_unsafe_ops=True, model="m:f",
                      model_args={"num_classes": 2}, input_shape="8x8x3", arg_scope="m:scope")
    assert flagged.tf1_only() == ["--training-flag", "--allow-unsafe-ops",
                                  "--model-arg/--num-classes", "--input-shape", "--arg-scope"]
