"""Container health check: exit 0 when the service's liveness route answers 200.

Standard library only, so the slim images need no curl. The port comes from
UBS_PORT like the service's own; the route is /healthz unless given.

    python healthcheck.py [route]
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def check(route: str = "/healthz", timeout_s: float = 3.0) -> int:
    port = os.environ.get("UBS_PORT", "8000")
    url = f"http://127.0.0.1:{port}{route}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            status = response.status
    except (urllib.error.URLError, OSError) as exc:
        sys.stderr.write(f"{url}: {exc}\n")
        return 1
    if status != 200:
        sys.stderr.write(f"{url}: HTTP {status}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(check(*sys.argv[1:2]))
