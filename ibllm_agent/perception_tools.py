"""Perception tools: let any tool-calling agent see, hear and feel 3D shapes through ImageBind-LLM.

    tools = get_tools("toy", roots=["./media"])          # or an ImageBindLLM, shared with the chat model
    agent = langchain.agents.create_agent(any_tool_calling_llm, tools)

| tool | does | artifact |
|---|---|---|
| `describe_media` | answers a question about a media file (any medium of `ibllm_agent.modalities`) | - |
| `embed_media` | embeds a file or a text, keeps the vector under a handle (`emb_1`, ...) | the vector |
| `embedding_arithmetic` | evaluates `0.6*audio:rain.wav + image:dog.png - 0.3*text:"day"` or `emb_1 - emb_2` | the vector |
| `describe_embedding` | lets the model describe a stored (e.g. composed) embedding | - |
| `retrieve_from_cache` | nearest items of the visual cache (FAISS / Chroma) with scores and metadata | the neighbours |
| `search_collection` | cross-modal search in a Chroma collection (only when one is given) | the hits |
| `classify_media` | zero-shot classification against candidate labels | label probabilities |
| `generate_image` | draws a picture of media files (only when an `output_dir` is given) | the PNG's path or an image block |

Files are confined to `roots` (see `ibllm_agent.sources`); URLs only with `allow_urls=True`. The one tool
that writes, `generate_image`, writes only new PNG files under names it chooses inside `output_dir`.
Every failure (bad path, bad expression, unreadable media, no cache) comes back to the agent as a
tool error message (`ToolMessage(status="error")`) it can read and correct, never as an exception
that ends the run. Vectors live in a per-toolkit `EmbeddingStore`: call `get_tools` once per
user session.
"""

from __future__ import annotations

import base64
import functools
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from langchain_core.messages import HumanMessage
from langchain_core.tools import BaseTool, ToolException
from pydantic import BaseModel, ConfigDict, Field

from ibllm_agent import modalities
from ibllm_agent.arithmetic import MODALITIES as EXPRESSION_MODALITIES
from ibllm_agent.arithmetic import ExpressionError, Operand, parse
from ibllm_agent.chat_models import ChatImageBindLLM
from ibllm_agent.content_blocks import embedding_block
from ibllm_agent.embeddings import ImageBindEmbeddings, MediaRef
from ibllm_agent.fusion import fuse
from ibllm_agent.model_pool import shared_model
from ibllm_agent.sources import DEFAULT_MAX_BYTES, SourceError, SourcePolicy

MediaModality = Literal[modalities.MEDIA]  # type: ignore[valid-type]  # the registry's media, as a JSON enum
_MEDIA_NOUNS = modalities.describe()
_HANDLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CLASSIFY_SCALE = 100.0
"""Logit scale for zero-shot classification over cosine similarities (CLIP's / ImageBind's order of magnitude)."""


# --- the per-session embedding store --------------------------------------------------------------


@dataclass(frozen=True)
class StoredEmbedding:
    """A vector the agent can refer to by handle."""

    handle: str
    vector: torch.Tensor  # (D,) float32
    description: str  # what it is: "image dog.png", "0.6*audio:'rain.wav' + ..."


class EmbeddingStore:
    """Handles -> vectors for one session; oldest dropped beyond `max_items`."""

    def __init__(self, max_items: int = 256):
        self.max_items = max_items
        self._items: OrderedDict[str, StoredEmbedding] = OrderedDict()
        self._counter = 0
        self._lock = threading.Lock()

    def put(self, vector: torch.Tensor, description: str, handle: str | None = None) -> StoredEmbedding:
        with self._lock:
            if handle is None:
                self._counter += 1
                handle = f"emb_{self._counter}"
                while handle in self._items:
                    self._counter += 1
                    handle = f"emb_{self._counter}"
            elif not _HANDLE.fullmatch(handle) or handle in EXPRESSION_MODALITIES:
                raise ToolException(f"invalid name {handle!r}: use letters, digits and _ (not a modality name)")
            item = StoredEmbedding(handle, vector.detach().float().cpu(), description)
            self._items[handle] = item
            self._items.move_to_end(handle)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
            return item

    def get(self, handle: str) -> StoredEmbedding:
        with self._lock:
            if handle not in self._items:
                known = ", ".join(self._items) or "none yet; create one with embed_media"
                raise ToolException(f"unknown embedding handle {handle!r} (known: {known})")
            return self._items[handle]

    def __contains__(self, handle: str) -> bool:
        return handle in self._items

    def __len__(self) -> int:
        return len(self._items)


