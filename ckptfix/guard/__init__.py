"""Guards that stop training whose BatchNorm moving statistics are not updated, within the first steps.

    from ckptfix.guard import BatchNormGuardHook             # TF1: MonitoredTrainingSession, tf_slim.training.train,
                                                             # tf.estimator; slim.learning.train(train_step_fn=...)
    from ckptfix.guard import BatchNormGuardCallback         # Keras 3 model.fit
    from ckptfix.guard import TfKerasBatchNormGuardCallback  # tf_keras (tf.keras with TF_USE_LEGACY_KERAS=1) fit
    from ckptfix.guard import BatchNormGuard                 # custom training loops: guard.step() after each step

The rule they share ("moved", the window, the bound on steps) is :mod:`ckptfix.guard.core`'s; the static check of a
TF1 graph (``ckptfix check``, the hook's ``begin()``) is :mod:`ckptfix.diagnostics.cause`'s. TensorFlow and Keras
are imported only when a guard is first named, so ``import ckptfix`` stays light.
"""

__all__ = ["BatchNormGuard", "BatchNormGuardCallback", "BatchNormGuardHook", "TfKerasBatchNormGuardCallback"]


def __getattr__(name: str):
    if name == "BatchNormGuardHook":
        from ckptfix.guard.session_hook import BatchNormGuardHook

        return BatchNormGuardHook
    if name == "BatchNormGuard":
        from ckptfix.guard.keras_callback import BatchNormGuard

        return BatchNormGuard
    if name in {"BatchNormGuardCallback", "TfKerasBatchNormGuardCallback"}:
        from ckptfix.guard.keras_callback import callback_class

        return callback_class("keras" if name == "BatchNormGuardCallback" else "tf_keras")
    raise AttributeError(f"module 'ckptfix.guard' has no attribute {name!r}")
