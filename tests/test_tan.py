"""TAN simulation configs (Sander et al. 2023)."""

import math

import pytest

from dp_zoo import accounting
from dp_zoo.engine import tan
from dp_zoo.recipes.config import DPConfig, TrainConfig

N = 50_000
FULL = TrainConfig(model="wrn16_4", batch_size=4096, physical_batch_size=256, steps=875,
                   dp=DPConfig(noise_multiplier=10.0, delta=1e-5))


def test_simulation_keeps_steps_and_per_step_snr():
    sim = tan.simulate(FULL, 16, dataset_size=N)
    assert sim.steps == FULL.steps
    assert sim.batch_size == 256 and sim.physical_batch_size == 256
    assert math.isclose(sim.batch_size / sim.dp.noise_multiplier, FULL.batch_size / FULL.dp.noise_multiplier)
    assert sim.tan_simulation_factor == 16.0


def test_simulation_is_far_less_private_and_says_so():
    info = tan.tan_info(FULL, 16, dataset_size=N)
    sim = tan.simulate(FULL, 16, dataset_size=N)
    eps_sim = accounting.epsilon(noise_multiplier=sim.dp.noise_multiplier,
                                 sampling_probability=sim.batch_size / N, steps=sim.steps, delta=1e-5)
    assert math.isclose(info["epsilon_full_run"], accounting.epsilon(
        noise_multiplier=10.0, sampling_probability=4096 / N, steps=875, delta=1e-5))
    assert eps_sim > 3 * info["epsilon_full_run"]
    assert "NOT private" in info["note"]


def test_total_amount_of_noise_definition():
    eta = tan.total_amount_of_noise(noise_multiplier=10.0, sampling_probability=0.08192, steps=875)
    assert math.isclose(eta, 10.0 / (0.08192 * math.sqrt(875)))


def test_target_epsilon_config_is_calibrated_first():
    # RDP: a PLD calibration takes 30-50 s on 2 cores, and the accountant is not the subject.
    cfg = FULL.replace(dp=DPConfig(target_epsilon=8.0, delta=1e-5, accountant="rdp"))
    sim = tan.simulate(cfg, 4, dataset_size=N)
    sigma = accounting.calibrate_noise(target_epsilon=8.0, sampling_probability=4096 / N, steps=875, delta=1e-5,
                                       accountant="rdp")
    assert math.isclose(sim.dp.noise_multiplier, sigma / 4)
    assert sim.dp.target_epsilon is None


@pytest.mark.parametrize("factor", [1, 0.5, -2, True])
def test_bad_factor(factor):
    with pytest.raises(ValueError, match="factor"):
        tan.simulate(FULL, factor, dataset_size=N)


def test_factor_too_large_for_batch():
    with pytest.raises(ValueError, match="smaller factor"):
        tan.simulate(FULL, 10_000, dataset_size=N)


def _eta(config):
    return tan.total_amount_of_noise(noise_multiplier=config.dp.noise_multiplier,
                                     sampling_probability=config.batch_size / N, steps=config.steps)


@pytest.mark.parametrize("factor", [
    2, 4, 16, 64,
    3,  # does not divide B=4096: sigma follows the rounded batch
])
def test_simulation_keeps_the_total_amount_of_noise(factor):
    """TAN's invariant (Sander et al. 2023): the simulation has the full run's total amount of noise
    eta = sigma / (q sqrt(S)), and so its noise per expected example sigma / B, at k times less compute."""
    sim = tan.simulate(FULL, factor, dataset_size=N)
    assert sim.batch_size < FULL.batch_size and sim.steps == FULL.steps
    assert math.isclose(_eta(sim), _eta(FULL), rel_tol=1e-12)
    assert math.isclose(tan.effective_noise(noise_multiplier=sim.dp.noise_multiplier, batch_size=sim.batch_size),
                        tan.effective_noise(noise_multiplier=10.0, batch_size=4096), rel_tol=1e-12)
    # Nothing else changes: clipping, delta, accountant, model, optimizer, augmentation.
    same = sim.replace(batch_size=FULL.batch_size, physical_batch_size=FULL.physical_batch_size,
                       tan_simulation_factor=None, dp=FULL.dp)
    assert same == FULL and sim.dp.l2_clip == FULL.dp.l2_clip and sim.dp.delta == FULL.dp.delta


def test_record_section_states_both_runs():
    info = tan.tan_info(FULL, 16, dataset_size=N)
    assert (info["factor"], info["noise_multiplier_full_run"], info["batch_size_full_run"], info["steps"]) == (
        16.0, 10.0, 4096.0, 875)
    assert math.isclose(info["tan_full_run"], 10.0 / (4096 / N * math.sqrt(875)), rel_tol=1e-12)
    assert math.isclose(info["tan_simulation"], info["tan_full_run"], rel_tol=1e-12)


@pytest.mark.parametrize("config,match", [
    (FULL.replace(dp=DPConfig(enabled=False)), "non-private"),
    (tan.simulate(FULL, 4, dataset_size=N), "already a TAN simulation"),
    (FULL.replace(dp=DPConfig(delta=1e-5)), "neither dp.noise_multiplier nor dp.target_epsilon"),
    (FULL.replace(steps=None, epochs=70.0, dp=DPConfig(target_epsilon=8.0, delta=1e-5)), "Set config.steps"),
])
def test_refusals(config, match):
    with pytest.raises(ValueError, match=match):
        tan.simulate(config, 4, dataset_size=N)
