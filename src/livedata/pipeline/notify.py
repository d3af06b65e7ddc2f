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
import logging
import time
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import httpx
import orjson

from livedata.metadata.alerts import AlertStore, Delivery

log = logging.getLogger("livedata.notify")

SIGNATURE_HEADER = "X-Livedata-Signature"


def signature(secret: str, body: bytes) -> str:
    """The ``X-Livedata-Signature`` value of ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class NotifyError(Exception):
    """One attempt to deliver a notification failed."""


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
    ) -> None:
        self.store = store
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
        self._http = httpx.AsyncClient(timeout=self.timeout, follow_redirects=False)
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
        client = self._http or httpx.AsyncClient(timeout=self.timeout)
        try:
            response = await client.post(delivery.target, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise NotifyError(f"POST {delivery.target}: {type(exc).__name__}: {exc}") from None
        finally:
            if client is not self._http:
                await client.aclose()
        if not 200 <= response.status_code < 300:
            raise NotifyError(
                f"POST {delivery.target}: HTTP {response.status_code} {response.text[:200]}"
            )

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