# --- shared state of the tools ---------------------------------------------------------------------


class Perception:
    """What the tools share: the model, the source policy, the chat/embedding wrappers, the store."""

    def __init__(self, model: Any = "toy", roots: Sequence[str | Path] | None = None, *, allow_urls: bool = False,
                 max_bytes: int = DEFAULT_MAX_BYTES, policy: SourcePolicy | None = None, cache: Any = None,
                 collection: Any = None, store: EmbeddingStore | None = None, max_tokens: int = 128,
                 temperature: float = 0.0, output_dir: str | Path | None = None):
        self.llm = shared_model(model)
        self.output_dir = None
        if output_dir is not None:
            self.output_dir = Path(output_dir).expanduser().resolve()
            if not self.output_dir.is_dir():
                raise SourceError(f"output folder {str(output_dir)!r} is not a folder")
        if policy is None:
            roots = list(roots) if roots is not None else [Path.cwd()]
            policy = SourcePolicy(roots=tuple(roots), allow_urls=allow_urls, max_bytes=max_bytes)
        elif policy.roots is None:
            raise ValueError("the tools read files a model names: give the source policy media roots")
        self.policy = policy
        self.chat = ChatImageBindLLM(model=self.llm, media_policy=policy, max_tokens=max_tokens,
                                     temperature=temperature)
        self.embeddings = ImageBindEmbeddings(model=self.llm, media_policy=policy)
        self.cache = cache if cache is not None else getattr(self.llm, "visual_cache", None)
        self.collection = getattr(collection, "_collection", collection)  # a langchain Chroma or a chromadb one
        self.store = store if store is not None else EmbeddingStore()

    @property
    def toy_note(self) -> str:
        return " (Toy world model: it knows only a few synthetic concepts.)" if self.llm.card.is_toy else ""

    def embed_file(self, path: str, modality: str | None = None) -> tuple[torch.Tensor, str]:
        data, name = self.policy.read(path)
        return self.embed_bytes(data, name, modality), name

    def embed_bytes(self, data: bytes, name: str, modality: str | None = None) -> torch.Tensor:
        (vector,) = self.embeddings.embed_media([MediaRef(data, name)], modality)
        return torch.tensor(vector)

    def embed_text(self, text: str) -> torch.Tensor:
        return torch.tensor(self.embeddings.embed_query(text))

    def resolve_operands(self, operands: Sequence[Operand]) -> torch.Tensor:
        vectors = []
        for op in operands:
            if op.kind == "handle":
                vectors.append(self.store.get(op.value).vector)
            elif op.kind == "text":
                vectors.append(self.embed_text(op.value))
            else:
                vectors.append(self.embed_file(op.value, op.modality)[0])
        return torch.stack(vectors)

    def resolve_query(self, query: str) -> tuple[torch.Tensor, str]:
        """A handle, a file path, or an embedding expression -> (vector, description)."""
        query = query.strip()
        if query in self.store:
            item = self.store.get(query)
            return item.vector, f"{item.handle} ({item.description})"
        try:
            expression = parse(query)
        except ExpressionError as exc:
            try:
                vector, name = self.embed_file(query)
            except SourceError:
                raise ToolException(f"{query!r} is neither a stored handle, a readable file, nor a valid "
                                    f"expression: {exc}") from None
            return vector, f"media {name}"
        vectors = self.resolve_operands(expression.operands)
        if len(expression.terms) == 1 and expression.terms[0][0].kind == "handle":
            return vectors[0], expression.terms[0][0].value
        return fuse(vectors, expression.coefficients, names=[str(o) for o in expression.operands]), str(expression)

    def search_cache(self, vector: torch.Tensor, k: int) -> list[dict]:
        """The `k` nearest visual-cache items of a (D,) vector: id, inner-product score, metadata."""
        if self.cache is None:
            raise ToolException("no visual cache is loaded (load the model with knn=True, or pass cache= to get_tools)")
        return nearest(self.cache, vector, k)

    def load_file(self, path: str, modality: str | None = None):
        """A media file inside the roots -> `MediaInput`."""
        from ibllm_agent.media import load_media

        source, name = self.policy.read(path)
        return load_media(source, modality, name=name)

    def draw(self, items: list, prompt: str, params) -> tuple[Any, Path]:
        """Draw `items` ([(MediaInput, weight)]) and write the PNG under a new name in `output_dir`; the name
        is ours (the inputs' stems, then a number), so nothing from the caller reaches the path, and an
        existing file is never overwritten. Returns (DrawResult, path)."""
        from ibllm_agent.image_generation import generate_image

        if self.output_dir is None:
            raise ToolException("no output folder is configured (get_tools(..., output_dir=...))")
        result = generate_image(self.llm, items, prompt, params)
        stem = re.sub(r"[^A-Za-z0-9_-]+", "-", "-".join(Path(m.name).stem for m, _ in items))[:40].strip("-")
        for n in range(1, 100_000):
            path = self.output_dir / f"{stem or 'drawing'}-{n:03d}.png"
            try:
                path.touch(exist_ok=False)  # reserves the name atomically: a concurrent call takes the next one
            except FileExistsError:
                continue
            try:
                result.save(path)
            except BaseException:
                path.unlink(missing_ok=True)  # no empty or half-written picture left behind
                raise
            return result, path
        raise ToolException(f"{self.output_dir} holds too many drawings named {stem}-*.png")

    def describe(self, blocks: list, question: str | None) -> str:
        message = HumanMessage(content=[question or self.chat.default_question, *blocks])
        return self.chat.invoke([message]).text


