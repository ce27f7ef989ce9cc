"""The planner process's shell on a real Redis: one acting planner, the published state, the
API's load counters, and the `kubernetes` scaler against a local API server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
import yaml
from aiohttp import web

from services.alerts.sender import AlertSender
from services.capacity.kubernetes import ClusterAccess, KubernetesError, KubernetesScaler
from services.capacity.planner import CapacityPlanner
from services.capacity.policy import READY, STARTING, Role
from services.capacity.scalers import Scaler, SimulatedScaler
from services.capacity.state import (
    LoadReporter,
    PublishedState,
    keys,
    read_load,
    read_state,
    read_timeline,
)
from services.config import AlertSettings, ScalerSettings, Settings
from services.platform.redis_topology import async_redis
from services.routing.turn import TurnRecord
from tests.alerts.receiver import Receiver
from tests.helpers import FakeClock


@pytest.fixture
def redis_url(topology_redis_url: str) -> str:
    """Shared state: every test here runs on standalone, Sentinel and Cluster Redis."""
    return topology_redis_url


def capacity_settings(tmp_path: Path, redis_url: str, **capacity: Any) -> Settings:
    return Settings.model_validate({
        "redis": {"url": redis_url},
        "log": {"dir": str(tmp_path / "logs")},
        "models": {"large-model": {"deployments": []}, "small-model": {"deployments": []}},
        "chains": {"default": ["large-model", "small-model"],
                   "low-cost": ["small-model", "large-model"]},
        "sessions": {"default_selector": "default"},
        "capacity": {
            "enabled": True, "interval_seconds": 10, "log_threshold_bytes": 1000,
            "scale_up_ticks": 2, "scale_down_ticks": 4, "quiet_window_seconds": 30,
            "drain_seconds": 0,  # shutdown's drain would otherwise wait for real
            "large": {"model": "large-model", "session_selector": "default",
                      "scaler": {"kind": "simulated", "startup_seconds": 30}},
            "small": {"model": "small-model", "session_selector": "low-cost",
                      "scaler": {"kind": "simulated", "startup_seconds": 10}},
            **capacity,
        },
    })  # fmt: skip


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = async_redis(redis_url, timeout=5)
    yield client
    await client.aclose()


def planner_for(settings: Settings, redis: aioredis.Redis, clock: FakeClock) -> CapacityPlanner:
    scalers: dict[Role, Scaler] = {
        role: SimulatedScaler(getattr(settings.capacity, role).model,
                              getattr(settings.capacity, role).scaler, clock)
        for role in ("large", "small")
    }  # fmt: skip
    return CapacityPlanner(settings, redis, scalers, clock=clock)


def grow_log(settings: Settings, count: int) -> None:
    log = Path(settings.log.dir) / "api_server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as f:
        f.write(b"x" * count)


async def test_two_planners_only_one_acts_and_the_other_takes_over_when_it_stops(
    tmp_path: Path, redis_url: str, aredis: aioredis.Redis
) -> None:
    settings = capacity_settings(tmp_path, redis_url)
    clock = FakeClock(5000.0)
    first, second = planner_for(settings, aredis, clock), planner_for(settings, aredis, clock)
    acted: dict[str, int] = {"first": 0, "second": 0}
    for _ in range(4):
        grow_log(settings, 5000)  # well over the 1000-byte threshold every tick
        clock.now += 10
        results = await asyncio.gather(first.tick(), second.tick())  # started at once
        for name, result in zip(("first", "second"), results, strict=True):
            if result is not None:
                acted[name] += 1
    assert sorted(acted.values()) == [0, 4], acted
    actor = first if acted["first"] else second
    standby = second if actor is first else first
    assert actor.acting and not standby.acting
    assert actor.state.large.state == STARTING, "the actor scaled up"
    assert standby.state.large.state != STARTING, "the standby decided nothing"
    state = await read_state(aredis, settings.redis.key_prefix)
    assert state is not None and state.planner == actor.lock.owner
    await actor.shutdown()  # releases the lock (and deletes its state)
    assert await read_state(aredis, settings.redis.key_prefix) is None
    clock.now += 10
    assert await standby.tick() is not None and standby.acting


async def test_published_state_follows_the_scalers_and_the_routing_target(
    tmp_path: Path, redis_url: str, aredis: aioredis.Redis
) -> None:
    settings = capacity_settings(tmp_path, redis_url)
    clock = FakeClock(5000.0)
    planner = planner_for(settings, aredis, clock)
    prefix = settings.redis.key_prefix
    await planner.tick()  # first sample of the log
    for _ in range(2):
        grow_log(settings, 5000)
        clock.now += 10
        await planner.tick()
    state = await read_state(aredis, prefix)
    assert state is not None
    assert state.models["small-model"].state == STARTING
    assert state.threshold == 1000, "doubled only once the large model is up"
    assert state.observed["log_growth_bytes"] == 5000
    assert await aredis.pttl(keys(prefix)["state"]) > 0, "the state expires without a planner"
    clock.now += 10  # small (10 s) is ready, large (30 s) is not
    await planner.tick()
    state = await read_state(aredis, prefix)
    assert state is not None and state.target_selector == "low-cost"
    assert state.models["small-model"].state == READY
    clock.now += 20
    await planner.tick()
    state = await read_state(aredis, prefix)
    assert state is not None and state.target_selector == "default"
    assert state.threshold == 2000, "the large model is up: the bar for the next one doubles"
    # The console's timeline: every decision and action, newest first, stamped with its tick.
    timeline = await read_timeline(aredis, prefix, 50)
    messages = [event["message"] for event in reversed(timeline)]
    assert messages == [
        "signal 5000 over threshold 1000 for 2 ticks: scaling up",
        "scaling small-model (small model) to 1 planner replicas",
        "scaling large-model (large model) to 1 planner replicas",
        "small model ready after 10s",
        "new sessions now go to the small model",
        "large model ready after 30s",
        "threshold doubled to 2000",
        "new sessions now go to the large model",
    ], messages
    assert timeline[0]["ts"] > timeline[-1]["ts"]


async def test_api_load_counters_add_up_and_forget_silent_processes(
    redis_url: str, aredis: aioredis.Redis
) -> None:
    one, two = LoadReporter("fr:"), LoadReporter("fr:")
    two._process = "other-host:1"  # two API processes
    for reporter, model in ((one, "small-model"), (two, "large-model")):
        for _ in range(3):
            reporter.turn_started()
        reporter.turn_finished(turn(model, "primary"))
        reporter.turn_finished(turn("default", None))  # a request that failed
    await one.flush(aredis)
    await two.flush(aredis)
    await one.flush(aredis)  # nothing new: adds nothing
    load = await read_load(aredis, "fr:", now=time.time(), stale_after=30)
    assert load.requests == 4 and load.inflight == 2
    assert load.served == {"small-model": 1, "large-model": 1}
    later = await read_load(aredis, "fr:", now=time.time() + 60, stale_after=30)
    assert later.inflight == 0, "in-flight counts of processes silent for long are ignored"


def turn(model: str, route: str | None) -> TurnRecord:
    """A finished turn answered by `model` on `route` (None: it failed)."""
    return TurnRecord(request_id="r", session_id=None, selector="default", caller="k",
                      status=200 if route else 503, outcome="ok" if route else "failed",
                      model=model, route=route)  # fmt: skip


def test_published_state_that_is_not_understood_is_ignored() -> None:
    assert PublishedState.parse(b"not json") is None
    assert PublishedState.parse(b'{"planner": "x"}') is None
    assert PublishedState.parse(None) is None


class FakeKubernetes:
    """The two calls of the apps/v1 API the scaler makes, as the API server answers them."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.spec_replicas = 0
        self.ready_replicas = 0
        self.patches: list[tuple[str, Any]] = []
        app = web.Application()
        path = "/apis/apps/v1/namespaces/models/deployments/large"
        app.router.add_get(path, self.get_deployment)
        app.router.add_patch(path + "/scale", self.patch_scale)
        self.app = app

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    async def get_deployment(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"kind": "Status", "message": "Unauthorized"}, status=401)
        status: dict[str, Any] = {"replicas": self.spec_replicas}
        if self.ready_replicas:  # the API server omits zero-valued fields
            status["readyReplicas"] = self.ready_replicas
        return web.json_response({"kind": "Deployment", "spec": {"replicas": self.spec_replicas},
                                  "status": status})  # fmt: skip

    async def patch_scale(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"kind": "Status", "message": "Unauthorized"}, status=401)
        if request.content_type != "application/merge-patch+json":
            return web.json_response({"message": "unsupported media type"}, status=415)
        body = await request.json()
        self.patches.append((request.content_type, body))
        self.spec_replicas = body["spec"]["replicas"]
        return web.json_response({"kind": "Scale", "spec": {"replicas": self.spec_replicas},
                                  "status": {"replicas": self.spec_replicas}})  # fmt: skip


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[tuple[FakeKubernetes, str]]:
    fake = FakeKubernetes("s3cr3t-token")
    runner = web.AppRunner(fake.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield fake, f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_kubernetes_scaler_sets_replicas_and_waits_for_ready_ones(
    kube: tuple[FakeKubernetes, str], tmp_path: Path
) -> None:
    fake, server = kube
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "s3cr3t-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}],
    }))  # fmt: skip
    settings = ScalerSettings(kind="kubernetes", namespace="models", deployment="large",
                              base_url="http://large.models.svc:8000/v1", provider="openai",
                              kubeconfig=str(kubeconfig))  # fmt: skip
    async with aiohttp.ClientSession() as http:
        scaler = KubernetesScaler("large-model", settings, http)
        assert not (await scaler.status()).ready
        await scaler.scale_to(2)
        assert fake.patches == [("application/merge-patch+json", {"spec": {"replicas": 2}})]
        status = await scaler.status()
        assert not status.ready and not status.replicas[0].ready  # pods still starting
        fake.ready_replicas = 1
        status = await scaler.status()
        assert status.replicas[0].ready and not status.ready, "routable, not all ready"
        assert status.replicas[0].base_url == "http://large.models.svc:8000/v1"
        fake.ready_replicas = 2
        assert (await scaler.status()).ready
        await scaler.scale_to(0)
        assert fake.spec_replicas == 0
        wrong = KubernetesScaler("large-model", settings, http,
                                 ClusterAccess(server, "wrong", True))  # fmt: skip
        with pytest.raises(KubernetesError, match="401 Unauthorized"):
            await wrong.scale_to(1)


