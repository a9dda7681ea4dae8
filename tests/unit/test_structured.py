"""Structured output and tool calling: the plan (prompt, grammar, parsing), the OpenAI mapping the server uses,
and the chat model's `with_structured_output` / `bind_tools` on the toy model."""

from __future__ import annotations

import base64
import json
from typing import Annotated, Literal

import pytest
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from ibllm_agent.chat_models import ChatImageBindLLM
from ibllm_agent.structured import (
    TOOL_CALL_TAG,
    OutputPlan,
    StructuredRequestError,
    ToolCallStream,
    call_schema,
    from_openai,
    openai_delta,
    schema_outline,
    to_openai,
    tool_specs,
)

pytest.importorskip("llguidance")


class Weather(BaseModel):
    """Get the weather of a city."""

    city: str = Field(description="the city", max_length=12)
    days: int = Field(default=1, ge=1, le=7)


class _Pair(BaseModel):
    a: int = Field(ge=0, le=99)  # bounded: the toy, before it learns tool use, repeats unbounded digits
    b: int = Field(ge=0, le=99)


@tool(args_schema=_Pair)
def add_numbers(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


class Animal(BaseModel):
    """An animal of the toy world."""

    name: Literal["dog", "cat", "bird", "bee"]
    legs: int = Field(ge=0, le=8)


class AnimalDict(TypedDict):
    name: Annotated[Literal["dog", "cat", "bird", "bee"], ..., "which animal"]
    legs: Annotated[Literal[0, 2, 4, 6, 8], ..., "how many legs"]  # bounded: the toy repeats unbounded digits


ANIMAL_SCHEMA = {"title": "Animal", "type": "object", "required": ["name", "legs"],
                 "properties": {"name": {"enum": ["dog", "cat", "bird", "bee"]},
                                "legs": {"type": "integer", "minimum": 0, "maximum": 8}}}


@pytest.fixture(scope="module")
def chat():
    return ChatImageBindLLM(model="toy", temperature=0, max_tokens=120)


# --- the plan ------------------------------------------------------------------------------------------------

def test_tools_become_specs_and_the_prompt_lists_them_in_a_fixed_format():
    specs = tool_specs([Weather, add_numbers, {"type": "function", "function": {
        "name": "ring", "description": "Ring a bell.", "parameters": {"type": "object", "properties": {}}}}])
    assert [s.name for s in specs] == ["Weather", "add_numbers", "ring"]
    plan = OutputPlan.make([Weather, add_numbers], "any")
    assert plan.context() == (
        'Tools:\n- Weather {"city": string, "days": integer?}: Get the weather of a city.\n'
        '- add_numbers {"a": integer, "b": integer}: Add two numbers.\nCall one of the tools.')
    assert OutputPlan.make([add_numbers], "add_numbers").context().endswith("Call the tool add_numbers.")
    assert OutputPlan.make([add_numbers]).context().endswith("Answer, or call a tool.")
    assert OutputPlan.make([add_numbers], "none").context() == "" and OutputPlan.make([add_numbers], "none").constraint() is None


@pytest.mark.parametrize("tools, choice, words", [
    ([{"name": "bare"}], None, "no argument schema"),
    ([add_numbers, {"type": "function", "function": {"name": "add_numbers", "parameters": {"type": "object"}}}],
     None, "two different tools are named"),
    ([{"type": "function", "function": {"name": "a b", "parameters": {"type": "object"}}}], None, "tool name"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}], None, "must be a JSON Schema object"),
    ([add_numbers], "multiply", "not a bound tool"),
    ([], "any", "needs at least one bound tool"),
    ([add_numbers], 42, "tool_choice must be"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "x": {"type": "strin"}}}}}], None, "Invalid type"),
])
def test_bad_tools_and_tool_choices_are_refused_with_the_reason(tools, choice, words):
    with pytest.raises(StructuredRequestError, match=words):
        OutputPlan.make(tools, choice)


def test_tool_schemas_with_definitions_are_nested_correctly():
    class Item(BaseModel):
        name: str = Field(max_length=4)

    class Order(BaseModel):
        """Order items."""

        items: list[Item] = Field(max_length=2)

    raw = {"type": "function", "function": {"name": "order", "parameters": Order.model_json_schema()}}
    schema = call_schema(tool_specs([raw, add_numbers]))
    assert "t0_Item" in schema["$defs"] and "$defs" not in schema["anyOf"][0]["properties"]["arguments"]
    assert schema["anyOf"][0]["properties"]["arguments"]["properties"]["items"]["items"] == {"$ref": "#/$defs/t0_Item"}
    assert OutputPlan.make([raw, Order, add_numbers]).constraint().kind == "lark"
    assert schema_outline(Order.model_json_schema()) == '{"items": [{"name": string}, ...]}'


