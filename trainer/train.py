"""One worker of a MultiWorkerMirroredStrategy training run.

Every worker runs this same program with its own TF_CONFIG (the local runner and the operator
set it alike). Each reads only its shard of the training data, the strategy keeps weights in
sync, BackupAndRestore lets a restarted job resume at the last finished epoch, and the chief
alone publishes per-epoch checkpoints and TensorBoard curves. When training ends the chief
evaluates the best epoch on the test split and exports it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.utils.class_weight import compute_class_weight

from . import checkpoints
from .api.entrypoints import CPUS_ENV
from .api.layout import RESULT_FILE, Layout
from .api.records import Batch, Epoch, Result, Resumed, Start, emit
from .api.spec import ClassWeight, SpecError, TrainingJob
from .api.status import ModelRef
from .api.tfconfig import Cluster
from .data import Source, load_source, shard, split
from .export import export_model
from .fence import Fence, attempt_from_env
from .models import build_model, compile_model
from .steps import STEPS_PER_CALL, train_from_own_batches
from .storage import Store
from .tflib import keras, tf

# A 3x3 binomial blur: what a chip looks like imaged a little less sharply.
_BLUR = np.outer([1, 2, 1], [1, 2, 1]).astype(np.float32) / 16


def _soften(images: tf.Tensor) -> tf.Tensor:
    """Blends about half of a batch's chips, each at a random strength from 0.5 to 1, with
    a blurred copy of itself, the other half left sharp.

    Scenes are imaged at different sharpness, and the planes a network trained on sharp
    chips misses on held-out scenes are mostly faint and blurred. On PlanesNet's scene split
    the gain is small at best: 24 epochs with AdamW made 19 test errors of 2,625 with it and
    24 without for one seed, 26 and 25 for another.
    """
    channels = images.shape[-1]
    kernel = tf.constant(np.tile(_BLUR[:, :, None, None], [1, 1, channels, 1]))
    padded = tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    blurred = tf.nn.depthwise_conv2d(padded, kernel, strides=[1, 1, 1, 1], padding="VALID")
    strength = tf.random.uniform([tf.shape(images)[0], 1, 1, 1])
    strength = tf.where(strength < 0.5, 0.0, strength)
    return images * (1 - strength) + blurred * strength


def _augment(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """A batch of chips seen from above: in a random pose, some of them blurred."""
    images = tf.image.random_flip_left_right(images)
    images = tf.image.random_flip_up_down(images)
    images = tf.image.rot90(images, k=tf.random.uniform([], 0, 4, dtype=tf.int32))
    return _soften(images), labels


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Each class's weight, inversely proportional to its share of `labels`, so that every
    class present carries the same total weight; a class with no examples weighs 1.

    PlanesNet has three no-plane chips for every plane, and most of what a network trained
    on it gets wrong in held-out scenes are planes it missed (13-25 of 19-33 test errors in
    seven runs); weighing the planes more evens the two kinds of error out.
    """
    weights = np.ones(num_classes, np.float32)
    present = np.unique(labels)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return weights


def _pipeline(
    images: np.ndarray,
    labels: np.ndarray,
    batch: int,
    *,
    train: bool,
    augment: bool,
    seed: int,
    class_weights: np.ndarray | None = None,
) -> tf.data.Dataset:
    """Batches of (float32 images, labels), with each example's class weight as a third
    element when `class_weights` is given."""
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if train:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.batch(batch, drop_remainder=True)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    if augment:
        ds = ds.map(_augment, num_parallel_calls=tf.data.AUTOTUNE)
    if class_weights is not None:
        table = tf.constant(class_weights)
        ds = ds.map(lambda x, y: (x, y, tf.gather(table, tf.cast(y, tf.int32))))
    return ds.prefetch(tf.data.AUTOTUNE)


class StopOnDivergence(keras.callbacks.Callback):
    """Fail the job for good once an epoch ends with a metric that is NaN or infinite.

    Every later epoch would be as broken and a restart replays the same steps, so this is a
    permanent error (a spec to change), raised before the epoch's checkpoint is published.
    """

    def __init__(self, learning_rate: float) -> None:
        super().__init__()
        self.learning_rate = learning_rate

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        broken = sorted(k for k, v in (logs or {}).items() if not math.isfinite(float(v)))
        if broken:
            raise SpecError(
                f"training diverged in epoch {epoch + 1}: {', '.join(broken)} not finite; "
                f"lower spec.training.learningRate (now {self.learning_rate})"
            )


