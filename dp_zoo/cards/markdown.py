"""A model card's README.md: YAML metadata header, headline, then one section per topic.

Every value is laid out from the card's ``card.json`` dict (``ModelCard.to_json``),
so the Markdown states nothing the JSON does not.
"""

import json
import math

# Where ``ModelCard.write`` puts each plot, relative to the card's directory.
PLOT_FILES = {
    "epsilon": "plots/epsilon_vs_step.png",
    "accuracy": "plots/accuracy_vs_step.png",
    "zoo": "plots/privacy_utility.png",
}
PLOT_TITLES = {
    "epsilon": "epsilon spent vs step",
    "accuracy": "accuracy vs step",
    "zoo": "privacy-utility curve of the zoo",
}


def ceil_sig(x, digits=4):
    """``x`` rounded *up* to ``digits`` significant digits (for display).

    Rounding a privacy loss down would claim a stronger guarantee than the
    accountant gave; rounding up keeps the statement true.
    """
    if x is None or x == 0 or not math.isfinite(x):
        return x
    scale = 10 ** (digits - 1 - math.floor(math.log10(abs(x))))
    # The small tolerance stops 2.0000000000000004-style float noise from
    # bumping an exactly representable value up a digit.
    return math.ceil(x * scale - 1e-9) / scale


def fmt_eps(x):
    """Headline formatting of an epsilon: rounded up, at most 4 significant digits."""
    return f"{ceil_sig(x):g}"


def _yaml_scalar(v):
    """A JSON scalar that YAML 1.1 readers also parse as the same value.

    YAML 1.1 (PyYAML, the Hugging Face hub) reads ``1e-05`` as a string; its
    float syntax needs a dot in the mantissa, so ``1.0e-05`` is written.
    """
    s = json.dumps(v)
    if isinstance(v, float) and "e" in s and "." not in s.split("e")[0]:
        mant, exp = s.split("e")
        s = f"{mant}.0e{exp}"
    return s


def _yaml_header(card):
    """Hugging Face / Kaggle Models metadata (a YAML subset written by hand).

    Values are JSON scalars, which are valid YAML, so no YAML library is
    needed to write or read them.
    """
    p, d = card.privacy, card.record["data"]
    acc, which = card.accuracy()
    j = _yaml_scalar
    lines = [
        "---",
        "library_name: keras",
        "pipeline_tag: image-classification",
        "tags:",
        "- differential-privacy",
        "- dp-sgd",
        "- image-classification",
        "- dp_zoo",
    ]
    if card.is_simulation:
        lines.append("- tan-simulation-not-private")
    lines += [
        "datasets:",
        f"- {j(d['dataset'])}",
        "differential_privacy:",
        f"  private: {j(bool(p['private']) and not card.is_simulation)}",
        f"  epsilon: {j(p['epsilon'])}",
        f"  delta: {j(p['delta'])}",
        f"  accountant: {j(p['accountant'])}",
        f"  adjacency: {j(p['adjacency'])}",
        f"  privacy_unit: {j(p['privacy_unit'])}",
        f"  tan_simulation: {j(card.is_simulation)}",
        "model-index:",
        f"- name: {j(card.name)}",
        "  results:",
        "  - task:",
        "      type: image-classification",
        "    dataset:",
        f"      name: {j(d['dataset'])}",
        f"      type: {j(d['dataset'])}",
        f"      split: {j(d['test_split'])}",
        "    metrics:",
        "    - type: accuracy",
        f"      value: {j(acc)}",
        f"      name: {j('test accuracy (' + which + ' weights)')}",
        "---",
    ]
    return lines


def render(card, plot_keys=tuple(PLOT_FILES)):
    """README.md of ``card`` (a ``ModelCard``); ``plot_keys``: the plots written beside it (``PLOT_FILES``)."""
    j = card.to_json()
    lines = (_yaml_header(card) + _title(j) + _privacy_section(j, card.is_simulation) + _results_section(j)
             + _training_section(j) + _data_section(j) + _software_section(j) + _scope_section(j)
             + _plots_section(plot_keys) + _use_section(j))
    return "\n".join(lines)


# Each section below is a list of lines that starts with its heading and ends
# with a blank line.


def _title(j):
    lines = ["", f"# {j['name']}", "", f"**{j['headline']}**", ""]
    n = j["privacy"].get("nominal_epsilon")
    if n:
        lines += [f"> Not a guarantee: had this run been private, the accountant's epsilon for its "
                  f"configuration would be {n.get('pld')} (PLD) / {n.get('rdp')} (RDP).", ""]
    return lines