def test_answers_are_read_back_as_calls_text_or_json_and_cut_ones_are_reported():
    plan = OutputPlan.make([add_numbers])
    call = plan.parse(TOOL_CALL_TAG + '{"name": "add_numbers", "arguments": {"a": 1, "b": 2}}', "stop")
    assert call.content == "" and call.tool_calls[0]["args"] == {"a": 1, "b": 2}
    assert call.tool_calls[0]["id"].startswith("call_") and call.tool_calls[0]["type"] == "tool_call"
    cut = plan.parse(TOOL_CALL_TAG + '{"name": "add_numbers", "arguments": {"a": 1', "length")
    assert not cut.tool_calls and cut.invalid_tool_calls[0]["name"] == "add_numbers" and "max_tokens" in cut.error
    assert plan.parse("Three.", "stop").content == "Three."
    json_plan = OutputPlan.make(answer_schema=ANIMAL_SCHEMA)
    assert json_plan.parse('{"name": "dog", "legs": 4}', "stop").value == {"name": "dog", "legs": 4}
    assert "max_tokens" in json_plan.parse('{"name": "dog", "le', "length").error


def test_a_streamed_call_sums_to_the_call():
    plan = OutputPlan.make([add_numbers])
    text = TOOL_CALL_TAG + '{"name": "add_numbers", "arguments": {"a": 10, "b": {"x": 2}}}'
    split, chunks = ToolCallStream(plan), []
    for i in range(0, len(text), 3):
        chunks += [c for _, c in split.feed(text[i:i + 3])]
    chunks += [c for _, c in split.feed("", final=True)]
    total = AIMessageChunk(content="", tool_call_chunks=[chunks[0]])
    for c in chunks[1:]:
        total += AIMessageChunk(content="", tool_call_chunks=[c])
    assert total.tool_calls[0]["args"] == {"a": 10, "b": {"x": 2}} and total.tool_calls[0]["name"] == "add_numbers"
    text_split = ToolCallStream(plan)
    assert list(text_split.feed("<to")) == [] and list(text_split.feed("day")) == [("text", "<today")]


# --- the OpenAI mapping (for the server) ----------------------------------------------------------------------

def test_openai_requests_map_to_a_plan_and_results_to_openai_messages():
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather.",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                              "required": ["city"]}}}]
    plan = from_openai(None, tools, {"type": "function", "function": {"name": "get_weather"}})
    assert plan.tool_mode == "required" and plan.forced_tool == "get_weather" and "get_weather" in plan.context()
    message, finish = to_openai(plan, TOOL_CALL_TAG + '{"name": "get_weather", "arguments": {"city": "Oslo"}}', "stop")
    assert finish == "tool_calls" and message["content"] is None
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
    assert message["tool_calls"][0]["type"] == "function" and message["tool_calls"][0]["id"].startswith("call_")
    assert to_openai(from_openai(), "Hello.", "stop") == ({"role": "assistant", "content": "Hello."}, "stop")
    schema_plan = from_openai({"type": "json_schema", "json_schema": {"name": "a", "schema": ANIMAL_SCHEMA}})
    assert schema_plan.constraint().kind == "json_schema" and "Answer in JSON" in schema_plan.context()
    json_mode = from_openai({"type": "json_object"})
    assert json_mode.constraint() is not None and json_mode.context() == ""
    assert to_openai(schema_plan, '{"name": "do', "length") == ({"role": "assistant", "content": '{"name": "do'}, "length")
    assert from_openai(None, [{"type": "function", "function": {"name": "ring"}}]).tools[0].parameters["type"] == "object"


def test_a_streamed_call_becomes_openai_deltas():
    plan = from_openai(None, [{"type": "function", "function": {"name": "ring", "parameters": {
        "type": "object", "properties": {"n": {"type": "integer"}}}}}])
    split, deltas = ToolCallStream(plan), []
    text = TOOL_CALL_TAG + '{"name": "ring", "arguments": {"n": 12}}'
    for i in range(0, len(text), 4):
        deltas += [openai_delta(e) for e in split.feed(text[i:i + 4])]
    deltas += [openai_delta(e) for e in split.feed("", final=True)]
    first = deltas[0]["tool_calls"][0]
    assert first["id"].startswith("call_") and first["type"] == "function" and first["function"]["name"] == "ring"
    assert "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas) == '{"n": 12}'
    assert [openai_delta(e) for e in ToolCallStream(plan).feed("Hi", final=True)] == [{"content": "Hi"}]


@pytest.mark.parametrize("kwargs, param", [
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a"}}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "strin"}}}}, "response_format"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0]"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "g"}, "tool_choice"),
])
def test_bad_openai_requests_name_the_field_for_a_400(kwargs, param):
    with pytest.raises(StructuredRequestError) as info:
        from_openai(**kwargs)
    assert info.value.param == param


