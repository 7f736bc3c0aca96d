"""A strict structural check of an Envoy bootstrap against the v3 API protos (``xds-protos``).

``envoy --mode validate`` catches most of the same mistakes, but it needs the binary (and every
file the config names), and its message rarely says which generated field is wrong. This check
runs anywhere the dev dependencies are installed, in milliseconds: it parses the data into
``envoy.config.bootstrap.v3.Bootstrap`` with ``json_format.ParseDict(ignore_unknown_fields=False)``,
so an unknown field, a wrong type or a bad enum name *anywhere* fails, including inside every
``google.protobuf.Any`` (``typed_config``, ``typed_per_filter_config``,
``typed_extension_protocol_options``). The message of each ``@type`` must be in the default
descriptor pool for that: :func:`check` imports the ``*_pb2`` modules of the type's proto package
first (``envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication`` → the modules of
``envoy/extensions/filters/http/jwt_authn/v3/``). An ``@type`` no installed module defines is an
error too. This is structure only: no PGV rules (``min_len``, ``gt``), no cluster references.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import pkgutil
import re
from collections.abc import Iterator, Mapping
from typing import Any

from google.protobuf import descriptor_pool, json_format

__all__ = ["SchemaError", "check", "type_urls"]

#: Top-level packages whose ``*_pb2`` modules may be imported to resolve an ``@type``.
RESOLVABLE_ROOTS: tuple[str, ...] = ("envoy", "xds", "udpa", "google")

_FAILED = re.compile(r"Failed to parse (\w+) field: ")
_AT = re.compile(r' at (?:"([^"]+)"|(\S+))$')
_NO_TYPE = re.compile(r"^Can not find message descriptor by type_url: (\S+)$")


class SchemaError(ValueError):
    """The data is not a valid ``Bootstrap``; ``path`` names the offending field (or ``Any``)."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.detail = detail


def type_urls(data: Any, path: str = "Bootstrap") -> Iterator[tuple[str, str]]:
    """Every ``(path, type_url)`` of an ``"@type"`` key in the data, depth first."""
    if isinstance(data, Mapping):
        url = data.get("@type")
        if isinstance(url, str):
            yield path, url
        for key, value in data.items():
            if key != "@type":
                yield from type_urls(value, f"{path}.{key}")
    elif isinstance(data, list | tuple):
        for i, value in enumerate(data):
            yield from type_urls(value, f"{path}[{i}]")


def _in_pool(full_name: str) -> bool:
    try:
        descriptor_pool.Default().FindMessageTypeByName(full_name)
    except KeyError:
        return False
    return True


@functools.cache
def _import_pb2_modules(package: str) -> bool:
    """Import every ``*_pb2`` module directly in ``package``; False if it is not a package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    for module in pkgutil.iter_modules(spec.submodule_search_locations):
        if module.name.endswith("_pb2") and not module.ispkg:
            importlib.import_module(f"{package}.{module.name}")
    return True


@functools.cache
def _resolve(full_name: str) -> bool:
    """Make ``full_name`` (``pkg.v3.Message`` or ``pkg.v3.Outer.Inner``) known to the default pool."""
    if _in_pool(full_name):
        return True
    parts = full_name.split(".")
    if parts[0] not in RESOLVABLE_ROOTS:
        return False
    # The proto package is a prefix of the name; nested messages make it shorter than all but one.
    for end in range(len(parts) - 1, 0, -1):
        if _import_pb2_modules(".".join(parts[:end])) and _in_pool(full_name):
            return True
    return False


def _locate(data: Any, chain: list[str], path: str) -> Iterator[tuple[str, Any]]:
    """Paths in ``data`` along the field names ``chain``; a level missing from the chain is a map
    key or a oneof member (json_format does not name either)."""
    if not chain:
        yield path, data
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _locate(value, chain, f"{path}[{i}]")
    elif isinstance(data, Mapping):
        if chain[0] in data:
            yield from _locate(data[chain[0]], chain[1:], f"{path}.{chain[0]}")
        else:
            for key, value in data.items():
                if isinstance(value, Mapping | list):
                    yield from _locate(value, chain, f"{path}.{key}")


def _error(err: Exception, data: Any) -> SchemaError:
    """json_format's nested message → the innermost field path and what is wrong there."""
    text = str(err).split("\n Available Fields", 1)[0]
    chain: list[str] = []
    while m := _FAILED.match(text):
        chain.append(m.group(1))
        text = text[m.end():]
    text = text.rstrip(".")
    if m := _AT.search(text):
        path, detail = m.group(1) or m.group(2), text[:m.start()]
    else:  # scalar conversion errors carry no path, only the chain of field names
        path, detail = ".".join(["Bootstrap", *chain]), text
        found = [p for p, value in _locate(data, chain, "Bootstrap")
                 if not isinstance(value, Mapping | list) and str(value) and str(value) in detail]
        if len(found) == 1:
            path = found[0]
    if m := _NO_TYPE.match(detail):
        url = m.group(1)
        detail = f"unknown @type {url}: no installed module defines {url.rpartition('/')[2]}"
    return SchemaError(path, detail)


def check(bootstrap: Mapping[str, Any]) -> None:
    """Raise :class:`SchemaError` unless ``bootstrap`` parses strictly as an Envoy v3 ``Bootstrap``."""
    from envoy.config.bootstrap.v3 import bootstrap_pb2

    if not isinstance(bootstrap, Mapping):
        raise SchemaError("Bootstrap", f"expected a mapping, got {type(bootstrap).__name__}")
    for _, url in type_urls(bootstrap):
        # Unresolved is not yet an error: an "@type" key inside a Struct (metadata) is plain data.
        _resolve(url.rpartition("/")[2])
    try:
        json_format.ParseDict(dict(bootstrap), bootstrap_pb2.Bootstrap(), ignore_unknown_fields=False)
    except (json_format.ParseError, TypeError, ValueError, AttributeError) as e:
        raise _error(e, bootstrap) from e
