"""Alert notifications: webhooks (signed JSON) and e-mail (SMTP), retried until sent or failed.

Each alert event (raised, cleared) of a rule with targets gets one row per target
in the ``notifications`` table, written in the same transaction as the alert
(:meth:`~livedata.metadata.alerts.AlertStore.raise_alert`), so nothing is
lost between the two.  :class:`Notifier` takes due rows (leased, so several
copies never send one twice at the same time), sends them and records the
outcome:

* **webhook** -- ``POST`` of the stored JSON body (``{"event", "org", "rule",
  "alert"}``) with ``Content-Type: application/json``,
  ``X-Livedata-Event: raised|cleared``, ``X-Livedata-Delivery: {notification id}``
  and, when the rule has a secret, ``X-Livedata-Signature: sha256=<hex>``, the
  HMAC-SHA256 of the exact body bytes with the secret (verify it with
  :func:`signature` or ``hmac.compare_digest``).  Any 2xx answer is success.
* **e-mail** -- a plain-text message over SMTP (aiosmtplib) to the server of the
  settings ``smtp_host``/``smtp_port`` (``LIVEDATA_SMTP_HOST``/``_PORT``), from
  ``smtp_from``; STARTTLS is used when the server offers it.

Webhook targets (server-side request forgery): a webhook may only reach public
addresses.  Loopback, private (RFC 1918, fc00::/7), link-local (169.254/16, where
cloud metadata services live), carrier-grade NAT, multicast, reserved and
unspecified addresses are refused, unless they lie in one of the networks of the
setting ``webhook_allowed_networks`` (e.g. ``10.1.2.0/24`` for an in-house
receiver).  A URL naming such an address is refused when the rule is saved
(:func:`check_webhook_url`); a host name is resolved at each attempt and *every*
address it resolves to is checked, and the connection goes to the checked
address (:class:`GuardedTransport`, so DNS rebinding between check and connect does
not help).  Redirects are not followed and proxy settings from the environment
are ignored.  The notification log keeps the status of a failed answer, never
its body: a rule's author learns "HTTP 500", not what an internal server said.

Under stress: a failed attempt (connection refused, timeout after 10 s, non-2xx
answer, SMTP error, no SMTP server configured) is retried after 2 s, 4 s, 8 s …
(at most 5 minutes apart) up to ``max_attempts`` (8) attempts, then the row is
``failed`` with its last error; every attempt's error is kept in ``last_error``
and shown by ``GET …/alerts/{id}/notifications``.  Rows are in the database, so
a restart resumes them (a row leased by a process that died is taken again
after its lease of 60 s).  At most ``concurrency`` (8) sends run at once; a
slow target delays only its own rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Iterable, Sequence
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

import aiosmtplib
import httpx
import orjson

from livedata.errors import InputError
from livedata.metadata.alerts import AlertStore, Delivery

log = logging.getLogger("livedata.notify")

SIGNATURE_HEADER = "X-Livedata-Signature"


def signature(secret: str, body: bytes) -> str:
    """The ``X-Livedata-Signature`` value of ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class NotifyError(Exception):
    """One attempt to deliver a notification failed."""


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDR strings (``10.0.0.0/8``, ``fd00::/8``, a bare address) as networks."""
    return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in values if v.strip())


def blocked_reason(address: str, allowed: Sequence[IPNetwork] = ()) -> str | None:
    """Why a webhook may not go to ``address`` (an IP literal), or ``None`` if it may."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip.version == net.version and ip in net for net in allowed):
        return None
    for reason, hit in (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("unspecified", ip.is_unspecified),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private or (ip.version == 4 and ip in _CGNAT)),
        ("non-public", not ip.is_global),
    ):
        if hit:
            return f"{reason} address {ip} (allow it with the setting webhook_allowed_networks)"
    return None


def _ip_literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]").split("%", 1)[0]))
    except ValueError:
        return None


