"""The toy's tool-use and JSON-answer instruction data: synthetic transcripts in the exact prompt format of
`ChatImageBindLLM` (`ibllm_agent.structured`), so the toy model learns a small skill that grammar-constrained
decoding can show offline.

- calls: a few made-up tools are listed (varied names, argument names and descriptions); the question names
  one and gives its arguments (numbers, words), which the answer copies into `<tool_call>{"name": ...,
  "arguments": {...}}`. Tools without arguments too;
- no call: with tools listed, a question about the toy world is answered in text;
- results: the call and the tool's result are in the history; the answer reports the result;
- JSON answers: "Answer in JSON: {...}" and a toy question (with or without a picture), answered with short
  strings from the toy world.

The langchain-tests standard suites are the held-out check: their tool names (`magic_function`, `get_weather`,
...) and prompts never appear here (`HELD_OUT`, checked by tests/unit/test_toy_world.py).
"""

from __future__ import annotations

import json
import random

from ibllm_agent import modalities
from ibllm_agent.structured import (
    ToolSpec,
    render_tool_call,
    render_tool_result,
    schema_outline,
    tools_context,
)
from ibllm_agent.toy.concepts import CONCEPTS, Concept, text_instructions, visual_instructions
from ibllm_agent.toy.world import STREAM_ID

__all__ = ["HELD_OUT", "json_answer_instructions", "tool_use_instructions", "visual_json_instructions"]

HELD_OUT = ("magic_function", "my_adder_tool", "get_weather", "greeting_generator", "unicode_customer",
            "What is the value of", "Use the tool.", "Tell me a joke", "San Francisco", "Pirate greeting",
            "setup", "punchline", "Joke")
"""Names and phrases of the standard tests' prompts and tools: the data must not contain them."""

_VERBS = ("find", "count", "ring", "play", "lookup", "check", "show", "measure", "convert", "add", "double",
          "scale", "describe", "label", "fetch", "compute", "score", "tune", "track", "list")
_NOUNS = ("price", "birds", "bell", "drum", "city", "sound", "color", "shape", "distance", "time", "total", "level",
          "word", "number", "animal", "steps", "notes", "waves", "clock", "stars")
_INT_ARGS = ("n", "x", "value", "number", "amount", "count", "level", "size", "steps", "minutes", "k", "days")
_STR_ARGS = ("city", "place", "name", "word", "label", "animal", "thing", "color", "style", "topic", "query")
_WORDS = ("Oslo", "Paris", "Lima", "Tokyo", "Cairo", "Rome", "Quito", "red", "blue", "green", "dog", "bird", "bell",
          "drum", "rain", "piano", "river", "stone", "maple", "tiger", "loud", "soft", "Nora", "Ben", "Ada",
          "north", "summer", "violet", "cedar", "amber")

_ONE_INT = ("What is {tool}({v})?", "Use {tool} on {v}.", "Call {tool} with {arg} {v}.", "Run {tool} for {v}, please.",
            "Give me {tool} of {v} with the tool.", "I need {tool}({v}).", "Please call {tool} on {v}.",
            "What does {tool} return for {v}?", "Apply {tool} to {v}.", "{tool} {v}, please.")
_ONE_STR = ("Use {tool} for {v}.", "What does {tool} say about {v}?", "Call {tool} with {arg} {v}.",
            "Look up {v} with {tool}.", "Run {tool} on {v}.", "Please use {tool} for {v}.", "I need {tool} for {v}.",
            "What is in {v}? Ask {tool}.")
_TWO = ("What is {tool}({v1}, {v2})?", "Use {tool} with {a1} {v1} and {a2} {v2}.",
        "Call {tool} on {v1} and {v2}.", "Run {tool} for {v1} and {v2}, please.")
_NONE = ("Use {tool}.", "Please run {tool}.", "Call {tool} now.", "What does {tool} give?", "I need {tool}().")
_RESULT = ("The result is {r}.", "{tool} gave {r}.", "It is {r}.", "The answer is {r}.")


def _tool(rng: random.Random, taken: set[str]) -> tuple[ToolSpec, list[tuple[str, str]]]:
    """A made-up tool and its arguments [(name, "integer"|"string")]."""
    while True:
        verb, noun = rng.choice(_VERBS), rng.choice(_NOUNS)
        name = rng.choice((f"{verb}_{noun}", f"{verb}{noun.capitalize()}", f"{noun}_{verb}"))
        if name not in taken:
            taken.add(name)
            break
    shape = rng.choices(("int", "str", "two", "none"), weights=(5, 4, 2, 1))[0]
    if shape == "int":
        args = [(rng.choice(_INT_ARGS), "integer")]
    elif shape == "str":
        args = [(rng.choice(_STR_ARGS), "string")]
    elif shape == "two":
        first, second = rng.sample(_INT_ARGS, 2)
        args = [(first, "integer"), (second, rng.choice(("integer", "integer", "string")))]
    else:
        args = []
    what = " and ".join(a for a, _ in args) or "nothing"
    description = rng.choice((f"{verb.capitalize()} the {noun}.", f"{verb.capitalize()} the {noun} of a {what}.",
                              f"Returns the {noun} for the given {what}.", "",
                              f"{verb.capitalize()} the {noun} of a {what} and answer a question about it. Files: "
                              f"files under media. (Toy world model: it knows only a few synthetic concepts.)"))
    parameters = {"type": "object", "properties": {a: {"type": t} for a, t in args}, "required": [a for a, _ in args]}
    return ToolSpec(name, description, parameters), args


