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


class TestImageBindEmbeddingsUnit(EmbeddingsSuite, EmbeddingsUnitTests):
    pass


globals().update(tool_suites(ToolsUnitTests, "Unit"))
