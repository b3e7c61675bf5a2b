"""The Keras guards (Keras 3 and tf_keras): :class:`BatchNormGuard` for custom training loops, and the ``fit``
callbacks built on it.

The BN layers watched are the model's BatchNormalization layers that run in training mode in a training step,
less ``exclude``: not a frozen one (``layer.trainable`` False: inference mode in both Keras 3 and tf_keras), nor, in
tf_keras, one inside a layer every call site of which passes ``training=False`` (the transfer-learning idiom
``base(x, training=False)``; Keras 3's ``fit`` calls nested models with ``training=True`` whatever the call site
said); the weights watched are the smallest few of ``model.trainable_variables``. The rule is
:mod:`ckptfix.guard.core`'s.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

from ckptfix import compat
from ckptfix.guard.core import (DEFAULT_EVERY_N_STEPS, Guard, Guarded, Reading, Verdict, excluded, failure_message,
                                smallest)
from ckptfix.keras.batchnorm import find_batchnorm_layers, walk_layers

_STATELESS_FIX = ("`model.fit` keeps them; a custom loop must keep the state updates of a training-mode call: "
                  "call the model with `training=True` inside `tf.GradientTape`, or assign the non-trainable "
                  "variables `model.stateless_call(..., training=True)` returns back "
                  "(`for v, value in zip(model.non_trainable_variables, values): v.assign(value)`) or carry them "
                  "into the next step")


def _index_of(variables, wanted) -> int | None:
    return next((i for i, v in enumerate(variables) if v is wanted), None)


def _called_in_inference(layer) -> bool:
    """tf_keras: every call site of ``layer`` in a functional model passes ``training=False``."""
    nodes = getattr(layer, "_inbound_nodes", None) or []
    return compat.is_keras2_object(layer) and bool(nodes) and all(
        (getattr(node, "call_kwargs", None) or {}).get("training") is False for node in nodes)


def _training_layers(model) -> list:
    """The BN layers of ``model`` (:class:`~ckptfix.keras.batchnorm.KerasBatchNorm`) in training mode in a training
    step (see the module docstring)."""
    paths = dict(walk_layers(model))
    frozen = {path for path, layer in paths.items() if _called_in_inference(layer)}
    return [
        bn for bn in find_batchnorm_layers(model) if bn.layer.trainable
        and not any(bn.name == path or bn.name.startswith(path + "/") for path in frozen)
    ]


def _to_numpy(value) -> np.ndarray:
    """A variable's or an eager tensor's value (or an array) as numpy."""
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


class BatchNormGuard(Guarded):
    """For a custom training loop: call :meth:`step` after every training step; it reads every
    ``every_n_steps`` steps and raises :class:`~ckptfix.errors.StatisticsNotUpdated` (``warn_only``: warns) once
    the weights moved while a training BN layer's moving statistics did not.

    Stateless loops that keep the variables' values outside the model (Keras 3 ``stateless_call``) pass them:
    ``guard.step(trainable_variables=values, non_trainable_variables=values)``, lists in the order of
    ``model.trainable_variables`` / ``model.non_trainable_variables``. Create the guard once the model is built
    (else its first read follows the first :meth:`step`, and the bound is one step later).
    """

    def __init__(self, model, every_n_steps: int = DEFAULT_EVERY_N_STEPS, warn_only: bool = False,
                 exclude: str | None = None) -> None:
        self.model, self.exclude = model, exclude
        self._guard = Guard(every_n_steps, warn_only)
        self._layers: dict[str, object] | None = None
        if getattr(model, "built", False) and model.trainable_variables:
            self._start(None, None)

    @property
    def watched_layers(self) -> list[str]:
        """The BN layers watched (paths in the model, ``backbone/bn1``)."""
        return list(self._layers or {})

    def _start(self, trainable, non_trainable) -> None:
        found = _training_layers(self.model)
        kept = set(excluded([bn.name for bn in found], self.exclude))
        self._layers = {bn.name: bn.layer for bn in found if bn.name in kept}
        if not self._layers:
            warnings.warn("ckptfix guard: no BN layer to watch (none in training mode, or all excluded)", stacklevel=4)
        weights = list(self.model.trainable_variables)
        self._weights = smallest([int(np.prod(v.shape)) for v in weights])
        self._weight_variables = [weights[i] for i in self._weights]
        states = list(self.model.non_trainable_variables)
        self._statistics = {
            name: [_index_of(states, layer.moving_mean), _index_of(states, layer.moving_variance)]
            for name, layer in self._layers.items()
        }
        self._guard.start(lambda step: self._read(step, trainable, non_trainable))

    def _read(self, step: int, trainable, non_trainable) -> Reading:
        if trainable is None:
            weights = [_to_numpy(v) for v in self._weight_variables]
        else:
            weights = [_to_numpy(trainable[i]) for i in self._weights]
        statistics = {}
        for name, layer in self._layers.items():
            variables = (layer.moving_mean, layer.moving_variance)
            statistics[name] = [
                _to_numpy(variable if non_trainable is None or i is None else non_trainable[i])
                for variable, i in zip(variables, self._statistics[name])
            ]
        return Reading(step, statistics, weights)

    def step(self, trainable_variables=None, non_trainable_variables=None) -> Verdict | None:
        """One training step ran; returns the verdict of the window it closed, if any (see the class docstring)."""
        if self._layers is None:  # built by its first step: the first read is after it
            self._guard.step += 1
            self._start(trainable_variables, non_trainable_variables)
            return None
        return self._guard.after_step(lambda step: self._read(step, trainable_variables, non_trainable_variables),
                                      self._explain)

    def _explain(self, verdict: Verdict) -> str:
        fixed = [name for name in verdict.not_updated if float(getattr(self._layers[name], "momentum", 0.0)) >= 1.0]
        if fixed:
            verb = "has" if len(fixed) == 1 else "have"
            return failure_message(verdict, len(self._layers), f"{', '.join(fixed)} {verb} momentum=1.0, which keeps "
                                   "the moving statistics where they are (moving * 1 + batch * 0)",
                                   "give every BatchNormalization layer a momentum below 1 (Keras' default: 0.99).")
        return failure_message(verdict, len(self._layers), "the training step drops the BN layers' state updates",
                               _STATELESS_FIX + ".")


@functools.cache
def callback_class(flavour: str):
    """The ``fit`` callback class for ``flavour`` (``keras``: Keras 3; ``tf_keras``), built on that flavour's
    ``Callback`` (tf_keras' callback list calls private methods of its own base class)."""
    if flavour == "keras":
        from keras.callbacks import Callback
    else:
        from tf_keras.callbacks import Callback
    if flavour == "keras":
        other, named = "TfKerasBatchNormGuardCallback", "tf_keras"
    else:
        other, named = "BatchNormGuardCallback", "Keras 3"

    class GuardCallback(Callback):
        """Stops ``model.fit`` whose BN moving statistics are not updated (a custom ``train_step`` that drops
        them, ``momentum=1.0``): :class:`~ckptfix.guard.keras_callback.BatchNormGuard` at every batch's end.
        Same arguments; the bound is ``every_n_steps`` batches."""

        def __init__(self, every_n_steps: int = DEFAULT_EVERY_N_STEPS, warn_only: bool = False,
                     exclude: str | None = None) -> None:
            super().__init__()
            Guard(every_n_steps)  # the argument checked now, not at the first batch
            self.every_n_steps, self.warn_only, self.exclude = every_n_steps, warn_only, exclude
            self.guard: BatchNormGuard | None = None

        def set_model(self, model) -> None:
            if compat.is_keras2_object(model) != (flavour == "tf_keras"):
                from ckptfix.errors import CkptfixError

                raise CkptfixError(f"this model is a {named} model: use ckptfix.guard.{other} with it.")
            super().set_model(model)

        def on_train_begin(self, logs=None) -> None:
            self.guard = BatchNormGuard(self.model, self.every_n_steps, self.warn_only, self.exclude)

        def on_train_batch_end(self, batch, logs=None) -> None:
            self.guard.step()

    GuardCallback.__name__ = GuardCallback.__qualname__ = (
        "BatchNormGuardCallback" if flavour == "keras" else "TfKerasBatchNormGuardCallback")
    return GuardCallback
