"""The parser: raw values, spans, statement shapes, syntax errors with recovery."""

import pytest

from dnnspec.errors import SpecError
from dnnspec.parser import grammar_text, normalize_text, parse_ast
from dnnspec.schema import Quantity, Range


def _args(text):
    (stmt,) = parse_ast(text)
    return stmt


@pytest.mark.parametrize("src, raw", [
    ("42", 42), ("-3", -3), ("0.5", 0.5), ("1e-3", 1e-3), ("2.5E+2", 250.0), ("1/255", 1 / 255),
    ("true", True), ("false", False), ("he_normal", "he_normal"), ("fashion-mnist", "fashion-mnist"),
    ('"a \\"b\\" c"', 'a "b" c'), ("2px", Quantity(2, "px")), ("10deg", Quantity(10, "deg")),
    ("10%", Quantity(10, "%")), ("1.5px", Quantity(1.5, "px")), ("0.9..1.1", Range(0.9, 1.1)),
    ("[1, 28, 28]", [1, 28, 28]), ("[]", []), ("[0.5, true, x]", [0.5, True, "x"]),
])
def test_raw_values(src, raw):
    stmt = _args(f"s {src}\n")
    assert stmt.args[0].value.raw == raw
    assert type(stmt.args[0].value.raw) is type(raw)


def test_named_and_positional_with_spans():
    stmt = _args("optimizer adam lr=1e-3  beta1=0.9")
    assert stmt.head == "optimizer" and stmt.head_span.col == 1
    assert [(a.name, a.value.raw) for a in stmt.args] == [(None, "adam"), ("lr", 1e-3), ("beta1", 0.9)]
    lr = stmt.args[1]
    assert (lr.span.line, lr.span.col, lr.value.span.col, lr.value.span.end_col) == (1, 16, 19, 23)


def test_blocks_nest_and_comments_and_blank_lines():
    text = "# top\n\nlayers {   # c\n  repeat 2 {\n\n    dense 3  # x\n  }\n  relu }\n"
    (layers,) = parse_ast(text)
    assert layers.head == "layers" and layers.args == ()
    rep, relu = layers.body
    assert rep.head == "repeat" and rep.positional[0].raw == 2
    assert rep.body[0].head == "dense" and rep.body[0].head_span.line == 6
    assert relu.head == "relu" and relu.body is None


def test_comma_continues_on_next_line():
    stmts = parse_ast('classes "a", "b",\n        "c"  # three\nloss mse\n')
    assert [v.raw for v in stmts[0].positional] == ["a", "b", "c"]
    assert stmts[1].head == "loss"


def test_crlf_and_bom_are_normalised():
    text = normalize_text("\ufeffnetwork x\r\nloss mse\r\n")
    assert [s.head for s in parse_ast(text)] == ["network", "loss"]


def test_empty_text_is_no_statements():
    assert parse_ast("") == ()
    assert parse_ast("\n  # only a comment\n\n") == ()


def _errors(text):
    with pytest.raises(SpecError) as info:
        parse_ast(text, "t.dnn")
    return [(d.span.line, d.span.col, d.message, d.hint) for d in info.value.diagnostics]


def test_several_syntax_errors_in_one_run():
    errs = _errors("a = 1\nb [1, 2\nc ok\nd x: 1\n")
    assert [(line, col) for line, col, *_ in errs] == [(1, 3), (2, 8), (4, 4)]
    assert "name=value" in errs[2][3] and "']'" in errs[1][3]


def test_unclosed_block_points_at_its_brace():
    # the "}" on line 5 closes the inner repeat, so the outer layers block is the open one
    errs = _errors("layers {\n  dense 3\n  repeat 2 {\n  relu\n}\n")
    assert errs == [(1, 8, "syntax error: this '{' is never closed",
                     "add '}' on its own line after the block's last statement")]


def test_unprintable_character_is_escaped():
    (err,) = _errors("a \x07\n")
    assert err[:3] == (1, 3, "syntax error: unexpected character '\\x07'")


def test_grammar_is_found():
    assert "stmt:" in grammar_text()
