"""The run record's one writer: ``RunRecordBuilder`` (docs/design.md, "The run record").

Every section of ``run_record.json`` is written here and nowhere else; the
engine, the training and tuning jobs, the linear probe and the audit each call
the setter of the sections they alone know, and read the record as a plain
dict. A setter refuses a section that is already set (``SectionSetTwice``, a
``ValueError`` naming it), so no writer silently overwrites another's; the
only changes to a set section are the documented transformations below
(``mark_not_private``, ``set_tuning``, ``set_model_override``, a replacing
``set_audit``), each of which keeps the privacy rules of docs/privacy.md,
"What a run publishes".

The builder sits in the engine, the lowest layer that writes a record, so that
every writer above can import it; it imports no TensorFlow.
"""

import copy

from dp_zoo.engine.record_schema import PUBLISHED_WEIGHTS_SHA256, check_run_record

SCHEMA_VERSION = 1
OPERATIONAL_NOTE = ("operational, not covered by the privacy guarantee: wall-clock totals grow with the "
                    "realised Poisson batch sizes")
PRIVATE_TIMING_NOTE = ("not published: a private run's wall time grows with its secret Poisson batch sizes "
                       "(docs/privacy.md, 'What a run publishes'); the run directory's checkpoints keep it")
TUNED_TIMING_NOTE = ("a tuning publishes no timing: the selected trial's wall time could tell which trial won, "
                     "and the total would grow with the secret number of trials")
# In the order the engine writes them (a record's keys keep the order of the writes).
ENGINE_SECTIONS = ("schema_version", "config", "privacy", "history", "model", "software", "hardware",
                   "operational", "steps_planned", "steps_completed")
COMMAND_SECTIONS = ("metrics", "data", "model.init", "entry_name", "published_weights")


class SectionSetTwice(ValueError):
    """A builder was asked to set a run-record section that is already set."""


def operational(wall_time_s, *, private):
    """The "operational" section: the wall-clock total of a run without a privacy guarantee; for a
    private run none (it depends on the secret batch sizes, which only the noisy updates may reveal)."""
    if private:
        return {"wall_time_s": None, "note": PRIVATE_TIMING_NOTE}
    return {"wall_time_s": round(float(wall_time_s), 3), "note": OPERATIONAL_NOTE}


def mark_not_private(privacy, reason, detail):
    """Turns a privacy section into a NOT-private one in place, keeping the accountant's figures as nominal.

    The epsilons the accountant computed for the configuration move to
    ``nominal_epsilon`` (what the configuration would give had the run been
    private); ``epsilon`` becomes None, so nothing reads them as a guarantee.
    ``RunRecordBuilder.mark_not_private`` applies it to a record's section;
    called directly, it is for a privacy section not yet in a record.
    """
    nominal = {k: privacy.get("epsilon_" + k) for k in ("pld", "rdp")}
    if any(v is not None for v in nominal.values()):
        privacy["nominal_epsilon"] = nominal
    privacy.update(private=False, epsilon=None, epsilon_pld=None, epsilon_rdp=None,
                   not_private={"reason": reason, "detail": detail})
    return privacy


