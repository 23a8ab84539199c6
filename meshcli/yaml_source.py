"""Reading YAML with source positions, and writing files atomically.

Compose and mesh files are read with ruamel.yaml's round-trip loader so that every
mapping and sequence remembers where it came from; diagnostics use that to point at
file:line:column. `atomic_write` is the only way meshcli writes a file.

Reading is bounded, so that any input gets its answer in a few seconds and a few hundred
MB at most: a file may have at most MAX_FILE_BYTES, nest at most MAX_DEPTH deep and hold
at most MAX_VALUES values counted as its aliases expand them (an alias bomb: anchors
that alias each other ten times per level). Each limit is a diagnostic with file:line.
The round-trip parser costs about 40 microseconds per value on a small machine, and an
edit (`meshcli split`) parses the mesh file several times, so MAX_VALUES keeps the worst
edit within a few seconds; real compose and mesh files have a few thousand values and
nest less than ten deep.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.composer import Composer
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.scalarbool import ScalarBoolean
from ruamel.yaml.scalarint import ScalarInt

from meshcli.diagnostics import Diagnostic
from meshcli.errors import InvalidFileError, MeshError


MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_VALUES = 10_000


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

    def node_at(self, path: tuple[Any, ...]) -> tuple[Any, Any]:
        """The deepest (mapping or list, key or index) pair along `path` (keys and indexes from
        the top), for pointing at the closest line to something that is not (quite) there."""
        node, key = self.data, None
        for step in path:
            current = node if key is None else node[key]
            found = (step in current) if isinstance(current, dict) else (
                isinstance(current, list) and isinstance(step, int) and 0 <= step < len(current))
            if not found:
                break
            node, key = current, step
        return node, key

    def diag_at(self, code: str, message: str, path: tuple[Any, ...]) -> Diagnostic:
        """A diagnostic at the value `path` names (or the closest one there is)."""
        return self.diag(code, message, *self.node_at(path))


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


BOM = "\ufeff"


@dataclass(frozen=True)
class TextFile:
    """A user's text file as read, so that an edit can write it back the same way.

    `content` is the file exactly (decoded); `text` is what editors work on: no byte order
    mark, "\n" line ends. `encode(text)` puts the file's BOM and line ends back.
    """

    path: Path
    content: str = ""

    @classmethod
    def read(cls, path: Path) -> TextFile:
        """Read `path` as UTF-8; raise InvalidFileError when it cannot be read (MESH0003) or
        is larger than MAX_FILE_BYTES (MESH0004; only that much is ever read)."""
        try:
            with open(path, "rb") as fh:
                data = fh.read(MAX_FILE_BYTES + 1)
            _check_size(path, data)
            return cls(path, data.decode("utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidFileError([Diagnostic("MESH0003", f"cannot read file: {exc}", path)]) from exc

    @property
    def bom(self) -> bool:
        return self.content.startswith(BOM)

    @property
    def newline(self) -> str:
        """The line end most lines use: "\r\n" or "\n"."""
        crlf = self.content.count("\r\n")
        return "\r\n" if crlf and crlf >= self.content.count("\n") - crlf else "\n"

    @property
    def text(self) -> str:
        return self.content.removeprefix(BOM).replace("\r\n", "\n")

    def encode(self, text: str) -> str:
        """`text` (from an editor) with this file's byte order mark and line ends."""
        return (BOM if self.bom else "") + text.replace("\n", self.newline)


def _check_size(path: Path, data: bytes) -> None:
    if len(data) > MAX_FILE_BYTES:
        line = data[:MAX_FILE_BYTES].count(b"\n") + 1
        raise InvalidFileError([Diagnostic(
            "MESH0004", f"the file is larger than {MAX_FILE_BYTES / 2**20:g} MiB, the most meshcli reads; "
                        "split it (compose: several -f files) or move large values out of it", path, line)])


class _LimitExceeded(Exception):
    def __init__(self, code: str, message: str, mark: Any) -> None:
        super().__init__(message)
        self.code, self.message, self.mark = code, message, mark


class _BoundedComposer(Composer):
    """ruamel's composer, counting the document's depth and its values as aliases expand
    them (MAX_DEPTH, MAX_VALUES); it stops at the first value beyond either."""

    def __init__(self, loader: Any = None) -> None:
        super().__init__(loader)
        self._depth = 0
        self._values = 0
        self._anchored: dict[int, int] = {}  # id(anchored node) -> values it expands to

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.parser.peek_event()
        if isinstance(event, AliasEvent):
            node = super().compose_node(parent, index)
            size = self._anchored.get(id(node))
            if size is None:
                raise _LimitExceeded("MESH0006", f"alias *{event.anchor} is inside the value it names, "
                                                 "so it never ends", event.start_mark)
            self._count(size, event)
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _LimitExceeded("MESH0005", f"values nest more than {MAX_DEPTH} levels deep", event.start_mark)
        before = self._values
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._count(1, event)
        if event.anchor is not None:
            self._anchored[id(node)] = self._values - before
        return node

    def _count(self, values: int, event: Any) -> None:
        self._values += values
        if self._values > MAX_VALUES:
            how = f" once alias *{event.anchor} here is expanded" if isinstance(event, AliasEvent) else ""
            raise _LimitExceeded("MESH0006", f"the file holds more than {MAX_VALUES} values{how} (every use of "
                                             "an alias counts the values it names)", event.start_mark)


def load(path: Path, text: str | None = None) -> YamlDocument:
    """Parse one YAML file; raise InvalidFileError (MESH0001/0003-0006) with a position."""
    return YamlDocument(path, _parse(path, text, lambda loader, text: loader.load(text)))


