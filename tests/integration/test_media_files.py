"""Real files through load_media: ../shared/media, and files made here with real encoders
(the ffmpeg of imageio-ffmpeg, OpenCV's writer, espeak-ng speech, PIL)."""

from __future__ import annotations

import shutil
import subprocess
import wave

import numpy as np
import pytest
import torch

from ibllm_agent.media import MediaError, load_audio_track, load_media
from ibllm_agent.media.audio import ffmpeg_exe

SHAPES = {"image": (3, 224, 224), "video": (15, 3, 2, 224, 224), "audio": (3, 1, 128, 204), "point": (8192, 3)}


def _ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """A 3-s 440 Hz tone (+ a 1 kHz tone in the right channel) in every audio codec, and videos with sound."""
    d = tmp_path_factory.mktemp("encoded")
    tone = ["-f", "lavfi", "-i", "sine=frequency=440:duration=3:sample_rate=44100",
            "-f", "lavfi", "-i", "sine=frequency=1000:duration=3:sample_rate=44100",
            "-filter_complex", "[0:a][1:a]join=inputs=2:channel_layout=stereo[a]", "-map", "[a]"]
    for name, codec in (("tone.mp3", "libmp3lame"), ("tone.ogg", "libvorbis"), ("tone.opus", "libopus"),
                        ("tone.m4a", "aac"), ("tone.flac", "flac"), ("tone.wav", "pcm_s16le")):
        _ffmpeg(*tone, "-c:a", codec, str(d / name))
    _ffmpeg("-f", "wav", "-i", str(d / "tone.wav"), "-c:a", "pcm_f32le", str(d / "tone_f32.wav"))
    video = ["-f", "lavfi", "-i", "testsrc=size=160x120:rate=24:duration=3",
             "-f", "lavfi", "-i", "sine=frequency=440:duration=3:sample_rate=48000"]
    _ffmpeg(*video, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(d / "clip.mp4"))
    _ffmpeg(*video, "-c:v", "libvpx-vp9", "-b:v", "200k", "-c:a", "libopus", "-shortest", str(d / "clip.webm"))
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=10:duration=2", "-c:v", "mpeg4", str(d / "silent.mov"))
    return d


@pytest.mark.parametrize("name", ["tone.mp3", "tone.ogg", "tone.opus", "tone.m4a", "tone.flac", "tone.wav", "tone_f32.wav"])
def test_audio_codecs_agree(encoded, name):
    item = load_media(encoded / name)
    assert item.modality == "audio" and item.tensor.shape == SHAPES["audio"]
    assert item.meta["orig_sample_rate"] in (44100, 48000) and item.meta["channels"] == 2
    # Lossy codecs change quiet bands; the mel profile and its 440 Hz peak stay where they are.
    ours, reference = item.tensor.mean(dim=(0, 1, 3)), load_media(encoded / "tone.wav").tensor.mean(dim=(0, 1, 3))
    assert int(ours.argmax()) == int(reference.argmax())
    assert torch.corrcoef(torch.stack([ours, reference]))[0, 1] > 0.9


def test_audio_from_bytes_and_stream(encoded):
    data = (encoded / "tone.mp3").read_bytes()
    assert torch.equal(load_media(data, name="t.mp3").tensor, load_media(encoded / "tone.mp3").tensor)


@pytest.mark.parametrize("name", ["clip.mp4", "clip.webm"])
def test_video_and_its_audio_track(encoded, name):
    video = load_media(encoded / name)
    assert video.modality == "video" and video.tensor.shape == SHAPES["video"]
    assert video.meta["duration_s"] == pytest.approx(3.0, abs=0.05)
    audio = load_audio_track(encoded / name)
    assert audio.modality == "audio" and audio.tensor.shape == SHAPES["audio"]
    assert audio.sha256 == video.sha256  # one file, two inputs
    assert torch.equal(load_media((encoded / name).read_bytes(), "audio", name=name).tensor, audio.tensor)


@pytest.mark.parametrize("name,codec", [("recording.webm", "libopus"), ("sound_only.mp4", "aac")])
def test_container_without_pictures_is_audio(tmp_path, name, codec):
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=3", "-c:a", codec, str(tmp_path / name))
    item = load_media(tmp_path / name)  # a browser's audio recording is WebM with no video track
    assert item.modality == "audio" and item.mime.startswith("audio/") and item.tensor.shape == SHAPES["audio"]
    with pytest.raises(MediaError):
        load_media(tmp_path / name, "video")  # asked for video explicitly: no fallback


def test_video_without_audio_track(encoded):
    assert load_media(encoded / "silent.mov").tensor.shape == SHAPES["video"]
    with pytest.raises(Exception, match="no audio track"):
        load_audio_track(encoded / "silent.mov")


def test_opencv_writer_video(tmp_path):
    import cv2

    path = tmp_path / "written.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"XVID"), 12.0, (96, 72))
    for i in range(36):
        writer.write(np.full((72, 96, 3), (i * 7) % 256, np.uint8))
    writer.release()
    item = load_media(path)
    assert item.tensor.shape == SHAPES["video"] and item.meta["num_frames"] == 36


def test_espeak_speech(tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (CI installs it with apt-get install espeak-ng)")
    path = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "A dog barks at the mailman."], check=True)
    with wave.open(str(path)) as w:
        rate, n = w.getframerate(), w.getnframes()
    item = load_media(path)
    assert item.tensor.shape == SHAPES["audio"]
    assert item.meta["orig_sample_rate"] == rate and item.meta["orig_num_samples"] == n
    assert item.tensor.std() > 0.1  # speech, not silence


@pytest.mark.parametrize("name", ["girl.jpg", "girl_bgm.wav", "synthetic_overlap_44k.wav", "synthetic_clip.mp4",
                                  "synthetic_portrait_short.mp4", "airplane.pt", "car.pt", "door.pt", "toilet.pt"])
def test_shared_media(media_dir, name):
    item = load_media(media_dir / name)
    assert item.tensor.shape == SHAPES[item.modality] and torch.isfinite(item.tensor).all()
    assert torch.equal(item.tensor, load_media(media_dir / name).tensor)  # deterministic


def test_written_point_clouds(tmp_path):
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(20000, 3)).astype(np.float32)
    (tmp_path / "scan.xyz").write_text("\n".join(" ".join(map(repr, p)) for p in pts.tolist()))
    header = f"ply\nformat binary_little_endian 1.0\nelement vertex {len(pts)}\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
    (tmp_path / "scan.ply").write_bytes(header.encode() + pts.tobytes())
    a, b = load_media(tmp_path / "scan.xyz"), load_media(tmp_path / "scan.ply")
    assert a.tensor.shape == SHAPES["point"] and torch.allclose(a.tensor, b.tensor, atol=1e-6)
