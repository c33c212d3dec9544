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


def test_numbers_too_large_for_a_float_never_overflow():
    big = "1" + "0" * 400
    assert _args(f"s {big}/3").args[0].value.raw == float("inf")
    assert _args(f"s -{big}/3").args[0].value.raw == float("-inf")
    assert _args(f"s {big}/{big[:-1]}").args[0].value.raw == 10.0  # exact int division where it fits
    assert _args("s 1/0").args[0].value.raw == float("inf")
    assert _args(f"s 1..{big}").args[0].value.raw == Range(1.0, float("inf"))
    assert _args("s " + "9" * 5000).args[0].value.raw == float("inf")  # past Python's 4300-digit int limit
    assert _args(f"s {big}px").args[0].value.raw == Quantity(10**400, "px")


def test_nesting_is_limited_before_parsing():
    from dnnspec.parser import MAX_NESTING

    ok = "s " + "[" * MAX_NESTING + "1" + "]" * MAX_NESTING
    assert _args(ok).head == "s"
    (err,) = _errors("a {\n  s " + "[" * MAX_NESTING + "1" + "]" * MAX_NESTING + "\n}\n")
    assert err[:3] == (2, 5 + MAX_NESTING - 1, f"syntax error: more than {MAX_NESTING} nested blocks and lists")
    # brackets in strings and comments do not count, and do not hide a real one
    quoted = 's "' + "{" * 100 + '" # ' + "[" * 100 + "\n"
    assert parse_ast(quoted)[0].args[0].value.raw == "{" * 100


def test_syntax_retries_stop_at_the_budget(monkeypatch):
    from dnnspec import parser

    text = "a = 1\nb [1, 2\nc ok\nd x: 1\n"
    assert len(_errors(text)) == 3
    monkeypatch.setattr(parser, "RETRY_BUDGET_CHARS", 1)  # passed at the first error
    assert len(_errors(text)) == 1


def test_spans_of_blocks_lists_and_options_come_from_their_tokens():
    (stmt,) = parse_ast("layers {\n  dense [3, 4] init=he_normal\n}\n", "f.dnn")
    assert (stmt.span.line, stmt.span.col, stmt.span.end_line, stmt.span.end_col) == (1, 1, 3, 2)
    (dense,) = stmt.body
    lst, opt = dense.args
    assert (lst.span.line, lst.span.col, lst.span.end_line, lst.span.end_col) == (2, 9, 2, 15)
    assert (opt.span.line, opt.span.col, opt.span.end_col) == (2, 16, 30)
    assert dense.span.end_col == 30 and stmt.span.file == "f.dnn"
