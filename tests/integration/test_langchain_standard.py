"""The langchain-tests integration suites for the chat model, the embeddings and every perception tool.

Capability flags are honest: tool calling, tool_choice, structured output and JSON mode are on (they are
grammar-constrained: the form is guaranteed, the values are the toy's); the image/audio input flags stay off
because the standard multimodal tests download their media from the internet - tests/integration/test_chat_multimodal.py and
tests/unit/test_chat_models.py send the same block shapes with real local files. The unit suites are
in tests/unit/test_langchain_standard_unit.py.
"""

from __future__ import annotations

from langchain_standard import MODEL, ChatSuite, EmbeddingsSuite, tool_suites
from langchain_tests.integration_tests import (
    ChatModelIntegrationTests,
    EmbeddingsIntegrationTests,
    ToolsIntegrationTests,
)


class TestChatImageBindLLMIntegration(ChatSuite, ChatModelIntegrationTests):
    @property
    def chat_model_params(self):
        # the suite's own default: a tool call or a JSON answer takes about one token per character in
        # the toy's 700-piece vocabulary, which has no pieces for JSON punctuation yet
        return {"model": MODEL, "max_tokens": 100}

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_image_inputs(self) -> bool:
        return False  # the standard test fetches its PNG from the internet; see test_chat_multimodal.py

    @property
    def supports_audio_inputs(self) -> bool:
        return False  # the standard test fetches its WAV from the internet; see test_chat_multimodal.py


class TestImageBindEmbeddingsIntegration(EmbeddingsSuite, EmbeddingsIntegrationTests):
    pass


globals().update(tool_suites(ToolsIntegrationTests, "Integration"))
