"""pytest plugin: a real primary, streaming replica and PgBouncer for the session.

Enable it with ``-p django_readonly_pool.testing.pytest_plugin`` (in ``addopts``)
and ``readonly_pool_topology = true`` in the pytest ini section, or
``--readonly-pool-topology`` on the command line.

The servers start before pytest-django loads your settings, and the
``FIDES__DATABASE__*`` variables are exported, so a ``settings.py`` that calls
``databases_from_env()`` points at them with no other change. The
``readonly_pool_topology`` fixture gives the :class:`Topology` to tests that
stop, kill or restart servers. Everything is stopped and removed at the end of
the session, also when the run fails; a watchdog does it if pytest is killed.

``@pytest.mark.readonly_pool_replica`` makes a test read from the real replica
(not the test mirror's primary): it implies
``django_db(transaction=True, databases="__all__")`` and the
``readonly_pool_replica`` fixture, whose ``wait_for_replay()`` (``await
await_replay()`` in async tests) waits for the replica to replay the test's
writes (see :mod:`django_readonly_pool.testing.replica`).

When ``READONLY_POOL_TEST_TOPOLOGY`` is already set (a pytest run started by a
test of the outer run) the existing topology is reused.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

from .replica import replica_reads
from .topology import STATE_ENV, AttachedTopology, Topology

_topology_key = pytest.StashKey[Topology]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("readonly_pool", "django-readonly-pool test servers")
    group.addoption(
        "--readonly-pool-topology", action="store_true", default=None,
        help="start a PostgreSQL primary, streaming replica and PgBouncer for the session",
    )
    group.addoption(
        "--no-readonly-pool-topology", action="store_false", dest="readonly_pool_topology",
        help="do not start the test servers (FIDES__DATABASE__* must point at servers)",
    )
    parser.addini(
        "readonly_pool_topology", type="bool", default=False,
        help="start the django-readonly-pool test servers for the session",
    )
    parser.addini(
        "readonly_pool_pgbouncer", type="bool", default=True,
        help="also start PgBouncer (transaction mode) in front of the replica",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "readonly_pool_replica: read from the real replica in this test (committed writes, "
                   "no test-mirror redirection); see django_readonly_pool.testing.replica",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("readonly_pool_replica") is None:
            continue
        if item.get_closest_marker("django_db") is None:
            item.add_marker(pytest.mark.django_db(transaction=True, databases="__all__"))
        item.fixturenames.insert(0, "readonly_pool_replica")  # type: ignore[attr-defined]


@pytest.fixture
def readonly_pool_replica(request: pytest.FixtureRequest) -> Generator[Any, None, None]:
    """Reads go to the real replica in this test; ``.wait_for_replay()`` waits for its writes."""
    request.getfixturevalue("transactional_db")
    with replica_reads() as replica:
        yield replica


def _enabled(config: pytest.Config) -> bool:
    option = config.getoption("readonly_pool_topology", None)
    if option is not None:
        return bool(option)
    return bool(config.getini("readonly_pool_topology"))


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> Generator[None, Any, Any]:
    # Runs before pytest-django imports the settings module.
    if _enabled(early_config) and not early_config.getoption("help", False):
        topology: Topology
        if os.environ.get(STATE_ENV):
            topology = AttachedTopology()
        else:
            topology = Topology(pgbouncer=bool(early_config.getini("readonly_pool_pgbouncer")))
            topology.start()
            early_config.add_cleanup(topology.stop)
        os.environ.update(topology.environ())
        early_config.stash[_topology_key] = topology
    return (yield)


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    topology = config.stash.get(_topology_key, None)
    if topology is None or topology.primary is None or topology.replica is None:
        return None
    bouncer = f", pgbouncer :{topology.bouncer.port}" if topology.bouncer else ""
    return [
        f"readonly-pool topology: primary :{topology.primary.port}, "
        f"replica :{topology.replica.port}{bouncer} ({topology.bindir})"
    ]


@pytest.fixture(scope="session")
def readonly_pool_topology(pytestconfig: pytest.Config) -> Topology:
    """The running :class:`~django_readonly_pool.testing.topology.Topology`."""
    topology = pytestconfig.stash.get(_topology_key, None)
    if topology is None:
        pytest.fail(
            "the django-readonly-pool topology is not enabled: set readonly_pool_topology = true "
            "in the pytest ini section or pass --readonly-pool-topology"
        )
    return topology
