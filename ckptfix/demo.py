"""The embedded demo (``ckptfix demo [DIR]``): reproduce the stale-BatchNorm bug on a tiny model, then repair it.

It takes about ten seconds on a laptop CPU and goes through four steps:

1. **The bug.** A small conv net is written the TF1 way: ``tf.compat.v1`` ops in a graph, a bool
   ``is_training`` placeholder, and variables named like ``tf.compat.v1.layers`` ones. It has two BatchNorm
   layers: a fused one (two ``fused_batch_norm`` nodes selected by a ``tf.compat.v1.cond``) and a non-fused
   one (``tf.nn.moments`` and ``tf.nn.batch_normalization``). It is trained with ``is_training=True`` by a
   train op that never runs the moving-average updates, which is the forgotten ``UPDATE_OPS`` dependency.
   ``moving_mean`` and ``moving_variance`` therefore stay at their initial 0 and 1. A ``tf.compat.v1``
   Saver saves the checkpoint with its ``.meta`` beside it, as any training script would.
2. **The symptom.** On held-out images the model scores about 100% in training mode (batch statistics)
   and about 25%, which is chance, in inference mode (moving statistics). The task is built so that BN
   statistics matter. The four classes are bright grey images at four close brightness levels. Batch
   normalisation removes the large common offset and stretches the small gaps between the levels. With a
   moving mean of 0 and a moving variance of 1, nothing is removed or stretched, so every image lands in
   the same class.
3. **The repair.** :func:`ckptfix.api.recalibrate`, the code path behind ``ckptfix recalibrate``, streams
   PNG calibration images of the same task through the frozen graph. It writes a new checkpoint with
   corrected moving statistics into ``DIR/demo-recalibrated`` and leaves the input checkpoint untouched.
   (Not ``train-recalibrated``: that is where the ``ckptfix recalibrate`` it suggests next writes.)
4. **The proof.** An unchanged evaluation script builds a fresh graph with the same :func:`build_model`,
   restores it with ``Saver().restore(sess, tf.train.latest_checkpoint(output_dir))``, and gets the
   inference-mode accuracy back to the training-mode one.

The graphs are built inside ``tf.Graph().as_default()`` blocks, so the rest of the ckptfix process stays
eager. As a result ``tf.compat.v1.cond`` builds TF2 control flow (``If`` ops), and ``get_variable`` makes
resource variables. That is what a TF1 script produces when it runs under TensorFlow 2.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

if TYPE_CHECKING:
    from ckptfix.report import RecalibrationReport

v1 = tf.compat.v1

IMAGE_SIZE = 16
CHANNELS = 3
NUM_CLASSES = 4
BN_EPSILON = 1e-3

TRAIN_STEPS = 300
BATCH_SIZE = 64
LEARNING_RATE = 0.01
NUM_CALIBRATION_IMAGES = 512
NUM_HELD_OUT_IMAGES = 512
TRAIN_SEED, CALIBRATION_SEED, HELD_OUT_SEED = 0, 1, 2

# Class k: grey pixels of brightness CLASS_BRIGHTNESS[k] plus Gaussian noise. The levels are bright (a large
# offset for BN to subtract) and close together (small gaps for BN to stretch).
CLASS_BRIGHTNESS = np.array([185.0, 195.0, 205.0, 215.0])
PIXEL_NOISE = 6.0


@dataclass(frozen=True)
class Dataset:
    """Images as uint8 pixels ``[N, 16, 16, 3]`` and their integer class labels ``[N]``."""

    pixels: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class StaleModel:
    """What the buggy training run left behind, and how it scores on held-out images in either mode."""

    checkpoint_prefix: str
    data_dir: Path
    held_out: Dataset
    inference_accuracy: float
    training_accuracy: float

    @property
    def train_dir(self) -> Path:
        """The training folder: the checkpoint files, their ``.meta`` and the ``checkpoint`` state file."""
        return Path(self.checkpoint_prefix).parent


@dataclass(frozen=True)
class DemoResult:
    """Paths and accuracies of one demo run. ``report`` is what :func:`ckptfix.api.recalibrate` returned."""

    checkpoint_prefix: str
    data_dir: Path
    output_dir: Path
    inference_accuracy_before: float
    training_accuracy: float
    inference_accuracy_after: float
    report: RecalibrationReport


# --- The task ---------------------------------------------------------------------------------------------


def make_dataset(num_images: int, seed: int | Sequence[int]) -> Dataset:
    """Grey images whose class is their brightness level, balanced in expectation and deterministic per ``seed``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, size=num_images)
    brightness = CLASS_BRIGHTNESS[labels][:, None, None, None]
    noise = rng.normal(0.0, PIXEL_NOISE, (num_images, IMAGE_SIZE, IMAGE_SIZE, CHANNELS))
    pixels = np.clip(np.rint(brightness + noise), 0, 255).astype(np.uint8)
    return Dataset(pixels=pixels, labels=labels)


