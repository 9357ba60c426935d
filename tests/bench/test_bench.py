"""The benchmark's own measuring parts, checked against known figures and a real running service.

The load generator runs in its own process through `bench.serving.run_loadgen` against a real
`ubs-embed serve` on the ml-100k bundle, with bodies built by `bench.workload` from real ml-100k
histories; its counts are checked against the service's own /metrics counters.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.ceiling import CeilingResult
from bench.loadgen import LoadResult, answer_error, latency_summary, load_requests
from bench.processes import free_port
from bench.quality import history_json_bytes
from bench.serving import (
    Level,
    ServingReport,
    check_targets,
    format_serving,
    measure_level,
    metric_values,
    report_from_json,
    run_loadgen,
)
from bench.workload import crop_events, distinct_crops, request_bodies, write_bodies
from model.data import History

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # for the service helpers of tests/app
    sys.path.insert(0, str(REPO_ROOT))

LATENCY_KEYS = ["p50", "p95", "p99", "mean", "max"]


# -- latency_summary, answer_error, load_requests: pure parts ----------------------------------------------------


def test_latency_summary_gives_percentiles_mean_and_max_in_ms() -> None:
    # Sorted 1, 2, 3, 4 ms; numpy's linear percentile: rank q/100 * 3 between neighbours.
    summary = latency_summary([0.004, 0.001, 0.003, 0.002])
    assert list(summary) == LATENCY_KEYS
    expected = {"p50": 2.5, "p95": 3.85, "p99": 3.97, "mean": 2.5, "max": 4.0}
    assert summary == pytest.approx(expected, rel=1e-12)


def test_latency_summary_of_one_value_and_of_an_array() -> None:
    assert latency_summary([0.25]) == {"p50": 250.0, "p95": 250.0, "p99": 250.0, "mean": 250.0, "max": 250.0}
    assert latency_summary(np.array([0.5, 0.25])) == {
        "p50": 375.0,
        "p95": 487.5,
        "p99": 497.5,
        "mean": 375.0,
        "max": 500.0,
    }


@pytest.mark.parametrize("empty", [[], np.array([], dtype=np.float64)])
def test_latency_summary_of_nothing_is_all_nan(empty: Any) -> None:
    summary = latency_summary(empty)
    assert list(summary) == LATENCY_KEYS
    assert all(math.isnan(value) for value in summary.values())


@pytest.mark.parametrize(
    ("status", "body", "sequences", "expected"),
    [
        (200, b'{"embeddings":[{},{}]}', 2, None),
        (200, b'{"embeddings":[{},{}]}', 3, "wrong count"),
        (200, b'{"embeddings":[]}', 1, "wrong count"),
        (200, b"<html>", 1, "bad body"),
        (200, b'{"detail":"x"}', 1, "bad body"),
        (200, b"[1, 2]", 2, "bad body"),
        (200, b'{"embeddings":null}', 1, "bad body"),
        (200, b'{"embeddings":5}', 1, "bad body"),
        (413, b'{"embeddings":[{}]}', 1, "status 413"),
        (503, b"", 1, "status 503"),
    ],
)
def test_answer_error_names_the_kind(status: int, body: bytes, sequences: int, expected: str | None) -> None:
    assert answer_error(status, body, sequences) == expected


def test_load_requests_builds_one_http_request_per_body_line(tmp_path: Path) -> None:
    bodies = [b'{"sequences":[{"events":[]},{"events":[]},{"events":[]}]}', b'{"sequences":[]}']
    path = tmp_path / "bodies.jsonl"
    path.write_bytes(bodies[0] + b"\n\n  \n" + bodies[1] + b"\n")
    requests = load_requests(path, "http://127.0.0.1:8123/embed", api_key="k3y")
    assert [r.sequences for r in requests] == [3, 0]
    for request, body in zip(requests, bodies, strict=True):
        head = (
            "POST /embed HTTP/1.1\r\nHost: 127.0.0.1:8123\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer k3y\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        assert request.raw == head.encode() + body
    with pytest.raises(ValueError, match="only plain http"):
        load_requests(path, "https://127.0.0.1:8123/embed")
    (tmp_path / "blank.jsonl").write_bytes(b"\n\n")
    with pytest.raises(ValueError, match="no request bodies"):
        load_requests(tmp_path / "blank.jsonl", "http://127.0.0.1:8123/embed")


def test_request_bodies_groups_in_order_and_drops_the_short_tail(tmp_path: Path) -> None:
    sequences = [[{"item_id": str(i), "timestamp": 1_000_000_000 + i, "event_type": "view"}] for i in range(10)]
    bodies = request_bodies(sequences, 4)
    decoded = [orjson.loads(b) for b in bodies]
    assert [[s["id"] for s in d["sequences"]] for d in decoded] == [["s0", "s1", "s2", "s3"], ["s4", "s5", "s6", "s7"]]
    assert [s["events"] for s in decoded[1]["sequences"]] == sequences[4:8]
    assert {d["encoding"] for d in decoded} == {"float"}
    path = write_bodies(tmp_path / "sub" / "b.jsonl", bodies)
    assert path.read_bytes().splitlines() == bodies


# -- the load generator against a real service ------------------------------------------------------------------

PER_REQUEST = 4  # the service below refuses requests with more sequences (UBS_MAX_SEQUENCES_PER_REQUEST)
LONG_S = 120.0  # a level's time limit that the request counts always reach first
# Disjoint slices of one pool of distinct real crops, so no test's sequences are in the cache from another.
OK_SLICE, MIXED_SLICE, LEVEL_SLICE, BAD_TS_SLICE = slice(0, 160), slice(160, 200), slice(200, 264), slice(264, 296)
POOL_SIZE = 296


@pytest.fixture(scope="module")
def crops(data_dir: Path, ml100k_bundle: Path) -> list[list[dict[str, Any]]]:
    """POOL_SIZE distinct crops of real ml-100k histories as /embed events."""
    from model.bundle import load_bundle
    from model.data import load_events, user_histories

    histories = user_histories(load_events(data_dir / "ml-100k", "movielens"))
    max_len = load_bundle(ml100k_bundle).max_len
    return crop_events(histories, distinct_crops(histories, POOL_SIZE, max_len, seed=7))


@pytest.fixture(scope="module")
def service(ml100k_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """`ubs-embed serve` on the real bundle, in-process cache, at most PER_REQUEST sequences per request."""
    from tests.app.service_helpers import start_service

    started = start_service(
        ml100k_bundle,
        tmp_path_factory.mktemp("bench-service"),
        UBS_MAX_SEQUENCES_PER_REQUEST=str(PER_REQUEST),
        UBS_LOG_LEVEL="warning",
    )
    yield started
    started.stop()


def embed_requests(url: str) -> dict[str, float]:
    """The service's ubs_embed_requests_total{route="/embed"} samples by status."""
    text = httpx.get(url + "/metrics", timeout=10.0).text
    counts = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "ubs_embed_requests_total" and sample.labels["route"] == "/embed":
                counts[sample.labels["status"]] = sample.value
    return counts


