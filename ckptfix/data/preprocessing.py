"""Image preprocessing: presets matching how common model families were trained, or the user's own function.

Every preset takes a decoded ``uint8`` image ``[h, w, C]`` (``C`` already the input's channel count) and
returns a float32 ``[H, W, C]`` sample, ``H x W`` being the model input's size (or ``--image-size``). Pixel
values ``x`` below are in 0..255; means and standard deviations are per channel, in RGB order unless noted.

=============  ==================================================================================
``inception``  slim's Inception eval: optional central crop (``--central-crop F``; slim uses 0.875),
               bilinear resize to ``H x W`` (TF1 ``resize_bilinear``, no half-pixel centres),
               ``x / 127.5 - 1`` (in [-1, 1]).
``vgg``        slim's VGG / ResNet-v1 eval: resize (TF1 ``resize_bilinear``) so the shorter side is
               ``S = round(min(H, W) * 256 / 224)`` (256 for 224 inputs), keeping the aspect ratio
               (each side ``rint(side * S / shorter)``); central crop ``H x W`` (offsets
               ``(h - H) // 2``, ``(w - W) // 2``); ``x - (123.68, 116.78, 103.94)``.
``caffe``      Keras' ``caffe`` mode: bilinear resize to ``H x W``, RGB -> BGR,
               ``x - (103.939, 116.779, 123.68)`` (BGR means).
``torch``      torchvision's ImageNet normalisation: bilinear resize to ``H x W``,
               ``(x / 255 - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)``.
``unit``       bilinear resize to ``H x W``, ``x / 255`` (in [0, 1]).
``raw``        bilinear resize to ``H x W``, ``x`` (0..255 floats).
=============  ==================================================================================

``caffe``, ``torch``, ``unit`` and ``raw`` resize with ``tf.image.resize`` (bilinear, half-pixel centres);
``--central-crop F`` applies to every preset but ``vgg`` (which crops by construction) and happens before
the resize: the central ``F`` of each side, as ``tf.image.central_crop``. A resize to the image's own size
is the identity.

``--preprocess package.module:function`` imports and runs the user's code: ``function`` gets the decoded
``uint8`` tensor ``[h, w, C]`` and returns the model's input sample (shape ``input.shape[1:]``); it is traced
into the ``tf.data`` pipeline, so it must be written with TensorFlow ops.

Channel conversion (before any preset): grey -> RGB repeats the grey value; RGB(A) -> grey is
``0.2989 R + 0.587 G + 0.114 B`` (``tf.image.rgb_to_grayscale``), rounded; alpha is dropped.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

from ckptfix.errors import DataError, OptionError, PreprocessingUnknown
from ckptfix.user_code import describe, resolve_function, running_user_code

_VGG_MEANS = (123.68, 116.78, 103.94)
_CAFFE_BGR_MEANS = (103.939, 116.779, 123.68)
_TORCH_MEANS = (0.485, 0.456, 0.406)
_TORCH_STDS = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preset:
    """A named preprocessing: ``formula`` is what the notice and docs show."""

    name: str
    formula: str
    rgb_only: bool = False


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("inception", "x / 127.5 - 1, in [-1, 1] (slim Inception's scaling)"),
        Preset("vgg", "shorter side to 256/224 of the input size, central crop, x - (123.68, 116.78, 103.94) (slim VGG/ResNet-v1)", True),
        Preset("caffe", "RGB -> BGR, x - (103.939, 116.779, 123.68)", True),
        Preset("torch", "(x / 255 - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)", True),
        Preset("unit", "x / 255, in [0, 1]"),
        Preset("raw", "x, 0..255 floats"),
    )
}

#: name -> (description, formula on float32 pixels already resized); kept for callers of the first API.
PREPROCESSING: dict[str, tuple[str, Callable]] = {name: (p.formula, None) for name, p in PRESETS.items()}


@dataclass(frozen=True)
class ImagePreprocessing:
    """What happens to each decoded image; :meth:`build` returns the per-image TF function."""

    preset: str | None
    function: Callable | None
    description: str
    height: int
    width: int
    channels: int
    central_crop: float | None = None
    spec: str | None = None  # the user's ``package.module:function``, as given

    def build(self):
        """``uint8 [h, w, C]`` tensor -> float32 sample tensor (preset) or the user function's output."""
        if self.function is not None:
            return self.function
        return lambda image: apply_preset(self.preset, image, self.height, self.width, self.central_crop)

    def running(self):
        """Around code that traces or runs the per-image function: the user's exceptions shown as theirs."""
        if self.function is None:
            return contextlib.nullcontext()
        return running_user_code(describe("--preprocess", self.spec or self.function), self.function)


