"""The public API is pinned: additions and removals are deliberate."""

import importlib

import ibllm_agent

PUBLIC = [
    "CheckpointError", "ChatImageBindLLM", "GenerationParams", "VisualCacheParams", "ImageBindEmbeddings", "ImageBindLLM", "ImageBindModel",
    "MediaError", "MediaInput", "ModalityType", "ModelArgs", "Tokenizer", "Transformer", "__version__", "available_models",
    "build_perception_graph", "create_perception_agent", "download", "format_prompt", "get_tools",
    "load", "load_media",
]


def test_all_is_pinned():
    assert sorted(ibllm_agent.__all__) == sorted(PUBLIC)


def test_every_export_resolves():
    for name in ibllm_agent.__all__:
        assert getattr(ibllm_agent, name) is not None, name


def test_upstream_drop_in_names():
    data = importlib.import_module("ibllm_agent.data")
    for name in ("load_and_transform_vision_data", "load_and_transform_audio_data",
                 "load_and_transform_video_data", "load_and_transform_point_cloud_data",
                 "load_and_transform_text"):
        assert callable(getattr(data, name)), name
    assert ibllm_agent.format_prompt("Say hi.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nSay hi.\n\n### Response:")


def test_import_is_lazy():
    # `import ibllm_agent` must not drag LangChain, Streamlit or the server's FastAPI and uvicorn in.
    import subprocess
    import sys

    code = "import sys, ibllm_agent; print(*(m in sys.modules for m in ('langchain_core', 'streamlit', 'fastapi', 'uvicorn')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False"] * 4
