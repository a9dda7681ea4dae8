"""ImageBind-LLM chat: ask about images, sounds, clips, 3D point clouds, depth maps, thermal images and IMU
recordings (every medium of the modality registry), mix them, see the cache.

Run with `ibllm ui [--config ibllm-ui.toml]` or `streamlit run ui/app.py [-- --config ibllm-ui.toml] [--debug]`;
both listen on 127.0.0.1 only (ui/.streamlit/config.toml) and show no tracebacks unless debug.
The page, top to bottom: sidebar settings, the shared model, the chat input (pinned to the bottom),
the status line, the inputs mixing panel, then either the chat or the embedding explorer.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

import streamlit as st
import torch

from ibllm_agent import modalities
from ibllm_agent.params import DEFAULT_DRAW, DrawParams, GenerationParams, VisualCacheParams
from ui import backend, views
from ui.attachments import (
    ALL_FILE_TYPES,
    MAX_UPLOAD_MB,
    MODALITY_ICONS,
    Attachment,
    AttachmentError,
    mixture_summary,
    read_upload,
    read_uploads,
)
from ui.conversation import Reply, Turn, to_messages
from ui.explorer import cosine_matrix, heatmap_figure, with_mixture, zero_shot
from ui.settings import AppConfig, ConfigError, ModelSpec, PathRefused, config_path, confine, debug_flag

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
QUANTIZE_OPTIONS = ["none", "int8", "int4"]
VIEWS = {"chat": ":material/forum: Chat", "explorer": ":material/scatter_plot: Embedding explorer"}

st.set_page_config(page_title="ImageBind-LLM", page_icon=":material/hearing:", layout="wide")


@st.cache_resource(show_spinner="Loading the model…", max_entries=2)
def shared_model(spec: ModelSpec):
    """One model per spec for every browser session (the chat model takes its lock per decoding step)."""
    return backend.load_model(spec)


def start_config() -> AppConfig:
    path = config_path(sys.argv[1:])
    if path is None:
        return AppConfig()
    try:
        return AppConfig.from_file(path)
    except ConfigError as exc:
        st.error(f"Config file ignored: {exc}", icon=":material/error:")
        return AppConfig()


def init_state(config: AppConfig) -> None:
    state = st.session_state
    state.setdefault("spec", config.model)
    state.setdefault("history", [])
    state.setdefault("inputs", [])
    state.setdefault("pending", None)  # a question waiting for its answer (set by a submission or an example)
    state.setdefault("uploads", 0)  # bumps the upload panel's key, which empties it after each upload
    state.setdefault("embeddings", {})  # sha256 -> ImageBind embedding, for the explorer
    state.setdefault("pending_draw", False)  # a Draw button was pressed


def report(message: str, exc: BaseException) -> None:
    """The app's friendly error message; the traceback under it only in debug (`[app] debug`, `--debug`)."""
    st.error(message, icon=":material/error:")
    if DEBUG:
        st.exception(exc)


# ----- callbacks: they change the session state before the page is drawn ---------------------------------

def new_chat() -> None:
    st.session_state.history = []
    st.session_state.inputs = []


def remove_input(key: str) -> None:
    st.session_state.inputs = [a for a in st.session_state.inputs if a.key != key]


def on_panel_upload() -> None:
    """Files added in the panel join the inputs; the panel is then emptied (a fresh key)."""
    added, errors = read_uploads(st.session_state.get(f"upload_{st.session_state.uploads}") or [])
    known = {a.key for a in st.session_state.inputs}
    st.session_state.inputs += [a for a in added if a.key not in known]
    st.session_state.history += [Turn("assistant", "", error=e) for e in errors]
    st.session_state.uploads += 1


