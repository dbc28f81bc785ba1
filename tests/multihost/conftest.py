"""Fixtures of the multi-host tests: one bridge and one PostgreSQL listening on it for the whole
session, hosts (namespaces) and a fresh database per test. Skipped, with the reason, where
namespaces cannot be made."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.multihost import hosts
from tests.multihost.cluster import Cluster
from tests.pg_server import PostgresServer, create_database


@pytest.fixture(scope="session")
def mh_network() -> Iterator[hosts.Network]:
    reason = hosts.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    try:
        network = hosts.Network()
    except hosts.HostsUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield network
    finally:
        network.close()


@pytest.fixture(scope="session")
def mh_server(mh_network: hosts.Network) -> Iterator[PostgresServer]:
    """Our own server, always (also with LITETASK_TEST_POSTGRES_URL): it must listen on the bridge."""
    server = PostgresServer(host=mh_network.gateway, trust_networks=(mh_network.cidr,)).start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def cluster(mh_network: hosts.Network, mh_server: PostgresServer, tmp_path: Path) -> Iterator[Cluster]:
    if not mh_server.is_running():  # a test that stopped it failed before starting it again
        mh_server.start()
    url = create_database(mh_server.url, f"litetask_mh_{uuid.uuid4().hex[:12]}")
    c = Cluster(mh_network, url, tmp_path)
    try:
        yield c
    finally:
        c.close()
