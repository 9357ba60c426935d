"""`ubs-embed bench`: the serving and the quality benchmark, one command.

Results go to `--out` (default bench/results/, not committed): per benchmark a
timestamped JSON with every figure, the printed table and the PNG, and a copy
named `serving.*` / `quality.*` of the latest. `--docs DIR` also copies the
latest tables and plots there (the README shows docs/bench/).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCHMARKS = ("serving", "quality")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"), help="bundle the service serves")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="data folder holding ml-100k/")
    parser.add_argument("--only", choices=BENCHMARKS, help="run one benchmark (default: both)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="results folder")
    parser.add_argument("--docs", type=Path, default=None, help="also copy the latest tables and plots here")
    parser.add_argument("--quick", action="store_true", help="smoke run: short levels, dims 16 and 32, 2 epochs")
    parser.add_argument("--level-seconds", type=float, default=None, help="serving: seconds per load level")
    parser.add_argument("--dims", type=int, nargs="+", default=None, help="quality: vector dims to train")
    parser.add_argument("--epochs", type=int, default=None, help="quality: training epochs (default: trainer's)")
    parser.add_argument("--time-budget-s", type=float, default=None, help="quality: training seconds per dim")


def ml100k_histories(data: Path) -> list[Any]:
    from model.data import load_events, user_histories

    folder = data / "ml-100k"
    if not (folder / "u.data").is_file():
        raise SystemExit(f"ubs-embed bench: MovieLens 100K not found at {folder} (pass --data DIR holding ml-100k/)")
    return user_histories(load_events(folder, "movielens"))


def save(
    out: Path,
    name: str,
    stamp: str,
    payload: dict[str, Any],
    table: str,
    plot: Callable[[Path], None],
    docs: Path | None,
) -> None:
    """JSON + table + PNG, timestamped and as the latest copy; the latest also into docs."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}-{stamp}.json").write_text(json.dumps(payload, indent=2))
    (out / f"{name}-{stamp}.txt").write_text(table + "\n")
    plot(out / f"{name}-{stamp}.png")
    for ext in ("json", "txt", "png"):
        shutil.copyfile(out / f"{name}-{stamp}.{ext}", out / f"{name}.{ext}")
        if docs is not None and ext != "json":
            docs.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / f"{name}-{stamp}.{ext}", docs / f"{name}.{ext}")


def run(args: argparse.Namespace) -> int:
    from bench import quality, serving

    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    chosen = [args.only] if args.only else list(BENCHMARKS)
    histories = ml100k_histories(args.data)
    if "serving" in chosen:
        if not (args.bundle / "model_version").is_file():
            raise SystemExit(f"ubs-embed bench: no bundle at {args.bundle} (run `make bundle` or pass --bundle DIR)")
        plan = serving.QUICK_PLAN if args.quick else serving.ServingPlan()
        if args.level_seconds is not None:
            plan = dataclasses.replace(plan, level_seconds=args.level_seconds)
        report = serving.run_serving(args.bundle, histories, args.out / "serving-work", plan)
        table = serving.format_serving(report)
        print(table, flush=True)
        save(args.out, "serving", stamp, report.to_json(), table, lambda p: serving.plot_serving(report, p), args.docs)
    if "quality" in chosen:
        overrides: dict[str, object] = {}
        if args.quick:
            overrides.update(epochs=2, time_budget_s=60.0)
        if args.epochs is not None:
            overrides["epochs"] = args.epochs
        if args.time_budget_s is not None:
            overrides["time_budget_s"] = args.time_budget_s
        dims = args.dims or (quality.QUICK_DIMS if args.quick else quality.DIMS)
        qreport = quality.run_quality(histories, args.out / "quality-work", dims, overrides)
        table = quality.format_quality(qreport)
        print(table, flush=True)
        save(
            args.out,
            "quality",
            stamp,
            dataclasses.asdict(qreport),
            table,
            lambda p: quality.plot_quality(qreport, p),
            args.docs,
        )
    return 0
