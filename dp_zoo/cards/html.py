"""A model card's plots (PNG) and ``card.html``, the standalone page that embeds them.

The page lays out the same rows as the card's README.md (``markdown``),
as HTML tables and lists, with figures rounded for reading: an epsilon is
rounded *up* to 4 significant digits (``model_card.fmt_eps``), other decimals
to 4 significant digits; each rounded cell carries the record's exact value
as its tooltip, and card.json keeps every exact value. A row with nothing
recorded (None) is left out. Only plots with data are drawn.
"""

import base64
import html
import io
import math
import re

from dp_zoo.cards import markdown as card_markdown
from dp_zoo.cards.markdown import PLOT_FILES, PLOT_TITLES, ceil_sig, fmt_eps  # noqa: F401  (PLOT_FILES: API)


def plot_keys(card):
    """The plots ``card`` has data for, in ``PLOT_FILES`` order.

    The epsilon plot needs a private run's recorded epsilons; the accuracy
    plot needs evaluations during training; the privacy-utility plot always
    has at least this model.
    """
    hist = [h for h in card.record["history"] if h.get("step") is not None]
    keys = []
    if card.privacy["epsilon"] is not None and any(h.get("epsilon") is not None for h in hist):
        keys.append("epsilon")
    if any(h.get(k) is not None for h in hist for k in ("eval_accuracy", "eval_accuracy_ema")):
        keys.append("accuracy")
    keys.append("zoo")
    return keys


def plots(card, zoo_points=None):
    """Renders the plots of ``card`` (a ``ModelCard``) that have data (``plot_keys``) as PNG bytes.

    Args:
      card: the model card.
      zoo_points: optional list of dicts ``{"name", "epsilon", "accuracy",
        "source"}`` (epsilon None for a non-private baseline; source
        "measured": a published zoo model's card, or "paper": a
        publication's figure) for the privacy-utility curve. This card's own
        point is added.

    Returns:
      dict key -> (title, png bytes); keys from ``plot_keys(card)``.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display here or on a server
    import matplotlib.pyplot as plt

    hist = [h for h in card.record["history"] if h.get("step") is not None]
    draw = {
        "epsilon": lambda: _epsilon_plot(plt, card, hist),
        "accuracy": lambda: _accuracy_plot(plt, hist),
        "zoo": lambda: _zoo_plot(plt, card, zoo_points),
    }
    return {k: (PLOT_TITLES[k], draw[k]()) for k in plot_keys(card)}


def _png(plt, fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def epsilon_lines(card):
    """What the epsilon plot draws: ``[(label, steps, epsilons, style)]``.

    The epsilon recorded during training, and the card's epsilon (the
    headline's, rounded up as there) as a horizontal line. They differ where
    the card's epsilon covers more than this training run: after a private
    hyper-parameter search the headline is the search's total, so each line
    is labelled with what it is.
    """
    p = card.privacy
    hist = [h for h in card.record["history"] if h.get("step") is not None and h.get("epsilon") is not None]
    steps = [h["step"] for h in hist]
    tuned = bool(p.get("tuning"))
    what = "total over the tuning" if tuned else "the card's"
    return [
        ("this training run alone" if tuned else "spent by this run", steps, [h["epsilon"] for h in hist], "curve"),
        (f"{what}: {fmt_eps(p['epsilon'])} (headline)", [0, max(steps)], [ceil_sig(p["epsilon"])] * 2, "line"),
    ]


def _epsilon_plot(plt, card, hist):
    p = card.privacy
    fig, ax = plt.subplots(figsize=(4.5, 3))
    for label, xs, ys, style in epsilon_lines(card):
        if style == "curve":
            ax.plot(xs, ys, marker=".", label=label)
        else:
            ax.axhline(ys[0], color="r", ls="--", label=label)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("step")
    ax.set_ylabel("epsilon")
    ax.set_title(f"{p['accountant'].upper()} accountant, delta = {p['delta']:g}")
    ax.legend(fontsize=7, loc="lower right")
    return _png(plt, fig)


def _accuracy_plot(plt, hist):
    fig, ax = plt.subplots(figsize=(4.5, 3))
    for key, label in (("eval_accuracy", "last"), ("eval_accuracy_ema", "EMA")):
        pts = [(h["step"], h[key]) for h in hist if h.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker=".", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("eval accuracy")
    ax.legend(fontsize=7)
    return _png(plt, fig)


# "measured": the zoo's registered models when this card was written (a later card may replace them).
_SOURCE_LABELS = {"measured": "zoo models when this card was made", "paper": "paper figures (their setups)"}


def _zoo_plot(plt, card, zoo_points):
    """Test accuracy against epsilon: zoo models' cards and paper points, baselines as lines, this card starred."""
    eps = card.privacy["epsilon"]
    acc, _ = card.accuracy()
    points = [pt for pt in (zoo_points or []) if pt.get("name") != card.name]
    fig, ax = plt.subplots(figsize=(4.5, 3))
    for source, marker in (("measured", "o"), ("paper", "s")):
        pts = sorted((pt["epsilon"], pt["accuracy"]) for pt in points
                     if pt.get("source", "measured") == source and pt["epsilon"] is not None
                     and pt["accuracy"] is not None)
        if pts:
            ax.plot(*zip(*pts), marker=marker, label=_SOURCE_LABELS[source])
    for pt in points:
        if pt["epsilon"] is None and pt["accuracy"] is not None:
            ax.axhline(pt["accuracy"], color="gray", ls="--", label=f"non-private ({pt['name']})")
    if eps is not None:
        ax.plot([eps], [acc], "r*", ms=12, label="this model")
    else:  # a baseline has no epsilon: a line, not a point at epsilon 0
        ax.axhline(acc, color="r", ls=":", label="this model (non-private)")
    ax.set_xlabel("epsilon")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7)
    return _png(plt, fig)


