"""Closed-loop HTTP load generator for `POST /embed`, run as its own process.

`concurrency` keep-alive connections each send the next request body as soon
as the previous answer is in. Bodies are read from a file of pre-serialised
JSON documents (one per line) and sent as bytes, so the client spends its CPU
on sockets, not on building JSON: on a 2-core machine the generator shares the
cores with the service, and a light client keeps the measurement about the
service. The HTTP/1.1 client is a few lines of asyncio streams on purpose; a
general client library costs several times more CPU per request.

A request counts as ok only when the status is 200 and the answer holds one
embedding per sequence sent; anything else (4xx/5xx including 429/503
backpressure, a timeout, a dropped connection, a short answer) is an error.

    python -m bench.loadgen --url http://127.0.0.1:8000/embed --bodies bodies.jsonl \
        --concurrency 32 --duration 3 [--cycle] [--max-requests N]

prints one JSON object (see `LoadResult`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import orjson

PERCENTILES = (50, 95, 99)


@dataclass
class LoadResult:
    concurrency: int
    requests: int  # requests that got an outcome (ok or error)
    ok: int
    errors: int
    error_kinds: dict[str, int]  # e.g. {"status 503": 4, "timeout": 1}
    sequences: int  # sequences answered in ok requests
    elapsed_s: float  # first send to last answer
    sequences_per_s: float
    requests_per_s: float
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50/p95/p99/mean/max over ok requests


def latency_summary(seconds: list[float] | np.ndarray) -> dict[str, float]:
    """p50/p95/p99/mean/max in milliseconds (empty input: all NaN)."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    if ms.size == 0:
        return {key: float("nan") for key in ("p50", "p95", "p99", "mean", "max")}
    out = {f"p{q}": float(v) for q, v in zip(PERCENTILES, np.percentile(ms, PERCENTILES), strict=True)}
    out.update(mean=float(ms.mean()), max=float(ms.max()))
    return out


@dataclass(frozen=True)
class Request:
    raw: bytes  # the whole HTTP request: head + body
    sequences: int


def load_requests(path: Path, url: str, api_key: str | None = None) -> list[Request]:
    """One HTTP request per non-empty line of the bodies file."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"only plain http://host:port/path URLs are supported, not {url!r}")
    host = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
    extra = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
    requests = []
    for line in path.read_bytes().splitlines():
        body = line.strip()
        if not body:
            continue
        sequences = len(orjson.loads(body).get("sequences", []))
        head = (
            f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"{extra}Content-Length: {len(body)}\r\n\r\n"
        )
        requests.append(Request(head.encode() + body, sequences))
    if not requests:
        raise ValueError(f"no request bodies in {path}")
    return requests


class Connection:
    """One keep-alive HTTP/1.1 connection; reopened after the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._read_chunked()
        else:
            body = await self.reader.read()  # body ends when the server closes
            headers["connection"] = "close"
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, body

    async def _read_chunked(self) -> bytes:
        assert self.reader is not None
        chunks = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return b"".join(chunks)
            chunks.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None


def answer_error(status: int, body: bytes, sequences: int) -> str | None:
    """None when the answer is a complete success, else the kind of error."""
    if status != 200:
        return f"status {status}"
    try:
        embeddings = orjson.loads(body)["embeddings"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "bad body"
    if not isinstance(embeddings, list):
        return "bad body"
    return None if len(embeddings) == sequences else "wrong count"


async def drive(
    url: str,
    requests: list[Request],
    concurrency: int,
    duration_s: float,
    max_requests: int | None = None,
    cycle: bool = False,
    timeout_s: float = 30.0,
) -> LoadResult:
    """Send requests in order from `concurrency` connections until the time, the count or the bodies run out."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    limit = max_requests if max_requests is not None else (sys.maxsize if cycle else len(requests))
    if not cycle:
        limit = min(limit, len(requests))
    latencies: list[float] = []
    kinds: Counter[str] = Counter()
    sequences = 0
    issued = 0
    last_done = 0.0
    started = time.perf_counter()
    deadline = started + duration_s

    async def worker() -> None:
        nonlocal issued, sequences, last_done
        connection = Connection(host, port)
        try:
            while issued < limit and time.perf_counter() < deadline:
                request = requests[issued % len(requests)]
                issued += 1
                sent = time.perf_counter()
                try:
                    status, body = await asyncio.wait_for(connection.send(request.raw), timeout_s)
                    error = answer_error(status, body, request.sequences)
                except TimeoutError:
                    error = "timeout"
                    await connection.close()
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    error = type(exc).__name__
                    await connection.close()
                last_done = time.perf_counter()
                if error is None:
                    latencies.append(last_done - sent)
                    sequences += request.sequences
                else:
                    kinds[error] += 1
        finally:
            await connection.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = max(last_done - started, 1e-9)
    ok = len(latencies)
    errors = sum(kinds.values())
    return LoadResult(
        concurrency=concurrency,
        requests=ok + errors,
        ok=ok,
        errors=errors,
        error_kinds=dict(kinds),
        sequences=sequences,
        elapsed_s=elapsed,
        sequences_per_s=sequences / elapsed,
        requests_per_s=ok / elapsed,
        latency_ms=latency_summary(latencies),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="http://host:port/embed")
    parser.add_argument("--bodies", type=Path, required=True, help="file of JSON request bodies, one per line")
    parser.add_argument("--concurrency", type=int, default=1, help="open connections, one request in flight each")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds to keep sending")
    parser.add_argument("--max-requests", type=int, default=None, help="stop after this many requests")
    parser.add_argument("--cycle", action="store_true", help="reuse the bodies in order (default: each once)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before a request counts as timed out")
    parser.add_argument("--api-key", default=None, help="sent as Authorization: Bearer <key>")
    args = parser.parse_args(argv)
    requests = load_requests(args.bodies, args.url, args.api_key)
    result = asyncio.run(
        drive(args.url, requests, args.concurrency, args.duration, args.max_requests, args.cycle, args.timeout)
    )
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
