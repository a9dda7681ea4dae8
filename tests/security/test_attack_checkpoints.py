"""Hostile model files. Every params.json, imagebind_config.json and checkpoint below fails through the
public loading path (`ibllm_agent.load`, the training build, a resume) with a CheckpointError naming the
file (and the field, for a config value), within seconds, without allocating or running anything from
the file; the CLI turns it into `error: ...` and exit status 2, without a traceback.

Each case writes the tiny model's official layout into its own folder (the big files as symlinks) and
spoils one file."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

import ibllm_agent
from ibllm_agent.checkpoint import CheckpointError, adapter_sizes, load_state_dict
from ibllm_agent.factory import save_official
from ibllm_agent.imagebind.model import read_imagebind_config
from ibllm_agent.llama.model import ModelArgs, check_llama_file
from ibllm_agent.train.adapter import build_for_training
from ibllm_agent.train.engine import TrainConfig, load_checkpoint, train

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """The tiny model in the official layout: llama/{tokenizer.model, 7B/...}, adapter.pth, imagebind.pth."""
    out = tmp_path_factory.mktemp("official")
    save_official(ibllm_agent.load("tiny"), out)
    return out


def layout(official: Path, folder: Path) -> Path:
    """A copy of the official layout in `folder`: params.json copied (the cases edit it), the rest linked."""
    (folder / "llama" / "7B").mkdir(parents=True)
    for rel in ("llama/tokenizer.model", "llama/7B/consolidated.00.pth", "adapter.pth", "imagebind.pth"):
        (folder / rel).symlink_to(official / rel)
    shutil.copy(official / "llama/7B/params.json", folder / "llama/7B/params.json")
    return folder


def spoil(folder: Path, rel: str, content: str | bytes) -> Path:
    path = folder / rel
    path.unlink(missing_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def load(folder: Path, adapter: str = "adapter.pth"):
    return ibllm_agent.load(str(folder / adapter), str(folder / "llama"), imagebind_ckpt=str(folder / "imagebind.pth"))


def params_text(official: Path, **changes) -> str:
    return json.dumps({**json.loads((official / "llama/7B/params.json").read_text()), **changes})


# ----- params.json ---------------------------------------------------------------------------------------

BAD_PARAMS = [
    # the issue's cases: a hang, ZeroDivisionError, RuntimeError, TypeError before
    ("n_layers", 1e6), ("n_layers", 10**6), ("n_heads", 0), ("multiple_of", 0), ("dim", -64), ("dim", 64.0),
    ("dim", 10**9),
    # their neighbours: types, signs, divisibility, bounds
    ("n_layers", 0), ("n_layers", True), ("n_layers", "2"), ("n_layers", None), ("n_heads", -4), ("n_heads", 3),
    ("n_heads", 10**6), ("multiple_of", 10**9), ("vocab_size", 10**12), ("vocab_size", 0), ("norm_eps", 0),
    ("norm_eps", -1e-6), ("norm_eps", "1e-6"), ("ffn_dim_multiplier", -1.0), ("ffn_dim_multiplier", 1e30),
    ("ffn_dim_multiplier", 0.001), ("rope_theta", 0), ("rope_theta", 1e300),
    # what the model cannot honour is refused, not ignored
    ("n_kv_heads", 1), ("n_kv_heads", 2.0), ("n_layerz", 2), ("use_scaled_rope", True), ("max_seq_len", 10**12),
    ("w_lora", "x"),
]


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("field", "value"), BAD_PARAMS, ids=[f"{f}={v!r}" for f, v in BAD_PARAMS])
def test_bad_params_json_values_name_the_file_and_field(official, tmp_path, field, value):
    folder = layout(official, tmp_path)
    path = spoil(folder, "llama/7B/params.json", params_text(official, **{field: value}))
    with pytest.raises(CheckpointError) as info:
        load(folder)
    assert info.value.file == str(path) and info.value.field == field
    assert str(path) in str(info.value) and f"{field}:" in str(info.value)


BAD_PARAMS_FILES = {
    "NaN literal": '{"dim": 64, "norm_eps": NaN}',
    "Infinity literal": '{"dim": 64, "norm_eps": -Infinity}',
    "a number that overflows to inf": '{"dim": 64, "norm_eps": 1e999}',
    "a list": "[64, 2, 4]",
    "a number": "64",
    "malformed": "{dim: 64",
    "empty": "",
    "not UTF-8": b"\xff\xfe{}",
    "a key twice": '{"dim": 64, "n_layers": 2, "n_heads": 4, "n_layers": 200}',
    "deep nesting": "[" * 200_000 + "]" * 200_000,
    "over 1 MiB": '{"dim": 64, "pad": "' + "x" * (2 << 20) + '"}',
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("case", list(BAD_PARAMS_FILES))
def test_unreadable_params_json_names_the_file(official, tmp_path, case):
    folder = layout(official, tmp_path)
    path = spoil(folder, "llama/7B/params.json", BAD_PARAMS_FILES[case])
    with pytest.raises(CheckpointError) as info:
        load(folder)
    assert info.value.file == str(path) and str(path) in str(info.value)


def test_huge_sizes_fail_in_seconds_without_allocating(official, tmp_path):
    """n_layers=1e6 kept allocating (3.3 GB after 90 s); now each of these fails at once. Measured in a
    fresh process: wall time per case and the growth of its peak resident memory over all of them.
    Out-of-bounds sizes through `ibllm_agent.load`; all of them, and sizes within the bounds but not the
    checkpoint's, through the training build (which builds real weights, so must check first)."""
    huge = [{"n_layers": 10**6}, {"n_layers": 1e6}, {"dim": 10**9}, {"multiple_of": 10**9}, {"vocab_size": 10**12}]
    in_bounds = [{"dim": 32768, "n_layers": 256, "n_heads": 256}, {"multiple_of": 65536}]
    folders = []
    for i, changes in enumerate(huge + in_bounds):
        folder = layout(official, tmp_path / str(i))
        spoil(folder, "llama/7B/params.json", params_text(official, **changes))
        folders.append(str(folder))
    script = textwrap.dedent("""
        import json, resource, sys, time
        import ibllm_agent
        from ibllm_agent.checkpoint import CheckpointError
        from ibllm_agent.train.adapter import build_for_training
        def infer(folder):
            ibllm_agent.load(folder + "/adapter.pth", folder + "/llama", imagebind_ckpt=folder + "/imagebind.pth")
        def training(folder):
            build_for_training(folder + "/llama", "7B", folder + "/imagebind.pth", "finetune")
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        seconds = []
        for i, folder in enumerate(sys.argv[2:]):
            for path in (infer, training) if i < int(sys.argv[1]) else (training,):
                start = time.perf_counter()
                try:
                    path(folder)
                except CheckpointError:
                    seconds.append(time.perf_counter() - start)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
        print(json.dumps({"seconds": seconds, "grown_kib": grown}))
    """)
    out = subprocess.run([sys.executable, "-c", script, str(len(huge)), *folders], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(result["seconds"]) == 2 * len(huge) + len(in_bounds)  # each one a CheckpointError
    assert max(result["seconds"]) < 5, result
    assert result["grown_kib"] < 100 * 1024, result


# ----- the sizes must be the checkpoint's, before anything is built ------------------------------------

MISMATCHED_PARAMS = [("n_layers", 3), ("dim", 128), ("multiple_of", 64), ("ffn_dim_multiplier", 2.0)]


@pytest.mark.parametrize(("field", "value"), MISMATCHED_PARAMS, ids=[f"{f}={v}" for f, v in MISMATCHED_PARAMS])
def test_sizes_that_do_not_match_the_llama_file_name_the_field(official, tmp_path, field, value):
    folder = layout(official, tmp_path)
    params = spoil(folder, "llama/7B/params.json", params_text(official, **{field: value}))
    llama_file = folder / "llama/7B/consolidated.00.pth"
    args = ModelArgs.from_json(params)
    with pytest.raises(CheckpointError) as info:
        check_llama_file(args, load_state_dict(llama_file), params_file=params, llama_file=llama_file)
    assert info.value.field == field and info.value.file == str(params)
    assert f"{field}={value}" in str(info.value) and str(llama_file) in str(info.value)
    # the training build (real weights) checks before it builds
    with pytest.raises(CheckpointError, match=f"{field}={value}"):
        build_for_training(folder / "llama", "7B", folder / "imagebind.pth", "finetune")
    # and the inference path refuses it too (today after building on the meta device)
    with pytest.raises(CheckpointError):
        load(folder)


def test_parameter_count_is_checked_against_the_llama_file(official, tmp_path):
    params = official / "llama/7B/params.json"
    llama_file = official / "llama/7B/consolidated.00.pth"
    args = ModelArgs.from_json(params, vocab_size=ibllm_agent.load("tiny").tokenizer.n_words)
    sd = load_state_dict(llama_file)
    check_llama_file(args, sd, params_file=params, llama_file=llama_file)  # the real pair fits
    extra = dict(sd, **{"layers.0.attention.extra": torch.zeros(1000)})
    with pytest.raises(CheckpointError, match="holds .* LLaMA parameters, but the sizes in .* imply"):
        check_llama_file(args, extra, params_file=params, llama_file=llama_file)
    with pytest.raises(CheckpointError, match="tokenizer has 999") as info:
        check_llama_file(ModelArgs.from_json(params, vocab_size=999), sd, params_file=params, llama_file=llama_file)
    assert info.value.field == "vocab_size"
    assert ModelArgs.from_params({"dim": 4096, "n_layers": 32, "n_heads": 32, "multiple_of": 256}) \
        .meta_parameter_count(32000) == 6_738_415_616  # LLaMA-1 7B


# ----- imagebind_config.json -----------------------------------------------------------------------------

BAD_IMAGEBIND_CONFIG = [
    ("audio_stride", 0), ("imu_kernel_size", 0), ("video_frames", 0), ("vision_num_heads", 0),
    ("vision_num_heads", 2.5), ("vision_num_heads", -2), ("text_num_heads", 10**9), ("vision_num_blocks", 10**6),
    ("point_num_group", 10**9), ("point_group_size", 10**8), ("audio_num_mel_bins", 10**9),
    ("audio_drop_path", 1.0), ("audio_drop_path", "0.1"), ("fps_start", 3), ("kernel_size", [2, 14]),
    ("kernel_size", [2, 14, 0]), ("modalities", "vision"), ("modalities", ["vision", "smell"]), ("modalities", []),
    ("bogus", 1),
]


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("field", "value"), BAD_IMAGEBIND_CONFIG, ids=[f"{f}={v!r}" for f, v in BAD_IMAGEBIND_CONFIG])
def test_bad_imagebind_config_values_name_the_file_and_field(official, tmp_path, field, value):
    folder = layout(official, tmp_path)
    path = spoil(folder, "imagebind_config.json", json.dumps({"kwargs": {field: value}}))
    with pytest.raises(CheckpointError) as info:
        read_imagebind_config(path)
    assert info.value.file == str(path) and info.value.field == field
    with pytest.raises(CheckpointError) as info:
        load(folder)
    assert str(path) in str(info.value) and f"{field}:" in str(info.value)