def nearest(cache: Any, vector: torch.Tensor, k: int) -> list[dict]:
    """The `k` nearest items of a visual cache to a (D,) vector: id, inner-product score, metadata (the
    retrieve tool and the server's /v1/ibllm/cache/search)."""
    query = cache.check_query(vector[None].float().numpy(), k)
    result = cache.search(query, min(k, len(cache)))
    return [{"id": i, "score": float(s), "metadata": dict(m)}
            for i, s, m in zip(result.ids[0], result.scores[0], result.metadatas[0])]


def _tool_errors(run):
    """Turn every expected failure into a ToolException the agent reads as an error message."""

    @functools.wraps(run)
    def wrapper(self, *args, **kwargs):
        try:
            return run(self, *args, **kwargs)
        except ToolException:
            raise
        except (ValueError, OSError, TypeError, RuntimeError) as exc:  # SourceError, MediaError, CacheError...
            raise ToolException(f"{type(exc).__name__}: {exc}") from exc

    return wrapper


def _validation_message(exc: Exception) -> str:
    """A pydantic validation error as one line per bad argument."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return f"invalid arguments: {exc}"
    return "invalid arguments: " + "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ())) or 'input'}: {e.get('msg')}" for e in errors())


class PerceptionTool(BaseTool):
    """Base of the perception tools: shared state, readable errors."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    perception: Perception = Field(exclude=True)
    handle_tool_error: bool = True
    handle_validation_error: Any = _validation_message


# --- the tools -------------------------------------------------------------------------------------


class DescribeMediaInput(BaseModel):
    path: str = Field(description=f"The media file ({_MEDIA_NOUNS}), relative to the media folder.")
    question: str | None = Field(default=None, description="What to ask about it; default: describe it.")
    modality: MediaModality | None = Field(default=None, description="Force a modality; default: detected "
                                 "from the content (use 'audio' for the soundtrack of a video).")


class DescribeMediaTool(PerceptionTool):
    name: str = "describe_media"
    description: str = (f"Look at, listen to or feel a media file ({_MEDIA_NOUNS}) and answer a question about it.")
    args_schema: type[BaseModel] = DescribeMediaInput

    @_tool_errors
    def _run(self, path: str, question: str | None = None, modality: str | None = None, run_manager=None) -> str:
        data, name = self.perception.policy.read(path)  # refused here, before any decoding; read once
        block = {"type": "file", "base64": base64.b64encode(data).decode(),
                 "mime_type": "application/octet-stream", "extras": {"filename": name}}
        if modality:
            block["extras"]["modality"] = modality
        answer = self.perception.describe([block], question)
        return f"[{name}] {answer}"


