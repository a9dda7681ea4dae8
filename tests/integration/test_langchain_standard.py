"""The langchain-tests integration suites for the chat model, the embeddings and every perception tool.

Capability flags are honest: tool calling, tool_choice, structured output and JSON mode are on (they are
grammar-constrained: the form is guaranteed, the values are the toy's); the image/audio input flags stay off
because the standard multimodal tests download their media from the internet - tests/integration/test_chat_multimodal.py and
tests/unit/test_chat_models.py send the same block shapes with real local files. The unit suites are
in tests/unit/test_langchain_standard_unit.py. The chat model and the embeddings pass them in remote mode too,
against an `ibllm serve` of the same model.
"""

from __future__ import annotations

import atexit
import functools

import pytest
from langchain_standard import MODEL, ChatSuite, EmbeddingsSuite, tool_suites
from langchain_tests.integration_tests import (
    ChatModelIntegrationTests,
    EmbeddingsIntegrationTests,
    ToolsIntegrationTests,
)

from ibllm_agent.serve.process import ServerProcess


@functools.cache
def server_url() -> str:
    """One `ibllm serve` of the model for the remote-mode suites, started when first needed."""
    server = ServerProcess(["--model", MODEL])
    atexit.register(server.stop)
    return server.url


class TestChatImageBindLLMIntegration(ChatSuite, ChatModelIntegrationTests):
    @property
    def chat_model_params(self):
        # the suite's own default: a tool call or a JSON answer takes about one token per character in
        # the toy's 700-piece vocabulary, which has no pieces for JSON punctuation yet
        return {"model": MODEL, "max_tokens": 100}

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_image_inputs(self) -> bool:
        return False  # the standard test fetches its PNG from the internet; see test_chat_multimodal.py

    @property
    def supports_audio_inputs(self) -> bool:
        return False  # the standard test fetches its WAV from the internet; see test_chat_multimodal.py


    # The shipped toy was built before its tool-use data (ibllm_agent/toy/tool_use.py): grammar-constrained
    # decoding gives every call and JSON answer its form, but these values are the toy's. Measured (greedy, so
    # every run alike); strict=False, so the rebuilt toy shows XPASS where it learnt the skill.
    _COPY = "the toy copies 3 into the argument and keeps repeating it until the schema's bound (< 1000) stops it: {'input': 333}"
    _STRING = ("inside a free JSON string the toy never writes the closing quote: the answer is cut at max_tokens "
               "(finish_reason 'length') and reported as not parseable")
    _TEXT = "with tool_choice auto the toy answers in text ('A dog.') instead of calling get_weather"

    @pytest.mark.xfail(reason=_COPY, strict=False)
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)  # as the base test
    def test_tool_calling(self, model) -> None:
        super().test_tool_calling(model)

    @pytest.mark.xfail(reason=_COPY, strict=False)
    async def test_tool_calling_async(self, model) -> None:
        await super().test_tool_calling_async(model)

    @pytest.mark.xfail(reason=_STRING + " (answer_style)", strict=False)
    def test_bind_runnables_as_tools(self, model) -> None:
        super().test_bind_runnables_as_tools(model)

    @pytest.mark.xfail(reason=_STRING + " (the toy picks get_weather under 'any'; location)", strict=False)
    def test_tool_choice(self, model) -> None:
        super().test_tool_choice(model)

    @pytest.mark.xfail(reason=_STRING + " (customer_name)", strict=False)
    def test_unicode_tool_call_integration(self, model, *, tool_choice=None, force_tool_call=True) -> None:
        super().test_unicode_tool_call_integration(model, tool_choice=tool_choice, force_tool_call=force_tool_call)

    @pytest.mark.xfail(reason=_TEXT, strict=False)
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model) -> None:
        super().test_agent_loop(model)

    @pytest.mark.xfail(reason=_STRING + " (setup)", strict=False)
    @pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
    def test_structured_output(self, model, schema_type) -> None:
        super().test_structured_output(model, schema_type)

    @pytest.mark.xfail(reason=_STRING + " (setup)", strict=False)
    @pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
    async def test_structured_output_async(self, model, schema_type) -> None:
        await super().test_structured_output_async(model, schema_type)

    @pytest.mark.xfail(reason=_STRING + " (setup)", strict=False)
    def test_structured_output_pydantic_2_v1(self, model) -> None:
        super().test_structured_output_pydantic_2_v1(model)

    @pytest.mark.xfail(reason=_STRING + " (setup)", strict=False)
    def test_structured_output_optional_param(self, model) -> None:
        super().test_structured_output_optional_param(model)

    @pytest.mark.xfail(reason=_STRING + " (setup)", strict=False)
    def test_json_mode(self, model) -> None:
        super().test_json_mode(model)


class TestChatImageBindLLMRemoteIntegration(TestChatImageBindLLMIntegration):
    @property
    def chat_model_params(self):
        return {**super().chat_model_params, "base_url": server_url()}

    @property
    def standard_chat_model_params(self):
        return super(ChatSuite, self).standard_chat_model_params  # max_retries is honoured in remote mode


class TestImageBindEmbeddingsIntegration(EmbeddingsSuite, EmbeddingsIntegrationTests):
    pass


class TestImageBindEmbeddingsRemoteIntegration(TestImageBindEmbeddingsIntegration):
    @property
    def embedding_model_params(self):
        return {**super().embedding_model_params, "base_url": server_url()}


globals().update(tool_suites(ToolsIntegrationTests, "Integration"))
