"""The zoo: ``load``, ``card``, and registering an artifact (``listing``: ``list_models``).

A zoo entry is a training recipe (``dp_zoo/recipes/recipes.py``): its name, and
what the zoo says about it (architecture, dataset, privacy budget, the
published accuracy it reproduces, labelled as the paper's and never as ours),
come from that recipe. ``zoo_entries.json`` holds only what a recipe cannot
know: the SHA-256 of a published artifact's MANIFEST.json and an optional
remote location (``https://...`` / ``file://...`` ``.tar.gz`` with its
``archive_sha256``, or ``kaggle:<owner>/<model>/<framework>/<variation>``).
A new entry is one recipe plus ``python -m dp_zoo.zoo register <entry> <artifact_dir>``.

``load(name)`` looks for ``<name>/`` in, in order: ``$DP_ZOO_HOME``, the
repository's ``saved_models/``, the user cache (``$XDG_CACHE_HOME/dp_zoo``
or ``~/.cache/dp_zoo``), then downloads the remote artifact once into the
cache. Every artifact is verified file by file against its MANIFEST.json
(``manifest.verify``: only regular files inside the artifact, nothing
unlisted), and the manifest against the table's SHA-256 when the table has
one, before anything is loaded; its card must then be what its run record
gives and the record's epsilon what the accountant gives (``cards.check``,
recomputed once per run record and cached in ``<user cache>/epsilon_checks``).
An artifact the table has no checksum for (a model you
trained yourself with ``python -m dp_zoo.train``) loads with a warning and
``model.card["artifact"]["registered"] = False``.

Listing, verifying and registering need no TensorFlow; only ``load`` does.
``python -m dp_zoo.zoo`` (``dp_zoo/commands/zoo.py``) prints the table.
"""

import functools
import json
import os
import pathlib
import warnings

from dp_zoo import cli
from dp_zoo.cards import check as card_check
from dp_zoo.publish import download, manifest
from dp_zoo.recipes import epsilons as recipe_epsilons, recipes

TABLE_PATH = pathlib.Path(__file__).with_name("zoo_entries.json")
REPO_SAVED_MODELS = pathlib.Path(__file__).resolve().parents[2] / "saved_models"
TABLE_SCHEMA_VERSION = 2
# What a registration records; everything else about an entry is its recipe's.
REGISTRATION_KEYS = ("manifest_sha256", "remote", "archive_sha256")


class ArtifactNotPublishedError(LookupError):
    """A known entry whose weights are not available anywhere yet."""


def _read_table():
    with open(TABLE_PATH) as f:
        table = json.load(f)
    if table.get("schema_version") != TABLE_SCHEMA_VERSION:
        raise ValueError(f"{TABLE_PATH} has schema {table.get('schema_version')!r}, expected {TABLE_SCHEMA_VERSION}.")
    rows = table["entries"]
    orphans = sorted(set(rows) - set(recipes.RECIPES))
    if orphans:
        raise ValueError(f"{TABLE_PATH} registers {orphans}, which have no recipe in dp_zoo/recipes/recipes.py.")
    for name, row in rows.items():
        extra = sorted(set(row) - set(REGISTRATION_KEYS))
        if extra:
            raise ValueError(f"{TABLE_PATH}: {name!r} records {extra}; the table holds only {list(REGISTRATION_KEYS)}, "
                             "everything else comes from the entry's recipe.")
    return table


@functools.lru_cache(maxsize=1)
def _recipe_epsilons():
    return recipe_epsilons.load()


def recipe_facts(recipe):
    """What the zoo says about the entry a recipe produces, all of it from the recipe (see ``list_models``)."""
    c = recipe.config
    private = c.dp.enabled
    published = recipe.published_accuracy
    eps = _recipe_epsilons().get(recipe.name, {}) if private else {}
    return {
        "recipe": recipe.name,
        "architecture": c.model,
        "dataset": c.data.dataset,
        "private": private,
        "target_epsilon": c.dp.target_epsilon if private else None,
        "delta": c.dp.delta if private else None,
        "config_source": recipe.provenance,
        "config_label": recipe.provenance_label,
        "epsilon_rdp": eps.get("rdp"),
        "epsilon_pld": eps.get("pld"),
        "epsilon_note": eps.get("note") or None,
        "published_accuracy": published,
        "published_accuracy_source": recipe.accuracy_source if published is not None else None,
        "needs_accelerator": recipe.needs_accelerator,
    }


def entries():
    """The zoo: ``{name: entry dict}``, one entry per recipe.

    An entry holds its recipe's facts (``recipe_facts``) and its registration
    from the table (``REGISTRATION_KEYS``, None where nothing is registered).
    """
    rows = _read_table()["entries"]
    return {name: {**recipe_facts(r), **{k: rows.get(name, {}).get(k) for k in REGISTRATION_KEYS}}
            for name, r in recipes.RECIPES.items()}


def _entry(name):
    table = entries()
    if name not in table:
        raise ValueError(cli.unknown_name_message("zoo entry", name, sorted(table)) + " See dp_zoo.list_models().")
    return table[name]