class EmbedMediaInput(BaseModel):
    path: str | None = Field(default=None, description="A media file to embed (relative to the media folder).")
    text: str | None = Field(default=None, description="A text to embed instead of a file.")
    modality: MediaModality | None = Field(default=None, description="Force a modality for the file.")
    name: str | None = Field(default=None, description="Handle to store it under; default emb_N.")


class EmbedMediaTool(PerceptionTool):
    name: str = "embed_media"
    description: str = ("Compute the ImageBind embedding of a media file or a text and keep it under a handle "
                        "(e.g. emb_1) for embedding_arithmetic, describe_embedding, retrieve_from_cache or "
                        "classify_media.")
    args_schema: type[BaseModel] = EmbedMediaInput
    response_format: str = "content_and_artifact"

    @_tool_errors
    def _run(self, path: str | None = None, text: str | None = None, modality: str | None = None,
             name: str | None = None, run_manager=None) -> tuple[str, list[float]]:
        if (path is None) == (text is None):
            raise ToolException("give exactly one of 'path' or 'text'")
        if path is not None:
            vector, shown = self.perception.embed_file(path, modality)
            what = f"{modality or 'media'} {shown}"
        else:
            vector, what = self.perception.embed_text(text), f"text {text!r}"
        item = self.perception.store.put(vector, what, name)
        return (f"{item.handle}: embedding of {what} ({vector.numel()}-d, norm {float(vector.norm()):.3f}). "
                f"Use {item.handle} in expressions or other tools.", vector.tolist())


class ArithmeticInput(BaseModel):
    expression: str = Field(description='An embedding expression, e.g. 0.6*audio:rain.wav + image:dog.png - '
                            '0.3*text:"daytime", or emb_1 - emb_2. Operands: handles, or '
                            f'{"|".join(EXPRESSION_MODALITIES)} followed by ":" and a path or a "quoted" text; '
                            'numbers scale; + and - combine.')
    name: str | None = Field(default=None, description="Handle to store the result under; default emb_N.")


class EmbeddingArithmeticTool(PerceptionTool):
    name: str = "embedding_arithmetic"
    description: str = ("Combine embeddings linearly (ImageBind puts all modalities in one space): evaluates an "
                        "expression over stored handles, media files and texts, stores the result under a handle.")
    args_schema: type[BaseModel] = ArithmeticInput
    response_format: str = "content_and_artifact"

    @_tool_errors
    def _run(self, expression: str, name: str | None = None, run_manager=None) -> tuple[str, list[float]]:
        try:
            parsed = parse(expression)
        except ExpressionError as exc:
            raise ToolException(f"invalid expression: {exc}") from None
        vector = fuse(self.perception.resolve_operands(parsed.operands), parsed.coefficients,
                      names=[str(o) for o in parsed.operands])
        item = self.perception.store.put(vector, str(parsed), name)
        return (f"{item.handle} = {parsed} ({vector.numel()}-d, norm {float(vector.norm()):.3f}). "
                f"Describe it with describe_embedding or search with retrieve_from_cache.", vector.tolist())


class DescribeEmbeddingInput(BaseModel):
    handle: str = Field(description="A stored handle (emb_N) or an embedding expression.")
    question: str | None = Field(default=None, description="What to ask about it; default: describe it.")


class DescribeEmbeddingTool(PerceptionTool):
    name: str = "describe_embedding"
    description: str = ("Let ImageBind-LLM describe a stored embedding (e.g. the result of embedding_arithmetic): "
                        "the model answers as if it perceived that mixture.")
    args_schema: type[BaseModel] = DescribeEmbeddingInput

    @_tool_errors
    def _run(self, handle: str, question: str | None = None, run_manager=None) -> str:
        vector, what = self.perception.resolve_query(handle)
        answer = self.perception.describe([embedding_block(vector, name=what)], question)
        return f"[{what}] {answer}"


class RetrieveInput(BaseModel):
    query: str = Field(description="A stored handle, a media file, or an embedding expression.")
    k: int = Field(default=5, ge=1, le=100, description="How many neighbours.")


