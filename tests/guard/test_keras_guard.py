"""The Keras guards train real Keras 3 and tf_keras models a few steps (8x8 images, one conv + BN, batches of 8):
the loops that drop the BN updates -- momentum=1.0 in fit, a custom loop that discards what ``stateless_call``
returns (state kept in the model, or carried outside it), a tf_keras loop that calls the model without
``training=True`` -- are stopped at the end of step 10 (``every_n_steps``) with the message; the correct loops,
momentum 0.9997 included, never are. The truth is read from the layers' variables, outside the guard."""

import warnings

import numpy as np
import pytest
import tensorflow as tf

from ckptfix.errors import CkptfixError, StatisticsNotUpdated, StatisticsNotUpdatedWarning
from ckptfix.guard import BatchNormGuard, BatchNormGuardCallback, TfKerasBatchNormGuardCallback

STEPS, BATCH = 30, 8
X = np.random.default_rng(0).normal(1.0, 2.0, size=(STEPS * BATCH, 8, 8, 3)).astype("float32")
Y = np.random.default_rng(1).integers(0, 3, STEPS * BATCH)


def build(keras, momentum=0.99, frozen=False, nested_inference=False):
    keras.utils.set_random_seed(0)
    base = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
                             keras.layers.BatchNormalization(momentum=momentum, name="bn"), keras.layers.ReLU(),
                             keras.layers.GlobalAveragePooling2D()], name="base")
    if frozen:
        base.layers[1].trainable = False
    inputs = keras.Input((8, 8, 3))
    features = base(inputs, training=False) if nested_inference else base(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(features))
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def statistics(model):
    bn = model.get_layer("base").get_layer("bn")
    return np.concatenate([np.asarray(bn.moving_mean.numpy()), np.asarray(bn.moving_variance.numpy())])


@pytest.fixture(params=["keras", "tf_keras"])
def flavour(request):
    if request.param == "keras":
        import keras

        return keras, BatchNormGuardCallback
    import tf_keras

    return tf_keras, TfKerasBatchNormGuardCallback


def fit(model, callback):
    model.fit(X, Y, batch_size=BATCH, epochs=1, shuffle=False, callbacks=[callback], verbose=0)


@pytest.mark.parametrize("momentum", [0.99, 0.9997])
def test_fit_that_updates_the_statistics_is_never_stopped(flavour, momentum):
    keras, Callback = flavour
    model = build(keras, momentum)
    before = statistics(model)
    guard = Callback()
    fit(model, guard)
    assert not np.array_equal(before, statistics(model))  # the truth: they moved
    assert guard.guard.steps == STEPS and len(guard.guard.verdicts) == STEPS // 10
    assert all(v.weights_moved and v.updated == ["base/bn"] for v in guard.guard.verdicts)


def test_fit_with_momentum_1_is_stopped_at_step_10(flavour):
    keras, Callback = flavour
    model = build(keras, momentum=1.0)
    before = statistics(model)
    guard = Callback()
    with pytest.raises(StatisticsNotUpdated) as raised:
        fit(model, guard)
    assert guard.guard.steps == 10 and np.array_equal(before, statistics(model))
    message = str(raised.value)
    assert message.startswith("ckptfix guard: the moving statistics of 1 of 1 BN layers (base/bn) did not change "
                              "over training steps 0-10 while the weights did")
    assert "base/bn has momentum=1.0" in message and "momentum below 1" in message.splitlines()[1]


def test_frozen_and_inference_called_layers_are_not_watched(flavour):
    keras, Callback = flavour
    frozen = Callback()
    with pytest.warns(UserWarning, match=r"ckptfix guard: no BN layer to watch \(none in training mode"):
        fit(build(keras, frozen=True), frozen)
    assert frozen.guard.watched_layers == [] and frozen.guard.steps == STEPS
    # tf_keras keeps a call site's training=False in fit (the transfer-learning idiom); Keras 3's fit overrides it
    model = build(keras, nested_inference=True)
    before = statistics(model)
    nested = Callback()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tf_keras: nothing to watch
        fit(model, nested)
    moved = not np.array_equal(before, statistics(model))
    assert moved == (keras.__name__ == "keras")
    assert nested.guard.watched_layers == (["base/bn"] if moved else [])


def test_warn_only_warns_once_and_fit_completes(flavour):
    keras, Callback = flavour
    guard = Callback(warn_only=True)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fit(build(keras, momentum=1.0), guard)
    found = [w for w in seen if w.category is StatisticsNotUpdatedWarning]
    assert guard.guard.steps == STEPS and len(found) == 1 and "base/bn" in str(found[0].message)


def test_a_callback_of_the_other_flavour_is_refused_in_one_line(flavour):
    keras, Callback = flavour
    other = TfKerasBatchNormGuardCallback if Callback is BatchNormGuardCallback else BatchNormGuardCallback
    with pytest.raises(CkptfixError, match=f"use ckptfix.guard.{Callback.__name__} with it"):
        fit(build(keras), other())


