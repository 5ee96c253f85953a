"""A Ray cluster for ``search --cluster``: which cluster is meant, whether the storage can be
shared with it, how many workers it can place, and the connection.

Ray is imported here (``import_ray``) and in the modules that run on it, never by the
single-machine path: ``pip install 'autocompress[ray]'`` is optional.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

from autocompress.errors import AutocompressError, ConfigError
from autocompress.utils import redact_url

LOCAL = "ray"      # a Ray instance started on this machine for the run
AUTO = "auto"      # an existing cluster: RAY_ADDRESS, else the one running on this machine
CLIENT = "ray://"  # an existing cluster through its Ray client port (the driver runs off the cluster)


@dataclass(frozen=True)
class Cluster:
    """What ``--cluster`` names: ``ray``, ``auto``, ``ray://host:port`` or a head's ``host:port``."""
    address: str

    @property
    def local(self) -> bool:
        return self.address == LOCAL

    @property
    def client(self) -> bool:
        return self.address.startswith(CLIENT)

    def resolved(self) -> str | None:
        """The address the driver connects to (None: start a local instance; ``auto``: the
        cluster running on this machine)."""
        if self.local:
            return None
        if self.address == AUTO:
            return os.environ.get("RAY_ADDRESS") or AUTO
        return self.address


def parse_cluster(value: str) -> Cluster:
    if value in (LOCAL, AUTO):
        return Cluster(value)
    host, _, port = value.removeprefix(CLIENT).rpartition(":")
    if not host or not port.isdigit() or "/" in host:
        raise ConfigError(None, "--cluster", f"'{value}' is not a cluster: expected 'ray' (a local Ray instance), "
                                             "'auto' (RAY_ADDRESS), 'ray://host:port' or a head node's 'host:port'")
    return Cluster(value)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise AutocompressError("--cluster needs Ray, which is not installed: "
                                "pip install 'autocompress[ray]'") from None
    return ray


def check_shared_storage(cluster: Cluster, url: str, where: tuple[str | None, str], *,
                         only_this_node: bool | None = None) -> None:
    """SQLite is a file on the driver's disk: only workers on this machine can open it.
    ``where``: (study file or None, field or option) the URL came from; ``only_this_node``:
    whether the cluster is this machine alone (None: not connected yet, so only a Ray client
    address, whose driver is never on the cluster, is refused)."""
    if not url.startswith("sqlite") or cluster.local:
        return
    if not cluster.client and (only_this_node is None or only_this_node):
        return
    raise ConfigError(*where, f"{redact_url(url)} is an SQLite file on this machine, which workers on other "
                                    f"nodes of the cluster {cluster.address} cannot open: give a database URL they "
                                    "reach (postgresql://user@db-host/autocompress), or use --cluster ray")


def connect(cluster: Cluster, *, verbose: bool = False) -> Any:
    """Connect to (or start) the cluster; an address nobody answers on is one line, found
    before Ray's own connection retries (which take minutes)."""
    ray = import_ray()
    address = cluster.resolved()
    if address not in (None, AUTO):
        _check_reachable(address)
    kwargs: dict[str, Any] = {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.ERROR}
    if cluster.local:
        kwargs["include_dashboard"] = False
    try:
        # 'auto' as such: Ray then reads RAY_ADDRESS itself and sends this machine's token
        # (~/.ray/auth_token), which it never sends to an address given explicitly
        ray.init(address=AUTO if cluster.address == AUTO else address, **kwargs)
    except Exception as exc:  # ConnectionError, or Ray's own on a version mismatch
        first = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise AutocompressError(f"--cluster {cluster.address}: cannot connect to Ray ({first})") from None
    return ray


def _check_reachable(address: str) -> None:
    host, _, port = address.removeprefix(CLIENT).rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise AutocompressError(f"--cluster {address}: cannot reach the Ray cluster ({reason})") from None


@dataclass(frozen=True)
class Capacity:
    """How many workers the cluster can place: one per GPU where it has GPUs (each also takes
    ``cpus`` CPUs), else one per ``cpus`` CPUs; summed over the alive nodes."""
    workers: int
    gpus: bool
    nodes: int
    only_this_node: bool    # the cluster is this machine alone (an SQLite file is then shared)

    def describe(self) -> str:
        unit = "one per GPU" if self.gpus else "CPU workers"
        return f"{self.workers} worker(s) ({unit}) on {self.nodes} node(s)"


def capacity(ray: Any, cpus: int, *, client: bool) -> Capacity:
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    gpus = any(n["Resources"].get("GPU", 0) >= 1 for n in nodes)
    fits = 0
    for n in nodes:
        by_cpu = int(n["Resources"].get("CPU", 0) // cpus)
        fits += min(int(n["Resources"].get("GPU", 0)), by_cpu) if gpus else by_cpu
    here = ray.get_runtime_context().get_node_id() if not client else None
    return Capacity(fits, gpus, len(nodes), only_this_node=bool(nodes) and all(n["NodeID"] == here for n in nodes))


def workers_to_place(requested: int | None, cap: Capacity) -> int:
    if cap.workers < 1:
        raise ConfigError(None, "--cpus-per-worker", f"the cluster cannot place a single worker ({cap.describe()})")
    if requested is not None and requested > cap.workers:
        raise ConfigError(None, "--workers", f"{requested} workers, but the cluster can place {cap.describe()}")
    return requested or cap.workers
