"""tf-slim's own resnet_v1 (scope ``resnet_v1_50``, the root block and one small bottleneck block), trained with
BN in training mode by a train op that never runs the update ops: moving statistics still 0 / 1.

Its images are preprocessed as tf-slim's preprocessing_factory does for resnet_v1 networks (VGG eval): the
shorter side resized to ``round(16 * 256 / 224) = 18`` pixels (the images are 18x18: no resize), the central
16x16 crop, and the RGB means ``(123.68, 116.78, 103.94)`` subtracted -- written here in numpy, not taken from
ckptfix.

Run as a script in a fresh process (TF1 behaviour is a process-wide switch)::

    slim_resnet_tool.py build OUT          OUT/train/model.ckpt (+ .meta), OUT/pngs (128), OUT/held_{x,y}.npy
    slim_resnet_tool.py evaluate PREFIX OUT   {"accuracy": ...} of PREFIX in inference mode on the held-out set
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import convention_models as cm  # noqa: E402

SIZE, IMAGE = 16, 18
VGG_MEANS = np.array([123.68, 116.78, 103.94], np.float32)


def vgg(pixels: np.ndarray) -> np.ndarray:
    offset = (IMAGE - SIZE) // 2
    return pixels[:, offset:offset + SIZE, offset:offset + SIZE, :].astype(np.float32) - VGG_MEANS


def _graph(is_training: bool):
    import slim_compat  # noqa: F401
    import tensorflow as tf
    import tf_slim as slim
    from tf_slim.nets import resnet_v1

    tf.compat.v1.disable_v2_behavior()
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(0)
        images = tf.compat.v1.placeholder(tf.float32, (None, SIZE, SIZE, 3), name="input")
        blocks = [resnet_v1.resnet_v1_block("block1", base_depth=4, num_units=1, stride=1)]
        with slim.arg_scope(resnet_v1.resnet_arg_scope()):
            logits, _ = resnet_v1.resnet_v1(images, blocks, num_classes=cm.CLASSES, is_training=is_training,
                                            global_pool=True, scope="resnet_v1_50")
        logits = tf.squeeze(logits, [1, 2]) if logits.shape.rank == 4 else logits
    return tf, graph, images, logits


def build(out: Path) -> dict:
    tf, graph, images, logits = _graph(is_training=True)
    x, y = cm.pixels(512, IMAGE, 1)
    with graph.as_default():
        labels = tf.compat.v1.placeholder(tf.int64, (None,))
        loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits)
        train = tf.compat.v1.train.AdamOptimizer(0.01).minimize(loss)  # no UPDATE_OPS dependency: the bug
        saver = tf.compat.v1.train.Saver()
    rng = np.random.default_rng(0)
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        for _ in range(300):
            index = rng.choice(len(x), 32, replace=False)
            sess.run(train, {images: vgg(x[index]), labels: y[index]})
        held_x, held_y = cm.pixels(256, IMAGE, 2)
        training_accuracy = cm.accuracy(sess.run(logits, {images: vgg(held_x)}), held_y)
        (out / "train").mkdir(parents=True, exist_ok=True)
        saver.save(sess, str(out / "train" / "model.ckpt"))
    np.save(out / "held_x.npy", held_x)
    np.save(out / "held_y.npy", held_y)
    cm.write_pngs(out / "pngs", cm.pixels(128, IMAGE, 3)[0])
    return {"training_accuracy": training_accuracy}


def evaluate(prefix: str, out: Path) -> dict:
    tf, graph, images, logits = _graph(is_training=False)
    with graph.as_default():
        saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session(graph=graph) as sess:
        saver.restore(sess, prefix)
        return {"accuracy": cm.accuracy(sess.run(logits, {images: vgg(np.load(out / "held_x.npy"))}),
                                        np.load(out / "held_y.npy"))}


def main(argv) -> int:
    result = build(Path(argv[1])) if argv[0] == "build" else evaluate(argv[1], Path(argv[2]))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    os._exit(code)
