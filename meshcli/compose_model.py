"""The user's compose project as meshcli sees it: exactly what `docker compose` would run.

Compose resolves the project (`docker compose [options] config --format json`: every -f
in order, the override file, COMPOSE_* variables, .env and --env-file, profiles,
include, extends, anchors, !reset/!override, interpolation); meshcli reads that
canonical model, once per command. The user's own files are parsed only to point
diagnostics at the file and line that define a service (and for `x-mesh`, which
Compose drops from its output).

Discovery: which compose services are meshed, which logical service and version each
implements (labels `mesh.service`/`mesh.version`, or a `-vN` suffix), and why a
service is left alone.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshcli import yaml_source
from meshcli.diagnostics import Diagnostic
from meshcli.errors import DockerError, InputError, InvalidFileError

VERSION_SUFFIX = re.compile(r"^(?P<service>.+)-(?P<version>v\d+)$")
DEFAULT_VERSION = "v1"
# Compose's own names, in the order it looks for them (compose-go's cli.DefaultFileNames).
COMPOSE_FILE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml")
OVERRIDE_FILE_NAMES = ("compose.override.yaml", "compose.override.yml",
                       "docker-compose.override.yml", "docker-compose.override.yaml")
STDIN = "-"
NO_PROJECT_HINT = "run it in a directory with a compose.yaml, pass -f FILE, or try the demo: `meshcli demo`"


@dataclass(frozen=True)
class ComposeOptions:
    """`docker compose`'s project flags, as the user gave them; they mean what they mean there."""

    files: tuple[str, ...] = ()  # -f, merged in order; "-" reads the project from `stdin`
    project_name: str | None = None  # -p
    project_directory: Path | None = None  # --project-directory
    env_files: tuple[str, ...] = ()  # --env-file
    profiles: tuple[str, ...] = ()  # --profile
    stdin: str | None = None  # the text of `-f -`
    cwd: Path | None = None  # where compose runs (relative paths start here); default: the current directory

    @property
    def directory(self) -> Path:
        return (self.cwd or Path.cwd()).absolute()

    def flags(self) -> list[str]:
        """The global flags of a `docker compose` command line that names this project."""
        args: list[str] = []
        for file in self.files:
            args += ["-f", file]
        if self.project_name:
            args += ["-p", self.project_name]
        if self.project_directory:
            args += ["--project-directory", str(self.project_directory)]
        for env_file in self.env_files:
            args += ["--env-file", env_file]
        for profile in self.profiles:
            args += ["--profile", profile]
        return args

    def to_json(self) -> dict:
        return {"files": list(self.files), "project_name": self.project_name,
                "project_directory": str(self.project_directory) if self.project_directory else None,
                "env_files": list(self.env_files), "profiles": list(self.profiles), "stdin": self.stdin,
                "cwd": str(self.directory)}

    @classmethod
    def from_json(cls, data: dict) -> ComposeOptions:
        directory = data.get("project_directory")
        return cls(tuple(data["files"]), data.get("project_name"), Path(directory) if directory else None,
                   tuple(data["env_files"]), tuple(data["profiles"]), data.get("stdin"), Path(data["cwd"]))


@dataclass(frozen=True)
class Workload:
    """One compose service that implements one version of a logical service."""

    name: str  # compose service name, e.g. "payment-v1"
    service: str  # logical service, e.g. "payment"
    version: str  # e.g. "v1"
    ports: tuple[int, ...]  # container-side TCP ports (ports + expose)
    profiles: tuple[str, ...] = ()


