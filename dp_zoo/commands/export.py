"""``python -m dp_zoo.export``: export, register, package or publish a model (see ``dp_zoo.export``).

The command sits above the zoo: it is what places a new artifact among the
zoo's models (its card's privacy-utility plot) and registers it, while
``dp_zoo.export`` itself knows nothing of the zoo.
"""

import json
import os
import sys

from dp_zoo import cli

if __name__ == "__main__":
    cli.quiet_tensorflow()  # before anything below imports TensorFlow

from dp_zoo.publish import listing, manifest, zoo  # noqa: E402


def _parser():
    p = cli.Parser("dp_zoo.export", description="Export, register, package or publish a dp_zoo model.")
    p.option("model", help="Trained model (.keras) to export.")
    p.option("run-record", help="The run's run_record.json.")
    p.option("entry", help="Zoo entry name for the card.")
    p.option("out", help="Artifact directory (default saved_models/<entry>).")
    p.switch("overwrite", default=False, help="Replace an existing artifact.")
    p.option("artifact", help="An exported artifact directory to register/package/publish.")
    p.switch("register", default=False,
             help="Write the artifact's MANIFEST SHA-256 into dp_zoo/publish/zoo_entries.json.")
    p.option("package", help="Write a reproducible .tar.gz of the artifact here.")
    p.option("kaggle-handle", help="Publish to Kaggle Models: <owner>/<model>/<framework>/<variation>.")
    p.switch("dry-run", default=False, help="With --kaggle-handle: verify and print the plan, upload nothing.")
    p.switch("allow-simulation", default=False, help="Allow publishing a TAN simulation.")
    return p


def main(argv=None):
    """Runs ``python -m dp_zoo.export`` with the flags ``argv``; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    for flag in ("model", "run_record", "artifact"):  # a path that is not there is a usage error (exit 2)
        path = getattr(args, flag)
        if path is not None and not os.path.exists(path):
            parser.error(f"--{flag.replace('_', '-')} {path}: no such file or directory")
    artifact = args.artifact
    # After parsing: a bad command line is answered without loading TensorFlow (seconds).
    from dp_zoo.publish.artifact import export_model, package, publish

    try:
        if args.model or args.run_record:
            if not (args.model and args.run_record and args.entry):
                print("dp_zoo.export: error: exporting needs --model, --run-record and --entry", file=sys.stderr)
                return 2
            import keras

            import dp_zoo.models  # noqa: F401

            with open(args.run_record) as f:
                record = json.load(f)
            model = keras.models.load_model(args.model)
            out = args.out or os.path.join("saved_models", args.entry)
            artifact = export_model(model, record, out, entry_name=args.entry, overwrite=args.overwrite,
                                    zoo_points=listing.points_for_new_card(record["data"]["dataset"], args.entry))
            print(f"exported: {artifact}")
        if artifact is None:
            print("dp_zoo.export: error: nothing to do; give --model/--run-record/--entry or --artifact",
                  file=sys.stderr)
            return 2
        digest = manifest.verify(artifact)
        print(f"verified: {artifact} (MANIFEST sha256 {digest})")
        if args.register:
            name = os.path.basename(os.path.normpath(artifact))
            zoo.register(name, artifact)
            print(f"registered: {name} -> {digest} in {zoo.TABLE_PATH}")
        if args.package:
            path, sha = package(artifact, args.package)
            print(f"packaged: {path} (sha256 {sha})")
        if args.kaggle_handle:
            plan = publish(artifact, kaggle_handle=args.kaggle_handle, dry_run=args.dry_run,
                           allow_simulation=args.allow_simulation)
            verb = "uploaded" if plan["uploaded"] else "dry run, would upload"
            print(f"{verb}: {plan['handle']}: {len(plan['files'])} files, {plan['total_bytes']} bytes")
            print(json.dumps(plan, indent=2))
    except (FileExistsError, ValueError, ImportError, OSError) as e:
        print(f"dp_zoo.export: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
