"""The CNNs, written against Keras 3 alone so that any backend (TensorFlow, JAX, torch) runs them."""
from __future__ import annotations

import math

import keras
from keras import layers, ops

from ferpipe import CLASS_NAMES, CROP_MARGIN, IMAGE_SIZE, MODELS


@keras.saving.register_keras_serializable(package="ferpipe")
class RandomAffine(layers.Layer):
    """Flip, rotation, zoom, shift and crop offset drawn per image and applied as ONE resampling
    (train.augment.fused): a third of the separate layers' time, and one interpolation instead of
    three. Distributions as the separate layers': flip with probability 1/2, angle uniform in
    +-rotation degrees, scale uniform in 1 +- zoom (above 1 zooms out), shift uniform in +-translate
    of the image size per axis, crop offset a whole pixel in -crop_margin..crop_margin per axis,
    edges replicated. Acts on training batches only; sized for the pipeline's 48x48 faces (IMAGE_SIZE).
    Random erasing, when on, follows it (the separate layers erase before the crop offset)."""

    def __init__(self, flip=False, rotation=0.0, zoom=0.0, translate=0.0, crop_margin=0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.flip, self.rotation, self.zoom = flip, rotation, zoom
        self.translate, self.crop_margin, self.seed = translate, crop_margin, seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        # TensorFlow's XLA has no kernel for the transform op (ImageProjectiveTransformV3; Keras' own
        # RandomRotation opts out the same way). TensorFlow on a CPU never compiles with XLA anyway;
        # JAX compiles it, so a fused model is one that JAX can jit-compile whole.
        self.supports_jit = keras.backend.backend() != "tensorflow"

    def _uniform(self, n, half_range):
        return keras.random.uniform((n,), -half_range, half_range, seed=self.seed_generator)

    def transforms(self, n):
        """(n, 8) projective transforms mapping output pixel (x, y) to the input point it samples."""
        angle = self._uniform(n, self.rotation * math.pi / 180.0)
        scale = 1.0 + self._uniform(n, self.zoom)
        mirror = ops.ones((n,))
        if self.flip:
            mirror = ops.where(keras.random.uniform((n,), seed=self.seed_generator) < 0.5, -1.0, 1.0)
        shift = [self._uniform(n, self.translate * IMAGE_SIZE) for _ in "xy"]
        if self.crop_margin:
            offsets = [keras.random.randint((n,), -self.crop_margin, self.crop_margin + 1,
                                            seed=self.seed_generator) for _ in "xy"]
            shift = [s + ops.cast(o, "float32") for s, o in zip(shift, offsets)]
        # input = centre + scale * rotate(angle) * mirror_x * (output - centre + shift)
        cos, sin, centre = scale * ops.cos(angle), scale * ops.sin(angle), (IMAGE_SIZE - 1) / 2.0
        a0, a1, b0, b1 = cos * mirror, -sin, sin * mirror, cos
        dx, dy = shift[0] - centre, shift[1] - centre
        a2 = centre + a0 * dx + a1 * dy
        b2 = centre + b0 * dx + b1 * dy
        zeros = ops.zeros((n,))
        return ops.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)

    def call(self, images, training=None):
        if not training:
            return images
        transforms = self.transforms(ops.shape(images)[0])
        return ops.image.affine_transform(images, transforms, interpolation="bilinear", fill_mode="nearest",
                                          data_format="channels_last")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "flip": self.flip, "rotation": self.rotation, "zoom": self.zoom,
                "translate": self.translate, "crop_margin": self.crop_margin, "seed": self.seed}


def augmentation(augment: dict) -> list[layers.Layer]:
    """Random layers that act on training batches only (Keras skips them at inference)."""
    # float32 even under a bfloat16 policy: interpolating 0-255 pixels in bfloat16 loses detail
    f32 = {"dtype": "float32"}
    if augment["fused"]:
        geometry = (augment["flip"], augment["rotation"], augment["zoom"], augment["translate"],
                    CROP_MARGIN if augment["crop"] else 0)
        steps = [RandomAffine(*geometry, **f32)] if any(geometry) else []
        if augment["erasing"]:
            steps.append(layers.RandomErasing(factor=augment["erasing"], value_range=(0, 1), **f32))
        return steps
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


def _conv_bn_relu(x, filters, kernel=3, strides=1):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.Activation("relu")(x)


def _dense_bn_relu(x, units):
    x = layers.Dense(units, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.Activation("relu")(x)


def _residual_block(x, filters, strides=1):
    """Two 3x3 convs added to the block's input (through a 1x1 conv where the shape changes), then ReLU."""
    shortcut = x
    x = _conv_bn_relu(x, filters, strides=strides)
    x = layers.BatchNormalization()(layers.Conv2D(filters, 3, padding="same", use_bias=False)(x))
    if strides != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=strides, use_bias=False)(shortcut)
        shortcut = layers.BatchNormalization()(shortcut)
    return layers.Activation("relu")(layers.Add()([x, shortcut]))


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
    elif network == "strided":
        # small's last three blocks at widths 2w, 4w, 8w (width 24: 1.5x small's at 16), reached by one stride-2 conv instead of a
        # conv and a max-pool at full resolution: a full-resolution layer costs most per multiply-add here
        x = _conv_bn_relu(x, width, strides=2)
        x = _vgg_body(x, 2 * width, dropout, (2, 2, 2), head_units=256)
    elif network == "residual":
        # strided's stem, then one residual block at 22, 11 and 6 px (widths w, 2w, 4w): its depth at fewer
        # multiply-adds; no dropout inside the blocks
        x = _conv_bn_relu(x, width, strides=2)
        for block, strides in enumerate((1, 2, 2)):
            x = _residual_block(x, width * 2**block, strides)
        x = layers.Flatten()(layers.MaxPooling2D()(x))
        x = layers.Dropout(dropout)(_dense_bn_relu(x, 256))
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


def load_model(path, **kwargs) -> keras.Model:
    """keras.saving.load_model for the pipeline's models: it needs this module imported, which registers
    RandomAffine (a model trained with train.augment.fused fails to load without it)."""
    return keras.saving.load_model(path, **kwargs)
