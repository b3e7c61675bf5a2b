"""Make tf-slim 1.1.0 runnable under TensorFlow 2.21: import this module before building slim networks.

The aliases live in the package (:func:`ckptfix.compat.enable_tf_slim`), which applies them for ``--model``
functions too; this module only applies them on import, for the fixture scripts and tests.
"""

from ckptfix.compat import enable_tf_slim

enable_tf_slim()
