"""Model cards: every number is the run record's; TAN simulations say they are not private."""

import json
import math
import re

import pytest
import yaml

from dp_zoo.cards import html as card_html, model_card
from dp_zoo.cards.model_card import ModelCard, ceil_sig, fmt_eps
from tests import _zoo_helpers as H


def table_rows(md):
    """{first cell: second cell} of every two-column markdown table row."""
    rows = {}
    for line in md.splitlines():
        m = re.match(r"^\| (.+?) \| (.*) \|$", line)
        if m and not set(m.group(1)) <= set("-|"):
            rows[m.group(1)] = m.group(2)
    return rows


@pytest.fixture(scope="module")
def record():
    return H.run_record(num_params=1234)


@pytest.fixture(scope="module")
def written(record, tmp_path_factory):
    d = tmp_path_factory.mktemp("card")
    files = ModelCard.from_run_record("wrn_digits_eps8", record).write(str(d), zoo_points=[
        {"name": "wrn16_4_cifar10_eps8", "epsilon": 8.0, "accuracy": 0.795, "source": "paper"},
        {"name": "wrn_digits_nonprivate", "epsilon": None, "accuracy": 0.97, "source": "measured"},
    ])
    return d, files


def test_card_json_numbers_equal_the_record(record, written):
    d, _ = written
    card = json.loads((d / "card.json").read_text())
    assert next(iter(card)) == "headline"  # the first thing a reader of the JSON sees
    assert card["card_schema_version"] == model_card.CARD_SCHEMA_VERSION
    for section in ("privacy", "history", "model", "data", "metrics", "software", "hardware", "config"):
        assert H.numbers(card[section]) == H.numbers(record[section]), section
    assert card["privacy"] == record["privacy"]
    t, c, p = card["training"], record["config"], record["privacy"]
    expected = {
        "l2_clip": p["l2_clip"], "noise_multiplier": p["noise_multiplier"],
        "sampling_probability": p["sampling_probability"], "logical_batch_size": c["batch_size"],
        "physical_batch_size": c["physical_batch_size"], "augmult_k": c["augmult"]["num_views"],
        "ema_decay": c["ema"]["decay"], "steps_planned": record["steps_planned"],
        "steps_completed": record["steps_completed"], "seed": c["seed"],
    }
    for k, v in expected.items():
        assert t[k] == v, k
    assert card["operational"] == record["operational"]
    assert card["run_record_sha256"] == model_card.record_sha256(record)


def test_readme_numbers_equal_the_record(record, written):
    d, _ = written
    md = (d / "README.md").read_text()
    rows = table_rows(md)
    p, c, m, mod = record["privacy"], record["config"], record["metrics"], record["model"]
    expected = {
        "epsilon (reported accountant)": p["epsilon"], "epsilon (PLD)": p["epsilon_pld"],
        "epsilon (RDP)": p["epsilon_rdp"], "delta": p["delta"],
        "sampling probability q": p["sampling_probability"], "dataset size N": p["dataset_size"],
        "expected batch size qN": p["expected_batch_size"], "noise multiplier sigma": p["noise_multiplier"],
        "clipping norm C": p["l2_clip"], "steps": p["steps"],
        "last": m["test_accuracy_last"], "EMA": m["test_accuracy_ema"],
        "parameters": mod["num_params"], "classes": mod["num_classes"],
        "logical batch size": c["batch_size"], "physical batch size": c["physical_batch_size"],
        "augmentation multiplicity K": c["augmult"]["num_views"], "EMA decay": c["ema"]["decay"],
        "learning rate": c["optim"]["learning_rate"], "steps completed": record["steps_completed"],
        "seed": c["seed"], "wall time (s; operational, not covered by the guarantee)": record["operational"]["wall_time_s"],
    }
    for k, v in expected.items():
        assert float(rows[k]) == v, (k, rows[k], v)  # exact: printed with repr, parsed back
    assert f"| accountant | pld (dp-accounting {p['dp_accounting_version']}) |" in md
    assert "add_or_remove_one / one example" in md
    assert f"N = {record['data']['train_size']}" in md
    for k, v in record["software"].items():
        assert f"- {k}: {v}" in md
    assert "every intermediate checkpoint" in md


