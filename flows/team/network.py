"""Hosts, ports and HTTP for the servers: where a server listening on a host is reached, whether a port is free,
health checks, and the Prefect REST calls `l2o up` / `status` / `worker` make without importing Prefect."""

import json
import socket
import urllib.parse
import urllib.request

__all__ = [
    "WILDCARD_HOSTS",
    "local_host",
    "public_host",
    "is_loopback",
    "port_busy",
    "healthy",
    "http_json",
    "quote",
    "online_names",
    "online_workers",
]

WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def local_host(host: str) -> str:
    """Where this machine reaches a server listening on ``host``."""
    return "127.0.0.1" if host in WILDCARD_HOSTS else host


def public_host(host: str) -> str:
    """Where other machines reach a server listening on ``host``."""
    return socket.getfqdn() if host in WILDCARD_HOSTS else host


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def port_busy(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # like the servers (uvicorn sets it): a port in TIME_WAIT after `l2o down` is free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def healthy(url: str, timeout: float = 2.0) -> bool:
    from flows.preflight import health_problem  # noqa: PLC0415  (the one HTTP health check; stdlib only)

    return bool(url) and health_problem(url, timeout) is None


def http_json(url: str, body: dict | None = None, timeout: float = 5.0):
    """GET ``url`` (POST ``body`` as JSON when given); the parsed JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read().decode())


def quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def online_names(rows: list[dict]) -> list[str]:
    """The names of the workers that are online among the rows of ``/work_pools/<pool>/workers/filter``."""
    return [r.get("name") for r in rows if str(r.get("status", "")).upper() == "ONLINE"]


def online_workers(api_url: str, pool: str) -> list[str]:
    """The names of the workers online in ``pool`` (none when the server does not answer)."""
    try:
        rows = http_json(f"{api_url}/work_pools/{quote(pool)}/workers/filter", {}, timeout=3)
    except (OSError, ValueError):
        return []
    return online_names(rows)