@dataclass
class ComposeProject:
    options: ComposeOptions
    name: str  # the project name compose uses
    directory: Path  # compose's project directory: meshcli's state and mesh.yaml live here
    data: dict[str, Any]  # the canonical model: `docker compose config --format json`
    sources: tuple[yaml_source.YamlDocument, ...]  # the user's files, for positions
    workloads: dict[str, Workload] = field(default_factory=dict)  # meshed compose services, by compose name
    skipped: dict[str, str] = field(default_factory=dict)  # compose name -> why not meshed
    diagnostics: list[Diagnostic] = field(default_factory=list)  # warnings and notes

    @property
    def services(self) -> dict[str, Any]:
        return self.data.get("services") or {}

    @property
    def path(self) -> Path:
        """The user's (first) compose file."""
        return self.sources[0].path if self.sources else self.directory / COMPOSE_FILE_NAMES[0]

    @property
    def active_profiles(self) -> tuple[str, ...]:
        """The profiles of the services compose runs: what `docker compose up` on the rendered file needs."""
        return tuple(sorted({str(p) for s in self.services.values() for p in s.get("profiles") or ()}))

    def logical_services(self) -> dict[str, list[Workload]]:
        grouped: dict[str, list[Workload]] = {}
        for workload in self.workloads.values():
            grouped.setdefault(workload.service, []).append(workload)
        return grouped

    def definition(self, service: str) -> tuple[yaml_source.YamlDocument, Any] | None:
        return definition(self.sources, service)

    def diag(self, code: str, message: str, service: str) -> Diagnostic:
        """A diagnostic at the line that defines `service` (at the first compose file when not found)."""
        return _diag_at(self.sources, code, message, service) or Diagnostic(code, message, self.path)

    def x_mesh(self, service: str) -> Any:
        """The service's `x-mesh` as the user's files set it (the last file wins), inherited through
        `extends`: Compose drops `x-` keys of services from its model."""
        for doc in reversed(self.sources):
            body = _service_body(doc, service)
            if isinstance(body, dict) and "x-mesh" in body:
                return body["x-mesh"]
        found = self.definition(service)
        return _inherited_x_mesh(found[0], service, set()) if found else None

    def mentions(self, text: str) -> bool:
        """Whether one of the user's files has `text` (a variable's name, say)."""
        return any(text in (self.options.stdin or "") or doc.path.is_file() and text in doc.path.read_text("utf-8")
                   for doc in self.sources)

    def to_json(self) -> dict:
        """What a background process (the watcher) needs to rebuild this project without compose."""
        return {"options": self.options.to_json(), "name": self.name, "directory": str(self.directory),
                "model": self.data, "sources": [str(doc.path) for doc in self.sources]}

    @classmethod
    def from_json(cls, data: dict) -> ComposeProject:
        options = ComposeOptions.from_json(data["options"])
        sources = _parse_sources([Path(p) for p in data["sources"]], options)
        return discover(options, data["name"], Path(data["directory"]), data["model"], sources)


def definition(sources: tuple[yaml_source.YamlDocument, ...], service: str) -> tuple[yaml_source.YamlDocument, Any] | None:
    """(file, `services` mapping) of the user's file that defines `service` first."""
    for doc in sources:
        services = doc.data.get("services") if isinstance(doc.data, dict) else None
        if isinstance(services, dict) and service in services:
            return doc, services
    return None


def _diag_at(sources: tuple[yaml_source.YamlDocument, ...], code: str, message: str,
             service: str) -> Diagnostic | None:
    found = definition(sources, service)
    return found[0].diag(code, message, found[1], service) if found else None


# How compose names the service an error is about: `service "web" ...`, `services.web ...`.
_COMPOSE_ERROR_SERVICE = re.compile(r'service "(?P<quoted>[^"]+)"|services\.(?P<dotted>[^.\s:]+)')


def _located(error: InputError, sources: tuple[yaml_source.YamlDocument, ...]) -> InputError:
    """Compose's error, at the file and line of the service it names when one of the user's files defines it."""
    match = _COMPOSE_ERROR_SERVICE.search(error.message)
    service = match and (match.group("quoted") or match.group("dotted"))
    found = _diag_at(sources, "MESH0007", f"docker compose: {error.message}", service) if service else None
    return InvalidFileError([found]) if found else error


def _service_body(doc: yaml_source.YamlDocument, service: str) -> Any:
    services = doc.data.get("services") if isinstance(doc.data, dict) else None
    return services.get(service) if isinstance(services, dict) else None


def _inherited_x_mesh(doc: yaml_source.YamlDocument, service: str, seen: set) -> Any:
    body = _service_body(doc, service)
    if not isinstance(body, dict) or (doc.path, service) in seen:
        return None
    seen.add((doc.path, service))
    if "x-mesh" in body:
        return body["x-mesh"]
    extends = body.get("extends")
    if isinstance(extends, str):
        return _inherited_x_mesh(doc, extends, seen)
    if isinstance(extends, dict) and extends.get("service"):
        base = doc
        if extends.get("file"):
            try:
                base = yaml_source.load(doc.path.parent / str(extends["file"]))
            except InvalidFileError:
                return None  # compose has reported it already
        return _inherited_x_mesh(base, str(extends["service"]), seen)
    return None


# --- finding the user's files (for positions only: compose resolves the model) -------------

