"""`ibllm`: ask about media, chat, download the official weights, check the installation, run the UI.

    ibllm ask --audio rain.wav "What do you hear?"
    ibllm ask --image dog.jpg:0.5 --audio bark.wav:0.5 "Describe the scene."
    ibllm ask --image dog.jpg --audio rain.wav:-0.3 "Describe the scene."    (subtract: embedding arithmetic)
    ibllm ask --depth room.png --imu walk.csv "What is this?"                (depth maps, thermal, IMU)
    ibllm ask --model 7B --llama-dir /data/llama --visual-cache --image photo.jpg "What is this?"
    ibllm chat --image dog.jpg
    ibllm draw --audio rain.wav "a photo" -o rain.png                         (image output)
    ibllm download 7B --dest ~/.cache/ibllm_agent
    ibllm serve --port 8000                          (an OpenAI-compatible API; see `ibllm serve --help`)
    ibllm doctor

Without --model the shipped toy world answers (a small model trained on synthetic media; it knows
only that world). One flag per medium of the modality registry (--image, --video, --audio, --point,
--depth, --thermal, --imu; a PNG given to --depth is read as a depth map);
several are fused with their weights exactly as the chat model fuses them (`ibllm_agent.fusion`).
The `cache`, `train` and `serve` commands come from their own modules.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import platform
import signal
import subprocess
import sys
from pathlib import Path

from ibllm_agent import modalities
from ibllm_agent.llama.quant import QUANTIZE_CHOICES
from ibllm_agent.params import DEFAULT_GENERATION, DEFAULT_VISUAL_CACHE, GenerationParams, VisualCacheParams

logger = logging.getLogger(__name__)

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
"""--dtype (`placement.DTYPE_CHOICES`, repeated here so that `ibllm --help` imports no torch)."""
MEDIA_FLAGS = modalities.MEDIA
"""One --<medium> flag (and /<medium> chat command) per medium of the registry."""
UI_PACKAGE = "ui"
"""The Streamlit app, installed with the package (ui/app.py in a checkout)."""


def parse_media(spec: str) -> tuple[str, float]:
    """"path" or "path:weight" -> (path, weight); a path that itself contains ':' still works."""
    path, sep, weight = spec.rpartition(":")
    if sep and path and not Path(spec).exists():
        try:
            return path, float(weight)
        except ValueError:
            pass
    return spec, 1.0


def load_flags(p: argparse.ArgumentParser) -> None:
    """The flags that say which model to load and how (`ask`, `chat`, `serve`); `load_options` reads them."""
    g = p.add_argument_group("model")
    g.add_argument("--model", default="toy",
                   help="toy (default: the shipped toy world), 7B / 7B-pretrained (downloaded weights), tiny "
                        "(random, for tests) or the path of an adapter checkpoint")
    g.add_argument("--llama-dir", help="folder with tokenizer.model and <llama-type>/params.json + consolidated.00.pth")
    g.add_argument("--llama-type", default="7B", help="sub-folder of --llama-dir (default 7B)")
    g.add_argument("--imagebind", dest="imagebind_ckpt", help="ImageBind checkpoint (default: imagebind_w3D.pth "
                                                              "from the download folder)")
    g.add_argument("--knn-index", help="FAISS visual cache file (default: knn.index from the download folder)")
    g.add_argument("--device", default=None, help="auto (CUDA, then Apple MPS, then the CPU), cpu, cuda, cuda:N or mps; "
                                                  "default: auto for official weights, cpu for the toy")
    g.add_argument("--dtype", default=None, choices=DTYPE_CHOICES,
                   help="auto (default): float16 on a GPU, bfloat16 on a CPU with native bfloat16 (official weights), "
                        "else float32")
    g.add_argument("--quantize", default=None, choices=["none", *QUANTIZE_CHOICES],
                   help="weight-only quantisation of LLaMA's linear layers: int8 (per channel) or int4 (groups of "
                        "128); a LLaMA written by `ibllm quantize` is read as it is")
    g.add_argument("--max-seq-len", type=int, default=2048, help="longest prompt + answer in tokens")
    g.add_argument("--download-root", help="where `ibllm download` put the weights")
    g.add_argument("--visual-cache", action=argparse.BooleanOptionalAction, default=False,
                   help="load the visual cache and blend it into the query (the paper's cache model); default off")


def load_options(args) -> dict:
    """`ibllm_agent.load` keywords from the `load_flags`."""
    return dict(name=args.model, llama_dir=args.llama_dir, llama_type=args.llama_type,
                imagebind_ckpt=args.imagebind_ckpt, knn=args.visual_cache, knn_index=args.knn_index,
                device=args.device, dtype=None if args.dtype == "auto" else args.dtype, max_seq_len=args.max_seq_len,
                download_root=args.download_root, quantize=args.quantize)


def _model_flags(p: argparse.ArgumentParser, *, sampling: bool = True) -> None:
    load_flags(p)
    c = p.add_argument_group("visual cache")
    c.add_argument("--visual-cache-size", type=int, default=DEFAULT_VISUAL_CACHE.size, help="neighbours retrieved")
    c.add_argument("--visual-cache-t", type=float, default=DEFAULT_VISUAL_CACHE.t,
                   help="softmax temperature over their similarities")
    c.add_argument("--visual-cache-weight", type=float, default=DEFAULT_VISUAL_CACHE.weight,
                   help="share of the neighbours in the query")
    if sampling:
        _sampling_flags(p)
    for name in MEDIA_FLAGS:
        p.add_argument(modalities.get(name).cli_flag, action="append", default=[], metavar="FILE[:WEIGHT]",
                       help=f"{modalities.get(name).noun} ({name} file), repeatable; optional mixing weight after "
                            "a colon (negative subtracts)")


def _sampling_flags(p: argparse.ArgumentParser) -> None:
    s = p.add_argument_group("sampling")
    s.add_argument("--temperature", type=float, default=DEFAULT_GENERATION.temperature,
                   help=f"0 = greedy (default {DEFAULT_GENERATION.temperature}, as upstream)")
    s.add_argument("--top-p", type=float, default=DEFAULT_GENERATION.top_p)
    s.add_argument("--max-tokens", "--max-gen-len", dest="max_tokens", type=int, default=DEFAULT_GENERATION.max_tokens)
    s.add_argument("--seed", type=int, default=None, help="make sampling reproducible")


def _draw_flags(p: argparse.ArgumentParser) -> None:
    from ibllm_agent.params import DEFAULT_DRAW

    d = p.add_argument_group("drawing")
    d.add_argument("-o", "--out", default="drawing.png", help="the PNG to write (default drawing.png)")
    d.add_argument("--unclip-dir", help="local Stable unCLIP folder (stabilityai/stable-diffusion-2-1-unclip, "
                                        "diffusers layout); needed for the official weights, never downloaded")
    d.add_argument("--steps", type=int, default=DEFAULT_DRAW.steps, help="denoising steps (the toy draws in one)")
    d.add_argument("--guidance", type=float, default=DEFAULT_DRAW.guidance, help="classifier-free guidance scale")
    d.add_argument("--seed", type=int, default=None, help="make the picture reproducible")
    d.add_argument("--height", type=int, default=None, help="pixels, a multiple of 8 (default: the generator's)")
    d.add_argument("--width", type=int, default=None)
    d.add_argument("--noise-level", type=int, default=DEFAULT_DRAW.noise_level,
                   help="noise on the image embedding, 0-999: more variation around the input")


def _load_model(args):
    from ibllm_agent.factory import load

    return load(**load_options(args))


def _settings(args) -> tuple[GenerationParams, VisualCacheParams]:
    """The flags as the two parameter objects every layer passes (checked before the model loads)."""
    return (GenerationParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                             seed=args.seed), _visual_cache(args))


def _visual_cache(args) -> VisualCacheParams:
    return VisualCacheParams(enabled=args.visual_cache, size=args.visual_cache_size, t=args.visual_cache_t,
                             weight=args.visual_cache_weight)


def banner(model) -> str:
    line = model.card.banner()
    return line if model.card.is_toy or model.card.name == "tiny" else f"{line} {model!r}"


def _media_inputs(args) -> list[tuple[object, float]]:
    """Load every file of a medium's flag (--image, --depth, ...) as that medium; (MediaInput, weight) pairs."""
    specs = [(flag, *parse_media(s)) for flag in MEDIA_FLAGS for s in getattr(args, flag)]
    if not specs:
        return []
    from ibllm_agent.media import load_media

    return [(load_media(path, modality), weight) for modality, path, weight in specs]


