"""Three API replicas on a three-primary Redis Cluster under round-robin load: one Cluster node
is SIGKILLed and restarted. Without a replica its slots are gone while it is down; the replicas
answer fail-open meanwhile and resume shared state (pins, breakers) once it is back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.crc import key_slot

from services.platform.redis_connection import redis_server_available
from tests.helpers import SimProcess, http, wait_until
from tests.redis_topology import ClusterSet, start_cluster
from tests.scaleout.harness import RoundRobinLoad, start_replicas
from tests.scaleout.test_failover import gateway_config

pytestmark = pytest.mark.skipif(not redis_server_available(), reason="needs redis-server")


@pytest.fixture
def cluster() -> Iterator[ClusterSet]:
    """A Cluster of this test's own: one of its nodes gets killed."""
    topology = start_cluster()
    yield topology
    topology.stop()


def test_replicas_answer_through_the_loss_of_a_cluster_node_and_resume_after(
    cluster: ClusterSet, primary: SimProcess, secondary: SimProcess, tmp_path: Path
) -> None:
    env = {"FR_REDIS_URL": cluster.url, "FR_LOG_DIR": str(tmp_path / "logs")}
    replicas = start_replicas(3, gateway_config(tmp_path, primary, secondary), env, tmp_path)
    try:
        assert all(r.get("/health")["redis"]["mode"] == "cluster" for r in replicas)
        pinned = [json.loads(http("POST", replicas[n % 3].base + "/initiate_call",
                                  {"model": "secondary"})[2])["session_id"] for n in range(30)]  # fmt: skip
        victim = cluster.nodes[1]
        with RoundRobinLoad(replicas, pinned) as load:
            load.wait_for(60)
            victim.kill()
            wait_until(lambda: not all(r.get("/readyz")["redis_ok"] for r in replicas),
                       what="a replica to notice the lost node")  # fmt: skip
            load.wait_for(60)  # answered fail-open
            before_restart = len(load.where(lambda _: True))
            victim.restart()
            wait_until(cluster.healthy, timeout=30, what="the cluster to agree again")
            wait_until(lambda: all(r.get("/readyz")["redis_ok"] for r in replicas), timeout=30,
                       what="every replica back on shared state")  # fmt: skip
            load.wait_for(60)
        outcomes = load.where(lambda _: True)
        failed = [o for o in outcomes[:before_restart] if o.status != 200]
        assert failed == [], f"requests failed while the node was down: {failed[:5]}"
        # The restarted node lost its keys (no persistence, no replica: the worst case): its
        # sessions now answer 404 session_not_found, and nothing else fails.
        lost_slots = range(5461, 10923)  # the victim's slots (tests/redis_topology.py)
        after = [o for o in outcomes[before_restart:] if o.status != 200]
        assert all(o.status == 404 and key_slot(f"fr:session:{o.session}".encode()) in lost_slots
                   for o in after), [(o.status, o.session) for o in after][:5]  # fmt: skip

        # The pins on the surviving nodes are honoured. Re-pinned after, a session is shared
        # again.
        def kept() -> int:
            return sum(
                http("POST", replicas[n % 3].base + "/chat_completions",
                     {"session_id": s, "message": "hi"})[1].get("x-router-model") == "secondary"
                for n, s in enumerate(pinned)
            )  # fmt: skip

        survivors = sum(key_slot(f"fr:session:{s}".encode()) not in lost_slots for s in pinned)
        # The restarted node can still answer CLUSTERDOWN for a moment after the cluster reports
        # itself healthy (seen in CI: a replica went fail-open again 2 s later, and its turns
        # took the default model meanwhile, as fail-open should): ask until the replicas stay
        # on shared state.
        wait_until(lambda: kept() == survivors, timeout=30,
                   what="pins on the surviving nodes kept, the lost node's gone")  # fmt: skip
        fresh = json.loads(http("POST", replicas[0].base + "/initiate_call",
                                {"model": "secondary"})[2])["session_id"]  # fmt: skip
        status, headers, _ = http("POST", replicas[2].base + "/chat_completions",
                                  {"session_id": fresh, "message": "hi"})  # fmt: skip
        assert status == 200 and headers["x-router-model"] == "secondary"
    finally:
        codes = [replica.stop() for replica in replicas]
    assert codes == [0, 0, 0]


def test_a_replica_answers_when_the_whole_cluster_is_gone_and_resumes_after(
    cluster: ClusterSet, primary: SimProcess, secondary: SimProcess, tmp_path: Path
) -> None:
    """Every node SIGKILLed: redis-py's Cluster client then raises RedisClusterException ("cannot
    be connected"), not a RedisError, on every call. It is a lost Redis like any other: turns
    answer fail-open, and shared state resumes once the nodes are back."""
    env = {"FR_REDIS_URL": cluster.url, "FR_LOG_DIR": str(tmp_path / "logs")}
    (replica,) = start_replicas(1, gateway_config(tmp_path, primary, secondary), env, tmp_path)
    try:
        session = json.loads(http("POST", replica.base + "/initiate_call",
                                  {"model": "secondary"})[2])["session_id"]  # fmt: skip
        for node in cluster.nodes:
            node.kill()
        turns = [http("POST", replica.base + "/chat_completions",
                      {"session_id": session, "message": "hi"}) for _ in range(5)]  # fmt: skip
        assert [status for status, _, _ in turns] == [200] * 5, turns[0][2][:300]
        assert replica.get("/readyz")["redis_ok"] is False
        assert http("POST", replica.base + "/initiate_call", {"model": "secondary"})[0] == 200
        for node in cluster.nodes:
            node.restart()
        wait_until(cluster.healthy, timeout=30, what="the cluster to agree again")
        wait_until(lambda: replica.get("/readyz")["redis_ok"], timeout=30,
                   what="the replica back on shared state")  # fmt: skip
        fresh = json.loads(http("POST", replica.base + "/initiate_call",
                                {"model": "secondary"})[2])["session_id"]  # fmt: skip
        status, headers, _ = http("POST", replica.base + "/chat_completions",
                                  {"session_id": fresh, "message": "hi"})  # fmt: skip
        assert status == 200 and headers["x-router-model"] == "secondary"
    finally:
        code = replica.stop()
    assert code == 0
