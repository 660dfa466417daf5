"""The Lease API simulator: objects, errors and concurrency as kube-apiserver answers them for
``coordination.k8s.io/v1`` Leases, bearer tokens and RBAC, the holder history, every fault, and lightkube's
``AsyncClient`` against it."""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from lightkube import ApiError, AsyncClient
from lightkube.config.kubeconfig import KubeConfig
from lightkube.config.models import Cluster, User
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

from exporter.sim.lease_server import OPTIMISTIC_LOCK_MESSAGE, LeaseSimulator, micro_time
from tests.support.pki import Pki

# Virtual loop time (``looptime``): real sockets; hangs, delays and client timeouts cost no wall time.
pytestmark = pytest.mark.looptime

NS = "default"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
TOKENS = {"token-a": "system:serviceaccount:default:daemon-a", "token-b": "system:serviceaccount:default:daemon-b"}
MERGE = {"Content-Type": "application/merge-patch+json"}
T0 = 1796598000.0  # 2026-12-06 23:00:00 UTC


def lease_body(name: str = "lock", holder: str = "a", **meta: str) -> dict[str, Any]:
    spec = {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": micro_time(T0 + 0.5)}
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name, **meta}, "spec": spec}


def now() -> float:
    return asyncio.get_running_loop().time()


@pytest.fixture
async def sim() -> AsyncIterator[LeaseSimulator]:
    async with LeaseSimulator(tokens=TOKENS, clock=lambda: T0) as s:
        yield s


TOKEN_A = "token-a"


def client(sim: LeaseSimulator, token: str | None = TOKEN_A, timeout: float = 5.0) -> httpx.AsyncClient:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.AsyncClient(base_url=sim.url, headers=headers, timeout=timeout)


@pytest.fixture
async def api(sim: LeaseSimulator) -> AsyncIterator[httpx.AsyncClient]:
    async with client(sim) as c:
        yield c


