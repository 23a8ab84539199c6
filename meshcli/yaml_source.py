"""Reading YAML with source positions, and writing files atomically.

Compose and mesh files are read with ruamel.yaml's round-trip loader so that every
mapping and sequence remembers where it came from; diagnostics use that to point at
file:line:column. `atomic_write` is the only way meshcli writes a file.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.scalarbool import ScalarBoolean
from ruamel.yaml.scalarint import ScalarInt

from meshcli.diagnostics import Diagnostic
from meshcli.errors import InvalidFileError, MeshError


@dataclass(frozen=True)
class YamlDocument:
    path: Path
    data: Any  # CommentedMap / CommentedSeq / scalars, positions attached

    def at(self, node: Any, key: Any = None) -> tuple[int | None, int | None]:
        """1-based (line, column) of `key` in mapping `node` (or of `node` itself)."""
        return position(node, key)

    def diag(self, code: str, message: str, node: Any = None, key: Any = None) -> Diagnostic:
        line, column = position(node, key)
        return Diagnostic(code, message, self.path, line, column)


def position(node: Any, key: Any = None) -> tuple[int | None, int | None]:
    lc = getattr(node, "lc", None)
    if lc is None:
        return None, None
    try:
        if key is None:
            line, col = lc.line, lc.col
        elif isinstance(node, CommentedSeq):
            line, col = lc.item(key)
        else:
            line, col = lc.key(key)
    except (KeyError, IndexError, TypeError):
        line, col = lc.line, lc.col
    return line + 1, col + 1


def _round_trip() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    return yaml


def load(path: Path, text: str | None = None) -> YamlDocument:
    """Parse one YAML file; raise InvalidFileError (MESH0001/0003) with a position."""
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidFileError([Diagnostic("MESH0003", f"cannot read file: {exc}", path)]) from exc
    try:
        data = _round_trip().load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        line = mark.line + 1 if mark else None
        column = mark.column + 1 if mark else None
        raise InvalidFileError([Diagnostic("MESH0001", f"invalid YAML: {problem}{_syntax_help(exc)}",
                                           path, line, column)]) from exc
    except YAMLError as exc:
        raise InvalidFileError([Diagnostic("MESH0001", f"invalid YAML: {exc}", path)]) from exc
    return YamlDocument(path, data)


def _syntax_help(exc: MarkedYAMLError) -> str:
    """Where the construct the parser was in began (an unclosed `{` is often lines above the
    error), and the usual cause of the parser's jargon."""
    problem, context, mark = exc.problem or "", exc.context, exc.context_mark
    text = ""
    if context and mark and exc.problem_mark and mark.line != exc.problem_mark.line:
        text += f" ({context.replace('while parsing ', '')} that starts at line {mark.line + 1}, column {mark.column + 1})"
    if r"'\t'" in problem:
        text += "; indent with spaces, not tabs"
    elif "<block end>" in problem:
        text += "; check the indentation: the keys of one mapping start in the same column"
    return text


def to_plain(value: Any) -> Any:
    """Round-trip YAML nodes -> plain dict/list/str/int/float/bool/None, as Compose reads them."""
    if isinstance(value, dict):
        return {to_plain(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, ScalarBoolean):  # an anchored boolean (`&flag true`) is an int subclass
        return bool(value)
    if isinstance(value, int):
        return _compose_int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


def _compose_int(value: int) -> int:
    """An integer as Compose sees it: Go's yaml.v3 reads a leading zero as octal.

    ruamel (YAML 1.2) reads `mode: 0440` as 440 and keeps the digit count in `_width`;
    Compose reads the same text as 0o440, so that is the value to pass on.
    """
    width = getattr(value, "_width", None)
    if type(value) is ScalarInt and width:
        digits = str(abs(int(value))).zfill(width)
        if digits.startswith("0") and set(digits) <= set("01234567"):
            return int(digits, 8) * (-1 if value < 0 else 1)
    return int(value)


def dump_round_trip(data: Any) -> str:
    """Serialise round-trip data keeping comments, key order and quoting."""
    buf = io.StringIO()
    _round_trip().dump(data, buf)
    return buf.getvalue()


def atomic_write(path: Path, text: str, mode: int | None = None) -> None:
    """Write `text` to `path` so readers see the old file or the new one, never half."""
    try:
        path.parent.mkdir(exist_ok=True)  # .mesh/ itself, never a whole missing tree
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise MeshError(f"cannot write {path}: {exc.strerror or exc}",
                        hint="check that the directory exists and is writable") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        elif path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


__all__ = ["YamlDocument", "load", "to_plain", "dump_round_trip", "atomic_write", "position",
           "CommentedMap", "CommentedSeq"]