def counted_since(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {status: after[status] - before.get(status, 0.0) for status in after if after[status] != before.get(status)}


@pytest.mark.slow
def test_loadgen_counts_ok_requests_as_the_service_does(
    service: Any, crops: list[list[dict[str, Any]]], tmp_path: Path
) -> None:
    bodies = request_bodies(crops[OK_SLICE], PER_REQUEST)
    assert len(bodies) == 40
    path = write_bodies(tmp_path / "ok.jsonl", bodies)

    before = embed_requests(service.url)
    began = time.perf_counter()
    load = run_loadgen(service.url + "/embed", path, concurrency=4, seconds=LONG_S, max_requests=30)
    wall_s = time.perf_counter() - began
    after = embed_requests(service.url)

    # The request cap stops it (not the time, not the 40 bodies).
    assert (load.concurrency, load.requests, load.ok, load.errors, load.error_kinds) == (4, 30, 30, 0, {})
    assert load.sequences == load.ok * PER_REQUEST == 120
    assert counted_since(before, after) == {"200": 30.0}
    assert 0 < load.elapsed_s < wall_s
    assert load.sequences_per_s == load.sequences / load.elapsed_s
    assert load.requests_per_s == load.ok / load.elapsed_s
    lat = load.latency_ms
    assert list(lat) == LATENCY_KEYS
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"] <= 1000 * load.elapsed_s
    assert 0 < lat["mean"] <= lat["max"]


@pytest.mark.slow
def test_loadgen_counts_refused_requests_as_errors_by_status(
    service: Any, crops: list[list[dict[str, Any]]], tmp_path: Path
) -> None:
    good = request_bodies(crops[MIXED_SLICE], PER_REQUEST)  # 10 bodies the service answers
    too_large = request_bodies(crops[:50], PER_REQUEST + 1)  # 10 bodies over the service's limit
    assert (len(good), len(too_large)) == (10, 10)
    path = write_bodies(tmp_path / "mixed.jsonl", [b for pair in zip(good, too_large, strict=True) for b in pair])

    before = embed_requests(service.url)
    load = run_loadgen(service.url + "/embed", path, concurrency=4, seconds=LONG_S, max_requests=1000)
    after = embed_requests(service.url)

    # Without --cycle each body is sent once: the bodies run out at 20 requests.
    assert (load.requests, load.ok, load.errors, load.error_kinds) == (20, 10, 10, {"status 413": 10})
    assert load.sequences == 10 * PER_REQUEST
    assert counted_since(before, after) == {"200": 10.0, "413": 10.0}
    assert load.sequences_per_s == load.sequences / load.elapsed_s
    assert load.requests_per_s == load.ok / load.elapsed_s


@pytest.mark.slow
def test_loadgen_counts_invalid_bodies_as_errors_and_reports_no_latency(
    service: Any, crops: list[list[dict[str, Any]]], tmp_path: Path
) -> None:
    sequences = copy.deepcopy(crops[BAD_TS_SLICE])
    for events in sequences[::PER_REQUEST]:  # one sequence per request ends with a 1970 timestamp
        events[-1]["timestamp"] = 12
    bodies = request_bodies(sequences, PER_REQUEST)
    assert len(bodies) == 8
    path = write_bodies(tmp_path / "bad-timestamp.jsonl", bodies)

    before = embed_requests(service.url)
    load = run_loadgen(service.url + "/embed", path, concurrency=4, seconds=LONG_S, max_requests=12, cycle=True)
    after = embed_requests(service.url)

    # --cycle reuses the 8 bodies until the cap of 12.
    assert (load.requests, load.ok, load.errors, load.error_kinds) == (12, 0, 12, {"status 422": 12})
    assert (load.sequences, load.sequences_per_s, load.requests_per_s) == (0, 0.0, 0.0)
    assert counted_since(before, after) == {"422": 12.0}
    assert list(load.latency_ms) == LATENCY_KEYS
    assert all(math.isnan(value) for value in load.latency_ms.values())


def test_loadgen_counts_refused_connections_by_exception_name(tmp_path: Path) -> None:
    events = [{"item_id": "1", "timestamp": 1_000_000_000, "event_type": "view"}]
    path = write_bodies(tmp_path / "b.jsonl", request_bodies([events] * 3, 1))
    url = f"http://127.0.0.1:{free_port()}/embed"  # nothing listens there
    load = run_loadgen(url, path, concurrency=2, seconds=LONG_S, max_requests=7, cycle=True)
    assert (load.requests, load.ok, load.errors, load.sequences) == (7, 0, 7, 0)
    assert load.error_kinds == {"ConnectionRefusedError": 7}


@pytest.mark.slow
def test_measure_level_reads_hit_rate_and_batch_size_from_metrics(
    service: Any, crops: list[list[dict[str, Any]]], tmp_path: Path
) -> None:
    path = write_bodies(tmp_path / "level.jsonl", request_bodies(crops[LEVEL_SLICE], PER_REQUEST))
    target = SimpleNamespace(base_url=service.url)  # what measure_level uses of bench.processes.Service

    before = metric_values(service.url)
    load, hit_rate, mean_batch = measure_level(target, path, 4, LONG_S, 1000, False)  # type: ignore[arg-type]
    after = metric_values(service.url)
    assert (load.requests, load.ok, load.sequences) == (16, 16, 64)
    assert hit_rate == 0.0  # 64 sequences never seen before
    batched = after["ubs_embed_batch_size_sum"] - before["ubs_embed_batch_size_sum"]
    batches = after["ubs_embed_batch_size_count"] - before["ubs_embed_batch_size_count"]
    assert batched == 64.0
    assert mean_batch == batched / batches

    # The same sequences again: all from the cache, no inference batch at all.
    load, hit_rate, mean_batch = measure_level(target, path, 4, LONG_S, 40, True)  # type: ignore[arg-type]
    assert (load.requests, load.ok, load.sequences) == (40, 40, 160)
    assert hit_rate == 1.0
    assert math.isnan(mean_batch)


# -- check_targets and format_serving on hand-built reports -----------------------------------------------------

CEILING = [
    CeilingResult(1, 50, 1000.0, 800.0, {"p50": 1.0, "p95": 1.5, "p99": 2.0, "mean": 1.1, "max": 3.0}),
    CeilingResult(32, 40, 4000.0, 3200.0, {"p50": 8.0, "p95": 9.0, "p99": 9.5, "mean": 8.2, "max": 10.0}),
]


def level(
    mode: str,
    cache: str,
    size: int,
    conc: int,
    seq_per_s: float,
    p50: float,
    p99: float,
    errors: int = 0,
    hit_rate: float = 0.0,
    mean_batch: float = 7.5,
) -> Level:
    ok = 100 - errors
    load = LoadResult(
        concurrency=conc,
        requests=100,
        ok=ok,
        errors=errors,
        error_kinds={"status 503": errors} if errors else {},
        sequences=ok * size,
        elapsed_s=2.0,
        sequences_per_s=seq_per_s,
        requests_per_s=seq_per_s / size,
        latency_ms={"p50": p50, "p95": (p50 + p99) / 2, "p99": p99, "mean": p50, "max": 2 * p99},
    )
    return Level(mode, cache, size, conc, load, hit_rate, mean_batch)


def report(levels: list[Level]) -> ServingReport:
    return ServingReport(
        started="2025-01-02 03:04 UTC",
        machine={"cpu": "Test CPU", "cores": 2, "load_average": [1.5, 1.0, 0.5], "onnxruntime": "1.2.3"},
        bundle={"path": "/b", "model_version": "v-test", "dim": 32, "max_len": 50},
        ceiling=CEILING,
        levels=levels,
        peak_rss_mib={"batched": 210.4, "unbatched": 190.6},
        wall_s=123.4,
    )


def met_report() -> ServingReport:
    nan = float("nan")
    return report(
        [
            level("batched", "miss", 32, 8, 2400.0, 10.0, 30.0),
            level("batched", "miss", 1, 32, 900.0, 5.0, 20.0),
            level("batched", "hit", 32, 8, 9000.0, 2.0, 6.0, hit_rate=1.0, mean_batch=nan),
            level("batched", "hit", 1, 32, 5000.0, 1.25, 4.0, hit_rate=1.0, mean_batch=nan),
            level("unbatched", "miss", 32, 8, 1000.0, 25.0, 60.0),
            level("unbatched", "miss", 1, 32, 250.0, 12.0, 40.0),
        ]
    )


def missed_report() -> ServingReport:
    return report(
        [
            level("batched", "miss", 32, 8, 1800.0, 10.0, 30.0, errors=3),
            level("batched", "miss", 1, 32, 700.0, 5.0, 20.0),
            level("batched", "hit", 32, 8, 9000.0, 4.0, 6.0, hit_rate=1.0),
            level("batched", "hit", 1, 32, 5000.0, 1.0, 4.0, hit_rate=1.0),
            level("unbatched", "miss", 32, 8, 1000.0, 25.0, 60.0),
            level("unbatched", "miss", 1, 32, 250.0, 12.0, 40.0, errors=2),
        ]
    )


MET_TARGETS = [
    (
        True,
        "32-seq requests, misses, conc 8: 2400 seq/s = 60% of the model ceiling 4000 (target >= 50%; "
        "75% of the ceiling with encoding)",
    ),
    (
        True,
        "1-seq requests, conc 32: batching 3.60x the unbatched throughput (target >= 3x), "
        "p99 20.0 ms vs 40.0 ms unbatched (target: no worse)",
    ),
    (
        True,
        "cache hits: p50 at most 0.25 of the miss p50 over all 2 levels, worst at 1-seq conc 32 (target <= 0.33)",
    ),
    (True, "errors: 0 over all levels"),
]

MISSED_TARGETS = [
    (
        False,
        "32-seq requests, misses, conc 8: 1800 seq/s = 45% of the model ceiling 4000 (target >= 50%; "
        "56% of the ceiling with encoding)",
    ),
    (
        False,
        "1-seq requests, conc 32: batching 2.80x the unbatched throughput (target >= 3x), "
        "p99 20.0 ms vs 40.0 ms unbatched (target: no worse)",
    ),
    (
        False,
        "cache hits: p50 at most 0.40 of the miss p50 over all 2 levels, worst at 32-seq conc 8 (target <= 0.33)",
    ),
    (False, "errors: 5 over all levels (batched/miss/32x/c8, unbatched/miss/1x/c32)"),
]


def test_check_targets_all_met() -> None:
    assert check_targets(met_report()) == MET_TARGETS


def test_check_targets_all_missed() -> None:
    assert check_targets(missed_report()) == MISSED_TARGETS


def test_check_targets_at_exactly_the_targets_counts_them_met() -> None:
    at_the_line = report(
        [
            level("batched", "miss", 32, 8, 2000.0, 3.0, 9.0),  # 50% of 4000
            level("batched", "miss", 1, 32, 750.0, 5.0, 40.0),  # 3.00x, the same p99
            level("batched", "hit", 32, 8, 9000.0, 1.0, 2.0, hit_rate=1.0),  # p50 1/3 of the miss p50
            level("unbatched", "miss", 1, 32, 250.0, 12.0, 40.0),
        ]
    )
    assert [met for met, _ in check_targets(at_the_line)] == [True, True, True, True]


def test_check_targets_batching_faster_but_worse_p99_is_missed() -> None:
    faster_but_slower_tail = report(
        [level("batched", "miss", 1, 32, 1000.0, 5.0, 41.0), level("unbatched", "miss", 1, 32, 250.0, 12.0, 40.0)]
    )
    assert check_targets(faster_but_slower_tail) == [
        (
            False,
            "1-seq requests, conc 32: batching 4.00x the unbatched throughput (target >= 3x), "
            "p99 41.0 ms vs 40.0 ms unbatched (target: no worse)",
        ),
        (True, "errors: 0 over all levels"),
    ]


def test_check_targets_only_judges_what_was_measured() -> None:
    assert check_targets(report([])) == [(True, "errors: 0 over all levels")]


def rows_by_level(text: str) -> dict[tuple[str, str, str, str], str]:
    rows = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) == 15 and words[0] in ("batched", "unbatched"):
            rows[tuple(words[:4])] = " ".join(words[4:])
    return rows


