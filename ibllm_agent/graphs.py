"""Multi-step perception chains with LangGraph.

`build_perception_graph(model)` is a deterministic pipeline that needs no tool-calling LLM:

    START -> route -> encode -> combine -> retrieve -> answer -> END
               |                              ^   (no media: straight to answer;
               +------------------------------+    no cache or retrieve=False: retrieve is skipped)

- route: detect each attached file's modality from its content (refusing paths outside the roots);
- encode: ImageBind embedding per input, stored under `input_1`, `input_2`, ...;
- combine: the `expression` over those handles (e.g. "input_1 - 0.5*input_2 + text:'night'"), or
  else the upstream weighted fusion of all inputs;
- retrieve: nearest visual-cache items of the combined feature (and the answer then uses the cache);
- answer: `ChatImageBindLLM` on the question conditioned on the combined feature (tokens stream
  with `stream_mode="messages"`, node results with `stream_mode="updates"`).

    graph = build_perception_graph("toy", roots=["media"])
    for update in graph.stream({"question": "What is this?", "media": ["rain.wav"]}, stream_mode="updates"):
        print(update)

`create_perception_agent(llm)` builds a `langchain.agents.create_agent` agent over the perception
tools for any tool-calling chat model the user brings.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, TypedDict

import torch
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import END, START, StateGraph, add_messages

from ibllm_agent.arithmetic import combine, parse
from ibllm_agent.content_blocks import embedding_block
from ibllm_agent.tools import EmbeddingStore, Perception, get_tools

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


class PerceptionState(TypedDict, total=False):
    """State of the perception graph; the caller sets the first five keys."""

    question: str
    media: list[str | MediaSpec]
    expression: str | None
    retrieve: bool
    k: int
    inputs: list[dict]  # route: [{"path", "name", "modality", "weight"}]
    handles: list[str]  # encode: store handles of the inputs, in order
    feature: list[float] | None  # combine: the conditioning feature
    composition: str  # combine: what the feature is
    neighbors: list[dict]  # retrieve: cache items
    answer: str
    messages: Annotated[list, add_messages]
    steps: Annotated[list[str], operator.add]


class _Nodes:
    """The graph's nodes, sharing one `Perception` (model, roots, store)."""

    def __init__(self, perception: Perception):
        self.p = perception

    def route(self, state: PerceptionState) -> dict:
        from ibllm_agent.media import detect_format

        inputs = []
        for spec in state.get("media") or []:
            spec = {"path": spec} if isinstance(spec, str) else dict(spec)
            path = self.p.policy.resolve(spec["path"])
            modality = spec.get("modality") or detect_format(path).modality
            inputs.append({"path": str(path), "name": path.name, "modality": modality,
                           "weight": float(spec.get("weight", 1.0))})
        return {"inputs": inputs, "steps": ["route"]}

    def encode(self, state: PerceptionState) -> dict:
        handles = []
        for i, item in enumerate(state["inputs"], 1):
            vector, name = self.p.embed_file(item["path"], item["modality"])
            handles.append(self.p.store.put(vector, f"{item['modality']} {name}", f"input_{i}").handle)
        return {"handles": handles, "steps": ["encode"]}

    def combine(self, state: PerceptionState) -> dict:
        expression = state.get("expression")
        if expression:
            parsed = parse(expression)
            feature = combine(self.p.resolve_operands(parsed.operands), parsed.coefficients)
            return {"feature": feature.tolist(), "composition": str(parsed), "steps": ["combine"]}
        vectors = torch.stack([self.p.store.get(h).vector for h in state["handles"]])
        weights = [item["weight"] for item in state["inputs"]]
        feature = combine(vectors, weights)
        parts = " + ".join(f"{w:g}*{h}" for w, h in zip(weights, state["handles"]))
        return {"feature": feature.tolist(), "composition": parts, "steps": ["combine"]}

    def retrieve(self, state: PerceptionState) -> dict:
        neighbors = self.p.search_cache(torch.tensor(state["feature"]), int(state.get("k", 5)))
        return {"neighbors": neighbors, "steps": ["retrieve"]}

    def answer(self, state: PerceptionState) -> dict:
        question = state.get("question") or self.p.chat.default_question
        blocks = [embedding_block(state["feature"], name=state.get("composition", "feature"))] \
            if state.get("feature") is not None else []
        # the model blends its own cache only; a cache given to the graph alone is for retrieval
        use_cache = bool(state.get("neighbors")) if getattr(self.p.llm, "cache", None) is not None else None
        reply = self.p.chat.invoke([HumanMessage(content=[question, *blocks])], visual_cache=use_cache)
        messages = [HumanMessage(question), AIMessage(reply.text, response_metadata=reply.response_metadata)]
        return {"answer": reply.text, "messages": messages, "steps": ["answer"]}

    # --- routing ---

    def after_route(self, state: PerceptionState) -> str:
        return "encode" if state["inputs"] else "answer"

    def after_combine(self, state: PerceptionState) -> str:
        wants = state.get("retrieve", True)
        return "retrieve" if wants and self.p.cache is not None else "answer"


def build_perception_graph(model: Any = "toy", roots: Sequence[str | Path] | None = None, *,
                           cache: Any = None, checkpointer: Any = None, max_tokens: int = 128, **perception_kwargs):
    """The compiled deterministic graph (see the module docstring). Input: {"question", "media",
    "expression"?, "retrieve"?, "k"?}; output adds "inputs", "handles", "feature", "composition",
    "neighbors", "answer", "messages" and "steps" (the nodes visited, in order)."""
    nodes = _Nodes(Perception(model, roots, cache=cache, max_tokens=max_tokens, **perception_kwargs))
    graph = StateGraph(PerceptionState)
    for name in ("route", "encode", "combine", "retrieve", "answer"):
        graph.add_node(name, getattr(nodes, name))
    graph.add_edge(START, "route")
    graph.add_conditional_edges("route", nodes.after_route, {"encode": "encode", "answer": "answer"})
    graph.add_edge("encode", "combine")
    graph.add_conditional_edges("combine", nodes.after_combine, {"retrieve": "retrieve", "answer": "answer"})
    graph.add_edge("retrieve", "answer")
    graph.add_edge("answer", END)
    return graph.compile(checkpointer=checkpointer)


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