def keras3_stateless_loop(keep: str, steps: int = STEPS):
    """A Keras 3 custom loop on ``stateless_call``: ``keep`` = ``assign`` (state written back to the model),
    ``carry`` (state carried outside the model, JAX-style), or ``drop`` (the seed bug's TF2 form)."""
    import keras

    model = build(keras)
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    guard = BatchNormGuard(model)
    trainable = [tf.convert_to_tensor(v.value) for v in model.trainable_variables]
    non_trainable = [tf.convert_to_tensor(v.value) for v in model.non_trainable_variables]
    for k in range(steps):
        x, y = X[k * BATCH:(k + 1) * BATCH], Y[k * BATCH:(k + 1) * BATCH]
        if keep != "carry":
            trainable = [tf.convert_to_tensor(v.value) for v in model.trainable_variables]
            non_trainable = [tf.convert_to_tensor(v.value) for v in model.non_trainable_variables]
        with tf.GradientTape() as tape:
            tape.watch(trainable)
            logits, updated = model.stateless_call(trainable, non_trainable, x, training=True)
            loss = loss_fn(y, logits)
        grads = tape.gradient(loss, trainable)
        if keep == "carry":
            trainable = [w - 0.1 * g for w, g in zip(trainable, grads)]  # SGD (TF's stateless_apply is refused)
            non_trainable = updated
            guard.step(trainable_variables=trainable, non_trainable_variables=non_trainable)
            continue
        optimizer.apply(grads, model.trainable_variables)
        if keep == "assign":
            for variable, value in zip(model.non_trainable_variables, updated):
                variable.assign(value)
        guard.step()
    return guard


@pytest.mark.parametrize("keep", ["assign", "carry"])
def test_a_keras3_stateless_loop_that_keeps_the_state_is_never_stopped(keep):
    guard = keras3_stateless_loop(keep)
    assert guard.steps == STEPS
    assert [v.updated for v in guard.verdicts] == [["base/bn"]] * (STEPS // 10)


def test_a_keras3_stateless_loop_that_drops_the_state_is_stopped_at_step_10():
    with pytest.raises(StatisticsNotUpdated, match=r"\(base/bn\) did not change over training steps 0-10.*drops "
                                                   r"the BN layers' state updates") as raised:
        keras3_stateless_loop("drop")
    assert "stateless_call" in str(raised.value).splitlines()[1]


def test_a_keras3_stateless_loop_that_drops_carried_state_is_stopped():
    import keras

    model = build(keras)
    guard = BatchNormGuard(model)
    trainable = [np.asarray(v.numpy()) for v in model.trainable_variables]
    frozen_state = [np.asarray(v.numpy()) for v in model.non_trainable_variables]
    with pytest.raises(StatisticsNotUpdated):
        for step in range(STEPS):
            trainable = [w - 0.01 for w in trainable]  # the optimizer moved the weights; the state is never carried
            guard.step(trainable_variables=trainable, non_trainable_variables=frozen_state)
    assert guard.steps == 10


@pytest.mark.parametrize("training", [True, None])
def test_a_tf_keras_gradient_tape_loop(training):
    """``model(x, training=True)`` updates the statistics; ``model(x)`` outside fit runs BN in inference mode."""
    import tf_keras

    model = build(tf_keras)
    loss_fn = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    guard = BatchNormGuard(model)
    stopped_at = None
    try:
        for k in range(STEPS):
            with tf.GradientTape() as tape:
                loss = loss_fn(Y[k * BATCH:(k + 1) * BATCH], model(X[k * BATCH:(k + 1) * BATCH], training=training))
            grads = tape.gradient(loss, model.trainable_variables)
            model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
            guard.step()
    except StatisticsNotUpdated:
        stopped_at = guard.steps
    assert stopped_at == (None if training else 10)


def test_exclude_leaves_a_layer_out(flavour):
    keras, Callback = flavour
    guard = Callback(exclude="/bn$")
    with pytest.warns(UserWarning, match="no BN layer to watch"):
        fit(build(keras, momentum=1.0), guard)
    assert guard.guard.steps == STEPS and guard.guard.watched_layers == []


def test_a_model_built_by_its_first_step_is_guarded_from_there():
    """A Sequential without an Input is built by its first call: the guard starts after step 1."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(momentum=1.0, name="bn"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    guard = BatchNormGuard(model)
    assert not model.built
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(StatisticsNotUpdated, match=r"\(bn\) did not change over training steps 1-11"):
        for k in range(STEPS):
            model.train_on_batch(X[k * BATCH:(k + 1) * BATCH], Y[k * BATCH:(k + 1) * BATCH])
            guard.step()
    assert guard.steps == 11
