"""Several steps per call, from the worker's own batches: the same training as Keras' `fit`,
class weights included."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from kubetrain.trainer.models import compile_model
from kubetrain.trainer.steps import train_from_own_batches
from kubetrain.trainer.tflib import keras, tf
from kubetrain.trainer.train import _pipeline, balanced_class_weights

STEPS = 7  # not a multiple of the steps per call: an epoch ends on a shorter call


def _examples() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    images = rng.normal(size=(STEPS * 16, 6)).astype(np.float32)
    labels = rng.choice(3, STEPS * 16, p=[0.6, 0.3, 0.1])
    return images, labels


def _batches() -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(_examples()).batch(16).repeat()


def _model(weights: list[np.ndarray] | None = None) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, activation="softmax")])
    if weights is not None:
        model.set_weights(weights)
    return model


class BatchesSeen(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, dict[str, float]]] = []

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.seen.append((batch, {k: float(v) for k, v in (logs or {}).items()}))


def test_several_steps_a_call_train_exactly_as_keras_fit_does() -> None:
    plain = _model()
    compile_model(plain, 0.05)
    start = plain.get_weights()
    expected = plain.fit(_batches(), epochs=2, steps_per_epoch=STEPS, verbose=0).history

    looped = _model(start)
    compile_model(looped, 0.05, steps_per_execution=3)
    stand_in = train_from_own_batches(looped, _batches())
    history = looped.fit(stand_in, epochs=2, steps_per_epoch=STEPS, verbose=0).history

    for name in ("loss", "accuracy"):
        assert history[name] == pytest.approx(expected[name], rel=1e-5)
    for got, want in zip(looped.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert int(looped.optimizer.iterations) == 2 * STEPS


def test_callbacks_see_the_last_step_of_every_call_with_the_running_metrics() -> None:
    model = _model()
    compile_model(model, 0.05, steps_per_execution=3)
    seen = BatchesSeen()
    model.fit(
        train_from_own_batches(model, _batches()),
        epochs=1,
        steps_per_epoch=STEPS,
        callbacks=[seen],
        verbose=0,
    )
    assert [batch for batch, _ in seen.seen] == [2, 5, 6]
    for _, logs in seen.seen:
        assert set(logs) == {"loss", "accuracy"}
        assert 0 <= logs["accuracy"] <= 1


def test_balanced_class_weights_give_every_class_the_same_total_weight() -> None:
    labels = np.array([0] * 6 + [1] * 2)
    weights = balanced_class_weights(labels, 3)
    assert weights[0] * 6 == pytest.approx(weights[1] * 2)
    assert weights[0] * 6 + weights[1] * 2 == pytest.approx(len(labels))
    assert weights[2] == 1  # no examples: nothing to weigh


def test_class_weighted_batches_train_as_keras_fit_with_class_weight() -> None:
    images, labels = _examples()
    weights = balanced_class_weights(labels, 3)
    plain = _model()
    compile_model(plain, 0.05)
    start = plain.get_weights()
    expected = plain.fit(
        _batches(),
        epochs=2,
        steps_per_epoch=STEPS,
        class_weight=dict(enumerate(weights)),
        verbose=0,
    ).history

    weighted = _pipeline(
        images, labels, 16, train=False, augment=False, seed=0, class_weights=weights
    )
    looped = _model(start)
    compile_model(looped, 0.05, steps_per_execution=3)
    stand_in = train_from_own_batches(looped, weighted.repeat())
    history = looped.fit(stand_in, epochs=2, steps_per_epoch=STEPS, verbose=0).history

    assert history["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    for got, want in zip(looped.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    unweighted = _model(start)
    compile_model(unweighted, 0.05)
    unweighted.fit(_batches(), epochs=2, steps_per_epoch=STEPS, verbose=0)
    assert not np.allclose(unweighted.get_weights()[0], plain.get_weights()[0])


# Two replicas on two logical CPUs need a fresh TensorFlow: the devices are fixed at its start.
_TWO_REPLICAS = """
import json, sys
import numpy as np
from kubetrain.trainer.tflib import tf
from kubetrain.trainer.steps import sum_in_half_precision

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
gradients = tf.constant(json.loads(sys.argv[1]), tf.float32)
with strategy.scope():
    variable = tf.Variable(tf.zeros(gradients.shape[1]))

def replica():
    own = gradients[tf.distribute.get_replica_context().replica_id_in_sync_group]
    return sum_in_half_precision([own], [variable])[0]

summed = strategy.experimental_local_results(strategy.run(replica))
print(json.dumps([[s.dtype.name, s.numpy().tolist()] for s in summed]))
"""


def test_replicas_sum_their_gradients_in_half_precision_to_three_significant_digits() -> None:
    gradients = np.random.default_rng(5).normal(scale=1e-3, size=(2, 200)).astype(np.float32)
    done = subprocess.run(
        [sys.executable, "-P", "-c", _TWO_REPLICAS, json.dumps(gradients.tolist())],
        capture_output=True,
        text=True,
        check=True,
    )
    summed = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(summed) == 2  # every replica gets the sum, not only one of them
    for dtype, values in summed:
        assert dtype == "float32"  # the optimizer sees the variables' dtype again
        # Each worker's gradient keeps about three significant digits on the way.
        error = np.abs(np.asarray(values) - gradients.sum(axis=0))
        assert (error <= 2e-3 * np.abs(gradients).max(axis=0)).all(), error.max()
