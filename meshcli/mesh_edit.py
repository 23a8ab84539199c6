"""Editing mesh.yaml in place: pure functions from the file's text to its new text.

Every `meshcli split` / `meshcli route ...` command is one of these transforms. They
round-trip the file through ruamel.yaml so the user's comments, key order, quoting and
indentation survive, and only the edited lines change: new keys go where the mesh-file
reference puts them, and the comments that describe the *next* key stay in front of it.
A missing service entry (or a missing file: empty text) is created.

The transforms check what only they can know (a named route exists); whether the
result is a valid mesh file is `control_plane.edit()`'s job (full parse + resolve).
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark
from ruamel.yaml.tokens import CommentToken

from meshcli import yaml_source
from meshcli.diagnostics import did_you_mean
from meshcli.errors import InputError
from meshcli.mesh_config import API_VERSION

# Where a new key goes: the order of docs/mesh-file.md.
SERVICE_ORDER = ("versions", "ports", "loadBalancer", "to", "split", "timeout", "retries", "mirror", "fault",
                 "routes", "circuitBreaker", "outlierDetection", "tcpFault", "mtls", "authorization")
TOP_LEVEL_ORDER = ("apiVersion", "mtls", "services", "telemetry")
MTLS_ORDER = ("mode", "trustDomain", "certificateLifetime")
ROUTE_ORDER = ("name", "match", "to", "split", "timeout", "retries", "mirror", "fault")
RETRIES_ORDER = ("attempts", "perTryTimeout", "retryOn", "retriableStatusCodes", "backoff", "retryNonIdempotent")
MATCH_ORDER = ("headers", "path", "method", "query", "source")
FLOW_FIELDS = ("split", "mirror")  # written on one line, as the reference does: `split: {v1: 90, v2: 10}`

Container = CommentedMap | CommentedSeq
Indent = tuple[int, int, int]  # ruamel.yaml's mapping indent, sequence indent, dash offset


# --- public transforms ---------------------------------------------------------------

def set_split(text: str, path: Path, service: str, weights: dict[str, int], route: str | None = None) -> str:
    """`split: {v1: 90, v2: 10}`; versions not in `weights` leave the split, `to` goes."""
    def change(target: CommentedMap) -> None:
        _delete(target, "to")
        split = target.get("split")
        if isinstance(split, CommentedMap):
            for version in [v for v in split if str(v) not in weights]:
                _delete(split, version)
            for version, weight in weights.items():
                split[version] = weight
        else:
            _set(target, "split", _flow(weights), _order(route))
    return _edit(text, path, service, route, change)


def set_timeout(text: str, path: Path, service: str, timeout: str, route: str | None = None) -> str:
    return _edit(text, path, service, route, lambda target: _set(target, "timeout", timeout, _order(route)))


def set_retries(text: str, path: Path, service: str, retries: dict[str, Any], route: str | None = None) -> str:
    """Replace the retry policy with `retries` (mesh-file field names, e.g. perTryTimeout)."""
    return _edit(text, path, service, route,
                 lambda target: _set(target, "retries", _block(retries, RETRIES_ORDER), _order(route)))


def set_circuit_breaker(text: str, path: Path, service: str, policy: dict[str, int]) -> str:
    return _edit(text, path, service, None,
                 lambda target: _set(target, "circuitBreaker", _block(policy), SERVICE_ORDER))


def set_outlier_detection(text: str, path: Path, service: str, policy: dict[str, Any]) -> str:
    return _edit(text, path, service, None,
                 lambda target: _set(target, "outlierDetection", _block(policy), SERVICE_ORDER))


def set_mirror(text: str, path: Path, service: str, version: str, percent: float = 100,
               route: str | None = None) -> str:
    return _edit(text, path, service, route, lambda target: _set(
        target, "mirror", _flow({"version": version, "percent": _number(percent)}), _order(route)))


def set_match_route(text: str, path: Path, service: str, name: str, match: dict[str, Any], to: str) -> str:
    """Add the route `name` (match -> to) before the default route, or replace its match and `to`.

    `match` is one mesh-file match entry, e.g. {"headers": {"x-canary": {"exact": "true"}}}.
    A replaced route keeps its other settings (timeout, retries...) but not a split.
    """
    def change(body: CommentedMap) -> None:
        entry = _block(match, MATCH_ORDER)
        routes = body.get("routes")
        existing = _find_route(routes, name) if isinstance(routes, CommentedSeq) else None
        if existing is not None:
            _set(existing, "match", _seq([entry]), ROUTE_ORDER)
            _delete(existing, "split")
            _set(existing, "to", to, ROUTE_ORDER)
            return
        route = _block({"name": name})
        route["match"] = _seq([entry])
        route["to"] = to
        if not isinstance(routes, CommentedSeq):
            _set(body, "routes", _seq([route]), SERVICE_ORDER)
            return
        # Before a trailing catch-all route (one without a match), else last.
        position = len(routes)
        if routes and isinstance(routes[-1], dict) and not routes[-1].get("match"):
            position -= 1
        _insert(routes, position, route)
    return _edit(text, path, service, None, change)


def delete_route(text: str, path: Path, service: str, name: str) -> str:
    def change(body: CommentedMap) -> None:
        routes = body.get("routes")
        _route_in(body, name)  # raises with the known names
        if len(routes) == 1:
            _delete(body, "routes")
        else:
            _delete(routes, next(i for i, r in enumerate(routes) if _route_name(r) == name))
    return _edit(text, path, service, None, change)


def remove(text: str, path: Path, service: str, key: str, route: str | None = None) -> str:
    """Delete one setting (timeout, retries, mirror, split, circuitBreaker...): back to the default."""
    return _edit(text, path, service, route, lambda target: _delete(target, key))


def set_service_fields(text: str, path: Path, service: str, fields: dict[str, Any],
                       replacing: tuple[str, ...]) -> str:
    """Give `service` these settings (mesh-file spelling, nested plain data; `meshcli import`):
    the keys of `replacing` that `fields` leaves out are deleted, the others set where the
    reference puts them; every other key, and the comments of what stays, are kept."""
    def change(body: CommentedMap) -> None:
        for key in replacing:
            if key not in fields:
                _delete(body, key)
        for key, value in fields.items():
            _set(body, key, _flow(value) if key in FLOW_FIELDS else _nested(value), SERVICE_ORDER)
    return _edit(text, path, service, None, change)


def set_mtls_fields(text: str, path: Path, fields: dict[str, Any]) -> str:
    """Set the mesh-wide `mtls` keys of `fields` (None: delete the key), keeping the others and their
    comments; an `mtls` left empty is removed."""
    data, indent = _load(text, path)
    block = _mapping(data, "mtls", f"{path}: `mtls` must be a mapping")
    for key, value in fields.items():
        if value is None:
            _delete(block, key)
        else:
            _set(block, key, _nested(value), MTLS_ORDER)
    if block:
        _set(data, "mtls", block, TOP_LEVEL_ORDER)
    elif "mtls" in data:
        _delete(data, "mtls")
    return _serialise(data, indent)


# --- the round trip ------------------------------------------------------------------

def _load(text: str, path: Path) -> tuple[CommentedMap, Indent]:
    """The file's data, and the indentation to write it back with."""
    data = yaml_source.load(path, text).data if text.strip() else None
    if data is None:
        data = CommentedMap([("apiVersion", API_VERSION), ("services", CommentedMap())])
    if not isinstance(data, CommentedMap):
        raise InputError(f"{path}: the mesh file must be a mapping with apiVersion and services",
                         hint="fix it by hand, or move it away and let meshcli create a new one")
    return data, _indent_kept(data, text)


