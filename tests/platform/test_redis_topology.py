"""Redis URLs: which deployment they name (pure parsing), and that passwords never show."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from services.config import redact_url
from services.errors import RedisURLError
from services.platform.redis_topology import parse_redis_url
from tests.helpers import MAIN


def test_a_plain_url_is_standalone_and_passed_through() -> None:
    target = parse_redis_url("rediss://u:pw@h:6380/2")
    assert target.mode == "standalone" and target.url == "rediss://u:pw@h:6380/2"


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_database() -> None:
    target = parse_redis_url(
        "redis+sentinel://app:p%40ss@s1:26380,s2/fr-main/3?sentinel_password=x"
    )
    assert target.mode == "sentinel" and not target.tls
    assert target.nodes == (("s1", 26380), ("s2", 26379)), "26379: the sentinel port by default"
    assert (target.service, target.db) == ("fr-main", 3)
    assert (target.username, target.password, target.sentinel_password) == ("app", "p@ss", "x")
    assert parse_redis_url("rediss+sentinel://s1/fr").tls


def test_a_cluster_url_names_seed_nodes_and_only_database_zero() -> None:
    target = parse_redis_url("redis-cluster://n1:7000,n2:7001,n3")
    assert target.mode == "cluster"
    assert target.nodes == (("n1", 7000), ("n2", 7001), ("n3", 6379))
    assert parse_redis_url("rediss-cluster://n1:7000/0").tls


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+sentinel://s1:26379", "service name"),
        ("redis+sentinel://s1:26379/fr/x", "database number"),
        ("redis-cluster://n1:7000/1", "only database 0"),
        ("redis-cluster://n1:port", "not a port"),
        ("redis-cluster://n1:7000,,n2", "empty host"),
    ],
)
def test_malformed_urls_say_why(url: str, why: str) -> None:
    with pytest.raises(RedisURLError, match=why):
        parse_redis_url(url)


def test_redaction_covers_several_hosts_and_password_parameters() -> None:
    assert redact_url("redis+sentinel://:pw@s1:1,s2:2/fr/0?sentinel_password=zz&x=1") == (
        "redis+sentinel://:***@s1:1,s2:2/fr/0?sentinel_password=***&x=1"
    )
    assert redact_url("redis://u:secret@h:6379/0") == "redis://u:***@h:6379/0"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"


def test_check_config_refuses_a_malformed_sentinel_url_without_showing_its_password() -> None:
    env = {**os.environ, "FR_REDIS_URL": "redis+sentinel://:topsecret@s1:26379"}
    out = subprocess.run([sys.executable, MAIN, "check-config"], env=env, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2
    assert "redis.url: a redis+sentinel:// URL needs the service name" in out.stderr
    assert "topsecret" not in out.stdout + out.stderr