def resolve_preprocessing(
    preprocess, input_shape: tuple | None, image_size: tuple[int, int] | None, central_crop: float | None
) -> ImagePreprocessing:
    """Check ``preprocess`` (preset name, ``module:function`` or callable) against the input; user errors named.
    ``preprocess=None`` (nothing given, nothing read from the model: :mod:`ckptfix.data.conventions`) is
    :class:`~ckptfix.errors.PreprocessingUnknown`."""
    if input_shape is None or len(input_shape) != 4:
        raise DataError(
            f"images need a model input shaped (N, H, W, C), this one is {input_shape}: "
            "pass preprocessed arrays (.npy) or TFRecords of float features instead."
        )
    _, height, width, channels = input_shape
    if channels not in (1, 3):
        raise DataError(
            f"images are decoded to 1 or 3 channels but the model input {_shape(input_shape)} takes {channels}: "
            "pass preprocessed arrays (.npy) instead."
        )
    if image_size is not None:
        static = (height, width)
        if None not in static and tuple(image_size) != static:
            raise DataError(
                f"--image-size {image_size[0]}x{image_size[1]} does not match the input's size {height}x{width}: drop --image-size."
            )
        height, width = image_size
    if height is None or width is None:
        raise DataError(f"the model input {_shape(input_shape)} has no static height and width: pass --image-size HxW.")
    check_central_crop(central_crop)
    if preprocess is None:
        raise PreprocessingUnknown(
            "images need the model's preprocessing and nothing in the model says which: pass --preprocess PRESET "
            f"(one of {', '.join(PRESETS)}) or --preprocess MODULE:FN.")
    if callable(preprocess):
        name = getattr(preprocess, "__qualname__", repr(preprocess))
        return ImagePreprocessing(None, preprocess, f"the function {name}", height, width, channels)
    if isinstance(preprocess, str) and ":" in preprocess:
        function = resolve_function(preprocess, "--preprocess", DataError)
        return ImagePreprocessing(None, function, f"{preprocess} (your code)", height, width, channels, spec=preprocess)
    preset = PRESETS.get(preprocess)
    if preset is None:
        raise DataError(
            f"--preprocess must be one of {', '.join(PRESETS)} or package.module:function (got {preprocess})."
        )
    if preset.rgb_only and channels != 3:
        raise DataError(f"--preprocess {preset.name} works on RGB images but the input takes {channels} channel(s): pick inception, unit or raw.")
    if central_crop is not None and preset.name == "vgg":
        raise DataError("--preprocess vgg crops to the input size by construction: drop --central-crop.")
    description = preset.formula + (f", central crop {central_crop}" if central_crop is not None else
                                    ", no crop (slim's eval crops: --central-crop 0.875)"
                                    if preset.name == "inception" else "")
    return ImagePreprocessing(preset.name, None, description, height, width, channels, central_crop)


def parse_image_size(image_size) -> tuple[int, int] | None:
    """``--image-size``: ``224`` / ``"224"`` (square), ``"224x160"`` or ``(224, 160)`` -> ``(H, W)``; an
    :class:`~ckptfix.errors.OptionError` for anything else, or a size below 1."""
    if image_size is None:
        return None
    if isinstance(image_size, (tuple, list)):
        parts = list(image_size)
    else:
        try:
            parts = [int(p) for p in str(image_size).lower().strip().split("x")]
        except ValueError:
            parts = []
    if (len(parts) not in (1, 2) or not all(isinstance(p, int) and not isinstance(p, bool) for p in parts)
            or min(parts) < 1):
        raise OptionError(f"--image-size takes H or HxW in pixels, like 224 or 224x160 (got {image_size}).")
    return parts[0], parts[-1]


def check_central_crop(central_crop: float | None) -> None:
    """``--central-crop`` is a fraction in (0, 1] (a usage error otherwise)."""
    if central_crop is not None and not 0.0 < central_crop <= 1.0:
        raise OptionError(f"--central-crop must be above 0 and at most 1, e.g. 0.875 (got {central_crop}).")


def _shape(shape) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def convert_channels(image, channels: int):
    """``uint8 [h, w, c]`` with c in 1..4 -> ``[h, w, channels]`` (grey repeated, RGB to grey, alpha dropped).

    A decoded file's channel count is known when it runs; an array's images have it in their static shape,
    and then only the branch that applies is built (the other would not trace: RGB to grey of one channel)."""
    import tensorflow as tf

    colour = lambda: image[..., :3]  # noqa: E731  (RGB, RGBA)
    grey = lambda: image[..., :1]  # noqa: E731  (grey, grey + alpha)
    if channels == 3:
        many, few = colour, lambda: tf.tile(grey(), [1, 1, 3])
    else:
        many, few = lambda: tf.cast(tf.round(tf.image.rgb_to_grayscale(tf.cast(colour(), tf.float32))), tf.uint8), grey
    known = image.shape[-1]
    converted = tf.cond(tf.shape(image)[-1] >= 3, many, few) if known is None else many() if known >= 3 else few()
    return tf.ensure_shape(converted, [None, None, channels])


def _central_crop(image, fraction: float | None):
    import tensorflow as tf

    return image if fraction is None or fraction == 1.0 else tf.image.central_crop(image, fraction)


def _slim_resize(image, height, width):
    """TF1 ``resize_bilinear(align_corners=False)``, what slim's preprocessing calls."""
    import tensorflow as tf

    return tf.raw_ops.ResizeBilinear(images=image[None], size=[height, width], align_corners=False, half_pixel_centers=False)[0]


def apply_preset(name: str, image, height: int, width: int, central_crop: float | None = None):
    """The preset ``name`` on one decoded ``uint8`` image; see the module docstring for the formulas."""
    import tensorflow as tf

    x = tf.cast(image, tf.float32)
    if name == "vgg":
        side = int(round(min(height, width) * 256 / 224))
        shape = tf.cast(tf.shape(x)[:2], tf.float32)
        scale = side / tf.reduce_min(shape)
        new = tf.cast(tf.math.rint(shape * scale), tf.int32)
        x = _slim_resize(x, new[0], new[1])
        top, left = (new[0] - height) // 2, (new[1] - width) // 2
        x = x[top : top + height, left : left + width]
        return tf.ensure_shape(x, [height, width, None]) - _VGG_MEANS
    x = _central_crop(x, central_crop)
    if name == "inception":
        return _slim_resize(x, height, width) / 127.5 - 1.0
    x = tf.image.resize(x, [height, width])
    if name == "caffe":
        return x[..., ::-1] - _CAFFE_BGR_MEANS
    if name == "torch":
        return (x / 255.0 - _TORCH_MEANS) / _TORCH_STDS
    if name == "unit":
        return x / 255.0
    return x
