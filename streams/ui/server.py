"""``emostream ui``: the live supervisor page.

A consumer thread (group-less, every partition) reads the emotion events, the alerts and the call
reports from ``since_s`` ago on, into a :class:`~streams.ui.board.Board`; an aiohttp server serves

- ``/``: the page (``static/``): active calls with their speakers' emotion timelines, open alerts
  first; a click opens a call with its utterances, labels, confidence and weights;
- ``/api/calls`` (every call's summary) and ``/api/calls/{id}`` (one call with its utterances);
- ``/events``: server-sent events, ``snapshot`` once then ``update`` (the calls changed, those
  removed) at most every ``push_s``, so hundreds of busy calls cost the browser a few renders a
  second, not one per event;
- ``/healthz``: 200 once the consumer has its partitions.

It binds to 127.0.0.1 by default: the page shows what callers feel; put it behind your own
authentication before you open it to a network. Bound to a loopback address it answers only
requests that name a loopback host (``Host: localhost:8080``, ``127.0.0.1``, ``[::1]``): a web page
the supervisor visits cannot read it by pointing its own domain name at 127.0.0.1 (DNS
rebinding). Every response forbids scripts from anywhere but the page's own file (CSP), and at
most :data:`MAX_CLIENTS` pages follow the stream at once. The consumer thread resumes where it
was after a Kafka failure (a replay from ``since_s`` ago could bring back an alert already
cleared), and the stream tells the page while it cannot read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

from streams.settings import Settings
from streams.ui.board import Board

log = logging.getLogger("emostream.ui")
STATIC = Path(__file__).with_name("static")
MAX_CLIENTS = 50  # pages following /events at once: each costs the event loop its updates
#: scripts only from the page's own file (app.js); its colour cells use inline style attributes
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


class Feed:
    """The consumer thread that fills the board."""

    def __init__(self, settings: Settings, board: Board, since_s: float) -> None:
        self.settings, self.board, self.since_s = settings, board, since_s
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.error: str | None = None
        self.positions: dict[Any, int] = {}  # partition -> the next offset to read (kept across a failure)
        self.thread = threading.Thread(target=self._run, name="ui-feed", daemon=True)

    def start(self) -> Feed:
        self.thread.start()
        return self

    def _run(self) -> None:
        """Read until stopped; on any failure (Kafka away, topics missing) say so on /healthz, the
        page and the log, and start again after a backoff where it was (a partition not read yet:
        from ``since_s`` ago)."""
        backoff = 1.0
        while not self.stop.is_set():
            try:
                self._read()
                return
            except Exception as exc:
                self.ready.clear()
                self.error = f"{type(exc).__name__}: {exc}"
                log.error("ui: reading the output topics failed (%s); again in %.0f s", self.error, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _read(self) -> None:
        from client.subscriber import make_consumer

        t = self.settings.kafka.topics
        kinds = {t.emotions: "emotion", t.alerts: "alert", t.calls: "report"}
        consumer = make_consumer(self.settings, list(kinds), True, self.settings.kafka.startup_timeout_s)
        try:
            self._seek(consumer)
            self.error = None
            self.ready.set()
            while not self.stop.is_set():
                for tp, records in consumer.poll(timeout_ms=300).items():
                    for r in records:
                        self.board.add(kinds[r.topic], r.value)
                        self.positions[tp] = r.offset + 1
                self.board.expire()
        finally:
            consumer.close()

    def _seek(self, consumer: Any) -> None:
        """Start ``since_s`` ago (calls that began earlier show from there on), or where this feed
        was before a failure."""
        parts = [tp for tp in consumer.assignment() if tp not in self.positions]
        for tp in consumer.assignment():
            if tp in self.positions:
                consumer.seek(tp, self.positions[tp])
        if not parts:
            return
        at = int((time.time() - self.since_s) * 1000)
        for tp, found in consumer.offsets_for_times({tp: at for tp in parts}).items():
            if found is None:
                consumer.seek_to_end(tp)
            else:
                consumer.seek(tp, found.offset)


def make_app(board: Board, feed: Feed | None = None, push_s: float = 0.5, loopback_only: bool = False) -> Any:
    """``loopback_only``: answer only requests whose Host is a loopback name (the server is bound to
    one: see the module docstring)."""
    from aiohttp import web

    stopping = asyncio.Event()  # set on shutdown: the event streams end, the server stops at once
    following = [0]  # pages on /events now

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        if loopback_only and not _is_loopback(_host_name(request.host)):
            log.warning("ui: refused a request for host %r (this page answers loopback names only)", request.host[:100])
            raise web.HTTPMisdirectedRequest(text="this page answers requests for localhost only")
        resp = await handler(request)
        if not resp.prepared:  # (the event stream sets its own before it starts)
            resp.headers["Content-Security-Policy"] = CSP
            resp.headers["X-Content-Type-Options"] = "nosniff"
            resp.headers["Referrer-Policy"] = "no-referrer"
        return resp  # type: ignore[no-any-return]

    def feed_error() -> str | None:
        if feed is None:
            return None
        if feed.ready.is_set() and feed.thread.is_alive():
            return None
        return feed.error or ("starting" if feed.thread.is_alive() else "the reader stopped")

    async def index(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    async def calls(request: web.Request) -> web.Response:
        return web.json_response(board.snapshot())

    async def call(request: web.Request) -> web.Response:
        found = board.detail(request.match_info["call_id"])
        if found is None:
            raise web.HTTPNotFound(text="no such call on the board")
        return web.json_response(found)

    async def health(request: web.Request) -> web.Response:
        if feed is not None and not (feed.ready.is_set() and feed.thread.is_alive()):
            return web.json_response({"ok": False, "error": feed.error or "starting"}, status=503)
        return web.json_response({"ok": True, "calls": len(board.calls), "invalid_records": board.invalid})

    async def events(request: web.Request) -> web.StreamResponse:
        """Until the browser goes or the server stops (``on_shutdown`` sets ``stopping``). A
        ``feed`` event says whether the topics are being read (``{"error": ...}`` while not)."""
        if following[0] >= MAX_CLIENTS:
            raise web.HTTPServiceUnavailable(text=f"{MAX_CLIENTS} pages already follow this board")
        following[0] += 1
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        resp.headers["Content-Security-Policy"] = CSP
        try:
            await resp.prepare(request)
            snap = board.snapshot()
            version = snap["version"]
            await resp.write(f"event: snapshot\ndata: {json.dumps(snap)}\n\n".encode())
            said = None
            while not stopping.is_set():
                error = feed_error()
                if error != said:
                    said = error
                    await resp.write(f"event: feed\ndata: {json.dumps({'error': error})}\n\n".encode())
                try:
                    await asyncio.wait_for(stopping.wait(), push_s)
                    break
                except asyncio.TimeoutError:
                    pass
                if board.version == version:
                    await resp.write(b": keep-alive\n\n")
                    continue
                change = board.since(version)
                version = change["version"]
                await resp.write(f"event: update\ndata: {json.dumps(change)}\n\n".encode())
        except ConnectionResetError:  # the browser went away
            pass
        finally:
            following[0] -= 1
        return resp

    async def expire() -> None:
        """Ended and silent calls leave the board on time while the feed cannot read too."""
        while not stopping.is_set():
            try:
                await asyncio.wait_for(stopping.wait(), 5.0)
            except asyncio.TimeoutError:
                board.expire()

    tasks: list[asyncio.Future[None]] = []

    async def start_expiring(app: web.Application) -> None:
        tasks.append(asyncio.ensure_future(expire()))  # (ends once stopping is set)

    async def shutdown(app: web.Application) -> None:
        stopping.set()

    app = web.Application(middlewares=[guard])
    app.on_startup.append(start_expiring)
    app.on_shutdown.append(shutdown)
    app.add_routes(
        [
            web.get("/", index),
            web.get("/api/calls", calls),
            web.get("/api/calls/{call_id}", call),
            web.get("/events", events),
            web.get("/healthz", health),
            web.static("/static", STATIC),
        ]
    )
    return app


def run_ui(settings: Settings, host: str, port: int, since_s: float) -> int:
    """``emostream ui``: serve the page until stopped."""
    import errno
    import socket

    from aiohttp import web

    from streams.app import quiet_kafka_python

    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    quiet_kafka_python(settings.log_level)
    try:  # a port in use: said before the Kafka feed starts (aiohttp binds it, every address of the host)
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return _port_taken(host, port)
    board = Board(keep_silent_s=settings.redis.ttl_s)  # the worker's store forgets a silent call then
    feed = Feed(settings, board, since_s).start()
    print(f"emostream ui: http://{host}:{port}/  (calls from {since_s / 60:.0f} min ago on, {settings.kafka.brokers})")
    try:
        app = make_app(board, feed, loopback_only=_is_loopback(host))
        web.run_app(app, host=host, port=port, print=None, handle_signals=True, shutdown_timeout=3)
    except OSError as exc:  # one line, not aiohttp's traceback
        if exc.errno == errno.EADDRINUSE:
            return _port_taken(host, port)
        print(f"emostream ui: cannot serve on {host}:{port}: {exc}", file=sys.stderr)
        return 2
    finally:
        feed.stop.set()
    return 0


def _host_name(host: str) -> str:
    """The name in a Host header, without its port ("[::1]:8080" -> "::1", "localhost:8080" -> "localhost")."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_loopback(host: str) -> bool:
    """Whether the bind address is a loopback one (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _port_taken(host: str, port: int) -> int:
    print(f"emostream ui: port {port} on {host} is in use (another program on this machine?): choose another "
          "with --port", file=sys.stderr)  # fmt: skip
    return 2
