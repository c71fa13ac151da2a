"""The fake apiserver, checked against the real `kubernetes` client (all traffic to 127.0.0.1):
pods and node through CoreV1Api, DRA ResourceSlices through ResourceV1Api."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from tests.fakes import FakeKubeAPI
from tests.fakes.kube_api import SLICE_PATH, gpu_device, gpu_slice, mig_device

NODE = "node-a"
SELECTOR = f"spec.nodeName={NODE}"
TIMEOUT = (2.0, 5.0)  # urllib3 (connect, read) bound for every request a test makes


def pod(name: str, node: str | None = NODE, *, ns: str = "default",
        phase: str = "Running") -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "busybox"}]}
    if node is not None:
        spec["nodeName"] = node
    return {"metadata": {"name": name, "namespace": ns}, "spec": spec, "status": {"phase": phase}}


def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def raw_events(resp: urllib3.BaseHTTPResponse) -> Iterator[dict[str, Any]]:
    """Parse a raw watch body ourselves: one JSON document per line."""
    buffer = b""
    for chunk in resp.stream(amt=None):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)


def raw_watch(api: client.CoreV1Api, **kwargs: Any) -> urllib3.BaseHTTPResponse:
    return cast(urllib3.BaseHTTPResponse, api.list_pod_for_all_namespaces(
        watch=True, _preload_content=False, _request_timeout=TIMEOUT, **kwargs))


def new_watch() -> Any:
    """A `kubernetes.watch.Watch` (untyped in the client)."""
    return watch.Watch()  # type: ignore[no-untyped-call]


def status_body(exc: ApiException) -> dict[str, Any]:
    assert exc.body is not None
    body: dict[str, Any] = json.loads(exc.body)
    return body


def close(resp: urllib3.BaseHTTPResponse) -> None:
    resp.close()
    resp.release_conn()


def name_of(event: dict[str, Any]) -> str:
    return str(event["raw_object"]["metadata"].get("name", ""))


@pytest.fixture
def fake() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI(node_name=NODE, node_labels={"pool": "gpu", "zone": "z1"},
                     allocatable_cpu="15900m", bookmark_interval=0.2) as server:
        yield server


def make_api(server: FakeKubeAPI, tmp_path: Path) -> Iterator[client.CoreV1Api]:
    cfg = client.Configuration()
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig), client_configuration=cfg)
    with client.ApiClient(cfg) as api_client:
        yield client.CoreV1Api(api_client)


@pytest.fixture
def api(fake: FakeKubeAPI, tmp_path: Path) -> Iterator[client.CoreV1Api]:
    yield from make_api(fake, tmp_path)


def test_list_filters_by_node_and_reports_resource_version(
        fake: FakeKubeAPI, api: client.CoreV1Api) -> None:
    fake.add_pod(pod("a2"))
    fake.add_pod(pod("a1", ns="ml"))
    fake.add_pod(pod("b1", node="node-b"))
    fake.add_pod(pod("pending", node=None))

    mine: Any = api.list_pod_for_all_namespaces(field_selector=SELECTOR,
                                                _request_timeout=TIMEOUT)
    assert [(p.metadata.namespace, p.metadata.name) for p in mine.items] == [
        ("default", "a2"), ("ml", "a1")]  # namespace/name order, other nodes filtered
    assert mine.metadata.resource_version == fake.resource_version == "5"
    assert all(p.metadata.uid and p.metadata.resource_version for p in mine.items)
    everything = api.list_pod_for_all_namespaces(_request_timeout=TIMEOUT)
    assert len(everything.items) == 4
    assert fake.stats["list"] == 2
    assert fake.requests[0] == ("GET", "/api/v1/pods", {"fieldSelector": SELECTOR})

    with pytest.raises(ApiException) as bad:
        api.list_pod_for_all_namespaces(field_selector="status.phase=Running",
                                        _request_timeout=TIMEOUT)
    assert bad.value.status == 400
    assert status_body(bad.value)["reason"] == "BadRequest"


def test_watch_stream_replays_then_streams_live_in_order(
        fake: FakeKubeAPI, api: client.CoreV1Api) -> None:
    fake.add_pod(pod("a1"))
    fake.add_pod(pod("b1", node="node-b"))
    listed: Any = api.list_pod_for_all_namespaces(field_selector=SELECTOR,
                                                  _request_timeout=TIMEOUT)
    rv = listed.metadata.resource_version
    fake.add_pod(pod("a2"))  # after the list: must be replayed from the event log
    fake.add_pod(pod("b2", node="node-b"))

    w = new_watch()
    seen: list[tuple[str, str, str]] = []
    for event in w.stream(api.list_pod_for_all_namespaces, field_selector=SELECTOR,
                          resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=5,
                          _request_timeout=TIMEOUT):
        obj_rv = event["raw_object"]["metadata"]["resourceVersion"]
        seen.append((event["type"], name_of(event), obj_rv))
        if event["type"] == "ADDED":  # live mutations, made while the stream is open
            fake.modify_pod("default", "a2", pod("a2", phase="Succeeded"))
        elif event["type"] == "MODIFIED":
            assert event["object"].status.phase == "Succeeded"  # deserialized V1Pod
            fake.delete_pod("default", "a2")
        elif event["type"] == "BOOKMARK" and seen[-2][0] == "DELETED":
            w.stop()

    changes = [s for s in seen if s[0] != "BOOKMARK"]
    assert [(t, n) for t, n, _ in changes] == [
        ("ADDED", "a2"), ("MODIFIED", "a2"), ("DELETED", "a2")]
    versions = [int(v) for _, _, v in changes]
    assert versions == sorted(versions) and len(set(versions)) == 3
    assert int(versions[0]) > int(rv)
    assert seen[-1][0] == "BOOKMARK"
    assert seen[-1][2] == fake.resource_version == w.resource_version
    assert fake.stats["watch"] == 1
    wait_until(lambda: fake.stats["open_watches"] == 0)


def test_raw_watch_lines_bookmarks_and_timeout(fake: FakeKubeAPI, api: client.CoreV1Api) -> None:
    fake.add_pod(pod("a1"))
    rv = fake.resource_version
    started = time.monotonic()
    resp = raw_watch(api, resource_version=rv, allow_watch_bookmarks=True,
                     field_selector=SELECTOR, timeout_seconds=1)
    try:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        assert resp.headers["Transfer-Encoding"] == "chunked"
        fake.add_pod(pod("b1", node="node-b"))  # other node: no event, but RV moves on
        events = list(raw_events(resp))  # ends by itself after timeoutSeconds
    finally:
        close(resp)
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 3.0
    assert {e["type"] for e in events} == {"BOOKMARK"}
    assert len(events) >= 3
    last = events[-1]["object"]
    assert last == {"kind": "Pod", "apiVersion": "v1",
                    "metadata": {"resourceVersion": fake.resource_version}}
    assert int(fake.resource_version) == int(rv) + 1
    # What the real client puts on the wire for a watch:
    assert fake.requests[-1] == ("GET", "/api/v1/pods", {
        "allowWatchBookmarks": "true", "fieldSelector": SELECTOR, "resourceVersion": rv,
        "timeoutSeconds": "1", "watch": "true"})


def test_watch_from_zero_sends_current_pods_then_live(
        fake: FakeKubeAPI, api: client.CoreV1Api) -> None:
    fake.add_pod(pod("a1"))
    fake.add_pod(pod("b1", node="node-b"))
    resp = raw_watch(api, resource_version="0", field_selector=SELECTOR, timeout_seconds=3)
    try:
        events = raw_events(resp)
        first = next(events)
        assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "a1")
        assert (first["object"]["kind"], first["object"]["apiVersion"]) == ("Pod", "v1")
        fake.add_pod(pod("b2", node="node-b"))
        fake.add_pod(pod("a2"))
        live = next(events)
        assert (live["type"], live["object"]["metadata"]["name"]) == ("ADDED", "a2")
        assert live["object"]["metadata"]["resourceVersion"] == fake.resource_version
    finally:
        close(resp)


def test_binding_and_unbinding_follow_the_field_selector(
        fake: FakeKubeAPI, api: client.CoreV1Api) -> None:
    fake.add_pod(pod("p", node=None))
    rv = fake.resource_version
    bound = fake.modify_pod("default", "p", pod("p"))
    moved = fake.modify_pod("default", "p", pod("p", node="node-b"))
    assert api.list_pod_for_all_namespaces(field_selector=SELECTOR,
                                           _request_timeout=TIMEOUT).items == []
    resp = raw_watch(api, resource_version=rv, field_selector=SELECTOR, timeout_seconds=3)
    try:
        events = raw_events(resp)
        added, deleted = next(events), next(events)
    finally:
        close(resp)
    assert added["type"] == "ADDED"  # started matching: ADDED, not MODIFIED
    assert added["object"]["metadata"]["resourceVersion"] == bound["metadata"]["resourceVersion"]
    assert deleted["type"] == "DELETED"  # stopped matching: previous content, new RV
    assert deleted["object"]["spec"]["nodeName"] == NODE
    assert deleted["object"]["metadata"]["resourceVersion"] == moved["metadata"]["resourceVersion"]
    assert bound["metadata"]["uid"] == moved["metadata"]["uid"]


def test_compacted_resource_version_is_expired(fake: FakeKubeAPI, api: client.CoreV1Api) -> None:
    fake.add_pod(pod("a1"))
    old = fake.resource_version
    fake.modify_pod("default", "a1", pod("a1", phase="Failed"))
    fake.compact()

    resp = raw_watch(api, resource_version=old, field_selector=SELECTOR, timeout_seconds=3)
    try:
        assert resp.status == 200  # the apiserver reports 410 inside the stream
        events = list(raw_events(resp))
    finally:
        close(resp)
    assert len(events) == 1
    assert events[0]["type"] == "ERROR"
    assert events[0]["object"]["code"] == 410
    assert events[0]["object"]["reason"] == "Expired"
    assert events[0]["object"]["message"] == (
        f"too old resource version: {old} ({fake.resource_version})")

    with pytest.raises(ApiException) as expired:  # timeout_seconds given: no retry
        list(new_watch().stream(api.list_pod_for_all_namespaces, field_selector=SELECTOR,
                                  resource_version=old, timeout_seconds=3,
                                  _request_timeout=TIMEOUT))
    assert expired.value.status == 410
    before = fake.stats["watch"]
    with pytest.raises(ApiException) as retried:  # no timeout: it retries once, same RV
        list(new_watch().stream(api.list_pod_for_all_namespaces, field_selector=SELECTOR,
                                  resource_version=old, _request_timeout=TIMEOUT))
    assert retried.value.status == 410
    assert fake.stats["watch"] - before == 2

    # The current RV is still good after compaction.
    current = fake.resource_version
    resp = raw_watch(api, resource_version=current, field_selector=SELECTOR, timeout_seconds=3)
    try:
        fake.delete_pod("default", "a1")
        assert next(raw_events(resp))["type"] == "DELETED"
    finally:
        close(resp)


def test_compact_ends_open_watches_with_410(fake: FakeKubeAPI, api: client.CoreV1Api) -> None:
    fake.add_pod(pod("a1"))
    resp = raw_watch(api, resource_version=fake.resource_version, field_selector=SELECTOR,
                     timeout_seconds=5)
    try:
        wait_until(lambda: fake.stats["open_watches"] == 1)
        fake.compact()
        events = list(raw_events(resp))  # ends cleanly right after the ERROR
    finally:
        close(resp)
    assert [e["type"] for e in events] == ["ERROR"]
    assert events[0]["object"]["code"] == 410
    wait_until(lambda: fake.stats["open_watches"] == 0)


def test_automatic_compaction_keeps_the_newest_half(tmp_path: Path) -> None:
    with FakeKubeAPI(max_events=4) as server:
        for i in range(6):  # RVs 2..7; the 5th event overflows the log: RVs 2, 3 forgotten
            server.add_pod(pod(f"p{i}"))
        for api in make_api(server, tmp_path):
            resp = raw_watch(api, resource_version="2", timeout_seconds=2)
            try:
                expired = list(raw_events(resp))
            finally:
                close(resp)
            assert expired[0]["object"]["code"] == 410
            assert expired[0]["object"]["message"] == "too old resource version: 2 (3)"
            w = new_watch()
            names = []
            for event in w.stream(api.list_pod_for_all_namespaces, resource_version="3",
                                  timeout_seconds=2, _request_timeout=TIMEOUT):
                names.append(name_of(event))
                if len(names) == 4:
                    w.stop()
            assert names == ["p2", "p3", "p4", "p5"]


def test_outage_returns_status_errors(fake: FakeKubeAPI, api: client.CoreV1Api) -> None:
    fake.set_outage(True)
    with pytest.raises(ApiException) as listed:
        api.list_pod_for_all_namespaces(field_selector=SELECTOR, _request_timeout=TIMEOUT)
    assert listed.value.status == 500
    body = status_body(listed.value)
    assert (body["kind"], body["status"], body["reason"], body["code"]) == (
        "Status", "Failure", "InternalError", 500)
    with pytest.raises(ApiException) as watched:
        list(new_watch().stream(api.list_pod_for_all_namespaces, field_selector=SELECTOR,
                                  resource_version="1", timeout_seconds=1,
                                  _request_timeout=TIMEOUT))
    assert watched.value.status == 500

    fake.set_outage(True, status=503)
    with pytest.raises(ApiException) as node:
        api.read_node(NODE, _request_timeout=TIMEOUT)
    assert node.value.status == 503
    assert status_body(node.value)["reason"] == "ServiceUnavailable"
    assert fake.stats["outage_responses"] == 3

    # urllib3's default Retry(total=3) retries a 429 carrying Retry-After, invisibly.
    fake.set_outage(True, status=429, retry_after=0)
    with pytest.raises(ApiException) as throttled:
        api.list_pod_for_all_namespaces(_request_timeout=TIMEOUT)
    assert throttled.value.status == 429
    assert fake.stats["outage_responses"] == 3 + 4

    fake.set_outage(False)
    assert api.list_pod_for_all_namespaces(_request_timeout=TIMEOUT).items == []


@pytest.mark.parametrize("fault", ["outage", "drop"])
def test_faults_cut_open_watches_abruptly(fake: FakeKubeAPI, api: client.CoreV1Api,
                                          fault: str) -> None:
    fake.add_pod(pod("a1"))
    resp = raw_watch(api, resource_version="0", field_selector=SELECTOR, timeout_seconds=5)
    seen: list[dict[str, Any]] = []
    try:
        with pytest.raises(urllib3.exceptions.ProtocolError):
            for event in raw_events(resp):
                seen.append(event)
                if fault == "outage":
                    fake.set_outage(True)
                else:
                    fake.drop_watches()
    finally:
        close(resp)
    assert [e["type"] for e in seen] == ["ADDED"]  # no ERROR line, just a broken body
    wait_until(lambda: fake.stats["open_watches"] == 0)


def test_read_node_labels_and_allocatable(fake: FakeKubeAPI, api: client.CoreV1Api) -> None:
    node: Any = api.read_node(NODE, _request_timeout=TIMEOUT)
    assert node.metadata.labels == {"pool": "gpu", "zone": "z1"}
    assert node.status.allocatable["cpu"] == "15900m"
    assert "memory" in node.status.capacity
    before = node.metadata.resource_version

    fake.set_node_labels({"pool": "cpu"})
    node = api.read_node(NODE, _request_timeout=TIMEOUT)
    assert node.metadata.labels == {"pool": "cpu"}
    assert int(node.metadata.resource_version) > int(before)
    assert fake.stats["node"] == 2

    with pytest.raises(ApiException) as missing:
        api.read_node("node-z", _request_timeout=TIMEOUT)
    assert missing.value.status == 404
    body = status_body(missing.value)
    assert (body["kind"], body["reason"], body["code"]) == ("Status", "NotFound", 404)


def test_delay_holds_back_responses(fake: FakeKubeAPI, api: client.CoreV1Api) -> None:
    fake.set_delay(0.3)
    started = time.monotonic()
    api.list_pod_for_all_namespaces(_request_timeout=TIMEOUT)
    assert time.monotonic() - started >= 0.3
    fake.set_delay(0)
    started = time.monotonic()
    api.list_pod_for_all_namespaces(_request_timeout=TIMEOUT)
    assert time.monotonic() - started < 0.3


def test_stop_ends_open_watches(tmp_path: Path) -> None:
    server = FakeKubeAPI()
    server.start()
    for api in make_api(server, tmp_path):
        resp = raw_watch(api, resource_version="0")
        try:
            wait_until(lambda: server.stats["open_watches"] == 1)
            server.stop()
            assert list(raw_events(resp)) == []  # clean end of the chunked body
        finally:
            close(resp)
    with pytest.raises(RuntimeError):
        _ = server.url


def test_pod_mutation_errors(fake: FakeKubeAPI) -> None:
    stored = fake.add_pod(pod("a1"))
    assert stored["metadata"]["uid"] and stored["metadata"]["resourceVersion"] == "2"
    stored["metadata"]["name"] = "changed"  # a copy: the fake's state is unaffected
    assert [p["metadata"]["name"] for p in fake.pods()] == ["a1"]
    with pytest.raises(ValueError):
        fake.add_pod(pod("a1"))
    with pytest.raises(KeyError):
        fake.modify_pod("default", "nope", pod("nope"))
    with pytest.raises(KeyError):
        fake.delete_pod("default", "nope")
    assert fake.resource_version == "2"


async def test_usable_from_async_tests(fake: FakeKubeAPI) -> None:
    query = {"watch": "1", "fieldSelector": SELECTOR, "resourceVersion": fake.resource_version}
    async with aiohttp.ClientSession() as session, session.get(
            f"{fake.url}/api/v1/pods", params=query) as resp:
        assert resp.status == 200
        fake.add_pod(pod("a1"))  # synchronous mutation from the test's own loop
        async with asyncio.timeout(3):
            line = await resp.content.readline()
        event = json.loads(line)
        assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "a1")
        assert fake.stats["open_watches"] == 1


# -- DRA ResourceSlices (resource.k8s.io/v1) -------------------------------------------------

NVIDIA = "gpu.nvidia.com"
NODE_SLICES = f"spec.nodeName={NODE}"
SLICE_KIND = {"kind": "ResourceSlice", "apiVersion": "resource.k8s.io/v1"}


def uuid_of(minor: int) -> str:
    return f"GPU-{minor:08d}-1111-2222-3333-444455556666"


def nvidia_slice(node: str = NODE, *, gpus: int = 2, generation: int = 1) -> dict[str, Any]:
    return gpu_slice(node, name=f"{node}-{NVIDIA}-x7k2p", generation=generation,
                     devices=[gpu_device(i, uuid_of(i)) for i in range(gpus)])


def other_driver_slice(node: str = NODE) -> dict[str, Any]:
    return {"metadata": {"name": f"{node}-dra.example.com-q9z8w"},
            "spec": {"driver": "dra.example.com", "nodeName": node,
                     "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
                     "devices": [{"name": "nic-0"}]}}


def make_resource_api(server: FakeKubeAPI, tmp_path: Path) -> Iterator[client.ResourceV1Api]:
    cfg = client.Configuration()
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig), client_configuration=cfg)
    with client.ApiClient(cfg) as api_client:
        yield client.ResourceV1Api(api_client)


@pytest.fixture
def rapi(fake: FakeKubeAPI, tmp_path: Path) -> Iterator[client.ResourceV1Api]:
    yield from make_resource_api(fake, tmp_path)


def raw_slice_watch(rapi: client.ResourceV1Api, **kwargs: Any) -> urllib3.BaseHTTPResponse:
    return cast(urllib3.BaseHTTPResponse, rapi.list_resource_slice(
        watch=True, _preload_content=False, _request_timeout=TIMEOUT, **kwargs))


def slice_names(listed: Any) -> list[str]:
    return [s.metadata.name for s in listed.items]


def test_nvidia_slice_helpers_build_the_drivers_objects() -> None:
    mig = mig_device(2, "3g.40gb", 9, 0, "MIG-aaaa", uuid_of(2))
    assert mig["name"] == "gpu-2-mig-3g40gb-9-0"
    assert {k: mig["attributes"][k] for k in ("type", "uuid", "parentUUID", "profile")} == {
        "type": {"string": "mig"}, "uuid": {"string": "MIG-aaaa"},
        "parentUUID": {"string": uuid_of(2)}, "profile": {"string": "3g.40gb"}}
    assert mig["capacity"]["multiprocessors"] == {"value": "60"}
    assert "memory" in mig["capacity"]
    gpu = gpu_device(3, uuid_of(3))
    assert gpu["name"] == "gpu-3"
    assert gpu["attributes"]["type"] == {"string": "gpu"}
    assert gpu["attributes"]["uuid"] == {"string": uuid_of(3)}
    assert gpu["attributes"]["productName"] == {"string": "NVIDIA H100 80GB HBM3"}
    assert gpu["attributes"]["architecture"] == {"string": "Hopper"}
    assert gpu["attributes"]["brand"] == {"string": "Nvidia"}
    assert "string" in gpu["attributes"]["resource.kubernetes.io/pciBusID"]
    assert gpu["capacity"] == {"memory": {"value": "80Gi"}}
    built = gpu_slice(NODE, name="s", generation=3, devices=[gpu])
    assert {k: built[k] for k in ("kind", "apiVersion")} == SLICE_KIND
    assert built["spec"]["driver"] == NVIDIA and built["spec"]["nodeName"] == NODE
    assert built["spec"]["pool"] == {"name": NODE, "generation": 3, "resourceSliceCount": 1}
    assert gpu_slice(NODE, name="s", pool="p", devices=[])["spec"]["pool"]["name"] == "p"


def test_slices_list_filters_by_node_and_driver(
        fake: FakeKubeAPI, rapi: client.ResourceV1Api, api: client.CoreV1Api) -> None:
    fake.add_slice(nvidia_slice())
    fake.add_slice(nvidia_slice("node-b"))
    fake.add_slice(other_driver_slice())
    fake.add_pod(pod("a1"))

    def names(selector: str | None) -> list[str]:
        listed: Any = rapi.list_resource_slice(field_selector=selector, _request_timeout=TIMEOUT)
        assert listed.metadata.resource_version == fake.resource_version == "5"
        return slice_names(listed)

    assert names(None) == [f"{NODE}-dra.example.com-q9z8w", f"{NODE}-{NVIDIA}-x7k2p",
                           f"node-b-{NVIDIA}-x7k2p"]  # name order
    assert names(NODE_SLICES) == [f"{NODE}-dra.example.com-q9z8w", f"{NODE}-{NVIDIA}-x7k2p"]
    assert names(f"spec.driver=={NVIDIA}") == [f"{NODE}-{NVIDIA}-x7k2p", f"node-b-{NVIDIA}-x7k2p"]
    assert names(f"{NODE_SLICES},spec.driver={NVIDIA}") == [f"{NODE}-{NVIDIA}-x7k2p"]
    assert names(f"spec.driver={NVIDIA},spec.nodeName=node-z") == []

    listed: Any = rapi.list_resource_slice(field_selector=f"spec.driver={NVIDIA}",
                                           _request_timeout=TIMEOUT)
    device = listed.items[0].spec.devices[1]  # deserialized by the client's v1 models
    assert device.name == "gpu-1" and device.attributes["uuid"].string == uuid_of(1)
    assert device.capacity["memory"].value == "80Gi"
    assert listed.items[0].spec.pool.resource_slice_count == 1
    assert listed.items[0].metadata.generation == 1 and listed.items[0].metadata.uid
    assert api.list_pod_for_all_namespaces(_request_timeout=TIMEOUT).items[0].kind is None

    for bad in ("spec.pool.name=x", "status.phase=Running", f"spec.nodeName!={NODE}",
                f"{NODE_SLICES},metadata.namespace=x"):
        with pytest.raises(ApiException) as refused:
            rapi.list_resource_slice(field_selector=bad, _request_timeout=TIMEOUT)
        assert refused.value.status == 400
        body = status_body(refused.value)
        assert body["reason"] == "BadRequest"
        assert body["message"].startswith("field label not supported for resource.k8s.io/v1")
    # Raw wire form: list and item kinds as the apiserver writes them.
    with urllib3.PoolManager() as http:
        raw = json.loads(http.request("GET", fake.url + SLICE_PATH, timeout=5.0).data)
    assert (raw["kind"], raw["apiVersion"]) == ("ResourceSliceList", "resource.k8s.io/v1")
    assert "kind" not in raw["items"][0]
    assert raw["items"][1]["spec"]["devices"][0]["attributes"]["type"] == {"string": "gpu"}


def test_slice_and_pod_watches_see_only_their_own_resource(
        fake: FakeKubeAPI, rapi: client.ResourceV1Api, api: client.CoreV1Api) -> None:
    fake.add_slice(nvidia_slice())
    listed: Any = rapi.list_resource_slice(field_selector=NODE_SLICES, _request_timeout=TIMEOUT)
    rv = listed.metadata.resource_version
    moved = fake.add_slice(other_driver_slice("node-b"))  # after the list: replayed
    fake.add_pod(pod("a1"))
    fake.modify_slice(moved["metadata"]["name"], other_driver_slice(NODE))  # moves onto NODE
    fake.add_pod(pod("a2"))

    # The replayed part, raw: a pod watch from the same RV sees only pods, and vice versa.
    resp = raw_watch(api, resource_version=rv, field_selector=SELECTOR, timeout_seconds=1)
    try:
        pod_events = list(raw_events(resp))
    finally:
        close(resp)
    assert [(e["type"], e["object"]["kind"], e["object"]["metadata"]["name"])
            for e in pod_events] == [("ADDED", "Pod", "a1"), ("ADDED", "Pod", "a2")]

    w = new_watch()
    seen: list[tuple[str, str, str, int]] = []
    for event in w.stream(rapi.list_resource_slice, field_selector=NODE_SLICES,
                          resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=5,
                          _request_timeout=TIMEOUT):
        raw = event["raw_object"]
        if event["type"] != "BOOKMARK":
            assert {k: raw[k] for k in ("kind", "apiVersion")} == SLICE_KIND
        seen.append((event["type"], name_of(event), raw["metadata"]["resourceVersion"],
                     raw["metadata"].get("generation", 0)))
        mine = f"{NODE}-{NVIDIA}-x7k2p"
        if event["type"] == "ADDED":  # live mutations, made while the stream is open
            fake.add_pod(pod("a3"))
            grown = nvidia_slice(gpus=3)
            grown["spec"]["devices"].append(mig_device(2, "1g.10gb", 19, 6, "MIG-b", uuid_of(2)))
            fake.modify_slice(mine, grown)
        elif event["type"] == "MODIFIED":
            assert event["object"].spec.devices[3].name == "gpu-2-mig-1g10gb-19-6"
            fake.delete_slice(mine)
            fake.delete_pod("default", "a3")
        elif event["type"] == "BOOKMARK" and seen[-2][0] == "DELETED":
            w.stop()

    changes = [s[:2] for s in seen if s[0] != "BOOKMARK"]
    assert changes == [("ADDED", moved["metadata"]["name"]),  # moved onto the node
                       ("MODIFIED", f"{NODE}-{NVIDIA}-x7k2p"),
                       ("DELETED", f"{NODE}-{NVIDIA}-x7k2p")]
    assert [s[3] for s in seen if s[0] == "MODIFIED"] == [2]  # spec changed: generation 2
    versions = [int(s[2]) for s in seen if s[0] != "BOOKMARK"]
    assert versions == sorted(versions) and versions[0] > int(rv)
    # The bookmark goes past the pod deletion that followed the slice's.
    assert seen[-1][2] == fake.resource_version == w.resource_version
    assert fake.stats["resourceslices.watch"] == 1 and fake.stats["watch"] == 1
    wait_until(lambda: fake.stats["open_watches"] == 0)


def test_slice_watch_bookmarks_advance_past_pod_changes(
        fake: FakeKubeAPI, rapi: client.ResourceV1Api) -> None:
    fake.add_slice(nvidia_slice())
    rv = fake.resource_version
    resp = raw_slice_watch(rapi, resource_version=rv, allow_watch_bookmarks=True,
                           field_selector=NODE_SLICES, timeout_seconds=1)
    try:
        assert resp.status == 200
        fake.add_pod(pod("a1"))  # a pod of this node: no slice event, but the RV moves on
        fake.add_slice(nvidia_slice("node-b"))  # another node's slice: likewise
        events = list(raw_events(resp))
    finally:
        close(resp)
    assert {e["type"] for e in events} == {"BOOKMARK"}
    assert len(events) >= 3
    assert events[-1]["object"] == {**SLICE_KIND,
                                    "metadata": {"resourceVersion": fake.resource_version}}
    assert int(fake.resource_version) == int(rv) + 2
    assert fake.requests[-1] == ("GET", SLICE_PATH, {
        "allowWatchBookmarks": "true", "fieldSelector": NODE_SLICES, "resourceVersion": rv,
        "timeoutSeconds": "1", "watch": "true"})


def test_slice_watch_from_zero_and_410_after_compaction(
        fake: FakeKubeAPI, rapi: client.ResourceV1Api) -> None:
    fake.add_slice(nvidia_slice())
    fake.add_slice(nvidia_slice("node-b"))
    resp = raw_slice_watch(rapi, resource_version="0", field_selector=NODE_SLICES,
                           timeout_seconds=5)
    try:
        events = raw_events(resp)
        first = next(events)
        assert (first["type"], first["object"]["kind"]) == ("ADDED", "ResourceSlice")
        assert first["object"]["spec"]["nodeName"] == NODE
        wait_until(lambda: fake.stats["open_watches"] == 1)
        old = fake.resource_version
        fake.modify_slice(f"{NODE}-{NVIDIA}-x7k2p", nvidia_slice(gpus=1))
        assert next(events)["type"] == "MODIFIED"
        fake.compact()  # the open slice watch ends with the in-stream 410
        rest = list(events)
    finally:
        close(resp)
    assert [(e["type"], e["object"]["code"]) for e in rest] == [("ERROR", 410)]

    resp = raw_slice_watch(rapi, resource_version=old, timeout_seconds=3)
    try:
        assert resp.status == 200
        expired = list(raw_events(resp))
    finally:
        close(resp)
    assert [e["type"] for e in expired] == ["ERROR"]
    assert expired[0]["object"]["reason"] == "Expired"
    assert expired[0]["object"]["message"] == (
        f"too old resource version: {old} ({fake.resource_version})")
    with pytest.raises(ApiException) as gone:
        list(new_watch().stream(rapi.list_resource_slice, resource_version=old,
                                  timeout_seconds=3, _request_timeout=TIMEOUT))
    assert gone.value.status == 410
    wait_until(lambda: fake.stats["open_watches"] == 0)


def test_faults_cut_slice_watches(fake: FakeKubeAPI, rapi: client.ResourceV1Api) -> None:
    fake.add_slice(nvidia_slice())
    resp = raw_slice_watch(rapi, resource_version="0", timeout_seconds=5)
    seen: list[dict[str, Any]] = []
    try:
        with pytest.raises(urllib3.exceptions.ProtocolError):
            for event in raw_events(resp):
                seen.append(event)
                fake.drop_watches()
    finally:
        close(resp)
    assert [e["type"] for e in seen] == ["ADDED"]
    fake.set_outage(True, status=503)
    with pytest.raises(ApiException) as unavailable:
        rapi.list_resource_slice(_request_timeout=TIMEOUT)
    assert unavailable.value.status == 503
    assert fake.stats["outage_responses"] == 1
    wait_until(lambda: fake.stats["open_watches"] == 0)


def test_stats_count_each_resource(fake: FakeKubeAPI, rapi: client.ResourceV1Api,
                                   api: client.CoreV1Api) -> None:
    rapi.list_resource_slice(_request_timeout=TIMEOUT)
    rapi.list_resource_slice(field_selector=NODE_SLICES, _request_timeout=TIMEOUT)
    list(new_watch().stream(rapi.list_resource_slice, resource_version="0", timeout_seconds=1,
                            _request_timeout=TIMEOUT))
    api.list_pod_for_all_namespaces(_request_timeout=TIMEOUT)
    api.read_node(NODE, _request_timeout=TIMEOUT)
    assert fake.stats == {"list": 1, "watch": 0, "node": 1, "open_watches": 0,
                          "outage_responses": 0, "resourceslices.list": 2,
                          "resourceslices.watch": 1, "continue": 0,
                          "resourceslices.continue": 0}


def test_a_list_is_paged_like_the_apiservers(fake: FakeKubeAPI,
                                             api: client.CoreV1Api) -> None:
    for i in range(7):
        fake.add_pod({"metadata": {"name": f"p{i}"}, "spec": {"nodeName": NODE}})
    first = api.list_pod_for_all_namespaces(limit=3, _request_timeout=TIMEOUT)
    names = [p.metadata.name for p in first.items]
    assert first.metadata.remaining_item_count == 4 and first.metadata._continue
    fake.add_pod({"metadata": {"name": "late"}, "spec": {"nodeName": NODE}})  # not in this list
    token = first.metadata._continue
    while token:
        page = api.list_pod_for_all_namespaces(limit=3, _continue=token,
                                               _request_timeout=TIMEOUT)
        assert page.metadata.resource_version == first.metadata.resource_version
        names += [p.metadata.name for p in page.items]
        token = page.metadata._continue
    assert names == [f"p{i}" for i in range(7)]
    assert (fake.stats["list"], fake.stats["continue"]) == (1, 2)
    expired = api.list_pod_for_all_namespaces(limit=3, _request_timeout=TIMEOUT)
    fake.delete_pod("default", "late")
    fake.compact()  # the list's revision is gone
    with pytest.raises(client.ApiException) as gone:
        api.list_pod_for_all_namespaces(limit=3, _continue=expired.metadata._continue,
                                        _request_timeout=TIMEOUT)
    assert gone.value.status == 410 and "too old" in str(gone.value.body)


def test_slice_mutations(fake: FakeKubeAPI) -> None:
    given = {**nvidia_slice(), "metadata": {"name": "s1", "namespace": "ignored"}}
    stored = fake.add_slice(given)
    meta = stored["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["resourceVersion"] == "2"
    assert meta["generation"] == 1 and "namespace" not in meta  # cluster-scoped
    assert "kind" not in stored and given["metadata"]["namespace"] == "ignored"
    same = fake.modify_slice("s1", {"metadata": {"labels": {"x": "y"}}, "spec": stored["spec"]})
    assert same["metadata"]["generation"] == 1  # spec unchanged
    assert same["metadata"]["uid"] == meta["uid"]
    changed = fake.modify_slice("s1", nvidia_slice(gpus=1))
    assert changed["metadata"]["generation"] == 2 and changed["metadata"]["name"] == "s1"
    assert [s["metadata"]["name"] for s in fake.slices()] == ["s1"]
    with pytest.raises(ValueError, match="already exists"):
        fake.add_slice({**nvidia_slice(), "metadata": {"name": "s1"}})
    with pytest.raises(ValueError):
        fake.add_slice({"spec": {}})
    with pytest.raises(KeyError, match=r"resourceslices\.resource\.k8s\.io"):
        fake.modify_slice("nope", nvidia_slice())
    with pytest.raises(KeyError):
        fake.delete_slice("nope")
    fake.delete_slice("s1")
    assert fake.slices() == [] and fake.pods() == []
    assert fake.resource_version == "5"


def test_without_dra_the_group_is_not_found(tmp_path: Path) -> None:
    with FakeKubeAPI(serve_dra=False) as server:
        for rapi in make_resource_api(server, tmp_path):
            with pytest.raises(ApiException) as listed:
                rapi.list_resource_slice(_request_timeout=TIMEOUT)
            assert listed.value.status == 404
            body = status_body(listed.value)
            assert (body["kind"], body["reason"], body["code"]) == ("Status", "NotFound", 404)
            assert body["message"] == "the server could not find the requested resource"
            with pytest.raises(ApiException) as watched:
                list(new_watch().stream(rapi.list_resource_slice, resource_version="0",
                                          timeout_seconds=1, _request_timeout=TIMEOUT))
            assert watched.value.status == 404
        for api in make_api(server, tmp_path):
            assert api.list_pod_for_all_namespaces(_request_timeout=TIMEOUT).items == []
        assert server.stats["resourceslices.list"] == 1
        assert server.stats["resourceslices.watch"] == 1
        assert server.stats["list"] == 1