def _mapping(parent: CommentedMap, key: str, wrong: str) -> CommentedMap:
    """parent[key] when it is a mapping, a new (not yet attached) one when it is absent or
    null; InputError(`wrong`) when it is something else."""
    found = parent.get(key)
    if isinstance(found, CommentedMap):
        return found
    if found is not None:
        raise InputError(wrong)
    return CommentedMap()


def _edit(text: str, path: Path, service: str, route: str | None, change: Callable[[CommentedMap], None]) -> str:
    data, indent = _load(text, path)
    services = _mapping(data, "services", f"{path}: `services` must be a mapping of service names")
    if data.get("services") is not services:  # absent or null: attach the new one
        _set(data, "services", services, ("apiVersion", "services"))
    body = _mapping(services, service, f'{path}: service "{service}" must be a mapping')
    if services.get(service) is not body:
        _set(services, service, body, ())
    elif not body and body.fa.flow_style():
        body.fa.set_block_style()  # `payment: {}` grows into a block
    change(_route_in(body, route) if route is not None else body)
    return _serialise(data, indent)


def _indent_kept(data: Any, text: str) -> Indent:
    """The indentation with which the data read from `text`, not yet edited, comes out as
    `text` byte for byte, so the untouched lines stay; else the one used most in the text."""
    guess = _guess_indent(text)
    if text.strip():
        for indent in dict.fromkeys([guess, (2, 4, 2), (2, 2, 0), (4, 4, 2), (4, 6, 4), (4, 4, 0)]):
            if _serialise(data, indent) == text:
                return indent
    return guess