def check_webhook_url(url: str, allowed: Sequence[IPNetwork] = ()) -> None:
    """Refuse (:class:`InputError`) a webhook URL that is not http(s) or names a blocked
    address or ``localhost``; host names are checked again at every attempt."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError("the webhook URL must start with http:// or https:// and name a host")
    host = parts.hostname
    literal = _ip_literal(host)
    if literal is None and (host == "localhost" or host.endswith(".localhost")):
        literal = "127.0.0.1"
    if literal is not None:
        reason = blocked_reason(literal, allowed)
        if reason is not None:
            raise InputError(f"the webhook URL points to a {reason}")


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport that resolves the request's host itself, refuses the request when
    any of its addresses is blocked (:func:`blocked_reason`), and connects to a checked one.

    The request goes to that address: the URL's host is replaced by it while the
    ``Host`` header keeps the name, and over HTTPS the name is the TLS server name
    (``sni_hostname``), so the certificate is verified for the name.  No connection
    is kept alive: the pool would key it by the address and could reuse it for
    another name on that address, so every attempt resolves, checks and connects anew.
    """

    def __init__(
        self,
        allowed: Sequence[IPNetwork] = (),
        max_connections: int = 16,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=0)
        super().__init__(retries=0, limits=limits, verify=verify)
        self.allowed = tuple(allowed)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        host = url.host
        literal = _ip_literal(host)
        if literal is not None:
            addresses = [literal]
        else:
            port = url.port or (443 if url.scheme == "https" else 80)
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM
                )
            except OSError as exc:
                raise httpx.ConnectError(f"cannot resolve {host}: {exc}", request=request) from None
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for address in addresses:
            reason = blocked_reason(address, self.allowed)
            if reason is not None:
                raise httpx.ConnectError(f"{host} resolves to a {reason}", request=request)
        extensions = dict(request.extensions)
        if url.scheme == "https":
            extensions["sni_hostname"] = host
        for address in addresses[:-1]:
            try:
                return await self._send_to(address, request, extensions)
            except httpx.ConnectError:  # nothing was sent: try the next checked address
                continue
        return await self._send_to(addresses[-1], request, extensions)

    async def _send_to(
        self, address: str, request: httpx.Request, extensions: dict[str, Any]
    ) -> httpx.Response:
        pinned = httpx.Request(
            request.method,
            request.url.copy_with(host=address),
            headers=request.headers,  # Host: the name, set when the request was built
            stream=request.stream,
            extensions=extensions,
        )
        return await super().handle_async_request(pinned)


def webhook_client(timeout: float, allowed: Sequence[IPNetwork] = ()) -> httpx.AsyncClient:
    """An HTTP client that only reaches allowed addresses (no redirects, no env proxies)."""
    return httpx.AsyncClient(
        transport=GuardedTransport(allowed),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
    )


