"""Structured output and tool calling: what the prompt says, the grammar that holds the answer to it, and
how the answer is read back. Shared by `ChatImageBindLLM` (`with_structured_output`, `bind_tools`) and the
OpenAI-compatible server (`from_openai`, `to_openai`).

An `OutputPlan` is one request's contract:

- **tools** (name, description, JSON Schema of the arguments) are listed in the prompt's context in a fixed
  format (`tools_context`); the answer is either text or one call, written `<tool_call>` + JSON
  `{"name": ..., "arguments": {...}}` (`TOOL_CALL_TAG`), and the grammar admits only the bound tools'
  names and arguments valid under each one's schema. `tool_mode` "required" (LangChain's "any", or a
  named tool) allows only a call; "none" lists no tools and allows no call;
- **an answer schema** (JSON Schema mode, or JSON mode with an optional schema) makes the text answer a
  JSON value valid under it; in JSON Schema mode the prompt also says what shape to answer in.

Object schemas that do not say whether other properties may appear are closed (`additionalProperties:
false`), as OpenAI's strict mode does: an answer then has only the named keys and still validates under
the schema as given. `parse` reads an answer back: tool calls (with ids), the JSON value, or why it is
not parseable (cut at max_tokens: finish_reason "length").
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ibllm_agent.grammar import Constraint, ConstraintError, json_in_lark, lark_literal

__all__ = ["TOOL_CALL_TAG", "OutputPlan", "ParsedOutput", "StructuredOutputParser", "StructuredRequestError",
           "ToolCallStream", "ToolSpec", "from_openai", "openai_delta", "render_tool_call", "render_tool_result", "schema_outline", "to_openai",
           "tool_specs"]

TOOL_CALL_TAG = "<tool_call>"
"""What starts a tool call in an answer; the call's JSON follows."""
TEXT_ANSWER = r"/[^<](.|\n)*/"
"""A text answer when tools are bound: anything that does not start like a tool call."""
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TOOLS = 64


