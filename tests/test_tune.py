"""``python -m dp_zoo.tune`` (issues #20, #26, #30): its command line, per-point sigma, and an end-to-end
tuning on digits with a tiny model whose card states privacy.tuning and the total epsilon and whose
card, record and console never show the number of trials."""

import json
import re

import pytest

from dp_zoo.accounting import tuning, tuning_calibration
from dp_zoo.cards import model_card
from dp_zoo.cards import run_record as run_record_mod
from dp_zoo.commands import tune
from dp_zoo.jobs import training as run
from dp_zoo.recipes import recipes


def _secret_with(dist, trials):
    """A fixed secret whose draw is ``trials`` (tests only: a real tuner draws it from OS entropy)."""
    for i in range(256):
        s = bytes([i]) * 32
        if tuning.draw_trials(dist, tuning.trial_rng(s, "trials")) == trials:
            return s
    raise AssertionError("no such secret among 256")


SRC = ["--search-space-source", "tests"]


@pytest.mark.parametrize("argv,match", [
    (["--recipe", "wrn_digits_eps8", "--grid", "lr=1", *SRC, "--trials", "poisson:0.5"], "mean >= 1"),
    (["--recipe", "wrn_digits_eps8", "--grid", "lr=1", *SRC, "--trials", "binomial:3"], "poisson:MEAN"),
    (["--recipe", "wrn_digits_eps8", "--grid", "momentum=0.9", *SRC], "KEY=V1,V2"),
    (["--recipe", "wrn_digits_eps8"], "no --grid"),
    (["--recipe", "wrn_digits_nonprivate", "--grid", "lr=1", *SRC, "--epsilon", "8"], "not private"),
    (["--recipe", "wrn_digits_eps8", "--grid", "lr=1", *SRC, "--score-noise", "0"], "--score-noise"),
    # trials would start from the init without composing its privacy
    (["--recipe", "wrn28_10_cifar100_finetune_eps1", "--grid", "lr=1", *SRC], "trains from scratch only"),
    # where the grid came from is stated on the card: it must be given
    (["--recipe", "wrn_digits_eps8", "--grid", "lr=1"], "--search-space-source"),
    (["--recipe", "wrn_digits_eps8", "--grid", "lr=1", "--search-space-source", " "], "--search-space-source"),
    (["--recipe", "wrn_digits_eps8", "--space", "digits_public", "--grid", "lr=1"], "drop --grid"),
    (["--recipe", "wrn_digits_eps8", "--space", "nope"], "unknown search space"),
    (["--recipe", "wrn16_4_cifar10_eps1", "--space", "digits_public"], "is for the recipes"),
])
def test_bad_command_lines_are_one_line_and_exit_2(argv, match, capsys):
    assert tune.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dp_zoo.tune: error: ") and match in err