def _feature(model, media):
    from ibllm_agent.fusion import fuse

    if not media:
        return None
    items, weights = zip(*media)
    return fuse(model.encode(list(items)), list(weights), names=[item.name for item in items])


def _answer(model, args, question: str, feature, context: str | None = None) -> str:
    from ibllm_agent.generation import format_prompt

    generation, visual_cache = _settings(args)
    parts = []
    for delta in model.stream(format_prompt(question, context), feature, generation, visual_cache):
        parts.append(delta)
        print(delta, end="", flush=True)
    print()
    return "".join(parts)


def cmd_ask(args) -> int:
    _settings(args)
    media = _media_inputs(args)
    model = _load_model(args)
    print(banner(model), file=sys.stderr)
    _answer(model, args, args.question, _feature(model, media), args.input)
    return 0


def cmd_draw(args) -> int:
    """Draw a picture of the inputs (the reference's image_generate): the toy decoder for the toy model,
    Stable unCLIP from --unclip-dir for the official weights."""
    from ibllm_agent.image_generation import ConditioningError, attach_unclip, generate_image
    from ibllm_agent.params import DrawParams

    params = DrawParams(steps=args.steps, guidance=args.guidance, seed=args.seed, height=args.height,
                        width=args.width, noise_level=args.noise_level)
    visual_cache = _visual_cache(args)
    media = _media_inputs(args)
    if not media:
        raise ConditioningError(f"draw needs at least one input: {', '.join(f'--{m} FILE' for m in MEDIA_FLAGS)}")
    model = _load_model(args)
    print(banner(model), file=sys.stderr)
    if args.unclip_dir:
        attach_unclip(model, args.unclip_dir)
    result = generate_image(model, media, args.prompt, params, visual_cache)
    path = result.save(args.out)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"{path} ({result.image.width}x{result.image.height}, {result.generator}, {result.seconds:.2f} s)")
    return 0