async def create(api: httpx.AsyncClient, name: str = "lock", holder: str = "a") -> dict[str, Any]:
    response = await api.post(LEASES, json=lease_body(name, holder))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def status(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    assert body["kind"] == "Status"
    assert body["apiVersion"] == "v1"
    assert body["status"] == "Failure"
    assert body["code"] == response.status_code
    return response.status_code, body.get("reason", ""), body["message"]


# ---------------------------------------------------------------------- objects and versions


async def test_get_before_creation_is_a_not_found_status(api: httpx.AsyncClient) -> None:
    response = await api.get(f"{LEASES}/lock")
    assert status(response) == (404, "NotFound", 'leases.coordination.k8s.io "lock" not found')
    assert response.json()["details"] == {"name": "lock", "group": "coordination.k8s.io", "kind": "leases"}


async def test_create_serves_the_object_with_server_fields_and_microtimes_in_utc(
    sim: LeaseSimulator, api: httpx.AsyncClient
) -> None:
    body = lease_body(holder="daemon-a")
    body["spec"]["acquireTime"] = "2026-12-07T00:00:00.000001+01:00"  # an offset: served in UTC
    response = await api.post(LEASES, json=body)
    assert response.status_code == 201
    created = response.json()
    assert created["kind"] == "Lease"
    assert created["apiVersion"] == "coordination.k8s.io/v1"
    meta = created["metadata"]
    assert (meta["name"], meta["namespace"], meta["creationTimestamp"]) == ("lock", NS, "2026-12-06T23:00:00Z")
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", meta["uid"])
    assert isinstance(meta["resourceVersion"], str)
    assert meta["resourceVersion"].isdigit()
    assert created["spec"] == {
        "holderIdentity": "daemon-a",
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-12-06T23:00:00.000001Z",
        "renewTime": "2026-12-06T23:00:00.500000Z",
    }
    fetched = await api.get(f"{LEASES}/lock")
    assert fetched.status_code == 200
    assert fetched.json() == created == sim.lease(NS, "lock")
    again = await api.post(LEASES, json=lease_body(holder="daemon-b"))
    assert status(again) == (409, "AlreadyExists", 'leases.coordination.k8s.io "lock" already exists')
    listed = (await api.get(LEASES)).json()
    assert listed["kind"] == "LeaseList"
    assert [item["metadata"]["name"] for item in listed["items"]] == ["lock"]
    assert "kind" not in listed["items"][0]  # list items carry no type


async def test_update_needs_the_current_resource_version(api: httpx.AsyncClient) -> None:
    first = await create(api)
    renewed = dict(first, spec={**first["spec"], "renewTime": micro_time(T0 + 2)})
    ok = await api.put(f"{LEASES}/lock", json=renewed)
    assert ok.status_code == 200
    assert int(ok.json()["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    assert ok.json()["metadata"]["uid"] == first["metadata"]["uid"]
    stale = await api.put(f"{LEASES}/lock", json=dict(renewed, spec={**renewed["spec"], "holderIdentity": "b"}))
    message = f'Operation cannot be fulfilled on leases.coordination.k8s.io "lock": {OPTIMISTIC_LOCK_MESSAGE}'
    assert status(stale) == (409, "Conflict", message)
    unversioned = lease_body()  # Leases do not allow unconditional updates
    missing = await api.put(f"{LEASES}/lock", json=unversioned)
    assert status(missing)[:2] == (422, "Invalid")
    assert "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update" in status(missing)[2]
    assert (await api.get(f"{LEASES}/lock")).json() == ok.json()  # nothing rejected was written


async def test_unknown_fields_are_dropped_with_a_warning(api: httpx.AsyncClient) -> None:
    body = lease_body()
    body["spec"]["holder"] = "typo"
    response = await api.post(LEASES, json=body)
    assert response.status_code == 201
    assert response.headers["Warning"] == '299 - "unknown field \\"spec.holder\\""'
    assert "holder" not in response.json()["spec"]


async def test_other_methods_and_the_version_endpoints(api: httpx.AsyncClient) -> None:
    assert status(await api.post(f"{LEASES}/lock", json=lease_body()))[:2] == (405, "MethodNotAllowed")
    assert (await api.get("/version")).json()["major"] == "1"
    discovery = (await api.get("/apis/coordination.k8s.io/v1")).json()
    assert [(r["name"], r["kind"], r["namespaced"]) for r in discovery["resources"]] == [("leases", "Lease", True)]


async def test_an_update_that_changes_nothing_keeps_the_version(api: httpx.AsyncClient) -> None:
    created = await create(api)
    same = await api.put(f"{LEASES}/lock", json=created)
    assert same.status_code == 200
    assert same.json() == created
    renewed = await api.put(f"{LEASES}/lock", json=dict(created, spec={**created["spec"], "leaseTransitions": 0}))
    assert int(renewed.json()["metadata"]["resourceVersion"]) == int(created["metadata"]["resourceVersion"]) + 1


async def test_put_of_a_missing_lease_creates_it(api: httpx.AsyncClient) -> None:
    response = await api.put(f"{LEASES}/fresh", json=lease_body("fresh"))
    assert response.status_code == 201
    assert response.json()["metadata"]["resourceVersion"].isdigit()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"{not json", (400, "BadRequest")),
        (lease_body("other"), (400, "BadRequest")),  # the body names another Lease than the URL
        (lease_body(namespace="kube-system"), (400, "BadRequest")),
        ({**lease_body(), "spec": {"renewTime": "2026-12-06T23:00:00Z"}}, (400, "BadRequest")),  # no micros
        ({**lease_body(), "spec": {"renewTime": "2026-12-06T23:00:00.123Z"}}, (400, "BadRequest")),  # not 6 digits
        ({**lease_body(), "spec": {"leaseDurationSeconds": "15"}}, (400, "BadRequest")),
        ({**lease_body(), "spec": {"leaseDurationSeconds": 0}}, (422, "Invalid")),
        ({**lease_body(), "spec": {"leaseTransitions": -1}}, (422, "Invalid")),
        ({**lease_body(), "kind": "ConfigMap", "apiVersion": "v1"}, (400, "BadRequest")),
    ],
)
async def test_bad_bodies_are_rejected_with_the_servers_status(
    sim: LeaseSimulator, api: httpx.AsyncClient, content: Any, expected: tuple[int, str]
) -> None:
    version = (await create(api))["metadata"]["resourceVersion"]
    if isinstance(content, dict):
        content = {**content, "metadata": {**content["metadata"], "resourceVersion": version}}
        response = await api.put(f"{LEASES}/lock", json=content)
    else:
        response = await api.put(f"{LEASES}/lock", content=content, headers={"Content-Type": "application/json"})
    assert status(response)[:2] == expected
    stored = sim.lease(NS, "lock")
    assert stored is not None
    assert stored["metadata"]["resourceVersion"] == version  # nothing rejected was written


