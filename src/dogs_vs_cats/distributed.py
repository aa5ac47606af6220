"""Training on several devices: the strategy `train.strategy` names, and the loop multi-worker runs need.

Keras 3's fit() fails under MultiWorkerMirroredStrategy (keras-team/keras#20585), so
`fit_replicated` is a training loop of our own, used only there.
"""

from __future__ import annotations

import os
import time

import keras
import tensorflow as tf

from .common import UserError, log
from .inputs import train_dataset
from .params import Params

# How long a silent worker may go before the cluster gives up on it. TensorFlow's own default is
# 10 s, so a worker paused by a busy or swapping machine for a few seconds more aborted every
# worker's collectives mid-epoch; a worker that really died is still noticed within this.
HEARTBEAT_TIMEOUT_S = 120


def _coordinate_patiently() -> None:
    """Configure the cluster's coordination service as MultiWorkerMirroredStrategy would, with a
    longer heartbeat timeout; the strategy keeps a service configured before it is created."""
    from tensorflow.python.distribute import collective_all_reduce_strategy, multi_worker_util
    from tensorflow.python.eager import context

    # The protobuf module the strategy itself uses: its import path moves between TF releases.
    coordination_config_pb2 = collective_all_reduce_strategy.coordination_config_pb2

    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    spec = resolver.cluster_spec()
    coordinated = [job for job in ("chief", "worker") if job in spec.jobs]
    if resolver.task_type not in coordinated or context.context().coordination_service is not None:
        return
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(spec),
        coordinated_jobs=[
            coordination_config_pb2.CoordinatedJob(name=job, num_tasks=spec.num_tasks(job)) for job in coordinated
        ],
        heartbeat_timeout_in_ms=HEARTBEAT_TIMEOUT_S * 1000,
    )


def choose_strategy(name: str):
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise UserError(
                "params.yaml: train.strategy = multi_worker needs the TF_CONFIG environment variable "
                "describing the cluster; set it on every worker, or use train.strategy: mirrored"
            )
        _coordinate_patiently()
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def fit_replicated(
    net, strategy, params: Params, size: int, steps: int, epochs: int, initial_epoch: int, callbacks, source=None
):
    """fit() for MultiWorkerMirroredStrategy, under which Keras 3's own fails (keras-team/keras#20585).

    The same compiled optimizer (so the same learning-rate schedule and weight decay), loss, metrics
    and callbacks. Each worker streams its own shard of the records; `train.batch_size` stays the
    global batch, split evenly over the replicas, so the recipe means the same on any cluster.
    """
    t = params.train
    replicas = strategy.num_replicas_in_sync
    if t.batch_size % replicas:
        raise UserError(
            f"params.yaml: train.batch_size = {t.batch_size} is invalid for {replicas} replicas: "
            "expected a multiple of the replica count (TF_CONFIG's workers times each one's devices)"
        )
    data = strategy.distribute_datasets_from_function(
        lambda ctx: train_dataset(
            params,
            size,
            (ctx.input_pipeline_id, ctx.num_input_pipelines),
            ctx.get_per_replica_batch_size(t.batch_size),
            source,
        )
    )

    statistics = [
        v for v in net.non_trainable_variables if keras.backend.is_float_dtype(v.dtype)
    ]  # not the dropout seed

    def step(x, y):
        with tf.GradientTape() as tape:
            p = tf.cast(net(x, training=True), tf.float32)
            per_image = net.loss.call(y, p)  # the compiled loss (label smoothing and all), per image
            loss = tf.nn.compute_average_loss(per_image)  # over the global batch, as fit() averages over the batch
            if net.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(net.losses))
        net.optimizer.apply_gradients(zip(tape.gradient(loss, net.trainable_variables), net.trainable_variables))
        # Batch norm's moving statistics: each worker's follow its own images. Averaged every step
        # (a few thousand numbers beside the gradients' 700k), they follow the global batch and are
        # the same on every worker, so every worker's checkpoint and model are the same.
        ctx = tf.distribute.get_replica_context()
        for v, mean in zip(
            statistics, ctx.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v) for v in statistics])
        ):
            v.assign(mean)
        return tf.stack(
            [
                tf.reduce_sum(per_image),
                tf.reduce_sum(keras.metrics.categorical_accuracy(y, p)),
                tf.reduce_sum(keras.losses.categorical_crossentropy(y, p)),
                tf.cast(tf.shape(y)[0], tf.float32),
            ]
        )

    @tf.function
    def train_step(iterator):
        # Sums over the global batch: loss, correct answers, log loss, images.
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(step, args=next(iterator)), axis=None)

    hooks = keras.callbacks.CallbackList(callbacks, model=net)
    iterator = iter(data)
    for epoch in range(initial_epoch, epochs):
        start = time.monotonic()
        hooks.on_epoch_begin(epoch)
        total = tf.zeros(4)
        for batch in range(steps):
            total += train_step(iterator)  # no .numpy() per step: the steps queue up asynchronously
            hooks.on_train_batch_end(batch)
        loss, correct, log_loss, n = total.numpy()
        logs = {"accuracy": correct / n, "log_loss": log_loss / n, "loss": loss / n}
        hooks.on_epoch_end(epoch, logs)
        log(
            f"Epoch {epoch + 1}/{epochs} - {time.monotonic() - start:.0f}s - "
            + " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
        )