def test_format_serving_shows_the_built_figures() -> None:
    text = format_serving(met_report())
    lines = text.splitlines()
    assert lines[0] == (
        "Serving benchmark, 2025-01-02 03:04 UTC; Test CPU, 2 cores, load average at start 1.5; onnxruntime 1.2.3; "
        "bundle v-test (dim 32, max_len 50); wall 123 s"
    )
    ceiling_at = lines.index("Ceiling (the service's Engine in-process, no HTTP): sequences/s")
    assert [line.split() for line in lines[ceiling_at + 2 : ceiling_at + 4]] == [
        ["1", "1000", "800", "1.00"],
        ["32", "4000", "3200", "8.00"],
    ]
    # requests, errors, seq/s, p50, p95, p99, hit%, batch, vs ceiling, vs unbatched, p99 / unbatched p99
    assert rows_by_level(text) == {
        ("batched", "miss", "32", "8"): "100 0 2400 10.00 20.00 30.00 0 7.5 0.60 2.40 0.50",
        ("batched", "miss", "1", "32"): "100 0 900 5.00 12.50 20.00 0 7.5 0.23 3.60 0.50",
        ("batched", "hit", "32", "8"): "100 0 9000 2.00 4.00 6.00 100 - 2.25 - -",
        ("batched", "hit", "1", "32"): "100 0 5000 1.25 2.62 4.00 100 - 1.25 - -",
        ("unbatched", "miss", "32", "8"): "100 0 1000 25.00 42.50 60.00 0 7.5 0.25 - -",
        ("unbatched", "miss", "1", "32"): "100 0 250 12.00 26.00 40.00 0 7.5 0.06 - -",
    }
    assert "Service peak RSS (VmHWM): batched 210 MiB, unbatched 191 MiB" in lines
    assert lines[lines.index("Targets:") + 1 :] == [f"  [met] {text}" for _, text in MET_TARGETS]