def test_a_bad_flag_fails_before_tensorflow_or_dp_accounting_is_imported():
    """A typo is answered at once (issue #28: about 7 s before), in a fresh process."""
    import subprocess
    import sys

    code = ("import sys\nfrom dp_zoo import tune\ntry:\n    tune.main(['--recipe', 'wrn_digits_eps8', '--bogus'])\n"
            "except SystemExit as e:\n    print('exit', e.code)\n"
            "print(sorted(m for m in ('dp_accounting', 'tensorflow', 'keras', 'scipy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.split("\n")[:2] == ["exit 2", "[]"], (r.stdout, r.stderr[-2000:])
    assert "unrecognized arguments: --bogus" in r.stderr


def test_a_linear_probe_recipe_is_refused():
    config = recipes.get("wrn28_10_cifar10_finetune_eps8_linear_probe").config.replace(init_checkpoint=None)
    with pytest.raises(ValueError, match="linear probe; the tuner runs full trainings only"):
        tune.base_config(config, validation_size=300)


DIST = tuning.TrialDistribution.parse("poisson:2")  # conditioned on K >= 1


def _tuner(tmp_path, secret, grid=("lr=0.5,1", "steps=2,3"), dist=DIST):
    options = run.RunOptions(run_dir=str(tmp_path / "run"), publish_dir=str(tmp_path / "pub"), progress=False)
    return tune.Tuner("wrn_digits_eps8", recipes.get("wrn_digits_eps8"), tune.parse_grid(list(grid)),
                      dist, target_epsilon=8.0, validation_size=300, score_noise=10.0, options=options,
                      search_space_source="tests: a grid of two tiny runs", model="wrn_test", secret=secret)


def test_a_distribution_that_can_draw_zero_trials_is_refused(tmp_path):
    # "K = 0: run again" is the zero-truncated mechanism, not the one the plain Poisson bound covers.
    with pytest.raises(ValueError, match="zero-truncated"):
        _tuner(tmp_path, b"x" * 32, dist=tuning.TrialDistribution("poisson", mean=2))
    assert all(tuning.draw_trials(DIST, tuning.trial_rng(bytes([i]) * 32, "trials")) >= 1 for i in range(64))


def test_each_grid_point_gets_its_own_sigma_and_the_total_meets_the_target(tmp_path):
    t = _tuner(tmp_path, b"x" * 32)
    assert len(t.train_set) == recipes.DIGITS_N - 300 and len(t.val_set) == 300
    q = 256 / len(t.train_set)
    assert [(r[1], r[2]) for r in t.runs] == [(q, 2), (q, 3)]
    short, long = t.runs
    assert short[0] < long[0]  # the 2-step run is not given the 3-step run's noise
    assert t.point_config({"lr": 1.0, "steps": 2}).dp.noise_multiplier == short[0]
    total = tuning.total_epsilon(t.runs, 10.0, t.dist, 1e-5)
    assert 8.0 * (1 - 2e-3) <= total <= 8.0
    # every point meets the same per-trial budget (to the calibration's tolerance)
    e_short, e_long = tuning_calibration.per_point_epsilons(t.runs, 10.0, 1e-5)
    assert e_short == pytest.approx(e_long, rel=1e-3) and total > max(e_short, e_long)


def test_the_records_total_recomputes_from_its_points_and_dominates_each(tmp_path):
    """#30: from privacy.tuning alone, the total is the theorem applied to the maximum of the points'
    curves, every point's curve is at most that curve at every order, and each point's stated
    epsilon is its own."""
    import numpy as np

    t = _tuner(tmp_path, b"x" * 32)
    section = tune.tuning_section(dist=t.dist, grid=t.grid, runs=t.runs, score_noise=10.0, validation_size=300,
                                  delta=1e-5, search_space_source="tests")
    runs = tuple((r["noise_multiplier"], r["sampling_probability"], r["steps"]) for r in section["runs"])
    assert len({r[0] for r in runs}) == 2  # two shapes, two sigmas
    dist = tuning.TrialDistribution.from_dict(section["trial_distribution"])
    trial = tuning.trial_rdp(runs, 10.0)
    assert np.all(tuning_calibration.point_curves(runs, 10.0) <= trial)
    assert section["total_epsilon"] == tuning.epsilon_from_rdp(tuning.ORDERS, tuning.tuned_rdp(
        tuning.ORDERS, trial, dist), 1e-5)[0] == tuning.total_epsilon(runs, 10.0, dist, 1e-5) <= 8.0
    assert section["per_trial_epsilon"] == tuning.trial_epsilon(runs, 10.0, 1e-5)
    for r, e in zip(section["runs"], tuning_calibration.per_point_epsilons(runs, 10.0, 1e-5)):
        assert r["epsilon"] == e <= section["per_trial_epsilon"]


def _masked(text):
    """Console text with every number masked: two tunings' lines then differ only where the
    number of their lines or their words do."""
    return [re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "#", line) for line in text.splitlines()]