class RetrieveFromCacheTool(PerceptionTool):
    name: str = "retrieve_from_cache"
    description: str = ("Find the nearest items of the visual cache (the image features the model leans on) to an "
                        "embedding; returns ids, similarity scores and metadata such as captions.")
    args_schema: type[BaseModel] = RetrieveInput
    response_format: str = "content_and_artifact"

    @_tool_errors
    def _run(self, query: str, k: int = 5, run_manager=None) -> tuple[str, list[dict]]:
        vector, what = self.perception.resolve_query(query)
        hits = self.perception.search_cache(vector, k)
        return _format_hits(f"nearest cache items to {what}", hits), hits


class SearchCollectionInput(BaseModel):
    query: str = Field(description="A stored handle, a media file, an embedding expression, or text:\"...\".")
    k: int = Field(default=5, ge=1, le=100, description="How many results.")


class SearchCollectionTool(PerceptionTool):
    name: str = "search_collection"
    description: str = ("Cross-modal search in the Chroma collection of ImageBind embeddings: find stored images, "
                        "sounds, videos or shapes closest to an embedding, a file or a text.")
    args_schema: type[BaseModel] = SearchCollectionInput
    response_format: str = "content_and_artifact"

    @_tool_errors
    def _run(self, query: str, k: int = 5, run_manager=None) -> tuple[str, list[dict]]:
        vector, what = self.perception.resolve_query(query)
        res = self.perception.collection.query(query_embeddings=[vector.numpy()], n_results=k,
                                               include=["distances", "metadatas", "documents", "uris"])
        hits = []
        for j, item_id in enumerate(res["ids"][0]):
            meta = dict((res.get("metadatas") or [[None]])[0][j] or {})
            uri = (res.get("uris") or [[None]])[0][j]
            doc = (res.get("documents") or [[None]])[0][j]
            hits.append({"id": item_id, "distance": float(res["distances"][0][j]), "metadata": meta,
                         "uri": uri, "document": doc if uri is None else None})
        return _format_hits(f"closest collection items to {what}", hits), hits


class ClassifyInput(BaseModel):
    target: str = Field(description="A media file, a stored handle or an embedding expression.")
    labels: list[str] = Field(min_length=2, max_length=100, description="Candidate labels (texts).")


class ClassifyMediaTool(PerceptionTool):
    name: str = "classify_media"
    description: str = ("Zero-shot classification: which of the candidate labels best matches a media file or an "
                        "embedding (ImageBind similarity between the input and each label's text embedding).")
    args_schema: type[BaseModel] = ClassifyInput
    response_format: str = "content_and_artifact"

    @_tool_errors
    def _run(self, target: str, labels: list[str], run_manager=None) -> tuple[str, dict[str, float]]:
        vector, what = self.perception.resolve_query(target)
        texts = torch.tensor(self.perception.embeddings.embed_documents(list(labels)))  # (L, D) unit
        sims = F.normalize(texts, dim=-1) @ F.normalize(vector, dim=0)  # (L,)
        probs = torch.softmax(CLASSIFY_SCALE * sims, dim=0)
        ranked = sorted(zip(labels, probs.tolist()), key=lambda x: -x[1])
        lines = ", ".join(f"{label} {p:.1%}" for label, p in ranked)
        return f"{what}: {lines}", dict(ranked)


class GenerateImageInput(BaseModel):
    media: list[str] = Field(min_length=1, max_length=8, description=f"Media files to draw from ({_MEDIA_NOUNS}), "
                             "relative to the media folder; several are mixed.")
    weights: list[float] | None = Field(default=None, description="One mixing weight per file (default 1 each).")
    prompt: str = Field(default="", max_length=1000, description='Text guiding the picture, e.g. "a photo".')
    seed: int | None = Field(default=None, ge=0, description="Make the picture reproducible.")
    steps: int | None = Field(default=None, ge=1, le=500, description="Denoising steps (Stable unCLIP).")


