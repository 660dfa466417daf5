"""A local Kubernetes API server for ``coordination.k8s.io/v1`` Leases: the leader-election tests' API.

A real API server cannot run here, so this one answers the Lease endpoints the way kube-apiserver's
generic registry does for Leases (``pkg/registry/coordination/lease/strategy.go`` and
``apiserver/pkg/registry/generic/registry/store.go``):

- ``GET``/``POST`` ``/apis/coordination.k8s.io/v1/namespaces/{ns}/leases`` (list, create) and ``GET``/
  ``PUT``/``PATCH``/``DELETE`` ``.../leases/{name}``; ``GET /version`` and the group-version discovery.
- One ``resourceVersion`` counter for the whole store (etcd's revision), a string, bumped by every write.
- Optimistic concurrency: a ``PUT`` (or a patch that sets ``metadata.resourceVersion``) whose version is
  not the stored one is a 409 ``Conflict``; a ``PUT`` without one is a 422 ``Invalid`` ("must be specified
  for an update": Leases do *not* allow unconditional updates); a ``PUT`` of a missing Lease creates it
  (201: Leases allow create-on-update); a ``POST`` of an existing name is a 409 ``AlreadyExists``.
- MicroTime fields (``acquireTime``, ``renewTime``) parse as Go's ``2006-01-02T15:04:05.000000Z07:00``:
  exactly six fractional digits, so ``...:05Z`` is a 400, as on a real server; they are served in UTC.
- Errors are ``kind: Status`` objects with the code, reason, message and details the server sends.
- Bearer tokens (``tokens``: token -> user name): another token is a 401; no token is a 403 for
  ``system:anonymous`` (anonymous auth is on by default) or a 401 with ``anonymous_auth=False``; ``verbs``
  and ``resource_names`` act as the RBAC Role the user is bound to (403 outside it).

Faults, all changeable while clients run, each optionally limited to one client's bearer token (one
token per daemon: :meth:`partition` cuts one daemon off while the other still reaches the API):
``partition`` (requests hang until healed, are reset, or are applied with their answer lost), ``slow``,
``fail`` (5xx / 429 for N requests, S seconds or a rate), and ``refuse`` (the listener closed: connections
refused, open ones reset, until it listens again on the same port).

:attr:`stats` counts requests by (verb, code), logs each request, and records every change of each
Lease's ``holderIdentity`` with its time on the event loop's clock, so tests can prove there was one
holder at a time and measure takeovers.
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
import re
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal

import yaml
from aiohttp import web

from exporter.sim.http_server import HttpSimulator
from exporter.timers import LoopTimers

__all__ = [
    "API_VERSION",
    "OPTIMISTIC_LOCK_MESSAGE",
    "HolderChange",
    "LeaseRequest",
    "LeaseSimulator",
    "LeaseStats",
    "micro_time",
]

# The loop's clock (time.monotonic on asyncio's loops), so tests on virtual loop time see one timeline.
_loop_clock = LoopTimers()

GROUP = "coordination.k8s.io"
API_VERSION = f"{GROUP}/v1"
RESOURCE = "leases"
_QUALIFIED = f"{RESOURCE}.{GROUP}"
_PREFIX = f"/apis/{API_VERSION}/namespaces/{{namespace}}/{RESOURCE}"
OPTIMISTIC_LOCK_MESSAGE = "the object has been modified; please apply your changes to the latest version and try again"
MICRO_TIME_LAYOUT = "2006-01-02T15:04:05.000000Z07:00"
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
_PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, APPLY_PATCH)  # the server's order
_BODY_TYPES = ("application/json", "application/yaml", "application/vnd.kubernetes.protobuf")
_ALL_VERBS = frozenset({"get", "list", "watch", "create", "update", "patch", "delete"})
# The layout's elements and what each accepts, in order: Go's time.Parse reports the first that fails.
_MICRO_TIME_ELEMENTS = tuple(
    (element, re.compile(pattern))
    for element, pattern in (
        ("2006", r"\d{4}"), ("-", "-"), ("01", r"\d\d"), ("-", "-"), ("02", r"\d\d"), ("T", "T"),
        ("15", r"\d\d"), (":", ":"), ("04", r"\d\d"), (":", ":"), ("05", r"\d\d"),
        (".000000", r"\.\d{6}"),  # exactly six digits: "...:05Z" and "...:05.123Z" do not parse
        ("Z07:00", r"Z|[+-]\d\d:\d\d"),
    )
)  # fmt: skip
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    f"'{_DNS_SUBDOMAIN.pattern}')"
)
ANONYMOUS = "system:anonymous"
_INT32 = (-(2**31), 2**31 - 1)
# LeaseSpec's fields in the order Go marshals them, with their Go types (for decode errors).
_SPEC_FIELDS: dict[str, str] = {
    "holderIdentity": "string",
    "leaseDurationSeconds": "int32",
    "acquireTime": "MicroTime",
    "renewTime": "MicroTime",
    "leaseTransitions": "int32",
    "strategy": "string",
    "preferredHolder": "string",
}
_KEPT_METADATA = ("labels", "annotations", "ownerReferences", "finalizers")
_REASONS: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}

PartitionMode = Literal["hang", "reset", "drop_answer"]


def micro_time(unix: float) -> str:
    """``unix`` seconds as the API writes a MicroTime: ``2026-12-06T23:00:00.123456Z``."""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(slots=True)
class HolderChange:
    """A Lease's ``holderIdentity`` changed (``None``: no holder field, or the Lease was deleted)."""

    at: float  # _loop_clock.monotonic()
    namespace: str
    name: str
    holder: str | None
    resource_version: str
    transitions: int | None