# A tuning with a given secret in a fresh process, as a user's script would run the Tuner: its
# real stdout and stderr (TensorFlow's C++ logging and Python's logging included) are what a
# console shows. (The CLI draws the secret from OS entropy; no option or variable forces K.)
_TUNE_WITH_SECRET = """
import json, sys
from dp_zoo import tune
from dp_zoo.accounting import tuning
from dp_zoo.train import recipes, run
root, k = sys.argv[1], int(sys.argv[2])
dist = tuning.TrialDistribution.parse("poisson:2")
secret = next(bytes([i]) * 32 for i in range(256)
              if tuning.draw_trials(dist, tuning.trial_rng(bytes([i]) * 32, "trials")) == k)
options = run.RunOptions(run_dir=root + "/run", publish_dir=root + "/pub", progress=False)
t = tune.Tuner("wrn_digits_eps8", recipes.get("wrn_digits_eps8"), tune.parse_grid(["lr=0.5,1", "steps=2,3"]),
               dist, target_epsilon=8.0, validation_size=300, score_noise=10.0, options=options,
               search_space_source="tests: a grid of two tiny runs", model="wrn_test", secret=secret)
t.run()
with open(root + "/runs.json", "w") as f:
    json.dump([list(r) for r in t.runs], f)
"""


@pytest.mark.slow  # four tiny training runs and two exports in two processes (minutes on 2 loaded cores)
def test_a_tuning_publishes_and_prints_nothing_that_depends_on_the_number_of_trials(tmp_path):
    """Issue #26 item 1: K = 3 and K = 1 print the same lines (numbers masked), with TensorFlow's
    C++ logging on, and their card, README, card.html and run record name no trial count, no trial
    index and no timing; K stays in the private run directory."""
    import os
    import subprocess
    import sys

    consoles = {}
    for k in (3, 1):
        root = tmp_path / f"k{k}"
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"}
        proc = subprocess.run([sys.executable, "-c", _TUNE_WITH_SECRET, str(root), str(k)], capture_output=True,
                              text=True, env=env, timeout=1200)
        assert proc.returncode == 0, proc.stderr[-3000:]
        consoles[k] = proc.stdout + proc.stderr
        pub = root / "pub"
        for name in ("card.json", "README.md", "card.html", "run_record.json"):
            text = (pub / name).read_text()
            assert not re.search(r"trials?[ _]run|trial\(s\)|trials_drawn|\d+ trials?\b|trial \d", text, re.I), name
        card = json.loads((pub / "card.json").read_text())
        record = json.loads((pub / "run_record.json").read_text())
        for r in (card["privacy"], record["privacy"]):
            assert set(r["tuning"]) <= set(run_record_mod.TUNING_ALLOWED)
        assert card["operational"]["wall_time_s"] is None and record["operational"]["wall_time_s"] is None
        assert "a secret number of trials" in card["headline"] and "E[K] = 2.31" in card["headline"]
        assert "tests: a grid of two tiny runs" in card["scope"]
        # K and the timings stay in the private run directory, and no trial wrote TensorBoard events
        private = json.loads((root / "run" / tune.PRIVATE_LOG).read_text())
        assert private["trials"] == k and len(private["trial_wall_time_s"]) == k
        assert not list((root / "run").rglob("*tfevents*"))
        runs = tuple(tuple(r) for r in json.loads((root / "runs.json").read_text()))
        _check_card_epsilon(card, runs)
    assert not re.search(r"trial \d|\d+ trials?\b|trial\(s\)", consoles[3])
    assert _masked(consoles[3]) == _masked(consoles[1]), (consoles[3], consoles[1])
    assert consoles[3].count("noisy validation accuracy") == 1  # the winner's score only


def _check_card_epsilon(card, runs):
    """The card's total is the accountant's for the tuner's runs, and the selected run's own is below it."""
    p, tt = card["privacy"], card["privacy"]["tuning"]
    assert p["epsilon"] == tt["total_epsilon"] <= 8.0
    assert p["epsilon"] == pytest.approx(tuning.total_epsilon(runs, 10.0, DIST, p["delta"]), rel=1e-12)
    assert [(r["noise_multiplier"], r["sampling_probability"], r["steps"]) for r in tt["runs"]] == list(runs)
    assert tt["selected_trial_epsilon"]["rdp"] < tt["per_trial_epsilon"] < p["epsilon"]
    assert card["headline"].startswith(f"({model_card.fmt_eps(p['epsilon'])}, ")  # the total, rounded up
    assert tt["grid"] == tune.parse_grid(["lr=0.5,1", "steps=2,3"]) and tt["selected"] in tt["grid"]
    assert card["data"]["train_size"] == recipes.DIGITS_N - 300 and card["metrics"]["evaluated_on"] == "test"


