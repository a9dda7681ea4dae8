"""`ibllm serve`: ImageBind-LLM behind an OpenAI-compatible HTTP API.

    ibllm serve                                          # the toy world on http://127.0.0.1:8000/v1
    ibllm serve --model 7B --llama-dir /data/llama --device cuda --visual-cache --port 8000
    IBLLM_API_KEY=s3cret ibllm serve --host 0.0.0.0      # beyond loopback a key is required

Routes: POST /v1/chat/completions (streaming with SSE), /v1/embeddings, /v1/images/generations (a picture
of media parts: the toy's decoder, or Stable unCLIP with --unclip-dir), /v1/ibllm/arithmetic, /v1/ibllm/cache/search; GET /v1/models, /health (503 until the model is loaded), /metrics (Prometheus).
SIGTERM stops accepting connections, lets running answers finish for --shutdown-timeout seconds, cancels
the rest and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal

logger = logging.getLogger(__name__)



def register(subparsers) -> None:
    """Add the `serve` command to the `ibllm` parser (FastAPI and uvicorn are imported only when it runs)."""
    from ibllm_agent.cli import load_flags
    from ibllm_agent.serve.settings import API_KEY_ENV, ServeSettings

    p = subparsers.add_parser("serve", help="an OpenAI-compatible API: chat, embeddings, metrics", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    load_flags(p)
    d = ServeSettings()
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument("--api-key", default=None,
                   help=f"Bearer key every /v1 request must send (default ${API_KEY_ENV}); required beyond loopback")
    g.add_argument("--served-model-name", default=None, help="the model id clients send (default: the model's name)")
    g.add_argument("--max-batch", type=int, default=d.max_batch, help="requests decoded together")
    g.add_argument("--max-queue", type=int, default=d.max_queue, help="requests waiting beyond that (then 429)")
    g.add_argument("--allow-urls", action="store_true", help="fetch http(s) media URLs named in requests")
    g.add_argument("--max-media-bytes", type=int, default=d.max_media_bytes, help="largest medium of one part (413)")
    g.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help="largest request body (413)")
    g.add_argument("--max-input-chars", type=int, default=None, help="characters of text per message")
    g.add_argument("--unclip-dir", default=None, help="local Stable unCLIP folder (stabilityai/stable-diffusion-2-1-"
                   "unclip, diffusers layout) that draws on /v1/images/generations; never downloaded")
    g.add_argument("--shutdown-timeout", type=float, default=d.shutdown_timeout_s,
                   help="seconds running answers may take to finish on SIGTERM")
    r = p.add_argument_group("Ray Serve (the `ray` extra): replicas of this server on a Ray cluster")
    r.add_argument("--ray", action="store_true",
                   help="deploy on Ray Serve; --host/--port are then those of Serve's HTTP proxy")
    r.add_argument("--address", default=None,
                   help="the cluster: HEAD:6379 or ray://HEAD:10001 (default: start one on this machine)")
    r.add_argument("--replicas", type=int, default=1, help="replicas, each loading the model itself")
    r.add_argument("--min-replicas", type=int, default=None, help="autoscale from this many (with --max-replicas)")
    r.add_argument("--max-replicas", type=int, default=None, help="autoscale up to this many replicas")
    r.add_argument("--target-ongoing-requests", type=float, default=None,
                   help="requests per replica the autoscaler aims at")
    r.add_argument("--gpus-per-replica", type=float, default=0.0)
    r.add_argument("--cpus-per-replica", type=float, default=1.0)
    r.add_argument("--deploy-timeout", type=float, default=600.0,
                   help="seconds the replicas may take to load before the deployment is given up")
    p.set_defaults(func=cmd_serve)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args) -> int:
    import uvicorn

    from ibllm_agent.cli import load_options
    from ibllm_agent.serve.app import create_app
    from ibllm_agent.serve.settings import API_KEY_ENV, ServeSettings

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if api_key is None and not is_loopback(args.host):
        raise ValueError(f"serving on {args.host} without an API key would let anyone on the network use the model; "
                         f"set --api-key or ${API_KEY_ENV}")
    settings = ServeSettings(api_key=api_key, max_batch=args.max_batch, max_queue=args.max_queue,
                             allow_urls=args.allow_urls, max_media_bytes=args.max_media_bytes,
                             max_body_bytes=args.max_body_bytes, max_input_chars=args.max_input_chars,
                             shutdown_timeout_s=args.shutdown_timeout, model_name=args.served_model_name,
                             unclip_dir=args.unclip_dir)
    if args.ray:
        return _serve_on_ray(args, settings)
    failed: list[BaseException] = []

    def stop_on_load_error(exc: BaseException) -> None:
        failed.append(exc)
        server.should_exit = True

    class GracefulServer(uvicorn.Server):
        async def shutdown(self, sockets=None):
            # stop accepting, then let the engine finish or cancel what runs within the deadline, so that
            # every answer ends (complete, or with a "cancelled" error) before uvicorn closes connections
            for listener in self.servers:
                listener.close()
            await asyncio.to_thread(app.state.server.close)
            await super().shutdown(sockets)

    options = load_options(args)
    app = create_app(options.pop("name"), settings=settings, on_load_error=stop_on_load_error, **options)
    server = GracefulServer(uvicorn.Config(app, host=args.host, port=args.port, log_level="info" if args.verbose
                                           else "warning", timeout_graceful_shutdown=args.shutdown_timeout))
    # uvicorn re-raises the signal that stopped it once it is done; a handler of ours makes a graceful
    # SIGTERM end the process with status 0 instead of being killed by it
    signal.signal(signal.SIGTERM, lambda *_: logger.info("stopped by SIGTERM"))
    print(f"ibllm serve: http://{args.host}:{args.port}/v1 (model {args.model}, loading; "
          f"GET /health says when it is ready)", flush=True)
    server.run()
    return 1 if failed else 0


def _serve_on_ray(args, settings) -> int:
    """Deploy on the cluster, wait for SIGINT or SIGTERM, then delete the deployment (as `serve run` does)."""
    import sys
    import threading

    from ibllm_agent.cli import load_options
    from ibllm_agent.ray_cluster import ClusterError, connect

    try:
        ray = connect(args.address)
        from ibllm_agent.serve import ray_serve

        options = load_options(args)
        name = options.pop("name")
        env = ray.get_runtime_context().runtime_env.get("env_vars") or {}
        replicas = ray_serve.ReplicaOptions(
            replicas=args.replicas, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
            target_ongoing_requests=args.target_ongoing_requests, gpus_per_replica=args.gpus_per_replica,
            cpus_per_replica=args.cpus_per_replica, env=env)
        app = ray_serve.deployment(name, replicas, settings, **options)
        ray_serve.run(app, host=args.host, port=args.port, deploy_timeout_s=args.deploy_timeout)
    except (ClusterError, ValueError) as e:
        sys.stderr.write(f"ibllm serve: error: {e}\n")
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"ibllm serve: http://{args.host}:{args.port}/v1 on Ray Serve ({args.model}, replicas: "
          f"{args.max_replicas and f'{args.min_replicas or 1}..{args.max_replicas}' or args.replicas}); "
          f"Ctrl-C or SIGTERM deletes the deployment", flush=True)
    stop.wait()
    from ray import serve

    serve.delete(ray_serve.APP_NAME)
    return 0