@dataclass(slots=True)
class LeaseRequest:
    """One request as the server saw it."""

    at: float  # _loop_clock.monotonic() on arrival
    method: str
    verb: str  # Kubernetes' verb: get, list, create, update, patch, delete (or "" for other paths)
    namespace: str
    name: str
    user: str | None  # the token's user, or system:anonymous; None: an unknown token, or auth is off
    holder: str | None = None  # spec.holderIdentity the body carried, if any
    status: int = 0  # 0: no answer (a fault dropped the connection, or the client gave up first)


@dataclass(slots=True)
class LeaseStats:
    requests: Counter[tuple[str, int]] = field(default_factory=Counter)  # (verb, status); status 0: no answer
    holders: list[HolderChange] = field(default_factory=list)
    log: list[LeaseRequest] = field(default_factory=list)
    dropped: int = 0  # requests a fault reset, hung up on, or answered into a dropped connection


@dataclass(slots=True)
class _Fault:
    kind: Literal["status", "slow", "partition"]
    status: int = 0
    message: str = ""
    retry_after: int | None = None
    delay: float = 0.0
    mode: PartitionMode = "hang"
    token: str | None = None  # None: every client
    verbs: frozenset[str] | None = None  # None: every verb
    rate: float = 1.0  # the share of matching requests it hits
    remaining: int | None = None
    until: float | None = None
    released: asyncio.Event = field(default_factory=asyncio.Event)  # set: hung requests give up

    def live(self, now: float) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        return self.until is None or now < self.until


class ApiError(Exception):
    """An answer that is a ``kind: Status`` failure."""

    def __init__(self, code: int, message: str, reason: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = _REASONS.get(code, "") if reason is None else reason
        self.details = details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
        body["message"] = self.message
        if self.reason:
            body["reason"] = self.reason
        if self.details is not None:
            body["details"] = self.details
        body["code"] = self.code
        return body


def _details(name: str, kind: str = RESOURCE, **extra: Any) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name} if name else {}
    details.update(group=GROUP, kind=kind, **extra)
    return details


def _not_found(name: str) -> ApiError:
    return ApiError(404, f'{_QUALIFIED} "{name}" not found', details=_details(name))


def _conflict(name: str, why: str = OPTIMISTIC_LOCK_MESSAGE) -> ApiError:
    return ApiError(409, f'Operation cannot be fulfilled on {_QUALIFIED} "{name}": {why}', details=_details(name))


def _invalid(name: str, errors: list[tuple[str, str]], kind: str = "Lease") -> ApiError:
    """A 422 ``Invalid`` for field errors ``(field, "Invalid value: ...: why")``."""
    texts = [f"{path}: {text}" for path, text in errors]
    summary = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    causes = [{"reason": _cause_reason(text), "message": text, "field": path} for path, text in errors]
    return ApiError(422, f'{kind}.{GROUP} "{name}" is invalid: {summary}', details=_details(name, kind, causes=causes))


def _cause_reason(text: str) -> str:
    for prefix, reason in (("Required value", "FieldValueRequired"), ("Forbidden", "FieldValueForbidden")):
        if text.startswith(prefix):
            return reason
    return "FieldValueInvalid"


def _go_value(value: Any) -> str:
    """How a field error prints a value (Go's ``%q`` for strings, ``%v`` for numbers)."""
    return json.dumps(value) if isinstance(value, str) else str(value)


def _bad_body(kind_given: bool, why: str) -> ApiError:
    if kind_given:
        return ApiError(400, f'Lease in version "v1" cannot be handled as a Lease: {why}')
    return ApiError(400, f"the object provided is unrecognized (must be of type Lease): {why}")