def _dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file, enough to read COMPOSE_FILE from it."""
    values = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    for line in lines:
        key, sep, value = line.strip().removeprefix("export ").partition("=")
        if sep and not key.startswith("#"):
            values[key.strip()] = value.strip().strip("'\"")
    return values


def _working_dir(options: ComposeOptions) -> Path:
    base = options.directory
    return (base / options.project_directory).resolve() if options.project_directory else base


def source_files(options: ComposeOptions) -> list[Path]:
    """The compose files compose reads, in order: -f, else COMPOSE_FILE (environment, then the
    env files), else compose.yaml (here or in a parent directory) and its override file."""
    base = options.directory
    if options.files:
        return [base / f for f in options.files if f != STDIN]
    work = _working_dir(options)
    env_files = [base / f for f in options.env_files] or [work / ".env"]
    variables = {k: v for f in env_files for k, v in _dotenv(f).items()} | dict(os.environ)
    if variables.get("COMPOSE_FILE"):
        separator = variables.get("COMPOSE_PATH_SEPARATOR") or os.pathsep
        return [work / f for f in variables["COMPOSE_FILE"].split(separator) if f]
    for directory in (work, *work.parents):
        for name in COMPOSE_FILE_NAMES:
            if (directory / name).is_file():
                overrides = [directory / o for o in OVERRIDE_FILE_NAMES if (directory / o).is_file()]
                return [directory / name, *overrides[:1]]
    return []


def _parse_sources(paths: list[Path], options: ComposeOptions) -> tuple[yaml_source.YamlDocument, ...]:
    """The user's files and the files they include, parsed (InvalidFileError with a position
    on a syntax or shape error); files that cannot be read are left to compose to report."""
    docs: list[yaml_source.YamlDocument] = []
    if STDIN in options.files and options.stdin is not None:
        docs.append(yaml_source.load(options.directory / "<stdin>", options.stdin))
    queue = list(paths)
    seen: set[Path] = set()
    while queue:
        path = queue.pop(0).absolute()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        doc = yaml_source.load(path)
        docs.append(doc)
        queue += _included(doc)
    problems = [p for doc in docs for p in _shape_problems(doc)]
    if problems:
        raise InvalidFileError(problems)
    return tuple(docs)


def _included(doc: yaml_source.YamlDocument) -> list[Path]:
    include = doc.data.get("include") if isinstance(doc.data, dict) else None
    paths: list[Path] = []
    for item in include if isinstance(include, list) else ():
        value = item.get("path") if isinstance(item, dict) else item
        for entry in value if isinstance(value, list) else [value]:
            if isinstance(entry, str) and "://" not in entry:
                paths.append(doc.path.parent / entry)
    return paths


# Top-level keys of a file that declares no service of its own (an override file, say).
_OTHER_TOP_LEVEL = {"name", "version", "networks", "volumes", "secrets", "configs", "models"}


def _shape_problems(doc: yaml_source.YamlDocument) -> list[Diagnostic]:
    data = doc.data
    if not isinstance(data, dict):
        return [doc.diag("MESH0002", "a compose file must be a mapping with a `services` key", data)]
    if "services" not in data and "include" not in data and not set(data) & _OTHER_TOP_LEVEL:
        return [doc.diag("MESH0002", "not a compose file: expected a top-level `services` mapping", data)]
    services = data.get("services")
    if "services" in data and services is not None and not isinstance(services, dict):
        return [doc.diag("MESH0002", "not a compose file: expected a top-level `services` mapping", data, "services")]
    return [doc.diag("MESH0002", f"service {name!r} must be a mapping", services, name)
            for name, body in (services or {}).items() if not isinstance(body, dict)]


# --- loading -----------------------------------------------------------------------------

def load(options: ComposeOptions | Path | str, variables: dict[str, str] | None = None) -> ComposeProject:
    """The project as `docker compose` resolves it; InputError (exit 2) when compose rejects it.
    A path is short for `-f PATH`; `variables` are set in compose's environment."""
    if not isinstance(options, ComposeOptions):
        options = ComposeOptions(files=(str(Path(options).absolute()),))
    paths = source_files(options)
    sources = _parse_sources(paths, options)
    try:
        model, warnings = _config(options, variables)
    except InputError as exc:
        raise _located(exc, sources) from None
    project = discover(options, str(model["name"]), _project_directory(options, paths), model, sources)
    project.diagnostics[:0] = [Diagnostic("MESH0008", f"docker compose: {w}", project.path) for w in warnings]
    return project


def config(options: ComposeOptions, variables: dict[str, str] | None = None) -> dict[str, Any]:
    """`docker compose [options] config --format json`: the canonical, merged, interpolated model."""
    return _config(options, variables)[0]


# A warning line of compose: time="..." level=warning msg="The \"TAG\" variable is not set. ..."
_COMPOSE_WARNING = re.compile(r'level=warning msg="(?P<msg>(?:[^"\\]|\\.)*)"')


