"""Webhook targets: only public addresses unless allowed; the log keeps no response body.

The address policy is a pure function; the end-to-end tests send to loopback receivers
only (the policy is what keeps every other address out).
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from livedata.errors import InputError
from livedata.metadata.alerts import Delivery
from livedata.pipeline.notify import (
    GuardedTransport,
    Notifier,
    NotifyError,
    blocked_reason,
    check_webhook_url,
    parse_networks,
)

SECRET_BODY = "internal admin console: db password hunter2"


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("::ffff:127.0.0.1", "loopback"),
        ("192.0.2.1", "private"),
    ],
)
def test_internal_addresses_are_blocked(address: str, reason: str) -> None:
    """Loopback, private, link-local, CGNAT, multicast and reserved ranges are refused."""
    why = blocked_reason(address)
    assert why is not None and why.startswith(reason)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    """Global unicast addresses pass (nothing is sent to them here: this is the pure check)."""
    assert blocked_reason(address) is None


def test_allowed_networks_open_exactly_their_range() -> None:
    """webhook_allowed_networks lets one in-house network through, nothing more."""
    allowed = parse_networks(["10.1.2.0/24", " ", "127.0.0.1"])
    assert blocked_reason("10.1.2.77", allowed) is None
    assert blocked_reason("127.0.0.1", allowed) is None
    assert blocked_reason("10.1.3.1", allowed) is not None
    assert blocked_reason("127.0.0.2", allowed) is not None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:6379/",
        "http://[::1]/x",
        "http://localhost:8000/",
        "http://api.localhost/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5/hook",
        "ftp://example.com/",
        "http:///nohost",
    ],
)
def test_rule_urls_naming_internal_hosts_are_refused(url: str) -> None:
    """A rule's webhook URL with an internal address or localhost is a 400 when saved."""
    with pytest.raises(InputError):
        check_webhook_url(url)


def test_rule_urls_with_public_names_are_accepted() -> None:
    """Names are checked again when sending; at save time only their form is."""
    check_webhook_url("https://hooks.example.com/alerts?x=1")
    check_webhook_url("http://127.0.0.1:9000/", parse_networks(["127.0.0.1/32"]))


class _Receiver(BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []
    hosts: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        type(self).hits.append(self.path)
        type(self).hosts.append(self.headers.get("host", ""))
        body = SECRET_BODY.encode()
        self.send_response(int(self.path.rsplit("/", 1)[-1]))
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _delivery(url: str) -> Delivery:
    return Delivery(1, "demo", 1, 1, "webhook", url, '{"event":"raised"}', 0, None)


def _send(url: str, allowed: list[str]) -> None:
    notifier = Notifier(None, allowed_networks=parse_networks(allowed))  # type: ignore[arg-type]
    asyncio.run(notifier.send(_delivery(url)))


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_sending_to_loopback_is_refused_before_connecting(receiver: int, host: str) -> None:
    """A stored URL naming loopback (literal or a name resolving to it) is never connected to."""
    _Receiver.hits.clear()
    with pytest.raises(NotifyError, match="loopback address"):
        _send(f"http://{host}:{receiver}/hook/200", [])
    assert _Receiver.hits == []


def test_allowed_loopback_receiver_gets_the_webhook(receiver: int) -> None:
    """With its network allowed, the receiver gets the POST at the checked address, with the
    URL's name (not the address) in its Host header."""
    _Receiver.hits.clear()
    _Receiver.hosts.clear()
    _send(f"http://localhost:{receiver}/hook/204", ["127.0.0.0/8", "::1"])
    assert _Receiver.hits == ["/hook/204"]
    assert _Receiver.hosts == [f"localhost:{receiver}"]


def test_failed_answer_is_logged_without_its_body(receiver: int) -> None:
    """A 500 is recorded as 'HTTP 500': what the target answered is not shown to the author."""
    with pytest.raises(NotifyError) as info:
        _send(f"http://127.0.0.1:{receiver}/hook/500", ["127.0.0.1/32"])
    assert str(info.value).endswith("HTTP 500")
    assert "hunter2" not in str(info.value)


def test_https_goes_to_the_checked_address_with_the_name_as_tls_server_name(
    receiver: int, tmp_path: Path
) -> None:
    """Over HTTPS the connection goes to the checked address while TLS sends the URL's name
    (SNI) and verifies the certificate for it; a certificate for another name is refused."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test certificates")
    for name in ("localhost", "other.example"):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
             "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
             "-keyout", str(tmp_path / f"{name}.key"), "-out", str(tmp_path / f"{name}.pem")],
            check=True, capture_output=True,
        )  # fmt: skip
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    names: list[str | None] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "localhost.pem", tmp_path / "localhost.key")
    context.sni_callback = lambda _sock, name, _ctx: names.append(name)  # type: ignore[assignment]
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]

    async def post(trusted: str) -> int:
        verify = ssl.create_default_context(cafile=tmp_path / f"{trusted}.pem")
        transport = GuardedTransport(parse_networks(["127.0.0.0/8", "::1"]), verify=verify)
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.post(f"https://localhost:{port}/hook/200", content=b"{}")
        return response.status_code

    try:
        _Receiver.hosts.clear()
        assert asyncio.run(post("localhost")) == 200
        assert names == ["localhost"]
        assert _Receiver.hosts == [f"localhost:{port}"]
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            asyncio.run(post("other.example"))
    finally:
        server.shutdown()
        server.server_close()