def _parse_micro_time(text: str) -> str:
    """A MicroTime as Go parses ``2006-01-02T15:04:05.000000Z07:00``, written back in UTC; ``ValueError``
    with Go's message otherwise."""
    rest, parts = text, []
    for element, pattern in _MICRO_TIME_ELEMENTS:
        match = pattern.match(rest)
        if match is None:
            raise ValueError(f'parsing time "{text}" as "{MICRO_TIME_LAYOUT}": cannot parse "{rest}" as "{element}"')
        parts.append(match.group())
        rest = rest[match.end() :]
    if rest:
        raise ValueError(f'parsing time "{text}": extra text: "{rest}"')
    year, month, day, hour, minute, second = (int(parts[i]) for i in (0, 2, 4, 6, 8, 10))
    zone = parts[12]
    sign = 1 if zone[0] == "+" else -1
    offset = timedelta(0) if zone == "Z" else sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    try:
        at = datetime(year, month, day, hour, minute, second, int(parts[11][1:]), tzinfo=timezone(offset))
    except ValueError as exc:
        raise ValueError(f'parsing time "{text}": {exc}') from None
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _decode_spec(raw: Any, kind_given: bool) -> dict[str, Any]:
    """LeaseSpec from JSON: typed like Go's decoder (400 on a wrong type), unknown fields dropped."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _bad_body(
            kind_given, f"json: cannot unmarshal {_json_type(raw)} into Go struct field Lease.spec of type v1.LeaseSpec"
        )
    spec: dict[str, Any] = {}
    for key, go_type in _SPEC_FIELDS.items():
        value = raw.get(key)
        if value is None:
            continue  # null: the pointer stays nil and the field is omitted
        where = f"Go struct field LeaseSpec.spec.{key} of type {go_type}"
        if go_type == "string":
            if not isinstance(value, str):
                raise _bad_body(kind_given, f"json: cannot unmarshal {_json_type(value)} into {where}")
        elif go_type == "int32":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _bad_body(kind_given, f"json: cannot unmarshal {_json_type(value)} into {where}")
            if value != int(value) or not _INT32[0] <= value <= _INT32[1]:
                raise _bad_body(kind_given, f"json: cannot unmarshal number {value} into {where}")
            value = int(value)
        else:
            if not isinstance(value, str):
                raise _bad_body(kind_given, f"json: cannot unmarshal {_json_type(value)} into Go value of type string")
            try:
                value = _parse_micro_time(value)
            except ValueError as exc:
                raise _bad_body(kind_given, str(exc)) from None
        spec[key] = value
    return spec


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


@dataclass(slots=True)
class _Decoded:
    name: str
    namespace: str | None
    resource_version: str
    uid: str
    metadata: dict[str, Any]  # the kept user fields (labels, annotations, ...)
    spec: dict[str, Any]
    unknown: list[str]  # unknown field paths, for the Warning header


def _decode_lease(body: Any) -> _Decoded:
    """A Lease body as the API decodes it: type, kind, metadata and spec checked, server fields apart."""
    if not isinstance(body, dict):
        why = "json: cannot unmarshal %s into Go value of type struct { APIVersion string; Kind string }"
        raise _bad_body(False, "couldn't get version/kind; json parse error: " + why % _json_type(body))
    kind, api_version = body.get("kind"), body.get("apiVersion")
    kind_given = bool(kind)
    if (kind or api_version) and (kind not in (None, "", "Lease") or api_version not in (None, "", API_VERSION)):
        raise ApiError(
            400,
            f'{kind or "Lease"} in version "{api_version}" cannot be handled as a Lease: '
            f'no kind "{kind}" is registered for version "{api_version}"',
        )
    meta = body.get("metadata")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise _bad_body(
            kind_given,
            f"json: cannot unmarshal {_json_type(meta)} into Go struct field Lease.metadata of type v1.ObjectMeta",
        )
    texts: dict[str, str] = {}
    for key in ("name", "namespace", "resourceVersion", "uid"):
        value = meta.get(key)
        if value is not None and not isinstance(value, str):
            raise _bad_body(
                kind_given,
                f"json: cannot unmarshal {_json_type(value)} into Go struct field "
                f"ObjectMeta.metadata.{key} of type string",
            )
        texts[key] = value or ""
    kept = {key: copy.deepcopy(meta[key]) for key in _KEPT_METADATA if meta.get(key)}
    raw_spec = body.get("spec")
    unknown = [f"spec.{key}" for key in raw_spec if key not in _SPEC_FIELDS] if isinstance(raw_spec, dict) else []
    unknown += [key for key in body if key not in ("kind", "apiVersion", "metadata", "spec")]
    return _Decoded(
        name=texts["name"],
        namespace=texts["namespace"] or None,
        resource_version=texts["resourceVersion"],
        uid=texts["uid"],
        metadata=kept,
        spec=_decode_spec(body.get("spec"), kind_given),
        unknown=unknown,
    )


def _validate(decoded: _Decoded) -> None:
    """ValidateLease: the name (a DNS subdomain) and the spec's bounds; 422 with every error found."""
    errors: list[tuple[str, str]] = []
    name = decoded.name
    if not name:
        errors.append(("metadata.name", "Required value: name or generateName is required"))
    elif len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
        why = "must be no more than 253 characters" if len(name) > 253 else _DNS_SUBDOMAIN_MESSAGE
        errors.append(("metadata.name", f"Invalid value: {_go_value(name)}: {why}"))
    spec = decoded.spec
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and duration <= 0:
        errors.append(("spec.leaseDurationSeconds", f"Invalid value: {duration}: must be greater than 0"))
    transitions = spec.get("leaseTransitions")
    if transitions is not None and transitions < 0:
        errors.append(("spec.leaseTransitions", f"Invalid value: {transitions}: must be greater than or equal to 0"))
    if spec.get("preferredHolder") and not spec.get("strategy"):
        errors.append(("spec.preferredHolder", "Forbidden: may only be specified if `strategy` is defined"))
    if errors:
        raise _invalid(name, errors)


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also what a strategic merge patch does to a Lease: no lists to merge)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _json_patch(document: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch. ``ApiError(400)`` for a malformed patch, ``ValueError`` for one that fails."""
    if not isinstance(operations, list) or not all(isinstance(op, dict) for op in operations):
        raise ApiError(400, "json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(document)
    for op in operations:
        kind, path = op.get("op"), op.get("path")
        if not isinstance(path, str):
            raise ValueError(f"Unexpected kind: {kind}")
        if kind in ("add", "replace", "test") and "value" not in op:
            raise ValueError(f"missing value for {kind} operation")
        if kind == "add":
            doc = _pointer_set(doc, path, copy.deepcopy(op["value"]), insert=True)
        elif kind == "remove":
            doc, _ = _pointer_pop(doc, path)
        elif kind == "replace":
            _pointer_get(doc, path)  # must exist
            doc = _pointer_set(doc, path, copy.deepcopy(op["value"]), insert=False)
        elif kind == "test":
            if _pointer_get(doc, path) != op["value"]:
                raise ValueError(f"testing value {path} failed: test failed")
        elif kind in ("move", "copy"):
            source = op.get("from")
            if not isinstance(source, str):
                raise ValueError(f"missing from for {kind} operation")
            if kind == "move":
                doc, value = _pointer_pop(doc, source)
            else:
                value = copy.deepcopy(_pointer_get(doc, source))
            doc = _pointer_set(doc, path, value, insert=True)
        else:
            raise ValueError(f"Unexpected kind: {kind}")
    return doc


def _pointer_parts(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ValueError(f'JSON pointer must be empty or start with a "/": {path}')
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _pointer_parent(doc: Any, path: str) -> tuple[Any, str]:
    parts = _pointer_parts(path)
    if not parts:
        raise ValueError("cannot operate on the document root")
    parent = doc
    for part in parts[:-1]:
        parent = _child(parent, part, path)
    return parent, parts[-1]


def _child(node: Any, part: str, path: str) -> Any:
    if isinstance(node, dict) and part in node:
        return node[part]
    if isinstance(node, list) and part.isdigit() and int(part) < len(node):
        return node[int(part)]
    raise ValueError(f'doc is missing path: "{path}": missing value')


def _pointer_get(doc: Any, path: str) -> Any:
    node = doc
    for part in _pointer_parts(path):
        node = _child(node, part, path)
    return node


def _pointer_set(doc: Any, path: str, value: Any, *, insert: bool) -> Any:
    if path == "":
        return value
    parent, key = _pointer_parent(doc, path)
    if isinstance(parent, dict):
        parent[key] = value
    elif isinstance(parent, list):
        index = len(parent) if key == "-" else int(key) if key.isdigit() else -1
        if not 0 <= index <= len(parent) - (0 if insert else 1):
            raise ValueError(f'doc is missing path: "{path}": missing value')
        if insert:
            parent.insert(index, value)
        else:
            parent[index] = value
    else:
        raise ValueError(f'doc is missing path: "{path}": missing value')
    return doc


def _pointer_pop(doc: Any, path: str) -> tuple[Any, Any]:
    parent, key = _pointer_parent(doc, path)
    value = _child(parent, key, path)
    if isinstance(parent, dict):
        del parent[key]
    else:
        del parent[int(key)]
    return doc, value


def _media_type(request: web.Request) -> str:
    return request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


class LeaseSimulator(HttpSimulator):
    """Serve the ``coordination.k8s.io/v1`` Lease API on loopback.

    ``tokens`` maps bearer tokens to user names (``None``: no authentication, every request allowed).
    ``verbs``/``resource_names`` restrict what users may do, as an RBAC Role would (``resource_names``
    does not restrict ``create`` or ``list``, as in RBAC). ``clock`` gives the wall time (Unix seconds)
    of ``creationTimestamp``. With ``ssl_context`` it serves HTTPS, as in a cluster. Use as
    ``async with LeaseSimulator(...) as sim:``; :attr:`url` is the base URL (``EXPORTER_KUBERNETES_API_URL``).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tokens: Mapping[str, str] | None = None,
        anonymous_auth: bool = True,
        verbs: Collection[str] = _ALL_VERBS,
        resource_names: Collection[str] | None = None,
        clock: Callable[[], float] = time.time,
        ssl_context: ssl.SSLContext | None = None,
        first_resource_version: int = 1000,
        seed: int = 0,
        max_log: int = 100_000,
    ) -> None:
        super().__init__(host, port, ssl_context)
        self.tokens: dict[str, str] | None = None if tokens is None else dict(tokens)
        self.anonymous_auth = anonymous_auth
        self.verbs = frozenset(verbs)
        self.resource_names = None if resource_names is None else frozenset(resource_names)
        self.clock = clock
        self.stats = LeaseStats()
        self._max_log = max_log
        self._revision = first_resource_version
        self._leases: dict[tuple[str, str], dict[str, Any]] = {}
        self._faults: list[_Fault] = []
        self._hanging: list[_Fault] = []  # one entry per hung request: heal() reaches spent faults too
        self._rng = random.Random(seed)
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle (HttpSimulator)

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", _PREFIX, self._handle_collection)
        app.router.add_route("*", _PREFIX + "/{name}", self._handle_item)
        app.router.add_get("/version", self._handle_version)
        app.router.add_get(f"/apis/{API_VERSION}", self._handle_discovery)

    async def stop(self) -> None:
        self.clear_faults()  # hung requests end now
        await super().stop()

    # ------------------------------------------------------------------ faults

    def partition(
        self,
        token: str | None = None,
        *,
        mode: PartitionMode = "hang",
        requests: int | None = None,
        seconds: float | None = None,
    ) -> None:
        """Cut the client with bearer ``token`` (``None``: every client) off the API.

        ``hang``: requests never reach the server and get no answer; when the partition ends (healed,
        cleared, or ``seconds`` passed) the connection is reset. With ``requests=N`` the next N requests
        hang (until healed, cleared, or the client gives up) and later ones pass. ``reset``: each connection is reset as
        its request arrives. ``drop_answer``: the request is applied, then the connection is reset
        instead of answered (the client cannot tell whether its write happened).
        """
        self._add(_Fault("partition", mode=mode, token=token), requests, seconds)

    def heal(self, token: str | None = None) -> None:
        """End the partitions of ``token`` (``None``: every partition); hung requests are reset now."""
        for fault in self._faults + self._hanging:
            if fault.kind == "partition" and (token is None or fault.token == token):
                fault.released.set()
        self._faults = [f for f in self._faults if not f.released.is_set()]

    def slow(
        self,
        delay: float,
        *,
        token: str | None = None,
        verbs: Collection[str] | None = None,
        requests: int | None = None,
        seconds: float | None = None,
    ) -> None:
        """Answer only after ``delay`` seconds (the request is applied after the delay)."""
        self._add(_Fault("slow", delay=delay, token=token, verbs=_verbs(verbs)), requests, seconds)

    def fail(
        self,
        status: int = 500,
        *,
        message: str | None = None,
        retry_after: int | None = None,
        token: str | None = None,
        verbs: Collection[str] | None = None,
        rate: float = 1.0,
        requests: int | None = None,
        seconds: float | None = None,
    ) -> None:
        """Answer a ``kind: Status`` with ``status`` (500 "etcdserver: request timed out" by default) instead
        of serving; ``rate`` < 1 hits that share of the matching requests (seeded, reproducible)."""
        text = message if message is not None else _FAULT_MESSAGES.get(status, "Internal error occurred")
        fault = _Fault("status", status=status, message=text, retry_after=retry_after, token=token, rate=rate)
        fault.verbs = _verbs(verbs)
        self._add(fault, requests, seconds)

    async def refuse(self, on: bool) -> None:
        """Close the listener and reset every open connection (``on``), or listen again on the same port."""
        if self._runner is None:
            raise RuntimeError("LeaseSimulator is not started")
        if not on:
            if self._site is None:
                await self._listen()
            return
        site, self._site = self._site, None
        if site is not None:
            await site.stop()
        server = self._runner.server
        if server is not None:
            for handler in list(server.connections):
                transport = handler.transport
                if transport is not None:
                    transport.abort()

    def clear_faults(self) -> None:
        for fault in self._faults + self._hanging:
            fault.released.set()
        self._faults.clear()

    def _add(self, fault: _Fault, requests: int | None, seconds: float | None) -> None:
        fault.remaining = requests
        fault.until = None if seconds is None else _loop_clock.monotonic() + seconds
        self._faults.append(fault)

    def _take(self, kind: str, token: str | None, verb: str, now: float) -> _Fault | None:
        self._faults = [f for f in self._faults if f.live(now)]  # a spent fault's hung requests still hang
        for fault in self._faults:
            if fault.kind != kind or (fault.token is not None and fault.token != token):
                continue
            if fault.verbs is not None and verb not in fault.verbs:
                continue
            if fault.rate < 1.0 and self._rng.random() >= fault.rate:
                continue
            if fault.remaining is not None:
                fault.remaining -= 1
            return fault
        return None

    # ------------------------------------------------------------------ state, for tests

    def lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Lease as a GET returns it (a copy), or ``None``."""
        found = self._leases.get((namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def holder(self, namespace: str, name: str) -> str | None:
        found = self._leases.get((namespace, name))
        return None if found is None else found["spec"].get("holderIdentity")

    def holders(self, namespace: str, name: str) -> list[HolderChange]:
        return [c for c in self.stats.holders if c.namespace == namespace and c.name == name]

    def put_lease(self, namespace: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Create or overwrite a Lease directly (e.g. one a dead holder left), as a write would."""
        decoded = _decode_lease({"metadata": {"name": name}, "spec": dict(spec)})
        _validate(decoded)
        existing = self._leases.get((namespace, name))
        return copy.deepcopy(self._store(namespace, decoded, existing))

    def delete_lease(self, namespace: str, name: str) -> None:
        if self._leases.pop((namespace, name), None) is not None:
            self._revision += 1
            self._record_holder(namespace, name, None, str(self._revision), None)

    async def wait_for_holder(self, namespace: str, name: str, accept: Callable[[str | None], bool]) -> str | None:
        """Wait until the holder satisfies ``accept`` (checked now and at each write); bound it with
        ``asyncio.timeout``."""
        while not accept(current := self.holder(namespace, name)):
            await self._changed.wait()
        return current

    # ------------------------------------------------------------------ serving

    async def _handle_collection(self, request: web.Request) -> web.StreamResponse:
        verb = {"GET": "list", "POST": "create"}.get(request.method, "")
        return await self._serve(request, verb, "")

    async def _handle_item(self, request: web.Request) -> web.StreamResponse:
        verb = {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(request.method, "")
        return await self._serve(request, verb, request.match_info["name"])

    async def _serve(self, request: web.Request, verb: str, name: str) -> web.StreamResponse:
        namespace = request.match_info["namespace"]
        token = _bearer(request)
        user = None if token is None or self.tokens is None else self.tokens.get(token)
        record = LeaseRequest(_loop_clock.monotonic(), request.method, verb, namespace, name, user)
        if len(self.stats.log) >= self._max_log:
            del self.stats.log[: self._max_log // 2]
        self.stats.log.append(record)
        partition = self._take("partition", token, verb, record.at)
        if partition is not None and partition.mode != "drop_answer":
            self._count_dropped(record)  # now: a client that gives up first cancels this handler
            if partition.mode == "hang":
                await self._hang(partition)
            return _abort(request)
        slow = self._take("slow", token, verb, record.at)
        if slow is not None:
            await asyncio.sleep(slow.delay)
        response = await self._answer(request, verb, namespace, name, token, record)
        if partition is not None:  # drop_answer: applied, then the answer is lost
            self._count_dropped(record)
            return _abort(request)
        record.status = response.status
        self.stats.requests[verb, response.status] += 1
        return response

    async def _hang(self, fault: _Fault) -> None:
        """Wait until the partition ends: healed or cleared, or its time is up."""
        left = None if fault.until is None else max(0.0, fault.until - _loop_clock.monotonic())
        self._hanging.append(fault)
        try:
            async with asyncio.timeout(left):
                await fault.released.wait()
        except TimeoutError:
            pass
        finally:
            self._hanging.remove(fault)

    def _count_dropped(self, record: LeaseRequest) -> None:
        self.stats.dropped += 1
        self.stats.requests[record.verb, 0] += 1

    async def _answer(
        self, request: web.Request, verb: str, namespace: str, name: str, token: str | None, record: LeaseRequest
    ) -> web.Response:
        try:
            record.user = user = self._authenticate(token)
            if not verb:
                raise ApiError(405, "the server does not allow this method on the requested resource")
            self._authorize(user, verb, namespace, name)
            fault = self._take("status", token, verb, record.at)
            if fault is not None:
                headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
                raise _FaultError(fault.status, fault.message, headers)
            body: Any = None
            if verb in ("create", "update", "patch"):
                body = await self._read_body(request, verb)
                spec = body.get("spec") if isinstance(body, dict) else None
                if isinstance(spec, dict) and isinstance(spec.get("holderIdentity"), str):
                    record.holder = spec["holderIdentity"]
            return self._dispatch(request, verb, namespace, name, body)
        except _FaultError as exc:
            return _json_response(exc.code, exc.status(), exc.headers)
        except ApiError as exc:
            return _json_response(exc.code, exc.status())

    def _authenticate(self, token: str | None) -> str | None:
        """The user a request acts as (``None``: authentication is off); 401 for a credential not known."""
        if self.tokens is None:
            return None
        if token is None and self.anonymous_auth:
            return ANONYMOUS
        if token is None or token not in self.tokens:
            raise ApiError(401, "Unauthorized")
        return self.tokens[token]

    def _authorize(self, user: str | None, verb: str, namespace: str, name: str) -> None:
        """RBAC: anonymous may do nothing; users what ``verbs`` and ``resource_names`` allow (403)."""
        if user is None:
            return
        allowed = user != ANONYMOUS and verb in self.verbs
        if allowed and self.resource_names is not None and verb not in ("create", "list"):
            allowed = name in self.resource_names
        if not allowed:
            what = f'{_QUALIFIED} "{name}"' if name else _QUALIFIED
            raise ApiError(
                403,
                f'{what} is forbidden: User "{user}" cannot {verb} resource "{RESOURCE}" '
                f'in API group "{GROUP}" in the namespace "{namespace}"',
                details=_details(name),
            )

    async def _read_body(self, request: web.Request, verb: str) -> Any:
        media = _media_type(request)
        raw = await request.read()
        if verb == "patch":
            if media not in _PATCH_TYPES:
                raise _unsupported(_PATCH_TYPES)
        elif media not in ("", "application/json", "application/yaml"):
            raise _unsupported(_BODY_TYPES)
        try:
            if media in ("application/yaml", APPLY_PATCH):
                return yaml.safe_load(raw)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError) as exc:
            if verb == "patch":
                raise ApiError(400, f"error decoding patch: {exc}") from None
            raise _bad_body(False, f"couldn't get version/kind; json parse error: {exc}") from None

    def _dispatch(self, request: web.Request, verb: str, namespace: str, name: str, body: Any) -> web.Response:
        key = (namespace, name)
        existing = self._leases.get(key)
        if verb == "get":
            if existing is None:
                raise _not_found(name)
            return _json_response(200, existing)
        if verb == "list":
            items = [_without_type(lease) for (ns, _), lease in sorted(self._leases.items()) if ns == namespace]
            listing = {
                "kind": "LeaseList",
                "apiVersion": API_VERSION,
                "metadata": {"resourceVersion": str(self._revision)},
                "items": items,
            }
            return _json_response(200, listing)
        if verb == "delete":
            return self._delete(namespace, name, existing)
        if verb == "create":
            decoded = _decode_lease(body)
            _check_namespace(decoded, namespace)
            if decoded.resource_version:
                raise ApiError(500, "resourceVersion should not be set on objects to be created", reason="")
            _validate(decoded)
            if (namespace, decoded.name) in self._leases:
                message = f'{_QUALIFIED} "{decoded.name}" already exists'
                raise ApiError(409, message, "AlreadyExists", _details(decoded.name))
            return _json_response(201, self._store(namespace, decoded, None), _warnings(decoded))
        if verb == "update":
            decoded = _decode_lease(body)
            _check_name(decoded, namespace, name)
            return self._update(namespace, decoded, existing)
        return self._patch(request, namespace, name, existing, body)

    def _update(self, namespace: str, decoded: _Decoded, existing: dict[str, Any] | None) -> web.Response:
        """The registry's Update: create-on-update, the UID precondition, then the version check."""
        name = decoded.name
        if existing is None:
            _validate(decoded)
            return _json_response(201, self._store(namespace, decoded, None), _warnings(decoded))
        meta = existing["metadata"]
        if decoded.uid and decoded.uid != meta["uid"]:
            raise _conflict(
                name, f"Precondition failed: UID in precondition: {decoded.uid}, UID in object meta: {meta['uid']}"
            )
        if not decoded.resource_version:
            raise _invalid(
                name, [("metadata.resourceVersion", "Invalid value: 0x0: must be specified for an update")], RESOURCE
            )
        if not decoded.resource_version.isdigit():
            why = f'strconv.ParseUint: parsing "{decoded.resource_version}": invalid syntax'
            raise _invalid(
                name,
                [("metadata.resourceVersion", f"Invalid value: {_go_value(decoded.resource_version)}: {why}")],
                RESOURCE,
            )
        if int(decoded.resource_version) != int(meta["resourceVersion"]):
            raise _conflict(name)
        _validate(decoded)
        return _json_response(200, self._store(namespace, decoded, existing), _warnings(decoded))

    def _patch(
        self, request: web.Request, namespace: str, name: str, existing: dict[str, Any] | None, patch: Any
    ) -> web.Response:
        media = _media_type(request)
        if media == APPLY_PATCH and not request.query.get("fieldManager"):
            raise _invalid("", [("fieldManager", "Required value: is required for apply patch")], "PatchOptions")
        if existing is None and media != APPLY_PATCH:
            raise _not_found(name)
        current = existing if existing is not None else {"metadata": {"name": name, "namespace": namespace}}
        if media == JSON_PATCH:
            try:
                patched = _json_patch(current, patch)
            except ValueError as exc:
                raise ApiError(422, str(exc)) from None
        else:
            if not isinstance(patch, dict):
                raise ApiError(400, "json: cannot unmarshal array into Go value of type map[string]interface {}")
            patched = _merge_patch(current, patch)
        decoded = _decode_lease(patched)
        _check_name(decoded, namespace, name)
        if existing is None:  # server-side apply creates
            decoded.resource_version = ""
        return self._update(namespace, decoded, existing)

    def _delete(self, namespace: str, name: str, existing: dict[str, Any] | None) -> web.Response:
        if existing is None:
            raise _not_found(name)
        uid = existing["metadata"]["uid"]
        self.delete_lease(namespace, name)
        status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
        status["details"] = {**_details(name), "uid": uid}
        return _json_response(200, status)

    def _store(self, namespace: str, decoded: _Decoded, existing: dict[str, Any] | None) -> dict[str, Any]:
        """Write the Lease with the next resourceVersion; an update that changes nothing writes nothing
        and keeps the version (etcd3's GuaranteedUpdate skips equal bytes)."""
        metadata: dict[str, Any] = {"name": decoded.name, "namespace": namespace}
        if existing is None:
            metadata["uid"] = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
            created = datetime.fromtimestamp(int(self.clock()), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        else:
            metadata["uid"] = existing["metadata"]["uid"]
            created = existing["metadata"]["creationTimestamp"]
        metadata["resourceVersion"] = "" if existing is None else existing["metadata"]["resourceVersion"]
        metadata["creationTimestamp"] = created
        metadata.update(decoded.metadata)
        lease = {"kind": "Lease", "apiVersion": API_VERSION, "metadata": metadata, "spec": dict(decoded.spec)}
        if lease == existing:
            return existing
        self._revision += 1
        metadata["resourceVersion"] = str(self._revision)
        self._leases[namespace, decoded.name] = lease
        before = None if existing is None else existing["spec"].get("holderIdentity")
        holder = decoded.spec.get("holderIdentity")
        if existing is None or holder != before:
            self._record_holder(
                namespace, decoded.name, holder, metadata["resourceVersion"], decoded.spec.get("leaseTransitions")
            )
        self._changed.set()
        self._changed = asyncio.Event()
        return lease

    def _record_holder(
        self, namespace: str, name: str, holder: str | None, resource_version: str, transitions: int | None
    ) -> None:
        change = HolderChange(_loop_clock.monotonic(), namespace, name, holder, resource_version, transitions)
        self.stats.holders.append(change)
        self._changed.set()
        self._changed = asyncio.Event()

    async def _handle_version(self, request: web.Request) -> web.Response:
        version = {
            "major": "1",
            "minor": "33",
            "gitVersion": "v1.33.0-leasesim",
            "gitCommit": "0" * 40,
            "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "go1.24.0",
            "compiler": "gc",
            "platform": "linux/amd64",
        }
        return _json_response(200, version)

    async def _handle_discovery(self, request: web.Request) -> web.Response:
        resource = {
            "name": RESOURCE,
            "singularName": "lease",
            "namespaced": True,
            "kind": "Lease",
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        }
        body = {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": API_VERSION, "resources": [resource]}
        return _json_response(200, body)


class _FaultError(ApiError):
    def __init__(self, code: int, message: str, headers: dict[str, str]) -> None:
        super().__init__(code, message)
        self.headers = headers


_FAULT_MESSAGES = {
    500: "etcdserver: request timed out",
    503: "the server is currently unable to handle the request",
    504: "the server was unable to return a response in the time allotted, but may still be processing the request",
    429: "the server has received too many requests and has asked us to try again later",
}


def _abort(request: web.Request) -> web.Response:
    """Reset the connection instead of answering."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=499)  # never sent: aiohttp discards answers to an aborted transport


def _verbs(verbs: Collection[str] | None) -> frozenset[str] | None:
    return None if verbs is None else frozenset(verbs)


def _bearer(request: web.Request) -> str | None:
    """The bearer token; ``None`` for no header, another scheme or an empty token (the request is then
    anonymous, as the bearer authenticator leaves it to the next one)."""
    scheme, _, rest = request.headers.get("Authorization", "").strip().partition(" ")
    token = rest.strip().split(" ", 1)[0]
    return token if scheme.lower() == "bearer" and token else None


def _unsupported(accepted: tuple[str, ...]) -> ApiError:
    return ApiError(
        415, "the body of the request was in an unknown format - accepted media types include: " + ", ".join(accepted)
    )


def _check_namespace(decoded: _Decoded, namespace: str) -> None:
    if decoded.namespace is not None and decoded.namespace != namespace:
        raise ApiError(400, "the namespace of the provided object does not match the namespace sent on the request")


def _check_name(decoded: _Decoded, namespace: str, name: str) -> None:
    """The update and patch handlers' checkName: the body names the object of the URL."""
    _check_namespace(decoded, namespace)
    if decoded.name != name:
        raise ApiError(400, f"the name of the object ({decoded.name}) does not match the name on the URL ({name})")


def _warnings(decoded: _Decoded) -> dict[str, str]:
    """Unknown fields are dropped with a warning (the server's default ``fieldValidation=Warn``)."""
    if not decoded.unknown:
        return {}
    return {"Warning": ", ".join(f'299 - "unknown field \\"{path}\\""' for path in decoded.unknown)}


def _without_type(lease: dict[str, Any]) -> dict[str, Any]:
    """A list's items carry no ``kind``/``apiVersion``."""
    return {key: value for key, value in lease.items() if key not in ("kind", "apiVersion")}


def _json_response(status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> web.Response:
    all_headers = {
        "Content-Type": "application/json",
        "Cache-Control": "no-cache, private",
        "Audit-Id": str(uuid.uuid4()),
    }
    all_headers.update(headers or {})
    return web.Response(status=status, body=json.dumps(body, separators=(",", ":")).encode(), headers=all_headers)