CHAT_HELP = (f"Type a question. Attach media with {', '.join(f'/{m} FILE[:W]' for m in MEDIA_FLAGS)}; /clear "
             "drops them; /quit ends. Each question is answered on its own with the current attachments.")


def cmd_chat(args) -> int:
    from ibllm_agent.media import load_media

    _settings(args)
    model = _load_model(args)
    print(banner(model), file=sys.stderr)
    print(CHAT_HELP, file=sys.stderr)
    media = _media_inputs(args)
    while True:
        print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() in ("/quit", "/exit"):
            return 0
        line = line.strip()
        if not line:
            continue
        command, _, rest = line.partition(" ")
        if command == "/clear":
            media = []
        elif command.lstrip("/") in MEDIA_FLAGS and command.startswith("/"):
            path, weight = parse_media(rest.strip())
            try:
                media.append((load_media(path, command[1:]), weight))
            except (OSError, ValueError) as e:
                print(f"error: {e}", file=sys.stderr)
        elif command.startswith("/"):
            print(CHAT_HELP, file=sys.stderr)
        else:
            try:
                _answer(model, args, line, _feature(model, media))
            except ValueError as e:  # a mixture that cancels out, a prompt too long: say so, keep the session
                print(f"error: {e}", file=sys.stderr)


def cmd_download(args) -> int:
    from ibllm_agent.licenses import license_notice
    from ibllm_agent.pretrained import download

    print(license_notice(args.name), file=sys.stderr)
    path = download(args.name, args.dest, progress=not args.no_progress)
    print(path)
    return 0


