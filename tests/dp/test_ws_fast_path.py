"""How the WS fast path forms each layer's per-example gradients: ``ghost``, ``fold_gain`` and ``unfold`` choices."""

import keras
import numpy as np
import pytest

import dp_zoo
from dp_zoo import dp


@pytest.fixture(scope="module")
def wrn16_4_paths():
    """``ws_gradient_paths`` of WRN-16-4 at 32x32 (each call traces a whole step: ~20 s on 2 cores)."""
    m = dp_zoo.create_model("wrn16_4", num_classes=10, input_shape=(32, 32, 3))
    paths = {k: dp.ws_gradient_paths(m, (k, 32, 32, 3)) for k in (1, 2, 4)}
    return m, paths


def _with(paths, kind):
    return [n for n, p in paths.items() if p == kind]


@pytest.mark.slow  # traces three whole WRN-16-4 steps at 32x32 (the fixture): ~45 s on 2 cores
def test_ghost_auto_picks_the_small_spatial_stage(wrn16_4_paths):
    """``"auto"``: ghost norms where the Gram matrices cost well under the kernel gradients.

    WRN-16-4 at 32x32: at K=1 the 3x3 convolutions of the 8x8 stage (the 1x1
    skip convolution's kernel gradient is cheap anyway); at K=2 the three
    stride-1 ones; at K=4 (more positions per example) none.
    """
    m, paths = wrn16_4_paths
    stage3 = ["stage3_block1_conv1", "stage3_block1_conv2", "stage3_block2_conv1", "stage3_block2_conv2"]
    assert _with(paths[1], "ghost") == stage3
    assert _with(paths[2], "ghost") == stage3[1:]
    assert _with(paths[4], "ghost") == []
    assert len(dp.ghost_layer_names(m, (1, 32, 32, 3), True)) == len(dp.ws_kernels(m))
    with pytest.raises(ValueError, match="ghost"):
        dp.clipped_grad_sum(m, np.zeros((1, 1, 32, 32, 3), np.float32), np.zeros([1], np.int32),
                                l2_clip=1.0, ghost="yes")


@pytest.mark.slow  # shares the WRN-16-4 traces above
def test_fold_gain_auto_picks_layers_with_many_positions_per_fan_in(wrn16_4_paths):
    """``fold_gain="auto"``: the gain goes into the kernel where the output is large against the fan-in.

    WRN-16-4 at 32x32: at K=1 the 32x32 stage's 3x3 convolutions and the 1x1
    skip convolution into the 16x16 stage (the 8x8 stage's 3x3 convolutions
    go ghost; the stem and the 32x32 stage's 1x1 skip convolution, which fold
    would pick too, are small enough for ``unfold="auto"``); at K=4 every
    convolution but the 8x8 stage's 3x3 ones.
    """
    m, paths = wrn16_4_paths
    folds = [f"stage1_block{b}_conv{c}" for b in (1, 2) for c in (1, 2)] + ["stage2_block1_skip_conv"]
    assert sorted(_with(paths[1], "fold")) == sorted(folds)
    assert sorted(_with(paths[1], "unfold")) == ["stage1_block1_skip_conv", "stem_conv"]
    folded = _with(dp.ws_gradient_paths(m, (1, 32, 32, 3), unfold=False), "fold")
    assert sorted(folded) == sorted(folds + ["stage1_block1_skip_conv", "stem_conv"])
    assert sorted(n for n, p in paths[4].items() if p != "fold") == [
        f"stage3_block{b}_conv{c}" for b in (1, 2) for c in (1, 2)]
    assert set(dp.ws_gradient_paths(m, (4, 32, 32, 3), ghost=False, fold_gain=False, unfold=False).values()) == {
        "plain"}
    with pytest.raises(ValueError, match="fold_gain"):
        dp.clipped_grad_sum(m, np.zeros((1, 1, 32, 32, 3), np.float32), np.zeros([1], np.int32),
                                l2_clip=1.0, fold_gain="yes")


@pytest.mark.parametrize("name,shape,k", [("wrn_test", (8, 8, 1), 2),
                                          pytest.param("wrn_mnist", (28, 28, 1), 1, marks=pytest.mark.slow)])
def test_unfolded_kernel_gradients_equal_the_naive_loop(name, shape, k):
    """``unfold=True``: every ghost-capable layer's per-example kernel gradients from input patches and one
    einsum (``ghost.unfolded_kernel_rows``); ``"auto"`` picks the layers with few positions per fan-in."""
    from tests.helpers import assert_equals_naive_loop

    keras.utils.set_random_seed(0)
    m = dp_zoo.create_model(name, num_classes=10, input_shape=shape)
    rng = np.random.default_rng(0)
    m.set_weights([w + rng.normal(scale=0.2, size=w.shape).astype("float32") for w in m.get_weights()])
    x = rng.normal(size=(3, k) + shape).astype("float32")
    y = rng.integers(0, 10, 3).astype("int32")
    paths = dp.ws_gradient_paths(m, (k,) + shape, ghost=False, unfold=True)
    assert set(paths.values()) == {"unfold"}
    assert_equals_naive_loop(m, x, y, np.array([1, 0, 1], np.float32), rel=1e-4, ghost=False, unfold=True)
    assert "unfold" in dp.ws_gradient_paths(m, (k,) + shape).values()  # "auto", the default, picks some
    assert "unfold" not in dp.ws_gradient_paths(m, (k,) + shape, unfold=False).values()
    with pytest.raises(ValueError, match="unfold"):
        dp.clipped_grad_sum(m, x, y, l2_clip=1.0, unfold="yes")