class StructuredRequestError(ConstraintError):
    """A tool, tool_choice, schema or response_format that cannot be used; `param` names the request field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


# --- tools ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ToolSpec:
    """A tool as the model sees it."""

    name: str
    description: str
    parameters: dict[str, Any]
    """JSON Schema of the arguments (an object)."""


def tool_specs(tools: Sequence[Any]) -> tuple[ToolSpec, ...]:
    """LangChain tools, pydantic classes, functions, TypedDicts or OpenAI tool dicts -> `ToolSpec`s, checked:
    names plain and unique (a tool given twice counts once), each with an object schema for its arguments."""
    from langchain_core.utils.function_calling import convert_to_openai_tool

    if isinstance(tools, (str, dict)) or not isinstance(tools, Sequence):
        raise StructuredRequestError("tools must be a list", "tools")
    if len(tools) > MAX_TOOLS:
        raise StructuredRequestError(f"at most {MAX_TOOLS} tools can be bound, got {len(tools)}", "tools")
    specs: list[ToolSpec] = []
    for i, tool in enumerate(tools):
        if isinstance(tool, dict) and "function" not in tool and "parameters" not in tool and "name" in tool \
                and "input_schema" not in tool and "properties" not in tool:
            raise StructuredRequestError(f"tool {tool['name']!r} has no argument schema; give "
                                         '"parameters": {"type": "object", "properties": {}} for a tool without '
                                         "arguments", f"tools[{i}]")
        try:
            function = convert_to_openai_tool(tool)["function"]
        except Exception as e:  # noqa: BLE001 - LangChain raises several kinds for what it cannot convert
            raise StructuredRequestError(f"tools[{i}] cannot be used as a tool: {e}", f"tools[{i}]") from None
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise StructuredRequestError(f"tools[{i}]: a tool name must be 1-64 letters, digits, _ or -, got "
                                         f"{name!r}", f"tools[{i}]")
        parameters = function.get("parameters")
        if parameters is None:
            raise StructuredRequestError(f"tool {name!r} has no argument schema", f"tools[{i}]")
        if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
            raise StructuredRequestError(f"tool {name!r}: its argument schema must be a JSON Schema object",
                                         f"tools[{i}]")
        spec = ToolSpec(name, " ".join(str(function.get("description") or "").split()),
                        {"type": "object", "properties": {}, **parameters})
        same = next((s for s in specs if s.name == name), None)
        if same is not None and _essence(same.parameters) != _essence(spec.parameters):
            raise StructuredRequestError(f"two different tools are named {name!r}", "tools")
        if same is None:  # the same tool given twice (e.g. a pydantic class and its schema) is listed once
            specs.append(spec)
    return tuple(specs)


_ANNOTATIONS = ("title", "description", "examples", "$comment")
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")


def _essence(schema: Any) -> Any:
    """A schema without its annotations (two schemas that accept the same values may differ in titles)."""
    if isinstance(schema, list):
        return [_essence(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    return {k: ({name: _essence(v) for name, v in value.items()} if k in _SCHEMA_MAPS and isinstance(value, dict)
                else _essence(value)) for k, value in schema.items() if k not in _ANNOTATIONS}


ToolMode = Literal["auto", "required", "none"]


def tool_choice_mode(tool_choice: Any, specs: Sequence[ToolSpec]) -> tuple[ToolMode, str | None]:
    """LangChain's and OpenAI's tool_choice values -> (mode, forced tool name or None)."""
    names = [s.name for s in specs]
    if tool_choice is None or tool_choice == "auto":
        mode, name = "auto", None
    elif tool_choice in ("any", "required") or tool_choice is True:
        mode, name = "required", None
    elif tool_choice == "none" or tool_choice is False:
        mode, name = "none", None
    elif isinstance(tool_choice, str):
        mode, name = "required", tool_choice
    elif isinstance(tool_choice, dict) and isinstance(tool_choice.get("function"), dict):
        mode, name = "required", tool_choice["function"].get("name")  # OpenAI {"type": "function", ...}
    elif isinstance(tool_choice, dict) and tool_choice.get("type") in ("tool", "function") and "name" in tool_choice:
        mode, name = "required", tool_choice["name"]  # Anthropic {"type": "tool", "name": ...}
    else:
        raise StructuredRequestError(f"tool_choice must be 'auto', 'any'/'required', 'none', a tool name or "
                                     f"{{'type': 'function', 'function': {{'name': ...}}}}, got {tool_choice!r}",
                                     "tool_choice")
    if mode == "required" and not specs:
        raise StructuredRequestError(f"tool_choice={tool_choice!r} needs at least one bound tool", "tool_choice")
    if name is not None and name not in names:
        raise StructuredRequestError(f"tool_choice names {name!r}, which is not a bound tool ({', '.join(names)})",
                                     "tool_choice")
    return mode, name


def schema_outline(schema: dict[str, Any], defs: dict | None = None, depth: int = 0) -> str:
    """A one-line picture of a JSON Schema for the prompt: `{"city": string, "days": integer?}`."""
    defs = schema.get("$defs", defs) if isinstance(schema, dict) else defs
    if not isinstance(schema, dict) or depth > 4:
        return "value"
    if "$ref" in schema and defs:
        target = defs.get(schema["$ref"].rsplit("/", 1)[-1])
        return schema_outline(target, defs, depth + 1) if target else "value"
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return "|".join(json.dumps(v) for v in schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [schema_outline(s, defs, depth + 1) for s in schema[key] if s.get("type") != "null"]
            nullable = len(options) < len(schema[key])
            return "|".join(options) + ("|null" if nullable else "")
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        required = set(schema.get("required", ()))
        parts = [f"{json.dumps(k)}: {schema_outline(v, defs, depth + 1)}{'' if k in required else '?'}"
                 for k, v in schema.get("properties", {}).items()]
        return "{" + ", ".join(parts) + "}"
    if kind == "array":
        return "[" + schema_outline(schema.get("items", {}), defs, depth + 1) + ", ...]"
    if isinstance(kind, list):
        return "|".join(kind)
    return kind or "value"


def tools_context(specs: Sequence[ToolSpec], mode: ToolMode, forced: str | None) -> str:
    """The tools as the prompt lists them (the toy model is trained on exactly this format)."""
    lines = ["Tools:"] + [f"- {s.name} {schema_outline(s.parameters)}: {s.description}".rstrip(": ") for s in specs]
    if forced:
        lines.append(f"Call the tool {forced}.")
    elif mode == "required":
        lines.append("Call one of the tools.")
    else:
        lines.append("Answer, or call a tool.")
    return "\n".join(lines)


def render_tool_call(name: str, args: dict[str, Any]) -> str:
    """A tool call as the model writes it (and as earlier calls appear in the prompt's history)."""
    return TOOL_CALL_TAG + json.dumps({"name": name, "arguments": args}, ensure_ascii=False)


def render_tool_result(name: str | None, content: str) -> str:
    """A tool's result as a line of the prompt's history."""
    return f"Tool result ({name}): {content}" if name else f"Tool result: {content}"


# --- the plan ------------------------------------------------------------------------------------------------

@dataclass
class ParsedOutput:
    """An answer read back under its plan."""

    content: str
    """The text answer ("" when the answer is a tool call)."""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    """LangChain tool calls: {"name", "args", "id", "type": "tool_call"}."""
    invalid_tool_calls: list[dict[str, Any]] = field(default_factory=list)
    """A call that was cut or could not be read: {"name", "args" (the raw text), "id", "error"}."""
    value: Any = None
    """The parsed JSON answer (answer schema or JSON mode), None when not parseable."""
    error: str | None = None
    """Why the answer is not what the plan asked for (None when it is)."""


@dataclass(frozen=True)
class OutputPlan:
    """What one request's answer must be (see the module docstring)."""

    tools: tuple[ToolSpec, ...] = ()
    tool_mode: ToolMode = "auto"
    forced_tool: str | None = None
    json_answer: bool = False
    """The text answer must be JSON (JSON mode or JSON Schema mode)."""
    answer_schema: dict[str, Any] | None = None
    """The JSON answer's schema (None in JSON mode without one: any JSON object)."""
    describe_schema: bool = True
    """Say the answer's shape in the prompt (JSON Schema mode; JSON mode leaves the prompt as the user wrote it)."""

    @classmethod
    def make(cls, tools: Sequence[Any] = (), tool_choice: Any = None, *, answer_schema: dict | None = None,
             json_answer: bool = False, describe_schema: bool = True) -> OutputPlan:
        specs = tool_specs(tools) if tools else ()
        mode, forced = tool_choice_mode(tool_choice, specs)
        if answer_schema is not None and not isinstance(answer_schema, dict):
            raise StructuredRequestError("the answer schema must be a JSON Schema (dict)", "response_format")
        plan = cls(specs, mode, forced, json_answer or answer_schema is not None, answer_schema, describe_schema)
        plan.constraint()  # refuse what the engine cannot compile now, where the request was made
        return plan

    @property
    def calls_possible(self) -> bool:
        return bool(self.tools) and self.tool_mode != "none"

    @property
    def active(self) -> bool:
        """Whether this plan changes anything (else the request is plain text)."""
        return self.calls_possible or self.json_answer

    def context(self) -> str:
        """Text for the prompt's context (before the system prompt and history); "" when nothing to say."""
        parts = []
        if self.calls_possible:
            parts.append(tools_context(self.tools, self.tool_mode, self.forced_tool))
        if self.json_answer and self.describe_schema and self.tool_mode != "required":
            schema = self.answer_schema or {"type": "object"}
            parts.append(f"Answer in JSON: {schema_outline(schema)}")
        return "\n".join(parts)

    def constraint(self) -> Constraint | None:
        """The grammar of the answer, None for free text."""
        answer = closed_schema(self.answer_schema or {"type": "object"}) if self.json_answer else None
        if not self.calls_possible:
            return None if answer is None else _checked(lambda: Constraint.json_schema(answer), "response_format")
        call = call_schema([s for s in self.tools if self.forced_tool in (None, s.name)])
        rules = [f"call: {lark_literal(TOOL_CALL_TAG)} call_json", f"call_json: {json_in_lark(call)}"]
        if self.tool_mode == "required":
            start = "start: call"
        elif answer is not None:
            start, rules = "start: answer | call", [*rules, f"answer: {json_in_lark(answer)}"]
        else:
            start, rules = "start: TEXT | call", [*rules, f"TEXT: {TEXT_ANSWER}"]
        return _checked(lambda: Constraint.lark("\n".join([start, *rules])), "tools")

    def parse(self, text: str, finish_reason: str | None = None) -> ParsedOutput:
        """Read an answer back. A cut answer (finish_reason "length") is reported, never raised."""
        cut = finish_reason == "length"
        if self.calls_possible and text.startswith(TOOL_CALL_TAG):
            return self._parse_call(text[len(TOOL_CALL_TAG):], cut)
        if not self.json_answer:
            return ParsedOutput(text)
        if cut:
            return ParsedOutput(text, error="the answer was cut at max_tokens before its JSON was complete "
                                            "(finish_reason 'length'); raise max_tokens")
        try:
            return ParsedOutput(text, value=json.loads(text))
        except json.JSONDecodeError as e:
            return ParsedOutput(text, error=f"the answer is not valid JSON ({e}); finish_reason {finish_reason!r}")

    def _parse_call(self, body: str, cut: bool) -> ParsedOutput:
        call_id = new_call_id()
        try:
            data = json.loads(body)
            name, args = data["name"], data["arguments"]
            if name not in {s.name for s in self.tools} or not isinstance(args, dict):
                raise ValueError(f"unknown tool {name!r} or arguments that are not an object")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            why = ("the tool call was cut at max_tokens (finish_reason 'length'); raise max_tokens" if cut
                   else f"the tool call cannot be read: {e}")
            name = _partial_name(body)
            return ParsedOutput("", invalid_tool_calls=[{"name": name, "args": body, "id": call_id, "error": why,
                                                         "type": "invalid_tool_call"}], error=why)
        return ParsedOutput("", tool_calls=[{"name": name, "args": args, "id": call_id, "type": "tool_call"}])


def _checked(make, param: str) -> Constraint:
    try:
        return make()
    except StructuredRequestError:
        raise
    except ConstraintError as e:
        raise StructuredRequestError(str(e), param) from None


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def _partial_name(body: str) -> str | None:
    found = re.match(r'\{"name": "((?:[^"\\]|\\.)*)"', body)
    return json.loads(f'"{found.group(1)}"') if found else None


def closed_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with `additionalProperties: false` on every object schema that names its properties and says
    nothing about others (a copy; the answer still validates under the original)."""
    def close(node):
        if isinstance(node, dict):
            node = {k: close(v) for k, v in node.items()}
            if "properties" in node and "additionalProperties" not in node and "patternProperties" not in node:
                node["additionalProperties"] = False
            return node
        if isinstance(node, list):
            return [close(v) for v in node]
        return node

    return close(copy.deepcopy(schema))


def call_schema(specs: Sequence[ToolSpec]) -> dict[str, Any]:
    """JSON Schema of one call `{"name": <a tool>, "arguments": <its arguments>}`; each tool's `$defs` are
    moved to the root (renamed per tool), where their `$ref`s point once the schemas are nested."""
    defs: dict[str, Any] = {}
    options = []
    for k, spec in enumerate(specs):
        params = closed_schema(spec.parameters)
        local = params.pop("$defs", None) or params.pop("definitions", None) or {}
        prefix = f"t{k}_"

        def rename(node, prefix=prefix):
            if isinstance(node, dict):
                return {key: (re.sub(r"^#/(\$defs|definitions)/", f"#/$defs/{prefix}", v) if key == "$ref"
                              and isinstance(v, str) else rename(v)) for key, v in node.items()}
            if isinstance(node, list):
                return [rename(v) for v in node]
            return node

        defs.update({prefix + name: rename(value) for name, value in local.items()})
        options.append({"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
                        "properties": {"name": {"const": spec.name}, "arguments": rename(params)}})
    schema: dict[str, Any] = options[0] if len(options) == 1 else {"anyOf": options}
    if defs:
        schema = {**schema, "$defs": defs}
    return schema


# --- streaming --------------------------------------------------------------------------------------------

class ToolCallStream:
    """Splits streamed answer text into text deltas and LangChain tool_call_chunks: text that may still become
    `<tool_call>` is held back; once a call's name is known, one chunk carries name and id, then the
    arguments' JSON follows in pieces (all but the call's closing brace)."""

    def __init__(self, plan: OutputPlan):
        self.plan = plan
        self.text = ""
        self._mode: str | None = None if plan.calls_possible else "text"
        self._sent = 0
        self.call_id: str | None = None
        self._args_start: int | None = None

    def feed(self, delta: str, final: bool = False) -> Iterator[tuple[str, Any]]:
        """("text", str) and ("tool_call_chunk", dict) events for the new text."""
        self.text += delta
        if self._mode is None:
            if self.text.startswith(TOOL_CALL_TAG):
                self._mode = "call"
            elif not TOOL_CALL_TAG.startswith(self.text) or final:
                self._mode = "text"
            else:
                return
        if self._mode == "text":
            if len(self.text) > self._sent:
                yield "text", self.text[self._sent:]
                self._sent = len(self.text)
            return
        body = self.text[len(TOOL_CALL_TAG):]
        if self._args_start is None:
            head = re.match(r'\{"name": "((?:[^"\\]|\\.)*)", "arguments": ', body)
            if head is None:
                return
            self.call_id = new_call_id()
            self._args_start = self._sent = head.end()
            yield "tool_call_chunk", {"name": json.loads(f'"{head.group(1)}"'), "args": "", "id": self.call_id,
                                      "index": 0, "type": "tool_call_chunk"}
        # the last character may be the call's closing brace, which is not part of the arguments
        end = len(body) - 1 if not final or body.endswith("}") else len(body)
        if end > self._sent:
            yield "tool_call_chunk", {"name": None, "args": body[self._sent:end], "id": None, "index": 0,
                                      "type": "tool_call_chunk"}
            self._sent = end


# --- LangChain output parser --------------------------------------------------------------------------

def _parser_base():
    from langchain_core.output_parsers.transform import BaseCumulativeTransformOutputParser

    return BaseCumulativeTransformOutputParser


class StructuredOutputParser(_parser_base()):
    """A chat answer -> the plan's JSON value (a pydantic instance when `pydantic_object` is set).

    Streaming yields growing partial values (pydantic: only those that validate); the end of a stream and a
    whole answer are checked strictly: an answer cut at max_tokens (finish_reason "length"), invalid JSON or a
    value the pydantic class refuses raises `OutputParserException`, whose message says which."""

    plan: Any
    pydantic_object: Any = None

    def parse_result(self, result, *, partial: bool = False):
        from langchain_core.exceptions import OutputParserException
        from langchain_core.utils.json import parse_partial_json

        generation = result[0]
        text = generation.text
        if partial:
            try:
                value = parse_partial_json(text)
            except (json.JSONDecodeError, ValueError):
                return None
            return self._validate(value, partial=True) if value is not None else None
        message = getattr(generation, "message", None)
        finish = (message.response_metadata.get("finish_reason") if message is not None else None)
        parsed = self.plan.parse(text, finish)
        if parsed.error is not None:
            raise OutputParserException(parsed.error, llm_output=text)
        return self._validate(parsed.value, partial=False)

    def _validate(self, value, *, partial: bool):
        from langchain_core.exceptions import OutputParserException
        from pydantic import ValidationError
        from pydantic.v1 import ValidationError as ValidationErrorV1

        if self.pydantic_object is None:
            return value
        try:
            cls = self.pydantic_object  # pydantic 2 classes validate with model_validate, pydantic.v1 ones parse_obj
            return cls.model_validate(value) if hasattr(cls, "model_validate") else cls.parse_obj(value)
        except (ValidationError, ValidationErrorV1) as e:
            if partial:
                return None
            raise OutputParserException(f"the answer does not validate as {self.pydantic_object.__name__}: {e}",
                                        llm_output=json.dumps(value)) from e

    def parse(self, text: str):
        from langchain_core.outputs import Generation

        return self.parse_result([Generation(text=text)])

    # the stream's end is parsed strictly too (LangChain's cumulative parsers only parse partially)
    def _transform(self, input):  # noqa: A002 - LangChain's name
        acc, previous = None, None
        for chunk in input:
            acc = _as_chunk(chunk) if acc is None else acc + _as_chunk(chunk)
            value = self.parse_result([_generation(acc)], partial=True)
            if value is not None and value != previous:
                previous = value
                yield value
        if acc is not None and (final := self.parse_result([_generation(acc)])) != previous:
            yield final

    async def _atransform(self, input):  # noqa: A002
        acc, previous = None, None
        async for chunk in input:
            acc = _as_chunk(chunk) if acc is None else acc + _as_chunk(chunk)
            value = self.parse_result([_generation(acc)], partial=True)
            if value is not None and value != previous:
                previous = value
                yield value
        if acc is not None and (final := self.parse_result([_generation(acc)])) != previous:
            yield final

    @property
    def _type(self) -> str:
        return "ibllm_structured_output"


def _as_chunk(chunk):
    from langchain_core.messages import AIMessageChunk, BaseMessageChunk

    if isinstance(chunk, BaseMessageChunk):
        return chunk
    if hasattr(chunk, "content"):
        return AIMessageChunk(content=chunk.content, response_metadata=getattr(chunk, "response_metadata", {}))
    return AIMessageChunk(content=str(chunk))


def _generation(chunk):
    from langchain_core.outputs import ChatGeneration

    return ChatGeneration(message=chunk)


# --- OpenAI requests ------------------------------------------------------------------------------------

def from_openai(response_format: dict | None = None, tools: list | None = None,
                tool_choice: Any = None) -> OutputPlan:
    """An OpenAI chat request's `response_format`, `tools` and `tool_choice` -> an `OutputPlan`. Raises
    `StructuredRequestError` (with `.param`) for what cannot be used: answer it with HTTP 400.

        plan = from_openai(body.get("response_format"), body.get("tools"), body.get("tool_choice"))
        # the prompt: plan.context() first in the template's Input (ChatImageBindLLM.prepare does this when
        # given tools=, tool_choice=, response_format=); the decoding: replace(generation, constraint=plan.constraint())
        message, finish_reason = to_openai(plan, text, finish_reason)             # a whole answer
        split = ToolCallStream(plan)                                               # or streamed:
        deltas = [openai_delta(e) for e in split.feed(delta)]  # ..., then split.feed("", final=True)
    """
    answer_schema, json_answer, describe = None, False, True
    if response_format is not None:
        if not isinstance(response_format, dict) or "type" not in response_format:
            raise StructuredRequestError("response_format must be an object with a type", "response_format")
        kind = response_format["type"]
        if kind == "json_object":
            json_answer, describe = True, False
        elif kind == "json_schema":
            spec = response_format.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
                raise StructuredRequestError("response_format.json_schema.schema must be a JSON Schema object",
                                             "response_format")
            answer_schema = spec["schema"]
        elif kind != "text":
            raise StructuredRequestError(f"response_format.type must be text, json_object or json_schema, got "
                                         f"{kind!r}", "response_format")
    if tools is not None and not isinstance(tools, list):
        raise StructuredRequestError("tools must be a list", "tools")
    for i, tool in enumerate(tools or []):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise StructuredRequestError(f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}",
                                         f"tools[{i}]")
        if "parameters" not in tool["function"]:
            tool["function"] = {**tool["function"], "parameters": {"type": "object", "properties": {}}}
    if tool_choice is not None and not tools and tool_choice != "none":
        raise StructuredRequestError("tool_choice is set but no tools are given", "tool_choice")
    return OutputPlan.make(tools or (), tool_choice, answer_schema=answer_schema, json_answer=json_answer,
                           describe_schema=describe)


def to_openai(plan: OutputPlan, text: str, finish_reason: str) -> tuple[dict[str, Any], str]:
    """An answer -> (OpenAI assistant message, OpenAI finish_reason): a call becomes `tool_calls` (arguments as
    JSON text) with finish_reason "tool_calls"; a cut answer keeps "length" and its text as content."""
    parsed = plan.parse(text, finish_reason)
    if parsed.tool_calls:
        calls = [{"id": c["id"], "type": "function",
                  "function": {"name": c["name"], "arguments": json.dumps(c["args"], ensure_ascii=False)}}
                 for c in parsed.tool_calls]
        return {"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls"
    return {"role": "assistant", "content": text}, finish_reason


def openai_delta(event: tuple[str, Any]) -> dict[str, Any]:
    """A `ToolCallStream` event -> the `delta` of an OpenAI streaming chunk (`content`, or `tool_calls` with the
    call's id, type and name in its first piece and the arguments' JSON text in pieces)."""
    kind, value = event
    if kind == "text":
        return {"content": value}
    function = {"arguments": value["args"]} if value["name"] is None else {"name": value["name"], "arguments": ""}
    call = {"index": value["index"], "function": function}
    if value["id"] is not None:
        call.update(id=value["id"], type="function")
    return {"tool_calls": [call]}