def _serialise(data: Any, indent: Indent) -> str:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.brace_single_entry_mapping_in_flow_sequence = True  # `[{exact: a}]` stays as written, not `[exact: a]`
    mapping, sequence, offset = indent
    yaml.indent(mapping=mapping, sequence=sequence, offset=offset)
    buf = io.StringIO()
    yaml.dump(data, buf)
    return buf.getvalue()


def _guess_indent(text: str) -> Indent:
    """(mapping indent, sequence indent, dash offset) used most in the text; (2, 4, 2) by default."""
    mappings: Counter[int] = Counter()
    offsets: Counter[int] = Counter()
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    for line, following in zip(lines, lines[1:]):
        if not line.split(" #")[0].rstrip().endswith(":"):
            continue  # only a key whose value is the block below
        key_column = len(line) - len(line.lstrip(" -"))
        child_column = len(following) - len(following.lstrip(" "))
        if following.lstrip().startswith("- "):
            offsets[child_column - key_column] += 1
        elif child_column > key_column:
            mappings[child_column - key_column] += 1
    mapping = mappings.most_common(1)[0][0] if mappings else 2
    offset = max(offsets.most_common(1)[0][0], 0) if offsets else 2
    return mapping, offset + 2, offset


# --- building new values -------------------------------------------------------------

def _flow(values: dict[str, Any]) -> CommentedMap:
    node = CommentedMap((k, _flow(v) if isinstance(v, dict) else _list(v)) for k, v in values.items())
    node.fa.set_flow_style()
    return node


def _block(values: dict[str, Any], order: tuple[str, ...] = ()) -> CommentedMap:
    keys = sorted(values, key=lambda k: order.index(k) if k in order else len(order))
    return CommentedMap((k, _flow(values[k]) if isinstance(values[k], dict) else _list(values[k])) for k in keys)


def _nested(value: Any, top: bool = True) -> Any:
    """Plain data as people write it: a setting's mapping and list items as blocks, the small
    mappings inside them in flow style (`end-user: {exact: jason}`)."""
    if isinstance(value, dict):
        if not top and all(not isinstance(v, dict) and not _has_mappings(v) for v in value.values()):
            return _flow(value)
        return CommentedMap((k, _nested(v, False)) for k, v in value.items())
    if _has_mappings(value):
        return CommentedSeq(_nested(item) for item in value)
    return _list(value)