BAD_IMAGEBIND_FILES = {
    "a list": "[]",
    "kwargs a list": '{"kwargs": [1]}',
    "NaN": '{"kwargs": {"audio_drop_path": NaN}}',
    "malformed": '{"kwargs": ',
    "over 1 MiB": '{"kwargs": {}, "note": "' + "x" * (2 << 20) + '"}',
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("case", list(BAD_IMAGEBIND_FILES))
def test_unreadable_imagebind_config_names_the_file(official, tmp_path, case):
    folder = layout(official, tmp_path)
    path = spoil(folder, "imagebind_config.json", BAD_IMAGEBIND_FILES[case])
    with pytest.raises(CheckpointError, match=str(path)):
        load(folder)


# ----- checkpoints -----------------------------------------------------------------------------------------

class Payload:
    """Pickles to a call of os.system: what a malicious checkpoint would do."""

    def __reduce__(self):
        return os.system, (f"touch {MARKER}",)


MARKER = Path(os.environ.get("TMPDIR", "/tmp")) / f"ibllm-attack-{os.getpid()}"


def saved(obj, **kw) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kw)
    return buf.getvalue()


def zip_without_pickle() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/readme.txt", "hello")
    return buf.getvalue()


def lying_tensor_size(**kw) -> bytes:
    """A checkpoint whose tensor claims 2**20 elements where its storage holds 1000 floats."""

    def lie(pickled: bytes) -> bytes:  # 1000 is pickled as BININT2: the storage's count, then the tensor's size
        count, rest = pickled.split(b"M\xe8\x03", 1)
        return count + b"M\xe8\x03" + rest.replace(b"M\xe8\x03", b"J" + (1 << 20).to_bytes(4, "little"), 1)

    data = saved({"w": torch.zeros(1000)}, **kw)
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return lie(data)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, lie(src.read(name)) if name.endswith("data.pkl") else src.read(name))
    return out.getvalue()


