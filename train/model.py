"""The emotion CNN, sized for CPU training (about 1.2 M parameters, ~110 images/s on 2 cores).

Most compute in a VGG-style net goes to the full-resolution layers. This one has a single
convolution at 48x48 and puts its depth at 24x24 and below, which trains about twice as fast
as the same widths with two convolutions per stage, at similar accuracy on FER2013.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from pipeline.vision.faces import FACE_SIZE


def _conv(x, filters: int):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x)


def kmeans_gates(seg: keras.KerasTensor) -> dict[int, keras.KerasTensor]:
    """Spatial gates in 0..1 at 24x24 and 12x12 from the K-means segmentation channel (0..255).

    Two small convolutions read the region map (which dark region lies where: eyes, brows,
    nostrils, mouth), then one 1x1 convolution per resolution gives one value a pixel. The
    1x1 kernels start at zero, so every gate starts as a constant 0.5, which the batch
    normalisation after the gated features absorbs: the net starts as the gray-only net and
    learns to use the map only if that helps. About 1 k parameters.
    """
    s = layers.Rescaling(1.0 / 255, name="kmeans_scale")(seg)
    s = layers.Conv2D(8, 3, padding="same", activation="relu", name="kmeans_conv48")(s)
    s = layers.AveragePooling2D(2, name="kmeans_pool24")(s)
    s = layers.Conv2D(8, 3, padding="same", activation="relu", name="kmeans_conv24")(s)
    gates = {}
    for size in (24, 12):
        if size == 12:
            s = layers.AveragePooling2D(2, name="kmeans_pool12")(s)
        gates[size] = layers.Conv2D(1, 1, activation="sigmoid", kernel_initializer="zeros", name=f"kmeans_gate{size}")(s)
    return gates


def build_model(channels: int, num_classes: int, attention: bool = False, width: float = 1.0) -> keras.Model:
    """Return the CNN. Input: raw 0..255 faces (N, 48, 48, channels); output: logits.

    ``width`` multiplies every layer's filters (32, 64, 128, 256 at 1.0): parameters and
    compute grow about as its square.

    With ``attention`` the input is gray and segmentation (``channels`` 2), and the
    segmentation does not enter as pixels: it gates the features at 24x24 and 12x12, as
    ``features * (1 + gate)`` (``kmeans_gates``), so a gate can stress a region but never
    blank it.
    """
    if attention and channels != 2:
        raise ValueError(f"attention needs the gray and segmentation channels (2), got {channels}")
    if not width > 0:
        raise ValueError(f"width: must be > 0, got {width}")
    inputs = keras.Input((FACE_SIZE, FACE_SIZE, channels), name="face")
    gates = kmeans_gates(inputs[..., 1:]) if attention else {}
    x = layers.Rescaling(1.0 / 255)(inputs[..., :1] if attention else inputs)  # preprocessing lives in the model
    x = _conv(x, round(32 * width))
    x = layers.MaxPooling2D()(x)  # 24x24
    for size, filters in ((24, 64), (12, 128), (6, 256)):
        if size in gates:
            x = layers.Add()([x, layers.Multiply()([x, gates[size]])])  # x * (1 + gate)
        filters = round(filters * width)
        x = _conv(x, filters)
        x = _conv(x, filters)
        if size != 6:
            x = layers.MaxPooling2D()(x)  # 12x12, then 6x6
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.4)(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="emotion_cnn")


def build_augmenter(seed: int) -> keras.Sequential:
    """Geometric augmentation applied to whole batches (all channels move together)."""
    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomRotation(0.03, fill_mode="nearest", seed=seed + 1),  # about +-11 degrees
            layers.RandomTranslation(0.1, 0.1, fill_mode="nearest", seed=seed + 2),
            layers.RandomZoom(0.1, fill_mode="nearest", seed=seed + 3),
        ],
        name="augment",
    )


def photometric(x: tf.Tensor) -> tf.Tensor:
    """Random brightness and contrast on the gray channel only (channel 0)."""
    gray, rest = x[..., :1], x[..., 1:]
    batch = tf.shape(x)[0]
    contrast = tf.random.uniform([batch, 1, 1, 1], 0.7, 1.3)
    brightness = tf.random.uniform([batch, 1, 1, 1], -30.0, 30.0)
    mean = tf.reduce_mean(gray, axis=[1, 2, 3], keepdims=True)
    gray = tf.clip_by_value((gray - mean) * contrast + mean + brightness, 0.0, 255.0)
    return tf.concat([gray, rest], axis=-1)


def camera_degradation(x: tf.Tensor, prob: float, max_noise: float = 20.0) -> tf.Tensor:
    """Make faces look filmed: sensor noise and a lower resolution, each per face with ``prob``.

    Noise is Gaussian with a sigma drawn per face from 0..``max_noise`` grey levels; the lower
    resolution shrinks the face to a side drawn per batch from 16..40 px and scales it back.
    Only the gray channel (0) changes. Networks trained without it lose 8-11 points of PublicTest
    accuracy to noise of sigma 8 (``evaluate --degrade``); video faces are noisy and small.
    """
    gray, rest = x[..., :1], x[..., 1:]
    shape = tf.shape(gray)
    batch, size = shape[0], shape[1:3]
    side = tf.random.uniform([], 16, 41, dtype=tf.int32)
    small = tf.image.resize(tf.image.resize(gray, [side, side], method="area"), size, method="bilinear")
    shrink = tf.cast(tf.random.uniform([batch, 1, 1, 1]) < prob, gray.dtype)
    gray = small * shrink + gray * (1 - shrink)
    sigma = tf.random.uniform([batch, 1, 1, 1], 0.0, max_noise)
    noisy = tf.cast(tf.random.uniform([batch, 1, 1, 1]) < prob, gray.dtype)
    gray = tf.clip_by_value(gray + tf.random.normal(shape) * sigma * noisy, 0.0, 255.0)
    return tf.concat([gray, rest], axis=-1)


def random_erasing(x: tf.Tensor, prob: float, max_side: float = 0.4) -> tf.Tensor:
    """Blank one random rectangle (sides up to ``max_side`` of the face) with noise, per face, with ``prob``.

    Random erasing (Zhong et al., 2017) makes the net use the whole face instead of one cue
    (an open mouth): occlusion by hands, microphones and glasses is common in real footage.
    """
    shape = tf.shape(x)
    batch, size = shape[0], shape[1]
    sizef = tf.cast(size, tf.float32)
    h = tf.cast(tf.random.uniform([batch], 0.1, max_side) * sizef, tf.int32)
    w = tf.cast(tf.random.uniform([batch], 0.1, max_side) * sizef, tf.int32)
    y0 = tf.cast(tf.random.uniform([batch]) * tf.cast(size - h, tf.float32), tf.int32)
    x0 = tf.cast(tf.random.uniform([batch]) * tf.cast(size - w, tf.float32), tf.int32)
    rows = tf.range(size)[None, :, None]
    cols = tf.range(size)[None, None, :]
    in_rows = (rows >= y0[:, None, None]) & (rows < (y0 + h)[:, None, None])
    inside = in_rows & (cols >= x0[:, None, None]) & (cols < (x0 + w)[:, None, None])
    apply = tf.random.uniform([batch, 1, 1]) < prob
    mask = tf.cast(inside & apply, x.dtype)[..., None]
    noise = tf.random.uniform(tf.shape(x), 0.0, 255.0, dtype=x.dtype)
    return x * (1 - mask) + noise * mask


def serving_model(members: list[keras.Model], mirror: bool = True) -> keras.Model:
    """Probabilities averaged over ``members`` and, with ``mirror``, over the face and its mirror.

    One trained model with ``mirror`` is the usual serving graph (test-time augmentation);
    several make an ensemble. Each member reads the leading channels it was trained on (gray
    first, then the segmentation channel; a member with K-means attention reads both, and
    the mirror flips both alike). This is the graph exported to TFLite, so evaluation
    and serving both see it. It is built from Keras layers and exported through a SavedModel:
    converting a hand-written ``tf.function`` around the Keras 3 model gave NaN outputs in LiteRT.
    """
    channels = max(m.input_shape[-1] for m in members)
    face = keras.Input((FACE_SIZE, FACE_SIZE, channels), name="face")
    views = [face]
    if mirror:
        views.append(layers.Lambda(lambda t: keras.ops.flip(t, axis=2), name="mirror")(face))
    probs = []
    for i, member in enumerate(members):
        member = keras.Model(member.input, member.output, name=f"member_{i}")  # every member is an "emotion_cnn"
        used = member.input_shape[-1]
        for view in views:
            x = view if used == channels else layers.Lambda(lambda t, n=used: t[..., :n])(view)
            probs.append(layers.Softmax()(member(x)))
    output = layers.Average(name="probabilities")(probs) if len(probs) > 1 else probs[0]
    return keras.Model(face, output, name="emotion_serving")


def quantization(quantize: bool) -> str:
    """How ``export_tflite`` stored the weights, as ``model.json`` records it."""
    return "dynamic-range: int8 weights, float32 input and output" if quantize else "none: float32"


def export_tflite(members: list[keras.Model], path: str, mirror: bool = True, quantize: bool = True) -> int:
    """Write the serving graph as a .tflite file; return its size in bytes.

    With ``quantize`` (the default) the weights are stored as int8 and LiteRT's XNNPACK runs
    the convolutions in int8 (``quantization``): on these CPUs a face costs a quarter of the
    float32 graph's time (1.0 against 4.2 ms, one thread) for -0.03 points on PublicTest
    (67.01 -> 66.98 %, shipped single model). Nothing to calibrate: no representative data needed.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        serving_model(members, mirror).export(tmp, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if quantize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        blob = converter.convert()
    with open(path, "wb") as f:
        f.write(blob)
    return len(blob)