def test_format_serving_marks_missed_targets() -> None:
    text = format_serving(missed_report())
    lines = text.splitlines()
    assert lines[lines.index("Targets:") + 1 :] == [f"  [MISSED] {text}" for _, text in MISSED_TARGETS]
    assert rows_by_level(text)[("batched", "miss", "32", "8")] == "100 3 1800 10.00 20.00 30.00 0 7.5 0.45 1.80 0.50"


def test_a_saved_report_reads_back_to_the_same_table() -> None:
    original = met_report()
    saved = json.loads(json.dumps(original.to_json()))
    assert format_serving(report_from_json(saved)) == format_serving(original)


# -- quality -----------------------------------------------------------------------------------------------------


def history(item_ids: list[str], seconds: list[float], kinds: list[str], dwell: list[float]) -> History:
    return History("u", np.array(item_ids), np.array(seconds), np.array(kinds), np.array(dwell, dtype=np.float64))


def test_history_json_bytes_is_the_compact_request_json() -> None:
    plain = history(["a", "b"], [1_000_000_000.0, 1_500_000_000.5], ["view", "buy"], [math.nan, 3.5])
    # Integral seconds are written as integers, a missing dwell is left out, no spaces.
    plain_json = (
        '[{"item_id":"a","timestamp":1000000000,"event_type":"view"},'
        '{"item_id":"b","timestamp":1500000000.5,"event_type":"buy","dwell_time":3.5}]'
    )
    accented = history(["café"], [1_000_000_000.0], ["view"], [math.nan])
    accented_json = '[{"item_id":"café","timestamp":1000000000,"event_type":"view"}]'  # é is 2 bytes in UTF-8
    sizes = history_json_bytes([plain, accented])
    assert sizes.dtype == np.float64
    assert sizes.tolist() == [len(plain_json), len(accented_json) + 1]
    assert sizes.tolist() == [137.0, 64.0]  # counted: 1 + 58 + 1 + 76 + 1, and 63 characters + 1
