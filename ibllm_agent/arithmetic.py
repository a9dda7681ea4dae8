"""Embedding arithmetic: parse and evaluate expressions over ImageBind embeddings.

ImageBind puts images, sounds, videos, point clouds and text in one space, so a weighted sum of
their embeddings is itself a query the LLM can describe (paper §4, "multi-modality mixture"):

    0.6*audio:rain.wav + image:dog.jpg - 0.3*text:"daytime"
    (emb_1 + emb_2) / 2 - 0.5 * media:"my scan.ply"

Grammar (whitespace is free between tokens)::

    expression := sum END
    sum        := product (("+" | "-") product)*
    product    := unary (("*" | "/") unary)*
    unary      := ("+" | "-") unary | primary
    primary    := NUMBER | operand | "(" sum ")"
    operand    := MODALITY ":" (QUOTED | BARE) | HANDLE
    MODALITY   := a name of the modality registry (image, video, audio, point, text) | media (detect)
    QUOTED     := '"' ... '"' | "'" ... "'"    (backslash escapes the quote)
    BARE       := a run of characters other than whitespace, ( ) * + " ' ,
    HANDLE     := [A-Za-z_][A-Za-z0-9_]*       (an embedding kept by the embed tool)

The value of an expression must be linear in its operands: an embedding may be scaled by a number
or divided by one, and embeddings add and subtract; multiplying two embeddings, dividing by an
embedding or adding a bare number to an embedding is an error. Errors are `ExpressionError`s that
carry the character position and render a caret under the expression. So are numbers that overflow,
coefficients outside float32's range or equal to 0 (a term that drops out silently is refused, as is
an expression nested deeper than `MAX_DEPTH`). The value is the terms' fusion (`ibllm_agent.fusion`):
the same mixture as the same inputs with the same weights anywhere else.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ibllm_agent import modalities
from ibllm_agent.fusion import FLOAT32_MAX, fuse

MODALITIES = (*modalities.NAMES, modalities.DETECT)
"""Prefixes of `modality:value` operands: the registry's names and "media" (detect from the content)."""
MAX_DEPTH = 64
"""Nesting of parentheses (and runs of signs) an expression may have."""
FLOAT32_TINY = 1.1754943508222875e-38

_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE = re.compile(r"[^\s()*+\"',]+")


class ExpressionError(ValueError):
    """A malformed or non-linear expression; `position` is the 0-based character offset of the problem."""

    def __init__(self, message: str, expression: str, position: int):
        self.message = message
        self.expression = expression
        self.position = position
        caret = " " * position + "^"
        super().__init__(f"{message} at position {position}:\n  {expression}\n  {caret}")


@dataclass(frozen=True)
class Operand:
    """One embedding in an expression: media (`modality` + path), text, or a stored handle."""

    kind: str  # "media" | "text" | "handle"
    value: str  # path, text or handle name
    modality: str | None = None  # image|audio|video|point for media; None = detect from content
    position: int = field(default=0, compare=False)

    def __str__(self) -> str:
        if self.kind == "handle":
            return self.value
        quoted = '"' + self.value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{self.modality or 'media'}:{quoted}" if self.kind == "media" else f"text:{quoted}"

    @property
    def key(self) -> tuple[str, str, str | None]:
        """Identity used to merge repeated operands (`a + a` is `2*a`); the position does not count."""
        return (self.kind, self.value, self.modality)


@dataclass(frozen=True)
class Token:
    kind: str  # "num" | "op" | "(" | ")" | "operand" | "end"
    text: str
    position: int
    operand: Operand | None = None


