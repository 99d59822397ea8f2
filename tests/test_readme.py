"""README.md's first steps, run as a new user runs them (subprocesses, isolated DP_ZOO_HOME and cache)."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
# The one change to the README's command: 2 steps instead of 120, to keep the test short.
SHORTER = ["--steps", "2"]


def _fresh_machine_section():
    text = README.read_text()
    return text[text.index("## Fresh machine"):text.index("## A short tour")]


def _blocks(section, lang):
    return re.findall(rf"```{lang}\n(.*?)```", section, re.S)


def _run(argv, timeout):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


@pytest.mark.slow
def test_readme_first_steps_work_as_written():
    section = _fresh_machine_section()
    train = [ln.strip() for block in _blocks(section, "bash") for ln in block.splitlines()
             if ln.strip().startswith("python -m dp_zoo.train")]
    assert train == ["python -m dp_zoo.train"]
    python_blocks = _blocks(section, "python")
    assert len(python_blocks) == 1 and 'dp_zoo.load("wrn_digits_eps8")' in python_blocks[0]

    trained = _run([sys.executable, "-m", "dp_zoo.train", *SHORTER, "--noprogress"], timeout=900)
    assert trained.returncode == 0, trained.stderr[-3000:]
    # The README's next step, verbatim, right after the training: the shipped, registered model.
    snippet = python_blocks[0] + "\nassert model.card['artifact']['registered'] is True, model.card['artifact']\n"
    loaded = _run([sys.executable, "-c", snippet], timeout=600)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.startswith("(8, 1e-05)-differentially private"), loaded.stdout

    # The user's model is published outside the shipped entry's place, and the command says how to load it.
    m = re.search(r"dp_zoo\.load\('([^']+)'\)", trained.stdout)
    assert m, trained.stdout[-2000:]
    published = pathlib.Path(m.group(1))
    assert published.is_dir() and published.name.startswith("wrn_digits_eps8-")
    assert published.parent == pathlib.Path(os.environ["DP_ZOO_HOME"]) / "runs"

    # And the user's own model loads from the path the command printed.
    own = _run([sys.executable, "-c", f"import dp_zoo; m = dp_zoo.load({str(published)!r}); "
                "print(m.card['name'], m.card['artifact']['registered'], m.card['training']['steps_completed'])"],
               timeout=600)
    assert own.returncode == 0, own.stderr[-3000:]
    assert own.stdout.split() == ["wrn_digits_eps8", "False", "2"]


def test_publish_dir_that_would_shadow_a_shipped_entry_is_refused_before_training(tmp_path):
    from dp_zoo.jobs import publishing

    home = pathlib.Path(os.environ["DP_ZOO_HOME"])
    with pytest.raises(ValueError, match="would put your model where dp_zoo.load\\('wrn_digits_eps8'\\) looks"):
        publishing.check_publish_dir(str(home / "wrn_digits_eps8"))
    publishing.check_publish_dir(str(home / "runs" / "wrn_digits_eps8-x"))  # the default namespace
    publishing.check_publish_dir(str(tmp_path / "wrn_digits_eps8"))  # anywhere load() does not search
    publishing.check_publish_dir(str(home / "wrn16_4_cifar10_eps8"))  # no published artifact to shadow
    assert pathlib.Path(publishing.default_publish_dir("wrn_digits_eps8")).parent == home / "runs"
