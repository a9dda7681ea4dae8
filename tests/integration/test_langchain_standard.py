"""The langchain-tests integration suites for the chat model, the embeddings and every perception tool.

Capability flags are honest: no tool calling or structured output (those tests skip with the
suite's reason); the image/audio input flags stay off because the standard multimodal tests
download their media from the internet - tests/integration/test_chat_multimodal.py and
tests/unit/test_chat_models.py send the same block shapes with real local files. The unit suites are
in tests/unit/test_langchain_standard_unit.py. The chat model and the embeddings pass them in remote mode too,
against an `ibllm serve` of the same model.
"""

from __future__ import annotations

import atexit
import functools

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
        return {"model": MODEL, "max_tokens": 24}

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_image_inputs(self) -> bool:
        return False  # the standard test fetches its PNG from the internet; see test_chat_multimodal.py

    @property
    def supports_audio_inputs(self) -> bool:
        return False  # the standard test fetches its WAV from the internet; see test_chat_multimodal.py


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