def ask(text: str, attached: list[Attachment], errors: list[str], *, had_files: bool) -> None:
    """Record a question; attached files replace the inputs (follow-up questions keep them)."""
    if attached:
        st.session_state.inputs = attached
    question = text.strip() or (modalities.get(attached[0].modality).question if attached else "")
    history = st.session_state.history
    if question or had_files:
        history.append(Turn("user", question, attachments=[replace(a) for a in attached]))  # a snapshot
    history += [Turn("assistant", "", error=e) for e in errors]
    # no answer when the only file failed: the question was about it
    st.session_state.pending = question if question and not (errors and not attached) else None


def read_input_as(key: str) -> None:
    """An input read again as the medium chosen under it (a PNG picture as a depth map or a thermal image)."""
    modality = st.session_state.get(f"as_{key}")
    for i, att in enumerate(st.session_state.inputs):
        if att.key == key and modality and att.modality != modality:
            try:
                st.session_state.inputs[i] = att.read_as(modality)
            except AttachmentError as exc:
                st.session_state.history.append(Turn("assistant", "", error=str(exc)))


def request_draw() -> None:
    st.session_state.pending_draw = True


def draw_callback(model, mixture: str):
    """The Draw button's callback under an answer conditioned on `mixture`, or None (no button): a Draw
    button draws the current inputs, so it is offered only under answers about exactly those inputs."""
    inputs = st.session_state.inputs
    if inputs and mixture == mixture_summary(inputs) and backend.can_draw(model):
        return request_draw
    return None


def try_example(modality: str) -> None:
    name, data = backend.toy_example(modality, seed=time.time_ns() % 2**31)
    try:
        ask("", [read_upload(name, data, modality=modality)], [], had_files=True)
    except AttachmentError as exc:
        ask("", [], [str(exc)], had_files=True)


# ----- page parts ---------------------------------------------------------------------------------------

PATH_FIELDS = {"name": "Model", "llama_dir": "LLaMA folder", "imagebind_ckpt": "ImageBind checkpoint",
               "visual_cache_index": "Cache index", "unclip_dir": "Stable unCLIP folder"}
"""The ModelSpec fields that name server files, with their labels in the sidebar."""


def model_paths(config: AppConfig) -> dict[str, str]:
    """Text inputs for the model's files (only when the config lists model folders); field -> typed text."""
    spec = st.session_state.spec
    st.caption(f"Paths must lie inside {', '.join(f'`{f}`' for f in config.app.model_folders)} "
               "(relative paths start from the first).")
    return {
        "name": st.text_input("Model", spec.name, key="model_name",
                              help='"toy", or the path of an adapter checkpoint such as 7B.pth'),
        "llama_dir": st.text_input("LLaMA folder", spec.llama_dir or "", key="llama_dir",
                                   help="holds tokenizer.model and 7B/params.json + consolidated.00.pth"),
        "imagebind_ckpt": st.text_input("ImageBind checkpoint", spec.imagebind_ckpt or "", key="imagebind_ckpt",
                                        help="imagebind_w3D.pth (with Point-Bind, for 3D)"),
        "visual_cache_index": st.text_input("Cache index", spec.visual_cache_index or "", key="cache_index",
                                            help="knn.index (optional)"),
        "unclip_dir": st.text_input("Stable unCLIP folder", spec.unclip_dir or "", key="unclip_dir",
                                    help="stable-diffusion-2-1-unclip in the diffusers layout (optional: the Draw "
                                         "button with the official weights; never downloaded)"),
    }


def checked_paths(typed: dict[str, str], config: AppConfig) -> dict:
    """The typed paths as ModelSpec fields: "toy" and the config's own values as they are (the config is
    trusted), every other path confined to the model folders (`PathRefused` names the field)."""
    chosen = {}
    for field, text in typed.items():
        text = text.strip()
        if field in ("llama_dir", "imagebind_ckpt") and chosen["name"] == "toy":
            continue  # the toy carries its own LLaMA and ImageBind
        if not text or text == getattr(config.model, field) or (field == "name" and text == "toy"):
            chosen[field] = text or ("toy" if field == "name" else None)
            continue
        try:
            chosen[field] = confine(text, config.app.model_folders)
        except PathRefused as exc:
            raise PathRefused(f"{PATH_FIELDS[field]}: {exc}; nothing was loaded.") from None
    return chosen


