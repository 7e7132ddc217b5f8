"""Run several training steps per call into the graph, each worker fed from its own input.

Keras' `fit` calls its train function once a step, and under MultiWorkerMirroredStrategy a
step pays three times over for being distributed: the call itself has a fixed cost that a
small model's short step cannot hide; the strategy's distributed iterator hands a worker its
batch more slowly than the worker's own `tf.data` iterator; and the metrics Keras reads after
every step are all-reduced across the workers, one more collective per step. Two workers of
`mnist-dense` on one 2-core machine ran at a quarter of one worker's examples/second that way
(`bench/trainer_accuracy.py --only throughput`).

The train function here loops over `STEPS_PER_CALL` steps inside one `tf.function`, takes
each worker's batches from its own iterator (every worker already reads only its own shard)
and reads the metrics once, after the last step. Keras still drives the epochs and callbacks:
it calls the function once every `STEPS_PER_CALL` steps (fewer at an epoch's end).
"""

from __future__ import annotations

from typing import Any

from .tflib import keras, tf

# Enough steps per call that its fixed cost is spread thin, few enough that progress is
# reported a few times a second and callbacks still see every fraction of an epoch.
STEPS_PER_CALL = 25


def train_from_own_batches(
    model: keras.Model, dataset: tf.data.Dataset
) -> tf.distribute.DistributedDataset:
    """Make `model.fit` train from `dataset`, this worker's own batches, `steps_per_execution`
    steps a call (the model must be compiled with it; Keras shortens an epoch's last call).

    Returns what to hand `fit` as its input: an endless stand-in that Keras counts steps
    against but that is never read.
    """
    strategy = model.distribute_strategy
    batches = iter(dataset)

    def first(value: Any) -> tf.Tensor:
        return strategy.experimental_local_results(value)[0]

    def step(data: Any) -> None:
        # Keras' train_step, except that it does not read the metrics: under a multi-worker
        # strategy reading one all-reduces it, and a step would pay for that every time.
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x, y, y_pred, sample_weight)
        variables = model.trainable_variables
        if strategy.num_replicas_in_sync == 1:
            model.optimizer.minimize(loss, variables, tape=tape)
        else:
            summed = sum_in_half_precision(tape.gradient(loss, variables), variables)
            model.optimizer.apply_gradients(
                zip(summed, variables, strict=True), skip_gradients_aggregation=True
            )
        model.compiled_metrics.update_state(y, y_pred, sample_weight)

    @tf.function(reduce_retracing=True)
    def train(_unused_iterator: Any) -> dict[str, tf.Tensor]:
        steps = model._steps_per_execution  # Keras shortens it for an epoch's last call
        for _ in tf.range(steps):
            strategy.run(step, args=(next(batches),))
        model._train_counter.assign_add(tf.cast(steps, model._train_counter.dtype))
        return tf.nest.map_structure(first, strategy.run(model.get_metrics_result))

    def make_train_function(force: bool = False) -> Any:
        model.train_function = train
        return train

    model.make_train_function = make_train_function
    return strategy.distribute_datasets_from_function(
        lambda _: tf.data.Dataset.from_tensors(0).repeat(),
        options=tf.distribute.InputOptions(experimental_fetch_to_device=False),
    )


def sum_in_half_precision(
    gradients: list[tf.Tensor], variables: list[tf.Variable]
) -> list[tf.Tensor]:
    """The workers' gradients summed in one all-reduce of float16 values, half the bytes of
    the float32 sum the optimizer would otherwise make.

    The all-reduce travels over gRPC between the workers' processes and costs about its size,
    so two workers of `mnist-dense` on one 2-core machine train measurably faster this way (the
    README's throughput table). A float16 sum keeps about three significant digits of each
    worker's gradient, which Adam's per-weight scaling tolerates, for magnitudes between about
    6e-5 and 65,504 (float16's normal range): smaller ones keep fewer digits and those under
    3e-8 count as zero; larger ones overflow, as only a diverging run's gradients would.
    """
    context = tf.distribute.get_replica_context()
    halves = context.all_reduce(
        tf.distribute.ReduceOp.SUM, [tf.cast(g, tf.float16) for g in gradients]
    )
    return [tf.cast(h, v.dtype) for h, v in zip(halves, variables, strict=True)]