def cache_dir():
    """The user cache directory for downloaded artifacts."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "dp_zoo"


def search_path():
    """Directories searched for ``<entry>/``, in order."""
    dirs = []
    if os.environ.get("DP_ZOO_HOME"):
        dirs.append(pathlib.Path(os.environ["DP_ZOO_HOME"]))
    dirs += [REPO_SAVED_MODELS, cache_dir()]
    return dirs


def user_runs_dir():
    """Where ``python -m dp_zoo.train`` / ``.tune`` publish a user's own models by default.

    ``$DP_ZOO_HOME/runs`` (else ``<user cache>/runs``): a namespace of its
    own, so a user's model never sits where ``load(<entry>)`` looks for a
    shipped entry (``<dir>/<entry>``), and never shadows it.
    """
    base = os.environ.get("DP_ZOO_HOME") or str(cache_dir())
    return pathlib.Path(base) / "runs"


def shadowed_entry(directory):
    """The registered entry a model published at ``directory`` would shadow in ``load``, else None.

    ``<search dir>/<entry>`` for an entry the table has a checksum or remote
    for: ``load(<entry>)`` would find the user's model there before (or
    instead of) the published one and refuse it.
    """
    d = pathlib.Path(os.path.abspath(directory))
    entry = entries().get(d.name)
    if entry is None or not (entry.get("manifest_sha256") or entry.get("remote")):
        return None
    parents = {pathlib.Path(os.path.abspath(b)) for b in search_path() if b != REPO_SAVED_MODELS}
    return d.name if d.parent in parents else None


def _check_against_table(directory, entry, name):
    """Verifies the files, then the manifest against the table; returns 'registered'."""
    got = manifest.verify(str(directory))
    want = entry.get("manifest_sha256")
    if want and got != want:
        raise ValueError(
            f"Checksum mismatch for {directory}/{manifest.FILENAME}: the zoo table expects {want[:16]}..., "
            f"found {got[:16]}.... This is not the published {name!r}; refusing to load it. If it is a "
            f"model of your own, move it out of {directory.parent} (it loads from anywhere with "
            "dp_zoo.load(PATH)); the published model then loads."
        )
    return bool(want)


def _not_published(name, entry):
    cmd = f"python -m dp_zoo.train --recipe {entry['recipe']}"
    where = ", ".join(str(d) for d in search_path())
    note = "  # needs an accelerator (GPU/TPU) and the data set" if entry.get("needs_accelerator") else ""
    return ArtifactNotPublishedError(
        f"The weights of zoo entry {name!r} are not published yet (searched {where}; no remote). "
        f"Produce them with:\n    {cmd}{note}\n"
        "which publishes into $DP_ZOO_HOME/runs/ (or the user cache's runs/) and prints the "
        "dp_zoo.load(PATH) that loads the model."
    )


def locate(name):
    """The verified local directory of ``name`` (downloading it if needed).

    Args:
      name: a zoo entry, or the path of an exported artifact directory.

    Returns:
      (directory, registered): ``registered`` is True when the manifest
      matched the zoo table's checksum.
    """
    # A zoo entry name wins over a same-named directory in the working
    # directory, so a stray ./<entry>/ never bypasses the table's checksum.
    if str(name) not in entries() and (os.sep in str(name) or os.path.isdir(str(name))):
        d = pathlib.Path(name)
        if not d.is_dir():
            raise FileNotFoundError(f"no artifact directory at {d}")
        manifest.verify(str(d))
        return d, False
    entry = _entry(name)
    for base in search_path():
        candidate = base / name
        if candidate.is_dir():
            return candidate, _check_against_table(candidate, entry, name)
    if entry.get("remote"):
        def check(root):
            _read_card(root, _check_against_table(root, entry, name))

        d = download.fetch(name, entry["remote"], cache_dir() / name, archive_sha256=entry.get("archive_sha256"),
                           check=check)
        return d, _check_against_table(d, entry, name)
    raise _not_published(name, entry)


def _read_json(directory, filename):
    """A verified artifact's JSON file; one line if it is missing or not JSON."""
    path = pathlib.Path(directory) / filename
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{directory} has no {filename}; it is not a complete dp_zoo artifact. "
                         "Re-download or re-export the model.") from None
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-download or re-export the model.") from None


def _read_card(directory, registered):
    """The card of a verified artifact, checked against its run record (``cards.check``), plus "artifact"."""
    c = _read_json(directory, "card.json")
    card_check.check(c, _read_json(directory, "run_record.json"), str(directory),
                     cache_dir=str(cache_dir() / card_check.CACHE_SUBDIR))
    c["artifact"] = {"path": str(directory), "registered": registered,
                     "manifest_sha256": manifest.sha256_file(pathlib.Path(directory) / manifest.FILENAME)}
    return c


def verified(name):
    """``(directory, card)`` of a zoo entry or artifact directory, verified as ``load`` verifies it
    (files against the MANIFEST and the zoo table, card against its run record and the accountant)."""
    directory, registered = locate(name)
    return directory, _read_card(directory, registered)