class Uploads:
    """Uploads to an object store on one background thread, in the order they were asked for.

    An epoch's checkpoint and backup upload while the next epoch trains, and the order keeps
    a checkpoint published before the backup that marks its epoch done. An upload that
    failed fails the next `submit` or `wait`.
    """

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kubetrain-upload")
        self.pending: list[Future[None]] = []

    def submit(self, upload: Callable[[], object], staging: Path) -> None:
        """Run `upload` in turn, then remove its local `staging` directory."""
        for done in [f for f in self.pending if f.done()]:
            self.pending.remove(done)
            done.result()

        def task() -> None:
            try:
                upload()
            finally:
                shutil.rmtree(staging, ignore_errors=True)

        self.pending.append(self.pool.submit(task))

    def wait(self) -> None:
        for future in self.pending:
            future.result()
        self.pending.clear()


class EpochCheckpoint(keras.callbacks.Callback):
    """Save every epoch with its metrics; only the chief's copy is kept.

    All workers save because saving distributed variables may run collectives; the others
    write to a throwaway directory, as TensorFlow's multi-worker guide prescribes. On a
    local store the chief publishes at once (a rename); to an object store, in the background.
    """

    def __init__(self, store: Store, cluster: Cluster, uploads: Uploads, fence: Fence) -> None:
        super().__init__()
        self.store, self.cluster, self.uploads, self.fence = store, cluster, uploads, fence

    def _publish(self, staging: Path, number: int, metrics: dict[str, Any]) -> None:
        self.fence.check()
        checkpoints.publish(self.store, staging, number, metrics)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if not self.cluster.is_chief:
            scratch = Path(tempfile.mkdtemp(prefix="kubetrain-ckpt-"))
            try:
                self.model.save_weights(str(scratch / checkpoints.WEIGHTS_PREFIX))
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            return
        number, metrics = epoch + 1, dict(logs or {})
        if self.store.local:
            with self.store.scratch(checkpoints.checkpoint_name(number)) as staging:
                self.model.save_weights(str(staging / checkpoints.WEIGHTS_PREFIX))
                self._publish(staging, number, metrics)
            return
        # The previous epoch's checkpoint and backup are in the store before this epoch is
        # reported done: a crash loses at most the epoch that was still uploading.
        self.uploads.wait()
        staging = Path(tempfile.mkdtemp(prefix="kubetrain-ckpt-"))
        self.model.save_weights(str(staging / checkpoints.WEIGHTS_PREFIX))
        self.uploads.submit(lambda: self._publish(staging, number, metrics), staging)


BACKUP_STATE = "chief"
"""The directory BackupAndRestore keeps the chief's training state in, which every worker
restores from; the other workers write throwaway copies beside it."""
BACKUP_MARKER = f"{BACKUP_STATE}/checkpoint"
"""The state's TensorFlow checkpoint index: it names the files to restore, so it is
published last and its presence means there is a backup to resume from."""


class PublishBackup(keras.callbacks.Callback):
    """After BackupAndRestore saved an epoch locally, publish it to an object store (chief).

    Every worker restores from the same backup, and a restarted worker may run on another
    node: with an object store that backup must live there, not on one node's disk. The
    files are copied at once (the next epoch overwrites them) and uploaded in the background.
    """

    def __init__(
        self, store: Store, local: Path, cluster: Cluster, uploads: Uploads, fence: Fence
    ) -> None:
        super().__init__()
        self.store, self.local, self.cluster = store, local / BACKUP_STATE, cluster
        self.uploads, self.fence = uploads, fence

    def _publish(self, staging: Path) -> None:
        self.fence.check()
        marker = Path(BACKUP_MARKER).name
        self.store.publish(staging, BACKUP_STATE, marker=marker, replace=True)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if not self.cluster.is_chief:
            return
        staging = Path(tempfile.mkdtemp(prefix="kubetrain-backup-"))
        for path in self.local.iterdir():
            if path.is_file():
                shutil.copy2(path, staging / path.name)
        self.uploads.submit(lambda: self._publish(staging), staging)


