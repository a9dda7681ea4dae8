"""Multi-step perception chains with LangGraph.

`build_perception_graph(model)` is a deterministic pipeline that needs no tool-calling LLM:

    START -> route -> encode -> combine -> retrieve -> answer -> [draw] -> END
               |                              ^   (no media and no expression: straight to answer;
               +------------------------------+    retrieve=False, or no cache and retrieve unset: skipped;
                                                   draw only when the input asks for it)

- route: check the input (unknown keys are an error that lists the accepted ones), then detect each
  attached file's modality from its content (refusing paths outside the roots);
- encode: ImageBind embedding per input, stored under `input_1`, `input_2`, ...;
- combine: the `expression` over those handles and any files or texts it names itself (e.g.
  "input_1 - 0.5*input_2 + text:'night'" or "0.7*image:dog.png + 0.3*audio:rain.wav", files read
  through the same media folders), or else the fusion of all inputs with their weights;
- retrieve: nearest visual-cache items of the combined feature (and the answer then uses the cache);
  `retrieve=True` without a cache is an error, not a skipped step;
- answer: `ChatImageBindLLM` on the question conditioned on the combined feature (tokens stream
  with `stream_mode="messages"`, node results with `stream_mode="updates"`);
- draw (when the input has `"draw": True` or `{"prompt": ..., "seed": ..., "steps": ...}`): a picture of the
  attached media (`ibllm_agent.image_generation`, the reference's image output), written as a PNG into the
  graph's `output_dir`; its path is `image`. A graph built without `output_dir` refuses such a request.

    graph = build_perception_graph("toy", roots=["media"])
    for update in graph.stream({"question": "What is this?", "media": ["rain.wav"]}, stream_mode="updates"):
        print(update)

Every run's `steps` list what happened, skipped steps included ("retrieve skipped: no visual cache").

`create_perception_agent(llm)` builds a `langchain.agents.create_agent` agent over the perception
tools for any tool-calling chat model the user brings.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, TypedDict

import torch
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import END, START, StateGraph, add_messages
from langgraph.graph.state import CompiledStateGraph

from ibllm_agent import modalities
from ibllm_agent.arithmetic import parse
from ibllm_agent.content_blocks import embedding_block
from ibllm_agent.fusion import fuse
from ibllm_agent.perception_tools import EmbeddingStore, Perception, get_tools
from ibllm_agent.sources import SourceError

DEFAULT_AGENT_PROMPT = (
    "You can perceive media files through tools backed by ImageBind-LLM: describe_media answers questions about "
    "an image, sound, video or 3D point cloud; embed_media stores an embedding under a handle; "
    "embedding_arithmetic mixes handles, files and texts (e.g. 0.6*emb_1 + audio:rain.wav); describe_embedding "
    "describes a stored embedding; retrieve_from_cache and search_collection find similar items; "
    "classify_media picks the best label. When a tool returns an error, read it and correct your call."
)


class MediaSpec(TypedDict, total=False):
    """One attached input: a path (inside the roots), an optional forced modality and fusion weight."""

    path: str
    modality: str
    weight: float


class GraphInputError(ValueError):
    """An input the perception graph cannot use as given (unknown key, wrong type)."""


INPUT_KEYS = {"question": (str,), "media": (list, tuple), "expression": (str, type(None)),
              "retrieve": (bool, type(None)), "k": (int,), "draw": (bool, dict, type(None))}
"""What the caller may set, and the types each takes."""
MEDIA_SPEC_KEYS = set(MediaSpec.__annotations__)
DRAW_KEYS = {"prompt", "seed", "steps", "guidance", "noise_level"}
"""What `"draw": {...}` may set (the rest of `DrawParams` keeps its defaults)."""


def check_input(data: Any) -> None:
    """Refuse what LangGraph would silently drop: unknown keys, and values of the wrong type."""
    if not isinstance(data, dict):
        raise GraphInputError(f"the perception graph takes a dict with keys {sorted(INPUT_KEYS)}, got "
                              f"{type(data).__name__}")
    unknown = sorted(set(data) - set(INPUT_KEYS))
    if unknown:
        raise GraphInputError(f"unknown input keys {unknown}; the perception graph accepts {sorted(INPUT_KEYS)}")
    for key, value in data.items():
        if not isinstance(value, INPUT_KEYS[key]) or (key == "k" and isinstance(value, bool)):
            raise GraphInputError(f"input {key!r} must be {' or '.join(t.__name__ for t in INPUT_KEYS[key])}, "
                                  f"got {type(value).__name__}")
    if "k" in data and not 1 <= data["k"] <= 100:
        raise GraphInputError(f"input 'k' must be between 1 and 100, got {data['k']}")
    if isinstance(data.get("draw"), dict):
        extra = sorted(set(data["draw"]) - DRAW_KEYS)
        if extra:
            raise GraphInputError(f"input 'draw' may have {sorted(DRAW_KEYS)}; got {extra}")
    for i, spec in enumerate(data.get("media") or []):
        if isinstance(spec, dict):
            extra = sorted(set(spec) - MEDIA_SPEC_KEYS)
            if extra or "path" not in spec:
                raise GraphInputError(f"media[{i}] needs a 'path' and may have {sorted(MEDIA_SPEC_KEYS)}; got "
                                      f"{sorted(spec)}")
        elif not isinstance(spec, str):
            raise GraphInputError(f"media[{i}] must be a path or a dict with 'path', got {type(spec).__name__}")


class PerceptionGraph(CompiledStateGraph):
    """The compiled graph, checking its input first: LangGraph drops unknown input keys without a word,
    and a misspelt key ("files" for "media") must not turn a question about a file into one without it."""

    def stream(self, input, *args, **kwargs):  # noqa: A002 (LangGraph's name); invoke and batch call it
        if isinstance(input, dict):
            check_input(input)
        return super().stream(input, *args, **kwargs)

    def astream(self, input, *args, **kwargs):  # noqa: A002 (LangGraph's name); ainvoke calls it
        if isinstance(input, dict):
            check_input(input)
        return super().astream(input, *args, **kwargs)


class PerceptionState(TypedDict, total=False):
    """State of the perception graph; the caller sets the first five keys (`INPUT_KEYS`)."""

    question: str
    media: list[str | MediaSpec]
    expression: str | None
    retrieve: bool | None  # None (default): when a cache exists
    k: int
    inputs: list[dict]  # route: [{"path", "name", "modality", "weight", "sha256"}]
    handles: list[str]  # encode: store handles of the inputs, in order
    feature: list[float] | None  # combine: the conditioning feature
    composition: str  # combine: what the feature is
    neighbors: list[dict]  # retrieve: cache items
    answer: str
    draw: bool | dict | None  # the caller: draw a picture of the media too
    image: str  # draw: the PNG written into the output folder
    messages: Annotated[list, add_messages]
    steps: Annotated[list[str], operator.add]


class _Nodes:
    """The graph's nodes, sharing one `Perception` (model, roots, store)."""

    def __init__(self, perception: Perception):
        self.p = perception

    def route(self, state: PerceptionState) -> dict:
        from ibllm_agent.media import detect_format

        if state.get("draw") and self.p.output_dir is None:  # refused before anything is computed
            raise GraphInputError("draw was asked for, but the graph has no output folder "
                                  "(build_perception_graph(..., output_dir=...))")
        if state.get("draw") and not state.get("media"):
            raise GraphInputError("draw needs media to draw from (an expression alone has no pictures to mix)")
        inputs = []
        for spec in state.get("media") or []:
            spec = {"path": spec} if isinstance(spec, str) else dict(spec)
            data, name = self.p.policy.read(spec["path"])
            modality = modalities.canonical(spec.get("modality")) or detect_format(data, name=name).modality
            if modality not in modalities.MEDIA:
                raise GraphInputError(f"{name} is {modality}, not a medium (media: {', '.join(modalities.MEDIA)})")
            inputs.append({"path": spec["path"], "name": name, "modality": modality,
                           "weight": float(spec.get("weight", 1.0)), "sha256": hashlib.sha256(data).hexdigest()})
        return {"inputs": inputs, "steps": ["route"]}

    def encode(self, state: PerceptionState) -> dict:
        handles = []
        for i, item in enumerate(state["inputs"], 1):
            # read again (the state holds no media bytes: checkpointers would store them), and encode only
            # what route looked at
            data, name = self.p.policy.read(item["path"])
            if hashlib.sha256(data).hexdigest() != item["sha256"]:
                raise SourceError(f"{item['path']!r} changed between the route and encode steps; run again")
            vector = self.p.embed_bytes(data, name, item["modality"])
            handles.append(self.p.store.put(vector, f"{item['modality']} {name}", f"input_{i}").handle)
        return {"handles": handles, "steps": ["encode"]}

    def combine(self, state: PerceptionState) -> dict:
        expression = state.get("expression")
        if expression:
            parsed = parse(expression)
            feature = fuse(self.p.resolve_operands(parsed.operands), parsed.coefficients,
                           names=[str(o) for o in parsed.operands])
            composition = str(parsed)
        else:
            vectors = torch.stack([self.p.store.get(h).vector for h in state["handles"]])
            weights = [item["weight"] for item in state["inputs"]]
            feature = fuse(vectors, weights, names=state["handles"])
            composition = " + ".join(f"{w:g}*{h}" for w, h in zip(weights, state["handles"]))
        steps = ["combine"]
        if self.after_combine(state) == "answer":
            why = "retrieve=False" if state.get("retrieve") is False else "no visual cache"
            steps.append(f"retrieve skipped: {why}")
        return {"feature": feature.tolist(), "composition": composition, "steps": steps}

    def retrieve(self, state: PerceptionState) -> dict:
        neighbors = self.p.search_cache(torch.tensor(state["feature"]), int(state.get("k", 5)))
        return {"neighbors": neighbors, "steps": ["retrieve"]}

    def answer(self, state: PerceptionState) -> dict:
        question = state.get("question") or self.p.chat.default_question
        blocks = [embedding_block(state["feature"], name=state.get("composition", "feature"))] \
            if state.get("feature") is not None else []
        # the model blends its own cache only; a cache given to the graph alone is for retrieval
        use_cache = bool(state.get("neighbors")) if self.p.llm.visual_cache is not None else None
        reply = self.p.chat.invoke([HumanMessage(content=[question, *blocks])], visual_cache=use_cache)
        messages = [HumanMessage(question), AIMessage(reply.text, response_metadata=reply.response_metadata)]
        return {"answer": reply.text, "messages": messages, "steps": ["answer"]}

    def draw(self, state: PerceptionState) -> dict:
        from ibllm_agent.params import DrawParams

        request = state.get("draw")
        settings = dict(request) if isinstance(request, dict) else {}
        prompt = settings.pop("prompt", "")
        items = [(self.p.load_file(item["path"], item["modality"]), item["weight"]) for item in state["inputs"]]
        result, path = self.p.draw(items, prompt, DrawParams(**settings))
        return {"image": str(path), "steps": [f"draw ({result.generator})"]}

    # --- routing ---

    def after_answer(self, state: PerceptionState) -> str:
        return "draw" if state.get("draw") else END

    def after_route(self, state: PerceptionState) -> str:
        return "encode" if state["inputs"] or state.get("expression") else "answer"

    def after_combine(self, state: PerceptionState) -> str:
        wants = state.get("retrieve")
        if wants and self.p.cache is None:
            raise GraphInputError("retrieve=True but there is no visual cache (load the model with knn=True or "
                                  "pass cache= to build_perception_graph)")
        return "retrieve" if (wants is None or wants) and self.p.cache is not None else "answer"


