"""Write the four notebooks in notebooks/ from the cells below (outputs stripped, ids stable).

    python tools/build_notebooks.py            # rewrite notebooks/*.ipynb
    python tools/build_notebooks.py --check    # exit 1 if a committed notebook differs from its cells

Keeping the cells here, as plain strings, makes them easy to review and edit in a diff; the test
suite executes the written notebooks top to bottom on the toy model (tests/notebooks/).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "notebooks"

TOY_NOTE = ("> **Toy world.** Everything here runs on the small model embedded in the package, trained on a "
            "synthetic world of 14 concepts (rain, dog, cat, bird, bee, bell, drum, car, clock, fire, ocean, "
            "phone, piano, ball). It knows nothing else; the official 7B weights load the same way (see "
            "`01_quickstart`).")


def _notebook(name: str, cells: list[tuple[str, str]]):
    nb = new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    for i, (kind, source) in enumerate(cells):
        cell = new_markdown_cell(source.strip()) if kind == "md" else new_code_cell(source.strip())
        cell.id = f"{name}-{i:02d}"  # stable ids: a rebuild changes nothing unless a cell does
        nb.cells.append(cell)
    return nb


def md(source: str) -> tuple[str, str]:
    return ("md", source)


def code(source: str) -> tuple[str, str]:
    return ("code", source)


def quickstart():
    return _notebook("quickstart", [
        md(f"""
# Quickstart: ask ImageBind-LLM about a picture, a sound, a clip, a 3D shape, a depth map, a thermal image and an IMU trace