def preprocess(pixels: np.ndarray) -> np.ndarray:
    """Inception preprocessing, the model's input convention: ``pixels / 127.5 - 1`` in [-1, 1], float32."""
    return pixels.astype(np.float32) / 127.5 - 1.0


def write_png_folder(dataset: Dataset, folder: Path) -> None:
    """Write the images of ``dataset`` to ``folder`` as ``00000.png``, ``00001.png``, and so on."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(dataset.pixels):
        (folder / f"{index:05d}.png").write_bytes(tf.io.encode_png(image).numpy())


# --- The model --------------------------------------------------------------------------------------------


def _batch_norm_variables(channels: int) -> tuple[tf.Variable, tf.Variable, tf.Variable, tf.Variable]:
    """``gamma``, ``beta``, ``moving_mean`` and ``moving_variance`` in the current variable scope."""
    gamma = v1.get_variable("gamma", [channels], initializer=v1.ones_initializer())
    beta = v1.get_variable("beta", [channels], initializer=v1.zeros_initializer())
    moving_mean = v1.get_variable("moving_mean", [channels], initializer=v1.zeros_initializer(), trainable=False)
    moving_variance = v1.get_variable(
        "moving_variance", [channels], initializer=v1.ones_initializer(), trainable=False
    )
    return gamma, beta, moving_mean, moving_variance


def fused_batch_norm(inputs: tf.Tensor, is_training: tf.Tensor, scope: str) -> tf.Tensor:
    """BN with two ``FusedBatchNormV3`` nodes: batch statistics when training, moving statistics otherwise."""
    with v1.variable_scope(scope):
        gamma, beta, moving_mean, moving_variance = _batch_norm_variables(inputs.shape[-1])

        def with_batch_statistics() -> tf.Tensor:
            outputs, _, _ = v1.nn.fused_batch_norm(inputs, gamma, beta, epsilon=BN_EPSILON, is_training=True)
            return outputs

        def with_moving_statistics() -> tf.Tensor:
            outputs, _, _ = v1.nn.fused_batch_norm(
                inputs, gamma, beta, mean=moving_mean, variance=moving_variance, epsilon=BN_EPSILON,
                is_training=False,
            )
            return outputs

        return v1.cond(is_training, with_batch_statistics, with_moving_statistics)


def moments_batch_norm(inputs: tf.Tensor, is_training: tf.Tensor, scope: str) -> tf.Tensor:
    """Non-fused BN: ``tf.nn.moments`` when training, the moving statistics otherwise."""
    with v1.variable_scope(scope):
        gamma, beta, moving_mean, moving_variance = _batch_norm_variables(inputs.shape[-1])
        batch_mean, batch_variance = tf.nn.moments(inputs, axes=[0, 1, 2])
        # One cond per statistic, as tf.compat.v1.layers builds its non-fused path.
        mean = v1.cond(is_training, lambda: batch_mean, lambda: tf.identity(moving_mean))
        variance = v1.cond(is_training, lambda: batch_variance, lambda: tf.identity(moving_variance))
        return tf.nn.batch_normalization(inputs, mean, variance, beta, gamma, BN_EPSILON)


def _conv(inputs: tf.Tensor, filters: int, stride: int, scope: str) -> tf.Tensor:
    """A 3x3 convolution without bias (the BN after it has ``beta``)."""
    with v1.variable_scope(scope):
        kernel = v1.get_variable("kernel", [3, 3, inputs.shape[-1], filters])
        return tf.nn.conv2d(inputs, kernel, strides=stride, padding="SAME")


def build_model(images: tf.Tensor, is_training: tf.Tensor) -> tf.Tensor:
    """Logits ``[N, 4]``: conv, fused BN, ReLU, strided conv, non-fused BN, ReLU, mean pool, dense."""
    net = tf.nn.relu(fused_batch_norm(_conv(images, 16, 1, "conv1"), is_training, "conv1/BatchNorm"))
    net = tf.nn.relu(moments_batch_norm(_conv(net, 16, 2, "conv2"), is_training, "conv2/BatchNorm"))
    net = tf.reduce_mean(net, axis=[1, 2])
    with v1.variable_scope("logits"):
        weights = v1.get_variable("kernel", [net.shape[-1], NUM_CLASSES])
        bias = v1.get_variable("bias", [NUM_CLASSES], initializer=v1.zeros_initializer())
    return tf.matmul(net, weights) + bias


@dataclass(frozen=True)
class _ModelGraph:
    graph: tf.Graph
    images: tf.Tensor
    is_training: tf.Tensor
    logits: tf.Tensor


def _model_graph() -> _ModelGraph:
    """A fresh graph holding the model, its feed points (``images``, ``is_training``) and its logits."""
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(TRAIN_SEED)
        images = v1.placeholder(tf.float32, [None, IMAGE_SIZE, IMAGE_SIZE, CHANNELS], name="images")
        is_training = v1.placeholder_with_default(False, [], name="is_training")
        logits = build_model(images, is_training)
    return _ModelGraph(graph, images, is_training, logits)


# --- Training with the bug, and the unchanged eval script -------------------------------------------------


def train_without_update_ops(train_dir: Path) -> str:
    """Train in training mode with a train op that never updates the moving statistics; return the prefix."""
    model = _model_graph()
    with model.graph.as_default():
        labels = v1.placeholder(tf.int64, [None], name="labels")
        loss = v1.losses.sparse_softmax_cross_entropy(labels, model.logits)
        global_step = v1.train.get_or_create_global_step()
        # The bug: no control dependency on BN update ops, so moving_mean / moving_variance stay 0 / 1.
        train_op = v1.train.AdamOptimizer(LEARNING_RATE).minimize(loss, global_step=global_step)
        saver = v1.train.Saver()
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            for step in range(TRAIN_STEPS):
                batch = make_dataset(BATCH_SIZE, seed=(TRAIN_SEED, step))
                feed = {model.images: preprocess(batch.pixels), labels: batch.labels, model.is_training: True}
                session.run(train_op, feed)
            train_dir.mkdir(parents=True, exist_ok=True)
            return saver.save(session, str(train_dir / "model.ckpt"), global_step=global_step)


def evaluate(checkpoint_dir: Path, dataset: Dataset, *, training_mode: bool) -> float:
    """Accuracy of the latest checkpoint in ``checkpoint_dir``, computed the way an unchanged eval script would.

    With ``training_mode`` the script feeds ``is_training=True``. BN then normalises with the statistics of
    ``dataset``, fed as one batch, instead of the moving statistics.
    """
    model = _model_graph()
    with model.graph.as_default(), v1.Session() as session:
        v1.train.Saver().restore(session, tf.train.latest_checkpoint(str(checkpoint_dir)))
        feed = {model.images: preprocess(dataset.pixels), model.is_training: training_mode}
        predictions = np.argmax(session.run(model.logits, feed), axis=1)
    return float(np.mean(predictions == dataset.labels))


# --- The demo ---------------------------------------------------------------------------------------------


def build_stale_model(directory: Path, *, echo: Callable[[str], None] = print) -> StaleModel:
    """Train the buggy model into ``directory/train``, write ``directory/calibration-images``, score both modes."""
    directory = Path(directory)
    echo(
        f"1. Training a small conv net (one fused, one non-fused BatchNorm) for {TRAIN_STEPS} steps on grey "
        f"images of {NUM_CLASSES} brightness levels, with a train op that forgets the BN update ops..."
    )
    prefix = train_without_update_ops(directory / "train")
    echo(f"   stale checkpoint:   {prefix}  (moving_mean still 0, moving_variance still 1)")
    data_dir = directory / "calibration-images"
    write_png_folder(make_dataset(NUM_CALIBRATION_IMAGES, CALIBRATION_SEED), data_dir)
    echo(f"   calibration images: {data_dir}  ({NUM_CALIBRATION_IMAGES} PNGs of the same task)")

    held_out = make_dataset(NUM_HELD_OUT_IMAGES, HELD_OUT_SEED)
    train_dir = Path(prefix).parent
    training_accuracy = evaluate(train_dir, held_out, training_mode=True)
    inference_accuracy = evaluate(train_dir, held_out, training_mode=False)
    echo(f"2. Held-out accuracy, training mode (batch statistics):   {training_accuracy:6.1%}")
    echo(f"   Held-out accuracy, inference mode (moving statistics): {inference_accuracy:6.1%}  <- stale statistics")
    return StaleModel(prefix, data_dir, held_out, inference_accuracy, training_accuracy)


def repair(stale: StaleModel, output_dir: Path, *, progress: bool = True) -> RecalibrationReport:
    """Recalibrate the stale checkpoint into ``output_dir`` with the API call behind ``ckptfix recalibrate``."""
    from ckptfix.api import recalibrate

    return recalibrate(
        checkpoint=stale.checkpoint_prefix, data=stale.data_dir, output=output_dir, overwrite=True, progress=progress
    )


#: where the demo writes its own repair: not ``train-recalibrated``, the default output of the command it
#: suggests next, so that command works as typed
DEMO_OUTPUT = "demo-recalibrated"


def next_commands(directory: Path) -> list[str]:
    """The commands the demo suggests on its files, in the order to type them. ``recalibrate`` writes its
    default output ``train-recalibrated``; when an earlier run left one, the suggestion says ``--overwrite``."""
    directory = Path(directory)
    train, data = directory / "train", directory / "calibration-images"
    overwrite = " --overwrite" if (directory / "train-recalibrated").exists() else ""
    return [f"ckptfix inspect {train}", f"ckptfix diagnose {train} {data}",
            f"ckptfix recalibrate {train} {data}{overwrite}"]


def run_demo(directory: Path, *, progress: bool = True, echo: Callable[[str], None] = print) -> DemoResult:
    """Reproduce the stale-BatchNorm bug in ``directory``, repair it with ckptfix, and show the recovery."""
    directory = Path(directory)
    stale = build_stale_model(directory, echo=echo)

    output_dir = directory / DEMO_OUTPUT
    echo(f"3. Recalibrating the moving statistics from the calibration images into {output_dir}...")
    report = repair(stale, output_dir, progress=progress)
    for line in report.format_table().splitlines():
        echo(f"   {line}")
    echo(f"   repaired checkpoint: {report.output_checkpoint}  (the input checkpoint is unchanged)")

    accuracy_after = evaluate(output_dir, stale.held_out, training_mode=False)
    echo(
        f"4. Held-out accuracy, inference mode, repaired checkpoint: {accuracy_after:6.1%}"
        f"  (was {stale.inference_accuracy:.1%}, same eval script)"
    )
    echo("The same steps from the command line (diagnose exits 3: stale; recalibrate writes "
         f"{directory / 'train-recalibrated'}):")
    for command in next_commands(directory):
        echo(f"   {command}")
    echo("On your own checkpoint: ckptfix recalibrate TRAIN_DIR CALIBRATION_DIR")
    return DemoResult(
        checkpoint_prefix=stale.checkpoint_prefix,
        data_dir=stale.data_dir,
        output_dir=output_dir,
        inference_accuracy_before=stale.inference_accuracy,
        training_accuracy=stale.training_accuracy,
        inference_accuracy_after=accuracy_after,
        report=report,
    )
