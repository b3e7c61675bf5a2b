"""How --model's options are read: keyword arguments as Python literals, the input shape, the function spec."""

import pytest

from ckptfix.errors import CkptfixError
from ckptfix.graph.model_fn import parse_input_shape, parse_model_args
from ckptfix.user_code import resolve_function


def test_model_args_are_python_literals_else_strings():
    assert parse_model_args(["depth_multiplier=0.5", "global_pool=False", "strides=(1, 2)", "scope='net'",
                             "name=resnet_v1_50", "spatial_squeeze = True"]) == {
        "depth_multiplier": 0.5, "global_pool": False, "strides": (1, 2), "scope": "net", "name": "resnet_v1_50",
        "spatial_squeeze": True}
    assert parse_model_args(None) == {}
    for bad in ("no_equals", "=1", "two words=1"):
        with pytest.raises(CkptfixError, match="key=value"):
            parse_model_args([bad])


def test_input_shape_from_the_option_or_default_image_size():
    def net(images):
        return images

    assert parse_input_shape("224x224x3", net) == (224, 224, 3)
    assert parse_input_shape("32,32,1", net) == (32, 32, 1)
    assert parse_input_shape((12, 12, 3), net) == (12, 12, 3)
    with pytest.raises(CkptfixError, match="--input-shape HxWxC"):
        parse_input_shape(None, net)
    net.default_image_size = 299
    assert parse_input_shape(None, net) == (299, 299, 3)
    for bad in ("224xx3", "0x4x3", "big"):
        with pytest.raises(CkptfixError, match="--input-shape"):
            parse_input_shape(bad, net)


def test_function_specs():
    assert resolve_function("os.path:join") is __import__("os").path.join
    assert resolve_function(len) is len
    for spec, message in (("os.path", "package.module:function"), ("no_such_module_x:f", "cannot import"),
                          ("os.path:no_such_function", "has no no_such_function"), ("os:sep", "not a function")):
        with pytest.raises(CkptfixError, match=message):
            resolve_function(spec)
