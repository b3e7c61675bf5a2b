"""Keras 3 / tf_keras models and TF2 files, for the Keras model source (:mod:`ckptfix.sources.keras`).

* :mod:`~ckptfix.keras.formats` -- which file format CKPT is, and how its model is loaded
* :mod:`~ckptfix.keras.batchnorm` -- the BN layers of a model (nested models included), their variables
  and variance convention
* :mod:`~ckptfix.keras.measure` -- the forward pass with BN on batch statistics, moments pooled per layer
* :mod:`~ckptfix.keras.storage` -- where each BN variable lives in the file, and the atomic write-back
"""