def _value(rng: random.Random, kind: str):
    if kind == "integer":
        return rng.choice((rng.randint(0, 9), rng.randint(10, 99), rng.randint(100, 999), -rng.randint(1, 50)))
    if rng.random() < 0.25:  # a file name as the toy world writes them (the perception tools take paths)
        medium = rng.choice([m for m in STREAM_ID if m != "text"])
        return f"{rng.choice(CONCEPTS).name}_{medium}_{rng.randint(0, 9999):04d}.{modalities.get(medium).suffixes[0]}"
    return rng.choice(_WORDS)


def _question(rng: random.Random, tool: ToolSpec, args: list[tuple[str, str]], values: list) -> str:
    if not args:
        return rng.choice(_NONE).format(tool=tool.name)
    if len(args) == 1:
        templates = _ONE_INT if args[0][1] == "integer" else _ONE_STR
        return rng.choice(templates).format(tool=tool.name, arg=args[0][0], v=values[0])
    return rng.choice(_TWO).format(tool=tool.name, a1=args[0][0], v1=values[0], a2=args[1][0], v2=values[1])


def _context(tools: list[ToolSpec], mode: str, forced: str | None, history: list[str] = ()) -> str:
    """The prompt's input as `ChatImageBindLLM.prepare` writes it: the tools, then the history lines."""
    return "\n\n".join(part for part in (tools_context(tools, mode, forced), "\n".join(history)) if part)


def tool_use_instructions(seed: int = 0, n: int = 1600) -> list[dict[str, str]]:
    """Alpaca records (instruction, input, output): calls, text answers with tools listed, and result reports."""
    rng = random.Random(seed)
    plain = [r for r in text_instructions() if not r["input"]]
    out = []
    for _ in range(n):
        taken: set[str] = set()
        listed = [_tool(rng, taken) for _ in range(rng.randint(1, 3))]
        tools = [t for t, _ in listed]
        tool, args = rng.choice(listed)
        kind = rng.choices(("call", "text", "result"), weights=(6, 2, 2))[0]
        if kind == "text":
            qa = rng.choice(plain)
            out.append({"instruction": qa["instruction"], "input": _context(tools, "auto", None), "output": qa["output"]})
            continue
        values = [_value(rng, t) for _, t in args]
        question = _question(rng, tool, args, values)
        call = render_tool_call(tool.name, {a: v for (a, _), v in zip(args, values)})
        if kind == "call":
            mode, forced = rng.choice((("auto", None), ("required", None), ("required", tool.name)))
            out.append({"instruction": question, "input": _context(tools, mode, forced), "output": call})
        else:
            result = _value(rng, rng.choice(("integer", "string")))
            history = ["Assistant: " + call, render_tool_result(tool.name, str(result))]
            answer = rng.choice(_RESULT).format(r=result, tool=tool.name)
            out.append({"instruction": question, "input": _context(tools, "auto", None, history), "output": answer})
    return out


_JSON_FIELDS = {
    "name": lambda c: c.name, "concept": lambda c: c.name, "label": lambda c: c.name, "thing": lambda c: c.name,
    "animal": lambda c: c.name, "sound": lambda c: c.sound, "look": lambda c: c.look, "shape": lambda c: c.shape,
    "motion": lambda c: c.motion, "noun": lambda c: c.noun, "answer": lambda c: c.name,
}


def _json_schema(rng: random.Random) -> tuple[dict, list[str]]:
    keys = rng.sample(sorted(_JSON_FIELDS), rng.randint(1, 3))
    return {"type": "object", "properties": {k: {"type": "string"} for k in keys}, "required": keys}, keys


def _json_record(rng: random.Random, c: Concept, question: str) -> dict[str, str]:
    schema, keys = _json_schema(rng)
    value = {k: _JSON_FIELDS[k](c) for k in keys}
    return {"instruction": question, "input": f"Answer in JSON: {schema_outline(schema)}",
            "output": json.dumps(value, ensure_ascii=False)}


def json_answer_instructions(seed: int = 0, n: int = 300) -> list[dict[str, str]]:
    """Text-only questions answered in JSON under "Answer in JSON: {...}" (the with_structured_output prompt)."""
    rng = random.Random(seed + 1)
    out = []
    for _ in range(n):
        c = rng.choice(CONCEPTS)
        question = rng.choice((f"Tell me about {c.noun}.", f"What sound does {c.noun} make?",
                               f"Describe {c.noun}.", f"What is {c.noun} like?"))
        out.append(_json_record(rng, c, question))
    return out


def visual_json_instructions(c: Concept, rng: random.Random) -> dict[str, str]:
    """One question about an input showing `c`, answered in JSON (an image's record in the finetuning data)."""
    question = rng.choice([qa["instruction"] for qa in visual_instructions(c)][:6])
    return _json_record(rng, c, question)
