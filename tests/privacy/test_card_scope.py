"""Items 10 and 11: the card says what epsilon covers and what not, and points at the threat model."""

import os

from dp_zoo.cards import model_card

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_scope_names_what_the_guarantee_does_not_cover():
    scope = model_card.SCOPE.lower()
    assert "not covered" in scope
    for what in ("hyper-parameter", "other models released from the same data set", "audit"):
        assert what in scope, what


def test_every_card_links_the_threat_model(tmp_path):
    from tests._zoo_helpers import run_record

    card = model_card.ModelCard.from_run_record("x", run_record())
    assert "docs/privacy.md" in card.to_markdown()
    assert "docs/privacy.md" in card.to_json()["threat_model"]
    assert os.path.exists(os.path.join(REPO, "docs", "privacy.md"))


def test_readme_states_how_noise_is_drawn_and_links_the_threat_model():
    readme = open(os.path.join(REPO, "README.md")).read()
    assert "noise is drawn from OS entropy" not in readme
    assert "Philox" in readme and "docs/privacy.md" in readme