def _has_mappings(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and any(isinstance(item, dict) for item in value)


def _list(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        node = CommentedSeq(value)
        node.fa.set_flow_style()
        return node
    return value


def _seq(items: list) -> CommentedSeq:
    return CommentedSeq(items)


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def _order(route: str | None) -> tuple[str, ...]:
    return ROUTE_ORDER if route is not None else SERVICE_ORDER


# --- finding routes ------------------------------------------------------------------

def _route_name(entry: Any) -> str | None:
    return str(entry.get("name")) if isinstance(entry, dict) and entry.get("name") is not None else None


def _find_route(routes: CommentedSeq, name: str) -> CommentedMap | None:
    return next((r for r in routes if _route_name(r) == name), None)


def _route_in(body: CommentedMap, name: str) -> CommentedMap:
    routes = body.get("routes")
    found = _find_route(routes, name) if isinstance(routes, CommentedSeq) else None
    if found is None:
        names = [n for n in map(_route_name, routes if isinstance(routes, list) else []) if n]
        raise InputError(f'no route named "{name}"{did_you_mean(name, names)}; '
                         f"routes: {', '.join(names) or 'none'}",
                         hint="add one with `meshcli route match SERVICE NAME ... --to VERSION`")
    return found


# --- edits that keep comments in place -----------------------------------------------
#
# ruamel keeps the comment lines that precede a key as the tail of the comment after the
# previous value (on the deepest last node of that value). Inserting or deleting a key
# must move that tail along, or the next key's comment would end up above the wrong key.

def _set(mapping: CommentedMap, key: str, value: Any, order: tuple[str, ...]) -> None:
    if key in mapping:
        old = mapping[key]
        if isinstance(old, CommentedMap) and isinstance(value, CommentedMap) and \
                bool(old.fa.flow_style()) == bool(value.fa.flow_style()):
            _replace_contents(old, value)
            return
        if old == value and type(old) is type(value):
            return  # keep the user's quoting
        tail = _detach_tail(mapping, key, _key_column(mapping))
        mapping[key] = value
        _attach_tail(mapping, key, tail)
        return
    rank = order.index(key) if key in order else len(order)
    position = 0
    for i, existing in enumerate(mapping):
        if (order.index(existing) if existing in order else len(order)) <= rank:
            position = i + 1
    _insert(mapping, position, value, key)


def _replace_contents(old: CommentedMap, new: CommentedMap) -> None:
    """Make `old` equal `new` while keeping the comments of the keys that stay."""
    for key in [k for k in old if k not in new]:
        _delete(old, key)
    for key, value in new.items():
        if key not in old:
            _insert(old, len(old), value, key)
        elif old[key] != value:
            _set(old, key, value, ())


def _insert(container: Container, position: int, value: Any, key: Any = None) -> None:
    previous = (list(container)[position - 1] if isinstance(container, CommentedMap) else position - 1) \
        if position > 0 else None
    tail = _detach_tail(container, previous, _key_column(container)) if previous is not None else []
    if isinstance(container, CommentedMap):
        container.insert(position, key, value)
        _attach_tail(container, key, tail)
    else:
        container.insert(position, value)
        _attach_tail(container, position, tail)


def _delete(container: Container, key: Any) -> None:
    if isinstance(container, CommentedMap) and key not in container:
        return
    keys = list(container) if isinstance(container, CommentedMap) else list(range(len(container)))
    index = keys.index(key)
    column = _key_column(container)
    tail = _detach_tail(container, key, column)
    _drop_leading_comment(container, keys[index - 1] if index > 0 else None, column)
    del container[key]
    if index > 0:
        _attach_tail(container, keys[index - 1], tail)
    elif tail and len(container):  # the first entry went: its tail now precedes the new first entry
        tokens = [CommentToken(line.strip() + "\n" if line.strip() else "\n", CommentMark(column)) for line in tail]
        before = container.ca.comment[1] if container.ca.comment and len(container.ca.comment) > 1 else None
        if before is not None:
            before.extend(tokens)  # in place: the parent's entry holds the same list
        else:
            first = next(iter(container)) if isinstance(container, CommentedMap) else 0
            entry = container.ca.items.setdefault(first, [None, None, None, None])
            entry[1] = tokens + list(entry[1] or [])


def _drop_leading_comment(container: Container, previous: Any, column: int) -> None:
    """Remove the comment lines right above an entry being deleted (up to a blank line): they
    describe it, and left behind they would describe whatever comes next."""
    if previous is None:  # the first entry: its comment is the container's own (shared with the parent)
        before = container.ca.comment[1] if container.ca.comment and len(container.ca.comment) > 1 else None
        while before and isinstance(before[-1], CommentToken) and before[-1].value.strip():
            before.pop()  # in place: the parent's entry holds the same list
            if before and before[-1].value.endswith("\n\n"):
                break
        return
    moved = _detach_tail(container, previous, column)
    while moved and moved[-1].strip():
        moved.pop()
    _attach_tail(container, previous, moved)


def _key_column(container: Container) -> int:
    lc = getattr(container, "lc", None)
    return lc.col if lc is not None and lc.col is not None else 0


def _last_slot(container: Container, key: Any) -> tuple[dict, Any, int]:
    """(ca.items, key, slot) holding the comment after the entry `key`, descending into blocks."""
    while True:
        value = container[key]
        if isinstance(value, (CommentedMap, CommentedSeq)) and value and not value.fa.flow_style():
            container = value
            key = list(value)[-1] if isinstance(value, CommentedMap) else len(value) - 1
            continue
        return container.ca.items, key, (2 if isinstance(container, CommentedMap) else 0)


def _detach_tail(container: Container, key: Any, column: int) -> list[str]:
    """Remove and return the comment lines after the entry `key` that belong to what follows it:
    from the first blank line, or the first comment not indented deeper than `column`."""
    items, slot_key, slot = _last_slot(container, key)
    entry = items.get(slot_key)
    token = entry[slot] if entry else None
    if not isinstance(token, CommentToken):
        return []
    first, *lines = token.value.split("\n")
    lines = lines[:-1] if lines and lines[-1] == "" else lines
    for i, line in enumerate(lines):
        if not line.strip() or len(line) - len(line.lstrip()) <= column:
            keep, moved = lines[:i], lines[i:]
            break
    else:
        return []
    if not first and not keep:
        entry[slot] = None
    else:
        token.value = "\n".join([first, *keep]) + "\n"
    return moved


def _attach_tail(container: Container, key: Any, lines: list[str]) -> None:
    if not lines:
        return
    items, slot_key, slot = _last_slot(container, key)
    entry = items.setdefault(slot_key, [None, None, None, None])
    token = entry[slot]
    if isinstance(token, CommentToken):
        token.value = token.value + "\n".join(lines) + "\n"
    else:
        token = CommentToken("\n" + "\n".join(lines) + "\n", CommentMark(0))
        entry[slot] = token


__all__ = ["set_split", "set_timeout", "set_retries", "set_circuit_breaker", "set_outlier_detection", "set_mirror",
           "set_match_route", "delete_route", "remove"]