def cmd_quantize(args) -> int:
    import time

    from ibllm_agent.factory import save_quantized

    t = time.perf_counter()
    written = save_quantized(args.llama_dir, args.out_dir, args.llama_type, quantize=args.quantize,
                             group_size=args.group_size, adapter=args.adapter, imagebind=args.imagebind,
                             dtype=args.dtype)
    for name, path in written.items():
        print(f"{name}: {path}")
    adapter = written.get("adapter", "ADAPTER")
    imagebind = f" --imagebind {written['imagebind']}" if "imagebind" in written else ""
    print(f"done in {time.perf_counter() - t:.0f} s; use it with: ibllm ask --model {adapter} --llama-dir "
          f"{written['llama_dir']} --llama-type {args.llama_type}{imagebind} ...", file=sys.stderr)
    return 0


def cmd_doctor(args) -> int:
    import torch

    from ibllm_agent import pretrained
    from ibllm_agent.pretrained import TOY_DIR

    lines = [f"python {platform.python_version()} ({sys.executable})"]
    # versions from the installed metadata: importing pydub here would print its "no ffmpeg on PATH"
    # warning, although we hand it the ffmpeg of imageio-ffmpeg (checked below)
    for name in ("torch", "numpy", "faiss-cpu", "sentencepiece", "safetensors", "langchain-core", "langgraph",
                 "chromadb", "streamlit", "pillow", "opencv-python-headless", "pydub", "imageio-ffmpeg"):
        try:
            lines.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            lines.append(f"{name} MISSING")
    from ibllm_agent.placement import cpu_bf16, resolve_placement

    cuda = torch.cuda.is_available()
    fast_bf16, why_bf16 = cpu_bf16()
    lines.append(f"device: cuda {'yes: ' + torch.cuda.get_device_name(0) if cuda else 'no'}; "
                 f"cpu threads {torch.get_num_threads()}; bf16 matmul on CPU "
                 f"{'yes' if fast_bf16 else 'not accelerated'} ({why_bf16})")
    auto = resolve_placement("auto", "auto")
    lines.append(f"auto for official weights: {auto.describe()}; the toy model: "
                 f"{resolve_placement(None, None, official=False).describe()}")
    try:
        import imageio_ffmpeg

        lines.append(f"ffmpeg: {imageio_ffmpeg.get_ffmpeg_exe()}")
    except (ImportError, RuntimeError) as e:
        lines.append(f"ffmpeg: MISSING ({e}); audio from mp3/ogg/video files will not load")
    toy = sorted(p.relative_to(TOY_DIR).as_posix() for p in TOY_DIR.rglob("*") if p.is_file()) if TOY_DIR.is_dir() else []
    lines.append(f"toy model: {'present (' + ', '.join(toy) + ')' if (TOY_DIR / 'toy.json').is_file() else 'NOT BUILT'}"
                 f" at {TOY_DIR}")
    root = pretrained.default_dir()
    have = [e.name for e in pretrained.FILES.values() if (root / e.filename).is_file()]
    lines.append(f"official weights in {root}: {', '.join(have) if have else 'none (see `ibllm download --help`)'}")
    print("\n".join(lines))
    return 0


def ui_app() -> Path:
    """The app's script (ui/app.py), wherever the `ui` package is installed."""
    spec = importlib.util.find_spec(UI_PACKAGE)
    if spec is None or spec.origin is None:
        raise SystemExit("error: the Streamlit app (the `ui` package) is not installed; pip install 'ibllm-agent[ui]'")
    return Path(spec.origin).parent / "app.py"