class RunRecordBuilder:
    """Builds a run record section by section; ``build()`` returns it as the plain dict that is written.

    ``RunRecordBuilder()`` starts an empty record (the engine's
    ``record_sections.engine_sections``); ``from_record`` continues one
    written earlier. Setters return the builder, so calls chain.
    """

    def __init__(self):
        self._record = {}

    @classmethod
    def from_record(cls, record):
        """A builder that continues ``record`` in place (what ``Trainer.record()`` returned, or a
        ``run_record.json`` read back): its sections count as set, and the setters write into the
        same dict, so whoever holds it sees them."""
        if not isinstance(record, dict):
            raise TypeError(f"a run record is a dict, not {type(record).__name__}.")
        builder = cls()
        builder._record = record
        return builder

    def _refuse_set(self, names):
        twice = [n for n in names if n in self._record]
        if twice:
            raise SectionSetTwice(
                f"the run record's section {twice[0]!r} is already set: each section has one writer and is "
                "set once (docs/design.md, 'The run record').")

    def _section(self, name, needed_by):
        if name not in self._record:
            raise ValueError(f"{needed_by} needs the run record's {name!r} section, which is not set yet "
                             "(the engine's sections come first).")
        return self._record[name]

    def _put(self, sections):
        """Sets ``sections`` (a dict, in its order) after refusing any already set; the record owns copies."""
        self._refuse_set(sections)
        for name, value in sections.items():
            self._record[name] = copy.deepcopy(value)

    def set_engine(self, *, config, privacy, history, model, software, hardware, wall_time_s, steps_planned,
                   steps_completed, not_private=None):
        """The sections only the engine knows (``Trainer.record()``).

        Args:
          config: ``TrainConfig.to_dict()``.
          privacy: the ledger's summary with the engine's fields (``l2_clip``,
            ``nonfinite_steps_skipped``, ``randomness``).
          history, model, software, hardware, steps_planned, steps_completed:
            the sections of those names.
          wall_time_s: the run's wall time; published in "operational" only
            for a run without a guarantee (``operational``).
          not_private: ``(reason, detail)`` for a run with DP-SGD but no
            guarantee (noise off, public-seed randomness), marked before the
            operational section is decided: such a run publishes its time.
        """
        privacy = copy.deepcopy(privacy)
        if not_private is not None:
            mark_not_private(privacy, *not_private)
        self._put({
            "schema_version": SCHEMA_VERSION, "config": config, "privacy": privacy, "history": list(history),
            "model": model, "software": software, "hardware": hardware,
            "operational": operational(wall_time_s, private=bool(privacy["private"])),
            "steps_planned": steps_planned, "steps_completed": steps_completed,
        })
        return self

    def set_command(self, *, metrics, data, init, entry_name, published_weights):
        """The training command's sections, known at its end.

        Args:
          metrics: test accuracies of the published weight sets and ``evaluated_on``.
          data: the data section (data set, splits, sizes, normalisation, streaming).
          init: the initial checkpoint's provenance dict (``model.init``), or None.
          entry_name: the zoo entry name of the run.
          published_weights: "ema" or "last".
        """
        model = self._section("model", "set_command")
        self._refuse_set(("metrics", "data", "entry_name", "published_weights"))
        if "init" in model:
            raise SectionSetTwice("the run record's section 'model.init' is already set: each section has one "
                                  "writer and is set once (docs/design.md, 'The run record').")
        self._put({"metrics": metrics, "data": data})
        model["init"] = copy.deepcopy(init)
        self._put({"entry_name": entry_name, "published_weights": published_weights})
        return self

    def set_weights(self, *, sha256=None, published_sha256=None):
        """``weights_sha256`` (the last weights, what the workers agree on) and/or
        ``published_weights_sha256`` (the published model's ``manifest.weights_sha256``)."""
        digests = {"weights_sha256": sha256, PUBLISHED_WEIGHTS_SHA256: published_sha256}
        self._put({k: v for k, v in digests.items() if v is not None})
        return self

    def set_model_override(self, *, num_params, input_shape, trained):
        """Transformation: the "model" section describes the full network that is published, not the
        head model a linear probe trained (``linear_probe.Probe``); the other fields stay."""
        model = self._section("model", "set_model_override")
        model.update(num_params=int(num_params), input_shape=list(input_shape), trained=copy.deepcopy(trained))
        return self

    def mark_not_private(self, reason, detail):
        """Transformation: the run has no privacy guarantee after all (``mark_not_private``: its epsilons
        become nominal). The operational section stays as set: a time not published stays so."""
        mark_not_private(self._section("privacy", "mark_not_private"), reason, detail)
        return self

    def set_tuning(self, section, target_epsilon):
        """Transformation of a tuning's selected trial (``dp_zoo.tune``): the tuned total becomes the
        record's epsilon (the trial's own stays as ``tuning.selected_trial_epsilon``) and the trial's
        wall time goes (a per-trial timing can tell which trial won). Once per record."""
        privacy = self._section("privacy", "set_tuning")
        if privacy.get("tuning") is not None:
            raise SectionSetTwice("the run record's section 'privacy.tuning' is already set: a record is tuned once.")
        section = copy.deepcopy(section)
        section["selected_trial_epsilon"] = {"pld": privacy.get("epsilon_pld"), "rdp": privacy.get("epsilon_rdp")}
        privacy.update(epsilon=section["total_epsilon"], epsilon_rdp=section["total_epsilon"], epsilon_pld=None,
                       accountant="rdp", target_epsilon=target_epsilon, tuning=section)
        self._record["operational"] = {"wall_time_s": None, "note": TUNED_TIMING_NOTE}
        return self

    def set_audit(self, audit, *, replace=False):
        """The "audit" section (``dp_zoo.audit.attach_to_record``); ``replace=True``: a newer audit of
        the same record replaces an earlier one."""
        if replace:
            self._record.pop("audit", None)
        self._put({"audit": audit})
        return self

    def build(self, *, check=True):
        """The record as the plain dict that is written (the same dict on every call).

        Args:
          check: ``check_run_record`` it first (raises its ``ValueError`` for an
            incomplete or inconsistent record). False for a record not yet
            complete: the engine's sections alone, a worker's that the chief
            completes.
        """
        if check:
            check_run_record(self._record)
        return self._record