async def test_create_validates_the_name_and_refuses_a_resource_version(api: httpx.AsyncClient) -> None:
    response = await api.post(LEASES, json=lease_body("Bad_Name"))
    assert status(response)[:2] == (422, "Invalid")
    expected = 'Lease.coordination.k8s.io "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name"'
    assert expected in status(response)[2]
    versioned = await api.post(LEASES, json=lease_body(resourceVersion="5"))
    assert versioned.status_code == 500
    assert versioned.json()["message"] == "resourceVersion should not be set on objects to be created"


# ---------------------------------------------------------------------- patches


async def test_patches_merge_apply_and_check_the_version(api: httpx.AsyncClient) -> None:
    first = await create(api)
    merged = await api.patch(f"{LEASES}/lock", json={"spec": {"holderIdentity": "b"}}, headers=MERGE)
    assert merged.status_code == 200
    assert merged.json()["spec"]["holderIdentity"] == "b"
    strategic = await api.patch(
        f"{LEASES}/lock",
        json={"spec": {"leaseTransitions": 1, "renewTime": None}},
        headers={"Content-Type": "application/strategic-merge-patch+json"},
    )
    assert strategic.status_code == 200
    assert strategic.json()["spec"] == {"holderIdentity": "b", "leaseDurationSeconds": 15, "leaseTransitions": 1}
    version = strategic.json()["metadata"]["resourceVersion"]
    guarded = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": version},
        {"op": "replace", "path": "/spec/holderIdentity", "value": "c"},
    ]
    json_patch = {"Content-Type": "application/json-patch+json"}
    replaced = await api.patch(f"{LEASES}/lock", json=guarded, headers=json_patch)
    assert replaced.status_code == 200
    assert replaced.json()["spec"]["holderIdentity"] == "c"
    failed_test = await api.patch(f"{LEASES}/lock", json=guarded, headers=json_patch)  # the version moved on
    assert status(failed_test)[:2] == (422, "Invalid")
    stale = {"metadata": {"resourceVersion": first["metadata"]["resourceVersion"]}, "spec": {"holderIdentity": "d"}}
    conflict = await api.patch(f"{LEASES}/lock", json=stale, headers=MERGE)
    assert status(conflict)[:2] == (409, "Conflict")
    unsupported = await api.patch(f"{LEASES}/lock", json={"spec": {}}, headers={"Content-Type": "application/json"})
    assert status(unsupported)[:2] == (415, "UnsupportedMediaType")
    missing = await api.patch(f"{LEASES}/nope", json={"spec": {}}, headers=MERGE)
    assert status(missing)[:2] == (404, "NotFound")
    assert (await api.get(f"{LEASES}/lock")).json()["spec"]["holderIdentity"] == "c"


async def test_apply_patch_needs_a_field_manager_and_creates(api: httpx.AsyncClient) -> None:
    apply = {"Content-Type": "application/apply-patch+yaml"}
    document = "kind: Lease\napiVersion: coordination.k8s.io/v1\nmetadata: {name: applied}\nspec: {holderIdentity: a}\n"
    unmanaged = await api.patch(f"{LEASES}/applied", content=document, headers=apply)
    assert status(unmanaged)[:2] == (422, "Invalid")
    applied = await api.patch(f"{LEASES}/applied", params={"fieldManager": "t"}, content=document, headers=apply)
    assert applied.status_code == 201
    assert applied.json()["spec"] == {"holderIdentity": "a"}


async def test_delete_answers_a_success_status_and_records_no_holder(
    sim: LeaseSimulator, api: httpx.AsyncClient
) -> None:
    created = await create(api)
    response = await api.delete(f"{LEASES}/lock")
    assert response.status_code == 200
    assert response.json()["status"] == "Success"
    assert response.json()["details"]["uid"] == created["metadata"]["uid"]
    assert sim.lease(NS, "lock") is None
    assert sim.holders(NS, "lock")[-1].holder is None
    assert status(await api.delete(f"{LEASES}/lock"))[:2] == (404, "NotFound")