ImageBind-LLM ([arXiv 2309.03905](https://arxiv.org/abs/2309.03905)) tunes LLaMA on **images only**, through
ImageBind's joint embedding space; because sounds, videos and point clouds live in the same space, the same
model then answers about them too. This notebook loads the model, renders one input of each kind, and asks
about each of them, first with the upstream API, then through LangChain.

{TOY_NOTE}
"""),
        code("""
import ibllm_agent as llama

model = llama.load("toy", knn=True)  # the embedded toy world, with its visual cache
model
"""),
        md("""
## Some inputs

The toy world renders every concept procedurally, with random variation. Seed 1000 is a part of the world
the model never saw in training.
"""),
        code("""
from pathlib import Path

from ibllm_agent.toy import ToyWorld

world = ToyWorld(seed=1000)
media = Path("media")
files = {
    "image": world.write("dog", "image", 0, media).path,
    "audio": world.write("drum", "audio", 0, media).path,
    "video": world.write("bird", "video", 0, media).path,
    "point": world.write("car", "point", 0, media).path,
}
files
"""),
        code("""
import matplotlib.pyplot as plt
from IPython.display import Audio, display
from PIL import Image

from ibllm_agent.media import load_media

fig = plt.figure(figsize=(11, 3.2))
ax = fig.add_subplot(1, 3, 1)
ax.imshow(Image.open(files["image"]))
ax.set_title("image (a dog)")
ax = fig.add_subplot(1, 3, 2)
ax.imshow(world.video_frames("bird", 0)[10])
ax.set_title("a frame of the clip (a bird)")
ax = fig.add_subplot(1, 3, 3, projection="3d")
points = load_media(files["point"]).tensor.numpy()  # [8192, 3], as ImageBind (Point-Bind) sees it
ax.scatter(*points[::4].T, s=1, c=points[::4, 2], cmap="viridis")
ax.set_title("point cloud (a car)")
for ax in fig.axes:
    ax.set_axis_off()
plt.show()
display(Audio(files["audio"]))  # a drum
"""),
        md("""
## Ask, the upstream way

Scripts written for the upstream `llama` package run unchanged with `import ibllm_agent as llama` and
`import ibllm_agent.data as data`: inputs are `{modality: [tensor, weight]}`, prompts use the Alpaca template.
`temperature=0` is greedy decoding.
"""),
        code("""
import ibllm_agent.data as data

inputs = {"Audio": [data.load_and_transform_audio_data([files["audio"]], "cpu"), 1.0]}
model.generate(inputs, [llama.format_prompt("What do you hear?")], max_gen_len=32, temperature=0)
"""),
        md("""
## Ask through LangChain

`ChatImageBindLLM` is a LangChain chat model: media travel as standard content blocks (local files, base64,
or data URLs); a point cloud is a `file` block with `extras={"modality": "point"}` (or a point-cloud MIME type).
It shares the model loaded above.
"""),
        code("""
from langchain_core.messages import HumanMessage

from ibllm_agent import ChatImageBindLLM

chat = ChatImageBindLLM(model=model, temperature=0, max_tokens=48)
questions = {"image": "What is in this picture?", "audio": "What do you hear?",
             "video": "What do you see?", "point": "What is this 3D shape?"}
for kind, path in files.items():
    block = {"type": kind, "url": str(path)}
    if kind == "point":
        block = {"type": "file", "url": str(path), "extras": {"modality": "point"}}
    reply = chat.invoke([HumanMessage([{"type": "text", "text": questions[kind]}, block])])
    print(f"{kind:5}  {questions[kind]:28} -> {reply.text}")
"""),
        md("""
## ImageBind's other senses: a depth map, a thermal image, an IMU trace

ImageBind also has trunks for depth, thermal and IMU data, in the same space; the LLM never saw any of them.
A depth map or a thermal image is an image file (here a 16-bit PNG of millimetres, a radiometric 16-bit PNG),
so the block says which it is (`mime_type="image/x-depth"`, or `extras={"modality": "thermal"}`): by its
content alone a PNG is a picture. A CSV whose header names accelerometer and gyroscope axes is an IMU
recording by its content. The plots show what the trunks take: Omnivore's normalised disparity, the thermal
frame stretched to [0, 1], and 5 s of accelerometer and gyroscope at 400 Hz.
"""),
        code("""
senses = {"depth": world.write("cat", "depth", 0, media).path,
          "thermal": world.write("fire", "thermal", 0, media).path,
          "imu": world.write("ball", "imu", 0, media).path}
fig, axes = plt.subplots(1, 3, figsize=(11, 3))
axes[0].imshow(load_media(senses["depth"], "depth").tensor[0], cmap="turbo")
axes[0].set_title("depth map (a cat): near is red")
axes[1].imshow(load_media(senses["thermal"], "thermal").tensor[0], cmap="inferno")
axes[1].set_title("thermal image (a fire)")
imu = load_media(senses["imu"]).tensor  # [6, 2000]
axes[2].plot(imu[:3].T.numpy(), lw=0.6)
axes[2].set_title("IMU (a ball): accelerometer, m/s²")
for ax in axes[:2]:
    ax.set_axis_off()
plt.show()

blocks = {"depth": {"type": "image", "url": str(senses["depth"]), "mime_type": "image/x-depth"},
          "thermal": {"type": "image", "url": str(senses["thermal"]), "extras": {"modality": "thermal"}},
          "imu": {"type": "file", "url": str(senses["imu"])}}
for kind, block in blocks.items():
    reply = chat.invoke([HumanMessage([{"type": "text", "text": "What is this?"}, block])])
    print(f"{kind:7}  What is this?  -> {reply.text}")
"""),
        md("Answers stream token by token, and the metadata says which cache items the answer leaned on:"),
        code("""
message = HumanMessage([{"type": "text", "text": "What do you hear?"}, {"type": "audio", "url": files["audio"]}])
for chunk in chat.stream([message]):
    print(chunk.text, end="", flush=True)
print()
reply = chat.invoke([message])
[(n["metadata"].get("caption", n["id"]), round(n["score"], 3)) for n in reply.response_metadata["cache_neighbors"][:3]]
"""),
        md("""
## Draw what it hears: image output

ImageBind-LLM also answers with a picture: the inputs' ImageBind embedding (the reference's
`image_generate`: pre-normalisation outputs, weighted, blended with the visual cache) conditions an image
generator. With the official weights that is Stable unCLIP (`attach_unclip(model, folder)`, a local copy of
`stabilityai/stable-diffusion-2-1-unclip`); the toy model ships its own small decoder, trained on toy
pictures only, so sounds, clips and 3D shapes reach it only through the shared space.
"""),
        code("""
drawn = {name: model.generate_image([load_media(path)], "a photo") for name, path in files.items()}
fig, axes = plt.subplots(1, 4, figsize=(10, 2.8))
for ax, (name, result) in zip(axes, drawn.items()):
    ax.imshow(result.image)
    ax.set_title(f"drawn from the {name}")
    ax.set_axis_off()
plt.show()
result = drawn["audio"]
print(result.generator, result.image.size, f"{result.seconds:.2f} s;", *result.notes)
result.save("drum-drawn.png")  # a PNG, as `ibllm draw --audio ... -o drum-drawn.png` writes
"""),
        md("""
## The official 7B weights, on a GPU

The same calls work with the released weights. Fetch them once (`ibllm download 7B`, `ibllm download
imagebind_w3D`, optionally `ibllm download knn.index` for the 3M-image cache) and point `llama_dir` at Meta's
LLaMA-1 weights (`tokenizer.model` and `7B/params.json` + `consolidated.00.pth`). The cell below does this
when it finds a GPU and the files; here it just says what it would do.
"""),
        code("""
import os

import torch

llama_dir = Path(os.environ.get("LLAMA_DIR", "~/llama")).expanduser()
if torch.cuda.is_available() and (llama_dir / "tokenizer.model").is_file():
    official = llama.load("7B", llama_dir=llama_dir, knn=True, device="cuda")  # float16 on CUDA
    chat_7b = ChatImageBindLLM(model=official, temperature=0)
    print(chat_7b.invoke([HumanMessage([{"type": "text", "text": "What do you hear?"},
                                        {"type": "audio", "url": files["audio"]}])]).text)
    unclip_dir = Path(os.environ.get("UNCLIP_DIR", "~/stable-diffusion-2-1-unclip")).expanduser()
    if unclip_dir.is_dir():  # pictures: Stable unCLIP from a local folder (never downloaded here)
        from ibllm_agent.image_generation import attach_unclip

        attach_unclip(official, unclip_dir)
        official.generate_image([load_media(files["audio"])], "a photo", seed=0).image.save("drum-unclip.png")
else:
    print("No GPU or no LLaMA weights here: the cells above ran on the toy world.")
"""),
    ])


def embedding_arithmetic():
    return _notebook("arithmetic", [
        md(f"""
# Embedding arithmetic: mixtures and differences across modalities

ImageBind maps pictures, sounds, point clouds and text into one space, so a weighted sum of embeddings is a
query of its own: ImageBind-LLM can describe "a dog plus the sound of rain" (the paper's *multi-modality
mixture*). This notebook looks at the space (similarity matrices), moves a weight between two inputs and
watches the answer change, and evaluates a few expressions with subtraction.

{TOY_NOTE}
"""),
        code("""
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import ibllm_agent as llama
from ibllm_agent.media import load_media, load_text
from ibllm_agent.toy import CONCEPTS, ToyWorld

model = llama.load("toy")
world = ToyWorld(seed=1000)  # unseen in training
names = [c.name for c in CONCEPTS]
"""),
        md("## One picture, one sound, one 3D shape and one phrase per concept"),
        code("""
media = Path("media")
emb = {}
for modality in ("image", "audio", "point"):
    items = [load_media(world.write(n, modality, 0, media).path) for n in names]
    emb[modality] = F.normalize(model.encode(items), dim=-1)  # [14, 1024]
emb["text"] = F.normalize(model.encode([load_text(c.noun) for c in CONCEPTS]), dim=-1)
{k: tuple(v.shape) for k, v in emb.items()}
"""),
        md("""
Cosine similarity between modalities: a bright diagonal means the inputs of one concept land near each other,
whatever their modality. This is what lets an LLM tuned on images answer about sounds and shapes.
"""),
        code("""
pairs = [("image", "audio"), ("image", "point"), ("image", "text"), ("audio", "text")]
fig, axes = plt.subplots(1, 4, figsize=(16, 4.2))
for ax, (a, b) in zip(axes, pairs):
    im = ax.imshow((emb[a] @ emb[b].T).numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_title(f"{a} × {b}")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
fig.colorbar(im, ax=axes, shrink=0.8, label="cosine")
plt.show()
# top-1 matching: how often the nearest item of the other modality is the same concept
{f"{a} -> {b}": float(((emb[a] @ emb[b].T).argmax(1) == torch.arange(len(names))).float().mean()) for a, b in pairs}
"""),
        md("""
## A mixture, weight by weight

Mix the picture of a dog with the sound of rain, moving the weight from the picture to the sound. The fusion
is upstream's: each embedding normalised, weights divided by their sum. Watch the similarity to the two
concepts' phrases cross over, and the answer switch.
"""),
        code("""
from ibllm_agent.fusion import fuse
from ibllm_agent.generation import format_prompt

dog, rain = names.index("dog"), names.index("rain")
weights = [i / 10 for i in range(1, 10)]  # 0 and 1 would be one input alone: fuse refuses a weight of 0
mixes = torch.stack([fuse(torch.stack([emb["image"][dog], emb["audio"][rain]]), [1 - w, w]) for w in weights])
answers = model.generate_batch([format_prompt("What is this?")] * len(mixes), mixes, max_tokens=16, temperature=0)

sims = F.normalize(mixes, dim=-1) @ emb["text"][[dog, rain]].T
plt.figure(figsize=(6, 3.2))
plt.plot(weights, sims[:, 0], "o-", label='cosine to "a dog"')
plt.plot(weights, sims[:, 1], "o-", label='cosine to "rain"')
plt.xlabel("weight of the rain sound (picture of a dog: 1 - weight)")
plt.legend()
plt.show()
for w, g in zip(weights, answers):
    print(f"{w:.1f}  {g.text}")
"""),
        md("""
## Differences

Expressions mix files, phrases and stored embeddings with `+`, `-`, `*` and `/` (see
`ibllm_agent.arithmetic`). Upstream never subtracts; when weights can cancel, the combination is L2-normalised
back onto the sphere where ImageBind features live. The perception tool `embedding_arithmetic` evaluates them
for agents; the pre-computed result conditions the chat model as an `imagebind_embedding` block.
"""),
        code("""
from langchain_core.messages import HumanMessage

from ibllm_agent import ChatImageBindLLM, get_tools
from ibllm_agent.content_blocks import embedding_block

tools = {t.name: t for t in get_tools(model, roots=[media])}
chat = ChatImageBindLLM(model=model, temperature=0, max_tokens=24)
dog_png = Path(world.write("dog", "image", 0, media).path).name  # tools take paths inside their roots
rain_wav = Path(world.write("rain", "audio", 0, media).path).name
drum_wav = Path(world.write("drum", "audio", 0, media).path).name
expressions = [
    f"image:{dog_png}",
    f"image:{dog_png} - text:'a dog' + text:'a cat'",
    f"audio:{rain_wav} - 0.8*text:'rain' + 0.8*text:'the ocean'",
    f"audio:{drum_wav} - 0.8*text:'a drum' + 0.8*text:'a bell'",
    f"0.2*image:{dog_png} + 0.8*audio:{rain_wav}",
]
for expression in expressions:
    message = tools["embedding_arithmetic"].invoke(
        {"type": "tool_call", "id": "1", "name": "embedding_arithmetic", "args": {"expression": expression}})
    assert message.status == "success", message.content
    vector = message.artifact  # the combined embedding
    reply = chat.invoke([HumanMessage([{"type": "text", "text": "What is this?"}, embedding_block(vector)])])
    print(f"{expression:58} -> {reply.text}")
"""),
    ])


def agent_pipeline():
    return _notebook("agent", [
        md(f"""
# Perception tools in a LangGraph pipeline and in an agent

`ibllm_agent.get_tools(model, roots=[...])` returns LangChain tools that let any agent look at, listen to and
feel files: describe them, embed them, mix embeddings, search the visual cache and classify. This notebook
uses them three ways: directly, in a deterministic LangGraph pipeline, and in `langchain.agents.create_agent`
driven by a scripted tool-calling model (so it runs offline), with the two lines that swap in a real one.

{TOY_NOTE}
"""),
        code("""
from pathlib import Path

import ibllm_agent as llama
from ibllm_agent import get_tools
from ibllm_agent.toy import ToyWorld

model = llama.load("toy", knn=True)
world = ToyWorld(seed=1000)
media = Path("media")
rain = Path(world.write("rain", "audio", 0, media).path)
dog = Path(world.write("dog", "image", 0, media).path)
drum = Path(world.write("drum", "point", 1, media).path)

tools = {t.name: t for t in get_tools(model, roots=[media])}  # file access is confined to media/
list(tools)
"""),
        md("## The tools, called directly"),
        code("""
print(tools["describe_media"].invoke({"path": rain.name, "question": "What do you hear?"}))
print(tools["classify_media"].invoke({"target": drum.name, "labels": ["a drum", "a bell", "a car", "a ball"]}))
print(tools["describe_media"].invoke({"path": "../etc/passwd"}))  # refused, as a readable error
"""),
        md("""
## A deterministic LangGraph pipeline

`build_perception_graph` routes each attached file by its detected modality, encodes it, applies an optional
embedding expression over the inputs (`input_1`, `input_2`, ...), retrieves cache neighbours and answers with
the chat model. No tool-calling LLM is needed, and node updates stream as they happen.
"""),
        code("""
from ibllm_agent.graphs import build_perception_graph

graph = build_perception_graph(model, roots=[media])
print(graph.get_graph().draw_mermaid())
"""),
        code("""
request = {"question": "What is this?", "media": [dog.name, rain.name], "expression": "0.3*input_1 + 0.7*input_2"}
def summary(values):
    if "inputs" in values:
        return [(i["name"], i["modality"]) for i in values["inputs"]]
    if "neighbors" in values:
        return [(n["metadata"].get("caption") or n["id"], round(n["score"], 3)) for n in values["neighbors"][:3]]
    return {k: v for k, v in values.items() if k in ("handles", "composition", "answer")}


for update in graph.stream(request, stream_mode="updates"):
    for node, values in update.items():
        print(f"{node:8}", summary(values))
"""),
        md("""
## An agent with `create_agent`

`create_perception_agent(llm)` wraps `langchain.agents.create_agent` over the tools for any tool-calling chat
model. A multi-step plan is beyond the toy (it drives a single call: see the last section), so here a scripted
model plays the planner: it embeds the picture and the sound, mixes them, and asks for a description of the
mixture, exactly as a real model would through tool calls.
"""),
        code("""
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, HumanMessage

from ibllm_agent.graphs import create_perception_agent


class ScriptedToolCaller(FakeMessagesListChatModel):
    \"\"\"Replays fixed messages (tool calls, then a final answer); offline stand-in for a real planner.\"\"\"

    def bind_tools(self, tools, *, tool_choice=None, **kwargs):
        return self


def call(tool, **args):
    return AIMessage("", tool_calls=[{"name": tool, "args": args, "id": f"call_{len(args)}_{tool}", "type": "tool_call"}])


planner = ScriptedToolCaller(responses=[
    call("embed_media", path=dog.name, name="dog_photo"),
    call("embed_media", path=rain.name, name="rain_sound"),
    call("embedding_arithmetic", expression="0.4*dog_photo + 0.6*rain_sound", name="mix"),
    call("describe_embedding", handle="mix", question="What is this?"),
    AIMessage("The mixture is described above by the perception model."),
])
agent = create_perception_agent(planner, model, roots=[media])
result = agent.invoke({"messages": [HumanMessage("Mix the dog photo with the rain sound and describe it.")]})
for message in result["messages"]:
    print(f"{message.type:5}", message.text or message.tool_calls[0]["name"])
"""),
        md("""
### With a real tool-calling model

Replace the scripted planner with any LangChain chat model that supports tool calling, for example:

```python
from langchain_openai import ChatOpenAI          # or: from langchain_ollama import ChatOllama
agent = create_perception_agent(ChatOpenAI(model="gpt-4o-mini"), model, roots=[media])
```
"""),
        md("""
## Structured output: a sound, a picture and a 3D shape into a pydantic object

`with_structured_output` holds ImageBind-LLM's answer to a schema by grammar-constrained decoding: at every
step only the tokens the schema allows can be sampled, so the answer always parses and validates. The form
is guaranteed; the values are the model's (here `thing` must be one of the toy's concepts and `summary` has
at most 48 characters).
"""),
        code("""
from typing import Literal

from pydantic import BaseModel, Field

from ibllm_agent import ChatImageBindLLM
from ibllm_agent.toy import CONCEPT_NAMES


class Percept(BaseModel):
    \"\"\"What an input shows, sounds like or is shaped like.\"\"\"

    thing: Literal[CONCEPT_NAMES]
    summary: str = Field(max_length=48, description="a few words about it")


chat = ChatImageBindLLM(model=model, temperature=0, max_tokens=96)
perceive = chat.with_structured_output(Percept)
blocks = {"sound": {"type": "audio", "url": str(rain)}, "picture": {"type": "image", "url": str(dog)},
          "3D shape": {"type": "file", "url": str(drum), "extras": {"modality": "point"}}}
for kind, block in blocks.items():
    percept = perceive.invoke([HumanMessage([{"type": "text", "text": "What is this?"}, block])])
    print(f"{kind:9}", repr(percept))
"""),
        md("""
## ImageBind-LLM as the agent's own model

`ChatImageBindLLM.bind_tools` lists the tools in the prompt and lets the model answer either in text or with
one call whose name is a bound tool and whose arguments validate against its schema, so it can drive
`create_agent` itself. The toy learns this small skill from synthetic transcripts
(`ibllm_agent/toy/tool_use.py`). A toy built before that data answers in text here instead of calling
`describe_media`; a retrained one calls it with the file named in the question, reads the tool's answer
and reports it.
"""),
        code("""
from langgraph.errors import GraphRecursionError

toy_agent = create_perception_agent(chat, model, roots=[media], tools=[tools["describe_media"]], system_prompt=None)
question = HumanMessage(f"What do you hear in {rain.name}? Use describe_media.")
try:
    result = toy_agent.invoke({"messages": [question]}, {"recursion_limit": 8})
    for message in result["messages"]:
        print(f"{message.type:5}", message.tool_calls[0] if getattr(message, "tool_calls", None) else message.text)
except GraphRecursionError:
    print("the model kept calling tools for 8 steps; stopped")
"""),
    ])


def visual_cache():
    return _notebook("cache", [
        md(f"""
# The visual cache: retrieval-augmented perception

At inference, ImageBind-LLM can pull a query toward the image features the LLM was tuned on: it retrieves the
query's nearest cached image features, blends them by `softmax(similarity × t)` and mixes the blend in with
`cache_weight` (paper §3.3). This matters most for modalities whose embeddings sit a little away from images,
like audio and 3D. This notebook builds a Chroma cache from toy images, looks at what it retrieves, and
compares answers with and without it.

{TOY_NOTE}
"""),
        code("""
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from PIL import Image

import ibllm_agent as llama
from ibllm_agent.cache.build import build_from_media, list_media
from ibllm_agent.cache.chroma import ChromaCache
from ibllm_agent.generation import format_prompt
from ibllm_agent.media import load_media
from ibllm_agent.toy import CONCEPT_NAMES, ToyWorld, names_concept

model = llama.load("toy", knn=True)
print("shipped cache:", model.visual_cache)
"""),
        md("""
## Build a Chroma cache from toy images

Three fresh pictures per concept, encoded by the model's ImageBind and stored in a persistent local Chroma
collection with their paths as metadata. Building is idempotent: ids are content hashes, so running the cell
again adds nothing.
"""),
        code("""
world = ToyWorld(seed=1000)  # unseen in training
images = Path("cache_images")
for name in CONCEPT_NAMES:
    for index in range(3):
        world.write(name, "image", index, images)

cache = ChromaCache.open("toy-images", path="chroma")
report = build_from_media(list_media(images), cache, model.encode)
print(report)
cache
"""),
        md("## What a sound and a 3D shape retrieve"),
        code("""
queries = {"audio": world.write("fire", "audio", 5, Path("media")).path,
           "point": world.write("bell", "point", 5, Path("media")).path}
fig, axes = plt.subplots(2, 5, figsize=(12, 5.4))
for row, (modality, path) in zip(axes, queries.items()):
    vector = model.encode([load_media(path)])  # [1, 1024]
    hits = cache.search(vector.numpy(), 5)
    for ax, score, meta in zip(row, hits.scores[0], hits.metadatas[0]):
        ax.imshow(Image.open(meta["uri"]))
        ax.set_title(f"{Path(meta['uri']).stem.split('_')[0]}  {score:.2f}", fontsize=9)
        ax.set_axis_off()
    row[0].text(-20, 56, f"{modality}: {Path(path).stem.split('_')[0]}", rotation=90, va="center", ha="right")
plt.tight_layout()
plt.show()
"""),
        md("""
## Answers with and without the cache

Held-out sounds and point clouds, asked "What is this?" (greedy). The cache used is the one just built: a
model's `cache` attribute is any `VisualCache` (FAISS or Chroma).
"""),
        code("""
import pandas as pd

shipped, model.visual_cache = model.visual_cache, cache
asked = [(modality, name) for modality in ("audio", "point") for name in ("rain", "dog", "bell", "car", "piano")]
features = model.encode([load_media(world.write(name, modality, 7, Path("media")).path) for modality, name in asked])
prompts = [format_prompt("What is this?")] * len(asked)
without = model.generate_batch(prompts, features, max_tokens=16, temperature=0, visual_cache=False)  # one batch each
with_cache = model.generate_batch(prompts, features, max_tokens=16, temperature=0, visual_cache=True)
rows = [{"input": f"{modality}: {name}", "without cache": off.text, "with cache": on.text,
         "right without": names_concept(off.text, name), "right with": names_concept(on.text, name)}
        for (modality, name), off, on in zip(asked, without, with_cache)]
pd.DataFrame(rows)
"""),
        md("""
## The evaluation table

`ibllm_agent.train.toy_eval` measures the paper's claim on held-out toy samples: the share of answers that name
the right concept per input modality, cache off and on (here with the shipped FAISS cache), retrieval top-1,
the modality gap, a deliberately hard setting (audio embeddings pushed off the image manifold, where the cache
helps most) and a mixture check. `tools/eval_toy.py` prints the same table with more samples.
"""),
        code("""
from ibllm_agent.train.toy_eval import evaluate, table

model.visual_cache = shipped  # back to the shipped FAISS cache
report = evaluate(model, per_concept=1, video_per_concept=1, modalities=("image", "audio", "point"))
print(table(report))
"""),
    ])


NOTEBOOKS = {
    "01_quickstart.ipynb": quickstart,
    "02_embedding_arithmetic.ipynb": embedding_arithmetic,
    "03_agent_pipeline.ipynb": agent_pipeline,
    "04_visual_cache.ipynb": visual_cache,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a notebook is stale")
    parser.add_argument("--out", type=Path, default=OUT, help="folder to write to (default notebooks/)")
    args = parser.parse_args(argv)
    stale = []
    for filename, build in NOTEBOOKS.items():
        nb = build()
        nbformat.validate(nb)
        text = nbformat.writes(nb)
        path = args.out / filename
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(filename)
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print("stale: " + ", ".join(stale) + " (run python tools/build_notebooks.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
