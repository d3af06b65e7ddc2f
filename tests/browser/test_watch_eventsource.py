"""The browser's own EventSource on /db/watch in Chromium: the reference page's code, and its reconnect."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.browser.conftest import DEMO_ADMIN, admin_password, login
from tests.conftest import Server

pytestmark = pytest.mark.browser


class TcpProxy:
    """A loopback TCP relay in front of the server, so a test can cut live connections."""

    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self.upstream = ("127.0.0.1", parts.port or 80)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.requests: list[bytearray] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                return
            upstream.settimeout(None)
            head = bytearray()
            with self._lock:
                self.requests.append(head)
                self._sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, head), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, None), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, head: bytearray | None) -> None:
        try:
            while data := src.recv(65536):
                if head is not None and len(head) < 65536:
                    head += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def drop(self) -> None:
        """Cut every open connection, as a network failure would."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def watch_requests(self) -> list[str]:
        """The head of every watch request made through the proxy, in order."""
        with self._lock:
            streams = [bytes(h).decode(errors="replace") for h in self.requests]
        heads = [h for s in streams for h in s.split("\r\n\r\n") if h]
        return [h for h in heads if h.startswith("GET /db/watch/")]

    def close(self) -> None:
        self.listener.close()
        self.drop()


@pytest.fixture
def page(browser: Any, demo: Server) -> Iterator[Any]:
    """A tab logged in to the demo: EventSource sends the session cookie (no code change)."""
    context = browser.new_context()
    login(context, demo.url, DEMO_ADMIN, admin_password(demo))
    yield context.new_page()
    context.close()


def write(server: Server, table: str, name: str, value: float) -> None:
    body = {"data": {"rows": [[name, int(time.time() * 1000), value]]}}
    response = requests.post(
        f"{server.url}/db/write/{table}",
        params={"timeformat": "ms"},
        json=body,
        headers=server.headers,
        timeout=10,
    )
    assert response.status_code == 200, response.text


REFERENCE_PAGE = """(addr) => {
  document.body.innerHTML = '<h1>Server-Sent Events Example</h1><div id="messages"></div>';
  // from here on the reference page's script, with its address passed in
  const params = 'tag=neo_load1&tag=neo_load5&period=3s&keep-alive=30s&timeformat=default';
  const eventSource = new EventSource(`${addr}?${params}`);
  const messagesDiv = document.getElementById('messages');
  eventSource.onmessage = function (event) {
    const pre = document.createElement('pre');
    const msg = JSON.parse(event.data);
    pre.textContent = event.data + ' => ' + msg.NAME + ':' + msg.VALUE;
    messagesDiv.appendChild(pre);
  };
  eventSource.onerror = function (event) {
    console.error('EventSource failed:', event);
  };
  window.eventSource = eventSource;
}"""


def test_reference_javascript_example(demo: Server, page: Any) -> None:
    """Machbase's JavaScript example runs unchanged in Chromium and shows both tags' values."""
    stop = threading.Event()

    def keep_writing() -> None:
        n = 0
        while not stop.is_set():
            write(demo, "example", "neo_load1", round(2 + n / 100, 2))
            write(demo, "example", "neo_load5", round(3 + n / 100, 2))
            n += 1
            stop.wait(0.8)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        time.sleep(0.3)
        page.goto(f"{demo.url}/healthz")
        page.evaluate(REFERENCE_PAGE, f"{demo.url}/db/watch/EXAMPLE")
        page.wait_for_function(
            "document.querySelectorAll('#messages pre').length >= 4", timeout=8000
        )
        lines = page.eval_on_selector_all("#messages pre", "els => els.map(e => e.textContent)")
    finally:
        page.evaluate("window.eventSource && window.eventSource.close()")
        stop.set()
        writer.join()
    assert [e for e in errors if "EventSource" in e] == []
    names = [line.split(" => ")[1].split(":")[0] for line in lines[:4]]
    assert names == ["neo_load1", "neo_load5", "neo_load1", "neo_load5"]
    for line in lines[:4]:
        data, shown = line.split(" => ")
        assert '"TIME":"20' in data  # timeformat=default: a readable date-time
        assert shown.split(":")[1] in data


def test_eventsource_reconnect_loses_nothing(demo: Server, page: Any) -> None:
    """After a dropped connection Chromium reconnects with Last-Event-ID and misses no value."""
    table = f"t{uuid.uuid4().hex[:10]}"
    write(demo, table, "n", 0)
    proxy = TcpProxy(demo.url)
    stop = threading.Event()
    written: list[int] = []

    def count() -> None:
        n = 0
        while not stop.wait(1.2):
            n += 1
            write(demo, table, "n", n)
            written.append(n)

    try:
        # The proxy's host (127.0.0.1) is not the demo's (localhost): its own session cookie.
        login(page.context, proxy.url, DEMO_ADMIN, admin_password(demo))
        page.goto(f"{proxy.url}/healthz")
        page.evaluate(
            """(url) => {
              window.values = []; window.errors = 0;
              const es = new EventSource(url);
              es.onmessage = (e) => window.values.push(JSON.parse(e.data).VALUE);
              es.onerror = () => { window.errors += 1; };
              window.es = es;
            }""",
            f"{proxy.url}/db/watch/{table}?tag=n&period=1s",
        )
        page.wait_for_function("window.values.length >= 1", timeout=5000)
        writer = threading.Thread(target=count)
        writer.start()
        page.wait_for_function("window.values.length >= 3", timeout=8000)
        proxy.drop()
        page.wait_for_function("window.values.length >= 7", timeout=15000)
        values = page.evaluate("window.values")
        errors = page.evaluate("window.errors")
        page.evaluate("window.es.close()")
    finally:
        stop.set()
        proxy.close()
    writer.join()
    assert values[:7] == list(range(7)), values
    assert errors >= 1  # the drop was seen, and EventSource reconnected by itself
    watches = proxy.watch_requests()
    assert len(watches) >= 2
    assert "last-event-id:" in watches[-1].lower()