# --- the chat model --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("schema, kind", [(Animal, Animal), (AnimalDict, dict), (ANIMAL_SCHEMA, dict)])
@pytest.mark.parametrize("method", ["json_schema", "json_mode", "function_calling"])
def test_with_structured_output_always_gives_a_valid_value(chat, schema, kind, method):
    result = chat.with_structured_output(schema, method=method).invoke("What animal has four legs?")
    assert isinstance(result, kind)
    value = result.model_dump() if isinstance(result, BaseModel) else result
    assert value["name"] in ("dog", "cat", "bird", "bee") and 0 <= value["legs"] <= 8
    streamed = list(chat.with_structured_output(schema, method=method).stream("What animal has four legs?"))
    assert streamed and streamed[-1] == result


def test_include_raw_reports_a_cut_answer_and_plain_parsing_raises(chat):
    class Essay(BaseModel):
        text: str = Field(min_length=200)

    short = chat.bind(max_tokens=12)
    out = short.with_structured_output(Essay, include_raw=True).invoke("Describe it in detail.")
    assert out["parsed"] is None and isinstance(out["parsing_error"], OutputParserException)
    assert "max_tokens" in str(out["parsing_error"]) and out["raw"].response_metadata["finish_reason"] == "length"
    with pytest.raises(OutputParserException, match="max_tokens"):
        short.with_structured_output(Essay).invoke("Describe it in detail.")
    ok = chat.with_structured_output(Animal, include_raw=True).invoke("What animal is this?")
    assert isinstance(ok["parsed"], Animal) and ok["parsing_error"] is None and isinstance(ok["raw"], AIMessage)


def test_structured_output_describes_media(chat, tmp_path):
    from ibllm_agent import toy

    sample = toy.ToyWorld(seed=3).write("dog", "audio", 0, tmp_path)
    audio = base64.b64encode(open(sample.path, "rb").read()).decode()
    message = HumanMessage(content=[{"type": "text", "text": "What is this?"},
                                    {"type": "audio", "base64": audio, "mime_type": "audio/wav"}])
    result = chat.with_structured_output(Animal).invoke([message])
    assert isinstance(result, Animal)


def test_bound_tools_give_calls_with_ids_and_content_blocks(chat):
    bound = chat.bind_tools([add_numbers], tool_choice="any")
    message = bound.invoke("What is 2 plus 3?")
    [call] = message.tool_calls
    assert call["name"] == "add_numbers" and set(call["args"]) == {"a", "b"} and call["id"]
    assert [b["type"] for b in message.content_blocks] == ["tool_call"]
    total = None
    for chunk in bound.stream("What is 2 plus 3?"):
        total = chunk if total is None else total + chunk
    assert total.tool_calls[0]["name"] == "add_numbers" and total.tool_calls[0]["args"] == call["args"]
    assert any(c.get("type") == "tool_call_chunk" for c in total.tool_call_chunks)
    weather = chat.bind_tools([add_numbers, Weather], tool_choice="Weather").invoke("Hello!")
    assert weather.tool_calls[0]["name"] == "Weather" and isinstance(weather.tool_calls[0]["args"]["city"], str)


def test_bind_tools_refuses_bad_input_at_bind_time(chat):
    with pytest.raises(StructuredRequestError, match="no argument schema"):
        chat.bind_tools([{"name": "bare"}])
    with pytest.raises(StructuredRequestError, match="not a bound tool"):
        chat.bind_tools([add_numbers], tool_choice="Weather")
    with pytest.raises(ValueError, match="unknown arguments"):
        chat.with_structured_output(Animal, tools=[add_numbers])
    assert len(OutputPlan.make([Animal, Animal.model_json_schema()]).tools) == 1  # the same tool twice


def test_tool_calls_and_results_in_the_history_go_into_the_prompt(chat):
    messages = [SystemMessage("Be brief."), HumanMessage("What is 1 + 2?"),
                AIMessage("", tool_calls=[{"name": "add_numbers", "args": {"a": 1, "b": 2}, "id": "c1",
                                           "type": "tool_call"}]),
                ToolMessage("3", tool_call_id="c1")]
    request = chat.prepare(messages, tools=tool_specs_as_openai([add_numbers]))
    assert ('Assistant: <tool_call>{"name": "add_numbers", "arguments": {"a": 1, "b": 2}}\n'
            "Tool result (add_numbers): 3") in request.prompt
    assert request.prompt.index("Tools:") < request.prompt.index("Be brief.")
    answer = chat.bind_tools([add_numbers]).invoke(messages)
    assert isinstance(answer, AIMessage)


def tool_specs_as_openai(tools):
    return [{"type": "function", "function": {"name": s.name, "description": s.description, "parameters": s.parameters}}
            for s in tool_specs(tools)]
