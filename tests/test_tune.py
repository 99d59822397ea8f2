"""``python -m dp_zoo.tune`` (issue #20): its command line, the zero-trial outcome, and an end-to-end
tuning on digits with a tiny model whose card states privacy.tuning and the total epsilon."""

import json

import pytest

from dp_zoo import model_card, tune
from dp_zoo.accounting import tuning
from dp_zoo.train import recipes, run


def _secret_with(dist, trials):
    """A fixed secret whose draw is ``trials`` (tests only: a real tuner draws it from OS entropy)."""
    for i in range(256):
        s = bytes([i]) * 32
        if tuning.draw_trials(dist, tuning.trial_rng(s, "trials")) == trials:
            return s
    raise AssertionError("no such secret among 256")


@pytest.mark.parametrize("argv,match", [
    (["--recipe", "wrn_digits_eps8", "--grid", "lr=1", "--trials", "poisson:0.5"], "mean >= 1"),
    (["--recipe", "wrn_digits_eps8", "--grid", "lr=1", "--trials", "binomial:3"], "poisson:MEAN"),
    (["--recipe", "wrn_digits_eps8", "--grid", "momentum=0.9"], "KEY=V1,V2"),
    (["--recipe", "wrn_digits_eps8"], "no --grid"),
    (["--recipe", "wrn_digits_nonprivate", "--grid", "lr=1", "--epsilon", "8"], "not private"),
    (["--recipe", "wrn_digits_eps8", "--grid", "lr=1", "--score-noise", "0"], "--score-noise"),
    # trials would start from the init without composing its privacy
    (["--recipe", "wrn28_10_cifar100_finetune_eps1", "--grid", "lr=1"], "trains from scratch only"),
])
def test_bad_command_lines_are_one_line_and_exit_2(argv, match, capsys):
    assert tune.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dp_zoo.tune: error: ") and match in err


def test_a_linear_probe_recipe_is_refused():
    config = recipes.get("wrn28_10_cifar10_finetune_eps8_linear_probe").config.replace(init_checkpoint=None)
    with pytest.raises(ValueError, match="linear probe; the tuner runs full trainings only"):
        tune.base_config(config, validation_size=300)


def _tuner(tmp_path, secret, grid=("lr=0.5,1", "steps=2,3")):
    options = run.RunOptions(run_dir=str(tmp_path / "run"), publish_dir=str(tmp_path / "pub"), progress=False)
    return tune.Tuner("wrn_digits_eps8", recipes.get("wrn_digits_eps8"), tune.parse_grid(list(grid)),
                      tuning.TrialDistribution("poisson", mean=2), target_epsilon=8.0, validation_size=300,
                      score_noise=10.0, options=options, model="wrn_test", secret=secret)


def test_zero_trials_publish_nothing(tmp_path, capsys):
    t = _tuner(tmp_path, _secret_with(tuning.TrialDistribution("poisson", mean=2), 0))
    assert t.run() is None
    assert "nothing is published" in capsys.readouterr().out
    assert not (tmp_path / "pub").exists() and not (tmp_path / "run").exists()


def test_calibrated_sigma_meets_the_total_on_the_training_split(tmp_path):
    t = _tuner(tmp_path, b"x" * 32)
    assert len(t.train_set) == recipes.DIGITS_N - 300 and len(t.val_set) == 300
    assert {r[2] for r in t.runs} == {2, 3} and all(r[1] == 256 / len(t.train_set) for r in t.runs)
    assert tuning.total_epsilon(t.runs, 10.0, t.dist, 1e-5) <= 8.0
    # the same grid at a smaller sigma would exceed the total
    assert tuning.total_epsilon(tune.grid_runs(t.base, t.grid, t.sigma * 0.99, len(t.train_set)), 10.0,
                                t.dist, 1e-5) > 8.0