# ---------------------------------------------------------------------- authentication and RBAC


async def test_tokens_are_checked(sim: LeaseSimulator) -> None:
    async with client(sim, "token-b") as known, client(sim, "stolen") as unknown, client(sim, None) as anonymous:
        assert (await known.get(f"{LEASES}/lock")).status_code == 404
        assert status(await unknown.get(f"{LEASES}/lock")) == (401, "Unauthorized", "Unauthorized")
        forbidden = status(await anonymous.get(f"{LEASES}/lock"))
        assert forbidden[:2] == (403, "Forbidden")
        assert forbidden[2] == (
            'leases.coordination.k8s.io "lock" is forbidden: User "system:anonymous" cannot get resource "leases" '
            'in API group "coordination.k8s.io" in the namespace "default"'
        )
    sim.anonymous_auth = False
    async with client(sim, None) as anonymous:
        assert status(await anonymous.get(f"{LEASES}/lock"))[:2] == (401, "Unauthorized")
    assert [r.user for r in sim.stats.log] == [TOKENS["token-b"], None, "system:anonymous", None]


async def test_rbac_verbs_and_resource_names() -> None:
    sim = LeaseSimulator(tokens=TOKENS, verbs={"get", "create", "update"}, resource_names={"lock"})
    async with sim, client(sim) as api:
        await create(api)
        other = await api.post(LEASES, json=lease_body("other"))  # create is not restricted by name
        assert other.status_code == 201
        assert status(await api.get(f"{LEASES}/other"))[:2] == (403, "Forbidden")
        denied = await api.patch(f"{LEASES}/lock", json={"spec": {}}, headers=MERGE)
        assert status(denied)[:2] == (403, "Forbidden")
        assert 'cannot patch resource "leases"' in status(denied)[2]
        assert (await api.get(f"{LEASES}/lock")).status_code == 200


# ---------------------------------------------------------------------- history and stats


async def test_holder_history_and_request_counts(sim: LeaseSimulator, api: httpx.AsyncClient) -> None:
    lease = await create(api, holder="a")
    for second, holder in enumerate(("a", "b", "b", ""), 1):  # a renewal keeps the holder: no change recorded
        lease["spec"]["holderIdentity"] = holder
        lease["spec"]["renewTime"] = micro_time(T0 + second)
        response = await api.put(f"{LEASES}/lock", json=lease)
        assert response.status_code == 200
        lease = response.json()
    sim.put_lease(NS, "lock", {"holderIdentity": "c", "leaseDurationSeconds": 15})
    changes = sim.holders(NS, "lock")
    assert [c.holder for c in changes] == ["a", "b", "", "c"]
    assert [c.at for c in changes] == sorted(c.at for c in changes)
    assert [int(c.resource_version) for c in changes] == sorted(int(c.resource_version) for c in changes)
    assert sim.holder(NS, "lock") == "c"
    assert sim.stats.requests == {("create", 201): 1, ("update", 200): 4}
    assert [r.holder for r in sim.stats.log] == ["a", "a", "b", "b", ""]


async def test_wait_for_holder_wakes_on_the_write(sim: LeaseSimulator, api: httpx.AsyncClient) -> None:
    waiter = asyncio.create_task(sim.wait_for_holder(NS, "lock", lambda holder: holder == "b"))
    await create(api, holder="a")
    await asyncio.sleep(0.1)
    assert not waiter.done()
    sim.put_lease(NS, "lock", {"holderIdentity": "b"})
    async with asyncio.timeout(1):
        assert await waiter == "b"


# ---------------------------------------------------------------------- faults


async def test_fail_answers_server_errors_for_n_requests_then_recovers(
    sim: LeaseSimulator, api: httpx.AsyncClient
) -> None:
    sim.fail(500, requests=2)
    for _ in range(2):
        response = await api.get(f"{LEASES}/lock")
        assert status(response) == (500, "InternalError", "etcdserver: request timed out")
    assert (await api.get(f"{LEASES}/lock")).status_code == 404
    sim.fail(429, retry_after=3, verbs={"update"}, seconds=10)
    await create(api)
    throttled = await api.put(f"{LEASES}/lock", json=lease_body())
    assert status(throttled)[:2] == (429, "TooManyRequests")
    assert throttled.headers["Retry-After"] == "3"
    await asyncio.sleep(10)
    assert (await api.put(f"{LEASES}/lock", json=lease_body())).status_code == 422  # served again


