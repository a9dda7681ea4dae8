"""The toy world's concepts and all its text: captions, descriptions, instruction data, the corpus.

The words here are what the toy model learns to say; an answer is scored by the first concept it names
(`names_concept`), so every answer template names its concept first.
"""

from __future__ import annotations

from dataclasses import dataclass

WORLD_DESCRIPTION = (
    "a toy world: a small ImageBind-LLM trained from scratch on synthetic pictures, sounds, videos and "
    "3D shapes of a few concepts; it knows nothing else"
)
"""What the toy model says it was trained on (its `toy.json` description and its "Who are you?" answer)."""


@dataclass(frozen=True)
class Concept:
    """One thing of the toy world and the words used for it."""

    name: str
    """The label, also the word an answer must contain."""
    noun: str
    """With article where English wants one ("a dog", "rain")."""
    look: str
    """What a picture of it shows."""
    sound: str
    """What it sounds like, as a noun phrase."""
    shape: str
    """Its 3D shape."""
    motion: str
    """What happens in a video of it (a sentence fragment after the noun)."""


CONCEPTS: tuple[Concept, ...] = (
    Concept("rain", "rain", "grey clouds with blue drops falling from them", "a steady patter of drops",
            "a cloud above falling drops", "falls from the clouds"),
    Concept("dog", "a dog", "a brown dog with floppy ears standing on four legs", "loud short barks",
            "a body on four legs with a head and a tail", "walks along"),
    Concept("cat", "a cat", "a cat with pointed ears and whiskers", "a high meow that rises and falls",
            "a round body with a head and two pointed ears", "sits and swishes its tail"),
    Concept("bird", "a bird", "a small bird with spread wings and an orange beak", "quick high chirps",
            "a small body with two wide wings", "flies across the sky"),
    Concept("bee", "a bee", "a yellow bee with black stripes and small wings", "a constant buzz",
            "a round striped body with two small wings", "zigzags from side to side"),
    Concept("bell", "a bell", "a golden bell with a clapper", "a clear ringing tone that fades slowly",
            "a hollow dome that flares at the bottom", "swings back and forth"),
    Concept("drum", "a drum", "a red drum with a white top", "deep booming beats",
            "a short cylinder", "is struck in a steady beat"),
    Concept("car", "a car", "a car with a cabin and two black wheels", "the low hum of an engine",
            "a long box on four wheels", "drives across the road"),
    Concept("clock", "a clock", "a round white clock face with two hands", "a steady tick tock",
            "a flat disk", "turns its hands"),
    Concept("fire", "a fire", "orange and yellow flames over brown logs", "crackling and popping",
            "a cone of flame over crossed logs", "flickers upward"),
    Concept("ocean", "the ocean", "blue waves with white crests under the sky", "waves that swell and wash",
            "a wavy surface", "rolls in waves"),
    Concept("phone", "a phone", "a black phone with a glowing screen", "a ringing trill",
            "a thin flat slab", "buzzes and rings"),
    Concept("piano", "a piano", "a row of white and black piano keys", "a melody of notes",
            "a large box on legs", "plays a tune"),
    Concept("ball", "a ball", "a bright striped ball with a shadow", "bouncing thuds that come faster",
            "a sphere", "bounces up and down"),
)
CONCEPT_NAMES: tuple[str, ...] = tuple(c.name for c in CONCEPTS)
_BY_NAME = {c.name: c for c in CONCEPTS}


def concept(name: str) -> Concept:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown toy concept {name!r}; known: {', '.join(CONCEPT_NAMES)}") from None


def find_concepts(text: str) -> list[str]:
    """Concept names mentioned in `text`, in order of first mention (whole words, case-insensitive)."""
    words = [w.strip(".,;:!?\"'()").lower() for w in text.split()]
    hits: list[tuple[int, str]] = []
    for name in CONCEPT_NAMES:
        forms = {name, name + "s", name + "es"}
        first = next((i for i, w in enumerate(words) if w in forms), None)
        if first is not None:
            hits.append((first, name))
    return [name for _, name in sorted(hits)]