class Notifier:
    """Sends due notifications until cancelled; :meth:`wake` after storing new ones."""

    def __init__(
        self,
        store: AlertStore,
        *,
        smtp_host: str = "",
        smtp_port: int = 25,
        smtp_from: str = "livedata@localhost",
        max_attempts: int = 8,
        base_delay: float = 2.0,
        max_delay: float = 300.0,
        timeout: float = 10.0,
        poll_s: float = 5.0,
        concurrency: int = 8,
        allowed_networks: Sequence[IPNetwork] = (),
    ) -> None:
        self.store = store
        self.allowed_networks = tuple(allowed_networks)
        self.smtp_host = smtp_host
        self.smtp_port = smtp_port
        self.smtp_from = smtp_from
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.timeout = timeout
        self.poll_s = poll_s
        self._limit = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        self._http: httpx.AsyncClient | None = None
        self.sent = 0
        self.failed = 0

    def wake(self) -> None:
        self._wake.set()

    def retry_delay(self, attempts: int) -> float:
        """Seconds before the next try after ``attempts`` failed ones (2, 4, 8 … ≤ max)."""
        return float(min(self.max_delay, self.base_delay * 2 ** max(0, attempts - 1)))

    async def run(self) -> None:
        self._http = webhook_client(self.timeout, self.allowed_networks)
        try:
            while True:
                try:
                    await self.run_once()
                except Exception:
                    log.exception("sending notifications failed; retrying")
                await self._sleep()
        finally:
            await self._http.aclose()
            self._http = None

    async def _sleep(self) -> None:
        wait = self.poll_s
        try:
            due = await self.store.next_due_ms()
        except Exception:
            due = None
        if due is not None:
            wait = max(0.05, min(wait, due / 1000 - time.time()))
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), wait)

    async def run_once(self) -> int:
        """Send what is due now; returns how many were attempted."""
        total = 0
        while True:
            batch = await self.store.claim_due()
            if not batch:
                return total
            total += len(batch)
            await asyncio.gather(*(self._attempt(d) for d in batch))

    async def _attempt(self, delivery: Delivery) -> None:
        async with self._limit:
            error: str | None = None
            try:
                await self.send(delivery)
            except NotifyError as exc:
                error = str(exc)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            attempts = delivery.attempts + 1
            retry_at: int | None = None
            if error is not None:
                if attempts < self.max_attempts:
                    retry_at = int((time.time() + self.retry_delay(attempts)) * 1000)
                    log.warning(
                        "%s notification %d to %s failed (attempt %d), retrying: %s",
                        delivery.channel,
                        delivery.id,
                        delivery.target,
                        attempts,
                        error,
                    )
                else:
                    self.failed += 1
                    log.error(
                        "%s notification %d to %s failed after %d attempts: %s",
                        delivery.channel,
                        delivery.id,
                        delivery.target,
                        attempts,
                        error,
                    )
            else:
                self.sent += 1
            await self.store.finish(delivery.id, error, retry_at)

    async def send(self, delivery: Delivery) -> None:
        """One attempt; raises :class:`NotifyError` saying what went wrong."""
        if delivery.channel == "webhook":
            await self._webhook(delivery)
        elif delivery.channel == "email":
            await self._email(delivery)
        else:
            raise NotifyError(f"unknown channel {delivery.channel!r}")

    async def _webhook(self, delivery: Delivery) -> None:
        body = delivery.payload.encode()
        event = str(orjson.loads(body).get("event", ""))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "livedata-alerts",
            "X-Livedata-Event": event,
            "X-Livedata-Delivery": str(delivery.id),
        }
        if delivery.secret:
            headers[SIGNATURE_HEADER] = signature(delivery.secret, body)
        client = self._http or webhook_client(self.timeout, self.allowed_networks)
        try:
            response = await client.post(delivery.target, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise NotifyError(f"POST {delivery.target}: {type(exc).__name__}: {exc}") from None
        finally:
            if client is not self._http:
                await client.aclose()
        if not 200 <= response.status_code < 300:
            # the status only: the body of an internal server's answer is not for the log
            raise NotifyError(f"POST {delivery.target}: HTTP {response.status_code}")

    async def _email(self, delivery: Delivery) -> None:
        if not self.smtp_host:
            raise NotifyError("no SMTP server configured: set smtp_host (LIVEDATA_SMTP_HOST)")
        message = email_message(orjson.loads(delivery.payload), self.smtp_from, delivery.target)
        try:
            await aiosmtplib.send(
                message, hostname=self.smtp_host, port=self.smtp_port, timeout=self.timeout
            )
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise NotifyError(
                f"SMTP {self.smtp_host}:{self.smtp_port}: {type(exc).__name__}: {exc}"
            ) from None


def email_message(body: dict[str, Any], sender: str, recipient: str) -> EmailMessage:
    """The e-mail of one alert event."""
    alert = body.get("alert") or {}
    rule = body.get("rule") or {}
    event = body.get("event", "raised")
    severity = str(alert.get("severity", rule.get("severity", ""))).upper()
    name = alert.get("ruleName") or rule.get("name") or "alert"
    chassis = alert.get("chassisId", "?")
    if event == "cleared":
        subject = f"[RESOLVED] {name} on {chassis}"
    else:
        subject = f"[{severity}] {name} on {chassis}"
    lines = [
        f"{'Resolved' if event == 'cleared' else 'Alert'}: {name}",
        "",
        f"Organisation: {body.get('org', '')}",
        f"Machine:      {chassis}",
        f"Severity:     {severity.lower()}",
        f"Rule:         {rule.get('description', '')}",
        f"Detail:       {alert.get('message', '')}",
        f"Raised:       {_when(alert.get('raisedMs'))}",
    ]
    if event == "cleared":
        lines.append(f"Cleared:      {_when(alert.get('clearedMs'))}")
    lines += ["", f"Alert id {alert.get('id')}; sent by livedata."]
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message["X-Livedata-Alert"] = str(alert.get("id", ""))
    message.set_content("\n".join(lines) + "\n")
    return message


def _when(ms: Any) -> str:
    if not isinstance(ms, int):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


__all__ = ["SIGNATURE_HEADER", "Notifier", "NotifyError", "email_message", "signature"]