def model_choice(config: AppConfig) -> dict[str, str]:
    """Without model folders: the configured model (shown with its files, read-only) or the toy."""
    choices = {config.model.name: config.model}
    choices.setdefault("toy", ModelSpec())
    spec = st.session_state.spec
    name = st.selectbox("Model", list(choices), index=list(choices).index(spec.name) if spec.name in choices else 0,
                        key="model_choice",
                        format_func=lambda n: "toy (built in)" if n == "toy" else f"{n} (configured)")
    files = [f"{label} `{getattr(config.model, field)}`" for field, label in PATH_FIELDS.items()
             if field != "name" and getattr(config.model, field)]
    if files:
        st.caption(f"{config.model.name}: " + " · ".join(files))
    st.caption("Other weights cannot be loaded from here. To allow it, list the folders they may come from "
               "under `[app] model_folders` in the config file (README: *Streamlit app and notebooks*).")
    return {f: getattr(choices[name], f) for f in PATH_FIELDS}


def sidebar_model(config: AppConfig):
    """Title, new chat, and which model to load (a form: nothing reloads while paths are typed). Paths typed
    here reach the disk only inside the config's model folders; without any, there is nothing to type.
    Returns the panel's placeholder for notes about the loaded model."""
    with st.sidebar:
        st.markdown("## :material/hearing: ImageBind-LLM")
        st.caption(f"Ask about {modalities.describe()}.")
        st.button("New chat", icon=":material/add_comment:", on_click=new_chat, width="stretch", key="new_chat")
        with st.expander("Model", icon=":material/memory:"):
            model_form(config)
            return st.empty()  # filled once the model has loaded: the official weights' licences


def model_form(config: AppConfig) -> None:
    """The model panel's form; a submitted form replaces `st.session_state.spec`."""
    with st.form("model", border=False):
        spec = st.session_state.spec
        typed = model_paths(config) if config.app.model_folders else None
        chosen = None if typed else model_choice(config)
        # an operator who lets visitors pick weights (model folders) lets them pick a server too; otherwise
        # the server is the config's or $IBLLM_SERVER_URL, since a typed URL makes this machine fetch it
        server = st.text_input("Server URL", spec.server_url or "", key="server_url",
                               help="The /v1 URL of an `ibllm serve` (e.g. http://gpu-host:8000/v1): it answers, "
                                    "and the fields above are left to it. Empty: load the model here."
                               ) if config.app.model_folders else spec.server_url
        left, right = st.columns(2)
        devices = list(DEVICE_CHOICES) + ([spec.device] if spec.device not in DEVICE_CHOICES else [])
        device = left.selectbox("Device", devices, index=devices.index(spec.device), key="device",
                                help="auto: CUDA, then Apple MPS, then the CPU (the toy stays on the CPU)")
        dtypes = list(DTYPE_CHOICES)
        dtype = right.selectbox("Precision", dtypes, index=dtypes.index(spec.dtype or "auto"), key="dtype",
                                help="auto: float16 on a GPU; on a CPU bfloat16 for official weights when the "
                                     "CPU has native bfloat16, else float32 (the toy: float32)")
        quantize = st.selectbox("Quantize weights", QUANTIZE_OPTIONS, index=QUANTIZE_OPTIONS.index(spec.quantize or "none"),
                                key="quantize",
                                help="int8 / int4: LLaMA's linear weights in 8 or 4 bits: 2-4x less memory and "
                                     "faster CPU decoding, slightly different answers")
        if st.form_submit_button("Load", width="stretch"):
            try:
                chosen = chosen or checked_paths(typed, config)
            except PathRefused as exc:
                st.error(str(exc), icon=":material/block:")
                return
            st.session_state.spec = replace(config.model if chosen["name"] == config.model.name else ModelSpec(),
                                             **chosen, device=device, dtype=None if dtype == "auto" else dtype,
                                             quantize=None if quantize == "none" else quantize,
                                             server_url=(server or "").strip() or None)


