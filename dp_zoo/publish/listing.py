"""What the zoo lists: ``list_models`` (``dp_zoo.list_models``) and the privacy-utility points of a card's plot.

Every row comes from the entry's recipe and registration (``zoo.entries``),
plus, where the weights are on this machine, the verified card's own epsilon
and accuracy (``zoo.card``). No TensorFlow is imported.
"""

from dp_zoo.publish import zoo


def _find_local(name):
    for base in zoo.search_path():
        if (base / name).is_dir():
            return base / name
    return None


def list_models(pattern=None):
    """Entries with epsilon, dataset, accuracy and local availability.

    Args:
      pattern: optional shell-style pattern of entry names, as in timm's
        ``list_models("resnet*")``: ``"wrn_digits*"``, ``"*eps8"``. A pattern
        without ``*``, ``?`` or ``[`` matches names that contain it.

    Returns:
      list of dicts: name, architecture, dataset, private, target_epsilon,
      delta, config_source (whose configuration: a publication or "dp_zoo's
      own choice") and config_label, epsilon_rdp / epsilon_pld (dp_zoo's
      accountant, ``recipes.epsilons``), epsilon_note (where it differs from
      the source's ε), published_accuracy (the source's, %, only for a
      publication's configuration), epsilon and accuracy (measured here,
      from the card, if the weights are available), card_epsilon_rdp /
      card_epsilon_pld / card_tuned (the available model's own accountant
      values from its card, and whether its epsilon is the total over a
      private hyper-parameter search), available (bool), status, command
      (the recipe's training command).
    """
    out = []
    for name, e in sorted(zoo.entries().items()):
        if not _matches(name, pattern):
            continue
        row = {
            "name": name, "architecture": e["architecture"], "dataset": e["dataset"],
            "private": e["private"], "target_epsilon": e["target_epsilon"], "delta": e["delta"],
            **{k: e[k] for k in ("config_source", "config_label", "epsilon_rdp", "epsilon_pld", "epsilon_note")},
            "published_accuracy": e.get("published_accuracy"), "epsilon": None, "accuracy": None,
            "card_epsilon_rdp": None, "card_epsilon_pld": None, "card_tuned": False, "available": False,
            "command": f"python -m dp_zoo.train --recipe {e['recipe']}",
        }
        local = _find_local(name)
        status = "recipe only" + (" (needs an accelerator)" if e.get("needs_accelerator") else "")
        if local is not None:
            try:
                c = zoo.card(name)
            except (ValueError, OSError) as err:
                status = f"local copy fails verification: {str(err).splitlines()[0]}"
            else:
                row["available"] = True
                row["epsilon"] = c["privacy"]["epsilon"]
                row["card_epsilon_rdp"] = c["privacy"].get("epsilon_rdp")
                row["card_epsilon_pld"] = c["privacy"].get("epsilon_pld")
                row["card_tuned"] = bool(c["privacy"].get("tuning"))
                m = c.get("metrics") or {}
                row["accuracy"] = m.get("test_accuracy_ema") if m.get("test_accuracy_ema") is not None \
                    else m.get("test_accuracy_last")
                status = "available" + ("" if c["artifact"]["registered"] else " (local, unregistered)")
        elif e.get("remote"):
            status = "downloadable"
        row["status"] = status
        out.append(row)
    return out


def _matches(name, pattern):
    import fnmatch

    if not pattern:
        return True
    if not any(ch in pattern for ch in "*?["):
        return pattern in name
    return fnmatch.fnmatchcase(name, pattern)


def privacy_utility_points(dataset, exclude=None):
    """Points for a privacy-utility plot: the registered zoo models' cards and the paper's figures.

    Only artifacts that match the zoo table's checksum count as "measured"
    (a user's unregistered local copy is not the zoo's model).

    Returns:
      list of dicts {name, epsilon, accuracy, source}; accuracy as a
      fraction; source "measured" or "paper".
    """
    pts = []
    for row in list_models():
        if row["dataset"] != dataset or row["name"] == exclude:
            continue
        if row["status"] == "available" and row["accuracy"] is not None:
            pts.append({"name": row["name"], "epsilon": row["epsilon"], "accuracy": row["accuracy"],
                        "source": "measured"})
        elif row["published_accuracy"] is not None:
            pts.append({"name": row["name"], "epsilon": row["target_epsilon"],
                        "accuracy": row["published_accuracy"] / 100.0, "source": "paper"})
    return pts


def points_for_new_card(dataset, entry_name):
    """``privacy_utility_points`` for the card of a model being exported; none if the zoo cannot be read
    (a plot must never block an export)."""
    try:
        return privacy_utility_points(dataset, exclude=entry_name)
    except Exception:  # noqa: BLE001
        return []
