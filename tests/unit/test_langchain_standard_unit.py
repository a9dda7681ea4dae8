"""The langchain-tests *unit* suites for the chat model, the embeddings and every perception tool.

Capability flags are honest (see tests/integration/test_langchain_standard.py for the integration suites).
"""

from __future__ import annotations

from langchain_standard import MODEL, ChatSuite, EmbeddingsSuite, tool_suites
from langchain_tests.unit_tests import ChatModelUnitTests, EmbeddingsUnitTests, ToolsUnitTests


class TestChatImageBindLLMUnit(ChatSuite, ChatModelUnitTests):
    @property
    def chat_model_params(self):
        return {"model": MODEL}


class TestChatImageBindLLMRemoteUnit(TestChatImageBindLLMUnit):
    """Remote mode (no server needed: nothing here sends a request), where api_key and max_retries are honoured."""

    @property
    def chat_model_params(self):
        return {"model": MODEL, "base_url": "http://127.0.0.1:9/v1"}

    @property
    def standard_chat_model_params(self):
        return super(ChatSuite, self).standard_chat_model_params


class TestImageBindEmbeddingsUnit(EmbeddingsSuite, EmbeddingsUnitTests):
    pass


globals().update(tool_suites(ToolsUnitTests, "Unit"))