def sidebar_settings(config: AppConfig, model) -> tuple[GenerationParams, VisualCacheParams, int]:
    """Generation and visual-cache settings and the conversation memory; defaults from the config file
    (the memory from the model when the config leaves it open)."""
    gen, c = config.generation, config.visual_cache
    history = config.chat.history if config.chat.history is not None else (0 if model.card.is_toy else 6)
    with st.sidebar:
        with st.expander("Generation", icon=":material/tune:", expanded=True):
            generation = GenerationParams(
                temperature=st.slider("Temperature", 0.0, 1.5, gen.temperature, 0.05, key="temperature",
                                      help="0 = greedy: the same question gives the same answer"),
                top_p=st.slider("Top-p", 0.05, 1.0, gen.top_p, 0.05, key="top_p"),
                max_tokens=st.slider("Max tokens", 8, 512, gen.max_tokens, 8, key="max_tokens"))
            history = st.slider("Earlier messages sent", 0, 20, history, key="history_messages",
                                help="How much of the conversation goes with each question. The toy model "
                                     "was tuned on single questions and answers best with none.")
        with st.expander("Visual cache", icon=":material/photo_library:", expanded=True):
            visual_cache = VisualCacheParams(
                enabled=st.toggle("Use the cache", c.enabled is not False, key="cache_on",
                                  help="Blend the query with its nearest cached image features (paper §3.3)"),
                size=st.slider("Neighbours", 1, 50, c.size, key="cache_size"),
                t=st.slider("Softmax temperature", 1.0, 100.0, c.t, 1.0, key="cache_t"),
                weight=st.slider("Cache weight", 0.0, 1.0, c.weight, 0.05, key="cache_weight"))
    return generation, visual_cache, history


def sidebar_drawing(model) -> tuple[str, DrawParams]:
    """The Draw button's prompt and settings."""
    with st.sidebar, st.expander("Drawing", icon=":material/brush:"):
        prompt = st.text_input("Prompt", "a photo", key="draw_prompt",
                               help="Guides Stable unCLIP; the toy decoder draws from the inputs alone")
        seed = st.number_input("Seed", 0, 2**31 - 1, 0, key="draw_seed")
        steps = st.slider("Steps", 1, 100, DEFAULT_DRAW.steps, key="draw_steps", disabled=model.card.is_toy,
                          help="Denoising steps (Stable unCLIP); the toy decoder draws in one pass")
    return prompt, DrawParams(seed=int(seed), steps=steps)


def draw_picture(model, prompt: str, params: DrawParams, visual_cache: VisualCacheParams) -> None:
    """Draw the current inputs into the chat and record the picture in the history."""
    inputs, history = st.session_state.inputs, st.session_state.history
    mixture = mixture_summary(inputs)
    with st.chat_message("assistant", avatar=views.AVATARS["assistant"]):
        try:
            with st.spinner("Drawing…"):
                result = backend.draw(model, inputs, prompt, params, visual_cache)
        except Exception as exc:  # noqa: BLE001 - any failure becomes a message, the app keeps running
            message = f"Sorry, that could not be drawn: {exc}"
            st.error(message, icon=":material/error:")
            history.append(Turn("assistant", "", error=message))
            return
        png = result.png_bytes()
        st.image(png, width=320)
        how = f"{result.generator}{f' · “{prompt}”' if prompt and result.generator != 'toy-decoder' else ''} · " \
              f"{result.seconds:.1f} s"
        turn = Turn("assistant", "", mixture=mixture, image=png, drawing=how, neighbors=result.neighbors)
        st.caption(turn.footer())
    history.append(turn)