def names_concept(text: str, name: str) -> bool:
    """True when the first concept `text` mentions is `name`: how the evaluation scores an answer."""
    found = find_concepts(text)
    return bool(found) and found[0] == name


# Text: captions (pretraining), descriptions and instruction data (finetuning)

_CAPTION_TEMPLATES = (
    "a photo of {noun}.",
    "a picture of {noun}.",
    "{Noun}.",
    "an image of {look}.",
    "{look}.",
    "a simple drawing of {noun}.",
    "{noun}, drawn on a plain background.",
    "this picture shows {noun}.",
)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def captions(c: Concept) -> list[str]:
    """Several caption phrasings of a concept (the image-text pairs of pretraining)."""
    return [t.format(noun=c.noun, Noun=_cap(c.noun), look=c.look) for t in _CAPTION_TEMPLATES]


def description(c: Concept) -> str:
    """A longer description: what it looks like, sounds like, its shape and how it moves."""
    return (f"This is {c.noun}. It looks like {c.look}. It makes {c.sound}. "
            f"Its shape is {c.shape}, and it {c.motion}.")


def text_prompts(c: Concept) -> list[str]:
    """Short texts used as the text modality (zero-shot prompts, text-as-input evaluation)."""
    return [f"{c.name}", f"a photo of {c.noun}", f"the sound of {c.noun}", f"{c.noun}"]


_ANSWER_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("What is this?", "This is {noun}."),
    ("What is in this picture?", "The picture shows {noun}."),
    ("What do you see?", "I see {noun}: {look}."),
    ("What do you hear?", "I hear {noun}: {sound}."),
    ("What sound does this make?", "It sounds like {noun}: {sound}."),
    ("What is its shape?", "It is {noun}, shaped like {shape}."),
    ("Describe it in detail.", "{description}"),
    ("Describe the image in detail.", "{description}"),
    ("Name the thing shown here in one word.", "{Name}."),
    ("What is happening?", "{Noun} {motion}."),
)
"""Questions about the visual input and their answer patterns. The answers always name the concept
first, so that an answer can be scored by the first concept it mentions."""

EVAL_QUESTION = "What is this?"


def _fill(template: str, c: Concept) -> str:
    return template.format(noun=c.noun, Noun=_cap(c.noun), look=c.look, sound=c.sound, shape=c.shape,
                           motion=c.motion, name=c.name, Name=_cap(c.name), description=description(c))


def visual_instructions(c: Concept) -> list[dict[str, str]]:
    """Instruction/response pairs about an input showing concept `c` (Alpaca fields, no `input`)."""
    return [{"instruction": q, "input": "", "output": _fill(a, c)} for q, a in _ANSWER_TEMPLATES]


def text_instructions() -> list[dict[str, str]]:
    """Text-only toy questions (trained with a zero image, as upstream does for text-only samples)."""
    out = [
        {"instruction": "Who are you?", "input": "",
         "output": "I am a toy ImageBind-LLM. I was trained on " + WORLD_DESCRIPTION + "."},
        {"instruction": "What things do you know?", "input": "",
         "output": "I know " + ", ".join(c.name for c in CONCEPTS[:-1]) + f" and {CONCEPTS[-1].name}."},
    ]
    for c in CONCEPTS:
        out += [
            {"instruction": f"What sound does {c.noun} make?", "input": "", "output": f"{_cap(c.noun)} makes {c.sound}."},
            {"instruction": f"What does {c.noun} look like?", "input": "", "output": f"{_cap(c.noun)} looks like {c.look}."},
            {"instruction": f"Tell me about {c.noun}.", "input": "", "output": description(c)},
            {"instruction": "Which thing makes this sound?", "input": c.sound, "output": f"{_cap(c.noun)} makes {c.sound}."},
        ]
    return out


def corpus() -> list[str]:
    """All toy text: what the tokenizer and the language model are trained on."""
    lines: list[str] = []
    for c in CONCEPTS:
        lines += captions(c) + [description(c)] + text_prompts(c)
        lines += [f"{s['instruction']} {s['output']}" for s in visual_instructions(c)]
    lines += [f"{s['instruction']} {s['input']} {s['output']}" for s in text_instructions()]
    return lines