def test_kubeconfig_with_embedded_ca_and_token_file(tmp_path: Path) -> None:
    from services.capacity.kubernetes import access_from_kubeconfig

    (tmp_path / "token").write_text("from-file\n")
    config = {
        "current-context": "prod",
        "clusters": [{"name": "c", "cluster": {"server": "https://k8s.example:6443/",
                                               "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"tokenFile": str(tmp_path / "token")}}],
        "contexts": [{"name": "prod", "context": {"cluster": "c", "user": "u"}}],
    }  # fmt: skip
    (tmp_path / "kc").write_text(yaml.safe_dump(config))
    access = access_from_kubeconfig(tmp_path / "kc")
    assert access.server == "https://k8s.example:6443" and access.token == "from-file"
    assert access.ssl is False, "insecure-skip-tls-verify turns verification off"


async def test_scale_actions_are_sent_as_alerts(
    tmp_path: Path, redis_url: str, aredis: aioredis.Redis
) -> None:
    """`planner.scale`: one alert per scaler action, to a real receiver."""
    settings = capacity_settings(tmp_path, redis_url)
    clock = FakeClock(5000.0)
    with Receiver() as receiver:
        alerts = AlertSender(AlertSettings.model_validate({"webhooks": [{"url": receiver.url}]}),
                             {}, aredis, None, prefix="fr:")  # fmt: skip
        sending = asyncio.create_task(alerts.run())
        scalers: dict[Role, Scaler] = {
            role: SimulatedScaler(getattr(settings.capacity, role).model,
                                  getattr(settings.capacity, role).scaler, clock)
            for role in ("large", "small")
        }  # fmt: skip
        planner = CapacityPlanner(settings, aredis, scalers, clock=clock, alerts=alerts)
        await planner.tick()
        for _ in range(2):
            grow_log(settings, 5000)
            clock.now += 10
            await planner.tick()
        for _ in range(200):
            if len(receiver.deliveries) >= 2:
                break
            await asyncio.sleep(0.01)
        await alerts.close()
        sending.cancel()
    events = sorted((e["subject"], e["details"]["replicas"], e["event"]) for e in receiver.events())
    assert events == [("large-model", 1, "planner.scale"), ("small-model", 1, "planner.scale")]