def inputs_panel(*, expanded: bool) -> None:
    """The mixing desk: each input with its weight and a subtract switch, plus an upload panel."""
    inputs = st.session_state.inputs
    for att in inputs:  # the widgets' values from the last interaction, before anything is drawn with them
        att.weight = st.session_state.get(f"weight_{att.key}", att.weight)
        att.subtract = st.session_state.get(f"subtract_{att.key}", att.subtract)
    title = f"Inputs · {mixture_summary(inputs)}" if inputs else "Inputs"
    with st.expander(title, expanded=expanded, icon=":material/instant_mix:"):
        cols = st.columns(3)
        for i, att in enumerate(inputs):
            with cols[i % 3], st.container(border=True):
                views.attachment(att, key=f"input_{att.key}", caption=f"{MODALITY_ICONS[att.modality]} {att.name}")
                options = att.alternatives
                if len(options) > 1:  # the content may be read as several media: the user says which
                    st.selectbox("Read as", options, index=options.index(att.modality) if att.modality in options
                                 else 0, key=f"as_{att.key}", format_func=lambda m: modalities.get(m).noun,
                                 on_change=read_input_as, args=(att.key,))
                # no 0: a weightless input would silently drop out of the mix (remove it with the x instead)
                st.slider("Weight", 0.05, 2.0, att.weight, 0.05, key=f"weight_{att.key}")
                left, right = st.columns([3, 1], vertical_alignment="center")
                left.toggle("Subtract", att.subtract, key=f"subtract_{att.key}",
                            help="Subtract this input from the mixture instead of adding it")
                right.button("", key=f"remove_{att.key}", on_click=remove_input, args=(att.key,),
                             icon=":material/close:", help="Remove this input")
        st.file_uploader("Add files to the mix", type=ALL_FILE_TYPES, accept_multiple_files=True,
                         key=f"upload_{st.session_state.uploads}", on_change=on_panel_upload,
                         max_upload_size=MAX_UPLOAD_MB,
                         help=f"{modalities.describe()}. A picture can be read as a depth map or a thermal "
                              "image under it. Files attached in the chat box replace the inputs; files added "
                              "here join them.")


def welcome(model) -> None:
    """The empty chat: what to do, and toy examples one click away."""
    st.markdown(f"#### Attach {modalities.describe()} with **+** below, then ask about it.")
    st.caption("Several inputs are mixed into one query: weigh or subtract them under *Inputs* "
               "(the paper's embedding arithmetic). Follow-up questions keep the inputs.")
    if model.card.is_toy:
        cols = st.columns(len(modalities.MEDIA))
        for col, modality in zip(cols, modalities.MEDIA):
            col.button(f"Try {modalities.get(modality).noun}", icon=MODALITY_ICONS[modality], key=f"example_{modality}",
                       on_click=try_example, args=(modality,), width="stretch")


def answer(model, question: str, generation: GenerationParams, visual_cache: VisualCacheParams, history_messages: int
           ) -> None:
    """Stream the answer to the last question into the chat and record it in the history."""
    history, inputs = st.session_state.history, st.session_state.inputs
    mixture = mixture_summary(inputs)
    with st.chat_message("assistant", avatar=views.AVATARS["assistant"]):
        asked = max(i for i, t in enumerate(history) if t.role == "user")
        messages = to_messages(history[:asked], question, inputs, max_history=history_messages)
        try:
            reply = Reply(backend.chat_model(model, generation, visual_cache).stream(messages))
            st.write_stream(reply)
        except Exception as exc:  # noqa: BLE001 - any failure becomes a message, the app keeps running
            message = f"Sorry, that did not work: {exc}"
            report(message, exc)
            history.append(Turn("assistant", "", error=message))
            return
        turn = reply.turn(mixture)
        views.answer_footer(turn, index=len(history), on_draw=draw_callback(model, turn.mixture))
    history.append(turn)