def _config(options: ComposeOptions, variables: dict[str, str] | None) -> tuple[dict[str, Any], list[str]]:
    """The canonical model, and the warnings compose printed about it."""
    from meshcli.docker_engine import compose_command

    command = [*compose_command(), *options.flags(), "config", "--format", "json"]
    try:
        result = subprocess.run(command, cwd=options.directory, input=options.stdin or "", capture_output=True,
                                text=True, timeout=60, env={**os.environ, **(variables or {})})
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DockerError(f"`{' '.join(command)}` failed: {exc}") from exc
    if result.returncode != 0:
        message = result.stderr.strip() or f"`docker compose config` failed (exit {result.returncode})"
        raise InputError(message, hint=NO_PROJECT_HINT if "no configuration file provided" in message else None)
    warnings = [m.group("msg").replace('\\"', '"') for m in _COMPOSE_WARNING.finditer(result.stderr)]
    return json.loads(result.stdout), warnings


def _project_directory(options: ComposeOptions, paths: list[Path]) -> Path:
    """Compose's rule: --project-directory, else the first compose file's directory (here for stdin)."""
    if options.project_directory:
        return _working_dir(options)
    if options.files[:1] == (STDIN,) or not paths:
        return options.directory
    return paths[0].absolute().parent


def discover(options: ComposeOptions, name: str, directory: Path, model: dict[str, Any],
             sources: tuple[yaml_source.YamlDocument, ...]) -> ComposeProject:
    """The workloads of a canonical model: every service but those why_not_meshed() leaves alone."""
    project = ComposeProject(options, name, directory, model, sources)
    for service_name, body in project.services.items():
        skip = why_not_meshed(body, project.x_mesh(service_name))
        if skip:
            code, reason = skip
            project.skipped[service_name] = reason
            project.diagnostics.append(project.diag(code, f"service {service_name!r} is not meshed: {reason}",
                                                    service_name))
            continue
        logical, version = service_and_version(service_name, body)
        profiles = tuple(str(p) for p in body.get("profiles") or ())
        project.workloads[service_name] = Workload(
            service_name, logical, version, container_ports(body), profiles)
    return project


def labels_of(service: Any) -> dict[str, str]:
    labels = service.get("labels") or {}
    if isinstance(labels, dict):
        return {str(k): str(v) for k, v in labels.items()}
    result = {}
    for item in labels:
        key, _, value = str(item).partition("=")
        result[key] = value
    return result


def _port_numbers(spec: str) -> list[int]:
    """'8080' -> [8080]; '3000-3002' -> [3000, 3001, 3002]."""
    spec = spec.split("/")[0]
    if "-" in spec:
        low, _, high = spec.partition("-")
        if low.isdigit() and high.isdigit() and int(high) - int(low) < 100:
            return list(range(int(low), int(high) + 1))
        return []
    return [int(spec)] if spec.isdigit() else []


def container_ports(service: Any) -> tuple[int, ...]:
    """TCP ports the app listens on, read from `ports` (target side) and `expose` of the canonical model."""
    found: list[int] = []
    for entry in service.get("ports") or []:
        if str(entry.get("protocol", "tcp")) == "tcp":
            found += _port_numbers(str(entry.get("target", "")))
    for entry in service.get("expose") or []:
        text = str(entry)
        if not text.endswith("/udp"):
            found += _port_numbers(text)
    return tuple(sorted(set(found)))


def why_not_meshed(service: Any, x_mesh: Any = None) -> tuple[str, str] | None:
    """(diagnostic code, reason) when the service must be left alone, else None."""
    network_mode = str(service.get("network_mode") or "")
    if network_mode in ("host", "none") or network_mode.startswith(("container:", "service:")):
        return "MESH0301", f'network_mode "{network_mode}" leaves no network namespace of its own to intercept'
    if isinstance(x_mesh, dict) and str(x_mesh.get("inject", True)).lower() == "false":
        return "MESH0302", "opted out with x-mesh.inject: false"
    if labels_of(service).get("mesh.inject", "").lower() == "false":
        return "MESH0302", 'opted out with label mesh.inject: "false"'
    replicas = (service.get("deploy") or {}).get("replicas", service.get("scale", 1))
    if str(replicas).isdigit() and int(replicas) > 1:
        return "MESH0303", f"{replicas} replicas: one pod per replica is not supported yet"
    return None


def service_and_version(name: str, service: Any) -> tuple[str, str]:
    labels = labels_of(service)
    match = VERSION_SUFFIX.match(name)
    logical = labels.get("mesh.service") or (match.group("service") if match else name)
    version = labels.get("mesh.version") or (match.group("version") if match else DEFAULT_VERSION)
    return logical, version
