"""A small TCP proxy for fault and latency tests, running in its own thread.

* ``freeze()`` stops forwarding bytes without closing anything: the peers'
  sockets stay open and silent, like a network partition or a stuck NAT.
* ``delay`` adds latency to every chunk, in each direction (this kernel has no
  netem): ``TcpProxy(port, delay=0.001)`` is 1 ms each way.
* ``barrier=n`` holds every new connection until *n* are open at the same
  time: a sequential connector never gets through, a parallel one does.

``with TcpProxy(target_port) as proxy: proxy.port`` gives the listening port.
:class:`ProcessTcpProxy` runs the same proxy in a child process, so that its
CPU does not compete with the code under test for the GIL (benchmarks).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
from typing import Any

__all__ = ["ProcessTcpProxy", "TcpProxy"]


_BACKLOG = 4096


class TcpProxy:
    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1", delay: float = 0.0,
                 barrier: int = 0) -> None:
        self.target = (target_host, target_port)
        self.delay = delay
        self.barrier = barrier
        self.port = 0
        self.accepted = 0
        self.max_concurrent_pending = 0
        self._pending = 0
        self._frozen = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._released: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # -- control (from any thread) -------------------------------------------- #

    def start(self) -> TcpProxy:
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def freeze(self) -> None:
        """Stop forwarding (connections stay open and silent)."""
        self._frozen = True

    def thaw(self) -> None:
        self._frozen = False

    def close_all(self) -> None:
        """Close every proxied connection (a network reset)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._close_writers)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- the proxy (its own thread and loop) ---------------------------------- #

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        self._released = asyncio.Event()
        # A backlog like a server's (asyncio's default of 100 drops the SYNs of
        # a burst of connects, which the client resends only after 1 s).
        self._server = loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=_BACKLOG)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            self._close_writers()
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.sleep(0.05))
            loop.close()

    def _close_writers(self) -> None:
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.close()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.barrier:
            assert self._released is not None
            self._pending += 1
            self.max_concurrent_pending = max(self.max_concurrent_pending, self._pending)
            if self._pending >= self.barrier:
                self._released.set()
            await self._released.wait()
            self._pending -= 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer),
                             return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Any:
        try:
            while data := await reader.read(65536):
                while self._frozen:
                    await asyncio.sleep(0.05)
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            self._writers.discard(writer)



class ProcessTcpProxy:
    """:class:`TcpProxy` in a child process: ``freeze``, ``thaw``, ``close_all``, ``stop``.

    Its CPU does not compete for the GIL with the code under test (benchmarks).
    """

    def __init__(self, target_port: int, *, delay: float = 0.0) -> None:
        self.target_port = target_port
        self.delay = delay
        self.port = 0
        self._process: Any = None

    def start(self) -> ProcessTcpProxy:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "django_readonly_pool.testing.proxy", str(self.target_port), str(self.delay)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.port = int(self._process.stdout.readline())
        return self

    def _command(self, command: str) -> None:
        self._process.stdin.write(command + "\n")
        self._process.stdin.flush()
        self._process.stdout.readline()

    def freeze(self) -> None:
        self._command("freeze")

    def thaw(self) -> None:
        self._command("thaw")

    def close_all(self) -> None:
        self._command("close_all")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._command("stop")
            self._process.wait(10)

    def __enter__(self) -> ProcessTcpProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _main(argv: list[str]) -> None:
    proxy = TcpProxy(int(argv[1]), delay=float(argv[2])).start()
    print(proxy.port, flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "stop":
            proxy.stop()
            print("ok", flush=True)
            return
        getattr(proxy, command)()
        print("ok", flush=True)


if __name__ == "__main__":  # pragma: no cover - the child of ProcessTcpProxy
    _main(sys.argv)
