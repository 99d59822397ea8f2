"""The CIFAR-10 eps=8 recipe (TAN's reference run, recipe_sources) end to end, reduced, on tfds.testing.mock_data."""

import dataclasses

import keras
import pytest

import dp_zoo
from dp_zoo import accounting
from dp_zoo import data
from dp_zoo.engine import trainer as engine
from dp_zoo.recipes import recipes


@pytest.mark.slow
def test_wrn16_4_cifar10_eps8_recipe_runs_end_to_end(tmp_path):
    import tensorflow_datasets as tfds

    r = recipes.get("wrn16_4_cifar10_eps8")
    # Same architecture, augmentation, EMA, optimizer and accounting; only
    # the scale is reduced (2 steps of expected batch 16, K=2) to fit a CPU test.
    cfg = r.config.replace(
        steps=2, batch_size=16, physical_batch_size=8, eval_every=0,
        augmult=dataclasses.replace(r.config.augmult, num_views=2),
        data=dataclasses.replace(r.config.data, data_dir=str(tmp_path)),
        dp=dataclasses.replace(r.config.dp, target_epsilon=None),
    )
    with tfds.testing.mock_data(num_examples=64):
        train = data.load_dataset(cfg.data, "train")
        test = data.load_dataset(cfg.data, "test")
    keras.utils.set_random_seed(0)
    model = dp_zoo.create_model(cfg.model, num_classes=train.num_classes, input_shape=train.input_shape)
    t = engine.Trainer(model, cfg, train, augment_fn=data.make_augment_fn(cfg.augmult),
                       run_dir=str(tmp_path / "run"), progress=False)
    rec = t.fit()
    assert rec["privacy"]["steps"] == 2
    assert rec["privacy"]["epsilon"] == accounting.epsilon(
        noise_multiplier=r.config.dp.noise_multiplier, sampling_probability=16 / 64, steps=2,
        delta=1e-5, accountant="rdp")
    # The run is the recipe's in everything but scale.
    c = rec["config"]
    assert (c["model"], c["augmult"]["style"], c["ema"]["decay"], c["optim"]) == (
        r.config.model, r.config.augmult.style, r.config.ema.decay, r.config.to_dict()["optim"])
    assert model.count_params() > 2.7e6  # the full WRN-16-4, not a tiny stand-in
    # Evaluation of the EMA weights is the EMA model's accuracy on the test split.
    import numpy as np

    from dp_zoo.preprocessing import normalize

    logits = t.model_for("ema")(normalize(test.images, train.mean, train.std), training=False).numpy()
    assert abs(t.evaluate(test, "ema")["accuracy"] - np.mean(np.argmax(logits, 1) == test.labels)) <= 1 / len(test)