async def test_fail_at_a_rate_hits_about_that_share(sim: LeaseSimulator, api: httpx.AsyncClient) -> None:
    sim.fail(503, rate=0.3)
    codes = [(await api.get(f"{LEASES}/lock")).status_code for _ in range(200)]
    assert set(codes) == {404, 503}
    assert 30 <= codes.count(503) <= 90


async def test_slow_answers_after_the_delay(sim: LeaseSimulator, api: httpx.AsyncClient) -> None:
    sim.slow(3.0, requests=1)
    start = now()
    assert (await api.get(f"{LEASES}/lock")).status_code == 404
    assert now() - start >= 3.0
    start = now()
    await api.get(f"{LEASES}/lock")
    assert now() - start < 3.0


async def test_partition_hangs_one_client_while_the_other_reaches_the_api(sim: LeaseSimulator) -> None:
    async with client(sim, "token-a", timeout=2.0) as a, client(sim, "token-b", timeout=2.0) as b:
        await create(a, holder="daemon-a")
        sim.partition("token-a")
        with pytest.raises(httpx.ReadTimeout):
            await a.get(f"{LEASES}/lock")
        assert (await b.get(f"{LEASES}/lock")).status_code == 200
        sim.heal("token-a")
        assert (await a.get(f"{LEASES}/lock")).status_code == 200
    assert sim.stats.dropped == 1
    assert sim.stats.requests["get", 0] == 1


async def test_partition_of_n_requests_hangs_them_until_healed(sim: LeaseSimulator) -> None:
    async with client(sim, "token-a", timeout=60.0) as a, client(sim, "token-a", timeout=60.0) as a2:
        sim.partition("token-a", requests=1)
        hung = asyncio.create_task(a.get(f"{LEASES}/lock"))
        await asyncio.sleep(1.0)
        assert (await a2.get(f"{LEASES}/lock")).status_code == 404  # the second request passes
        await asyncio.sleep(1.0)
        assert not hung.done()  # the first still hangs
        sim.heal("token-a")
        with pytest.raises(httpx.RemoteProtocolError):
            await hung


async def test_partition_ends_after_its_time_and_resets_the_hung_request(sim: LeaseSimulator) -> None:
    async with client(sim, "token-a", timeout=60.0) as a:
        sim.partition("token-a", seconds=5.0)
        start = now()
        with pytest.raises(httpx.RemoteProtocolError):  # reset at the end, not the client's timeout
            await a.get(f"{LEASES}/lock")
        assert 5.0 <= now() - start < 10.0
        assert (await a.get(f"{LEASES}/lock")).status_code == 404


async def test_partition_reset_and_drop_answer(sim: LeaseSimulator) -> None:
    async with client(sim, "token-a") as a, client(sim, "token-b") as b:
        lease = await create(b, holder="b")
        sim.partition("token-a", mode="reset", requests=1)
        with pytest.raises(httpx.TransportError):
            await a.get(f"{LEASES}/lock")
        assert (await a.get(f"{LEASES}/lock")).status_code == 200
        sim.partition("token-a", mode="drop_answer", requests=1)
        lease["spec"]["holderIdentity"] = "a"
        with pytest.raises(httpx.TransportError):
            await a.put(f"{LEASES}/lock", json=lease)
        assert sim.holder(NS, "lock") == "a"  # the write happened; only its answer was lost
    assert sim.stats.dropped == 2


async def test_refuse_closes_the_listener_and_reopens_on_the_same_port(
    sim: LeaseSimulator, api: httpx.AsyncClient
) -> None:
    assert (await api.get(f"{LEASES}/lock")).status_code == 404  # a kept-alive connection now exists
    port = sim.port
    await sim.refuse(True)
    with pytest.raises(httpx.TransportError):
        await api.get(f"{LEASES}/lock")
    async with client(sim) as fresh:
        with pytest.raises(httpx.ConnectError):
            await fresh.get(f"{LEASES}/lock")
    await sim.refuse(False)
    assert sim.port == port
    assert (await api.get(f"{LEASES}/lock")).status_code == 404


