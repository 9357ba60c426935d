"""Serving benchmark: the real service against its in-process ceiling, in one run.

Order of a run: the ceiling first (nothing else of ours running), then for each
service mode (dynamic batching with the default settings, then batching off
with UBS_MAX_BATCH_SIZE=1) a fresh service process on a fresh, empty Redis,
driven level by level by `bench.loadgen` in its own process. A level is one
(cache, sequences per request, concurrency) point, bounded by time and by a
request count so the whole run takes a few minutes.

Cache misses: every sequence of a mode is a distinct crop of a real history
(see bench/workload.py). Cache hits: a small set of crops, sent once to fill
the cache, then sent again and again. The cache counters of /metrics are read
around every level, so the table shows the hit rate that really happened.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.ceiling import CeilingResult, measure_ceiling
from bench.loadgen import LoadResult
from bench.machine import machine_info
from bench.processes import REPO_ROOT, RedisServer, Service
from bench.workload import crop_events, distinct_crops, request_bodies, write_bodies

MODES = {"batched": {}, "unbatched": {"UBS_MAX_BATCH_SIZE": "1"}}
CEILING_BATCH_SIZES = (1, 8, 32, 64)
HIT_POOL = 256  # distinct histories of the cache-hit levels


@dataclass(frozen=True)
class ServingPlan:
    concurrencies: tuple[int, ...] = (1, 8, 32, 128)
    sizes: tuple[int, ...] = (1, 32)  # sequences per request
    level_seconds: float = 4.0
    max_sequences: int = 12_800  # per level: the cap on requests is this / sequences per request
    max_requests: int = 4_000
    ceiling_seconds: float = 2.0
    ceiling_sequences: int = 4_096
    seed: int = 0

    def level_requests(self, size: int) -> int:
        return min(self.max_requests, max(1, self.max_sequences // size))


QUICK_PLAN = ServingPlan(
    concurrencies=(1, 8), level_seconds=1.0, max_sequences=640, max_requests=200, ceiling_seconds=0.3
)


@dataclass
class Level:
    mode: str
    cache: str  # "miss" or "hit"
    size: int
    concurrency: int
    load: LoadResult
    hit_rate: float  # cache hits / lookups during the level, from /metrics
    mean_batch: float  # mean inference batch size during the level, from /metrics


@dataclass
class ServingReport:
    started: str
    machine: dict[str, Any]
    bundle: dict[str, Any]
    ceiling: list[CeilingResult]
    levels: list[Level] = field(default_factory=list)
    peak_rss_mib: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def ceiling_model(self) -> float:
        return max(c.model_sequences_per_s for c in self.ceiling)

    @property
    def ceiling_pipeline(self) -> float:
        return max(c.pipeline_sequences_per_s for c in self.ceiling)

    def find(self, mode: str, cache: str, size: int, concurrency: int) -> Level | None:
        for level in self.levels:
            if (level.mode, level.cache, level.size, level.concurrency) == (mode, cache, size, concurrency):
                return level
        return None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def metric_values(base_url: str) -> dict[str, float]:
    """The unlabelled samples of /metrics (`name value` lines) as a dict."""
    with urllib.request.urlopen(base_url + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            try:
                values[name] = float(value)
            except ValueError:
                continue
    return values


def run_loadgen(
    url: str, bodies: Path, concurrency: int, seconds: float, max_requests: int, cycle: bool = False
) -> LoadResult:
    """One level from a separate process (its CPU is not the service's, nor this process's)."""
    args = [sys.executable, "-m", "bench.loadgen", "--url", url, "--bodies", str(bodies)]
    args += ["--concurrency", str(concurrency), "--duration", str(seconds), "--max-requests", str(max_requests)]
    if cycle:
        args.append("--cycle")
    done = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=seconds + 120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return LoadResult(**json.loads(done.stdout.strip().splitlines()[-1]))


def measure_level(
    service: Service, bodies: Path, concurrency: int, seconds: float, max_requests: int, cycle: bool
) -> tuple[LoadResult, float, float]:
    before = metric_values(service.base_url)
    load = run_loadgen(service.base_url + "/embed", bodies, concurrency, seconds, max_requests, cycle)
    after = metric_values(service.base_url)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    hits, misses = delta("ubs_embed_cache_hits_total"), delta("ubs_embed_cache_misses_total")
    batches = delta("ubs_embed_batch_size_count")
    hit_rate = hits / (hits + misses) if hits + misses else float("nan")
    mean_batch = delta("ubs_embed_batch_size_sum") / batches if batches else float("nan")
    return load, hit_rate, mean_batch


def run_serving(
    bundle_dir: Path,
    histories: Sequence[Any],
    work_dir: Path,
    plan: ServingPlan = ServingPlan(),
    modes: Sequence[str] = tuple(MODES),
    progress: bool = True,
) -> ServingReport:
    from model.bundle import load_bundle

    started = time.monotonic()
    bundle = load_bundle(bundle_dir)

    def say(text: str) -> None:
        if progress:
            print(f"[serving {time.monotonic() - started:6.1f}s] {text}", flush=True)

    # One pool of distinct crops: warm-up, the miss levels (the same slices in each mode, whose
    # service and Redis start empty) and the hit pool never share a history.
    per_level = {size: plan.level_requests(size) * size for size in plan.sizes}
    miss_total = sum(per_level[s] for s in plan.sizes) * len(plan.concurrencies)
    warm_count = 512
    crops = distinct_crops(histories, warm_count + HIT_POOL + miss_total, bundle.max_len, plan.seed)
    warm_crops, hit_crops, miss_crops = (
        crops[:warm_count],
        crops[warm_count : warm_count + HIT_POOL],
        crops[warm_count + HIT_POOL :],
    )

    say(f"ceiling: onnxruntime in-process, batch sizes {CEILING_BATCH_SIZES}")
    ceiling_events = crop_events(histories, miss_crops[: plan.ceiling_sequences])
    ceiling = measure_ceiling(bundle, ceiling_events, CEILING_BATCH_SIZES, plan.ceiling_seconds)
    del ceiling_events
    report = ServingReport(
        started=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=machine_info(),
        bundle={
            "path": str(bundle_dir),
            "model_version": bundle.model_version,
            "dim": bundle.dim,
            "max_len": bundle.max_len,
        },
        ceiling=ceiling,
    )

    bodies_dir = work_dir / "bodies"
    warm_file = write_bodies(bodies_dir / "warm.jsonl", request_bodies(crop_events(histories, warm_crops), 8))
    hit_events = crop_events(histories, hit_crops)
    hit_files = {s: write_bodies(bodies_dir / f"hit-{s}.jsonl", request_bodies(hit_events, s)) for s in plan.sizes}
    miss_files: dict[tuple[int, int], Path] = {}
    offset = 0
    for size in plan.sizes:
        for conc in plan.concurrencies:
            part = miss_crops[offset : offset + per_level[size]]
            offset += per_level[size]
            path = bodies_dir / f"miss-{size}-{conc}.jsonl"
            miss_files[(size, conc)] = write_bodies(path, request_bodies(crop_events(histories, part), size))

    with RedisServer() as redis:
        for mode in modes:
            redis.flush()
            env = {"REDIS_URL": redis.url, **MODES[mode]}
            say(f"{mode}: starting the service ({env})")
            with Service(bundle_dir, env, log_path=work_dir / f"service-{mode}.log") as service:
                run_loadgen(service.base_url + "/embed", warm_file, 8, 2.0, 10_000)
                for size in plan.sizes:
                    for conc in plan.concurrencies:
                        load, hit_rate, mean_batch = measure_level(
                            service,
                            miss_files[(size, conc)],
                            conc,
                            plan.level_seconds,
                            plan.level_requests(size),
                            False,
                        )
                        report.levels.append(Level(mode, "miss", size, conc, load, hit_rate, mean_batch))
                        say(_level_line(report.levels[-1]))
                if mode == "batched":
                    for size in plan.sizes:
                        run_loadgen(service.base_url + "/embed", hit_files[size], 4, 30.0, 10_000)  # fill the cache
                        for conc in plan.concurrencies:
                            load, hit_rate, mean_batch = measure_level(
                                service, hit_files[size], conc, plan.level_seconds, plan.level_requests(size), True
                            )
                            report.levels.append(Level(mode, "hit", size, conc, load, hit_rate, mean_batch))
                            say(_level_line(report.levels[-1]))
                report.peak_rss_mib[mode] = service.peak_rss_mib()
    report.wall_s = time.monotonic() - started
    return report


def _level_line(level: Level) -> str:
    load = level.load
    return (
        f"{level.mode} {level.cache} {level.size}x conc {level.concurrency}: {load.sequences_per_s:.0f} seq/s, "
        f"p50 {load.latency_ms['p50']:.1f} ms, p99 {load.latency_ms['p99']:.1f} ms, errors {load.errors}"
    )


# -- table, targets, plot ------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b != b or a != a or b == 0:
        return "-"
    return f"{a / b:.2f}"


def format_serving(report: ServingReport) -> str:
    m = report.machine
    lines = [
        f"Serving benchmark, {report.started}; {m['cpu']}, {m['cores']} cores, load average at start "
        f"{m['load_average'][0]}; onnxruntime {m['onnxruntime']}; bundle {report.bundle['model_version']} "
        f"(dim {report.bundle['dim']}, max_len {report.bundle['max_len']}); wall {report.wall_s:.0f} s",
        "",
        "Ceiling (the service's Engine in-process, no HTTP): sequences/s",
        f"{'batch':>6} {'model':>9} {'+encode':>9} {'batch p50 ms':>13}",
    ]
    for c in report.ceiling:
        lines.append(
            f"{c.batch_size:>6} {c.model_sequences_per_s:>9.0f} {c.pipeline_sequences_per_s:>9.0f} "
            f"{c.model_batch_ms['p50']:>13.2f}"
        )
    lines += [
        "",
        "Service over HTTP (vs ceiling = best model-only ceiling above; vs unbatched = same level with "
        "UBS_MAX_BATCH_SIZE=1)",
        f"{'mode':<10} {'cache':<5} {'seq/req':>7} {'conc':>5} {'requests':>8} {'errors':>6} {'seq/s':>8} "
        f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'hit%':>5} {'batch':>6} {'vs ceil':>7} {'vs unb':>6} "
        f"{'p99/unb':>7}",
    ]
    for lv in report.levels:
        lat = lv.load.latency_ms
        base = report.find("unbatched", lv.cache, lv.size, lv.concurrency) if lv.mode == "batched" else None
        hit = "-" if lv.hit_rate != lv.hit_rate else f"{100 * lv.hit_rate:.0f}"
        batch = "-" if lv.mean_batch != lv.mean_batch else f"{lv.mean_batch:.1f}"
        lines.append(
            f"{lv.mode:<10} {lv.cache:<5} {lv.size:>7} {lv.concurrency:>5} {lv.load.requests:>8} {lv.load.errors:>6} "
            f"{lv.load.sequences_per_s:>8.0f} {lat['p50']:>8.2f} {lat['p95']:>8.2f} {lat['p99']:>8.2f} {hit:>5} "
            f"{batch:>6} {_ratio(lv.load.sequences_per_s, report.ceiling_model):>7} "
            f"{_ratio(lv.load.sequences_per_s, base.load.sequences_per_s if base else None):>6} "
            f"{_ratio(lat['p99'], base.load.latency_ms['p99'] if base else None):>7}"
        )
    rss = ", ".join(f"{mode} {mib:.0f} MiB" for mode, mib in report.peak_rss_mib.items())
    lines += ["", f"Service peak RSS (VmHWM): {rss}", "", "Targets:"]
    lines += [f"  [{'met' if ok else 'MISSED'}] {text}" for ok, text in check_targets(report)]
    return "\n".join(lines)


def check_targets(report: ServingReport) -> list[tuple[bool, str]]:
    """(met, description with the measured figures) for each target of the issue that this run measured."""
    out: list[tuple[bool, str]] = []
    level = report.find("batched", "miss", 32, 8)
    if level is not None:
        share = level.load.sequences_per_s / report.ceiling_model
        out.append(
            (
                share >= 0.5,
                f"32-seq requests, misses, conc 8: {level.load.sequences_per_s:.0f} seq/s = {100 * share:.0f}% of the "
                f"model ceiling {report.ceiling_model:.0f} (target >= 50%; "
                f"{100 * level.load.sequences_per_s / report.ceiling_pipeline:.0f}% of the ceiling with encoding)",
            )
        )
    batched, unbatched = report.find("batched", "miss", 1, 32), report.find("unbatched", "miss", 1, 32)
    if batched is not None and unbatched is not None:
        speedup = batched.load.sequences_per_s / unbatched.load.sequences_per_s
        p99_b, p99_u = batched.load.latency_ms["p99"], unbatched.load.latency_ms["p99"]
        out.append(
            (
                speedup >= 3.0 and p99_b <= p99_u,
                f"1-seq requests, conc 32: batching {speedup:.2f}x the unbatched throughput (target >= 3x), "
                f"p99 {p99_b:.1f} ms vs {p99_u:.1f} ms unbatched (target: no worse)",
            )
        )
    pairs = []
    for lv in report.levels:
        miss = report.find(lv.mode, "miss", lv.size, lv.concurrency) if lv.cache == "hit" else None
        if miss is not None:
            ratio = lv.load.latency_ms["p50"] / miss.load.latency_ms["p50"]
            pairs.append((float("inf") if math.isnan(ratio) else ratio, lv))  # NaN (no answer at all) is a miss
    if pairs:
        worst, lv = max(pairs, key=lambda pair: pair[0])
        out.append(
            (
                worst <= 1 / 3,
                f"cache hits: p50 at most {worst:.2f} of the miss p50 over all {len(pairs)} levels, worst at "
                f"{lv.size}-seq conc {lv.concurrency} (target <= 0.33)",
            )
        )
    errors = sum(lv.load.errors for lv in report.levels)
    failing = [f"{lv.mode}/{lv.cache}/{lv.size}x/c{lv.concurrency}" for lv in report.levels if lv.load.errors]
    out.append((errors == 0, f"errors: {errors} over all levels" + (f" ({', '.join(failing)})" if failing else "")))
    return out


def plot_serving(report: ServingReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    series: dict[tuple[str, str, int], list[Level]] = {}
    for lv in report.levels:
        series.setdefault((lv.mode, lv.cache, lv.size), []).append(lv)
    for (mode, cache, size), levels in series.items():
        conc = [lv.concurrency for lv in levels]
        style = "-" if mode == "batched" else "--"
        label = f"{mode}, {cache}, {size} seq/req"
        left.plot(conc, [lv.load.sequences_per_s for lv in levels], style, marker="o", label=label)
        right.plot(conc, [lv.load.latency_ms["p99"] for lv in levels], style, marker="o", label=label)
    left.axhline(report.ceiling_model, color="black", linestyle=":", label="ceiling (in-process model)")
    left.set(xscale="log", yscale="log", xlabel="concurrency", ylabel="sequences / s", title="throughput")
    right.set(xscale="log", yscale="log", xlabel="concurrency", ylabel="p99 latency (ms)", title="p99 latency")
    for axis in (left, right):
        axis.set_xticks(list(sorted({lv.concurrency for lv in report.levels})))
        axis.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7)
    fig.suptitle(f"ubs-embed serving, {report.started}, {report.machine['cores']} cores", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def level_from_json(data: dict[str, Any]) -> Level:
    return Level(**{**data, "load": LoadResult(**data["load"])})


def report_from_json(data: dict[str, Any]) -> ServingReport:
    """A saved report back (to redraw the table or the plot without rerunning)."""
    fields = {f.name for f in dataclasses.fields(ServingReport)}
    rest = {k: v for k, v in data.items() if k in fields and k not in ("ceiling", "levels")}
    ceiling = [CeilingResult(**c) for c in data["ceiling"]]
    return ServingReport(**rest, ceiling=ceiling, levels=[level_from_json(lv) for lv in data["levels"]])
