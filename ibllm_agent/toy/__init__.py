"""The toy world: a few concepts (rain, dog, bell, ...), each rendered procedurally, with seeded random
variation, as a picture, a sound, a short video, a 3D point cloud, a depth map, a thermal image, an IMU
trace and text.

The embedded `toy` model is trained on it (tools/build_toy_model.py) and evaluated on a held-out seed
(tools/eval_toy.py); the app and the notebooks draw examples from it. Only numpy and PIL are needed
(the MP3 and MP4 writers load imageio-ffmpeg and OpenCV when called), so the UI can import it at run time.

    from ibllm_agent.toy import ToyWorld
    sample = ToyWorld(seed=0).write("dog", "audio", 0, folder)   # a WAV file of a dog, and its label

Modules, one medium each: `concepts` (the concepts and all text: captions, instructions, the corpus,
answer scoring), `pictures` (images and video frames), `sounds`, `shapes` (point clouds), `depths` and
`heat` (depth maps and thermal images of the pictures' geometry), `motion` (IMU traces), `files`
(WAV/MP3/MP4/PLY/PNG/TIFF/CSV writers) and `world` (`ToyWorld`: one seed's samples, their random streams).
"""

from ibllm_agent.toy.concepts import (
    CONCEPT_NAMES,
    CONCEPTS,
    EVAL_QUESTION,
    WORLD_DESCRIPTION,
    Concept,
    captions,
    concept,
    corpus,
    description,
    find_concepts,
    names_concept,
    text_instructions,
    text_prompts,
    visual_instructions,
)
from ibllm_agent.toy.depths import render_depth
from ibllm_agent.toy.files import (
    write_depth,
    write_imu,
    write_mp3,
    write_mp4,
    write_ply,
    write_thermal,
    write_wav,
)
from ibllm_agent.toy.heat import render_thermal
from ibllm_agent.toy.motion import render_motion
from ibllm_agent.toy.pictures import IMAGE_SIZE, VIDEO_FPS, image_params, render_frame
from ibllm_agent.toy.shapes import render_points
from ibllm_agent.toy.sounds import SAMPLE_RATE, render_sound
from ibllm_agent.toy.world import Sample, ToyWorld, sample_rng

__all__ = [
    "CONCEPT_NAMES", "CONCEPTS", "EVAL_QUESTION", "IMAGE_SIZE", "SAMPLE_RATE", "VIDEO_FPS", "WORLD_DESCRIPTION",
    "Concept", "Sample", "ToyWorld", "captions", "concept", "corpus", "description", "find_concepts", "image_params",
    "names_concept", "render_depth", "render_frame", "render_motion", "render_points", "render_sound",
    "render_thermal", "sample_rng", "text_instructions", "text_prompts", "visual_instructions", "write_depth",
    "write_imu", "write_mp3", "write_mp4", "write_ply", "write_thermal", "write_wav",
]
