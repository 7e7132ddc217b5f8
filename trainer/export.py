"""Export a trained model in TensorFlow Serving's layout: `<model_root>/<name>/<version>/`.

A version directory appears only once complete: the SavedModel and its `metadata.json` are
written to a hidden temporary directory beside it and renamed into place, so a server that
scans for the highest version never loads a half-written export, and an existing version is
never overwritten (a concurrent exporter simply takes the next number).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .api.layout import INPUT_NAME, METADATA_FILE, OUTPUT_NAME, SIGNATURE_NAME, versions
from .tflib import keras, tf


@dataclass(frozen=True)
class ExportedModel:
    name: str
    version: int
    path: Path


def serving_function(model: keras.Model) -> tf.types.experimental.ConcreteFunction:
    """The serving signature: raw pixels in, class probabilities out."""
    spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name=INPUT_NAME)

    @tf.function(input_signature=[spec])
    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUT_NAME: model(images, training=False)}

    return serve.get_concrete_function()


def export_model(
    model: keras.Model, model_root: Path, name: str, metadata: dict[str, Any]
) -> ExportedModel:
    """Write `model` as the next version of `name` under `model_root` and return where."""
    model_dir = Path(model_root) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f".export-{uuid.uuid4().hex}"
    try:
        tf.saved_model.save(
            model, str(staging), signatures={SIGNATURE_NAME: serving_function(model)}
        )
        while True:
            version = max(versions(model_dir), default=0) + 1
            record = {
                **metadata,
                "modelName": name,
                "version": version,
                "inputShape": list(model.input_shape[1:]),
                "signatureName": SIGNATURE_NAME,
                "inputName": INPUT_NAME,
                "outputName": OUTPUT_NAME,
                "createdAt": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            (staging / METADATA_FILE).write_text(json.dumps(record, indent=2) + "\n")
            target = model_dir / str(version)
            try:
                # Atomic, and refused if another exporter took this number meanwhile.
                os.rename(staging, target)
            except OSError:
                if target.exists():
                    continue
                raise
            return ExportedModel(name=name, version=version, path=target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