class GenerateImageTool(PerceptionTool):
    name: str = "generate_image"
    description: str = ("Draw a picture of what media files show or sound like (ImageBind-LLM's image output: the "
                        "inputs' ImageBind embedding conditions an image generator). Writes a PNG into the output "
                        "folder and returns its name.")
    args_schema: type[BaseModel] = GenerateImageInput
    response_format: str = "content_and_artifact"
    artifact: Literal["path", "base64"] = "path"
    """What the artifact is: the PNG's path, or a LangChain image content block (base64)."""

    @_tool_errors
    def _run(self, media: list[str], weights: list[float] | None = None, prompt: str = "", seed: int | None = None,
             steps: int | None = None, run_manager=None) -> tuple[str, Any]:
        from ibllm_agent.params import DrawParams

        if weights is not None and len(weights) != len(media):
            raise ToolException(f"give one weight per file: {len(media)} files, {len(weights)} weights")
        params = DrawParams(seed=seed, **({"steps": steps} if steps is not None else {}))
        items = [self.perception.load_file(path) for path in media]
        result, path = self.perception.draw(list(zip(items, weights or [1.0] * len(items))), prompt, params)
        shown = path.name
        note = f" ({'; '.join(result.notes)})" if result.notes else ""
        text = (f"Drew {shown} ({result.image.width}x{result.image.height}) from {', '.join(i.name for i in items)}"
                f"{' with the prompt ' + repr(prompt) if prompt else ''}{note}.{self.perception.toy_note}")
        return text, (str(path) if self.artifact == "path" else result.content_block())


def _format_hits(title: str, hits: list[dict]) -> str:
    if not hits:
        return f"{title}: nothing found"
    lines = []
    for rank, hit in enumerate(hits, 1):
        score = f"score {hit['score']:.3f}" if "score" in hit else f"distance {hit['distance']:.3f}"
        meta = hit.get("metadata") or {}
        extra = meta.get("caption") or meta.get("concept") or meta.get("source") or hit.get("uri") or ""
        lines.append(f"{rank}. {hit['id']} ({score}){' ' + str(extra) if extra else ''}")
    return f"{title}:\n" + "\n".join(lines)


TOOL_CLASSES: tuple[type[PerceptionTool], ...] = (
    DescribeMediaTool, EmbedMediaTool, EmbeddingArithmeticTool, DescribeEmbeddingTool, RetrieveFromCacheTool,
    SearchCollectionTool, ClassifyMediaTool, GenerateImageTool,
)


def get_tools(model: Any = "toy", roots: Sequence[str | Path] | None = None, *, allow_urls: bool = False,
              max_bytes: int = DEFAULT_MAX_BYTES, policy: SourcePolicy | None = None, cache: Any = None,
              collection: Any = None, store: EmbeddingStore | None = None, max_tokens: int = 128,
              output_dir: str | Path | None = None, image_artifact: Literal["path", "base64"] = "path"
              ) -> list[BaseTool]:
    """The perception tools over one model, confined to `roots` (default: the current folder); `policy`, a
    ready `SourcePolicy` with roots, replaces roots, allow_urls and max_bytes.

    model: a name ("toy") or a loaded `ImageBindLLM` (shared with your chat model and embeddings).
    cache: a `VisualCache` for retrieve_from_cache (default: the model's, when loaded with knn=True);
    the tool is left out when there is none. collection: a chromadb collection (or langchain Chroma)
    of ImageBind embeddings enables search_collection. store: share handles between tool lists.
    output_dir: an existing folder enables generate_image, which writes its PNGs there and nowhere else
    (image_artifact: the artifact is the PNG's "path" or a "base64" image block).
    """
    perception = Perception(model, roots, allow_urls=allow_urls, max_bytes=max_bytes, policy=policy, cache=cache,
                            collection=collection, store=store, max_tokens=max_tokens, output_dir=output_dir)
    where = f" Files: {perception.policy.describe()}."
    tools = []
    for cls in TOOL_CLASSES:
        if cls is RetrieveFromCacheTool and perception.cache is None:
            continue
        if cls is SearchCollectionTool and perception.collection is None:
            continue
        if cls is GenerateImageTool and perception.output_dir is None:
            continue
        default = cls.model_fields["description"].default
        extra = {"artifact": image_artifact} if cls is GenerateImageTool else {}
        tools.append(cls(perception=perception, description=default + where + perception.toy_note, **extra))
    return tools