def tokenize(expression: str) -> list[Token]:
    """Split an expression into tokens; raises ExpressionError on characters that start no token."""
    tokens: list[Token] = []
    i, n = 0, len(expression)
    while i < n:
        ch = expression[i]
        if ch.isspace():
            i += 1
        elif ch in "+-*/":
            tokens.append(Token("op", ch, i))
            i += 1
        elif ch in "()":
            tokens.append(Token(ch, ch, i))
            i += 1
        elif m := _NUMBER.match(expression, i):
            if _NAME.match(expression, m.end()):
                raise ExpressionError("missing '*' between a number and an operand", expression, m.end())
            tokens.append(Token("num", m.group(), i))
            i = m.end()
        elif m := _NAME.match(expression, i):
            name, end = m.group(), m.end()
            if end < n and expression[end] == ":":
                operand, end = _read_operand(expression, name, i, end + 1)
                tokens.append(Token("operand", expression[i:end], i, operand))
            else:
                tokens.append(Token("operand", name, i, Operand("handle", name, None, i)))
            i = end
        else:
            raise ExpressionError(f"unexpected character {ch!r}", expression, i)
    tokens.append(Token("end", "", n))
    return tokens


def _read_operand(expression: str, modality: str, start: int, i: int) -> tuple[Operand, int]:
    """Read the value after `modality:` (quoted or bare); returns the operand and the end offset."""
    if modality not in MODALITIES:
        raise ExpressionError(
            f"unknown modality {modality!r} (expected one of {', '.join(MODALITIES)})", expression, start)
    n = len(expression)
    if i < n and expression[i] in "\"'":
        quote, j, chars = expression[i], i + 1, []
        while j < n and expression[j] != quote:
            if expression[j] == "\\" and j + 1 < n:
                j += 1
            chars.append(expression[j])
            j += 1
        if j >= n:
            raise ExpressionError(f"unterminated {quote} string", expression, i)
        value, end = "".join(chars), j + 1
    elif m := _BARE.match(expression, i):
        value, end = m.group(), m.end()
    else:
        raise ExpressionError(f"expected a path or quoted text after '{modality}:'", expression, i)
    if not value.strip():
        raise ExpressionError(f"empty value after '{modality}:'", expression, i)
    if modality == "text":
        return Operand("text", value, None, start), end
    return Operand("media", value, None if modality == modalities.DETECT else modality, start), end


# A parsed value is either a number or a linear combination {operand key: (operand, coefficient)}.
Linear = dict[tuple, tuple[Operand, float]]


class _Parser:
    """Recursive descent over the token list, building numbers and linear combinations directly."""

    def __init__(self, expression: str):
        self.expression = expression
        self.tokens = tokenize(expression)
        self.i = 0
        self.depth = 0

    def error(self, message: str, token: Token | None = None) -> ExpressionError:
        token = token or self.tokens[self.i]
        return ExpressionError(message, self.expression, token.position)

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def parse(self) -> Linear:
        if self.peek().kind == "end":
            raise self.error("empty expression")
        value = self.sum()
        if self.peek().kind != "end":
            raise self.error(f"unexpected {self.peek().text!r} (missing operator?)")
        if not isinstance(value, dict):
            raise ExpressionError("the expression has no embedding operand (only numbers)", self.expression, 0)
        return value

    def number(self, value: float, token: Token) -> float:
        """A numeric intermediate, refused once it overflows (1e308*1e308 is inf, not a weight)."""
        if not math.isfinite(value):
            raise self.error("the numbers overflow (the result is not a finite number)", token)
        return value

    def sum(self) -> float | Linear:
        left = self.product()
        while self.peek().kind == "op" and self.peek().text in "+-":
            op = self.take()
            right = self.product()
            if isinstance(left, dict) != isinstance(right, dict):
                raise self.error("cannot add or subtract a number and an embedding (scale it with *)", op)
            sign = 1.0 if op.text == "+" else -1.0
            left = self.number(left + sign * right, op) if not isinstance(left, dict) else _add(left, right, sign)
        return left

    def product(self) -> float | Linear:
        left = self.unary()
        while self.peek().kind == "op" and self.peek().text in "*/":
            op = self.take()
            right = self.unary()
            if op.text == "*":
                if isinstance(left, dict) and isinstance(right, dict):
                    raise self.error("cannot multiply two embeddings (the expression must be linear)", op)
                if isinstance(left, dict):
                    left = _scale(left, right)
                elif isinstance(right, dict):
                    left = _scale(right, left)
                else:
                    left = self.number(left * right, op)
            else:
                if isinstance(right, dict):
                    raise self.error("cannot divide by an embedding", op)
                if right == 0:
                    raise self.error("division by zero", op)
                left = _scale(left, 1.0 / right) if isinstance(left, dict) else self.number(left / right, op)
        return left

    def unary(self) -> float | Linear:
        negative = False
        while self.peek().kind == "op" and self.peek().text in "+-":  # a loop: 2,000 signs must not recurse
            negative ^= self.take().text == "-"
        value = self.primary()
        if not negative:
            return value
        return _scale(value, -1.0) if isinstance(value, dict) else -value

    def primary(self) -> float | Linear:
        token = self.take()
        if token.kind == "num":
            value = float(token.text)
            if not math.isfinite(value):
                raise self.error(f"number {token.text!r} is out of range", token)
            return value
        if token.kind == "operand":
            return {token.operand.key: (token.operand, 1.0)}
        if token.kind == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self.error(f"parentheses nested deeper than {MAX_DEPTH}", token)
            value = self.sum()
            if self.peek().kind != ")":
                raise self.error("expected ')'")
            self.take()
            self.depth -= 1
            return value
        if token.kind == "end":
            raise self.error("unexpected end of expression (an operand is missing)", token)
        raise self.error(f"unexpected {token.text!r}", token)


