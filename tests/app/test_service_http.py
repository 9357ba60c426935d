"""The service over real HTTP: a real uvicorn process, a real Redis, the real ml-100k model."""

from __future__ import annotations

import asyncio
import base64
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client.parser import text_string_to_metric_families
from service_helpers import RedisServer, Service, start_service, wait_until

from model.bundle import load_bundle
from model.features import OUTPUT_NAME, pad_batch

MAX_SEQUENCES = 16
MAX_BODY_BYTES = 256 * 1024
# Generous: the test machine may be busy; an outage is a refused connection, never a wait.
REDIS_TIMEOUT_MS = "1000"
# uvicorn re-raises SIGTERM after its graceful shutdown, so the exit is "terminated by SIGTERM".
GRACEFUL_EXIT = (0, -signal.SIGTERM)

pytestmark = pytest.mark.slow


# -- helpers ------------------------------------------------------------------------


def scrape(service: Service) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics, keyed by (sample name, labels)."""
    text = httpx.get(service.url + "/metrics", timeout=5).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def body(*sequences: list[dict[str, Any]], encoding: str = "float") -> dict[str, Any]:
    rows = [{"id": f"s{i}", "events": events} for i, events in enumerate(sequences)]
    return {"sequences": rows, "encoding": encoding}


def post(service: Service, payload: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(service.url + "/embed", json=payload, timeout=30, **kwargs)


class Reference:
    """One-by-one inference in this process: what each sequence must get back."""

    def __init__(self, bundle_dir: Path) -> None:
        self.bundle = load_bundle(bundle_dir)
        self.session = ort.InferenceSession(str(self.bundle.onnx_path), providers=["CPUExecutionProvider"])

    def vector(self, events: list[dict[str, Any]]) -> np.ndarray:
        encoded = self.bundle.preprocessor.encode_events(events)
        return self.session.run([OUTPUT_NAME], pad_batch([encoded]))[0][0]


@pytest.fixture(scope="module")
def reference(bundle_dir: Path) -> Reference:
    return Reference(bundle_dir)


@pytest.fixture(scope="module")
def service(
    bundle_dir: Path, module_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory, reference: Reference
) -> Iterator[Service]:
    """The main service: Redis cache, small limits so the limit tests stay small."""
    started = start_service(
        bundle_dir,
        tmp_path_factory.mktemp("service"),
        REDIS_URL=module_redis.url,
        UBS_MAX_SEQUENCES_PER_REQUEST=str(MAX_SEQUENCES),
        UBS_MAX_EVENTS_PER_SEQUENCE=str(2 * reference.bundle.max_len),
        UBS_MAX_BODY_BYTES=str(MAX_BODY_BYTES),
        UBS_MAX_WAIT_MS="20",
        UBS_REDIS_TIMEOUT_MS=REDIS_TIMEOUT_MS,
    )
    yield started
    assert started.stop() in GRACEFUL_EXIT, started.log()


def history(events: list[list[dict[str, Any]]], user: int, length: int) -> list[dict[str, Any]]:
    """`length` consecutive events of some user with at least that many (20 at least in ml-100k)."""
    candidates = [h for h in events if len(h) >= length] or events
    chosen = candidates[user % len(candidates)]
    return chosen[:length]


# -- correctness under concurrency ------------------------------------------------------


def test_concurrent_requests_get_exactly_their_one_by_one_vectors(
    service: Service, reference: Reference, ml100k_events: list[list[dict[str, Any]]]
) -> None:
    max_len = reference.bundle.max_len
    requests = []
    for k in range(200):
        sequences = [history(ml100k_events, 3 * k + j, 1 + (7 * k + 13 * j) % max_len) for j in range(1 + k % 3)]
        requests.append(sequences)
    before = scrape(service)

    async def run_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=service.url, limits=limits, timeout=60) as client:
            return await asyncio.gather(*(client.post("/embed", json=body(*seqs)) for seqs in requests))

    responses = asyncio.run(run_all())
    for sequences, response in zip(requests, responses, strict=True):
        assert response.status_code == 200, response.text
        rows = response.json()["embeddings"]
        assert [row["id"] for row in rows] == [f"s{i}" for i in range(len(sequences))]
        for events, row in zip(sequences, rows, strict=True):
            assert row["events_used"] == len(events)
            np.testing.assert_allclose(row["embedding"], reference.vector(events), atol=1e-5, rtol=0)
    after = scrape(service)
    batches = value(after, "ubs_embed_batch_size_count") - value(before, "ubs_embed_batch_size_count")
    computed = value(after, "ubs_embed_batch_size_sum") - value(before, "ubs_embed_batch_size_sum")
    assert 0 < batches < computed  # sequences of different requests really shared batches
    assert {len(s) for r in requests for s in r} >= {1, max_len}


def test_base64_encoding_round_trips(service: Service, ml100k_events: list[list[dict[str, Any]]]) -> None:
    events = history(ml100k_events, 5, 9)
    floats = post(service, body(events)).json()
    packed = post(service, body(events, encoding="base64")).json()
    raw = base64.b64decode(packed["embeddings"][0]["embedding"])
    assert len(raw) == 4 * packed["dim"]
    # The JSON numbers are the shortest decimals that read back to exactly these float32 values.
    as_float32 = np.asarray(floats["embeddings"][0]["embedding"], dtype=np.float32)
    np.testing.assert_array_equal(np.frombuffer(raw, dtype="<f4"), as_float32)


# -- cache --------------------------------------------------------------------------


def test_second_identical_history_is_a_cache_hit_whatever_its_json(
    service: Service, ml100k_events: list[list[dict[str, Any]]]
) -> None:
    events = history(ml100k_events, 41, 17)
    first = post(service, body(events)).json()["embeddings"][0]
    # The same history written differently: ISO timestamps, integer item ids, extra fields.
    again = [dict(e) for e in events]
    for e in again[:5]:
        e["timestamp"] = np.datetime_as_string(np.datetime64(e["timestamp"], "s"), unit="s") + "Z"
        e["item_id"] = int(e["item_id"])
        e["category"] = "ignored"
    second = post(service, body(again)).json()["embeddings"][0]
    assert first["cached"] is False and second["cached"] is True
    assert second["embedding"] == first["embedding"]


def test_duplicate_sequences_in_one_request_are_computed_once(
    service: Service, ml100k_events: list[list[dict[str, Any]]]
) -> None:
    events = history(ml100k_events, 77, 23)
    before = scrape(service)
    rows = post(service, body(events, events, events)).json()["embeddings"]
    after = scrape(service)
    assert rows[0]["embedding"] == rows[1]["embedding"] == rows[2]["embedding"]
    assert value(after, "ubs_embed_batch_size_sum") - value(before, "ubs_embed_batch_size_sum") == 1


def test_new_model_version_does_not_hit_old_entries(
    service: Service,
    second_bundle_dir: Path,
    module_redis: RedisServer,
    service_factory: Any,
    ml100k_events: list[list[dict[str, Any]]],
) -> None:
    events = history(ml100k_events, 101, 12)
    old = post(service, body(events)).json()
    assert post(service, body(events)).json()["embeddings"][0]["cached"] is True
    new_service = service_factory(second_bundle_dir, REDIS_URL=module_redis.url, UBS_REDIS_TIMEOUT_MS=REDIS_TIMEOUT_MS)
    new = post(new_service, body(events)).json()
    assert new["model_version"] != old["model_version"]
    assert new["embeddings"][0]["cached"] is False
    assert post(new_service, body(events)).json()["embeddings"][0]["cached"] is True


def test_redis_outage_keeps_every_request_200_and_hits_come_back(
    bundle_dir: Path, redis_server: RedisServer, service_factory: Any, ml100k_events: list[list[dict[str, Any]]]
) -> None:
    service = service_factory(bundle_dir, REDIS_URL=redis_server.url, UBS_REDIS_TIMEOUT_MS=REDIS_TIMEOUT_MS)
    events = history(ml100k_events, 7, 20)
    assert post(service, body(events)).json()["embeddings"][0]["cached"] is False
    assert post(service, body(events)).json()["embeddings"][0]["cached"] is True

    redis_server.stop()
    for k in range(20):
        response = post(service, body(history(ml100k_events, 7 + k % 3, 20)))
        assert response.status_code == 200, response.text
        assert response.json()["embeddings"][0]["cached"] is False
    assert value(scrape(service), "ubs_embed_cache_errors_total") >= 1
    ready = httpx.get(service.url + "/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["cache"]["state"].startswith("unavailable")

    redis_server.start()  # empty: nothing survived the restart

    def hit() -> bool:
        response = post(service, body(events))
        assert response.status_code == 200
        return bool(response.json()["embeddings"][0]["cached"])

    wait_until(hit, 20.0, "cache hits after Redis came back")
    assert httpx.get(service.url + "/readyz", timeout=5).json()["cache"]["state"] == "ok"


# -- metrics ------------------------------------------------------------------------


def test_metrics_match_the_requests_made(
    service: Service, reference: Reference, ml100k_events: list[list[dict[str, Any]]]
) -> None:
    before = scrape(service)
    good = [[history(ml100k_events, 300 + k, 3 + k)] * (1 + k % 2) for k in range(6)]  # some duplicates
    for sequences in good:
        assert post(service, body(*sequences)).status_code == 200
    repeat = post(service, body(*good[0]))  # all hits
    assert repeat.status_code == 200
    bad = post(service, {"sequences": [{"events": [{"item_id": "1"}]}]})
    assert bad.status_code == 422
    after = scrape(service)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    n_requests = len(good) + 1
    sequences = [s for r in [*good, good[0]] for s in r]
    assert delta("ubs_embed_requests_total", route="/embed", status="200") == n_requests
    assert delta("ubs_embed_requests_total", route="/embed", status="422") == 1
    assert delta("ubs_embed_request_duration_seconds_count", route="/embed") == n_requests + 1
    assert delta("ubs_embed_sequences_per_request_count") == n_requests
    assert delta("ubs_embed_sequences_per_request_sum") == len(sequences)
    assert delta("ubs_embed_events_per_sequence_count") == len(sequences)
    assert delta("ubs_embed_events_per_sequence_sum") == sum(len(s) for s in sequences)
    assert delta("ubs_embed_cache_hits_total") == len(good[0])
    assert delta("ubs_embed_cache_misses_total") == len(sequences) - len(good[0])
    assert delta("ubs_embed_batch_size_sum") == len(good)  # one unique history per good request
    assert delta("ubs_embed_queue_wait_seconds_count") == len(good)
    assert delta("ubs_embed_preprocess_seconds_count") == n_requests
    assert delta("ubs_embed_failures_total", reason="invalid_request") == 1
    assert value(after, "ubs_embed_queue_depth") == 0
    assert value(after, "ubs_embed_cache_errors_total") == 0
    info = {labels: v for (name, labels), v in after.items() if name == "ubs_embed_model_info"}
    assert info == {
        frozenset(
            {
                ("model_version", reference.bundle.model_version),
                ("provider", "CPUExecutionProvider"),
                ("requested_provider", "auto"),
            }
        ): 1.0
    }


def test_info_reports_model_provider_and_limits(service: Service, reference: Reference) -> None:
    info = httpx.get(service.url + "/info", timeout=5).json()
    assert info["model_version"] == reference.bundle.model_version
    assert info["dim"] == reference.bundle.dim and info["max_len"] == reference.bundle.max_len
    assert info["vocabulary_size"] == len(reference.bundle.preprocessor.item_ids)
    assert info["event_types"] == reference.bundle.preprocessor.event_types
    assert info["provider"] == "CPUExecutionProvider" and info["requested_provider"] == "auto"
    assert info["limits"]["max_sequences_per_request"] == MAX_SEQUENCES
    assert info["limits"]["max_body_bytes"] == MAX_BODY_BYTES
    assert info["batching"] == {"max_batch_size": 32, "max_wait_ms": 20.0, "max_queue": 4096}
    assert info["cache"]["backend"] == "redis"
    assert httpx.get(service.url + "/healthz", timeout=5).json() == {"status": "ok"}
    schema = httpx.get(service.url + "/openapi.json", timeout=5).json()
    assert schema["components"]["schemas"]["EmbedRequest"]["examples"][0]["sequences"][0]["events"]
    assert httpx.get(service.url + "/docs", timeout=5).status_code == 200


# -- errors -------------------------------------------------------------------------

EVENT = {"item_id": "242", "timestamp": 881250949, "event_type": "rating_3"}


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({**EVENT, "item_id": ["242"]}, "sequences[1].events[1].item_id"),
        ({**EVENT, "timestamp": True}, "sequences[1].events[1].timestamp"),
        ({**EVENT, "dwell_time": "long"}, "sequences[1].events[1].dwell_time"),
        ({k: v for k, v in EVENT.items() if k != "event_type"}, "sequences[1].events[1].event_type"),
        ({k: v for k, v in EVENT.items() if k != "timestamp"}, "sequences[1].events[1].timestamp"),
        ({**EVENT, "timestamp": "yesterday"}, "sequences[1].events[1].timestamp"),
        ({**EVENT, "timestamp": 12345}, "sequences[1].events[1].timestamp"),
        ({**EVENT, "timestamp": 10**400}, "sequences[1].events[1].timestamp"),
        ({**EVENT, "timestamp": "2150-01-01T00:00:00Z"}, "sequences[1].events[1].timestamp"),
        ({**EVENT, "dwell_time": -3}, "sequences[1].events[1].dwell_time"),
        (5, "sequences[1].events[1]"),
        ("view", "sequences[1].events[1]"),
        (None, "sequences[1].events[1]"),
        ([EVENT], "sequences[1].events[1]"),
    ],
)
def test_bad_event_is_422_naming_the_field(service: Service, event: Any, field: str) -> None:
    # The bad event sits in the second sequence: the path names the sequence and the event.
    response = post(service, {"sequences": [{"events": [EVENT]}, {"events": [EVENT, event]}]})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request"
    assert [f["field"] for f in error["fields"]] == [field]
    assert field in error["message"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "sequences"),
        ({"sequences": []}, "sequences"),
        ({"sequences": [{"id": "u1"}]}, "sequences[0].events"),
        ({"sequences": [{"events": [EVENT]}], "encoding": "hex"}, "encoding"),
    ],
)
def test_bad_request_shape_is_422_naming_the_field(service: Service, payload: Any, field: str) -> None:
    response = post(service, payload)
    assert response.status_code == 422, response.text
    assert [f["field"] for f in response.json()["error"]["fields"]] == [field]


def test_body_that_is_not_json_is_422(service: Service) -> None:
    response = httpx.post(
        service.url + "/embed", content=b"{not json", headers={"content-type": "application/json"}, timeout=5
    )
    assert response.status_code == 422
    assert response.json()["error"]["type"] == "invalid_request"
    assert response.json()["error"]["fields"] == [{"field": "body", "message": "not valid JSON (at character 1)"}]


@pytest.mark.parametrize(
    ("text", "field"),
    [
        # JSON extensions the body parser reads (so validation names the field) rather than refuses.
        (b'{"item_id": "242", "timestamp": 881250949, "event_type": "view", "dwell_time": NaN}', "dwell_time"),
        (b'{"item_id": "242", "timestamp": 1e400, "event_type": "view"}', "timestamp"),
        (b'{"item_id": 123456789012345678901234567890, "timestamp": NaN, "event_type": "view"}', "timestamp"),
        # orjson reads an integer of 2^64 or more as a float: refused as an id (documented in the README).
        (b'{"item_id": 18446744073709551616, "timestamp": 881250949, "event_type": "view"}', "item_id"),
    ],
)
def test_non_standard_numbers_are_422_naming_the_field(service: Service, text: bytes, field: str) -> None:
    body = b'{"sequences": [{"events": [' + text + b"]}]}"
    response = httpx.post(service.url + "/embed", content=body, headers={"content-type": "application/json"}, timeout=5)
    assert response.status_code == 422, response.text
    assert [f["field"] for f in response.json()["error"]["fields"]] == [f"sequences[0].events[0].{field}"]


def test_too_many_sequences_is_413(service: Service) -> None:
    response = post(service, {"sequences": [{"events": [EVENT]}] * (MAX_SEQUENCES + 1)})
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["type"] == "too_large" and error["fields"][0]["field"] == "sequences"
    assert "UBS_MAX_SEQUENCES_PER_REQUEST" in error["message"]


def test_too_many_events_is_413(service: Service, reference: Reference) -> None:
    events = [{**EVENT, "timestamp": 881250949 + i} for i in range(2 * reference.bundle.max_len + 1)]
    response = post(service, {"sequences": [{"events": [EVENT]}, {"events": events}]})
    assert response.status_code == 413
    assert response.json()["error"]["fields"][0]["field"] == "sequences[1].events"


def test_body_too_large_is_413(service: Service) -> None:
    padding = "x" * MAX_BODY_BYTES
    response = post(service, {"sequences": [{"id": padding, "events": [EVENT]}]})
    assert response.status_code == 413
    assert response.json()["error"]["fields"][0]["field"] == "body"


def test_unknown_route_is_404_in_the_error_format(service: Service) -> None:
    response = httpx.get(service.url + "/nope", timeout=5)
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found"


def test_api_key_is_required_when_set(bundle_dir: Path, service_factory: Any) -> None:
    service = service_factory(bundle_dir, UBS_API_KEY="s3cret")
    payload = {"sequences": [{"events": [EVENT]}]}
    missing = post(service, payload)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["type"] == "unauthorized"
    assert post(service, payload, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(service.url + "/info", timeout=5).status_code == 401
    assert post(service, payload, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    for open_route in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(service.url + open_route, timeout=5).status_code == 200


# -- overload, faults, disconnects, shutdown ---------------------------------------------


def queue_depth(service: Service) -> float:
    return value(scrape(service), "ubs_embed_queue_depth")


def test_full_queue_answers_503_with_retry_after_at_once(bundle_dir: Path, service_factory: Any) -> None:
    # A batch closes only when 4 sequences are queued (the wait is a minute), and the queue holds 4.
    service = service_factory(
        bundle_dir,
        UBS_MAX_BATCH_SIZE="4",
        UBS_MAX_QUEUE="4",
        UBS_MAX_SEQUENCES_PER_REQUEST="4",
        UBS_MAX_WAIT_MS="60000",
    )
    # Distinct histories: identical ones in a request are computed (and queued) once.
    seqs = [{"events": [{**EVENT, "item_id": str(100 + i)}]} for i in range(6)]
    results: dict[str, httpx.Response] = {}
    waiting = threading.Thread(target=lambda: results.update(a=post(service, {"sequences": seqs[:3]})))
    waiting.start()
    wait_until(lambda: queue_depth(service) == 3, 10.0, "3 queued sequences")
    refused = post(service, {"sequences": seqs[3:5]})
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "overloaded"
    assert "a" not in results  # the queued request is still waiting
    assert post(service, {"sequences": seqs[5:]}).status_code == 200  # fills the batch: both go through
    waiting.join(timeout=30)
    assert results["a"].status_code == 200
    assert value(scrape(service), "ubs_embed_failures_total", reason="overloaded") == 1


def test_failed_batch_fails_only_its_callers(
    mismatched_bundle_dir: Path, service_factory: Any, ml100k_events: list[list[dict[str, Any]]]
) -> None:
    # Batches of exactly 2; an item past the ONNX table makes onnxruntime fail that batch for real.
    service = service_factory(mismatched_bundle_dir, UBS_MAX_BATCH_SIZE="2", UBS_MAX_WAIT_MS="60000")
    broken = [{**EVENT, "item_id": "beyond-table-7"}]

    async def pair(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
            one = asyncio.ensure_future(client.post("/embed", json=body(first)))
            while queue_depth(service) < 1:
                await asyncio.sleep(0.02)
            two = asyncio.ensure_future(client.post("/embed", json=body(second)))
            return list(await asyncio.gather(one, two))

    failed = asyncio.run(pair(broken, history(ml100k_events, 1, 5)))
    assert [r.status_code for r in failed] == [500, 500]
    assert all(r.json()["error"]["type"] == "inference_failed" for r in failed)
    assert "Gather" not in failed[0].text  # no raw exception text for the client
    served = asyncio.run(pair(history(ml100k_events, 2, 5), history(ml100k_events, 3, 6)))
    assert [r.status_code for r in served] == [200, 200]
    assert value(scrape(service), "ubs_embed_failures_total", reason="inference_failed") == 2
    assert service.process.poll() is None


def test_client_that_went_away_is_dropped_before_inference(bundle_dir: Path, service_factory: Any) -> None:
    service = service_factory(bundle_dir, UBS_MAX_BATCH_SIZE="2", UBS_MAX_WAIT_MS="60000")
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(service.url + "/embed", json={"sequences": [{"events": [EVENT]}]}, timeout=0.5)
    wait_until(lambda: queue_depth(service) == 0, 10.0, "the abandoned sequence to leave the queue")
    assert value(scrape(service), "ubs_embed_failures_total", reason="client_closed") == 1
    assert value(scrape(service), "ubs_embed_batch_size_count") == 0  # never reached the model


def test_sigterm_lets_in_flight_requests_finish(bundle_dir: Path, service_factory: Any) -> None:
    service = service_factory(bundle_dir, UBS_MAX_WAIT_MS="1500")
    results: dict[str, httpx.Response] = {}
    in_flight = threading.Thread(target=lambda: results.update(r=post(service, {"sequences": [{"events": [EVENT]}]})))
    in_flight.start()
    wait_until(lambda: queue_depth(service) == 1, 10.0, "the request to be queued")
    service.process.send_signal(signal.SIGTERM)
    in_flight.join(timeout=30)
    assert results["r"].status_code == 200
    assert service.process.wait(timeout=30) in GRACEFUL_EXIT
    assert "Application shutdown complete" in service.log()


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this machine has CUDA")
def test_cuda_asked_on_a_machine_without_it_serves_on_cpu_and_says_so(bundle_dir: Path, service_factory: Any) -> None:
    service = service_factory(bundle_dir, UBS_PROVIDER="cuda")
    assert post(service, {"sequences": [{"events": [EVENT]}]}).status_code == 200
    info = httpx.get(service.url + "/info", timeout=5).json()
    assert (info["provider"], info["requested_provider"]) == ("CPUExecutionProvider", "cuda")
    samples = scrape(service)
    labels = [dict(labels) for (name, labels), v in samples.items() if name == "ubs_embed_model_info" and v == 1]
    assert [(x["provider"], x["requested_provider"]) for x in labels] == [("CPUExecutionProvider", "cuda")]
    assert "UBS_PROVIDER=cuda but the session runs on CPUExecutionProvider" in service.log()
