"""A model card's plots (PNG) and ``card.html``, the standalone page that embeds them."""

import base64
import html
import io

# Where ``ModelCard.write`` puts each plot, relative to the card's directory.
PLOT_FILES = {
    "epsilon": "plots/epsilon_vs_step.png",
    "accuracy": "plots/accuracy_vs_step.png",
    "zoo": "plots/privacy_utility.png",
}


def plots(card, zoo_points=None):
    """Renders the plots of ``card`` (a ``ModelCard``) as PNG bytes.

    Args:
      card: the model card.
      zoo_points: optional list of dicts ``{"name", "epsilon", "accuracy",
        "source"}`` (epsilon None for a non-private baseline; source
        "measured" or "paper") for the privacy-utility curve. This card's
        own point is added.

    Returns:
      dict key -> (title, png bytes); keys from ``PLOT_FILES``.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display here or on a server
    import matplotlib.pyplot as plt

    hist = [h for h in card.record["history"] if h.get("step") is not None]
    return {
        "epsilon": ("epsilon spent vs step", _epsilon_plot(plt, hist, card.privacy["delta"])),
        "accuracy": ("accuracy vs step", _accuracy_plot(plt, hist)),
        "zoo": ("privacy-utility curve of the zoo", _zoo_plot(plt, card, zoo_points)),
    }


def _png(plt, fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _epsilon_plot(plt, hist, delta):
    fig, ax = plt.subplots(figsize=(4, 3))
    pts = [(h["step"], h["epsilon"]) for h in hist if h.get("epsilon") is not None]
    if pts:
        ax.plot(*zip(*pts), marker=".")
    else:
        ax.text(0.5, 0.5, "no privacy loss recorded\n(non-private run)", ha="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("epsilon spent")
    ax.set_title(f"delta = {delta:g}")
    return _png(plt, fig)


def _accuracy_plot(plt, hist):
    fig, ax = plt.subplots(figsize=(4, 3))
    for key, label in (("eval_accuracy", "last"), ("eval_accuracy_ema", "EMA")):
        pts = [(h["step"], h[key]) for h in hist if h.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker=".", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("eval accuracy")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return _png(plt, fig)


def _zoo_plot(plt, card, zoo_points):
    """Test accuracy against epsilon: measured and paper points, baselines as lines, this card starred."""
    eps = card.privacy["epsilon"]
    acc, _ = card.accuracy()
    points = list(zoo_points or [])
    if eps is not None and not any(pt.get("name") == card.name for pt in points):
        points.append({"name": card.name, "epsilon": eps, "accuracy": acc, "source": "measured"})
    fig, ax = plt.subplots(figsize=(4, 3))
    for source, marker in (("measured", "o"), ("paper", "s")):
        pts = sorted((pt["epsilon"], pt["accuracy"]) for pt in points
                     if pt.get("source", "measured") == source and pt["epsilon"] is not None
                     and pt["accuracy"] is not None)
        if pts:
            ax.plot(*zip(*pts), marker=marker, label=f"{source}")
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


def render(card, plots):
    """card.html of ``card``: headline, plots embedded as PNG data URIs, then the Markdown body.

    Args:
      card: the model card.
      plots: ``plots(card, ...)``'s result.
    """
    body = card.to_markdown().split("\n---\n", 1)[-1]
    figs = "".join(
        f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,'
        f'{base64.b64encode(data).decode()}"><figcaption>{html.escape(title)}</figcaption></figure>'
        for title, data in plots.values()
    )
    warn = " warn" if (card.is_simulation or not card.privacy["private"]) else ""
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(card.name)}: dp_zoo model card</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}"
        "pre{background:#f4f4f4;padding:1em;white-space:pre-wrap}"
        ".headline{font-size:1.2em;font-weight:bold;padding:.5em;border-left:6px solid #393}"
        ".headline.warn{border-left-color:#c33;background:#fee}"
        "figure{display:inline-block;margin:1em}</style></head><body>"
        f"<p class='headline{warn}'>{html.escape(card.headline())}</p>"
        f"<h1>{html.escape(card.name)}</h1>{figs}"
        f"<pre>{html.escape(body)}</pre></body></html>"
    )