class Curves(keras.callbacks.Callback):
    """Write each epoch's loss, metrics and learning rate as TensorBoard scalars (chief).

    The runs and tags are the ones Keras' TensorBoard callback writes (`train/` and
    `validation/`, `epoch_loss`, `epoch_learning_rate`, ...), so the charts pair training
    with validation as TensorFlow users know them; the step is the epoch's number, as in the
    checkpoints' names. Unlike that callback, this one flushes every epoch (an epoch's curves
    are readable as soon as it ends), and the other workers write nothing (that callback gives
    each a directory of its own inside the log directory). TensorFlow writes to local disk
    only: for an object store the files are written in `local` and uploaded after every
    epoch, in the background with the checkpoints.
    """

    RUNS = ("train", "validation")

    def __init__(self, store: Store, local: Path, uploads: Uploads) -> None:
        super().__init__()
        self.store, self.local, self.uploads = store, local, uploads
        self.writers = {run: tf.summary.create_file_writer(str(local / run)) for run in self.RUNS}

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        scalars: dict[str, dict[str, float]] = {run: {} for run in self.RUNS}
        for name, value in (logs or {}).items():
            run, tag = ("validation", name[4:]) if name.startswith("val_") else ("train", name)
            scalars[run][tag] = float(value)
        rate = keras.backend.get_value(self.model.optimizer.learning_rate)  # a MirroredVariable
        scalars["train"]["learning_rate"] = float(rate)
        for run, writer in self.writers.items():
            with writer.as_default():
                for tag, value in scalars[run].items():
                    tf.summary.scalar(f"epoch_{tag}", value, step=epoch + 1)
            writer.flush()
        if not self.store.local:
            staging = Path(tempfile.mkdtemp(prefix="kubetrain-curves-"))
            shutil.copytree(self.local, staging, dirs_exist_ok=True)
            self.uploads.submit(lambda: self.store.upload(staging, ""), staging)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        for writer in self.writers.values():
            writer.close()


def weights_digest(model: keras.Model) -> str:
    """A fingerprint of the weights; equal on all workers when they are in sync."""
    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()[:16]


class ProgressReporter(keras.callbacks.Callback):
    """Emit progress records: every epoch, and a few times a second from the chief."""

    def __init__(self, cluster: Cluster, total_epochs: int, steps: int, global_batch: int):
        super().__init__()
        # Take the batch's metrics as tensors, read only when reported: Keras would otherwise
        # copy them out of the graph after every step for this callback, waiting for the step.
        self._supports_tf_logs = True
        self.cluster, self.total_epochs = cluster, total_epochs
        self.steps, self.global_batch = steps, global_batch
        self.first_epoch: int | None = None
        self.last_batch_report = 0.0
        self.epoch_start = 0.0
        self.examples = 0
        self.train_seconds = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.first_epoch is None:
            self.first_epoch = epoch
            if epoch > 0:
                emit(Resumed(worker=self.cluster.index, from_epoch=epoch + 1))
        self.epoch_start = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        now = time.perf_counter()
        if self.cluster.is_chief and now - self.last_batch_report >= 0.5:
            self.last_batch_report = now
            metrics = {k: float(v) for k, v in (logs or {}).items()}
            emit(Batch(step=batch + 1, steps_per_epoch=self.steps, metrics=metrics))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        seconds = time.perf_counter() - self.epoch_start
        examples = self.steps * self.global_batch
        self.examples += examples
        self.train_seconds += seconds
        emit(
            Epoch(
                worker=self.cluster.index,
                epoch=epoch + 1,
                total_epochs=self.total_epochs,
                metrics={k: float(v) for k, v in (logs or {}).items()},
                seconds=round(seconds, 3),
                examples_per_second=round(examples / seconds, 1),
                weights_digest=weights_digest(self.model),
            )
        )