def _add(left: Linear, right: Linear, sign: float) -> Linear:
    out = dict(left)
    for key, (operand, coef) in right.items():
        prev = out.get(key, (operand, 0.0))
        out[key] = (prev[0], prev[1] + sign * coef)
    return out


def _scale(value: Linear, factor: float) -> Linear:
    return {key: (operand, coef * factor) for key, (operand, coef) in value.items()}


@dataclass(frozen=True)
class Expression:
    """A parsed, linear expression: `terms` are (operand, coefficient) in first-appearance order."""

    source: str
    terms: tuple[tuple[Operand, float], ...]

    @property
    def operands(self) -> list[Operand]:
        return [operand for operand, _ in self.terms]

    @property
    def coefficients(self) -> list[float]:
        return [coef for _, coef in self.terms]

    def __str__(self) -> str:
        parts = []
        for operand, coef in self.terms:
            sign = "-" if coef < 0 else "+"
            parts.append(f"{sign} {abs(coef):g}*{operand}")
        text = " ".join(parts)
        return text[2:] if text.startswith("+ ") else "-" + text[2:]


def parse(expression: str, *, max_operands: int = 16, max_length: int = 2000) -> Expression:
    """Parse `expression` into its linear terms; raises ExpressionError with the position of the problem."""
    if len(expression) > max_length:
        raise ExpressionError(f"expression longer than {max_length} characters", expression[:60] + "...", 60)
    linear = _Parser(expression).parse()
    terms = tuple(linear.values())
    for operand, coef in terms:
        if coef == 0.0:
            raise ExpressionError(f"{operand} has coefficient 0 (its terms cancel), so it would drop out; "
                                  "remove it", expression, operand.position)
        if not FLOAT32_TINY <= abs(coef) <= FLOAT32_MAX:
            raise ExpressionError(f"the coefficient {coef:g} of {operand} is outside float32's range "
                                  f"({FLOAT32_TINY:.2g} to {FLOAT32_MAX:.2g} in magnitude)", expression,
                                  operand.position)
    if len(terms) > max_operands:
        raise ExpressionError(f"more than {max_operands} operands", expression, terms[max_operands][0].position)
    return Expression(expression, terms)


def evaluate(expression: str | Expression, resolve: Callable[[list[Operand]], torch.Tensor]) -> torch.Tensor:
    """Evaluate an expression: `resolve(operands)` returns their embeddings (N, D); returns the fused (D,)."""
    parsed = parse(expression) if isinstance(expression, str) else expression
    vectors = resolve(parsed.operands)
    return fuse(vectors, parsed.coefficients, names=[str(o) for o in parsed.operands])
