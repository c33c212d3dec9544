"""Error types of dnnspec.

Every error a user can cause is a :class:`DnnspecError`. The CLI prints it as one
line (or, for spec errors, a compiler-style block) and exits with its ``exit_code``;
no traceback ever reaches the user for something they typed or fed in.

Spec errors carry a :class:`Span` so that the message can point at the source::

    specs/broken.dnn:14:5: error: unknown activation 'elux'
       14 |     elux alpha=1.0
          |     ^^^^
    hint: did you mean 'elu'?
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Span:
    """A region of a source file; lines and columns count from 1, end is exclusive."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


NO_SPAN = Span("<builtin>", 0, 0, 0, 0)


@dataclass(frozen=True)
class Diagnostic:
    """One error or warning about a spec, with where it is and how to fix it."""

    message: str
    span: Span = NO_SPAN
    hint: str | None = None
    severity: str = "error"

    def render(self, source: str | None = None) -> str:
        """Format as ``path:line:col: error: message``, the source line, a caret, a hint."""
        head = f"{self.span}: {self.severity}: {self.message}" if self.span.line else (
            f"{self.span.file}: {self.severity}: {self.message}")
        lines = [head]
        if source is not None and self.span.line:
            src_lines = source.splitlines()
            if 0 < self.span.line <= len(src_lines):
                text = src_lines[self.span.line - 1].replace("\t", " ")
                num = str(self.span.line)
                pad = " " * len(num)
                if self.span.end_line == self.span.line and self.span.end_col > self.span.col:
                    width = self.span.end_col - self.span.col
                else:
                    width = max(1, len(text.rstrip()) - self.span.col + 1)
                lines.append(f"  {num} | {text}")
                lines.append(f"  {pad} | {' ' * (self.span.col - 1)}{'^' * max(1, width)}")
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)


class DnnspecError(Exception):
    """Base of every error a user can cause. ``str(err)`` is a complete one-line message."""

    exit_code = 1


class UsageError(DnnspecError):
    """Bad command-line use: missing file, wrong flag value. Exit status 2."""

    exit_code = 2


class SpecError(DnnspecError):
    """One or more diagnostics about a ``.dnn`` spec. Exit status 1."""

    exit_code = 1

    def __init__(self, diagnostics: list[Diagnostic] | Diagnostic, source: str | None = None):
        if isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics: list[Diagnostic] = list(diagnostics)
        self.source = source
        super().__init__(self.diagnostics[0].render() if self.diagnostics else "spec error")

    def render(self) -> str:
        """All diagnostics, each with its source line and caret, separated by blank lines."""
        return "\n\n".join(d.render(self.source) for d in self.diagnostics)


class DataError(DnnspecError):
    """A data set that cannot be used with a spec: wrong shape, NaN, bad labels, missing file."""


class CheckpointError(DnnspecError):
    """A checkpoint or model file that is missing, corrupt, or does not match its spec."""


class DivergenceError(DnnspecError):
    """Training produced NaN or inf; the message names the epoch, step and layer."""


class ShapeError(ValueError):
    """Raised by a shape rule (dnnspec.shapes); the front end turns it into a Diagnostic.

    ``option`` names the option at fault, when one is, so the caret can point at it.
    """

    def __init__(self, message: str, hint: str | None = None, option: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.option = option


@dataclass
class DiagnosticSink:
    """Collects diagnostics so that all errors of a file are reported in one run."""

    items: list[Diagnostic] = field(default_factory=list)

    def error(self, message: str, span: Span = NO_SPAN, hint: str | None = None) -> None:
        self.items.append(Diagnostic(message, span, hint))

    def __bool__(self) -> bool:
        return any(d.severity == "error" for d in self.items)
