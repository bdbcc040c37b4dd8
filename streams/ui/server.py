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
most :data:`MAX_CLIENTS` pages follow the stream at once (one whose machine vanished lets its place go
after :data:`GONE_AFTER_S`). The consumer thread resumes where it
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
#: a page whose machine went without a word (a laptop asleep, a network gone) holds its /events slot
#: until the kernel gives up on the unacknowledged keep-alives: about 15 minutes by default, this long here
GONE_AFTER_S = 30.0
LOST_AFTER_S = 10.0  # no broker connected this long: the page and /healthz say the topics are not read
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
        self.lost_since: float | None = None  # when the consumer last had no broker connected (monotonic)
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
        from client.subscriber import TopicReader, make_consumer

        t = self.settings.kafka.topics
        kinds = {t.emotions: "emotion", t.alerts: "alert", t.calls: "report"}
        consumer = make_consumer(self.settings, list(kinds), True, self.settings.kafka.startup_timeout_s)
        try:
            self._seek(consumer)
            reader = TopicReader(consumer, list(kinds))
            self.error = None
            self.ready.set()
            while not self.stop.is_set():
                batches, notes = reader.poll(300)
                for note in notes:
                    log.warning("ui: %s", note)
                if notes:  # the positions moved: a failure from here resumes there
                    self.positions.update({tp: consumer.position(tp) for tp in consumer.assignment()})
                for tp, records in batches.items():
                    for r in records:
                        self.board.add(kinds[r.topic], r.value)
                        self.positions[tp] = r.offset + 1
                self.board.expire()
                self.watch(consumer, time.monotonic())
        finally:
            consumer.close()

    def watch(self, consumer: Any, now: float) -> None:
        """Say whether the consumer reaches a broker: kafka-python's poll returns nothing, and
        raises nothing, while every broker is away, so a page would go on saying "live"."""
        connected = _broker_connected(consumer)
        if connected:
            if self.lost_since is not None and self.error is not None:
                log.warning("ui: the brokers answer again; reading the output topics")
            self.lost_since = None
            self.error = None
            self.ready.set()
            return
        self.lost_since = now if self.lost_since is None else self.lost_since
        if now - self.lost_since >= LOST_AFTER_S:
            if self.error is None:
                log.error("ui: no broker connected for %.0f s (%s): the page says it is not reading",
                          now - self.lost_since, self.settings.kafka.brokers)  # fmt: skip
            self.error = f"no broker of {self.settings.kafka.brokers} connected for {now - self.lost_since:.0f} s"
            self.ready.clear()

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


def _give_up_after(request: Any, seconds: float) -> None:
    """Have the kernel drop the connection once what was written to it has gone unacknowledged for
    ``seconds`` (TCP_USER_TIMEOUT, Linux): the next write then fails and the page's slot is free."""
    import socket

    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    if sock is not None and hasattr(socket, "TCP_USER_TIMEOUT") and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(seconds * 1000))


def make_app(
    board: Board, feed: Feed | None = None, push_s: float = 0.5, allowed_hosts: tuple[str, ...] | None = None
) -> Any:
    """``allowed_hosts``: answer only requests whose Host names one of these (a loopback address
    stands for every loopback name; None: any host). ``/healthz`` answers any (probes name the pod's
    address)."""
    from aiohttp import web

    stopping = asyncio.Event()  # set on shutdown: the event streams end, the server stops at once
    following = [0]  # pages on /events now

    def secure(resp: web.StreamResponse) -> None:
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            if allowed_hosts is not None and request.path != "/healthz" and not _allowed(request.host, allowed_hosts):
                log.warning("ui: refused a request for host %r (--allowed-hosts %s)", request.host[:100],
                            ",".join(allowed_hosts))  # fmt: skip
                raise web.HTTPMisdirectedRequest(
                    text=f"this page answers requests for {', '.join(allowed_hosts)} only (ui --allowed-hosts)"
                )
            resp = await handler(request)
        except web.HTTPException as exc:  # (404, 421, 503: the headers too)
            secure(exc)
            raise
        if not resp.prepared:  # (the event stream sets its own before it starts)
            secure(resp)
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
        error = feed_error()
        if error is not None:  # the page's own words: starting, the reader's error, or that it stopped
            return web.json_response({"ok": False, "error": error}, status=503)
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
            _give_up_after(request, GONE_AFTER_S)
            snap = board.snapshot()
            version = snap["version"]
            await resp.write(f"event: snapshot\ndata: {json.dumps(snap)}\n\n".encode())
            said: object = ...  # the first look is always said (a page reconnecting may hold an old error)
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


def run_ui(settings: Settings, host: str, port: int, since_s: float, allowed_hosts: str | None = None) -> int:
    """``emostream ui``: serve the page until stopped. ``allowed_hosts``: comma-separated names the
    page answers for ("*": any; None: the loopback names where ``host`` is a loopback address, else any)."""
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
        app = make_app(board, feed, allowed_hosts=_hosts(allowed_hosts, host))
        web.run_app(app, host=host, port=port, print=None, handle_signals=True, shutdown_timeout=3)
    except OSError as exc:  # one line, not aiohttp's traceback
        if exc.errno == errno.EADDRINUSE:
            return _port_taken(host, port)
        print(f"emostream ui: cannot serve on {host}:{port}: {exc}", file=sys.stderr)
        return 2
    finally:
        feed.stop.set()
    return 0


def _broker_connected(consumer: Any) -> bool:
    """Whether kafka-python's consumer has a connection to any broker of its cluster (private
    paths: True where they fail, so a kafka-python change makes no false alarm)."""
    try:
        client = consumer._client
        nodes = [getattr(b, "node_id", None) for b in client.cluster.brokers()]  # (kafka-python 3: node_id)
        return any(client.connected(n) for n in nodes if n is not None) if nodes else True
    except Exception:  # noqa: BLE001
        return True


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def _hosts(allowed: str | None, bind: str) -> tuple[str, ...] | None:
    """The names the page answers for (None: any)."""
    if allowed is None:
        return LOOPBACK_NAMES if _is_loopback(bind) else None
    names = tuple(h.strip().lower().strip("[]") for h in allowed.split(",") if h.strip())
    return None if "*" in names or not names else names


def _allowed(host: str, allowed: tuple[str, ...]) -> bool:
    name = _host_name(host)
    if not name:
        return True  # no Host header (HTTP/1.0): not a browser's request
    return name in allowed or (_is_loopback(name) and any(_is_loopback(a) for a in allowed))


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