def _validation_batches(count: int, global_batch: int, workers: int) -> tuple[int, int]:
    """(global batch, steps) that cover as much of the validation set as divides evenly.

    Every worker must run the same number of equal batches, so the last partial batch is
    left out rather than padded or repeated (which would bias the metric).
    """
    batch = global_batch if count >= global_batch else (count // workers) * workers
    if batch == 0:
        raise ValueError(f"validation set of {count} examples is too small for {workers} workers")
    return batch, count // batch


def size_threads(cores: str | None) -> int | None:
    """Size TensorFlow's thread pools to the cores this worker has (CPUS_ENV); None leaves
    them at every core of the machine. Must run before TensorFlow starts its runtime."""
    if not cores or not cores.isdigit() or int(cores) < 1:
        return None
    threads = int(cores)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    return threads


def _strategy(cluster: Cluster) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy across workers. A lone worker trains under the default
    strategy: MultiWorkerMirroredStrategy with a group of one still runs every step through
    its collective all-reduce and distributed iterator, which halved one worker's
    examples/second against plain Keras (`bench/keras_overhead.py`)."""
    if cluster.count == 1:
        return tf.distribute.get_strategy()
    return tf.distribute.MultiWorkerMirroredStrategy()


def train(job: TrainingJob, layout: Layout) -> Result | None:
    """Train as this worker; the chief returns the run's result, the others None."""
    cluster = Cluster.from_env()
    threads = size_threads(os.environ.get(CPUS_ENV))
    strategy = _strategy(cluster)
    spec = job.spec
    keras.utils.set_random_seed(spec.training.seed)
    started = time.time()

    source = load_source(spec.dataset)
    parts = split(source, spec.dataset, spec.training.seed)
    workers = strategy.num_replicas_in_sync
    global_batch = max(spec.training.batch_size // workers, 1) * workers
    per_worker = global_batch // workers
    steps = max(len(parts.train) // global_batch, 1)
    val_batch, val_steps = _validation_batches(len(parts.validation), global_batch, workers)

    own_train = shard(parts.train, cluster.index, cluster.count, spec.training.seed)
    used_val = parts.validation[: val_batch * val_steps]
    own_val = shard(used_val, cluster.index, cluster.count, spec.training.seed)
    class_weights = None
    if spec.training.class_weight == ClassWeight.BALANCED:
        # From the whole training split, so every worker weighs a class the same.
        class_weights = balanced_class_weights(
            source.train.labels[parts.train], len(source.class_names)
        )
    train_ds = _pipeline(
        source.train.read(own_train),
        source.train.labels[own_train],
        per_worker,
        train=True,
        augment=spec.dataset.augment,
        seed=spec.training.seed,
        class_weights=class_weights,
    )
    val_ds = _pipeline(
        source.train.read(own_val),
        source.train.labels[own_val],
        val_batch // workers,
        train=False,
        augment=False,
        seed=spec.training.seed,
    )
    emit(
        Start(
            worker=cluster.index,
            pid=os.getpid(),
            workers=cluster.count,
            total_epochs=spec.training.epochs,
            steps_per_epoch=steps,
            global_batch=global_batch,
            train_examples=len(parts.train),
            shard_examples=len(own_train),
            validation_examples=len(used_val),
            threads=threads,
        )
    )

    stored = Store.open(layout.checkpoints)
    backup = Store.open(layout.backup)
    has_backup = backup.exists(BACKUP_MARKER)
    fence = Fence(Store.open(layout.workdir), attempt_from_env())
    if cluster.is_chief:
        fence.claim(resuming=has_backup)
    curves = Store.open(layout.tensorboard)
    if cluster.is_chief and not has_backup:
        # A fresh start: epochs left by an earlier, finished run must not compete for "best",
        # nor draw their curves over this run's.
        stored.remove("")
        curves.remove("")
    with strategy.scope():
        model = build_model(spec.model.architecture, source.input_shape, len(source.class_names))
        decay_steps = steps * spec.training.epochs
        cosine = spec.training.learning_rate_schedule == "cosine"
        compile_model(
            model,
            spec.training.learning_rate,
            decay_steps if cosine else None,
            steps_per_execution=STEPS_PER_CALL,
            weight_decay=spec.training.weight_decay,
        )
    stand_in = train_from_own_batches(model, train_ds)
    reporter = ProgressReporter(cluster, spec.training.epochs, steps, global_batch)
    with tempfile.TemporaryDirectory(prefix="kubetrain-") as scratch:
        # BackupAndRestore works in a local directory: the store itself on a local disk; on
        # an object store, a copy restored from it and published back after every epoch.
        local_backup = Path(backup.uri) if backup.local else Path(scratch) / "backup"
        if has_backup and not backup.local:
            backup.fetch("", local_backup)
        uploads = Uploads()
        published = (
            [] if backup.local else [PublishBackup(backup, local_backup, cluster, uploads, fence)]
        )
        local_curves = Path(curves.uri) if curves.local else Path(scratch) / "tensorboard"
        drawn = [Curves(curves, local_curves, uploads)] if cluster.is_chief else []
        model.fit(
            stand_in,
            epochs=spec.training.epochs,
            steps_per_epoch=steps,
            validation_data=strategy.distribute_datasets_from_function(lambda _: val_ds),
            validation_steps=val_steps,
            callbacks=[
                StopOnDivergence(spec.training.learning_rate),
                # Publish the checkpoint before the backup marks the epoch done, so a crash
                # between the two retrains the epoch instead of losing its checkpoint.
                EpochCheckpoint(stored, cluster, uploads, fence),
                keras.callbacks.BackupAndRestore(str(local_backup)),
                # Uploads run in turn: the epoch's curves go up before the backup that marks
                # it done, so a job resumed from that backup has every earlier epoch drawn.
                *drawn,
                *published,
                reporter,
            ],
            verbose=0,
        )
        uploads.wait()  # every epoch's checkpoint is in the store before "best" is chosen
        if not cluster.is_chief:
            return None
        if not backup.local:
            # BackupAndRestore removed its local copy, and a later job of this name must
            # start afresh. (A local store is that copy: the other workers may still be
            # writing their throwaway files in it, so it is left to BackupAndRestore.)
            backup.remove("")
        return finish(job, layout, source, parts.test, started, reporter, Path(scratch), fence)


def finish(
    job: TrainingJob,
    layout: Layout,
    source: Source,
    test_indices: np.ndarray,
    started: float,
    reporter: ProgressReporter,
    scratch: Path,
    fence: Fence,
) -> Result:
    """Evaluate the best epoch (the last, for a job trained on its validation split) on the
    test split, export it and write result.json (unless a later attempt has started
    meanwhile: `fence`)."""
    spec = job.spec
    metric = spec.training.metric
    stored = Store.open(layout.checkpoints)
    kept = checkpoints.list_checkpoints(stored)
    # Trained on the validation split, the metric would choose what memorised it best.
    last_only = spec.dataset.train_on_validation
    best = kept[-1] if last_only else checkpoints.best_checkpoint(kept, metric)
    model = build_model(spec.model.architecture, source.input_shape, len(source.class_names))
    compile_model(model, spec.training.learning_rate)
    model.load_weights(str(checkpoints.weights(stored, best, scratch / "best"))).expect_partial()
    test_catalog = source.test or source.train
    test_loss, test_accuracy = model.evaluate(
        test_catalog.read(test_indices).astype(np.float32),
        test_catalog.labels[test_indices],
        batch_size=512,
        verbose=0,
    )
    test = {"test_loss": float(test_loss), "test_accuracy": float(test_accuracy)}
    validation = {k: v for k, v in best.metrics.items() if k.startswith("val_")}
    exported = export_model(
        model,
        layout.model_root,
        spec.model_name,
        {
            "jobName": job.metadata.name,
            "dataset": spec.dataset.name,
            "architecture": spec.model.architecture,
            "epoch": best.epoch,
            "metric": metric,
            "metrics": {**best.metrics, **test},
            "classNames": source.class_names,
            "attempt": fence.attempt,
        },
        before_publish=fence.check,
    )
    examples_per_second = (
        reporter.examples / reporter.train_seconds if reporter.train_seconds else 0
    )
    result = Result(
        job_name=job.metadata.name,
        best_epoch=best.epoch,
        metric=metric,
        validation=validation,
        test=test,
        test_accuracy=test["test_accuracy"],
        checkpoint=best.uri,
        model=ModelRef(name=exported.name, version=exported.version, path=exported.path),
        wall_time_seconds=round(time.time() - started, 1),
        examples_per_second=round(examples_per_second, 1),
        test_examples=len(test_indices),
    )
    fence.check()
    Store.open(layout.workdir).write_text(RESULT_FILE, json.dumps(result.document(), indent=2))
    return result
