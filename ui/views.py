"""Streamlit drawing helpers: attachments shown back, cache neighbours, one chat turn.

Kept apart from `app.py` so the script reads as the page layout, top to bottom.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from ibllm_agent import modalities
from ibllm_agent.cache.base import Neighbor

from .attachments import Attachment, browser_video
from .conversation import Turn

AVATARS = {"user": ":material/person:", "assistant": ":material/hearing:"}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}


def false_colour(values: np.ndarray, colormap: str) -> np.ndarray:
    """A one-channel map (H, W) as an RGB uint8 picture: scaled between its 1st and 99th percentile, through
    a matplotlib colormap."""
    from matplotlib import colormaps

    v = np.asarray(values, dtype=np.float64)
    low, high = np.percentile(v, [1, 99])
    scaled = ((v - low) / (high - low)).clip(0, 1) if high > low else np.zeros_like(v)
    return (colormaps[colormap](scaled)[..., :3] * 255).round().astype(np.uint8)


IMU_AXES = ("x", "y", "z")


def imu_figure(signal: np.ndarray, *, rate: float = 400.0, height: int = 260) -> go.Figure:
    """An IMU window (6, T) as six lines: the accelerometer (m/s²) above, the gyroscope (rad/s) below."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08)
    t = np.arange(signal.shape[1]) / rate
    colours = ("#d62728", "#2ca02c", "#1f77b4")
    for row, (sensor, unit) in enumerate((("acc", "m/s²"), ("gyro", "rad/s"))):
        for axis, colour in enumerate(colours):
            fig.add_trace(go.Scatter(x=t, y=signal[3 * row + axis], mode="lines", line={"width": 1, "color": colour},
                                     name=f"{sensor} {IMU_AXES[axis]}", hoverinfo="skip"), row=row + 1, col=1)
        fig.update_yaxes(title_text=unit, row=row + 1, col=1)
    fig.update_xaxes(title_text="s", row=2, col=1)
    fig.update_layout(height=height, margin={"l": 0, "r": 0, "t": 0, "b": 0}, legend={"orientation": "h"})
    return fig


def point_cloud_figure(points: np.ndarray, *, max_points: int = 3000, height: int = 300) -> go.Figure:
    """A rotatable 3D scatter of a point cloud (N, 3), coloured by height, evenly subsampled for speed."""
    pts = np.asarray(points, dtype=np.float32)
    if len(pts) > max_points:
        pts = pts[np.linspace(0, len(pts) - 1, max_points).astype(int)]
    fig = go.Figure(go.Scatter3d(
        x=pts[:, 0], y=pts[:, 1], z=pts[:, 2], mode="markers", hoverinfo="skip",
        marker={"size": 2, "color": pts[:, 2], "colorscale": "Viridis", "opacity": 0.9}))
    axis = {"visible": False}
    fig.update_layout(height=height, margin={"l": 0, "r": 0, "t": 0, "b": 0},
                      scene={"xaxis": axis, "yaxis": axis, "zaxis": axis, "aspectmode": "data"})
    return fig


@st.cache_data(max_entries=32, show_spinner=False)
def _playable(data: bytes, suffix: str) -> bytes:
    return browser_video(data, suffix)