UI_STOP_GRACE_S = 10.0
"""How long a stopped `ibllm ui` waits for Streamlit to shut down before it kills it."""
UI_OWN_OPTIONS = {"--server.address": "--host", "--client.showErrorDetails": "--debug"}
"""Streamlit options that `ibllm ui` sets itself (the flag to use instead): passed again after ours they would
win, and an address given that way would skip the network warning."""


def is_loopback(host: str) -> bool:
    """Whether an address (or "localhost", or a unix:// socket) is reachable from this machine only."""
    if host == "localhost" or host.startswith("unix://"):
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def ui_command(args) -> list[str]:
    """`python -m streamlit run ui/app.py` with our address, port and error details, then the other Streamlit
    options, then the app's own arguments after `--`."""
    for arg in args.streamlit_args:
        flag = UI_OWN_OPTIONS.get(arg.partition("=")[0])
        if flag:
            raise ValueError(f"{arg.partition('=')[0]} is set by `ibllm ui`; use {flag}")
    cmd = [sys.executable, "-m", "streamlit", "run", str(ui_app()), "--server.address", args.host]
    if args.port is not None:
        cmd += ["--server.port", str(args.port)]
    cmd += ["--client.showErrorDetails", "full" if args.debug else "none", *args.streamlit_args]
    script_args = (["--config", str(Path(args.config).absolute())] if args.config else []) + (
        ["--debug"] if args.debug else [])
    return cmd + (["--", *script_args] if script_args else [])


def _die_with_parent():
    """For Popen's preexec_fn on Linux: the child gets SIGTERM when `ibllm ui` dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork; only called after it
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, signal.SIGTERM)


def run_supervised(cmd: list[str], name: str, grace: float = UI_STOP_GRACE_S) -> int:
    """Run `cmd` as a child that stops with us: SIGINT/SIGTERM/SIGHUP are passed on to it (a second one kills
    it), it gets `grace` seconds to stop, then SIGKILL; it also gets SIGTERM if we die any other way (Linux).

    The child runs in its own session, so a Ctrl-C in the terminal reaches it once, through us. The exit
    code says what happened: the child's own when it ended by itself, 128 + the signal when we were stopped
    and it stopped in time (130 for Ctrl-C, 143 for SIGTERM), 137 when it had to be killed."""
    import time

    stops: list[int] = []
    proc: subprocess.Popen | None = None

    def kill(sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)  # the child leads its own process group: anything it started goes too
        except ProcessLookupError:
            pass

    def on_signal(signum, frame):  # noqa: ARG001
        stops.append(signum)
        if proc is not None:
            kill(signal.SIGKILL if len(stops) > 1 else signal.SIGTERM if signum == signal.SIGHUP else signum)

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    try:
        proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent())
        if stops:  # a signal that came while it was starting
            kill(signal.SIGTERM if stops[0] == signal.SIGHUP else stops[0])
        deadline = None
        while True:
            try:
                code = proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                if stops and deadline is None:
                    deadline = time.monotonic() + grace
                if deadline is not None and time.monotonic() > deadline:
                    print(f"{name} did not stop within {grace:g} s; killed it", file=sys.stderr)
                    kill(signal.SIGKILL)
                    proc.wait()
                    return 128 + signal.SIGKILL
                continue
            if not stops:
                return code if code >= 0 else 128 - code
            return 128 + signal.SIGKILL if len(stops) > 1 else 128 + stops[0]
    finally:
        if proc is not None and proc.poll() is None:  # an error of ours: never leave it running
            kill(signal.SIGKILL)
            proc.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_ui(args) -> int:
    cmd = ui_command(args)
    if not is_loopback(args.host):
        print(f"warning: the app will listen on {args.host}, not only on this machine: anyone who can reach it "
              "can use the model and upload files to it. Leave out --host (127.0.0.1) unless that is what you "
              "want.", file=sys.stderr, flush=True)
    return run_supervised(cmd, "streamlit")


cmd_quantize_doc = """Quantise Meta's LLaMA weights once, so that a 7B loads quantised without first being read
in floating point:

    ibllm quantize /data/llama /data/llama-int4 --quantize int4 --adapter 7B.pth --imagebind imagebind_w3D.pth
    ibllm ask --model /data/llama-int4/adapter.safetensors --llama-dir /data/llama-int4 \\
        --imagebind /data/llama-int4/imagebind.safetensors --image photo.jpg "What is this?"