def explorer(model, concepts: list[str]) -> None:
    """Cosine similarities between the inputs, their mixture and text prompts; zero-shot labels."""
    inputs = st.session_state.inputs
    default = "\n".join(concepts) if concepts else "a dog\na bird\nrain\na car\nmusic"
    prompts = [p.strip() for p in st.text_area("Text prompts, one per line", default, height=140).splitlines()
               if p.strip()]
    if not inputs and not prompts:
        st.info("Attach some inputs or write some prompts to compare them.")
        return
    known = st.session_state.embeddings
    with st.spinner("Embedding…"):
        missing = [a for a in inputs if a.media.sha256 not in known]
        if missing:
            known.update({a.media.sha256: e for a, e in zip(missing, backend.embed_media(model, missing))})
        text_emb = backend.embed_texts(model, prompts) if prompts else torch.zeros(0, model.feature_dim)
    vectors = [known[a.media.sha256] for a in inputs]
    items, item_emb = with_mixture([a.plain_label for a in inputs],
                                   torch.stack(vectors) if vectors else torch.zeros(0, model.feature_dim),
                                   [a.signed_weight for a in inputs])
    left, right = st.columns([3, 2])
    with left:
        st.markdown("**Cosine similarity** between inputs, their mixture and the prompts")
        names = items + [f'"{p}"' for p in prompts]
        st.plotly_chart(heatmap_figure(cosine_matrix(torch.cat([item_emb, text_emb])), names), key="heatmap")
    with right:
        st.markdown("**Zero-shot labels**: the closest prompt to each input")
        if items and prompts:
            labels = zero_shot(items, item_emb, prompts, text_emb)
            st.dataframe([{"input": z.item, "label": z.label, "probability": round(z.probability, 3),
                           "cosine": round(z.cosine, 3)} for z in labels], hide_index=True, width="stretch")
        else:
            st.caption("Attach inputs and give prompts to label them.")


# ----- the page -----------------------------------------------------------------------------------------

config = start_config()
DEBUG = config.app.debug or debug_flag(sys.argv[1:])
if DEBUG:  # tracebacks in Streamlit's own error boxes too (`ibllm ui --debug` sets it on the command line)
    st.set_option("client.showErrorDetails", "full")
init_state(config)
model_notes = sidebar_model(config)
try:
    model = shared_model(st.session_state.spec)
except Exception as exc:  # noqa: BLE001 - a bad path or checkpoint must not take the app down
    spec = st.session_state.spec
    report(f"Could not {'reach **' + spec.server_url if spec.server_url else 'load **' + spec.name}**: {exc}", exc)
    st.button("Back to the toy model", key="back_to_toy",
              on_click=lambda: st.session_state.update(spec=ModelSpec(server_url=None)))
    st.stop()
notice = backend.license_notice(model)
if notice:
    model_notes.caption(notice)
generation, visual_cache, history_messages = sidebar_settings(config, model)
draw_prompt, draw_params = sidebar_drawing(model)

view = st.segmented_control("View", list(VIEWS), format_func=VIEWS.get, default="chat", key="view",
                            label_visibility="collapsed") or "chat"
if view == "chat":
    value = st.chat_input(f"Ask about your inputs, or attach {modalities.describe()}…",
                          accept_file="multiple", file_type=ALL_FILE_TYPES, max_upload_size=MAX_UPLOAD_MB,
                          key="chat")
    if value:
        attached, errors = read_uploads(value.files)
        ask(value.text, attached, errors, had_files=bool(value.files))

st.caption(backend.status_line(model))
notice = backend.toy_notice(model)
if notice:
    st.info(notice, icon=":material/toys:")
# open when there is something to mix; folded in the explorer, whose heatmap needs the room
inputs_panel(expanded=view == "chat" and len(st.session_state.inputs) > 1)
if view == "explorer":
    explorer(model, backend.toy_concepts())
else:
    if not st.session_state.history:
        welcome(model)
    for i, t in enumerate(st.session_state.history):
        views.turn(t, index=i, on_draw=draw_callback(model, t.mixture))
    question, st.session_state.pending = st.session_state.pending, None
    if question:
        answer(model, question, generation, visual_cache, history_messages)
    drawing, st.session_state.pending_draw = st.session_state.pending_draw, False
    if drawing:
        draw_picture(model, draw_prompt, draw_params, visual_cache)
