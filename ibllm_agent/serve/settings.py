"""The server's admission settings, apart from the app so that `ibllm --help` reads their defaults without
importing FastAPI."""

from __future__ import annotations

from dataclasses import dataclass

API_KEY_ENV = "IBLLM_API_KEY"
"""The key when none is given: the server's (`ibllm serve`) and its clients' (remote mode, the app)."""
REPLICA_HEADER = "x-ibllm-replica"
"""The response header naming the Ray Serve replica that answered (`ibllm serve --ray`)."""


@dataclass(frozen=True)
class ServeSettings:
    """How the server admits requests (the `ibllm serve` flags)."""

    api_key: str | None = None
    """Bearer key every /v1 request must send (/health and /metrics stay open for probes and scrapers); None:
    no authentication (loopback only, see `ibllm serve`)."""
    max_batch: int = 32
    """Requests decoded together."""
    max_queue: int = 256
    """Requests waiting beyond the batch; more are answered 429."""
    allow_urls: bool = False
    """Fetch http(s) media URLs named in requests."""
    max_media_bytes: int = 32 * 1024 * 1024
    """Largest medium (decoded) one part may carry; larger is 413."""
    max_body_bytes: int = 64 * 1024 * 1024
    """Largest request body, checked before it is read in full; larger is 413."""
    max_input_chars: int | None = None
    """Characters of text one message may carry; None: the chat model's default."""
    shutdown_timeout_s: float = 10.0
    """On shutdown, how long running generations may take to finish before they are cancelled."""
    model_name: str | None = None
    """The model id clients ask for; default the loaded model's name ("toy", "7B", ...)."""
    unclip_dir: str | None = None
    """Local Stable unCLIP folder that draws on /v1/images/generations (the toy draws with its own decoder)."""
