"""One fusion for every layer: the reference's formula for non-negative weights, defined for negative ones."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ibllm_agent.fusion import FusionError, fuse, fusion_weights


def test_non_negative_weights_are_the_reference_bit_for_bit():
    torch.manual_seed(0)
    v = torch.randn(3, 8)
    w = [0.2, 0.3, 1.5]
    # the reference: python-float weights w / (sum(w) + 1e-6), each embedding normalised, added in order
    total = sum(w)
    expected = F.normalize(v[0], dim=-1) * (w[0] / (total + 1e-6))
    for e, x in zip(v[1:], w[1:]):
        expected = expected + F.normalize(e, dim=-1) * (x / (total + 1e-6))
    assert torch.equal(fuse(v, w), expected)
    # one input comes back as (almost) its unit vector, as forward_visual with one modality
    torch.testing.assert_close(fuse(v[:1], [1.0]), F.normalize(v[0], dim=-1), atol=1e-5, rtol=0)


def test_negative_weights_divide_by_the_sum_of_magnitudes():
    a, b = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    out = fuse(torch.stack([a, b]), [1.0, -0.5])
    torch.testing.assert_close(out, (a - 0.5 * b) / 1.5, atol=1e-5, rtol=0)
    assert out.norm() <= 1  # inside the unit ball, like every reference mixture
    assert torch.dot(out, b) < torch.dot(a, b)  # it points away from what was subtracted
    assert fusion_weights([1.0, -1.0]) == pytest.approx([0.5, -0.5], abs=1e-6)  # no division by a zero sum


def test_batched_rows_fuse_per_row():
    x = torch.randn(2, 4, 16)  # two inputs, a batch of four
    out = fuse(x, [0.7, 0.3])
    for b in range(4):
        torch.testing.assert_close(out[b], fuse(x[:, b], [0.7, 0.3]))


@pytest.mark.parametrize("vectors, weights, message", [
    (torch.ones(0, 4), [], "at least one input"),
    (torch.ones(2, 4), [1.0, 0.0], "is 0"),
    (torch.ones(1, 4), [float("nan")], "finite"),
    (torch.ones(1, 4), [1e39], "float32 range"),
    (torch.ones(1, 4), ["heavy"], "must be a number"),
    (torch.zeros(1, 4), [1.0], "zero vector"),
    (torch.tensor([[float("inf"), 0.0]]), [1.0], "NaN or inf"),
    (torch.tensor([[1.0, 0.0], [2.0, 0.0]]), [1.0, -1.0], "cancel out"),
    (torch.ones(3, 4), [1.0, 1.0], "one embedding per weight"),
])
def test_undefined_mixtures_are_refused(vectors, weights, message):
    with pytest.raises(FusionError, match=message):
        fuse(vectors, weights)


def test_cli_chat_model_and_tools_fuse_a_subtraction_into_one_vector_and_one_answer(tmp_path, capsys):
    """`ibllm ask --image a --audio b:-0.3`, a chat message with weights 1 and -0.3, and the arithmetic tool's
    `image:a - 0.3*audio:b` are one mixture: the same feature and the same greedy answer."""
    import base64

    from langchain_core.messages import HumanMessage
    from langchain_media import make_media

    import ibllm_agent
    from ibllm_agent import cli
    from ibllm_agent.chat_models import ChatImageBindLLM
    from ibllm_agent.generation import format_prompt
    from ibllm_agent.media import load_media
    from ibllm_agent.perception_tools import get_tools

    files = make_media(tmp_path)
    image, audio = files["image"], files["audio"]
    llm = ibllm_agent.load("tiny")
    question = "What is this?"

    # the CLI: its fused feature, and the answer it prints
    cli_feature = cli._feature(llm, [(load_media(image, "image"), 1.0), (load_media(audio, "audio"), -0.3)])
    assert cli.main(["ask", "--model", "tiny", "--temperature", "0", "--max-tokens", "8", "--image", str(image),
                     "--audio", f"{audio}:-0.3", question]) == 0
    cli_answer = capsys.readouterr().out.strip()

    # the chat model
    chat = ChatImageBindLLM(model=llm, temperature=0, max_tokens=8)
    message = HumanMessage(content=[question,
                                    {"type": "image", "base64": base64.b64encode(image.read_bytes()).decode(),
                                     "mime_type": "image/png"},
                                    {"type": "audio", "base64": base64.b64encode(audio.read_bytes()).decode(),
                                     "mime_type": "audio/wav", "extras": {"weight": -0.3}}])
    chat_feature = chat.prepare([message]).feature
    chat_answer = chat.invoke([message]).text

    # the tools: arithmetic, then describe the stored result
    tools = {t.name: t for t in get_tools(llm, roots=[tmp_path], max_tokens=8)}
    call = {"name": "embedding_arithmetic", "args": {"expression": f"image:{image.name} - 0.3*audio:{audio.name}",
                                                     "name": "mix"}, "id": "1", "type": "tool_call"}
    tool_feature = torch.tensor(tools["embedding_arithmetic"].invoke(call).artifact)
    tool_answer = tools["describe_embedding"].invoke({"handle": "mix", "question": question})

    assert torch.equal(chat_feature, cli_feature)
    torch.testing.assert_close(tool_feature, cli_feature, atol=1e-6, rtol=0)  # the tools' embeddings are unit first
    expected = llm.generate_batch([format_prompt(question)], cli_feature, temperature=0.0, max_tokens=8)[0].text
    assert cli_answer == chat_answer == expected
    assert tool_answer.endswith(f"] {expected}")
