"""The test servers: primary, streaming replica, PgBouncer; clean start and stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pytest

from django_readonly_pool.testing.topology import (
    PGBOUNCER_FAIL_FAST,
    AttachedTopology,
    Topology,
    TopologyError,
    find_pg_bindir,
)


def _processes_under(base: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=False).stdout
    return [line for line in out.splitlines() if base in line and "ps -eo" not in line
            and "_watchdog" not in line]


def test_row_written_on_primary_is_read_on_replica(topology: Topology) -> None:
    topology.primary.sql("CREATE TABLE IF NOT EXISTS topo_probe (v text)")
    topology.primary.sql("INSERT INTO topo_probe VALUES (%s)", ["hello"])
    topology.wait_for_replay()
    assert [r[0] for r in topology.replica.sql("SELECT v FROM topo_probe")] == ["hello"]
    assert topology.replica.sql("SELECT pg_is_in_recovery()") == [(True,)]
    assert topology.primary.sql("SELECT pg_is_in_recovery()") == [(False,)]


def test_replica_refuses_writes(topology: Topology) -> None:
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as info:
        topology.replica.sql("CREATE TABLE nope (i int)")
    assert info.value.sqlstate == "25006"


def test_streaming_replication_is_active(topology: Topology) -> None:
    rows = topology.primary.sql("SELECT state FROM pg_stat_replication", dbname="postgres")
    assert ("streaming",) in rows


def test_pgbouncer_forwards_to_the_replica(topology: Topology) -> None:
    assert topology.bouncer is not None
    with psycopg.connect(host="127.0.0.1", port=topology.bouncer.port, user="postgres",
                         password=topology.password, dbname="app", autocommit=True) as conn:
        recovery, port = conn.execute("SELECT pg_is_in_recovery(), inet_server_port()").fetchone()
    assert recovery is True and port == topology.replica.port
    config = (topology.bouncer.workdir / "pgbouncer.ini").read_text()
    assert "pool_mode = transaction" in config
    for key, value in PGBOUNCER_FAIL_FAST.items():
        assert f"{key} = {value}" in config


def test_password_with_every_character_class_works(topology: Topology) -> None:
    for ch in "@:/%'\"\\ é":
        assert ch in topology.password
    with psycopg.connect(**topology.replica.conninfo()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_explicit_bindir_is_checked(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="no PostgreSQL server binaries"):
        find_pg_bindir(tmp_path)
    assert (find_pg_bindir() / "initdb").exists()


_CHILD = textwrap.dedent("""
    import sys, time
    from django_readonly_pool.testing.topology import Topology
    mode = sys.argv[1]
    topo = Topology(pgbouncer=True)
    topo.start()
    print(topo.base, flush=True)
    if mode == "fail":
        try:
            with topo:
                raise RuntimeError("a failing test run")
        except RuntimeError:
            pass
        print("stopped", flush=True)
    elif mode == "hang":
        time.sleep(600)