def privacy_rows(p, audit, is_simulation):
    """(quantity, value) rows of the privacy table: the accountant's inputs and outputs, then extras."""
    rows = [
        ("epsilon (reported accountant)", p["epsilon"]),
        ("epsilon (PLD)", p.get("epsilon_pld")),
        ("epsilon (RDP)", p.get("epsilon_rdp")),
        ("delta", p["delta"]),
        ("accountant", f"{p['accountant']} (dp-accounting {p.get('dp_accounting_version')})"),
        ("adjacency / privacy unit", f"{p['adjacency']} / one {p['privacy_unit']}"),
        ("sampling", p["sampling"]),
        ("sampling probability q", p["sampling_probability"]),
        ("dataset size N", p["dataset_size"]),
        ("expected batch size qN", p["expected_batch_size"]),
        ("noise multiplier sigma", p["noise_multiplier"]),
        ("clipping norm C", p["l2_clip"]),
        ("steps", p["steps"]),
    ]
    if p.get("clipping"):
        rows.append(("clipping rule (noise std = sigma x its sensitivity)", _clipping_text(p["clipping"])))
    if p.get("randomness"):
        rows.append(("batch selection and noise", p["randomness"]))
    if p.get("accountant_note"):
        rows.append(("accountant note", p["accountant_note"]))
    if p.get("prior_runs"):
        rows.append(("composed with the initial checkpoint's DP-SGD runs on this data set", "; ".join(
            f"sigma={r['noise_multiplier']}, q={r['sampling_probability']}, {r['steps']} steps"
            for r in p["prior_runs"])))
    if p.get("nonfinite_steps_skipped"):
        rows.append(("steps skipped for non-finite gradients (still accounted)", p["nonfinite_steps_skipped"]))
    if p.get("target_epsilon") is not None:
        rows.append(("target epsilon (budget the run was stopped at)", p["target_epsilon"]))
    if p.get("tuning"):
        rows += _tuning_rows(p["tuning"])
    if audit:
        rows.append(("empirical audit: epsilon lower bound", audit.get("epsilon_lower_bound")))
    if is_simulation:
        ts = p["tan_simulation"]
        rows += [
            ("TAN simulation factor", ts["factor"]),
            ("epsilon of the simulated full run (NOT this model's)", ts["epsilon_full_run"]),
            ("sigma of the full run", ts["noise_multiplier_full_run"]),
            ("batch size of the full run", ts["batch_size_full_run"]),
        ]
    return rows


def _tuning_rows(t):
    """Rows for ``privacy.tuning``: the epsilon above is the tuning's total. The number of trials
    is secret and has no row; its distribution and E[K] are public."""
    dist = t["trial_distribution"]
    params = ", ".join(f"{k}={v}" for k, v in dist.items() if k not in ("kind", "expected_trials"))
    return [
        ("hyper-parameter tuning (epsilon above is the total)", t["method"]),
        ("number of trials K", f"secret, never published; drawn from {dist['kind']} ({params})"),
        ("expected number of trials E[K]", dist["expected_trials"]),
        ("base configuration and grid chosen from", t["search_space_source"]),
        ("grid (each trial draws a point uniformly)", "; ".join(
            ", ".join(f"{k}={v}" for k, v in point.items()) for point in t["grid"])),
        ("each point's run: sigma, q, steps, epsilon (training + score)", "; ".join(
            f"sigma={r['noise_multiplier']:.6g}, q={r['sampling_probability']:.6g}, {r['steps']} steps, "
            f"epsilon={r['epsilon']:.6g}" for r in t["runs"])),
        ("epsilon of one trial (RDP, training + score; max over the points)", t["per_trial_epsilon"]),
        ("selection score", f"{t['score']['mechanism']}; noise std {t['score']['noise_std']}, "
                            f"{t['score']['validation_size']} validation examples"),
        ("selected point / its noisy validation accuracy", f"{t['selected']} / {t['score']['noisy_accuracy']}"),
    ]


def _privacy_section(j, is_simulation):
    rows = privacy_rows(j["privacy"], j["audit"], is_simulation)
    return ["## Privacy guarantee", "", "| quantity | value |", "|---|---|",
            *[f"| {k} | {v} |" for k, v in rows], ""]


def results_intro(j):
    """The sentence above the accuracy table."""
    m, d = j["metrics"], j["data"]
    return (f"Accuracy on the held-out `{m.get('evaluated_on', 'test')}` split (`{d['test_split']}`, "
            f"{d['test_size']} examples):")


def results_rows(j):
    """(weights, accuracy) rows; None where those weights were not kept."""
    m = j["metrics"]
    return [("last", m["test_accuracy_last"]), ("EMA", m.get("test_accuracy_ema")),
            ("Polyak", m.get("test_accuracy_polyak"))]


def _results_section(j):
    return [
        "## Results",
        "",
        results_intro(j),
        "",
        "| weights | accuracy |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in results_rows(j)],
        "",
        f"Published weights: {j['training']['published_weights'] or 'last'}.",
        "",
    ]