def card(name):
    """The card (``card.json`` as a dict, plus ``"artifact"``) of a published entry.

    Raises:
      ValueError: unknown name or failed verification.
      ArtifactNotPublishedError: the entry has no weights yet.
    """
    return verified(name)[1]


def load(name, *, include_preprocessing=True):
    """Loads a published private model with its card attached.

    Args:
      name: zoo entry, e.g. ``"wrn_digits_eps8"`` (see ``list_models()``),
        or the path of an exported artifact directory.
      include_preprocessing: True (the default): the model takes images as
        the card states them, pixels in 0..255 (uint8, or floats in that
        range) ``[N, H, W, C]``, and normalises them inside with the card's
        constant mean/std (``card["data"]``), as the SavedModel does. False:
        the bare network as trained, whose input is the normalised image
        (``dp_zoo.preprocessing.normalize``); what fine-tuning starts from.

    Returns:
      A ``keras.Model`` that returns **logits** ``[N, num_classes]`` (apply
      ``keras.ops.softmax`` for probabilities; the SavedModel under
      ``saved_model/1`` returns both), with ``model.card`` (the card.json
      dict). ``model.card["artifact"]["published_weights_sha256"]`` is the
      digest of the loaded network's weights, checked against the run
      record's; None for an artifact whose record predates that field
      (checked by its manifest only).

    Raises:
      ValueError: unknown name (lists close names), a missing, truncated,
        modified or unlisted file, or a path outside the artifact (named in
        the message); a card that is not what its run record gives, or a
        record whose epsilon the accountant does not give (``cards.check``);
        weights other than the ones the run record publishes.
      ArtifactNotPublishedError: a known entry without weights; the message
        gives the command that produces them.
    """
    import keras

    import dp_zoo.models  # noqa: F401  registers custom layers
    from dp_zoo.models.layers import with_pixel_input

    directory, card_ = verified(name)
    if not card_["artifact"]["registered"] and str(name) in entries():
        warnings.warn(
            f"{directory} is not the registered zoo artifact of {name!r} (the table has no checksum "
            "for it); its files match its own manifest. Loading it as a local model.",
            stacklevel=2,
        )
    # model.keras is the network as trained (normalised input); the registered
    # checksums cover that file, so the pixel input is added here, at load time.
    model = keras.models.load_model(directory / "model.keras")
    # The run record's digest covers the network as trained, so it is checked before any wrapping.
    card_["artifact"]["published_weights_sha256"] = _check_published_weights(model, directory)
    if include_preprocessing:
        model = with_pixel_input(model, card_["data"]["mean"], card_["data"]["std"])
    # Plain attribute: Keras would otherwise wrap the dict as tracked state.
    object.__setattr__(model, "card", card_)
    return model


def _check_published_weights(model, directory):
    """The digest of the loaded weights when the run record publishes one and they match; None for a
    record from before ``published_weights_sha256`` existed (its files are checked by the manifest only).

    Raises:
      ValueError: the loaded weights are not the ones the run record publishes.
    """
    from dp_zoo.cards.run_record import PUBLISHED_WEIGHTS_SHA256

    path = pathlib.Path(directory) / "run_record.json"
    if not path.exists():
        raise ValueError(f"{directory} has no run_record.json; it is not a complete dp_zoo artifact. Re-export it.")
    with open(path) as f:
        want = json.load(f).get(PUBLISHED_WEIGHTS_SHA256)
    if want is None:
        return None
    got = manifest.weights_sha256(model.get_weights())
    if got != want:
        raise ValueError(
            f"{directory}/model.keras does not hold the weights its run record publishes "
            f"({PUBLISHED_WEIGHTS_SHA256} {want[:16]}..., the model's {got[:16]}...); refusing to load it. "
            "Re-export the model with its own run record (python -m dp_zoo.export)."
        )
    return got


def register(name, directory, *, remote=None, archive_sha256=None):
    """Records a verified artifact of entry ``name`` in the zoo table.

    Writes the SHA-256 of the artifact's MANIFEST.json (and, if given, its
    remote location and archive checksum) into ``zoo_entries.json``.

    Returns:
      the recorded SHA-256.

    Raises:
      ValueError: ``name`` has no recipe, the artifact fails verification,
        or its card is another entry's.
    """
    if name not in recipes.RECIPES:
        raise ValueError(f"{name!r} is not a zoo entry: a zoo entry is a recipe; add one to "
                         "dp_zoo/recipes/recipes.py first.")
    table = _read_table()
    digest = manifest.verify(str(directory))
    c = _read_card(directory, False)
    if c.get("name") != name:
        raise ValueError(f"{directory} holds the card of {c.get('name')!r}, not {name!r}.")
    row = table["entries"].setdefault(name, {})
    row["manifest_sha256"] = digest
    if remote is not None:
        row["remote"] = remote
        row["archive_sha256"] = archive_sha256
    tmp = str(TABLE_PATH) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(table, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, TABLE_PATH)
    return digest
