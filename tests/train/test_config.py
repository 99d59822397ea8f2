"""TrainConfig round-trips through dicts (checkpoints and cards rely on it)."""

import json

import pytest

from dp_zoo.recipes import config as cfg


def test_round_trip_through_json():
    c = cfg.TrainConfig(
        model="wrn16_4",
        model_kwargs=(("scale_norm", True),),
        steps=875,
        dp=cfg.DPConfig(noise_multiplier=10.0, delta=1e-5),
        augmult=cfg.AugmultConfig(num_views=16),
        ema=cfg.EMAConfig(decay=0.999),
        optim=cfg.OptimConfig(learning_rate=2.0),
        data=cfg.DataConfig(dataset="cifar10"),
    )
    back = cfg.TrainConfig.from_dict(json.loads(json.dumps(c.to_dict())))
    assert back == c


def test_unknown_field_is_a_clear_error():
    d = cfg.TrainConfig().to_dict()
    d["batchsize"] = 3
    with pytest.raises(ValueError, match="batchsize"):
        cfg.TrainConfig.from_dict(d)


def test_records_written_with_num_classes_still_read():
    """num_classes configured nothing (the classes come from the data set): no longer written, still read."""
    import pathlib

    assert "num_classes" not in cfg.TrainConfig().to_dict()
    root = pathlib.Path(__file__).resolve().parents[2]
    # wrn_digits_nonprivate's record (2026-12-03) predates the change; the private digits models
    # were re-published since (#20).
    old = json.loads((root / "saved_models" / "wrn_digits_nonprivate" / "run_record.json").read_text())["config"]
    assert "num_classes" in old
    back = cfg.TrainConfig.from_dict(old)
    # Fields added since read as their defaults: every variable trained, no probe (fine-tuning
    # modes), float32 (the only precision there was), flat clipping (the only rule there was).
    assert "precision" not in old and back.precision == "float32"
    assert "clipping" not in old["dp"] and back.dp.clipping == "flat"
    assert back.to_dict() == {**{k: v for k, v in old.items() if k != "num_classes"},
                              "dp": {**old["dp"], "clipping": "flat", "clipping_gamma": 0.01, "layer_clips": [],
                                     "target_quantile": 0.5, "clip_learning_rate": 0.2, "count_noise": None},
                              "trainable": "all", "linear_probe": False, "precision": "float32"}


def test_precision_round_trips_and_an_unknown_one_is_a_clear_error():
    c = cfg.TrainConfig(precision="bf16")
    assert cfg.TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))).precision == "bf16"
    with pytest.raises(ValueError, match="precision 'fp16' is not supported: use one of 'float32', 'bf16'"):
        cfg.TrainConfig(precision="fp16")