def _tuned_record(dist=tuning.TrialDistribution.parse("poisson:3")):
    from tests import _zoo_helpers as zh

    rec = zh.run_record()
    p = rec["privacy"]
    runs = ((p["noise_multiplier"], p["sampling_probability"], p["steps"]),)
    section = tune.tuning_section(dist=dist, grid=[{"lr": 1.0}], runs=runs, score_noise=10.0, validation_size=300,
                                  delta=p["delta"], search_space_source="De et al. 2022 (tests)",
                                  selected={"lr": 1.0}, noisy_score=250.0)
    tune.apply_tuning(rec, section, target_epsilon=None)
    return rec


def test_a_tuned_card_states_the_total_what_the_search_covered_and_no_trial_count():
    from dp_zoo.cards import run_record

    rec = _tuned_record()
    p, t = rec["privacy"], rec["privacy"]["tuning"]
    own = t["selected_trial_epsilon"]["rdp"]
    assert p["epsilon"] == t["total_epsilon"] > t["per_trial_epsilon"] > own and p["accountant"] == "rdp"
    run_record.check_run_record(rec)
    card = model_card.ModelCard.from_run_record("wrn_digits_eps8", rec)
    head = card.headline()
    assert head.startswith(f"({model_card.fmt_eps(t['total_epsilon'])}, 1e-05)-differentially private")
    assert "a secret number of trials, poisson with E[K] = 3.16" in head and "trial(s)" not in head
    j = card.to_json()
    assert "Covered as well: the search among the grid" in j["scope"]
    assert '"De et al. 2022 (tests)"' in j["scope"] and "NOT covered: any use of this data set" in j["scope"]
    assert "NOT covered: the choice of hyper-parameters" in model_card.SCOPE  # an untuned card still says so
    md = card.to_markdown()
    assert "| number of trials K | secret, never published;" in md and "{'lr': 1.0} / 0.8333" in md
    assert "| base configuration and grid chosen from | De et al. 2022 (tests) |" in md
    assert not re.search(r"trials run|trial\(s\)", md + card.to_html(plots={}))


@pytest.mark.parametrize("tamper,match", [
    (lambda r: r["privacy"].update(epsilon=r["privacy"]["tuning"]["per_trial_epsilon"]), "total_epsilon"),
    (lambda r: r["privacy"]["tuning"].update(total_epsilon=0.1, per_trial_epsilon=0.2) or r["privacy"].update(
        epsilon=0.1), "below one trial"),
    (lambda r: r["privacy"]["tuning"].pop("runs"), "lacks \\['runs'\\]"),
    (lambda r: r["privacy"]["tuning"].pop("search_space_source"), "lacks \\['search_space_source'\\]"),
    (lambda r: r["privacy"]["tuning"].update(search_space_source=" "), "search_space_source is empty"),
    # issue #26 item 1: a trial count, in any spelling, or a timing, is refused
    (lambda r: r["privacy"]["tuning"].update(trials_run=4), "no number of trials"),
    (lambda r: r["privacy"]["tuning"].update(trials=4), "no number of trials"),
    (lambda r: r["privacy"]["tuning"]["trial_distribution"].update(drawn=4), "no number of trials"),
    (lambda r: r.update(operational={"wall_time_s": 12.0, "note": ""}), "publishes no timing"),
    (lambda r: r["privacy"]["tuning"]["runs"][0].update(epsilon=99.0), "above the per-trial"),
])
def test_an_inconsistent_or_revealing_tuned_record_is_refused(tamper, match):
    from dp_zoo.cards import run_record

    rec = _tuned_record()
    tamper(rec)
    with pytest.raises(ValueError, match=match):
        run_record.check_run_record(rec)