def _displayable(data: bytes):
    """The picture as st.image can encode it: a 16-bit or float PNG (a depth map not yet read as depth)
    becomes 8-bit grey, stretched to its range; other pictures pass through unchanged."""
    import io

    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if im.mode in ("1", "L", "LA", "P", "RGB", "RGBA"):
            return data
        a = np.asarray(im, dtype=np.float32)
    lo, hi = float(a.min()), float(a.max())
    return Image.fromarray(((a - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8))


PREVIEWS = {
    "image": lambda att, key, width: st.image(_displayable(att.data), width=width),
    "audio": lambda att, key, width: st.audio(att.data, format=att.mime),
    "video": lambda att, key, width: st.video(_playable(att.data, Path(att.name).suffix or ".mp4"), format="video/mp4"),
    "points": lambda att, key, width: st.plotly_chart(point_cloud_figure(att.media.tensor.numpy()), key=key,
                                                      config={"displaylogo": False}),
    # depth and thermal maps as the model sees them (224 px, normalised), in false colour: near / hot bright
    "disparity": lambda att, key, width: st.image(false_colour(att.media.tensor[0].numpy(), "turbo"), width=width),
    "thermogram": lambda att, key, width: st.image(false_colour(att.media.tensor[0].numpy(), "inferno"), width=width),
    "traces": lambda att, key, width: st.plotly_chart(imu_figure(att.media.tensor.numpy()), key=key,
                                                      config={"displaylogo": False}),
}
"""How each preview kind of the modality registry is shown back."""


def attachment(att: Attachment, *, key: str, width: int = 220, caption: str | None = None) -> None:
    """Show a file back as its modality's preview: a thumbnail, a player, a 3D view, a false-colour map or
    the IMU's six lines."""
    PREVIEWS[modalities.get(att.modality).preview](att, key, width)
    st.caption(caption or att.label)


def _neighbor_image(meta: dict):
    """A thumbnail of a cache item: its image file, or, for the toy cache (whose items are training
    pictures named by world seed, concept and index), the same picture rendered again."""
    for name in ("uri", "source", "path"):
        value = meta.get(name)
        if isinstance(value, str) and Path(value).suffix.lower() in _IMAGE_SUFFIXES and Path(value).is_file():
            return value
    seed, index, concept = meta.get("seed"), meta.get("index"), meta.get("concept")
    if meta.get("modality") == "image" and isinstance(seed, int) and isinstance(index, int):
        return _toy_picture(seed, concept, index)
    return None


@st.cache_data(max_entries=256, show_spinner=False)
def _toy_picture(seed: int, concept: str, index: int):
    from ibllm_agent.toy import CONCEPT_NAMES, ToyWorld

    return ToyWorld(seed).image(concept, index) if concept in CONCEPT_NAMES else None


def neighbors(items: list[Neighbor], *, limit: int = 5) -> None:
    """The cache items an answer leaned on: thumbnail when the item is an image, caption, score, blend weight."""
    if not items:
        return
    with st.expander(f"Visual cache: {len(items)} neighbours", icon=":material/photo_library:"):
        cols = st.columns(limit)
        for col, item in zip(cols, items[:limit]):
            with col:
                image = _neighbor_image(item.metadata)
                if image is not None:
                    st.image(image, width="stretch")
                meta = item.metadata
                title = meta.get("caption") or meta.get("concept") or meta.get("name") or f"cache item {item.id}"
                st.markdown(f"**{title}**")
                st.caption(f"similarity {item.score:.3f} · weight {item.weight:.0%}")


def turn(t: Turn, *, index: int, on_draw=None) -> None:
    """One message of the history, with its attachments, its drawn picture or its cache neighbours;
    `on_draw` (None: no button) is the callback of a Draw button under an answer."""
    with st.chat_message(t.role, avatar=AVATARS[t.role]):
        if t.error is not None:
            st.error(t.error, icon=":material/error:")
        elif t.image is not None:
            st.image(t.image, width=320)
        elif t.text:
            st.markdown(t.text)
        if t.attachments:
            cols = st.columns(max(2, min(len(t.attachments), 4)))  # a lone file takes half the width
            for i, att in enumerate(t.attachments):
                with cols[i % len(cols)]:
                    attachment(att, key=f"turn{index}_{i}", width=180)
        if t.role == "assistant" and t.error is None:
            answer_footer(t, index=index, on_draw=on_draw)


def answer_footer(t: Turn, *, index: int, on_draw=None) -> None:
    """Under an answer: what conditioned it and its length, the cache neighbours it leaned on, and a Draw
    button (a picture of the same inputs) when `on_draw` is given."""
    st.caption(t.footer())
    neighbors(t.neighbors)
    if on_draw is not None and t.image is None:
        st.button("Draw", icon=":material/brush:", key=f"draw_{index}", on_click=on_draw,
                  help="Draw a picture of these inputs (ImageBind-LLM's image output)")
