"""The `ubs-embed` command line: one subcommand per job.

Each subcommand lives in its own module, which provides
`add_arguments(parser)` and `run(args) -> int`. Those modules must import
without torch (heavy imports go inside `run`), so `ubs-embed serve` and
`--help` work on a service-only install.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "train": ("model.train", "train, evaluate and export a bundle from an event log"),
    "evaluate": ("model.evaluate", "evaluate an exported bundle through onnxruntime"),
    "export": ("model.export", "export a training checkpoint to a bundle"),
    "serve": ("app.serve", "start the /embed service"),
    "bench": ("bench.run", "run the serving and quality benchmarks"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ubs-embed", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if not exc.name or not exc.name.startswith(module_name.split(".")[0]):
                raise
            continue  # that part is not built yet / not installed
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Known user errors (a bad log, a missing bundle, a wrong setting) print one line, not a traceback.
    from model.bundle import BundleError

    try:
        return int(args._run(args) or 0)
    except (BundleError, ValueError, FileNotFoundError) as exc:
        print(f"ubs-embed {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
