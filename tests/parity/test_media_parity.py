"""Our loaders against what the upstream ImageBind loaders return for ../shared/media
(reference tensors and intermediate values in ../shared/parity/media/media_expected.pt).
Tolerances are the strict ones of ../shared/parity/media/README.md."""

from __future__ import annotations

import pytest
import torch

import ibllm_agent.data as data
from ibllm_agent.media import load_media
from ibllm_agent.media.audio import kaldi_fbank, resample
from ibllm_agent.media.detect import WAV
from ibllm_agent.media.limits import DEFAULT_LIMITS
from ibllm_agent.media.source import Source
from ibllm_agent.media.video import crop_offsets, read_clip_frames, short_side_size, transform_clips

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def ref(shared_dir):
    return torch.load(shared_dir / "parity" / "media" / "media_expected.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def media(shared_dir):
    return shared_dir / "media"


def test_vision_bit_exact(ref, media):
    out = data.load_and_transform_vision_data([media / "girl.jpg"], "cpu")
    assert out.shape == (1, 3, 224, 224)
    assert (out - ref["vision"]["output"]).abs().max() <= 1e-5
    # girl.jpg has no EXIF orientation, so our load_media agrees with upstream too.
    assert torch.equal(load_media(media / "girl.jpg").batched(), out)


@pytest.mark.parametrize("key,file", [("audio", "girl_bgm.wav"), ("audio_overlap", "synthetic_overlap_44k.wav")])
def test_audio_output(ref, media, key, file):
    out = data.load_and_transform_audio_data([media / file], "cpu")
    assert out.shape == (1, 3, 1, 128, 204)
    assert (out - ref[key]["output"]).abs().max() <= 1e-3
    item = load_media(media / file)
    assert torch.equal(item.batched(), out)
    for ours, theirs in zip(item.meta["clips"], ref[key]["files"][0]["clips"]):
        assert (ours["sample_start"], ours["sample_end"]) == (theirs["sample_start"], theirs["sample_end"])
        assert ours["fbank_frames"] == theirs["fbank_frames"]
        assert ours["mean_removed"] == pytest.approx(theirs["mean_removed"], abs=1e-9)
    info = ref[key]["files"][0]
    assert item.meta["resampled_num_samples"] == info["resampled_num_samples"]


@pytest.mark.parametrize("key,file", [("audio", "girl_bgm.wav"), ("audio_overlap", "synthetic_overlap_44k.wav")])
def test_audio_intermediates(ref, media, key, file):
    info = ref[key]["files"][0]
    source = Source(media / file, DEFAULT_LIMITS)
    from ibllm_agent.media.audio import decode_audio

    wave, rate, _ = decode_audio(source, WAV, DEFAULT_LIMITS)
    assert rate == info["orig_sample_rate"] and wave.shape == (info["channels"], info["orig_num_samples"])
    head = resample(wave, rate)[:, :32000]
    assert (head - info["resampled_waveform_head"]).abs().max() <= 5e-6
    clip0 = info["resampled_waveform_head"].clone()
    clip0 -= clip0.mean()  # the first clip's mean over both channels, as upstream
    raw = info["fbank_raw_clip0"] if "fbank_raw_clip0" in info else info["fbank_raw"][0]
    assert (kaldi_fbank(clip0[0]) - raw).abs().max() <= 5e-3


def test_audio_in_place_quirk_matters(ref, media):
    """Without the in-place mean removal the overlapping clips would differ (README diagnostic: 0.63)."""
    from ibllm_agent.media.audio import decode_audio, waveform_to_clips

    wave, rate, _ = decode_audio(Source(media / "synthetic_overlap_44k.wav", DEFAULT_LIMITS), WAV, DEFAULT_LIMITS)
    wave = resample(wave, rate).contiguous()
    quirk, _ = waveform_to_clips(wave.clone())
    assert (quirk - ref["audio_overlap"]["output"][0]).abs().max() <= 1e-3
    copies = torch.cat([waveform_to_clips(wave.clone())[0][:1]] + [
        waveform_to_clips(wave[:, a:].clone().contiguous())[0][:1] for a in (7199, 14399)])
    assert (copies - ref["audio_overlap"]["output"][0]).abs().max() > 0.1


def test_video_frames_and_output(ref, media):
    r = ref["video"]
    frames, meta = read_clip_frames(str(media / "synthetic_clip.mp4"), "clip", DEFAULT_LIMITS)
    for ours, theirs in zip(meta["clips"], r["clips"]):
        assert ours["selected_frame_index"] == theirs["selected_frame_index"]
        assert ours["frames_in_clip"] == theirs["frames_in_clip"]
    assert torch.equal(frames, r["selected_frames_rgb_uint8"])
    assert meta["duration_s"] == r["duration_s_float"]
    out = data.load_and_transform_video_data([media / "synthetic_clip.mp4"], "cpu")
    assert out.shape == (1, 15, 3, 2, 224, 224)
    assert (out - r["output_f16"].float()).abs().max() <= 1e-3
    idx = r["output_f32_subset_index"]
    assert (out[:, idx] - r["output_f32_subset"]).abs().max() <= 1e-5
    assert list(short_side_size(240, 320)) == r["scaled_hw"]
    assert [x for _, x in crop_offsets(*r["scaled_hw"])] == r["crop_offsets"]["offsets"]


def test_video_transform_from_reference_frames(ref):
    r = ref["video"]
    out = transform_clips(r["selected_frames_rgb_uint8"])
    idx = r["output_f32_subset_index"]
    assert (out[idx] - r["output_f32_subset"][0]).abs().max() <= 1e-5


def test_video_portrait_short(ref, media):
    r = ref["video_portrait"]
    frames, meta = read_clip_frames(str(media / "synthetic_portrait_short.mp4"), "portrait", DEFAULT_LIMITS)
    assert all(c["selected_frame_index"] == [0, 37] for c in meta["clips"])
    assert torch.equal(frames[:1], r["selected_frames_rgb_uint8"])
    out = load_media(media / "synthetic_portrait_short.mp4").batched()
    expected = r["output_first_clip_f16"].float().repeat(1, 5, 1, 1, 1, 1)
    assert (out - expected).abs().max() <= 1e-3
    assert list(short_side_size(300, 180)) == r["scaled_hw"]
    assert [y for y, _ in crop_offsets(*r["scaled_hw"])] == r["crop_offsets"]["offsets"]


def test_point_clouds_exact(ref, media):
    names = [f["file"] for f in ref["point_cloud"]["files"]]
    out = data.load_and_transform_point_cloud_data([media / n for n in names], "cpu")
    assert out.dtype == ref["point_cloud"]["output"].dtype
    assert torch.equal(out, ref["point_cloud"]["output"])
    # load_media normalises, but these are already normalised: they come through unchanged.
    for i, n in enumerate(names):
        item = load_media(media / n)
        assert torch.equal(item.tensor, ref["point_cloud"]["output"][i]) and item.meta["normalized"] is False
