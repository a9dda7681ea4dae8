"""ChatImageBindLLM on the tiny random model: prompts, history, media fusion, streaming, batching, async."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pydantic
import pytest
import torch
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from ibllm_agent.chat_models import ChatImageBindLLM, ContextWindowWarning
from ibllm_agent.content_blocks import ContentError, embedding_block
from ibllm_agent.factory import load
from ibllm_agent.fusion import FusionError, fuse
from ibllm_agent.generation import format_prompt
from ibllm_agent.grammar import engine_available
from ibllm_agent.params import ParamsError, VisualCacheParams


@pytest.fixture(scope="module")
def chat():
    return ChatImageBindLLM(model="tiny", temperature=0, max_tokens=12)


@pytest.fixture(scope="module")
def short_llm():
    """A tiny model with a 300-token context window (about three of the turns below), to exercise history dropping."""
    return load("tiny", max_seq_len=300)


def direct(llm, prompt: str, feature=None, max_gen_len=12):
    """What the model itself answers (no LangChain): the reference for every comparison here."""
    features = None if feature is None else feature[None]
    return llm.generate_batch([prompt], features, max_tokens=max_gen_len, temperature=0.0)[0]


def test_invoke_is_the_models_answer_to_the_upstream_prompt(chat):
    msg = chat.invoke("What is in the picture?")
    ref = direct(chat.llm, format_prompt("What is in the picture?"))
    assert isinstance(msg, AIMessage)
    assert msg.content == ref.text
    assert msg.usage_metadata == {"input_tokens": ref.prompt_tokens, "output_tokens": len(ref.token_ids),
                                  "total_tokens": ref.prompt_tokens + len(ref.token_ids)}
    meta = msg.response_metadata
    assert meta["model_name"] == "tiny" and meta["finish_reason"] == ref.finish_reason
    assert meta["cache_neighbors"] == [] and meta["media"] == []


def test_models_built_from_one_name_share_memory(chat):
    other = ChatImageBindLLM(model="tiny")
    assert other.llm is chat.llm
    assert ChatImageBindLLM(model=chat.llm).llm is chat.llm


def test_usual_constructor_arguments_are_accepted():
    chat = ChatImageBindLLM(model="tiny", temperature=0.3, max_tokens=5, top_p=0.9, stop=["x"], seed=3, timeout=30)
    assert (chat.temperature, chat.max_tokens, chat.top_p, chat.stop, chat.seed) == (0.3, 5, 0.9, ["x"], 3)
    assert chat._get_ls_params()["ls_model_name"] == "tiny"


@pytest.mark.parametrize(("kwargs", "reason"), [({"max_retries": 2}, "options of remote mode"),
                                              ({"api_key": "x"}, "options of remote mode"),
                                              ({"temprature": 0.0}, "Extra inputs are not permitted"),
                                              ({"cache_size": 3}, "Extra inputs are not permitted")])
def test_options_the_model_would_ignore_are_refused(kwargs, reason):
    """A local model has nothing to retry and no key to send (those are remote mode's, with base_url):
    accepting them (or a typo) and ignoring them would leave the caller believing they took effect."""
    with pytest.raises(pydantic.ValidationError, match=reason):
        ChatImageBindLLM(model="tiny", **kwargs)


@pytest.mark.parametrize("kwargs", [{"device": "cuda"}, {"max_batch_size": 4}, {"model": None}])
def test_remote_mode_refuses_the_local_model_options(kwargs):
    """With base_url the server's model answers: local load options would be ignored, so they are refused (and
    nothing is loaded: no server needs to run for this)."""
    with pytest.raises(pydantic.ValidationError, match="local model|name the server serves"):
        ChatImageBindLLM(base_url="http://127.0.0.1:9/v1", **kwargs)


def test_unknown_call_options_and_bad_values_are_refused(chat):
    with pytest.raises(ValueError, match=r"unknown call options \['temprature'\]"):
        chat.invoke("hi", temprature=0.5)
    with pytest.raises(ParamsError, match="generation.top_p"):
        chat.invoke("hi", top_p=0)
    with pytest.raises(ParamsError, match="visual_cache.size"):
        chat.invoke("hi", visual_cache={"size": 0})


def test_stream_token_by_token_equals_invoke(chat):
    chunks = list(chat.stream("Tell me about rain."))
    text_chunks = [c for c in chunks if c.content]
    assert len(text_chunks) > 1
    assert "".join(c.content for c in chunks) == chat.invoke("Tell me about rain.").content
    assert [c.usage_metadata is not None for c in chunks].count(True) == 1
    assert chunks[-1].chunk_position == "last" and chunks[-1].response_metadata["model_name"] == "tiny"


def test_callbacks_get_each_token_once(chat):
    class Tokens(BaseCallbackHandler):
        def __init__(self):
            self.tokens = []

        def on_llm_new_token(self, token, **kwargs):
            self.tokens.append(token)

    handler = Tokens()
    streamed = "".join(c.content for c in chat.stream("hi", config={"callbacks": [handler]}))
    assert "".join(handler.tokens) == streamed and len(handler.tokens) > 1
    quiet = Tokens()
    chat.invoke("hi", config={"callbacks": [quiet]})
    assert quiet.tokens == []


def test_per_call_overrides(chat):
    msg = chat.invoke("Count to ten.", max_tokens=3)
    assert msg.usage_metadata["output_tokens"] <= 3 and msg.response_metadata["finish_reason"] == "length"
    a = chat.invoke("Count", temperature=1.0, seed=7).content
    b = chat.invoke("Count", temperature=1.0, seed=7).content
    assert a == b  # seeded sampling is reproducible


def test_stop_sequence_cuts_the_answer(chat):
    full = chat.invoke("hello").content
    stop = full[3:5]
    assert stop and chat.invoke("hello", stop=[stop]).content == full[: full.index(stop)]


def test_embedding_block_conditions_the_answer(chat):
    torch.manual_seed(0)
    vec = torch.randn(chat.llm.feature_dim)
    msg = chat.invoke([HumanMessage(content=["Describe it.", embedding_block(vec, name="emb_1")])])
    assert msg.content == direct(chat.llm, format_prompt("Describe it."), vec).text
    assert msg.response_metadata["media"] == ["emb_1"]


def test_weighted_embedding_blocks_are_fused_like_upstream(chat):
    torch.manual_seed(1)
    a, b = torch.randn(2, chat.llm.feature_dim)
    msg = chat.invoke([HumanMessage(content=[embedding_block(a, 0.25), embedding_block(b, 0.75)])])
    fused = chat.llm.fuse(torch.stack([a, b]), [0.25, 0.75])
    assert torch.equal(fuse(torch.stack([a, b]), [0.25, 0.75]), fused)
    assert msg.content == direct(chat.llm, format_prompt(chat.default_question), fused).text
    with pytest.raises(FusionError, match="is 0"):
        chat.invoke([HumanMessage(content=[embedding_block(a, 1.0), embedding_block(b, 0.0)])])


def test_media_of_an_earlier_turn_stay_with_the_conversation(chat):
    torch.manual_seed(2)
    vec = torch.randn(chat.llm.feature_dim)
    conversation = [HumanMessage(content=["What is it?", embedding_block(vec)]), AIMessage("A thing."),
                    HumanMessage("What colour?")]
    request = chat.prepare(conversation)
    torch.testing.assert_close(request.feature, vec)
    assert "User: What is it?" in request.prompt and "Assistant: A thing." in request.prompt


def test_system_prompt_and_history_go_into_the_input_context(chat):
    request = chat.prepare([SystemMessage("Be brief."), HumanMessage("Hi"), AIMessage("Hello!"),
                            ToolMessage("42", tool_call_id="t1"), HumanMessage("And now?")])
    assert request.prompt == format_prompt("And now?", "Be brief.\n\nUser: Hi\nAssistant: Hello!\nTool result: 42")
    assert chat.prepare([HumanMessage("Only this")]).prompt == format_prompt("Only this")


def test_oldest_turns_dropped_with_a_warning_never_the_question(short_llm):
    chat = ChatImageBindLLM(model=short_llm, temperature=0, max_tokens=10)
    history = []
    for i in range(6):
        history += [HumanMessage(f"question {i} " + "word " * 4), AIMessage(f"answer {i}")]
    with pytest.warns(ContextWindowWarning, match="dropped the"):
        request = chat.prepare([SystemMessage("sys"), *history, HumanMessage("final question")])
    assert request.dropped_messages > 0
    assert "final question" in request.prompt and "sys" in request.prompt
    assert "question 0" not in request.prompt and "answer 5" in request.prompt
    assert request.prompt_tokens <= short_llm.max_seq_len - 10
    with pytest.raises(ValueError, match="shorten it or lower max_tokens"):
        chat.invoke("very long " * 200)


def test_bad_input_is_a_readable_error(chat):
    with pytest.raises(ValueError, match="at least one human message"):
        chat.invoke([SystemMessage("only a system prompt")])
    with pytest.raises(ValueError, match="has 3 values; this model's ImageBind features have 1024"):
        chat.invoke([HumanMessage(content=[embedding_block([1.0, 2.0, 3.0])])])
    with pytest.raises(ContentError, match=r"content block 1 \(image\): URLs are disabled"):
        chat.invoke([HumanMessage(content=["look", {"type": "image", "url": "https://example.com/a.png"}])])


def test_confined_media_roots(tmp_path):
    chat = ChatImageBindLLM(model="tiny", media_roots=[str(tmp_path)])
    with pytest.raises(ContentError, match="outside the allowed media folders"):
        chat.invoke([HumanMessage(content=[{"type": "image", "url": "/etc/hostname"}])])


def test_batch_and_threads_equal_one_by_one(chat):
    questions = [f"Question {i}: " + "more " * i for i in range(8)]
    one_by_one = [chat.invoke(q).content for q in questions]
    assert [m.content for m in chat.batch(questions)] == one_by_one
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda q: chat.invoke(q).content, questions)) == one_by_one


async def test_async_does_not_block_the_event_loop():
    chat = ChatImageBindLLM(model="tiny", temperature=0, max_tokens=60)
    ticks = 0
    stop = asyncio.Event()

    async def ticker():
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    start = time.perf_counter()
    msg = await chat.ainvoke("Tell me a long story.")
    streamed = "".join([c.content async for c in chat.astream("Tell me a long story.")])
    elapsed = time.perf_counter() - start
    stop.set()
    await task
    assert streamed == msg.content
    assert ticks >= 5, f"the loop ticked only {ticks} times in {elapsed:.2f} s"


def test_timeout(chat):
    impatient = ChatImageBindLLM(model=chat.llm, temperature=0, max_tokens=50, timeout=1e-9)
    with pytest.raises(TimeoutError):
        list(impatient.stream("Tell me a story."))
    with pytest.raises(TimeoutError):
        impatient.invoke("Tell me a story.")


def test_token_counts_use_the_models_tokenizer(chat):
    text = "How many tokens is this?"
    assert chat.get_token_ids(text) == chat.llm.tokenizer.encode(text, bos=False, eos=False)
    assert chat.get_num_tokens(text) == len(chat.get_token_ids(text))


def test_cache_settings_per_call_and_neighbours_in_metadata():
    from ibllm_agent.cache.faiss import FaissCache

    llm = load("tiny")
    torch.manual_seed(3)
    stored = torch.nn.functional.normalize(torch.randn(4, llm.feature_dim), dim=-1)
    llm.visual_cache = FaissCache.from_vectors(stored.numpy(), ids=["a", "b", "c", "d"],
                                        metadatas=[{"caption": c} for c in "abcd"])
    chat = ChatImageBindLLM(model=llm, temperature=0, max_tokens=6, visual_cache={"enabled": True, "size": 2})
    assert chat.visual_cache == VisualCacheParams(enabled=True, size=2)
    message = [HumanMessage(content=["What is it?", embedding_block(stored[2] + 0.1 * stored[0])])]
    used = chat.invoke(message).response_metadata["cache_neighbors"]
    assert [n["id"] for n in used] == ["c", "a"] and sum(n["weight"] for n in used) == pytest.approx(1.0)
    assert used[0]["metadata"] == {"caption": "c"}
    assert chat.invoke(message, visual_cache=False).response_metadata["cache_neighbors"] == []
    assert len(chat.invoke(message, visual_cache=VisualCacheParams(size=3)).response_metadata["cache_neighbors"]) == 3
    streamed = [c for c in chat.stream(message) if c.response_metadata]
    assert [n["id"] for n in streamed[-1].response_metadata["cache_neighbors"]] == ["c", "a"]


def test_profile_is_honest(chat):
    profile = chat.profile
    assert profile["tool_calling"] is profile["structured_output"] is engine_available()  # grammar-constrained
    assert profile["image_inputs"] and profile["audio_inputs"] and profile["video_inputs"]
    assert profile["max_input_tokens"] == chat.llm.max_seq_len
