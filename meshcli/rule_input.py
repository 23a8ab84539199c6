"""Traffic rules as given on the command line (`meshcli split`, `meshcli route ...`): parsed
and checked here, raising InputError; the CLI only passes the values on."""

from __future__ import annotations

from meshcli import durations, mesh_config
from meshcli.diagnostics import did_you_mean
from meshcli.errors import InputError


def pairs(values: list[str], what: str, example: str) -> list[tuple[str, str]]:
    found = []
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise InputError(f'{what} "{value}" is not NAME=VALUE', hint=f"for example {example}")
        found.append((name, rest))
    return found


def weights(values: list[str]) -> dict[str, int]:
    parsed: dict[str, int] = {}
    for version, weight in pairs(values, "weight", "v1=90 v2=10"):
        if not weight.isdigit() or int(weight) > 100:
            raise InputError(f'weight "{version}={weight}" must be a whole percentage from 0 to 100')
        if version in parsed:
            raise InputError(f'version "{version}" is given twice')
        parsed[version] = int(weight)
    if sum(parsed.values()) != 100:
        raise InputError(f"weights sum to {sum(parsed.values())}; they must sum to 100",
                         hint="for example `meshcli split payment v1=90 v2=10`, or v2=100 to promote")
    return parsed


def duration(value: str, option: str) -> str:
    try:
        durations.parse_ms(value)
    except ValueError as exc:
        raise InputError(f"{option}: {exc}") from None
    return value


def percent(value: float, option: str) -> float:
    if not 0 <= value <= 100:
        raise InputError(f"{option} must be from 0 to 100, got {value:g}")
    return value


def is_off(value: str | None) -> bool:
    return value is not None and value.lower() == "off"


def check_off(value: str, with_options: bool, example: str) -> None:
    """The optional `off` argument: that word, and then no settings beside it."""
    if not is_off(value):
        raise InputError(f'unexpected argument "{value}"; the only word accepted here is `off`', hint=example)
    if with_options:
        raise InputError("`off` removes the setting: give it without other settings, or the settings without `off`",
                         hint=example)


def choices(values: list[str], option: str, allowed: tuple[str, ...]) -> list[str]:
    """Each of `values` (stripped, blanks dropped) must be one of `allowed`."""
    chosen = [v.strip() for v in values if v.strip()]
    for value in chosen:
        if value not in allowed:
            raise InputError(f'{option}: "{value}" is not one of: {", ".join(allowed)}'
                             f"{did_you_mean(value, allowed)}")
    if not chosen:
        raise InputError(f"{option}: give at least one of: {', '.join(allowed)}")
    return chosen


def retry_policy(attempts: int | None, per_try_timeout: str | None, retry_on: str | None, backoff: str | None,
                 retry_non_idempotent: bool, service: str) -> dict:
    """The mesh file's `retries:` from `meshcli route retries` options."""
    if attempts is None:
        raise InputError("--attempts is required", hint=f"meshcli route retries {service} --attempts 3")
    policy: dict = {"attempts": attempts}
    if per_try_timeout is not None:
        policy["perTryTimeout"] = duration(per_try_timeout, "--per-try-timeout")
    if retry_on is not None:
        policy["retryOn"] = choices(retry_on.split(","), "--retry-on", mesh_config.RETRY_ON)
    if backoff is not None:
        policy["backoff"] = duration(backoff, "--backoff")
    if retry_non_idempotent:
        policy["retryNonIdempotent"] = True
    return policy


def match(header: list[str], header_prefix: list[str], header_present: list[str], path_prefix: str | None,
          path_exact: str | None, methods: list[str], query: list[str] = (), source: str | None = None) -> dict:
    """One mesh-file match entry from `meshcli route match` options."""
    headers: dict[str, dict] = {}
    for name, value in pairs(header, "--header", "--header x-canary=true"):
        headers[name.lower()] = {"exact": value}
    for name, value in pairs(header_prefix, "--header-prefix", "--header-prefix user-agent=Mobile"):
        headers[name.lower()] = {"prefix": value}
    for name in header_present:
        headers[name.lower()] = {"present": True}
    found: dict = {}
    if headers:
        found["headers"] = headers
    if path_prefix is not None and path_exact is not None:
        raise InputError("give --path or --path-prefix, not both")
    if path_prefix is not None or path_exact is not None:
        found["path"] = {"prefix": path_prefix} if path_prefix is not None else {"exact": path_exact}
    if methods:
        chosen = choices([m.upper() for m in methods], "--method", mesh_config.HTTP_METHODS)
        found["method"] = chosen[0] if len(chosen) == 1 else chosen
    if query:
        found["query"] = {name: {"exact": value} for name, value in pairs(query, "--query", "--query debug=1")}
    if source is not None:
        found["source"] = source  # checked against the mesh's services when the edit is validated
    if not found:
        raise InputError("a route needs at least one condition",
                         hint="--header NAME=VALUE, --header-prefix, --header-present, --path-prefix, --path, "
                              "--method, --query NAME=VALUE, --source SERVICE")
    return found
