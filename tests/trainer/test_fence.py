"""Fencing: a chief whose attempt was replaced (its node cut off, say) publishes nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from kubetrain.trainer import checkpoints
from kubetrain.trainer.api.layout import FENCE_FILE, versions
from kubetrain.trainer.api.tfconfig import Cluster
from kubetrain.trainer.export import export_model
from kubetrain.trainer.fence import Fence, Superseded
from kubetrain.trainer.models import build_model, compile_model
from kubetrain.trainer.storage import Store
from kubetrain.trainer.tflib import keras
from kubetrain.trainer.train import EpochCheckpoint, Uploads


def fence(tmp_path: Path, attempt: int) -> Fence:
    return Fence(Store.open(tmp_path / "job"), attempt)


def test_a_chief_records_its_attempt_when_it_starts(tmp_path: Path) -> None:
    fence(tmp_path, 2).claim(resuming=True)
    assert (tmp_path / "job" / FENCE_FILE).read_text().strip() == "2"
    fence(tmp_path, 3).claim(resuming=True)
    assert fence(tmp_path, 3).recorded() == 3


def test_a_replaced_chief_may_not_go_on(tmp_path: Path) -> None:
    old, new = fence(tmp_path, 0), fence(tmp_path, 1)
    old.claim(resuming=False)
    old.check()  # nothing newer yet
    new.claim(resuming=True)
    with pytest.raises(Superseded, match="attempt 1 of this job has started since attempt 0"):
        old.check()
    with pytest.raises(Superseded):
        old.claim(resuming=True)  # nor resume later
    new.check()


def test_a_fresh_run_of_the_same_job_name_takes_the_record_over(tmp_path: Path) -> None:
    fence(tmp_path, 4).claim(resuming=False)  # an earlier job of this name ended at attempt 4
    fence(tmp_path, 0).claim(resuming=False)  # a new job: no backup to resume from
    fence(tmp_path, 0).check()


def tiny_model() -> keras.Model:
    model = build_model("mnist-dense", (28, 28, 1), 10)
    compile_model(model, 0.001)
    return model


class ReplacedAfter(keras.callbacks.Callback):
    """Attempt 1 starts (elsewhere) once `epochs` epochs of this attempt are done."""

    def __init__(self, replacement: Fence, epochs: int) -> None:
        super().__init__()
        self.replacement, self.epochs = replacement, epochs

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch + 1 == self.epochs:
            self.replacement.claim(resuming=True)


def test_a_replaced_chief_publishes_no_further_checkpoint(tmp_path: Path) -> None:
    old, new = fence(tmp_path, 0), fence(tmp_path, 1)
    old.claim(resuming=False)
    store = Store.open(tmp_path / "job" / "checkpoints")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(64, 28, 28, 1)).astype("float32")
    labels = rng.integers(0, 10, size=64)
    callbacks = [EpochCheckpoint(store, Cluster(0, 1), Uploads(), old), ReplacedAfter(new, 1)]
    with pytest.raises(Superseded):
        tiny_model().fit(images, labels, epochs=3, callbacks=callbacks, verbose=0)
    # Epoch 1 was published before attempt 1 started; nothing after it.
    assert [c.epoch for c in checkpoints.list_checkpoints(store)] == [1]


def test_a_replaced_chief_exports_no_model_version(tmp_path: Path) -> None:
    old, new = fence(tmp_path, 0), fence(tmp_path, 1)
    old.claim(resuming=False)
    new.claim(resuming=True)
    with pytest.raises(Superseded):
        export_model(tiny_model(), tmp_path / "models", "digits", {}, before_publish=old.check)
    assert versions(Store.open(tmp_path / "models" / "digits")) == []
    exported = export_model(
        tiny_model(), tmp_path / "models", "digits", {}, before_publish=new.check
    )
    assert exported.version == 1