""")


@pytest.mark.slow
def test_stopped_after_a_failure_leaves_nothing(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    out = subprocess.run([sys.executable, str(script), "fail"], capture_output=True, text=True, timeout=120, check=False,
                         env={k: v for k, v in os.environ.items() if k != "READONLY_POOL_TEST_TOPOLOGY"})
    base = out.stdout.splitlines()[0]
    assert out.stdout.splitlines()[1] == "stopped", out.stderr
    assert not Path(base).exists()
    assert _processes_under(base) == []


@pytest.mark.slow
def test_killed_owner_is_cleaned_up_by_the_watchdog(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    child = subprocess.Popen([sys.executable, str(script), "hang"], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    base = child.stdout.readline().strip()
    assert Path(base).exists() and _processes_under(base)
    child.send_signal(signal.SIGKILL)
    child.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (Path(base).exists() or _processes_under(base)):
        time.sleep(0.2)
    assert not Path(base).exists()
    assert _processes_under(base) == []


# -- nobody else gets in -------------------------------------------------------------- #


def _as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=False,
                          user="nobody", group="nogroup", extra_groups=[],
                          env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LC_ALL": "C"}, cwd="/")


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another OS user needs root")
@pytest.mark.parametrize("via", ["tcp", "socket"])
@pytest.mark.parametrize("server", ["primary", "replica", "pgbouncer"])
def test_other_local_users_are_refused(topology: Topology, server: str, via: str) -> None:
    """Another local account cannot log in (and so cannot run COPY ... PROGRAM as the server's account)."""
    if server == "pgbouncer" and via == "socket":
        pytest.skip("PgBouncer listens on TCP only")
    target = {"primary": topology.primary, "replica": topology.replica, "pgbouncer": topology.bouncer}[server]
    assert target is not None and topology.primary is not None
    host = "127.0.0.1" if via == "tcp" else str(topology.primary.socket_dir)
    psql = str(find_pg_bindir() / "psql")
    out = _as_nobody(psql, "-w", "-X", "-h", host, "-p", str(target.port), "-U", "postgres", "-d", "postgres",
                     "-c", "COPY (SELECT 1) TO PROGRAM 'id'")
    assert out.returncode != 0, out.stdout
    assert "uid=" not in out.stdout + out.stderr
    expected = "no password supplied" if via == "tcp" else "Permission denied"
    assert expected in out.stderr, out.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another OS user needs root")
def test_other_local_users_cannot_read_the_topology(topology: Topology) -> None:
    assert topology.base is not None
    out = _as_nobody("cat", str(topology.base / "state.json"))
    assert out.returncode != 0 and topology.password not in out.stdout
    out = _as_nobody("ls", str(topology.base))
    assert out.returncode != 0 and "Permission denied" in out.stderr


def test_the_topology_is_private_to_its_account(topology: Topology) -> None:
    import stat

    from django_readonly_pool.testing.topology import SERVER_ACCOUNT

    assert topology.base is not None and topology.primary is not None
    for path in (topology.base, topology.primary.socket_dir):
        info = path.stat()
        assert stat.S_IMODE(info.st_mode) == 0o700, path
        assert info.st_uid == topology.os_user.uid
    exposed = []
    for child in topology.base.iterdir():  # every directory of the topology, and the files holding secrets
        secret = child.is_dir() or child.name == "state.json" or child.name.endswith(".pw")
        if secret and stat.S_IMODE(child.stat().st_mode) & 0o077:
            exposed.append(f"{child} {stat.filemode(child.stat().st_mode)}")
    assert topology.bouncer is not None
    for secret in (topology.bouncer.workdir / "userlist.txt", topology.bouncer.workdir / "pgbouncer.ini",
                   topology.primary.datadir / "pg_hba.conf"):
        if stat.S_IMODE(secret.stat().st_mode) & 0o077:
            exposed.append(f"{secret} {stat.filemode(secret.stat().st_mode)}")
    assert exposed == []
    for server in (topology.primary, topology.replica):
        sockets = list(server.socket_dir.glob(f".s.PGSQL.{server.port}"))
        assert sockets and all(stat.S_IMODE(s.stat().st_mode) == 0o700 for s in sockets)
    if os.geteuid() == 0:
        assert topology.os_user.name == SERVER_ACCOUNT != "postgres"
        pid = topology.primary.pid()
        owner = subprocess.run(["ps", "-o", "user=", "-p", str(pid)], capture_output=True, text=True,
                               check=False).stdout.strip()
        assert owner == SERVER_ACCOUNT[:len(owner)] and owner, owner  # ps may truncate the name


# -- python -m django_readonly_pool.testing up|env|status|down -------------------------- #


@pytest.mark.slow
def test_the_command_line_starts_and_stops_servers_for_development(tmp_path: Path) -> None:
    state = tmp_path / "state"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FIDES__", "READONLY_POOL_TEST"))}
        return subprocess.run([sys.executable, "-m", "django_readonly_pool.testing", *args, "--dir", str(state)],
                              capture_output=True, text=True, timeout=240, check=False, env=env)

    assert cli("status").returncode == 1
    started = cli("up")
    assert started.returncode == 0, started.stderr
    try:
        exports = dict(line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines())
        assert {"FIDES__DATABASE__SERVER", "FIDES__DATABASE__PORT", "FIDES__DATABASE__PASSWORD",
                "FIDES__DATABASE__READONLY_PORT"} <= set(exports)
        assert oct(state.stat().st_mode & 0o777) == "0o700"
        # the exports, evaluated by a shell, point databases_from_env() at the servers
        shell = subprocess.run(["bash", "-c", f'eval "$({sys.executable} -m django_readonly_pool.testing env '
                                f'--dir {state})"; {sys.executable} -c "'
                                "from django_readonly_pool import databases_from_env; import psycopg; "
                                "d = databases_from_env()['readonly']; "
                                "c = psycopg.connect(host=d['HOST'], port=d['PORT'], user=d['USER'], "
                                "password=d['PASSWORD'], dbname=d['NAME']); "
                                "print(c.execute('SELECT pg_is_in_recovery()').fetchone()[0])\""],
                               capture_output=True, text=True, timeout=60, check=False)
        assert shell.stdout.strip() == "True", shell.stderr
        assert "running" in cli("status").stdout
        assert cli("up").stdout == started.stdout  # already up: the same servers
        through = cli("env", "--pgbouncer").stdout
        assert through != started.stdout and "READONLY_PORT" in through
        base = Path(json.loads((state / "state.json").read_text())["environ"]["READONLY_POOL_TEST_TOPOLOGY"]).parent
        assert _processes_under(str(base))
    finally:
        stopped = cli("down")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not base.exists() and _processes_under(str(base)) == []
    assert cli("status").returncode == 1 and cli("env").returncode == 1


def test_an_attached_topology_describes_the_owners_servers(topology: Topology) -> None:
    """What another process (a pytest run of the sample project) sees through the state file."""
    assert topology.base is not None
    attached = AttachedTopology(topology.base / "state.json")
    assert attached.state() == topology.state()
    assert attached.environ() == topology.environ()
    through = attached.environ(through_pgbouncer=True)
    assert topology.bouncer is not None and attached.bouncer is not None
    assert through["FIDES__DATABASE__READONLY_PORT"] == str(topology.bouncer.port)
    assert through == topology.environ(through_pgbouncer=True)
    # it reaches the owner's servers, and leaves them running
    assert attached.replica is not None and attached.replica.sql("SELECT pg_is_in_recovery()")[0][0] is True
    attached.stop()
    assert topology.primary is not None and topology.primary.is_running()
