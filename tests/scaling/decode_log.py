"""``--preprocess scaling.decode_log:preprocess`` for the worker tests: pixels scaled to [-1, 1] as slim's Inception
preprocessing does, and, when ``CKPTFIX_DECODE_LOG`` is set, one line per decoded image (a digest of its pixels)
appended to ``$CKPTFIX_DECODE_LOG.<TF_CONFIG task index>``: what each worker really decoded."""

import hashlib
import json
import os


def preprocess(image):
    import tensorflow as tf

    log = os.environ.get("CKPTFIX_DECODE_LOG")
    if log:
        path = f"{log}.{json.loads(os.environ.get('TF_CONFIG', '{}')).get('task', {}).get('index', 'none')}"

        def record(pixels):
            with open(path, "a") as handle:
                handle.write(hashlib.sha1(pixels.numpy().tobytes()).hexdigest() + "\n")
            return pixels

        image = tf.reshape(tf.py_function(record, [image], tf.uint8), tf.shape(image))
    return tf.cast(image, tf.float32) / 127.5 - 1.0
