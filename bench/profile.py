"""Where the service's time goes under one load level: py-spy on the real server process.

    python -m bench.profile --bundle bundles/default --data ../shared/data --size 32 --concurrency 8

starts the service (on a fresh Redis), drives it with distinct real histories
from `bench.loadgen` while `py-spy record` samples every thread of the server,
and prints the functions with the largest share of samples, inclusive and
self. py-spy is a separate tool: `pip install py-spy`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

from bench.processes import RedisServer, Service
from bench.run import ml100k_histories
from bench.serving import MODES, run_loadgen
from bench.workload import crop_events, distinct_crops, request_bodies, write_bodies


def read_collapsed(path: Path) -> tuple[Counter[str], Counter[str], int]:
    """py-spy raw output (`frame;frame;... count`) -> inclusive and self samples per frame, total."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    return inclusive, own, total


def format_profile(inclusive: Counter[str], own: Counter[str], total: int, top: int = 25) -> str:
    lines = [f"{total} samples (all server threads, idle excluded)", "", "inclusive:"]
    lines += [f"{100 * n / total:6.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    lines += ["", "self:"]
    lines += [f"{100 * n / total:6.1f}%  {frame}" for frame, n in own.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--mode", choices=tuple(MODES), default="batched")
    parser.add_argument("--size", type=int, default=32, help="sequences per request")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--hits", action="store_true", help="repeat a small set of histories (cache hits)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/profile"))
    args = parser.parse_args(argv)
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy not found: pip install py-spy")

    from model.bundle import load_bundle

    histories = ml100k_histories(args.data)
    max_len = load_bundle(args.bundle).max_len
    count = 256 if args.hits else max(args.size * 40, int(3000 * args.seconds))
    bodies = request_bodies(crop_events(histories, distinct_crops(histories, count, max_len)), args.size)
    path = write_bodies(args.out / "bodies.jsonl", bodies)
    raw = args.out / "profile.txt"
    with RedisServer() as redis, Service(args.bundle, {"REDIS_URL": redis.url, **MODES[args.mode]}) as service:
        url = service.base_url + "/embed"
        if args.hits:
            run_loadgen(url, path, 4, 30.0, 10_000)
        assert service.process is not None
        spy = ["py-spy", "record", "--pid", str(service.process.pid), "--format", "raw", "--rate", "250"]
        spy += ["--duration", str(int(args.seconds)), "--output", str(raw), "--nonblocking"]
        recorder = subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        result: list[object] = []
        load = threading.Thread(
            target=lambda: result.append(run_loadgen(url, path, args.concurrency, args.seconds, 10**9, args.hits))
        )
        load.start()
        load.join()
        _, err = recorder.communicate(timeout=60)
        if recorder.returncode != 0:
            sys.stderr.write(err.decode(errors="replace"))
            return 1
    print(result[0])
    print(format_profile(*read_collapsed(raw)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