def training_rows(j):
    """(quantity, value) rows of the training table."""
    mod, t = j["model"], j["training"]
    return [
        ("architecture", mod["architecture"]),
        ("parameters", mod["num_params"]),
        ("input shape (H, W, C)", mod["input_shape"]),
        ("classes", mod["num_classes"]),
        ("trained variables", _trained(mod.get("trained"), j.get("config") or {})),
        ("logical batch size", t["logical_batch_size"]),
        ("physical batch size", t["physical_batch_size"]),
        ("augmentation multiplicity K", t["augmult_k"]),
        ("augmentation", t["augmentation"]),
        ("EMA decay", t["ema_decay"]),
        ("precision", _precision(t.get("precision", "float32"))),
        ("optimizer", t["optimizer"]["name"]),
        ("learning rate", t["optimizer"]["learning_rate"]),
        ("steps completed", t["steps_completed"]),
        ("steps planned", t["steps_planned"]),
        ("seed", t["seed"]),
        ("wall time (s; operational, not covered by the guarantee)", _wall_time(j)),
    ]


def _wall_time(j):
    t = (j.get("operational") or {}).get("wall_time_s")
    return "not published (it grows with the secret batch sizes)" if t is None else t


def _training_section(j):
    return ["## Training", "", "| quantity | value |", "|---|---|",
            *[f"| {k} | {v} |" for k, v in training_rows(j)], ""]


def _trained(trained, config):
    """What trained (records before fine-tuning modes trained every variable)."""
    if not trained:
        return "all"
    spec = trained["spec"]
    # A regex may hold "|", which would split the table's cell.
    what = {"all": "all", "head": f"the classifier (layer `{trained['patterns'][0]}`)"}.get(
        spec, "variables matching `" + spec.replace("|", "\\|") + "`")
    text = (f"{what}: {trained['variables']} of {trained['variables_total']} variables, "
            f"{trained['params']} of {trained['params_total']} parameters")
    if config.get("linear_probe"):
        text += "; linear probe (classifier trained on the frozen backbone's cached features)"
    return text


def _precision(name):
    """The card's words for a training precision (``TrainConfig.precision``)."""
    if name == "bf16":
        return ("bf16 (Keras mixed_bfloat16: bfloat16 forward/backward passes; float32 weights, per-example "
                "norms, clipping, noise and optimizer)")
    return name


def data_items(j):
    """The data section's list items (Markdown inline code in backticks)."""
    d, mod = j["data"], j["model"]
    init = f"{mod.get('init_checkpoint') or 'none (trained from scratch)'}"
    if mod.get("init"):
        init += f" ({mod['init']['detail']})"
    return [
        f"data set: {d['dataset']}",
        f"training split: `{d['train_split']}`, N = {d['train_size']}",
        f"test split: `{d['test_split']}`, {d['test_size']} examples",
        f"public pretraining data: {d.get('public_pretraining_data') or 'none'}",
        f"initial checkpoint: {init}",
        f"input normalization: mean {d['mean']}, std {d['std']} (of x/255; inside the SavedModel and the model "
        "dp_zoo.load returns)",
    ]


def _data_section(j):
    return ["## Data", "", *[f"- {item}" for item in data_items(j)], ""]


def software_items(j):
    """The software and hardware section's list items."""
    hw = j["hardware"]
    return [
        *[f"{k}: {v}" for k, v in sorted(j["software"].items())],
        f"platform: {hw.get('platform')}",
        f"devices: {', '.join(hw.get('devices') or [])}",
        f"replicas: {hw.get('num_replicas')}",
    ]


def _software_section(j):
    return ["## Software and hardware", "", *[f"- {item}" for item in software_items(j)], ""]


def _scope_section(j):
    return ["## Scope of the guarantee", "", j["scope"], ""]


def _plots_section(keys):
    return ["## Plots", "", *[f"![{PLOT_TITLES[k]}]({PLOT_FILES[k]})" for k in PLOT_FILES if k in keys], ""]


def _use_section(j):
    shape = j["model"]["input_shape"]
    return [
        "## Use",
        "",
        "```python",
        "import dp_zoo",
        f'model = dp_zoo.load("{j["name"]}")   # model.card holds this card',
        f"logits = model.predict(images)   # images: uint8 (or 0..255 float) [N, {shape[0]}, {shape[1]}, {shape[2]}]",
        "```",
        "",
        "The loaded Keras model takes pixels and normalises them inside (the mean/std under Data); it returns "
        "logits (`keras.ops.softmax` gives probabilities). `dp_zoo.load(name, include_preprocessing=False)` "
        "gives the bare network, whose input is the normalised image.",
        "",
        f"Serving: `saved_model/1/` (TF Serving layout), signature `serving_default`: uint8 images "
        f"`[N, {shape[0]}, {shape[1]}, {shape[2]}]` -> `probabilities`, `logits`.",
        "",
    ]


def _clipping_text(c):
    """``privacy.clipping`` in words: the mode, its parameters and its sensitivity."""
    params = {k: v for k, v in c.items() if k not in ("mode", "sensitivity")}
    said = ", ".join(f"{k} {v}" for k, v in params.items())
    return f"{c.get('mode')}{f' ({said})' if said else ''}; sensitivity {c.get('sensitivity')}"
