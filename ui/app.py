"""ImageBind-LLM chat: ask about images, sounds, clips and 3D point clouds, mix them, see the cache.

Run with `ibllm ui` or `streamlit run ui/app.py [-- --config ibllm-ui.toml]`.
The page, top to bottom: sidebar settings, the shared model, the chat input (pinned to the bottom),
the inputs mixing panel, then either the chat or the embedding explorer.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import streamlit as st
import torch

# `streamlit run ui/app.py` puts ui/ on sys.path; put the repository root there too, so that the helper
# modules import as the `ui` package and a source checkout runs without installing ibllm_agent.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ibllm_agent.media import load_media  # noqa: E402
from ui import backend, views  # noqa: E402
from ui.attachments import ALL_FILE_TYPES, MAX_UPLOAD_MB, mixture_summary, read_uploads  # noqa: E402
from ui.conversation import Reply, Turn, to_messages  # noqa: E402
from ui.explorer import cosine_matrix, heatmap_figure, with_mixture, zero_shot  # noqa: E402
from ui.settings import AppConfig, CacheSettings, ConfigError, GenerationSettings, ModelSpec, config_path  # noqa: E402

DEFAULT_QUESTIONS = {"image": "What is in this picture?", "audio": "What do you hear?",
                     "video": "What happens in this clip?", "point": "What is this 3D shape?"}
CHAT, EXPLORER = "💬 Chat", "🧭 Embedding explorer"

st.set_page_config(page_title="ImageBind-LLM", page_icon="🎧", layout="wide")


@st.cache_resource(show_spinner="Loading the model…", max_entries=2)
def shared_model(spec: ModelSpec):
    """One model per spec for every browser session; answers take turns on its lock."""
    return backend.load_model(spec)


def start_config() -> AppConfig:
    path = config_path(sys.argv[1:])
    if path is None:
        return AppConfig()
    try:
        return AppConfig.from_file(path)
    except ConfigError as exc:
        st.error(f"Config file ignored: {exc}", icon="⚠️")
        return AppConfig()


def init_state(config: AppConfig) -> None:
    state = st.session_state
    state.setdefault("spec", config.model)
    state.setdefault("history", [])
    state.setdefault("inputs", [])
    state.setdefault("uploads", 0)  # bumps the upload panel's key, which empties it after each upload
    state.setdefault("embeddings", {})  # sha256 -> ImageBind embedding, for the explorer


def new_chat() -> None:
    st.session_state.history = []
    st.session_state.inputs = []


def remove_input(key: str) -> None:
    st.session_state.inputs = [a for a in st.session_state.inputs if a.key != key]


def on_panel_upload() -> None:
    """Files added in the panel join the inputs; the panel is then emptied (a fresh key)."""
    key = f"upload_{st.session_state.uploads}"
    added, errors = read_uploads(st.session_state.get(key) or [])
    known = {a.key for a in st.session_state.inputs}
    st.session_state.inputs += [a for a in added if a.key not in known]
    st.session_state.history += [Turn("assistant", "", error=e) for e in errors]
    st.session_state.uploads += 1


def sidebar(config: AppConfig) -> tuple[GenerationSettings, CacheSettings]:
    with st.sidebar:
        st.title("🎧 ImageBind-LLM")
        st.button("New chat", icon="✨", on_click=new_chat, width="stretch", key="new_chat")
        with st.expander("Model", icon="🧠"):
            with st.form("model"):
                spec = st.session_state.spec
                name = st.text_input("Model", spec.name, key="model_name",
                                     help='"toy", or the path of an adapter checkpoint such as 7B.pth')
                llama_dir = st.text_input("LLaMA folder", spec.llama_dir or "", key="llama_dir",
                                          help="holds tokenizer.model and 7B/params.json + consolidated.00.pth")
                imagebind = st.text_input("ImageBind checkpoint", spec.imagebind_ckpt or "",
                                          help="imagebind_w3D.pth (with Point-Bind for 3D)")
                knn = st.text_input("Cache index", spec.knn_index or "", help="knn.index (optional)")
                device = st.selectbox("Device", ["cpu", "cuda"], index=0 if spec.device == "cpu" else 1)
                if st.form_submit_button("Load", width="stretch"):
                    st.session_state.spec = ModelSpec(
                        name=name.strip() or "toy", llama_dir=llama_dir.strip() or None,
                        imagebind_ckpt=imagebind.strip() or None, knn_index=knn.strip() or None, device=device)
        st.subheader("Generation")
        gen = config.generation
        generation = GenerationSettings(
            temperature=st.slider("Temperature", 0.0, 1.5, gen.temperature, 0.05, key="temperature",
                                  help="0 = greedy: the same question gives the same answer"),
            top_p=st.slider("Top-p", 0.05, 1.0, gen.top_p, 0.05, key="top_p"),
            max_tokens=st.slider("Max tokens", 8, 512, gen.max_tokens, 8, key="max_tokens"))
        st.subheader("Visual cache")
        c = config.cache
        cache = CacheSettings(
            enabled=st.toggle("Use the cache", c.enabled, key="cache_on",
                              help="Blend the query with its nearest cached image features (paper §3.3)"),
            size=st.slider("Neighbours", 1, 50, c.size, key="cache_size"),
            t=st.slider("Temperature", 1.0, 100.0, c.t, 1.0, key="cache_t"),
            weight=st.slider("Cache weight", 0.0, 1.0, c.weight, 0.05, key="cache_weight"))
    return generation, cache


def inputs_panel() -> None:
    """The mixing desk: each input with its weight and a subtract switch, plus an upload panel."""
    inputs = st.session_state.inputs
    for att in inputs:  # the widgets' values from the last interaction, before anything is drawn with them
        att.weight = st.session_state.get(f"weight_{att.key}", att.weight)
        att.subtract = st.session_state.get(f"subtract_{att.key}", att.subtract)
    title = f"Inputs · {mixture_summary(inputs)}" if inputs else "Inputs"
    with st.expander(title, expanded=bool(inputs), icon="🎛️"):
        if inputs:
            cols = st.columns(min(len(inputs), 4))
            for i, att in enumerate(inputs):
                with cols[i % len(cols)], st.container(border=True):
                    views.attachment(att, key=f"input_{att.key}")
                    st.slider("Weight", 0.0, 2.0, att.weight, 0.05, key=f"weight_{att.key}")
                    left, right = st.columns(2)
                    left.toggle("Subtract", att.subtract, key=f"subtract_{att.key}")
                    right.button("Remove", key=f"remove_{att.key}", on_click=remove_input, args=(att.key,))
        st.file_uploader("Add files to the mix", type=ALL_FILE_TYPES, accept_multiple_files=True,
                         key=f"upload_{st.session_state.uploads}", on_change=on_panel_upload,
                         max_upload_size=MAX_UPLOAD_MB,
                         help="Images, sounds, clips, point clouds. Files attached in the chat box replace "
                              "the inputs; files added here join them.")


def submit(value) -> str | None:
    """Take a chat submission; returns the question to answer, or None when there is nothing to answer."""
    attached, errors = read_uploads(value.files)
    if attached:  # files attached to a question replace the inputs; follow-ups keep them
        st.session_state.inputs = attached
    text = value.text.strip()
    question = text or (DEFAULT_QUESTIONS[attached[0].modality] if attached else "")
    history = st.session_state.history
    if question or value.files:
        history.append(Turn("user", question, attachments=[replace(a) for a in attached]))  # a snapshot
    history += [Turn("assistant", "", error=e) for e in errors]
    if errors and not attached:  # the question was about the file that failed
        return None
    return question or None


def answer(model, question: str, generation: GenerationSettings, cache: CacheSettings) -> None:
    """Stream the answer to the last question into the chat and record it in the history."""
    history, inputs = st.session_state.history, st.session_state.inputs
    mixture = mixture_summary(inputs)
    with st.chat_message("assistant", avatar="🤖"):
        asked = max(i for i, t in enumerate(history) if t.role == "user")
        messages = to_messages(history[:asked], question, inputs)
        try:
            reply = Reply(backend.chat_model(model, generation, cache).stream(messages))
            st.write_stream(reply)
        except Exception as exc:  # noqa: BLE001 - any failure becomes a message, the app keeps running
            st.error(f"Sorry, that did not work: {exc}", icon="⚠️")
            history.append(Turn("assistant", "", error=f"Sorry, that did not work: {exc}"))
            return
        turn = reply.turn(mixture)
        views.answer_footer(turn)
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
        missing = [a.media for a in inputs if a.media.sha256 not in known]
        if missing:
            known.update({m.sha256: e for m, e in zip(missing, backend.embed(model, missing))})
        texts = [load_media(p.encode(), "text", name=p) for p in prompts]
        text_emb = backend.embed(model, texts) if texts else torch.zeros(0, 1024)
    items, item_emb = with_mixture([a.label for a in inputs],
                                   torch.stack([known[a.media.sha256] for a in inputs]) if inputs
                                   else torch.zeros(0, text_emb.shape[-1]),
                                   [a.signed_weight for a in inputs])
    left, right = st.columns([3, 2])
    with left:
        st.markdown("**Cosine similarity**")
        names = items + [f"🔤 {p}" for p in prompts]
        st.plotly_chart(heatmap_figure(cosine_matrix(torch.cat([item_emb, text_emb])), names), key="heatmap")
    with right:
        st.markdown("**Zero-shot labels**")
        if items and prompts:
            labels = zero_shot(items, item_emb, prompts, text_emb)
            st.dataframe([{"input": z.item, "label": z.label, "probability": round(z.probability, 3),
                           "cosine": round(z.cosine, 3)} for z in labels], hide_index=True, width="stretch")
        else:
            st.caption("Attach inputs and give prompts to label them.")


config = start_config()
init_state(config)
generation, cache = sidebar(config)
try:
    model = shared_model(st.session_state.spec)
except Exception as exc:  # noqa: BLE001 - a bad path or checkpoint must not take the app down
    st.error(f"Could not load **{st.session_state.spec.name}**: {exc}", icon="⚠️")
    st.button("Back to the toy model", key="back_to_toy", on_click=lambda: st.session_state.update(spec=ModelSpec()))
    st.stop()

view = st.segmented_control("View", [CHAT, EXPLORER], default=CHAT, key="view", label_visibility="collapsed")
question = None
if view != EXPLORER:
    value = st.chat_input("Ask about your inputs, or attach images, sounds, clips, point clouds…",
                          accept_file="multiple", file_type=ALL_FILE_TYPES, max_upload_size=MAX_UPLOAD_MB,
                          key="chat")
    if value:
        question = submit(value)

st.caption(backend.status_line(model))
notice = backend.toy_notice(model)
if notice:
    st.info(notice, icon="🧸")
inputs_panel()
if view == EXPLORER:
    explorer(model, backend.toy_concepts())
else:
    for i, t in enumerate(st.session_state.history):
        views.turn(t, index=i)
    if question:
        answer(model, question, generation, cache)
