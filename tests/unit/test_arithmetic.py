"""Embedding-expression grammar, error positions and the fusion rule."""

from __future__ import annotations

import pytest
import torch

from ibllm_agent.arithmetic import MAX_DEPTH, ExpressionError, Operand, evaluate, parse


def terms(expr: str) -> list[tuple[str, str, str | None, float]]:
    return [(o.kind, o.value, o.modality, round(c, 6)) for o, c in parse(expr).terms]


def test_issue_example():
    assert terms('0.6*audio:rain.wav + image:dog.jpg - 0.3*text:"daytime"') == [
        ("media", "rain.wav", "audio", 0.6),
        ("media", "dog.jpg", "image", 1.0),
        ("text", "daytime", None, -0.3),
    ]


def test_handles_parentheses_division_and_detected_media():
    assert terms('(emb_1 + emb_2) / 2 - 0.5 * media:"my scan.ply"') == [
        ("handle", "emb_1", None, 0.5),
        ("handle", "emb_2", None, 0.5),
        ("media", "my scan.ply", None, -0.5),
    ]


def test_precedence_unary_minus_and_scientific_numbers():
    assert terms("-a + 2*3*b - -c/4") == [("handle", "a", None, -1.0), ("handle", "b", None, 6.0),
                                          ("handle", "c", None, 0.25)]
    assert terms("1e-1 * a") == [("handle", "a", None, 0.1)]
    assert terms("a * 2 * (3 - 1)") == [("handle", "a", None, 4.0)]


def test_repeated_operands_merge_and_keep_first_order():
    assert terms("image:x.png + b + 2*image:x.png") == [("media", "x.png", "image", 3.0), ("handle", "b", None, 1.0)]


def test_bare_paths_keep_dashes_and_slashes_quoted_paths_keep_spaces_and_escapes():
    assert terms("image:sub/dir/my-dog.jpg - text:cat") == [("media", "sub/dir/my-dog.jpg", "image", 1.0),
                                                           ("text", "cat", None, -1.0)]
    assert terms(r"text:'it\'s' + audio:'a b.wav'") == [("text", "it's", None, 1.0), ("media", "a b.wav", "audio", 1.0)]


def test_str_round_trips():
    expr = parse(r'2*text:"say \"hi\" \\ ok" - image:a.png + 0.5*emb_3')
    assert parse(str(expr)).terms == expr.terms


@pytest.mark.parametrize("source, position, fragment", [
    ("", 0, "empty expression"),
    ("image:a*image:b", 7, "cannot multiply two embeddings"),
    ("2+", 2, "operand is missing"),
    ("3 + image:a", 2, "number and an embedding"),
    ("foo:x", 0, "unknown modality 'foo'"),
    ('image:"abc', 6, "unterminated"),
    ("1/0*image:a", 1, "division by zero"),
    ("2image:a", 1, "missing '*'"),
    ("2*3", 0, "no embedding operand"),
    ("image:a - image:a", 0, "coefficient 0"),
    ("image:a + 0*image:b", 12, "coefficient 0"),
    ("1e308*1e308*image:a", 5, "overflow"),
    ("1e30*(1e30*image:a)", 11, "outside float32"),
    ("1e-320*image:a", 7, "outside float32"),
    ("image:a / image:b", 8, "cannot divide by an embedding"),
    ("image:a image:b", 8, "missing operator"),
    ("(image:a", 8, "expected ')'"),
    ("a + $b", 4, "unexpected character '$'"),
    ("text:", 5, "expected a path or quoted text"),
    ("text:'  '", 5, "empty value"),
])
def test_errors_carry_position_and_caret(source, position, fragment):
    with pytest.raises(ExpressionError) as info:
        parse(source)
    err = info.value
    assert err.position == position
    assert fragment in err.message
    assert str(err).splitlines()[-1] == "  " + " " * position + "^"


def test_limits():
    with pytest.raises(ExpressionError, match="more than 2 operands"):
        parse("a + b + c", max_operands=2)
    with pytest.raises(ExpressionError, match="longer than"):
        parse("a + " * 1000 + "a")


def test_deep_nesting_and_long_sign_runs_are_expression_errors_not_recursion_errors():
    with pytest.raises(ExpressionError, match=f"nested deeper than {MAX_DEPTH}"):
        parse("(" * 300 + "a" + ")" * 300)
    assert parse("-" * 1999 + "a").coefficients == [-1.0]  # an odd run of minus signs, in a loop
    assert parse("(" * MAX_DEPTH + "a" + ")" * MAX_DEPTH).coefficients == [1.0]


def test_evaluate_resolves_operands_in_order():
    seen: list[Operand] = []
    table = {"x": torch.tensor([1.0, 0.0]), "y": torch.tensor([0.0, 2.0])}

    def resolve(ops):
        seen.extend(ops)
        return torch.stack([table[o.value] for o in ops])

    out = evaluate("0.5*x + 0.5*y", resolve)
    assert [o.value for o in seen] == ["x", "y"]
    torch.testing.assert_close(out, torch.tensor([0.5, 0.5]), atol=1e-5, rtol=0)  # the fusion of unit vectors
