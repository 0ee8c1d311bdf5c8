"""The floor any gateway pays: a minimal pass-through proxy for ``bench/gateway_overhead.py --proxy``.

An aiohttp app on its own Unix socket, in its own process (uvloop when importable), that forwards every POST body
unchanged to the upstream with one pooled aiohttp client session and the upstream key, and answers with what came
back: a JSON answer read whole, an SSE answer passed through chunk by chunk as it arrives. No parsing, routing,
accounting or validation: whatever a real gateway costs beyond this is its own work.

Run:  python bench/_proxy.py --socket PATH --upstream http://127.0.0.1:PORT --key sk-...   (serves until SIGTERM)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal

import aiohttp
from aiohttp import web

HOP = ("content-type", "cache-control")


def make_app(upstream: str, key: str) -> web.Application:
    app = web.Application()
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    async def open_session(app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=60)
        app["session"] = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120))

    async def close_session(app: web.Application) -> None:
        await app["session"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        session: aiohttp.ClientSession = request.app["session"]
        async with session.post(upstream + request.path, data=body, headers=auth) as up:
            headers = {h: up.headers[h] for h in HOP if h in up.headers}
            if not up.headers.get("content-type", "").startswith("text/event-stream"):
                return web.Response(status=up.status, body=await up.read(), headers=headers)
            out = web.StreamResponse(status=up.status, headers=headers)
            await out.prepare(request)
            async for chunk in up.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"pid": os.getpid()})

    app.router.add_post("/{tail:.*}", forward)
    app.router.add_get("/health", health)
    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    return app


async def serve(sock: str, upstream: str, key: str) -> None:
    runner = web.AppRunner(make_app(upstream, key), access_log=None)
    await runner.setup()
    await web.UnixSite(runner, sock).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--socket", required=True)
    ap.add_argument("--upstream", required=True, help="base URL of the provider, without a path")
    ap.add_argument("--key", required=True)
    args = ap.parse_args()
    factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args.socket, args.upstream, args.key))


if __name__ == "__main__":
    main()
