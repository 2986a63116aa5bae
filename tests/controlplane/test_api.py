"""The admin HTTP API on a real listener: roles, every refusal, the OpenAPI document."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fader.snapshot.loader import check_document

from sidecar.config import Address
from sidecar.controlplane.apiclient import ApiClient, ApiError, flag_path
from sidecar.controlplane.apitokens import RoleTokens
from sidecar.controlplane.main import ControlPlane, http_router
from sidecar.controlplane.release import ReleaseControl, ReleaseSettings
from sidecar.controlplane.web import PUBLIC, WebServer
from tests.controlplane.flagd_docs import flagd_file, flagd_flag
from tests.fader.rules.builders import condition, flag, snapshot_doc

TOKENS = "editor ed-token alice\nviewer view-token\n# a comment\neditor nameless\n"


class Api:
    def __init__(self, tmp: Path) -> None:
        (tmp / "tokens").write_text(TOKENS)
        self.release = ReleaseControl(ReleaseSettings(data_dir=tmp / "data"))
        self.plane = ControlPlane(self.release.offers, Address("127.0.0.1", 0))
        self.release.start()
        self.plane.start()
        self.router = http_router(self.plane, self.release)
        self.web = WebServer(Address("127.0.0.1", 0), self.router, RoleTokens(tmp / "tokens"))
        self.web.start()
        self.url = f"http://127.0.0.1:{self.web.address.port}"

    def client(self, token: str | None = "ed-token") -> ApiClient:
        return ApiClient(self.url, token)

    def close(self) -> None:
        self.web.stop()
        self.plane.stop(0)
        self.release.stop()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    running = Api(tmp_path)
    yield running
    running.close()


def released() -> dict[str, Any]:
    return snapshot_doc(
        flag("checkout", condition(partitions={"on": 0, "off": 100}, label="default rule")),
        flag("banner"),
    )


def refusal(call: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call()
    return caught.value


def test_apply_dial_kill_revive_history_rollback(api: Api) -> None:
    editor = api.client()
    written = editor.post("/api/v1/apply", {"document": released(), "reason": "first"})
    assert written["version"] == 1 and written["changed"]
    dial = editor.post(flag_path("checkout", "/dial"), {"percent": 5, "reason": "canary"})
    assert dial["version"] == 2 and dial["changes"][0]["fields"][0]["after"] == 5
    flag_view = editor.get(flag_path("checkout"))
    assert flag_view["dial"] == {"treatment": "on", "percent": 5}
    assert flag_view["author"] == "alice"  # the token's name, whatever the body says
    kill = editor.post(flag_path("checkout", "/kill"), {"reason": "errors", "author": "mallory"})
    assert kill["version"] == 3 and editor.get(flag_path("checkout"))["state"] == "killed"
    editor.post(flag_path("checkout", "/revive"), {})
    listing = editor.get("/api/v1/flags")
    assert listing["version"] == 4
    assert [(f["name"], f["state"]) for f in listing["flags"]] == [
        ("banner", "active"),
        ("checkout", "active"),
    ]
    history = editor.get(flag_path("checkout", "/history"))["versions"]
    assert [(h["version"], h["action"], h["author"]) for h in history] == [
        (4, "revive", "alice"), (3, "kill", "alice"), (2, "dial", "alice"), (1, "apply", "alice"),
    ]  # fmt: skip
    back = editor.post(flag_path("checkout", "/rollback"), {"to_version": 1})
    assert back["version"] == 5
    assert editor.get(flag_path("checkout"))["dial"] == {"treatment": "on", "percent": 0}
    assert editor.get("/api/v1/snapshot")["version"] == 5
    assert api.plane.offers.current is not None and api.plane.offers.current.version == 5


def test_dry_run_and_replace(api: Api) -> None:
    editor = api.client()
    editor.post("/api/v1/apply", {"document": released()})
    changed = snapshot_doc(flag("checkout", killed=True))
    preview = editor.post("/api/v1/apply", {"document": changed, "replace": True, "dry_run": True})
    assert preview["dry_run"] and {(c["name"], c["op"]) for c in preview["changes"]} == {
        ("banner", "removed"),
        ("checkout", "changed"),
    }
    assert editor.get("/api/v1/flags")["version"] == 1  # nothing written


def test_invalid_flags_get_422_with_every_error_and_the_store_is_unchanged(api: Api) -> None:
    editor = api.client()
    editor.post("/api/v1/apply", {"document": released()})
    before = editor.get("/api/v1/snapshot")
    bad = released()
    bad["flags"][0]["algo"] = 3
    bad["flags"][1]["seed"] = "x"
    error = refusal(lambda: editor.post("/api/v1/apply", {"document": bad}))
    assert error.status == 422
    assert [e["text"] for e in error.body["errors"]] == [str(i) for i in check_document(bad).errors]
    assert {(e["flag"], e["path"]) for e in error.body["errors"]} == {
        ("checkout", "$.flags[0].algo"),
        ("banner", "$.flags[1].seed"),
    }
    assert editor.get("/api/v1/snapshot") == before
    put = refusal(lambda: editor.put(flag_path("banner"), {"definition": flag("other")}))
    assert put.status == 422 and put.body["errors"][0]["path"] == "$.name"
    no_rule = flag("plain", condition(kind="WHITELIST"))
    editor.put(flag_path("plain"), {"definition": no_rule})
    dial = refusal(lambda: editor.post(flag_path("plain", "/dial"), {"percent": 5}))
    assert dial.status == 422 and "no ROLLOUT condition" in dial.body["errors"][0]["text"]


def test_unknown_flag_404_bad_request_400(api: Api) -> None:
    editor = api.client()
    editor.post("/api/v1/apply", {"document": released()})
    for call in (
        lambda: editor.get(flag_path("nope")),
        lambda: editor.post(flag_path("nope", "/dial"), {"percent": 5}),
        lambda: editor.post(flag_path("nope", "/kill"), {"reason": "r"}),
        lambda: editor.get(flag_path("nope", "/history")),
        lambda: editor.post(flag_path("checkout", "/rollback"), {"to_version": 9}),
        lambda: editor.get(flag_path("checkout", "/rollout")),
        lambda: editor.get("/api/v1/no-such-thing"),
    ):
        assert refusal(call).status == 404
    for path, body in (
        (flag_path("checkout", "/dial"), {"percent": 101}),
        (flag_path("checkout", "/dial"), {"percent": "5"}),
        (flag_path("checkout", "/kill"), {}),  # a kill needs a reason
        (flag_path("checkout", "/rollout"), {"steps": [50, 10], "hold_seconds": 1}),
        ("/api/v1/apply", {"nothing": True}),
    ):
        assert refusal(lambda p=path, b=body: editor.post(p, b)).status == 400, path
    request = urllib.request.Request(
        api.url + "/api/v1/apply",
        data=b"{not json",
        method="POST",
        headers={"Authorization": "Bearer ed-token"},
    )
    with pytest.raises(urllib.error.HTTPError) as raw:
        urllib.request.urlopen(request, timeout=5)
    assert raw.value.code == 400 and "not JSON" in json.loads(raw.value.read())["error"]
    lone = b'{"definition": {"name": "f\\ud800"}}'  # valid JSON; not text for the store
    request = urllib.request.Request(
        api.url + "/api/v1/flags/f", data=lone, method="PUT", headers=request.headers
    )
    with pytest.raises(urllib.error.HTTPError) as raw:
        urllib.request.urlopen(request, timeout=5)
    assert raw.value.code == 400
    assert "lone UTF-16 surrogate" in json.loads(raw.value.read())["error"]


def test_tokens_401_and_roles_403(api: Api) -> None:
    api.client().post("/api/v1/apply", {"document": released()})
    for token in (None, "wrong"):
        error = refusal(lambda t=token: api.client(t).get("/api/v1/flags"))
        assert error.status == 401
    viewer = api.client("view-token")
    assert viewer.get("/api/v1/flags")["version"] == 1
    error = refusal(lambda: viewer.post(flag_path("checkout", "/kill"), {"reason": "r"}))
    assert error.status == 403 and "editor" in error.message
    assert viewer.get("/api/v1/flags")["version"] == 1
    nameless = api.client("nameless")
    nameless.post(flag_path("checkout", "/dial"), {"percent": 1, "author": "bob"})
    assert nameless.get(flag_path("checkout"))["author"] == "bob"
    # public: health, status, the API document
    public = api.client(None)
    assert public.get("/status")["release"]["version"] == 2
    assert public.get("/openapi.json")["openapi"].startswith("3.")


def test_two_writers_on_one_base_one_409_and_one_change(api: Api) -> None:
    editor = api.client()
    editor.post("/api/v1/apply", {"document": released()})
    results: list[int] = []
    barrier = threading.Barrier(2)

    def write(percent: int) -> None:
        barrier.wait()
        try:
            editor.post(flag_path("checkout", "/dial"), {"percent": percent, "base_version": 1})
            results.append(200)
        except ApiError as exc:
            results.append(exc.status)
            assert exc.body["current_version"] == 2 and exc.body["base_version"] == 1

    threads = [threading.Thread(target=write, args=(p,)) for p in (10, 20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [200, 409]
    history = editor.get(flag_path("checkout", "/history"))["versions"]
    assert [h["action"] for h in history] == ["dial", "apply"]


def test_rollout_routes(api: Api) -> None:
    editor = api.client()
    editor.post("/api/v1/apply", {"document": released()})
    plan = editor.post(flag_path("checkout", "/rollout"), {"steps": [1, 50], "hold_seconds": 3600})
    assert plan["status"] == "running" and plan["percent"] == 1
    assert plan["written"]["version"] == 2
    busy = refusal(lambda: editor.post(flag_path("checkout", "/dial"), {"percent": 30}))
    assert busy.status == 409 and "rollout" in busy.message
    again = refusal(
        lambda: editor.post(flag_path("checkout", "/rollout"), {"steps": [1], "hold_seconds": 1})
    )
    assert again.status == 409
    assert editor.post(flag_path("checkout", "/rollout/pause"), {})["status"] == "paused"
    assert refusal(lambda: editor.post(flag_path("checkout", "/rollout/pause"), {})).status == 409
    assert editor.post(flag_path("checkout", "/rollout/resume"), {})["status"] == "running"
    aborted = editor.post(flag_path("checkout", "/rollout/abort"), {"reason": "enough"})
    assert aborted["status"] == "aborted" and aborted["percent"] == 1
    assert editor.get(flag_path("checkout"))["dial"]["percent"] == 0
    assert [p["flag"] for p in editor.get("/api/v1/rollouts")["rollouts"]] == ["checkout"]


def test_the_openapi_document_describes_every_route(api: Api) -> None:
    document = api.client(None).get("/openapi.json")
    assert document["openapi"] == "3.0.3"
    operations = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    assert operations == {(r.method, r.pattern) for r in api.router.routes}
    dial = document["paths"]["/api/v1/flags/{flag}/dial"]["post"]
    assert dial["security"] == [{"bearer": []}]
    assert {"401", "403", "404", "409", "422"} <= set(dial["responses"])
    assert dial["requestBody"]["content"]["application/json"]["schema"]["required"] == ["percent"]
    assert all(
        "security" not in item[m]
        for r in api.router.routes
        if r.role == PUBLIC
        for item in [document["paths"][r.pattern]]
        for m in item
        if m.upper() == r.method
    )


def test_other_modules_register_routes_on_the_same_listener(api: Api) -> None:
    from sidecar.controlplane.web import Response

    api.router.add(
        "GET", "/api/v1/releases/{flag}", lambda r: Response.json({"flag": r.params["flag"]}),
        role="viewer", summary="a release page",
    )  # fmt: skip
    assert api.client().get("/api/v1/releases/new%20checkout") == {"flag": "new checkout"}
    assert "/api/v1/releases/{flag}" in api.client(None).get("/openapi.json")["paths"]
    with pytest.raises(ValueError, match="twice"):
        api.router.add("GET", "/api/v1/releases/{flag}", lambda r: Response.json({}),
                       role="viewer", summary="again")  # fmt: skip


def test_flagd_flags_through_the_api(api: Api) -> None:
    editor = api.client()
    editor.post("/api/v1/apply", {"document": released()})
    applied = editor.post(
        "/api/v1/apply", {"documents": [{"source": "shop.flagd.json", "document": flagd_file()}]}
    )
    assert applied["version"] == 2
    assert {(c["kind"], c["name"]) for c in applied["changes"]} == {
        ("flagd", "new-ui"), ("flagd", "color"), ("evaluator", "is-pro"), ("flagd-set", "metadata"),
    }  # fmt: skip
    listing = {f["name"]: f for f in editor.get("/api/v1/flags")["flags"]}
    assert sorted(listing) == ["banner", "checkout", "color", "new-ui"]
    assert (listing["new-ui"]["dialect"], listing["checkout"]["dialect"]) == ("flagd", "split")
    assert listing["new-ui"]["state"] == "active" and listing["new-ui"]["version"] == 2
    one = editor.get(flag_path("new-ui"))
    assert (
        one["definition"] == flagd_file()["flags"]["new-ui"] and one["default_treatment"] == "off"
    )
    assert one["flagd"] == {
        "$evaluators": {"is-pro": {"==": [{"var": "plan"}, "pro"]}},
        "metadata": {"flagSetId": "shop"},
    }
    kill = editor.post(flag_path("new-ui", "/kill"), {"reason": "errors"})
    assert kill["changes"][0]["fields"] == [
        {"path": "$.state", "before": "ENABLED", "after": "DISABLED"}
    ]
    assert editor.get(flag_path("new-ui"))["state"] == "killed"
    assert editor.get("/api/v1/snapshot")["flagd"]["flags"]["new-ui"]["state"] == "DISABLED"
    editor.post(flag_path("new-ui", "/revive"), {})
    put = editor.put(flag_path("dark-mode"), {"definition": flagd_flag("on"), "reason": "new"})
    assert put["changes"][0]["op"] == "added"
    history = editor.get(flag_path("new-ui", "/history"))["versions"]
    assert [(h["version"], h["action"]) for h in history] == [
        (4, "revive"), (3, "kill"), (2, "apply"),
    ]  # fmt: skip
    back = editor.post(flag_path("new-ui", "/rollback"), {"to_version": 3})
    assert back["version"] == 6 and editor.get(flag_path("new-ui"))["state"] == "killed"
    deleted = editor.delete(flag_path("color"), {"reason": "unused"})
    assert deleted["changes"] == [{"kind": "flagd", "name": "color", "op": "removed", "fields": []}]
    assert refusal(lambda: editor.get(flag_path("color"))).status == 404
    assert editor.get(flag_path("color", "/history"))["versions"][0]["action"] == "delete"


def test_split_only_operations_refuse_a_flagd_flag_with_422(api: Api) -> None:
    editor = api.client()
    editor.post("/api/v1/apply", {"document": flagd_file()})
    dial = refusal(lambda: editor.post(flag_path("new-ui", "/dial"), {"percent": 5}))
    assert dial.status == 422
    assert dial.message.startswith("'new-ui' is a flagd-dialect flag: the dimmer works on")
    plan = {"steps": [1, 50], "hold_seconds": 60}
    rollout = refusal(lambda: editor.post(flag_path("new-ui", "/rollout"), plan))
    assert rollout.status == 422 and "a rollout plan works on a Split flag" in rollout.message
    assert editor.get("/api/v1/versions")["version"] == 1  # nothing written


def test_an_invalid_flagd_flag_gets_422_with_the_sidecars_errors(api: Api) -> None:
    editor = api.client()
    editor.post("/api/v1/apply", {"document": released()})
    editor.post("/api/v1/apply", {"document": flagd_file()})
    before = editor.get("/api/v1/snapshot")
    bad = flagd_file(broken=flagd_flag(default="maybe"), checkout=flagd_flag())
    error = refusal(lambda: editor.post("/api/v1/apply", {"document": bad}))
    assert error.status == 422
    expected = check_document({**released(), "flagd": bad}).errors
    assert sorted(e["text"] for e in error.body["errors"]) == sorted(
        str(i).replace("$.flagd.", "$.") for i in expected
    )
    put = refusal(lambda: editor.put(flag_path("new-ui"), {"definition": flagd_flag("maybe")}))
    assert put.status == 422
    assert put.body["errors"][0]["text"] == (
        "flag 'new-ui' at $.defaultVariant: 'maybe' is not one of the variants"
    )
    assert editor.get("/api/v1/snapshot") == before
