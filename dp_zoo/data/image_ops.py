"""The TensorFlow image operations of the input pipeline.

- ``resize_center_crop``: applied once per image when a split is read at
  the model's resolution (in memory or streamed, the same op).
- ``make_augment_fn(AugmultConfig)``: K augmented views per example,
  ``[B, H, W, C] -> [B, K, H, W, C]``, with stateless TF ops, applied by the
  engine in-graph on each sampled micro-batch (so the data set is read only
  for the examples a step sampled).
"""


def resize_center_crop(image, size):
    """Shorter side to ``size`` (area-weighted when shrinking), then a centre square.

    Keeps the aspect ratio (ImageNet's eval convention); for square images it
    is a plain resize. Returns uint8 ``[size, size, C]``.
    """
    import tensorflow as tf

    h = tf.cast(tf.shape(image)[0], tf.float32)
    w = tf.cast(tf.shape(image)[1], tf.float32)
    scale = size / tf.minimum(h, w)
    nh = tf.maximum(size, tf.cast(tf.round(h * scale), tf.int32))
    nw = tf.maximum(size, tf.cast(tf.round(w * scale), tf.int32))
    x = tf.image.resize(image, [nh, nw], antialias=True)
    x = tf.image.resize_with_crop_or_pad(x, size, size)
    return tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)


def make_augment_fn(augmult):
    """K views per example: ``fn(images [B,H,W,C] float32, seed [2]) -> [B,K,H,W,C]``.

    Styles: "cifar" (reflect-pad + random crop + random flip), "crop" (the
    same without the flip, for digits), "imagenet" (random crop of 87.5% of
    the side, resized back, + flip), "none" (K copies).
    View 0 is the un-augmented image unless ``augment_first_view``.
    """
    import tensorflow as tf

    k = int(augmult.num_views)
    if k < 1:
        raise ValueError(f"augmult num_views must be >= 1, got {k}.")
    style = augmult.style
    if style not in ("cifar", "crop", "imagenet", "none"):
        raise ValueError(f"Unknown augmentation style {style!r}; use cifar, crop, imagenet or none.")
    pad = int(augmult.pad)

    def one_view(images, seed):
        b, h, w, c = images.shape
        if style == "none":
            return images
        s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        if style in ("cifar", "crop"):
            padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
            offs = tf.random.stateless_uniform([tf.shape(images)[0], 2], s1, 0, 2 * pad + 1, tf.int32)
            out = tf.map_fn(
                lambda a: tf.slice(a[0], [a[1][0], a[1][1], 0], [h, w, c]),
                (padded, offs), fn_output_signature=tf.TensorSpec([h, w, c], images.dtype),
            )
        else:
            ch, cw = int(round(h * 0.875)), int(round(w * 0.875))
            n = tf.shape(images)[0]
            oy = tf.random.stateless_uniform([n], s1, 0, h - ch + 1, tf.int32)
            ox = tf.random.stateless_uniform([n], tf.reverse(s1, [0]), 0, w - cw + 1, tf.int32)
            boxes = tf.stack([oy / h, ox / w, (oy + ch) / h, (ox + cw) / w], axis=1)
            out = tf.image.crop_and_resize(images, tf.cast(boxes, tf.float32), tf.range(n), [h, w])
        if style in ("cifar", "imagenet"):
            flip = tf.random.stateless_uniform([tf.shape(images)[0], 1, 1, 1], s2) < 0.5
            out = tf.where(flip, tf.reverse(out, [2]), out)
        return out

    def augment(images, seed):
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), k)
        views = []
        for i in range(k):
            if i == 0 and not augmult.augment_first_view:
                views.append(images)
            else:
                views.append(one_view(images, seeds[i]))
        return tf.stack(views, axis=1)

    return augment
