"""Import TensorFlow with the legacy Keras (tf-keras) that MultiWorkerMirroredStrategy needs.

Keras 3 fails under MultiWorkerMirroredStrategy (keras-team/keras#20585) and its
BackupAndRestore is not multi-worker aware, so `TF_USE_LEGACY_KERAS=1` must be set before
TensorFlow is first imported. Every module that needs TensorFlow imports it from here.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf
import tf_keras as keras

__all__ = ["keras", "tf"]