The quantised LLaMA keeps Meta's keys and no adapter weights (LoRA stays in floating point beside it)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ibllm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (loading, cache, ...)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ask", help="answer one question about media files (streams the answer)")
    p.add_argument("question")
    p.add_argument("--input", help="extra context: the Alpaca prompt's Input field")
    _model_flags(p)
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("chat", help="an interactive session (one question per line)")
    _model_flags(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("draw", help="draw a picture of media files (image output: Stable unCLIP, or the toy's "
                                    "decoder)")
    p.add_argument("prompt", nargs="?", default="", help='text guiding the picture, e.g. "a photo" (the toy '
                                                        "decoder does not read it)")
    _model_flags(p, sampling=False)
    _draw_flags(p)
    p.set_defaults(func=cmd_draw)

    p = sub.add_parser("download", help="fetch official weights (resumable); used only when asked")
    from ibllm_agent.pretrained import FILES

    p.add_argument("name", choices=list(FILES), help="; ".join(f"{e.name}: {e.description}" for e in FILES.values()))
    p.add_argument("--dest", help="download folder (default $IBLLM_HOME or ~/.cache/ibllm_agent)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("quantize", help="write LLaMA's weights quantised (int8/int4 safetensors) to load without "
                                        "a float copy", description=cmd_quantize_doc)
    p.add_argument("llama_dir", help="Meta's LLaMA folder: tokenizer.model and <llama-type>/params.json + "
                                     "consolidated.00.pth")
    p.add_argument("out_dir", help="where to write the same layout, quantised")
    p.add_argument("--llama-type", default="7B")
    p.add_argument("--quantize", required=True, choices=QUANTIZE_CHOICES)
    p.add_argument("--group-size", type=int, default=128, help="int4: columns per (scale, zero) group")
    p.add_argument("--adapter", help="also write this adapter checkpoint (7B.pth) as adapter.safetensors in --dtype")
    p.add_argument("--imagebind", help="also write this ImageBind checkpoint as imagebind.safetensors in --dtype")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                   help="of the tensors that stay floating point (embeddings, norms; the adapter and ImageBind)")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("doctor", help="versions, devices, ffmpeg, toy and official weights")
    p.set_defaults(func=cmd_doctor)

    # Streamlit's own options (--server.headless true, ...) are collected by main(), not declared here.
    p = sub.add_parser("ui", help="run the Streamlit app on this machine (other options go to streamlit, e.g. "
                                  "--server.headless true)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; any other warns)")
    p.add_argument("--port", type=int, help="port (default: Streamlit's, 8501)")
    p.add_argument("--config", help="the app's config file (TOML or JSON; default $IBLLM_UI_CONFIG)")
    p.add_argument("--debug", action="store_true", help="show tracebacks in the browser")
    p.set_defaults(func=cmd_ui, streamlit_args=[])

    for module in ("ibllm_agent.cache.cli", "ibllm_agent.train.cli", "ibllm_agent.serve.cli"):
        try:
            importlib.import_module(module).register(sub)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "ui":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.streamlit_args = [a for a in extra if a != "--"] if args.command == "ui" else []
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from ibllm_agent.cache.base import CacheError
    from ibllm_agent.checkpoint import CheckpointError

    try:
        return int(args.func(args) or 0)
    except (CheckpointError, CacheError, ValueError, KeyError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
