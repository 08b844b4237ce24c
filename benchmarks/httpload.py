"""A small closed-loop HTTP/1.1 load generator (keep-alive, one connection per worker).

``python -m benchmarks.httpload --port P --concurrency 64 --seconds 5`` prints
one JSON document: requests per second, p50, p99, errors. Light on CPU, so
that the server under test keeps most of the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time


async def worker(port: int, path: str, index: int, state: dict[str, object], latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = index
    try:
        while not state["stop"]:
            target = path.format(1 + (i * 7919) % 10_000)
            i += 1
            started = time.perf_counter()
            writer.write(f"GET {target} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length, chunked = 0, False
            for line in head.split(b"\r\n"):
                lower = line.lower()
                if lower.startswith(b"content-length:"):
                    length = int(line[15:])
                elif lower.startswith(b"transfer-encoding:") and b"chunked" in lower:
                    chunked = True
            if chunked:
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    await reader.readexactly(size + 2)  # the chunk and its CRLF
                    if size == 0:
                        break
            else:
                await reader.readexactly(length)
            ok = head.startswith(b"HTTP/1.1 200")
            if state["measuring"]:
                latencies.append(time.perf_counter() - started)
                if not ok:
                    state["errors"] = int(state["errors"]) + 1  # type: ignore[call-overload]
    finally:
        writer.close()


async def main(port: int, path: str, concurrency: int, seconds: float, warmup: float) -> dict[str, float]:
    state: dict[str, object] = {"stop": False, "measuring": False, "errors": 0}
    latencies: list[float] = []
    tasks = [asyncio.create_task(worker(port, path, i, state, latencies)) for i in range(concurrency)]
    await asyncio.sleep(warmup)
    state["measuring"] = True
    began = time.perf_counter()
    await asyncio.sleep(seconds)
    state["measuring"] = False
    elapsed = time.perf_counter() - began
    state["stop"] = True
    await asyncio.gather(*tasks, return_exceptions=True)
    latencies.sort()
    n = len(latencies)
    return {"rps": n / elapsed, "p50_ms": latencies[n // 2] * 1000 if n else 0.0,
            "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1000 if n else 0.0,
            "requests": n, "errors": int(state["errors"])}  # type: ignore[call-overload]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/bench/item/{}/")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.port, args.path, args.concurrency, args.seconds, args.warmup))))