# ---------------------------------------------------------------------- lightkube


async def test_lightkube_async_client_agrees(sim: LeaseSimulator) -> None:
    config = KubeConfig.from_one(cluster=Cluster(server=sim.url), user=User(token="token-a"), namespace=NS)
    kube = AsyncClient(config=config, trust_env=False)
    try:
        with pytest.raises(ApiError) as missing:
            await kube.get(Lease, "lock", namespace=NS)
        assert missing.value.status.code == 404
        assert missing.value.status.reason == "NotFound"
        spec = LeaseSpec(holderIdentity="daemon-a", leaseDurationSeconds=15, leaseTransitions=0)
        created = await kube.create(Lease(metadata=ObjectMeta(name="lock", namespace=NS), spec=spec))
        assert created.metadata is not None
        assert created.metadata.resourceVersion is not None
        assert created.spec is not None
        assert created.spec.holderIdentity == "daemon-a"
        stale_version = created.metadata.resourceVersion
        created.spec.holderIdentity = "daemon-b"
        replaced = await kube.replace(created)
        assert replaced.spec is not None
        assert replaced.spec.holderIdentity == "daemon-b"
        created.metadata.resourceVersion = stale_version
        with pytest.raises(ApiError) as conflict:
            await kube.replace(created)
        assert conflict.value.status.code == 409
        assert conflict.value.status.reason == "Conflict"
        assert conflict.value.status.message is not None
        assert OPTIMISTIC_LOCK_MESSAGE in conflict.value.status.message
        patched = await kube.patch(Lease, "lock", {"spec": {"leaseTransitions": 1}}, namespace=NS)
        assert patched.spec is not None
        assert patched.spec.leaseTransitions == 1
        assert sim.holder(NS, "lock") == "daemon-b"
    finally:
        await kube.close()


async def test_lightkube_whole_second_micro_times_are_refused_as_the_api_server_refuses_them(
    sim: LeaseSimulator,
) -> None:
    """lightkube writes a datetime with ``isoformat()``, which drops ``.000000``; Go's MicroTime parser then
    fails. A client must send MicroTimes as strings (or never a whole second)."""
    config = KubeConfig.from_one(cluster=Cluster(server=sim.url), user=User(token="token-a"), namespace=NS)
    kube = AsyncClient(config=config, trust_env=False)
    whole_second = datetime(2026, 12, 6, 23, 0, 0, tzinfo=UTC)
    try:
        with pytest.raises(ApiError) as refused:
            await kube.create(Lease(metadata=ObjectMeta(name="lock"), spec=LeaseSpec(renewTime=whole_second)))
        assert refused.value.status.code == 400
        assert refused.value.status.message == (
            'Lease in version "v1" cannot be handled as a Lease: parsing time "2026-12-06T23:00:00Z" as '
            '"2006-01-02T15:04:05.000000Z07:00": cannot parse "Z" as ".000000"'
        )
        later = whole_second.replace(microsecond=1)
        created = await kube.create(Lease(metadata=ObjectMeta(name="lock"), spec=LeaseSpec(renewTime=later)))
        assert created.spec is not None
        assert created.spec.renewTime == later
    finally:
        await kube.close()


async def test_lightkube_over_https_with_the_cluster_ca(pki: Pki) -> None:
    """In a cluster the API is HTTPS, verified against the service account's ``ca.crt``."""
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(pki.server_cert, pki.server_key)
    async with LeaseSimulator(tokens=TOKENS, ssl_context=server_tls) as sim:
        assert sim.url.startswith("https://127.0.0.1:")
        cluster = Cluster(server=sim.url, certificate_auth=str(pki.ca))
        kube = AsyncClient(config=KubeConfig.from_one(cluster=cluster, user=User(token="token-a")), trust_env=False)
        try:
            with pytest.raises(ApiError) as missing:
                await kube.get(Lease, "lock", namespace=NS)
            assert missing.value.status.code == 404
        finally:
            await kube.close()
        async with httpx.AsyncClient(base_url=sim.url) as unverified:
            with pytest.raises(httpx.ConnectError):  # the simulator's certificate is not publicly trusted
                await unverified.get(f"{LEASES}/lock")
