"""The CNNs, written against Keras 3 alone so that any backend (TensorFlow, JAX, torch) runs them."""
from __future__ import annotations

import keras
from keras import layers

from ferpipe import CLASS_NAMES, CROP_MARGIN, IMAGE_SIZE, MODELS


def augmentation(augment: dict) -> list[layers.Layer]:
    """Random layers that act on training batches only (Keras skips them at inference)."""
    # float32 even under a bfloat16 policy: interpolating 0-255 pixels in bfloat16 loses detail
    f32 = {"dtype": "float32"}
    steps = []
    if augment["flip"]:
        steps.append(layers.RandomFlip("horizontal", **f32))
    if augment["rotation"]:
        steps.append(layers.RandomRotation(augment["rotation"] / 360.0, fill_mode="nearest", **f32))
    if augment["zoom"]:
        steps.append(layers.RandomZoom(augment["zoom"], fill_mode="nearest", **f32))
    if augment["translate"]:
        t = augment["translate"]
        steps.append(layers.RandomTranslation(t, t, fill_mode="nearest", **f32))
    if augment["erasing"]:
        steps.append(layers.RandomErasing(factor=augment["erasing"], value_range=(0, 1), **f32))
    if augment["crop"]:
        # A random CROP_SIZE crop = a whole-pixel shift of up to the margin, then the centre crop
        # (build_model's Cropping2D, which acts at inference too; Keras' RandomCrop skips inference).
        # The shift is drawn uniformly from +-factor*48 px and rounded (nearest): a factor of
        # (margin + 0.5)/48, less a hair, gives each whole shift -margin..margin the same chance;
        # margin/48 would draw the two extreme shifts half as often as the others.
        factor = (CROP_MARGIN + 0.5 - 1e-3) / IMAGE_SIZE
        steps.append(layers.RandomTranslation(factor, factor, fill_mode="nearest", interpolation="nearest", **f32))
    return steps


def _conv_bn_relu(x, filters, kernel=3):
    x = layers.Conv2D(filters, kernel, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.Activation("relu")(x)


def _dense_bn_relu(x, units):
    x = layers.Dense(units, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.Activation("relu")(x)


def _seed_body(x, width, dropout):
    """The seed notebook's network: 4 conv blocks 64-128-512-512, dense 256-512 (~4.5M params at width 64)."""
    for filters, kernel in ((width, 3), (2 * width, 5), (8 * width, 3), (8 * width, 3)):
        x = _conv_bn_relu(x, filters, kernel)
        x = layers.MaxPooling2D()(x)
        x = layers.Dropout(0.25)(x)
    x = layers.Flatten()(x)
    for units in (256, 512):
        x = _dense_bn_relu(x, units)
        x = layers.Dropout(dropout)(x)
    return x


def _vgg_body(x, width, dropout, convs_per_block, head_units):
    """VGG-style: blocks of 3x3 convs at widths w, 2w, 4w, 8w, each halving the resolution."""
    for block, convs in enumerate(convs_per_block):
        for _ in range(convs):
            x = _conv_bn_relu(x, width * 2**block)
        x = layers.MaxPooling2D()(x)
        x = layers.Dropout(dropout / 2)(x)
    x = layers.Flatten()(x)
    x = _dense_bn_relu(x, head_units)
    return layers.Dropout(dropout)(x)


def build_model(train: dict, name: str | None = None) -> keras.Model:
    """The network named by train.model, with rescaling to [0,1] and augmentation in front."""
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1), name="pixels")  # grayscale 0-255
    x = layers.Rescaling(1 / 255.0, dtype="float32")(inputs)
    for layer in augmentation(train["augment"]):
        x = layer(x)
    if train["augment"]["crop"]:
        # Cropping2D, not CenterCrop: after Keras 3.15's CenterCrop, BatchNormalization exported to
        # ONNX normalises with batch statistics (measured: probabilities off by 0.02).
        x = layers.Cropping2D(CROP_MARGIN, dtype="float32")(x)
    network, width, dropout = train["model"], train["width"], train["dropout"]
    if network == "seed":
        x = _seed_body(x, width, dropout)
    elif network == "compact":
        x = _vgg_body(x, width, dropout, (2, 2, 2, 2), head_units=256)
    elif network == "small":
        # compact without the second full-resolution conv, the costliest per multiply-add on a CPU
        x = _vgg_body(x, width, dropout, (1, 2, 2, 2), head_units=256)
    elif network == "lean":
        # one conv at 44 and 22 px, three at 11 and 5 px: compact's depth at small's cost (at width 16)
        x = _vgg_body(x, width, dropout, (1, 1, 3, 3), head_units=256)
    elif network == "vgg":
        x = _vgg_body(x, width, dropout, (2, 2, 3, 3), head_units=512)
    else:
        raise ValueError(f"unknown model {network!r}; choose one of {MODELS}")
    x = layers.Dense(len(CLASS_NAMES))(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name or f"fer_{train['model']}")


def ensemble(members: list[keras.Model]) -> keras.Model:
    """One model whose output is the mean of the members' class probabilities (a lone member is returned
    as it is). Members need distinct names (build_model's `name`)."""
    if len(members) == 1:
        return members[0]
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1), name="pixels")
    outputs = layers.Average(dtype="float32", name="probabilities")([member(inputs) for member in members])
    return keras.Model(inputs, outputs, name="fer_ensemble")


def members_of(model: keras.Model) -> list[keras.Model]:
    """The networks inside an ensemble() model, or [model] for a single network."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return nested or [model]
