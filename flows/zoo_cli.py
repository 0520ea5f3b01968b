"""``l2o zoo [list|train|add|track]``: the command line of the zoo (:mod:`flows.zoo`, :mod:`flows.zoo_train`).

Imports nothing heavy until a zoo command runs, so that ``l2o --help`` stays fast.
"""

import sys
from pathlib import Path

__all__ = ["add_arguments", "cmd_zoo"]


def add_arguments(sub) -> None:
    """The ``l2o zoo`` command and its subcommands, on the CLI's subparsers ``sub``."""
    z = sub.add_parser(
        "zoo",
        help="the zoo of pretrained learned optimizers (models/zoo): list, meta-train, package, track",
        description="Without a subcommand: list the entries (name, optimizer, outer steps done/planned, wall time,"
        " device, commit). An entry loads anywhere with components.optimizers.load('zoo:NAME').",
    )
    zsub = z.add_subparsers(dest="zoo_command")
    zsub.add_parser("list", help="list the entries with their lineage (the default)")
    zt = zsub.add_parser(
        "train",
        help="meta-train an entry in its own workspace .l2o/zoo/NAME (prepare_data and meta_train stages only;"
        " the committed results are not touched)",
    )
    zt.add_argument("name")
    zt.add_argument("--params", required=True, help="params YAML of the meta-training (e.g. params/zoo/NAME.yaml)")
    zt.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    zt.add_argument("--resume", action="store_true", help="continue the workspace's meta-training from its checkpoint")
    za = zsub.add_parser("add", help="package the current state of a meta-training as models/zoo/NAME")
    za.add_argument("name")
    za.add_argument(
        "--from",
        dest="source",
        default=None,
        help="a `l2o zoo train` workspace (default: .l2o/zoo/NAME), one of its checkpoints"
        " (checkpoints/meta_train/<phase>.npz) or a finished meta_train output directory (e.g. models/lopt)",
    )
    za.add_argument("--force", action="store_true", help="replace an existing entry")
    za.add_argument("--no-dvc", dest="dvc", action="store_false", help="do not `dvc add` / push models/zoo")
    zsub.add_parser("track", help="rewrite models/zoo/index.json, `dvc add models/zoo`, push to the default remote")


def cmd_zoo(args, root: Path) -> int:
    """Runs ``l2o zoo [list|train|add|track]``; returns the exit code (2: bad input, 3: repository busy)."""
    from components.optimizers.zoo import ZOO_SUBDIR  # noqa: PLC0415
    from flows.params_io import ParamsError, load_params  # noqa: PLC0415
    from flows.preflight import RepositoryBusy, repository_lock  # noqa: PLC0415
    from flows.zoo import add, format_listing, list_entries, track, train, workspace  # noqa: PLC0415

    command = args.zoo_command or "list"
    try:
        if command == "list":
            print(format_listing(list_entries(root), root / ZOO_SUBDIR))
        elif command == "train":
            try:
                params = load_params(args.params, args.overrides)
            except ParamsError as exc:
                print(f"l2o: error: {exc}", file=sys.stderr)
                return 2
            with repository_lock(workspace(root, args.name), f"zoo train {args.name}"):
                train(root, args.name, params, params_file=args.params, resume=args.resume)
        elif command in ("add", "track"):
            with repository_lock(root, " ".join(sys.argv[1:]) or f"zoo {command}"):
                if command == "add":
                    add(root, args.name, Path(args.source) if args.source else None, force=args.force)
                if command == "track" or args.dvc:
                    track(root)
    except (ValueError, FileNotFoundError) as exc:
        print(f"l2o: error: zoo {command}: {exc}", file=sys.stderr)
        return 2
    except RepositoryBusy as exc:
        print(f"l2o: error: {exc}", file=sys.stderr)
        return 3
    return 0