def load_all(path: Path, text: str | None = None) -> list[YamlDocument]:
    """Every document of a multi-document YAML file (`---` between them, as Kubernetes
    manifests are), empty ones left out; the same errors and bounds as load()."""
    documents = _parse(path, text, lambda loader, text: list(loader.load_all(text)))
    return [YamlDocument(path, data) for data in documents if data is not None]


def _parse(path: Path, text: str | None, read: Any) -> Any:
    if text is None:
        text = TextFile.read(path).text
    else:
        _check_size(path, text.encode("utf-8"))
    loader = _round_trip()
    loader.Composer = _BoundedComposer
    try:
        return read(loader, text)
    except _LimitExceeded as exc:
        raise InvalidFileError([Diagnostic(exc.code, exc.message, path, exc.mark.line + 1,
                                           exc.mark.column + 1)]) from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        line = mark.line + 1 if mark else None
        column = mark.column + 1 if mark else None
        raise InvalidFileError([Diagnostic("MESH0001", f"invalid YAML: {problem}{_syntax_help(exc)}",
                                           path, line, column)]) from exc
    except YAMLError as exc:
        raise InvalidFileError([Diagnostic("MESH0001", f"invalid YAML: {exc}", path)]) from exc


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


def dump_plain(data: Any) -> str:
    """Serialise plain data (a file meshcli generates) in block style, keys in their order."""
    import yaml  # libyaml's emitter when the wheel has it: the same text, twice as fast

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(data, Dumper=dumper, sort_keys=False, default_flow_style=False, width=4096)


def atomic_write(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` so that no reader ever sees half of it, keeping what
    makes the file the user's.

    The text goes to a temporary file in the same directory, is fsynced, and replaces
    the file by a rename (then the directory is fsynced). A symlink is followed: its
    target is rewritten and the link stays a link. An existing file keeps its mode,
    owner and group (as root, the temporary file is chowned before the rename). A file
    with other hard links, or whose owner cannot be kept, is rewritten in place instead
    (a rename would split the links or change the owner), once the complete new text is
    on disk beside it; meshcli writes under the project lock (`workspace.state_lock`),
    so its own readers never see that rewrite half done. A read-only file (no write
    permission for this user, or no write bit at all, even for root) is refused with a
    MeshError naming it, and nothing changes.
    """
    target = Path(os.path.realpath(path))
    shown = f"{path} (a link to {target})" if target != Path(os.path.abspath(path)) else str(path)
    try:
        existing: os.stat_result | None = target.stat()
    except FileNotFoundError:
        existing = None
    except OSError as exc:  # a symlink loop, a directory without search permission
        raise MeshError(f"cannot write {shown}: {exc.strerror or exc}") from exc
    if existing is not None and (not existing.st_mode & 0o222 or not os.access(target, os.W_OK)):
        raise MeshError(f"{shown} is read-only (mode {existing.st_mode & 0o777:o}): nothing was changed",
                        hint=f"make it writable (chmod u+w {target}) for meshcli to change it")
    data = text.encode("utf-8")
    try:
        target.parent.mkdir(exist_ok=True)  # .mesh/ itself, never a whole missing tree
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise MeshError(f"cannot write {shown}: {exc.strerror or exc}",
                        hint="check that the directory exists and is writable") from exc
    handed_over = False  # to _rewrite_in_place, which removes the copy once the file is whole
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if existing is None:
            os.chmod(tmp, 0o644)
        elif existing.st_nlink > 1 or not _take_owner(tmp, existing):
            with open(target, "r+b") as fh:
                handed_over = True
                _rewrite_in_place(fh, data, shown, tmp)
            return
        else:
            os.chmod(tmp, existing.st_mode & 0o7777)  # after chown, which clears set-id bits
        os.replace(tmp, target)
    except OSError as exc:  # a full disk, a directory gone read-only: the old file is whole
        raise MeshError(f"cannot write {shown}: {exc.strerror or exc}; it is unchanged") from exc
    finally:
        if not handed_over and os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_directory(target.parent)


def _take_owner(tmp: str, existing: os.stat_result) -> bool:
    """Give the temporary file the owner and group of the file it replaces; False when this
    user may not (then only an in-place rewrite keeps them)."""
    current = os.stat(tmp)
    if (current.st_uid, current.st_gid) == (existing.st_uid, existing.st_gid):
        return True
    try:
        os.chown(tmp, existing.st_uid, existing.st_gid)
    except PermissionError:
        return False
    return True


def _rewrite_in_place(fh: BinaryIO, data: bytes, shown: str, copy: str) -> None:
    """Overwrite the contents of the file open in `fh` with `data` (the same inode: hard
    links, owner and mode stay). `copy` already holds `data`, fsynced, and is removed once
    the file is whole again: on failure the old contents are put back, and if even that
    fails the copy stays, named in the error."""
    old = fh.read()
    try:
        _overwrite(fh, data)
    except OSError as exc:
        try:
            _overwrite(fh, old)
        except OSError:
            raise MeshError(f"could not rewrite {shown} in place ({exc.strerror or exc}) nor restore it; "
                            f"its new text is in {copy}") from exc
        os.unlink(copy)
        raise MeshError(f"could not rewrite {shown} in place: {exc.strerror or exc}; it is unchanged") from exc
    os.unlink(copy)


def _overwrite(fh: BinaryIO, data: bytes) -> None:
    fh.seek(0)
    fh.write(data)
    fh.truncate()
    fh.flush()
    os.fsync(fh.fileno())


def _fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` survive a crash, where the filesystem allows it (some
    refuse to fsync a directory; the rename is done either way)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


__all__ = ["YamlDocument", "TextFile", "load", "load_all", "to_plain", "dump_round_trip", "dump_plain", "atomic_write", "position",
           "CommentedMap", "CommentedSeq"]