@pytest.mark.slow  # two tiny training runs and an export (about a minute on 2 cores)
def test_tuning_publishes_the_best_trial_with_the_total_epsilon(tmp_path, capsys):
    t = _tuner(tmp_path, _secret_with(tuning.TrialDistribution("poisson", mean=2), 2))
    record = t.run()
    out = capsys.readouterr().out
    assert "trial 2/2 done" in out and out.count("noisy validation accuracy") == 1  # the winner's score only
    card = json.loads((tmp_path / "pub" / "card.json").read_text())
    p = card["privacy"]
    tt = p["tuning"]
    assert tt["trials_run"] == 2 and tt["grid"] == t.grid and tt["selected"] in t.grid
    assert p["epsilon"] == tt["total_epsilon"] == record["privacy"]["epsilon"] <= 8.0
    assert p["epsilon"] == pytest.approx(tuning.total_epsilon(t.runs, 10.0, t.dist, p["delta"]), rel=1e-12)
    assert tt["selected_trial_epsilon"]["rdp"] < tt["per_trial_epsilon"] < p["epsilon"]
    assert card["headline"].startswith(f"({model_card.fmt_eps(p['epsilon'])}, ")  # the total, rounded up
    assert "hyper-parameter tuning (2 trial(s)" in card["headline"]
    assert "Covered as well: the hyper-parameter search" in card["scope"]
    assert card["data"]["train_size"] == recipes.DIGITS_N - 300 and card["metrics"]["evaluated_on"] == "test"
    readme = (tmp_path / "pub" / "README.md").read_text()
    assert "trials run (drawn secretly; data-independent) | 2 |" in readme


def _tuned_record():
    from tests import _zoo_helpers as zh

    rec = zh.run_record()
    p = rec["privacy"]
    runs = ((p["noise_multiplier"], p["sampling_probability"], p["steps"]),)
    section = tune.tuning_section(dist=tuning.TrialDistribution("poisson", mean=3), trials=4, grid=[{"lr": 1.0}],
                                  runs=runs, score_noise=10.0, validation_size=300, delta=p["delta"],
                                  selected={"lr": 1.0}, noisy_score=250.0)
    tune.apply_tuning(p, section, target_epsilon=None)
    return rec


def test_a_tuned_card_states_the_total_and_what_the_search_covered():
    from dp_zoo import run_record

    rec = _tuned_record()
    p, t = rec["privacy"], rec["privacy"]["tuning"]
    own = t["selected_trial_epsilon"]["rdp"]
    assert p["epsilon"] == t["total_epsilon"] > t["per_trial_epsilon"] > own and p["accountant"] == "rdp"
    run_record.check_run_record(rec)
    card = model_card.ModelCard.from_run_record("wrn_digits_eps8", rec)
    assert card.headline().startswith(f"({model_card.fmt_eps(t['total_epsilon'])}, 1e-05)-differentially private")
    assert "hyper-parameter tuning (4 trial(s), poisson" in card.headline()
    j = card.to_json()
    assert j["scope"] != model_card.SCOPE and "Covered as well: the hyper-parameter search" in j["scope"]
    assert "NOT covered: the choice of hyper-parameters" in model_card.SCOPE  # an untuned card still says so
    md = card.to_markdown()
    assert "| trials run (drawn secretly; data-independent) | 4 |" in md and "{'lr': 1.0} / 0.8333" in md


@pytest.mark.parametrize("tamper,match", [
    (lambda p: p.update(epsilon=p["tuning"]["per_trial_epsilon"]), "total_epsilon"),
    (lambda p: p["tuning"].update(total_epsilon=0.1, per_trial_epsilon=0.2) or p.update(epsilon=0.1), "below one trial"),
    (lambda p: p["tuning"].update(trials_run=0), "no trial ran"),
    (lambda p: p["tuning"].pop("runs"), "lacks \\['runs'\\]"),
])
def test_an_inconsistent_tuned_record_is_refused(tamper, match):
    from dp_zoo import run_record

    rec = _tuned_record()
    tamper(rec["privacy"])
    with pytest.raises(ValueError, match=match):
        run_record.check_run_record(rec)