def build_perception_graph(model: Any = "toy", roots: Sequence[str | Path] | None = None, *,
                           cache: Any = None, checkpointer: Any = None, max_tokens: int = 128,
                           output_dir: str | Path | None = None, **perception_kwargs):
    """The compiled deterministic graph (see the module docstring). Input: {"question", "media",
    "expression"?, "retrieve"?, "k"?, "draw"?}; output adds "inputs", "handles", "feature", "composition",
    "neighbors", "answer", "messages", "image" (when drawn) and "steps" (the nodes visited, in order).
    output_dir: the folder the draw node writes its PNGs into (drawing is refused without one)."""
    nodes = _Nodes(Perception(model, roots, cache=cache, max_tokens=max_tokens, output_dir=output_dir,
                              **perception_kwargs))
    graph = StateGraph(PerceptionState)
    for name in ("route", "encode", "combine", "retrieve", "answer", "draw"):
        graph.add_node(name, getattr(nodes, name))
    graph.add_edge(START, "route")
    graph.add_conditional_edges("route", nodes.after_route, {"encode": "encode", "answer": "answer"})
    graph.add_edge("encode", "combine")
    graph.add_conditional_edges("combine", nodes.after_combine, {"retrieve": "retrieve", "answer": "answer"})
    graph.add_edge("retrieve", "answer")
    graph.add_conditional_edges("answer", nodes.after_answer, {"draw": "draw", END: END})
    graph.add_edge("draw", END)
    compiled = graph.compile(checkpointer=checkpointer)
    compiled.__class__ = PerceptionGraph  # the same object, checking its input (see PerceptionGraph)
    return compiled


def create_perception_agent(llm: Any, model: Any = "toy", roots: Sequence[str | Path] | None = None, *,
                            tools: list | None = None, system_prompt: str | None = DEFAULT_AGENT_PROMPT,
                            store: EmbeddingStore | None = None, catch_unexpected_errors: bool = True,
                            **agent_kwargs):
    """A `create_agent` agent: `llm` (any tool-calling chat model) drives the perception tools.

    tools: defaults to `get_tools(model, roots, store=store)`. Our tools report their own failures
    as error messages; `catch_unexpected_errors` also turns any other tool exception into an error
    message (ToolErrorMiddleware) so one bad call never ends the run.
    """
    from langchain.agents import create_agent

    tools = tools if tools is not None else get_tools(model, roots, store=store)
    middleware = list(agent_kwargs.pop("middleware", ()))
    if catch_unexpected_errors:
        from langchain.agents.middleware import ToolErrorMiddleware

        middleware.append(ToolErrorMiddleware(on_error=lambda exc, request: f"{type(exc).__name__}: {exc}"))
    return create_agent(llm, tools, system_prompt=system_prompt, middleware=middleware, **agent_kwargs)