def test_every_epsilon_shown_comes_from_the_privacy_section(record, written):
    d, _ = written
    allowed = set()
    for v in H.numbers(record["privacy"]).values():
        allowed |= {float(v), float(fmt_eps(v))}
    md = (d / "README.md").read_text()
    for line in md.splitlines():
        if "epsilon" in line.lower() and "|" in line:
            for tok in re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?:e-?\d+)?", line.split("|", 2)[-1]):
                assert float(tok) in allowed, (line, tok)
    # The headline's epsilon is the accountant's, rounded up, never down.
    card = json.loads((d / "card.json").read_text())
    shown = float(re.search(r"^\(([\d.]+), ", card["headline"]).group(1))
    assert shown >= record["privacy"]["epsilon"]
    assert shown == ceil_sig(record["privacy"]["epsilon"])


def test_the_headline_states_the_accountants_epsilon_never_the_target(record, written):
    """The record's target (the budget guard) differs from its epsilon; every rendering's headline
    states the epsilon the accountant computed."""
    d, _ = written
    p = record["privacy"]
    assert p["target_epsilon"] == H.TARGET and fmt_eps(p["target_epsilon"]) != fmt_eps(p["epsilon"])
    want = f"({fmt_eps(p['epsilon'])}, {p['delta']:g})-differentially private "
    head = json.loads((d / "card.json").read_text())["headline"]
    assert head.startswith(want), head
    md = (d / "README.md").read_text()
    assert md.split("\n---\n", 1)[1].strip().splitlines()[2] == f"**{head}**"
    html = (d / "card.html").read_text()
    assert re.sub(r"<[^>]+>", "\n", html.split("<body>", 1)[1]).strip().splitlines()[0].startswith(want)


def test_ceil_sig_rounds_up():
    assert ceil_sig(1.00001) == 1.001
    assert ceil_sig(7.99949) == 8.0  # 4 significant digits: 7.999|49 rounds up to 8.000
    assert ceil_sig(7.999) == 7.999 and ceil_sig(7.9991) == 8.0
    assert ceil_sig(2.0) == 2.0
    assert ceil_sig(0.123456) == 0.1235 and ceil_sig(0.00012341) == 0.0001235
    assert ceil_sig(1234.01) == 1235.0
    for x in (0.3, 1.23456789, 3.77, 9.999999, 123.456, 0.0123401):
        # Up, by less than one unit in the 4th significant digit.
        assert x <= ceil_sig(x) < x + 10 ** (math.floor(math.log10(x)) - 3), x


def test_yaml_header_is_valid_metadata(record, written):
    d, _ = written
    md = (d / "README.md").read_text()
    assert md.startswith("---\n")
    meta = yaml.safe_load(md.split("\n---\n", 1)[0][4:])
    assert meta["library_name"] == "keras"
    assert meta["datasets"] == ["digits"]
    dp = meta["differential_privacy"]
    assert dp["epsilon"] == record["privacy"]["epsilon"] and dp["delta"] == record["privacy"]["delta"]
    assert dp["private"] is True and dp["tan_simulation"] is False
    res = meta["model-index"][0]["results"][0]
    assert res["metrics"][0]["value"] == record["metrics"]["test_accuracy_ema"]


