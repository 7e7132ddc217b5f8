"""Finding, loading and calling one exported model version.

The layout is the model repository's (`kubetrain.trainer.api.layout`): integer version
directories under the model directory, each a SavedModel plus `metadata.json`. Anything else in
the directory, such as a hidden `.export-*` staging directory, is an incomplete export.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..api.layout import METADATA_FILE, SIGNATURE_NAME, missing_files, versions
from ..storage import StorageError, Store, StoreUnreachable

log = logging.getLogger(__name__)


class ModelNotFound(RuntimeError):
    """The model directory has no servable version (or not the pinned one)."""


def choose_version(model_dir: str | Path, pinned: int | None) -> int:
    """The pinned version if it exists, else the highest; raises `ModelNotFound`.

    `model_dir` is a local directory or an object-store URI. The chosen version must hold
    every file of a complete export, so one that is still being uploaded, or that someone
    removed files from, is refused here by name rather than failing deep inside TensorFlow.
    """
    models = Store.open(model_dir)
    found = versions(models)
    if pinned is not None and pinned not in found:
        raise ModelNotFound(
            f"version {pinned} not found in {model_dir} (available: {found or 'none'})"
        )
    if not found:
        raise ModelNotFound(f"no model version directory in {model_dir}")
    version = found[-1] if pinned is None else pinned
    if missing := missing_files(models, version):
        raise ModelNotFound(
            f"version {version} in {model_dir} is incomplete: no {', '.join(missing)}"
        )
    return version


def check(model_dir: str | Path, pinned: int | None) -> int:
    """`kubetrain serve --check-only`: exit 0 if the version to serve is complete, else 2
    (1 if the store did not answer: worth another try).

    It imports no TensorFlow, so it answers quickly; what it prints is the pod's last words.
    """
    try:
        version = choose_version(model_dir, pinned)
    except (ModelNotFound, StorageError, StoreUnreachable) as error:
        return _failed(error)
    print(f"version {version} in {model_dir} is complete")
    return 0


def pull_version(model_dir: str, pinned: int | None, into: Path) -> int:
    """Copy a complete version from `model_dir` (a store) to `into/<version>`; 0, or 2 with
    what is missing on stderr, which a pod shows as its termination message (1 if the store
    did not answer)."""
    try:
        version = choose_version(model_dir, pinned)
        target = into / str(version)
        if target.exists():
            shutil.rmtree(target)
        Store.open(model_dir).fetch(str(version), target)
    except (ModelNotFound, StorageError, StoreUnreachable) as error:
        return _failed(error)
    print(f"version {version} of {model_dir} copied to {target}")
    return 0


def _failed(error: Exception) -> int:
    """The exit code and last words of a check or pull that found no servable version."""
    print(f"error: {error}", file=sys.stderr)
    return 1 if isinstance(error, StoreUnreachable) else 2


@dataclass(frozen=True)
class SignatureTensor:
    name: str
    shape: tuple[int | None, ...]
    dtype: str  # TensorFlow's enum name, e.g. DT_FLOAT, as TensorFlow Serving reports it


@dataclass
class ServedModel:
    """A loaded SavedModel signature plus the export's metadata."""

    name: str
    version: int
    path: Path
    metadata: dict[str, Any]
    input: SignatureTensor
    output: SignatureTensor
    _function: Any = field(repr=False)
    _tf: Any = field(repr=False)
    # The signature holds only weak references to the variables: keep their owner alive.
    _saved_model: Any = field(repr=False)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One instance's shape, e.g. (28, 28, 1)."""
        return tuple(int(d) for d in self.input.shape[1:])  # type: ignore[arg-type]

    @property
    def instance_shapes(self) -> list[tuple[int, ...]]:
        """How one instance may be written: its shape, or without a single channel axis."""
        shape = self.input_shape
        return [shape, shape[:-1]] if shape and shape[-1] == 1 else [shape]

    @property
    def class_names(self) -> list[str]:
        names = self.metadata.get("classNames")
        num_classes = int(self.output.shape[-1] or 0)
        if isinstance(names, list) and len(names) == num_classes:
            return [str(n) for n in names]
        return [str(i) for i in range(num_classes)]

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Run the signature on a float32 batch; blocking, so callers use a worker thread."""
        result = self._function(**{self.input.name: self._tf.constant(images)})
        return result[self.output.name].numpy()

    def warm_up(self) -> None:
        """One real prediction, so the first client does not pay for tracing and allocation."""
        self.predict(np.zeros((1, *self.input_shape), dtype=np.float32))


def _tensor_info(name: str, spec: Any) -> SignatureTensor:
    from tensorflow.core.framework import types_pb2

    shape = tuple(None if d is None else int(d) for d in spec.shape.as_list())
    return SignatureTensor(
        name=name, shape=shape, dtype=types_pb2.DataType.Name(spec.dtype.as_datatype_enum)
    )


def limit_intra_op_threads(threads: int) -> None:
    """Cap the threads one TensorFlow op may use; only possible before TensorFlow's first op.

    TensorFlow sizes its pool to every core, and its idle threads spin waiting for work: on
    a small node they took the event loop's core while a batch ran, so requests were parsed
    and answered only between model calls instead of during them.
    """
    from kubetrain.trainer.tflib import tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already ran an op in this process: keep its pool
        log.warning("TensorFlow is initialised; intra-op threads stay as they are")


def load_model(name: str, model_dir: Path, version: int) -> ServedModel:
    """Load `<model_dir>/<version>` and check it has the single-input serving signature."""
    from kubetrain.trainer.tflib import tf

    path = model_dir / str(version)
    loaded = tf.saved_model.load(str(path))
    if SIGNATURE_NAME not in loaded.signatures:
        raise ModelNotFound(f"{path} has no {SIGNATURE_NAME!r} signature")
    function = loaded.signatures[SIGNATURE_NAME]
    _, input_specs = function.structured_input_signature
    if len(input_specs) != 1:
        raise ModelNotFound(f"{path}: expected one input tensor, found {sorted(input_specs)}")
    ((input_name, input_spec),) = input_specs.items()
    outputs = function.structured_outputs
    if len(outputs) != 1:
        raise ModelNotFound(f"{path}: expected one output tensor, found {sorted(outputs)}")
    ((output_name, output_spec),) = outputs.items()
    metadata_file = path / METADATA_FILE
    metadata = json.loads(metadata_file.read_text()) if metadata_file.is_file() else {}
    model = ServedModel(
        name=name,
        version=version,
        path=path,
        metadata=metadata,
        input=_tensor_info(input_name, input_spec),
        output=_tensor_info(output_name, output_spec),
        _function=function,
        _tf=tf,
        _saved_model=loaded,
    )
    log.info("loaded %s version %d from %s", name, version, path)
    return model
