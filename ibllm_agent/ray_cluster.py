"""Joining a Ray cluster for `ibllm serve --ray` and `ibllm cache build --ray` (the optional `ray` extra).

`ray.init(address=...)` retries an unreachable head for about a minute before it fails; `connect` tries the
address's TCP port first, so that a wrong address is a `ClusterError` naming it within `timeout_s`.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from ibllm_agent.serve.process import PACKAGE_ROOT, checkout_pythonpath

RAY_CLIENT_PORT = 10001
GCS_PORT = 6379


class ClusterError(RuntimeError):
    """The Ray cluster cannot be used: not installed, unreachable, or it refused the job."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise ClusterError("Ray is not installed: pip install 'ibllm-agent[ray]'") from None
    return ray


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Raise `ClusterError` unless something accepts TCP connections at `address` ("host:port" of the GCS or
    "ray://host:port" of the Ray Client server). "auto" and "local" are left to Ray."""
    if address in ("auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"gcs://{address}")
    if not parsed.hostname:
        raise ClusterError(f"a Ray address looks like host:port or ray://host:port, got {address!r}")
    try:
        port = parsed.port or (RAY_CLIENT_PORT if parsed.scheme == "ray" else GCS_PORT)
    except ValueError:
        raise ClusterError(f"a Ray address looks like host:port or ray://host:port, got {address!r}") from None
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout_s).close()
    except OSError as e:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {e}") from None


def connect(address: str | None, *, timeout_s: float = 5.0, namespace: str | None = None):
    """`ray.init` on the cluster at `address` (None: a new single-machine cluster in this process's session).

    Workers import this package as the driver does: its checkout is put on their PYTHONPATH unless it is
    installed on every node (site-packages), which is the way for a real cluster (an image with
    `ibllm-agent[ray]`)."""
    ray = import_ray()
    if address is not None:
        check_reachable(address, timeout_s)
    if ray.is_initialized():
        return ray
    env = {}
    if "site-packages" not in str(PACKAGE_ROOT):
        env["PYTHONPATH"] = checkout_pythonpath()
    try:
        ray.init(address=address, namespace=namespace, runtime_env={"env_vars": env} if env else None,
                 logging_level="WARNING", log_to_driver=False, include_dashboard=False if address is None else None)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ClusterError(f"could not join the Ray cluster at {address or 'a new local cluster'}: "
                           f"{' '.join(str(e).split())[:300]}") from None
    return ray


# --- a cluster on this machine, for tests and benchmarks -------------------------------------------------

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
"""Makes Ray keep 127.0.0.1 as the node address (by default it swaps loopback for the machine's network
address, and its servers then listen there): every process of a loopback cluster, drivers included, needs
it. `ray start` refuses extra nodes under it, hence `LocalCluster`."""


NODE_HEALTH_CHECK = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000,
                     "health_check_failure_threshold": 3}
"""How the head tells a lost node: a check a second, dead after 3 failed in a row (Ray's defaults, every 3 s
and 5 failures, take ~15 s, which the tests that kill a node would wait through every time)."""


class LocalCluster:
    """A head and `workers` extra nodes on 127.0.0.1, in a child process (`python -m ibllm_agent.ray_cluster`),
    each node with its own raylet and object store; `address` is the head's GCS, `env` what a driver needs.

        with LocalCluster(workers=1) as cluster:
            subprocess.run(["ibllm", "serve", "--ray", "--address", cluster.address], env=cluster.env)
            cluster.kill_workers()             # SIGKILL every process of the extra nodes
    """

    def __init__(self, *, head_cpus: int = 2, workers: int = 1, worker_cpus: int = 1,
                 object_store_bytes: int = 80 * 1024 * 1024, ready_timeout_s: float = 120.0):
        import json
        import subprocess
        import sys
        import tempfile

        self.env = {**os.environ, "PYTHONPATH": checkout_pythonpath(), **LOOPBACK_ENV}
        self.log = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ibllm_agent.ray_cluster", json.dumps(
                {"head_cpus": head_cpus, "workers": workers, "worker_cpus": worker_cpus,
                 "object_store_bytes": object_store_bytes})],
            env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self._reply_timeout = ready_timeout_s
        self.address = self._reply()["address"]

    def _reply(self) -> dict:
        import json
        import select

        ready, _, _ = select.select([self.process.stdout], [], [], self._reply_timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            self.stop()
            self.log.seek(0)
            raise ClusterError(f"the local Ray cluster did not answer: {self.log.read()[-3000:]}")
        return json.loads(line)

    def kill_workers(self) -> None:
        """SIGKILL every process of the extra nodes (raylet, object store, workers), as a lost machine."""
        self.process.stdin.write("kill-workers\n")
        self.process.stdin.flush()
        self._reply()

    def add_worker(self) -> None:
        self.process.stdin.write("add-worker\n")
        self.process.stdin.flush()
        self._reply()

    def stop(self) -> None:
        self._disconnect()
        if self.process.poll() is None:
            self.process.stdin.close()  # end of input: the child shuts the cluster down
            try:
                self.process.wait(60)
            except Exception:  # noqa: BLE001 - a child that hangs on shutdown is killed
                self.process.kill()
                self.process.wait()

    def _disconnect(self) -> None:
        """Leave the cluster first if this process joined it: Ray aborts a driver whose cluster vanished, after a
        minute and without the traceback that ended the `with` block."""
        import sys

        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized() and ray.get_runtime_context().gcs_address == self.address:
            ray.shutdown()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _serve_local_cluster(spec: dict) -> None:
    """The child of `LocalCluster`: start the nodes, answer commands on stdin, shut down at its end."""
    import json
    import shutil
    import sys
    import tempfile

    from ray._private.utils import get_ray_address_file
    from ray.cluster_utils import Cluster

    # Cluster records the head's address in Ray's shared folder (/tmp/ray), which a fresh machine lacks
    os.makedirs(os.path.dirname(get_ray_address_file(None)), exist_ok=True)

    # a short private folder: Ray's unix socket paths live below it and must stay under 108 bytes
    temp = tempfile.mkdtemp(prefix="ibllm-ray-", dir="/tmp")
    common = {"node_ip_address": "127.0.0.1", "object_store_memory": spec["object_store_bytes"]}
    cluster = Cluster(initialize_head=True, head_node_args={
        **common, "num_cpus": spec["head_cpus"], "include_dashboard": False, "temp_dir": temp,
        "_system_config": NODE_HEALTH_CHECK})

    def add_worker():
        cluster.add_node(**common, num_cpus=spec["worker_cpus"])

    for _ in range(spec["workers"]):
        add_worker()
    print(json.dumps({"address": cluster.address}), flush=True)
    try:
        for line in sys.stdin:
            if line.strip() == "kill-workers":
                for node in list(cluster.worker_nodes):
                    cluster.remove_node(node, allow_graceful=False)
            elif line.strip() == "add-worker":
                add_worker()
            print(json.dumps({"done": line.strip()}), flush=True)
    finally:
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    import json
    import sys

    _serve_local_cluster(json.loads(sys.argv[1]))
