"""Property test: 200 random JSON Schemas (nested objects, arrays, enums, bounded numbers, optional fields)
decoded by the toy model on toy inputs, all in one batch (each row with its own grammar, greedy and sampled
rows mixed): 100 % of the answers parse and validate. Each schema is satisfiable within its max_tokens (strings
and arrays are bounded, numbers have bounds and a step), so "length" never excuses a failure; the cut path has
its own test in test_grammar.py."""

from __future__ import annotations

import json
import random

import pytest
import torch

import ibllm_agent
from ibllm_agent import toy
from ibllm_agent.generation import format_prompt
from ibllm_agent.grammar import Constraint
from ibllm_agent.params import GenerationParams

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

N_SCHEMAS = 200
WORDS = ["dog", "bird", "bell", "rain", "drum", "red", "loud", "a b", "x_1"]


def random_schema(rng: random.Random, depth: int = 0) -> tuple[dict, int]:
    """A schema and the most bytes a value of it can take (a UTF-8 character is at most 4)."""
    kinds = ["string", "enum", "integer", "number", "boolean", "null", "pattern"]
    if depth < 3:
        kinds += ["object", "object", "array"]
    kind = rng.choice(kinds)
    if kind == "string":
        n = rng.randint(0, 6)
        return {"type": "string", "minLength": rng.randint(0, n), "maxLength": n}, 2 + 6 * n  # \uXXXX escapes
    if kind == "pattern":
        return {"type": "string", "pattern": "^[a-z]{1,4}[0-9]?$"}, 7
    if kind == "enum":
        options = rng.sample(WORDS, rng.randint(1, 4)) + ([rng.randint(-5, 5)] if rng.random() < 0.3 else [])
        return {"enum": options}, max(len(json.dumps(o)) for o in options)
    if kind == "integer":
        low = rng.randint(-50, 50)
        return {"type": "integer", "minimum": low, "maximum": low + rng.randint(0, 900)}, 5
    if kind == "number":
        low = rng.choice([-10, 0, 0.5])
        return {"type": "number", "minimum": low, "maximum": low + rng.randint(1, 100), "multipleOf": 0.25}, 10
    if kind == "boolean":
        return {"type": "boolean"}, 5
    if kind == "null":
        return {"type": "null"}, 4
    if kind == "array":
        item, size = random_schema(rng, depth + 1)
        most = rng.randint(0, 3)
        return {"type": "array", "items": item, "minItems": rng.randint(0, most), "maxItems": most}, 2 + most * (size + 2)
    names = rng.sample(["name", "legs", "sound", "color", "size", "tags", "inner", "score", "loud", "id"],
                       rng.randint(1, 4))
    properties, total = {}, 2
    for name in names:
        properties[name], size = random_schema(rng, depth + 1)
        total += len(name) + 6 + size
    required = [n for n in names if rng.random() < 0.6]
    schema = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    return schema, total


def toy_inputs(n: int) -> list[str]:
    """Questions of the toy's instruction data (the test gives half of them a toy picture's feature)."""
    questions = [s["instruction"] for s in toy.visual_instructions(toy.CONCEPTS[0])]
    return [format_prompt(questions[i % len(questions)]) for i in range(n)]


@pytest.fixture(scope="module")
def model():
    return ibllm_agent.load("toy")


def test_200_random_schemas_always_give_valid_json(model, tmp_path):
    rng = random.Random(17)
    schemas = [random_schema(rng) for _ in range(N_SCHEMAS)]
    params = [GenerationParams(max_tokens=size + 4, temperature=0.0 if k % 2 else 0.8, top_p=0.95,
                               constraint=Constraint.json_schema(schema))
              for k, (schema, size) in enumerate(schemas)]
    from ibllm_agent.media import load_media

    world = toy.ToyWorld(seed=5)
    pictures = [load_media(world.write(c.name, "image", 0, tmp_path).path) for c in toy.CONCEPTS[:4]]
    image_features = model.encode(pictures)
    features = [image_features[k % 4] if k % 2 else torch.zeros(model.feature_dim) for k in range(N_SCHEMAS)]
    out = model.generate_batch(toy_inputs(N_SCHEMAS), torch.stack(features), params, visual_cache=False)
    failures = []
    for (schema, _), g in zip(schemas, out):
        try:
            assert g.finish_reason == "stop", f"finish {g.finish_reason} after {len(g.token_ids)} tokens"
            jsonschema.validate(json.loads(g.text), schema)
        except (AssertionError, ValueError, jsonschema.ValidationError) as e:
            failures.append((schema, g.text, str(e)[:200]))
    assert not failures, f"{len(failures)} of {N_SCHEMAS} failed; first: {failures[:3]}"
