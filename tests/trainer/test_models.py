"""The networks: raw pixels in, class probabilities out, and PlanesNet blind to a scene's light."""

from __future__ import annotations

import numpy as np
import pytest
from kubetrain.trainer.api.layout import SIGNATURE_NAME
from kubetrain.trainer.api.spec import Architecture
from kubetrain.trainer.export import export_model
from kubetrain.trainer.models import BUILDERS, build_model
from kubetrain.trainer.tflib import tf

SHAPES = {"mnist": ((28, 28, 1), 10), "planesnet": ((20, 20, 3), 2)}


def shape_of(architecture: str) -> tuple[tuple[int, ...], int]:
    return SHAPES[architecture.split("-")[0]]


@pytest.mark.parametrize("architecture", [a.value for a in Architecture])
def test_every_architecture_maps_raw_pixels_to_probabilities(architecture: str) -> None:
    assert architecture in BUILDERS
    shape, classes = shape_of(architecture)
    model = build_model(architecture, shape, classes)
    pixels = np.random.default_rng(0).integers(0, 256, size=(4, *shape)).astype("float32")
    probabilities = model(pixels, training=False).numpy()
    assert probabilities.shape == (4, classes)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("architecture", ["planesnet-seed", "planesnet-cnn"])
def test_a_planesnet_model_judges_a_chip_the_same_in_any_light(architecture: str) -> None:
    """A darker, hazier copy of a chip (as another scene would show it) scores the same."""
    shape, classes = shape_of(architecture)
    model = build_model(architecture, shape, classes)
    chip = np.random.default_rng(1).integers(40, 200, size=(1, *shape)).astype("float32")
    hazy = chip * 0.6 + 50
    np.testing.assert_allclose(
        model(chip, training=False).numpy(), model(hazy, training=False).numpy(), atol=1e-5
    )


def test_planesnet_cnn_judges_a_chip_the_same_in_all_eight_poses() -> None:
    """Turned by 90 degrees or mirrored, a chip seen from above is the same chip: outside
    training the model averages over its poses, so every pose scores alike; in training it
    answers for the pose it is shown (the augmentation picks one)."""
    shape, classes = SHAPES["planesnet"]
    model = build_model("planesnet-cnn", shape, classes)
    chip = np.random.default_rng(2).integers(0, 256, size=(1, *shape)).astype("float32")
    turned = [np.rot90(chip, k, axes=(1, 2)) for k in range(4)]
    poses = np.concatenate([*turned, *(t[:, :, ::-1] for t in turned)])
    scores = model(poses, training=False).numpy()
    np.testing.assert_allclose(scores, np.repeat(scores[:1], 8, axis=0), atol=1e-5)
    assert model(poses, training=True).shape == (8, classes)


@pytest.mark.parametrize("architecture", ["planesnet-seed", "planesnet-cnn"])
def test_an_exported_planesnet_model_answers_as_the_trained_one(
    architecture: str, tmp_path
) -> None:
    """The export's serving signature, with the per-image standardisation (and the pose
    average) inside it, gives the same probabilities as the Keras model. (This process has
    imported the layer classes, so it does not show that loading works without the project's
    code.)"""
    shape, classes = SHAPES["planesnet"]
    model = build_model(architecture, shape, classes)
    exported = export_model(model, tmp_path, "planesnet", {"classNames": ["no-plane", "plane"]})
    served = tf.saved_model.load(str(exported.path)).signatures[SIGNATURE_NAME]
    chips = np.random.default_rng(3).integers(0, 256, size=(2, *shape)).astype("float32")
    (answer,) = served(tf.constant(chips)).values()
    np.testing.assert_allclose(answer.numpy(), model(chips, training=False).numpy(), atol=1e-5)


def test_an_epoch_that_ends_in_nan_fails_the_job_for_good_naming_the_learning_rate() -> None:
    from kubetrain.trainer.api.spec import SpecError
    from kubetrain.trainer.train import StopOnDivergence

    stop = StopOnDivergence(learning_rate=10.0)
    stop.on_epoch_end(0, {"loss": 0.3, "val_accuracy": 0.9})  # finite: goes on
    with pytest.raises(SpecError, match=r"epoch 2: loss, val_loss not finite.*learningRate"):
        stop.on_epoch_end(1, {"loss": float("nan"), "val_loss": float("inf"), "accuracy": 0.1})


def variation(chips: np.ndarray) -> np.ndarray:
    """Each chip's mean step between neighbouring pixels, the same in every pose."""
    across, down = (np.abs(np.diff(chips, axis=axis)).sum(axis=(1, 2, 3)) for axis in (1, 2))
    return across + down


def test_augmentation_blurs_about_half_the_chips_and_leaves_the_rest_sharp() -> None:
    """Blurring averages neighbours, so a blurred chip's pixels vary less from one to the
    next; the chips left sharp are their own pixels in another pose."""
    from kubetrain.trainer.train import _augment

    tf.random.set_seed(4)
    chips = np.random.default_rng(4).integers(0, 256, size=(400, 20, 20, 3)).astype("float32")
    labels = np.arange(400)
    augmented, kept = _augment(tf.constant(chips), tf.constant(labels))
    np.testing.assert_array_equal(kept.numpy(), labels)
    steps, sharp = variation(augmented.numpy()), variation(chips)
    blurred = steps < 0.9 * sharp
    assert 0.4 < blurred.mean() < 0.6
    np.testing.assert_allclose(steps[~blurred], sharp[~blurred], rtol=1e-5)
    assert augmented.numpy().min() >= 0 and augmented.numpy().max() <= 255


def test_weight_decay_trains_with_adamw_and_none_with_adam() -> None:
    from kubetrain.trainer.models import compile_model

    shape, classes = SHAPES["mnist"]
    plain, decayed = (build_model("mnist-dense", shape, classes) for _ in range(2))
    compile_model(plain, 0.001)
    compile_model(decayed, 0.001, weight_decay=5e-4)
    assert type(plain.optimizer).__name__ == "Adam"
    assert type(decayed.optimizer).__name__ == "AdamW"
    assert decayed.optimizer.weight_decay == pytest.approx(5e-4)