HOSTILE = {  # name -> (content, what the message must say)
    "random bytes": (bytes(range(256)) * 16, "not a PyTorch checkpoint"),
    "text": (b"not a checkpoint" * 10, "not a PyTorch checkpoint"),
    "empty": (b"", "not a PyTorch checkpoint"),
    "zip without data.pkl": (zip_without_pickle(), "not a PyTorch checkpoint"),
    "truncated": (None, "truncated or corrupt"),
    "garbage after a pickle header": (b"\x80\x02" + bytes(range(2, 256)), "corrupt"),
    "pickled code": (saved({"model": {"w": Payload()}}), "refused to load: it pickles (posix|os|nt).system"),
    "pickled code, legacy format": (saved({"w": Payload()}, _use_new_zipfile_serialization=False),
                                    "refused to load: it pickles (posix|os|nt).system"),
    "pickled code, protocol 4": (pickle.dumps(Payload(), protocol=4), "not a weights file"),
    "a whole nn.Module": (saved(nn.Linear(2, 2)), "pickles torch.nn.modules.linear.Linear"),
    "a tensor larger than its storage": (lying_tensor_size(), "truncated or corrupt"),
    "a tensor larger than its storage, legacy format": (lying_tensor_size(_use_new_zipfile_serialization=False),
                                                        "truncated or corrupt"),
    "a list of tensors": (saved([torch.zeros(2)]), "expected a state dict"),
    "strings among the tensors": (saved({"w": torch.zeros(2), "note": "hi"}), "not tensors: note"),
}
FILES = ["adapter.pth", "llama/7B/consolidated.00.pth", "imagebind.pth"]


