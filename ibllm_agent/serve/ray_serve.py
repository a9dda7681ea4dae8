"""`ibllm serve --ray`: the server's ASGI app (`create_app`) as a Ray Serve deployment, one model per replica.

    ibllm serve --ray --address HEAD:6379 --replicas 4 --device cuda --gpus-per-replica 1
    ibllm serve --ray --min-replicas 1 --max-replicas 8 --target-ongoing-requests 16
    serve run ibllm_agent.serve.ray_serve:build_app model=toy replicas=2       # Serve's own CLI
    serve deploy examples/ray-serve.yaml                                       # the same as a config file

    from ray import serve
    from ibllm_agent.serve.ray_serve import ReplicaOptions, deployment
    serve.run(deployment("toy", ReplicaOptions(replicas=2)), name="ibllm")

Each replica loads the model itself from the paths it is given (a shared filesystem or the same image on
every node); replicas share nothing else, so Serve may start, kill and move them freely. Behind Serve's HTTP
proxy the routes are those of `ibllm serve`; every answer carries the replica that made it in the
`x-ibllm-replica` header, and `/metrics` has `ibllm_replica_info{replica, pid, node}`. Serve's health check
asks the same question as `GET /health`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from dataclasses import dataclass, field

from ray import serve

from ibllm_agent.ray_cluster import ClusterError
from ibllm_agent.serve.settings import REPLICA_HEADER, ServeSettings

logger = logging.getLogger(__name__)

APP_NAME = "ibllm"


@dataclass(frozen=True)
class ReplicaOptions:
    """How many replicas and what each holds (the `ibllm serve --ray` flags)."""

    replicas: int = 1
    """Fixed number of replicas (ignored when `max_replicas` is set)."""
    min_replicas: int | None = None
    max_replicas: int | None = None
    """Set to autoscale between `min_replicas` (default 1) and this on the ongoing requests per replica."""
    target_ongoing_requests: float | None = None
    """Requests per replica the autoscaler aims at (Serve's default when None)."""
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    health_check_period_s: float = 10.0
    health_check_timeout_s: float = 30.0
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables of the replica processes (e.g. PYTHONPATH of a checkout)."""

    def deployment_options(self, settings: ServeSettings) -> dict:
        """`serve.deployment(...).options(**this)`."""
        if self.max_replicas is not None:
            low = 1 if self.min_replicas is None else self.min_replicas
            if not 0 <= low <= self.max_replicas or self.max_replicas < 1:
                raise ValueError(f"autoscaling needs 0 <= min_replicas <= max_replicas and max_replicas >= 1, got "
                                 f"{low} and {self.max_replicas}")
            autoscaling = {"min_replicas": low, "max_replicas": self.max_replicas}
            if self.target_ongoing_requests is not None:
                autoscaling["target_ongoing_requests"] = self.target_ongoing_requests
            scale = {"autoscaling_config": autoscaling}
        else:
            if self.replicas < 1:
                raise ValueError(f"replicas must be >= 1, got {self.replicas}")
            scale = {"num_replicas": self.replicas}
        actor = {"num_cpus": self.cpus_per_replica, "num_gpus": self.gpus_per_replica}
        if self.env:
            actor["runtime_env"] = {"env_vars": dict(self.env)}
        # A replica takes what its engine decodes together; Serve's router holds the rest and hands each to
        # the replica that frees a place first (Serve's default of 5 would starve the continuous batcher).
        return {**scale, "ray_actor_options": actor, "max_ongoing_requests": settings.max_batch,
                "health_check_period_s": self.health_check_period_s,
                "health_check_timeout_s": self.health_check_timeout_s}


class _ReplicaHeader:
    """Names the replica in every HTTP answer, so clients and tests can see how requests were spread."""

    def __init__(self, app, replica: str):
        self.app, self.header = app, (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_named(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_named)


@serve.ingress()
class ImageBindLLMReplica:
    """One replica: loads the model in its own process, then serves `create_app` over it."""

    async def __init__(self, model: str, load_kwargs: dict, settings: ServeSettings):
        from ibllm_agent.factory import load

        context = serve.get_replica_context()
        self.replica = context.replica_id.unique_id
        self.settings = settings
        started = time.perf_counter()
        # loaded before the app exists: Serve routes nothing here until __init__ returns, so no request
        # meets a loading model; a load that fails fails the replica and Serve reports it with this error
        self.llm = await asyncio.to_thread(load, model, **load_kwargs)
        self.load_seconds = time.perf_counter() - started
        self.server = None  # the app's `Server`, once built (`app` is a name of Serve's wrapper)

    def __serve_build_asgi_app__(self):
        import ray
        from prometheus_client import Gauge

        from ibllm_agent.serve.app import create_app

        app = create_app(self.llm, settings=self.settings)
        metrics = app.state.server.metrics
        metrics.load_seconds.set(self.load_seconds)
        info = Gauge("ibllm_replica_info", "The Ray Serve replica answering this scrape", ["replica", "pid", "node"],
                     registry=metrics.registry)
        info.labels(self.replica, str(os.getpid()), ray.get_runtime_context().get_node_id()).set(1)
        app.add_middleware(_ReplicaHeader, replica=self.replica)
        self.server = app.state.server
        return app

    def check_health(self) -> None:
        """Serve's periodic probe: the answer `GET /health` would give (a replica whose check raises is
        replaced)."""
        if self.server is None:
            return
        status, body = self.server.health()
        if status != 200:
            raise RuntimeError(f"replica {self.replica} is unhealthy: {body}")


def deployment(model: str = "toy", options: ReplicaOptions | None = None, settings: ServeSettings | None = None,
               **load_kwargs):
    """The bound Serve application: `serve.run(deployment(...))`. `load_kwargs` go to `ibllm_agent.load` in
    every replica."""
    options = options or ReplicaOptions()
    settings = settings or ServeSettings()
    d = serve.deployment(ImageBindLLMReplica, name="ImageBindLLM").options(**options.deployment_options(settings))
    return d.bind(model, load_kwargs, settings)


def build_app(args: dict):
    """The app builder of `serve run ibllm_agent.serve.ray_serve:build_app key=value ...` and of a Serve config
    file's `import_path`. Keys: model, replicas, min_replicas, max_replicas, target_ongoing_requests,
    gpus_per_replica, cpus_per_replica, api_key, max_batch, max_queue, and `ibllm_agent.load`'s keywords
    (device, dtype, llama_dir, imagebind_ckpt, knn, knn_index, max_seq_len)."""
    args = dict(args)
    model = str(args.pop("model", "toy"))
    numbers = {"replicas": int, "min_replicas": int, "max_replicas": int, "target_ongoing_requests": float,
               "gpus_per_replica": float, "cpus_per_replica": float}
    options = ReplicaOptions(**{k: t(args.pop(k)) for k, t in numbers.items() if k in args})
    settings = ServeSettings(**{k: (int(args.pop(k)) if k.startswith("max_") else args.pop(k))
                                for k in ("api_key", "max_batch", "max_queue") if k in args})
    if "knn" in args:
        args["knn"] = str(args["knn"]).lower() in ("1", "true", "yes")
    if "max_seq_len" in args:
        args["max_seq_len"] = int(args["max_seq_len"])
    return deployment(model, options, settings, **args)


def run(app, *, host: str, port: int, name: str = APP_NAME, deploy_timeout_s: float = 600.0) -> None:
    """Start Serve's HTTP proxy on host:port (if Serve is not yet running on the cluster) and deploy `app`,
    waiting until every replica is up. A deployment that fails (a replica that cannot load its model) or
    is not running within `deploy_timeout_s` is deleted and raised as `ClusterError`."""
    serve.start(http_options={"host": host, "port": port})
    failure: list[BaseException] = []

    def deploy():
        try:
            serve.run(app, name=name, route_prefix="/")
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            failure.append(e)

    # serve.run waits without a deadline; it runs aside while this thread watches the status with one
    threading.Thread(target=deploy, name="ibllm-serve-deploy", daemon=True).start()
    end = time.monotonic() + deploy_timeout_s
    while True:
        state = serve.status().applications.get(name)
        status = str(getattr(state, "status", ""))
        if status.endswith("RUNNING") and not failure:
            return
        if failure or status.endswith("DEPLOY_FAILED") or time.monotonic() > end:
            # the application says "failed to update the deployments"; why is in the deployments' messages,
            # whose replica tracebacks end with the exception that stopped the replica
            messages = [getattr(state, "message", ""), *(f"{n}: {_summary(d.message)}" for n, d in
                                                         getattr(state, "deployments", {}).items() if d.message)]
            message = " | ".join(m for m in messages if m) or (str(failure[0]) if failure else "")
            reason = "failed" if failure or status.endswith("DEPLOY_FAILED") else f"was not running within " \
                                                                                   f"{deploy_timeout_s:.0f} s"
            serve.delete(name)
            raise ClusterError(f"the Ray Serve deployment {reason}: {message}")
        time.sleep(0.5)


def _summary(message: str) -> str:
    """A deployment's status message in one line: its first sentence and, for a traceback, its last line."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if len(lines) > 1 and "Traceback" in message:
        return f"{lines[0].split(' Error:')[0]} ... {lines[-1]}"
    return " ".join(lines)