def test_plots_and_html(written):
    d, files = written
    for rel in card_html.PLOT_FILES.values():
        assert rel in files
        assert (d / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (d / "card.html").read_text()
    assert html.count("<img") == 3 and "data:image/png;base64," in html
    first_text = re.sub(r"<[^>]+>", "\n", html.split("<body>", 1)[1]).strip().splitlines()[0]
    assert first_text.startswith("(") and "differentially private" in first_text


def test_tan_simulation_says_not_private_first(tmp_path):
    rec = H.run_record(tan=True)
    card = ModelCard.from_run_record("wrn16_4_cifar10_eps1_tan16", rec)
    files = card.write(str(tmp_path))
    assert files
    head = card.headline()
    assert head.startswith("TAN SIMULATION: not private at the stated epsilon")
    md = (tmp_path / "README.md").read_text()
    body = md.split("\n---\n", 1)[1].strip().splitlines()
    assert body[0].startswith("# ") and body[2] == f"**{head}**"
    meta = yaml.safe_load(md.split("\n---\n", 1)[0][4:])
    assert meta["differential_privacy"]["private"] is False and "tan-simulation-not-private" in meta["tags"]
    html = (tmp_path / "card.html").read_text()
    first_text = re.sub(r"<[^>]+>", "\n", html.split("<body>", 1)[1]).strip().splitlines()[0]
    assert first_text.startswith("TAN SIMULATION: not private at the stated epsilon")
    assert next(iter(json.loads((tmp_path / "card.json").read_text()))) == "headline"


def test_reproducible_run_is_flagged_not_private():
    from dp_zoo.engine.record_sections import mark_not_private

    rec = H.run_record()
    eps = rec["privacy"]["epsilon_pld"]
    mark_not_private(rec["privacy"], "reproducible run", "derived from the public seed 7")
    card = ModelCard.from_run_record("x", rec)
    md = card.to_markdown()
    assert card.headline() == "NOT differentially private (reproducible run): derived from the public seed 7."
    assert "private: false" in md and "epsilon: null" in md
    assert f"would be {eps} (PLD)" in md.split("## Privacy guarantee")[0]


def test_non_private_baseline(tmp_path):
    rec = H.run_record(private=False)
    card = ModelCard.from_run_record("wrn_digits_nonprivate", rec)
    card.write(str(tmp_path))
    assert card.headline().startswith("NOT PRIVATE")
    assert "epsilon" not in card.headline()


def test_refuses_incomplete_or_inconsistent_records():
    rec = H.run_record()
    with pytest.raises(ValueError, match="metrics"):
        ModelCard.from_run_record("x", {k: v for k, v in rec.items() if k != "metrics"})
    bad = json.loads(json.dumps(rec))
    bad["privacy"]["epsilon"] = None
    with pytest.raises(ValueError, match="accountant's epsilon"):
        ModelCard.from_run_record("x", bad)
    bad = json.loads(json.dumps(rec))
    del bad["privacy"]["sampling_probability"]
    with pytest.raises(ValueError, match="sampling_probability"):
        ModelCard.from_run_record("x", bad)


def test_card_does_not_alias_the_record():
    rec = H.run_record()
    card = ModelCard.from_run_record("x", rec)
    rec["privacy"]["epsilon"] = 123.0
    assert card.to_json()["privacy"]["epsilon"] != 123.0


def test_card_states_the_training_precision():
    """A bf16 run's card says so; a record from before the option (no ``precision``) ran float32."""
    rec = H.run_record()
    old = dict(rec, config={k: v for k, v in rec["config"].items() if k != "precision"})
    assert table_rows(ModelCard.from_run_record("x", old).to_markdown())["precision"] == "float32"
    bf16 = dict(rec, config=dict(rec["config"], precision="bf16"))
    card = ModelCard.from_run_record("x", bf16)
    assert card.to_json()["training"]["precision"] == "bf16"
    assert table_rows(card.to_markdown())["precision"].startswith("bf16 (Keras mixed_bfloat16: bfloat16 forward")


def _tuned_record_without_evaluations():
    """A record as dp_zoo.tune publishes it: headline epsilon = the tuning's total (above the run's own
    epsilon at its last step), and no evaluation during training (eval_every 0)."""
    rec = H.run_record()
    for h in rec["history"]:
        h.update(loss=None, eval_accuracy=None, eval_accuracy_ema=None)
    rec["config"]["eval_every"] = 0
    p = rec["privacy"]
    p["accountant"], p["epsilon_pld"] = "rdp", None
    p["epsilon"] = p["epsilon_rdp"] = 2.5 * rec["history"][-1]["epsilon"]
    rec.setdefault("operational", {})["wall_time_s"] = None  # a tuning publishes no timing
    p["tuning"] = {
        "method": "Papernot & Steinke 2022 (ICLR), random number of trials, release the best (arXiv 2110.03620)",
        "trial_distribution": {"kind": "poisson", "mean": 3.0, "zero_truncated": True, "expected_trials": 3.16},
        "number_of_trials": "secret: drawn with OS entropy and never published",
        "search_space_source": "a public source (test)",
        "grid": [{"lr": 0.5, "steps": 6}, {"lr": 2.0, "steps": 6}],
        "runs": [{"noise_multiplier": p["noise_multiplier"], "sampling_probability": p["sampling_probability"],
                  "steps": 6, "epsilon": 1.2}],
        "per_trial_epsilon": 1.234567890123, "total_epsilon": p["epsilon"], "accountant": "rdp",
        "score": {"mechanism": "noisy count", "noise_std": 10.0, "validation_size": 300,
                  "noisy_accuracy": 0.8521758617111213},
        "selected": {"lr": 2.0, "steps": 6}, "selected_trial_epsilon": {"pld": 1.0, "rdp": 1.1},
    }
    return rec


def _text(html_page):
    body = html_page.split("<body>", 1)[1]
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<img[^>]*>", "", body)))


def test_card_html_is_a_page_with_tables_and_rounded_figures(tmp_path):
    """card.html: real tables, not the Markdown in a <pre>; no None, no Python dict, no 16-digit floats; an
    epsilon rounded up; the exact value kept as a tooltip; the plots that have data only."""
    rec = _tuned_record_without_evaluations()
    card = ModelCard.from_run_record("wrn_digits_eps8", rec)
    files = card.write(str(tmp_path), zoo_points=[])
    page = (tmp_path / "card.html").read_text()
    text = _text(page)
    assert page.count("<table>") == 3 and "| quantity |" not in page and "<pre><code>import dp_zoo" in page
    assert "None" not in text and "{'" not in text and not re.search(r"\d\.\d{8,}", text), text
    p = rec["privacy"]
    assert f"<td title='{p['epsilon']}'>{fmt_eps(p['epsilon'])}</td>" in page  # rounded up, exact on hover
    assert float(fmt_eps(p["epsilon"])) >= p["epsilon"]
    assert "lr=2.0, steps=6 / 0.8522" in text and "arXiv 2110.03620" in text
    assert "1,437" in text  # N
    # No evaluation during training: no accuracy-vs-step plot, in the files, the page or the README.
    assert card_html.PLOT_FILES["accuracy"] not in files and not (tmp_path / card_html.PLOT_FILES["accuracy"]).exists()
    assert page.count("<img") == 2 and "accuracy vs step" not in page
    assert card_html.PLOT_FILES["accuracy"] not in (tmp_path / "README.md").read_text()
    assert card_html.PLOT_FILES["epsilon"] in files and card_html.PLOT_FILES["zoo"] in files


def test_epsilon_plot_shows_the_headline_epsilon_and_labels_the_run_curve():
    """A tuned card's headline is the tuning's total: the plot draws it, and calls the run's own curve what it is."""
    rec = _tuned_record_without_evaluations()
    card = ModelCard.from_run_record("wrn_digits_eps8", rec)
    (curve_label, steps, eps, _), (line_label, _, line, style) = card_html.epsilon_lines(card)
    assert curve_label == "this training run alone" and eps[-1] < rec["privacy"]["epsilon"]
    assert style == "line" and line[0] == ceil_sig(rec["privacy"]["epsilon"])
    assert line_label == f"total over the tuning: {fmt_eps(rec['privacy']['epsilon'])} (headline)"
    assert fmt_eps(rec["privacy"]["epsilon"]) in card.headline()
    # Untuned: the headline epsilon is the run's, and the curve ends at it (rounded up).
    plain = ModelCard.from_run_record("x", H.run_record())
    (label, _, eps, _), (line_label, _, line, _) = card_html.epsilon_lines(plain)
    assert label == "spent by this run" and line_label.startswith("the card's: ")
    assert eps[-1] <= line[0] == ceil_sig(plain.privacy["epsilon"])
    # A non-private baseline has no epsilon plot at all.
    assert "epsilon" not in card_html.plot_keys(ModelCard.from_run_record("b", H.run_record(private=False)))
