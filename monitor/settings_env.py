"""``SENTINEL_…`` environment variables: which name a setting, which a kubelet added, which are neither.

A variable names a setting when its ``__``-separated parts walk the settings schema to a field
(``SENTINEL_KAFKA__BOOTSTRAP_SERVERS`` is ``kafka.bootstrap_servers``); its value then overrides the YAML
file, and a bad value fails at start naming the variable. Kubernetes adds service-link variables for every
Service of the namespace to every pod (``SENTINEL_SERVICE_HOST`` for a Service named ``sentinel``), so a
variable that names no setting never stops Sentinel: a service link is ignored silently, anything else with
one warning (and a "did you mean" hint when a setting is spelled nearly so).

A leaf module like :mod:`monitor.settings_base`: it knows the schema only as the pydantic model it is given.

Examples
--------
>>> from monitor.settings_base import StrictSettings
>>> class Kafka(StrictSettings):
...     topic: str = "predictions"
>>> class Root(StrictSettings):
...     kafka: Kafka = Kafka()
>>> environment = read_environment(
...     Root, {"SENTINEL_KAFKA__TOPIC": "logs", "SENTINEL_PORT": "tcp://10.0.0.1:8080", "HOME": "/root"}
... )
>>> environment.tree
{'kafka': {'topic': 'logs'}}
>>> environment.variable_at(("kafka", "topic"))
'SENTINEL_KAFKA__TOPIC'
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel

from monitor.errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "ENV_RESERVED",
    "EnvironmentSettings",
    "env_value",
    "is_service_link",
    "names_a_setting",
    "read_environment",
]

ENV_PREFIX = "SENTINEL_"
# Variables with the prefix that are read elsewhere, not configuration keys.
ENV_RESERVED = frozenset({"SENTINEL_CONFIG", "SENTINEL_REQUIRE_SERVICES"})

log = logging.getLogger("sentinel.config")

# The value of a link URL: "tcp://10.0.0.1:8080", "udp://[fd00::1]:53".
_LINK_URL = re.compile(r"^(?:tcp|udp|sctp)://(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<ipv4>[0-9.]+)):[0-9]{1,5}$")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_link_url(text: str) -> bool:
    url = _LINK_URL.match(text)
    return url is not None and _is_ip(url["ipv6"] or url["ipv4"])


def _is_port(text: str) -> bool:
    return re.fullmatch(r"[0-9]{1,5}", text) is not None


def _is_protocol(text: str) -> bool:
    return text in ("tcp", "udp", "sctp")


# The variables a kubelet adds for a Service (Kubernetes' pkg/kubelet/envvars): the Service name upper-cased
# with '-' as '_', then one of these suffixes, each with the shape of its value. <NAME> is a named port.
_SERVICE = r"[A-Z](?:[A-Z0-9_]*[A-Z0-9])?"
_PORT = r"PORT_[0-9]{1,5}_(?:TCP|UDP|SCTP)"
_SERVICE_LINKS: tuple[tuple[re.Pattern[str], Callable[[str], bool]], ...] = tuple(
    (re.compile(f"{_SERVICE}_{suffix}"), is_value)
    for suffix, is_value in (
        ("SERVICE_HOST", _is_ip),
        ("SERVICE_PORT", _is_port),
        ("SERVICE_PORT_[A-Z0-9](?:[A-Z0-9_]*[A-Z0-9])?", _is_port),
        ("PORT", _is_link_url),
        (_PORT, _is_link_url),
        (f"{_PORT}_PROTO", _is_protocol),
        (f"{_PORT}_PORT", _is_port),
        (f"{_PORT}_ADDR", _is_ip),
    )
)


def is_service_link(name: str, value: str) -> bool:
    """Whether ``name=value`` is a variable a kubelet adds for a Service (name and value in its shape).

    A name can read more than one way (``SENTINEL_SERVICE_PORT`` is the port of Service ``sentinel`` or the
    URL of Service ``sentinel-service``); the value tells which.

    >>> is_service_link("SENTINEL_API_PORT_8080_TCP_ADDR", "10.0.0.1")
    True
    >>> is_service_link("SENTINEL_PORT", "8080")  # not the shape a kubelet writes: someone meant a setting
    False
    """
    return any(shape.fullmatch(name) and is_value(value) for shape, is_value in _SERVICE_LINKS)


def env_value(raw: str) -> Any:
    """An environment value as YAML when it is one unambiguously, else the string as given.

    Lists and mappings (``[a, b]``, ``{k: v}``) are parsed; a scalar only when YAML reads it back to the
    same text (``true``, ``300``, ``0.5``, ``null``). So secrets stay intact: ``#x`` is not a comment,
    ``00123`` not the number 123, ``a: b`` not a mapping; typed fields convert the strings themselves.
    A quoted value (``"…"``, ``'…'``) is the YAML string inside the quotes.
    """
    if raw == "":
        return None
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    text = raw.strip()
    if text.startswith(("[", "{")) or (len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'"):
        return value  # structured, or a quoted string (the chart quotes its Secret values)
    if isinstance(value, str | dict | list):
        return raw
    return value if yaml.safe_dump(value).removesuffix("\n...\n").strip() == raw.strip() else raw


@dataclass(frozen=True)
class EnvironmentSettings:
    """What the environment sets: a tree to merge over the YAML file, and which variable set which key."""

    tree: dict[str, Any] = field(default_factory=dict)
    # Key path -> the variable that set it, to name the variable when its value is refused.
    sources: dict[tuple[str, ...], str] = field(default_factory=dict)

    def variable_at(self, loc: Sequence[str]) -> str | None:
        """The variable whose value holds key ``loc`` (the deepest, if a section and its key are both set)."""
        for depth in range(len(loc), 0, -1):
            if (variable := self.sources.get(tuple(loc[:depth]))) is not None:
                return variable
        return None

    def variables_below(self, loc: Sequence[str]) -> list[str]:
        """The variables that set keys inside section ``loc`` (a check across the section's keys failed)."""
        prefix = tuple(loc)
        if not prefix:
            return []
        return sorted(name for path, name in self.sources.items() if path[: len(prefix)] == prefix)


def read_environment(schema: type[BaseModel], environ: Mapping[str, str]) -> EnvironmentSettings:
    """The settings ``environ`` holds for ``schema``; a variable that names no setting is left out.

    Model ids (``SENTINEL_MODELS__<id>__…``) keep their spelling; every other part is lower-cased. Raises
    :class:`ConfigError` only when two variables set a key and a value inside it.
    """
    environment = EnvironmentSettings()
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in ENV_RESERVED:
            continue
        path = _key_path(name)
        if not names_a_setting(schema, path):
            if not is_service_link(name, raw):
                log.warning("%s names no setting and is ignored%s", name, _hint(schema, name))
            continue
        node = environment.tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError([(name, "conflicts with another SENTINEL_ variable")])
        node[path[-1]] = env_value(raw)
        environment.sources[path] = name
    return environment


def _key_path(name: str) -> tuple[str, ...]:
    parts = name[len(ENV_PREFIX) :].split("__")
    path = [part.lower() for part in parts]
    if path[0] == "models" and len(path) > 1:
        path[1] = parts[1]  # model ids are case-sensitive
    return tuple(path)


def names_a_setting(schema: type[BaseModel], path: Sequence[str]) -> bool:
    """Whether ``path`` walks the schema's sections to a field (parts past a plain field are its value's)."""
    field_info = schema.model_fields.get(path[0])
    if field_info is None:
        return False
    rest = path[1:]
    if not rest:
        return True
    if (section := _section(field_info.annotation)) is not None:
        return names_a_setting(section, rest)
    if (entry := _entry_section(field_info.annotation)) is not None:
        return len(rest) == 1 or names_a_setting(entry, rest[1:])
    return True  # inside a free-form value (a detector's parameters, a list): validation judges it


def _section(annotation: Any) -> type[BaseModel] | None:
    """The settings model a field holds (``Section`` or ``Section | None``), if it holds one."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        sections = [arg for arg in typing.get_args(annotation) if _section(arg) is not None]
        return sections[0] if len(sections) == 1 else None
    return None


def _entry_section(annotation: Any) -> type[BaseModel] | None:
    """The settings model of each entry of a ``dict[str, Section]`` field (``models``), if it is one."""
    if typing.get_origin(annotation) is dict:
        return _section(typing.get_args(annotation)[1])
    return None


def _setting_paths(
    schema: type[BaseModel], prefix: tuple[str | None, ...] = ()
) -> Iterator[tuple[str | None, ...]]:
    """Every field's key path; ``None`` stands for an entry key (a model id)."""
    for name, field_info in schema.model_fields.items():
        path = (*prefix, name)
        if (section := _section(field_info.annotation)) is not None:
            yield from _setting_paths(section, path)
        elif (entry := _entry_section(field_info.annotation)) is not None:
            yield from _setting_paths(entry, (*path, None))
        else:
            yield path


def _hint(schema: type[BaseModel], name: str) -> str:
    """``"; did you mean SENTINEL_X__Y?"`` for the setting spelled most nearly as ``name``, else ``""``."""
    given = name[len(ENV_PREFIX) :].split("__")
    candidates = []
    for path in _setting_paths(schema):
        parts = [
            part.upper() if part is not None else (given[i] if i < len(given) else "<ID>")
            for i, part in enumerate(path)
        ]
        candidates.append(ENV_PREFIX + "__".join(parts))
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.8)
    return f"; did you mean {close[0]}?" if close else ""