# -- the page ----------------------------------------------------------------------


def _number(v, *, epsilon=False):
    """A number for reading: ints with thousands separators, decimals to 4 significant digits (an epsilon up)."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if not math.isfinite(v):
        return str(v)
    if epsilon:
        return fmt_eps(v)
    if v == int(v) and abs(v) < 1e15:
        return f"{int(v):,}"
    return f"{v:.4g}"


def _value(v, *, epsilon=False):
    """The text of a value: numbers rounded (``_number``), lists and dicts spelled out, never a Python repr."""
    if isinstance(v, (bool, int, float)):
        return _number(v, epsilon=epsilon)
    if isinstance(v, dict):
        return ", ".join(f"{k}={_value(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(_value(x) for x in v)
    return str(v)


# A computed decimal inside a composed string ("lr=2.0, steps=60 / 0.8521758617111213"); shorter ones
# (a version, "arXiv 2110.03620") are text and stay as written.
_LONG_DECIMAL = re.compile(r"(?<![\w.])\d+\.\d{8,}(?:e-?\d+)?(?![\w.])")


def _rounded(v, text):
    """Whether ``text`` shows ``v`` with less precision than the record has."""
    if isinstance(v, float) and math.isfinite(v):
        return float(text.replace(",", "")) != v
    return isinstance(v, str) and text != v


# A Python dict literal inside a composed string ("{'lr': 2.0, 'steps': 60} / 0.85"): spelled "lr=2.0, steps=60".
_DICT_LITERAL = re.compile(r"\{('[^'{}]*': [^{}]*)\}")


def _spell_dicts(text):
    return _DICT_LITERAL.sub(lambda m: re.sub(r"'([^']*)': ", r"\1=", m.group(1)), text)


def _cell(quantity, v):
    """``<td>`` of a value; a rounded number keeps the exact one as its tooltip."""
    is_eps = "epsilon" in quantity.lower()
    text = _value(v, epsilon=is_eps)
    if isinstance(v, str):
        text = _LONG_DECIMAL.sub(lambda m: _number(float(m.group()), epsilon=is_eps), _spell_dicts(v))
    title = f" title='{html.escape(str(v), quote=True)}'" if _rounded(v, text) else ""
    return f"<td{title}>{_inline(text)}</td>"


def _inline(text):
    """Escaped text with Markdown's `code` spans as <code>."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _table(rows, head=("quantity", "value")):
    body = "".join(f"<tr><th scope='row'>{_inline(k)}</th>{_cell(k, v)}</tr>" for k, v in rows if v is not None)
    return f"<table><thead><tr><th>{head[0]}</th><th>{head[1]}</th></tr></thead><tbody>{body}</tbody></table>"