@pytest.mark.timeout(20)
@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
@pytest.mark.parametrize("rel", FILES)
@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_checkpoints_say_what_is_wrong_and_run_nothing(official, tmp_path, rel, case):
    folder = layout(official, tmp_path)
    content, message = HOSTILE[case]
    if content is None:
        data = (official / rel).read_bytes()
        content = data[: len(data) // 2]
    path = spoil(folder, rel, content)
    with pytest.raises(CheckpointError, match=message) as info:
        load(folder)
    assert info.value.file == str(path) and str(path) in str(info.value)
    assert not MARKER.exists()


def safetensors_with_header(header: bytes, data: bytes = b"") -> bytes:
    return len(header).to_bytes(8, "little") + header + data


HOSTILE_SAFETENSORS = {
    "header length past the end": (10**15).to_bytes(8, "little") + safetensors_bytes({"w": torch.zeros(4)})[8:],
    "header not UTF-8": safetensors_with_header(b"\xff" * 64),
    "header not an object": safetensors_with_header(b"[1]"),
    "offsets past the end": safetensors_with_header(
        b'{"w":{"dtype":"F32","shape":[1000000],"data_offsets":[0,4000000]}}'),
    "unknown dtype": safetensors_with_header(b'{"w":{"dtype":"Q99","shape":[4],"data_offsets":[0,16]}}', bytes(16)),
    "shape larger than its bytes": safetensors_with_header(
        b'{"w":{"dtype":"F32","shape":[1000,1000],"data_offsets":[0,16]}}', bytes(16)),
    "overflowing shape": safetensors_with_header(
        b'{"w":{"dtype":"F32","shape":[4611686018427387904,4611686018427387904],"data_offsets":[0,0]}}'),
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("case", list(HOSTILE_SAFETENSORS))
def test_corrupt_safetensors_headers_name_the_file(official, tmp_path, case):
    folder = layout(official, tmp_path)
    path = spoil(folder, "adapter.safetensors", HOSTILE_SAFETENSORS[case])
    with pytest.raises(CheckpointError, match="not a safetensors file") as info:
        load(folder, "adapter.safetensors")
    assert info.value.file == str(path)


@pytest.mark.parametrize("key", ["prefix_query.weight", "image_bind_proj.weight"])
@pytest.mark.parametrize("bad", [torch.tensor(1.0), torch.zeros(5), torch.zeros(0, 64)], ids=["0-d", "1-d", "empty"])
def test_adapter_sizes_come_from_matrices(official, tmp_path, key, bad):
    sd = torch.load(official / "adapter.pth", weights_only=True)
    assert adapter_sizes(sd["model"], file="adapter.pth") == (2, 1024)
    sd["model"][key] = bad
    path = tmp_path / "adapter.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=f"{key} has shape") as info:
        adapter_sizes(load_state_dict(path), file=path)
    assert info.value.field == key and info.value.file == str(path)
    with pytest.raises(CheckpointError, match=key):
        build_for_training(official / "llama", "7B", official / "imagebind.pth", "finetune", adapter=path)


@pytest.mark.parametrize(("key", "bad"), [("point_trunk.pc_projection", torch.zeros(3)),
                                          ("modality_preprocessors.vision.pos_embedding_helper.pos_embed",
                                           torch.zeros(1, 0, 160))], ids=["1-d projection", "no vision tokens"])
def test_imagebind_tensors_of_the_wrong_rank_or_size(official, tmp_path, key, bad):
    folder = layout(official, tmp_path)
    sd = torch.load(official / "imagebind.pth", weights_only=True)
    sd[key] = bad
    path = spoil(folder, "imagebind.pth", saved(sd))
    with pytest.raises(CheckpointError, match="not an ImageBind checkpoint") as info:
        load(folder)
    assert info.value.file == str(path)


# ----- training checkpoints (resume) ------------------------------------------------------------------------

class Square(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)

    def forward(self, batch):
        return self.lin(batch).pow(2).mean()


def resume(tmp_path, checkpoint: Path, steps: int = 2):
    module = Square()
    cfg = TrainConfig(output_dir=str(tmp_path / "out"), steps=steps, batch_size=2, progress=False, resume=str(checkpoint))
    return train(module, [torch.randn(2) for _ in range(4)], cfg, state_fn=module.state_dict)


BAD_TRAINING_CHECKPOINTS = {
    "random bytes": (bytes(range(256)), "not a PyTorch checkpoint"),
    "pickled code": (saved({"model": {}, "step": Payload()}), "refused to load"),
    "a bare state dict": (saved({"lin.weight": torch.zeros(1, 2)}), 'no "model" state dict'),
    "model not tensors": (saved({"model": {"lin.weight": [1, 2]}}), "not tensors"),
    "step a string": (saved({"model": {}, "step": "3"}), "step must be"),
    "step negative": (saved({"model": {}, "step": -1}), "step must be"),
    "optimizer a list": (saved({"model": {}, "step": 1, "optimizer": [1]}), "optimizer must be"),
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("case", list(BAD_TRAINING_CHECKPOINTS))
def test_training_checkpoints_are_checked_before_resuming(tmp_path, case):
    content, message = BAD_TRAINING_CHECKPOINTS[case]
    path = tmp_path / "checkpoint-last.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert info.value.file == str(path)
    with pytest.raises(CheckpointError, match=message):
        resume(tmp_path, path)
    assert not MARKER.exists()


@pytest.mark.timeout(20)
def test_resume_refuses_a_step_past_the_run_and_an_optimizer_that_does_not_fit(tmp_path):
    path = tmp_path / "far.pth"
    torch.save({"model": Square().state_dict(), "step": 10**12}, path)  # would skip 10**12 batches first
    with pytest.raises(CheckpointError, match="beyond steps=2") as info:
        resume(tmp_path, path)
    assert info.value.field == "step"
    torch.save({"model": Square().state_dict(), "step": 1, "optimizer": {"state": {}, "param_groups": [{}]}}, path)
    with pytest.raises(CheckpointError, match="optimizer state does not fit"):
        resume(tmp_path, path)


# ----- the CLI ---------------------------------------------------------------------------------------------

CLI_CASES = {
    "params n_layers=1000000": ("llama/7B/params.json", None),
    "params malformed": ("llama/7B/params.json", "{dim: 1"),
    "imagebind_config audio_stride=0": ("imagebind_config.json", '{"kwargs": {"audio_stride": 0}}'),
    "adapter pickles code": ("adapter.pth", saved({"model": {"w": Payload()}})),
    "LLaMA file random bytes": ("llama/7B/consolidated.00.pth", bytes(range(256))),
    "ImageBind truncated": ("imagebind.pth", b"PK\x03\x04" + bytes(100)),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_prints_an_error_and_exits_2_without_a_traceback(official, tmp_path, case):
    folder = layout(official, tmp_path)
    rel, content = CLI_CASES[case]
    path = spoil(folder, rel, content if content is not None else params_text(official, n_layers=10**6))
    out = subprocess.run([sys.executable, "-m", "ibllm_agent.cli", "ask", "--model", str(folder / "adapter.pth"),
                          "--llama-dir", str(folder / "llama"), "--imagebind", str(folder / "imagebind.pth"), "hi"],
                         capture_output=True, text=True, timeout=50, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr
    assert str(path) in out.stderr
    assert not MARKER.exists()
