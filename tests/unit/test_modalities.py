"""The modality registry is the one vocabulary: every layer accepts exactly its modalities, so none can drift.

Walks `ibllm_agent.modalities` and checks, for each layer that names media, that the layer's set is the
registry's: content blocks, the arithmetic grammar, the tools' argument schemas, the embeddings' methods,
the CLI flags, the cache build, the app's maps, the loaders and the model's routing. The last test keeps
the names from being written out again anywhere in the package.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage
from langchain_media import make_media

from ibllm_agent import arithmetic, modalities
from ibllm_agent.content_blocks import UnsupportedContentError, parse_message
from ibllm_agent.embeddings import ImageBindEmbeddings
from ibllm_agent.sources import SourcePolicy

PACKAGE = Path(modalities.__file__).resolve().parent
MEDIA = set(modalities.MEDIA)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    files = make_media(tmp_path_factory.mktemp("media"))
    return {name: files[name] for name in MEDIA if name in files}


def test_the_registry_is_consistent():
    assert set(modalities.NAMES) == set(modalities.REGISTRY) and MEDIA < set(modalities.NAMES)
    assert "text" in modalities.NAMES and "text" not in MEDIA
    for m in modalities.REGISTRY.values():
        assert modalities.get(m.name) is m and all(modalities.get(a) is m for a in m.aliases)
        assert callable(m.load_function())
        assert m.question.endswith("?") and m.noun
        if m.is_medium:
            assert m.icon.startswith(":material/") and m.preview and m.embed_method.startswith("embed_")
            assert m.cli_flag == f"--{m.name}" and m.suffixes and m.mime_types
    with pytest.raises(modalities.UnknownModalityError, match="smell"):
        modalities.get("smell")


def test_the_registry_matches_the_test_media(media):
    assert set(media) == MEDIA  # a new medium needs a test file here (tests/langchain_media.py)


def test_every_medium_loads_its_test_file_through_its_loader(media):
    from ibllm_agent.media import load_media

    for name, path in media.items():
        item = load_media(path, name)
        assert item.modality == name and item.tensor.isfinite().all(), name


def test_a_mime_type_named_exactly_beats_its_family():
    assert modalities.for_mime("image/png").name == "image"
    for m in modalities.REGISTRY.values():
        for mime in m.mime_types:
            if not mime.endswith("/*"):
                assert modalities.for_mime(mime, media_only=False) is m, mime
                if m.block_type not in (None, modalities.FILE_BLOCK):
                    assert modalities.for_block_type(m.block_type, mime) is m, mime


def test_content_blocks_accept_exactly_the_media(media):
    from ibllm_agent.media import detect_format

    for name, path in media.items():
        m = modalities.get(name)
        data = base64.b64encode(path.read_bytes()).decode()
        mime = m.mime_types[0].replace("*", "x-test")
        by_type = {"type": m.block_type, "base64": data, "mime_type": mime}
        by_extras = {"type": "file", "base64": data, "mime_type": "application/octet-stream",
                     "extras": {"modality": name}}
        by_mime = {"type": "file", "base64": data, "mime_type": mime}
        by_content = {"type": "file", "base64": data}
        question = parse_message(HumanMessage(content=["?", by_type, by_extras, by_mime, by_content]), SourcePolicy())
        # content alone says what the format is by default: a depth map's PNG is a picture unless a block says
        assert [p.modality for p in question.parts] == [name] * 3 + [detect_format(path).modality], name
    for other in set(modalities.NAMES) - MEDIA | {"smell", "depthmap"}:
        block = {"type": "file", "base64": data, "extras": {"modality": other}}
        with pytest.raises(ValueError, match="extras.modality must be one of"):
            parse_message(HumanMessage(content=[block]), SourcePolicy())
    assert set(modalities.block_types()) == {modalities.get(n).block_type for n in MEDIA}
    with pytest.raises(UnsupportedContentError):
        parse_message(HumanMessage(content=[{"type": "point_cloud", "base64": data}]), SourcePolicy())


def test_the_arithmetic_grammar_takes_exactly_the_modalities_and_media():
    assert set(arithmetic.MODALITIES) == set(modalities.NAMES) | {modalities.DETECT}
    for name in modalities.NAMES:
        (operand,) = arithmetic.parse(f"{name}:x").operands
        assert operand.modality == (None if name == "text" else name)
    with pytest.raises(arithmetic.ExpressionError, match="unknown modality 'smell'"):
        arithmetic.parse("smell:x")


def test_tool_schemas_offer_exactly_the_media():
    from ibllm_agent.perception_tools import DescribeMediaInput, EmbedMediaInput

    for schema in (DescribeMediaInput, EmbedMediaInput):
        prop = schema.model_json_schema()["properties"]["modality"]
        enum = next(option["enum"] for option in prop["anyOf"] if "enum" in option)
        assert set(enum) == MEDIA, schema.__name__


def test_embeddings_have_one_method_per_medium_and_no_other():
    methods = {name for name in dir(ImageBindEmbeddings) if name.startswith("embed_")}
    per_medium = {modalities.get(n).embed_method for n in MEDIA}
    assert per_medium <= methods
    assert methods - per_medium == {"embed_documents", "embed_query", "embed_media", "embed_tensor"}


def test_cli_has_one_flag_per_medium():
    from ibllm_agent.cli import build_parser

    parser = build_parser()
    ask = parser._subparsers._group_actions[0].choices["ask"]
    flags = {opt for action in ask._actions for opt in action.option_strings}
    assert {modalities.get(n).cli_flag for n in MEDIA} <= flags
    assert not {f"--{n}" for n in set(modalities.NAMES) - MEDIA} & flags


def test_cache_build_and_loaders_follow_the_registry():
    from ibllm_agent.cache.build import DEFAULT_MODALITIES
    from ibllm_agent.media import MIME_TO_MODALITY
    from ibllm_agent.media.detect import ALL_FORMATS, can_load_as

    assert set(DEFAULT_MODALITIES) == MEDIA
    # every format's default is a registry modality, and every modality is read from some format (depth
    # maps and thermal images from pictures and arrays that are pictures and points by default)
    assert {f.modality for f in ALL_FORMATS} <= set(modalities.NAMES)
    assert {m for m in modalities.NAMES if any(can_load_as(f, m) for f in ALL_FORMATS)} == set(modalities.NAMES)
    assert set(MIME_TO_MODALITY.values()) <= set(modalities.NAMES)


def test_the_model_routes_every_modality_to_an_imagebind_branch():
    from ibllm_agent.imagebind.model import MODALITIES as BRANCHES

    assert {modalities.get(n).branch for n in modalities.NAMES} <= set(BRANCHES)


def test_the_app_maps_follow_the_registry():
    from ui import views
    from ui.attachments import FILE_TYPES, MODALITY_ICONS

    assert set(FILE_TYPES) == set(MODALITY_ICONS) == MEDIA
    assert {modalities.get(n).preview for n in MEDIA} <= set(views.PREVIEWS)


def test_the_toy_world_renders_every_modality():
    from ibllm_agent.toy.world import STREAM_ID

    assert set(STREAM_ID) == set(modalities.NAMES)


# Where modality names may be written as literals: the registry; ImageBind's own branch names; the toy
# world's frozen random-stream ids; the media format table (each format's modality); ffmpeg's stream kinds
# (a container's "audio" and "video" streams); the toy evaluation's per-modality targets (numbers of its issue).
ALLOWED = {"modalities.py", "imagebind/model.py", "imagebind/heads.py", "imagebind/preprocessors.py",
           "toy/world.py", "media/detect.py", "media/audio.py", "train/toy_eval.py"}


def test_no_second_list_of_modality_names_in_the_package():
    """A tuple, list, set or dict that spells out two or more modality names is a second vocabulary."""
    names = "|".join(modalities.NAMES)
    literal = re.compile(rf"""["'](?:{names})["']\s*[,:]\s*(?:[^,\n]*,\s*)?["'](?:{names})["']""")
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in ALLOWED:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if literal.search(line) and '"type":' not in line:  # {"type": "text", "text": ...} is a block
                found.append(f"{rel}:{number}: {line.strip()}")
    assert not found, "modality names written out again:\n" + "\n".join(found)