def _list(items):
    return "<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>"


def _use(j):
    shape = j["model"]["input_shape"]
    name = j["name"]
    code = (f"import dp_zoo\nmodel = dp_zoo.load({name!r})   # model.card holds this card\n"
            f"logits = model.predict(images)   # uint8 (or 0..255 float) [N, {shape[0]}, {shape[1]}, {shape[2]}]")
    return (f"<pre><code>{html.escape(code)}</code></pre>"
            "<p>The loaded Keras model takes pixels and normalises them inside; it returns logits "
            "(<code>keras.ops.softmax</code> gives probabilities). "
            "<code>dp_zoo.load(name, include_preprocessing=False)</code> is the bare network (normalised input).</p>"
            f"<p>Serving: <code>saved_model/1/</code> (TF Serving layout), signature <code>serving_default</code>: "
            f"uint8 images <code>[N, {shape[0]}, {shape[1]}, {shape[2]}]</code> &rarr; <code>probabilities</code>, "
            "<code>logits</code>.</p>")


_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:62em;margin:2em auto;padding:0 1em;line-height:1.45;color:#222}"
    ".headline{font-size:1.15em;font-weight:bold;padding:.6em .8em;border-left:6px solid #393;background:#f3faf3}"
    ".headline.warn{border-left-color:#c33;background:#fee}"
    "table{border-collapse:collapse;margin:.5em 0 1em}th,td{border:1px solid #ccc;padding:.25em .6em;"
    "text-align:left;vertical-align:top}thead th{background:#f0f0f0}tbody th{font-weight:normal;color:#444}"
    "td[title]{text-decoration:underline dotted #999}code{background:#f4f4f4;padding:0 .2em}"
    "pre{background:#f4f4f4;padding:.8em;overflow-x:auto}pre code{padding:0;background:none}"
    "figure{display:inline-block;margin:.5em 1em .5em 0}"
    "figcaption{font-size:.9em;color:#555}.note{color:#555;font-size:.9em}"
)


def render(card, plots):
    """card.html of ``card``: the headline, then the card's sections as tables and lists, the plots embedded.

    Args:
      card: the model card.
      plots: ``plots(card, ...)``'s result.
    """
    j = card.to_json()
    figs = "".join(
        f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,'
        f'{base64.b64encode(data).decode()}"><figcaption>{html.escape(title)}</figcaption></figure>'
        for title, data in plots.values()
    )
    warn = " warn" if (card.is_simulation or not card.privacy["private"]) else ""
    nominal = j["privacy"].get("nominal_epsilon")
    note = (f"<p class='headline warn'>Not a guarantee: had this run been private, the accountant's epsilon for its "
            f"configuration would be {_value(nominal.get('pld'), epsilon=True)} (PLD) / "
            f"{_value(nominal.get('rdp'), epsilon=True)} (RDP).</p>") if nominal else ""
    sections = [
        ("Privacy guarantee", _table(card_markdown.privacy_rows(j["privacy"], j["audit"], card.is_simulation))),
        ("Results", f"<p>{_inline(card_markdown.results_intro(j))}</p>"
                    + _table(card_markdown.results_rows(j), head=("weights", "accuracy"))
                    + f"<p>Published weights: {html.escape(j['training']['published_weights'] or 'last')}.</p>"),
        ("Training", _table(card_markdown.training_rows(j))),
        ("Data", _list(card_markdown.data_items(j))),
        ("Software and hardware", _list(card_markdown.software_items(j))),
        ("Scope of the guarantee", f"<p>{html.escape(j['scope'])}</p>"),
        ("Plots", figs),
        ("Use", _use(j)),
    ]
    body = "".join(f"<h2>{html.escape(h)}</h2>{content}" for h, content in sections)
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(card.name)}: dp_zoo model card</title><style>{_STYLE}</style></head><body>"
        f"<p class='headline{warn}'>{html.escape(card.headline())}</p>"
        f"<h1>{html.escape(card.name)}</h1>{note}{body}"
        "<p class='note'>Figures are rounded for reading (an epsilon up, never down); hover a rounded value for "
        "the record's exact one, which card.json and README.md keep.</p></body></html>"
    )
