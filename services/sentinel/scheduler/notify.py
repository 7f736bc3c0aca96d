"""Notifications from the scheduler (health changes, SLO reports, burn-rate alerts, invitations).

A ``Message`` (subject, plain text, label/value fields, severity) is rendered per channel:

- ``SlackWebhook``: a Slack incoming webhook. One attachment coloured by severity holds a header
  (the subject), the text and the fields (at most 10 per section, as Slack requires). The webhook
  URL is the credential, so it never appears in errors or logs (httpx's own request log included).
- ``Smtp``: an e-mail sent with the stdlib ``smtplib`` in a worker thread, over implicit TLS
  (``tls``), STARTTLS (``starttls``) or plain text (``none``: local relays and tests only).
  The subject is tagged ``[WARNING]``/``[CRITICAL]``, the fields follow the text as an aligned block.

``Notifier`` sends a message to every channel independently, retrying each with exponential
backoff (or the server's ``Retry-After`` when longer), and reports one ``Delivery`` per channel
instead of raising: a notification that cannot be sent must never break the job that sent it.
In test mode nothing leaves the process; messages are kept in ``Notifier.sent``.

``from_settings`` builds the notifier from configuration (``SENTINEL_NOTIFY_*``):

- ``SENTINEL_NOTIFY_SLACK_WEBHOOK_URL`` (give it as ``_FILE``): enables Slack.
- ``SENTINEL_NOTIFY_SMTP_HOST`` enables e-mail; ``_FROM`` and ``_TO`` (a JSON list) are then
  required; ``_PORT``, ``_SECURITY``, ``_USERNAME`` and ``_PASSWORD`` (as ``_FILE``) are optional.
- ``SENTINEL_NOTIFY_RETRIES`` (retries after the first attempt), ``SENTINEL_NOTIFY_TEST_MODE``.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import smtplib
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Protocol

import httpx
from prometheus_client import Counter

from sentinel.platform.config import Settings

log = logging.getLogger("sentinel.notify")

NOTIFICATIONS = Counter("sentinel_notifications_total",
                        "Notifications by channel and outcome (sent, failed after retries, test: not sent)",
                        ["channel", "outcome"])
for _channel in ("slack", "smtp"):  # every series exists from the start, so rate() sees the first one
    for _outcome in ("sent", "failed", "test"):
        NOTIFICATIONS.labels(_channel, _outcome)

SEVERITIES = ("info", "ok", "warning", "critical")
#: Slack attachment colours (Slack's own "good", "warning" and "danger", and a blue for info).
SLACK_COLORS = {"ok": "#2eb886", "warning": "#daa038", "critical": "#a30200", "info": "#439fe0"}
#: Slack's limits: fields per section, characters in a header, a section text and a field.
SLACK_MAX_FIELDS, SLACK_MAX_HEADER, SLACK_MAX_TEXT, SLACK_MAX_FIELD = 10, 150, 3000, 2000
SMTP_SECURITY = ("starttls", "tls", "none")
#: A longer Retry-After is cut to this: a scheduler job must not hang for an hour on one message.
MAX_RETRY_AFTER_SECONDS = 60.0


@dataclass(frozen=True)
class Message:
    """One notification, rendered per channel (Slack blocks, an e-mail)."""

    subject: str
    #: Plain-text body, one paragraph or line per entry.
    text: str
    #: Label/value pairs shown as a table (Slack fields, an aligned block in e-mail).
    fields: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    #: "info", "ok", "warning" or "critical": colour in Slack, a tag in the e-mail subject.
    severity: str = "info"

    @property
    def level(self) -> str:
        """The severity, lower-cased; anything unknown counts as "info" rather than failing the send."""
        severity = self.severity.strip().lower()
        return severity if severity in SEVERITIES else "info"

    def field_block(self) -> str:
        """The fields as aligned ``label: value`` lines (continuation lines indented to match)."""
        if not self.fields:
            return ""
        width = max(len(label) for label, _ in self.fields) + 1
        lines = []
        for label, value in self.fields:
            first, *rest = str(value).splitlines() or [""]
            lines.append(f"{label + ':':<{width}} {first}".rstrip())
            lines.extend(" " * (width + 1) + line for line in rest)
        return "\n".join(lines)


class NotifyError(Exception):
    """A channel could not deliver a message. The message never contains credentials.

    ``retry_after``: seconds the server asked us to wait (HTTP 429), or None.
    ``retryable``: False for answers that another attempt cannot change (a 404 webhook, a
    refused recipient, bad credentials), so the notifier stops at once.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, retryable: bool = True) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.retryable = retryable


class Channel(Protocol):
    """Where a message goes. ``send`` raises ``NotifyError`` when it was not delivered."""

    @property
    def name(self) -> str: ...

    async def send(self, message: Message) -> None: ...


@dataclass(frozen=True)
class Delivery:
    """The outcome for one channel: ``attempts`` is 0 in test mode (nothing was sent)."""

    channel: str
    ok: bool
    attempts: int
    error: str = ""


# --- keeping webhook URLs out of logs ---------------------------------------------------------------

_SECRETS: set[str] = set()


class _RedactSecrets(logging.Filter):
    """Blanks registered secrets in records of httpx's logger, which logs every request URL at INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _SECRETS:
            text = record.getMessage()
            redacted = _redact(text, _SECRETS)
            if redacted != text:
                record.msg, record.args = redacted, None
        return True


def _redact(text: str, secrets: set[str] | Sequence[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):  # longest first: a URL before its parts
        if secret:
            text = text.replace(secret, "***")
    return text


logging.getLogger("httpx").addFilter(_RedactSecrets())


# --- Slack ------------------------------------------------------------------------------------------

def _mrkdwn_escape(text: str) -> str:
    """Slack's required escapes: without them ``<!channel>`` in a tenant name would ping everyone."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delay-seconds or an HTTP date); None when absent or invalid."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class SlackWebhook:
    """A Slack incoming webhook. The URL is a secret: errors and logs never show it."""

    name = "slack"

    def __init__(self, url: str, *, timeout: float = 10.0, client: httpx.AsyncClient | None = None) -> None:
        url = url.strip()
        if not url.startswith(("https://", "http://")):
            raise ValueError("the Slack webhook URL must be an http(s) URL")  # never echo it
        if timeout <= 0:
            raise ValueError("the Slack webhook timeout must be positive")
        self._url = url
        self.timeout = timeout
        # Every spelling a log line or error could use: as given, as httpx normalises it, and the
        # path (the secret part of hooks.slack.com/services/T…/B…/…) when it is not trivially short.
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            raise ValueError("the Slack webhook URL is not a valid URL") from None  # its text may quote it
        path = parsed.raw_path.decode("ascii", "replace")
        self._secrets = tuple({url, str(parsed), *([path] if len(path) >= 8 else [])})
        # Without a client, each send opens its own: notifications are rare, and a client kept
        # between sends would be bound to the event loop of the first one (jobs may run each
        # in their own loop).
        self._client = client
        _SECRETS.update(self._secrets)

    def __repr__(self) -> str:
        return "SlackWebhook(url=***)"

    def payload(self, message: Message) -> dict[str, Any]:
        """The webhook JSON: a fallback text for notifications and one coloured attachment."""
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": _clip(message.subject or "-", SLACK_MAX_HEADER),
                                        "emoji": True}},
        ]
        if message.text.strip():  # Slack refuses a section with an empty text
            blocks.append({"type": "section",
                           "text": {"type": "mrkdwn", "text": _clip(_mrkdwn_escape(message.text), SLACK_MAX_TEXT)}})
        items = [{"type": "mrkdwn", "text": _clip(f"*{_mrkdwn_escape(label)}*\n{_mrkdwn_escape(value)}",
                                                  SLACK_MAX_FIELD)}
                 for label, value in message.fields]
        for start in range(0, len(items), SLACK_MAX_FIELDS):
            blocks.append({"type": "section", "fields": items[start : start + SLACK_MAX_FIELDS]})
        return {
            "text": _mrkdwn_escape(message.subject),
            "attachments": [{"color": SLACK_COLORS[message.level], "blocks": blocks}],
        }

    async def send(self, message: Message) -> None:
        """POST the payload; any answer but 2xx, or no answer, raises ``NotifyError``."""
        payload = self.payload(message)
        try:
            if self._client is not None:
                response = await self._client.post(self._url, json=payload, timeout=self.timeout)
            else:
                async with httpx.AsyncClient(timeout=self.timeout) as client:
                    response = await client.post(self._url, json=payload)
        except httpx.HTTPError as exc:
            # httpx's messages can carry the URL; "from None" keeps the cause (and it) out of tracebacks.
            detail = _redact(str(exc), self._secrets)
            raise NotifyError(f"Slack webhook unreachable: {type(exc).__name__}: {detail}"[:500]) from None
        if response.is_success:
            return
        status = response.status_code
        body = _redact(response.text.strip(), self._secrets)[:200]
        raise NotifyError(
            f"Slack webhook answered HTTP {status}" + (f": {body}" if body else ""),
            retry_after=_retry_after(response.headers.get("retry-after")) if status == 429 else None,
            # 4xx is our request or the webhook itself (invalid_payload, no_service...): permanent,
            # except a timeout and rate limiting.
            retryable=status >= 500 or status in (408, 429),
        )


# --- e-mail -----------------------------------------------------------------------------------------

def _permanent_smtp(exc: smtplib.SMTPException) -> bool:
    """A 5xx answer (or bad credentials) will be the same next time; 4xx and lost connections may not."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return all(code >= 500 for code, _ in exc.recipients.values())
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return True
    if isinstance(exc, smtplib.SMTPResponseException):
        return exc.smtp_code >= 500
    return False


class Smtp:
    """E-mail through an SMTP server (stdlib ``smtplib``, run in a thread: it blocks)."""

    name = "smtp"

    def __init__(self, host: str, port: int, sender: str, recipients: Sequence[str], *, username: str = "",
                 password: str = "", security: str = "starttls", timeout: float = 10.0) -> None:
        security = security.strip().lower()
        if security not in SMTP_SECURITY:
            raise ValueError(f"SMTP security must be one of {', '.join(SMTP_SECURITY)}, not {security!r}")
        if not host.strip():
            raise ValueError("the SMTP host is empty")
        if not 0 < port < 65536:
            raise ValueError(f"the SMTP port must be 1-65535, not {port}")
        if not sender.strip():
            raise ValueError("the SMTP sender (From) address is empty")
        recipients = [r.strip() for r in recipients if r.strip()]
        if not recipients:
            raise ValueError("at least one SMTP recipient (To) is needed")
        if password and not username:
            raise ValueError("an SMTP password is set without a username")
        if timeout <= 0:
            raise ValueError("the SMTP timeout must be positive")
        self.host, self.port, self.security, self.timeout = host.strip(), port, security, timeout
        self.sender, self.recipients = sender.strip(), tuple(recipients)
        self.username = username
        self._password = password

    def __repr__(self) -> str:
        return (f"Smtp(host={self.host!r}, port={self.port}, security={self.security!r}, "
                f"sender={self.sender!r}, recipients={list(self.recipients)!r}, username={self.username!r})")

    def email(self, message: Message) -> EmailMessage:
        """The e-mail: the subject tagged by severity, the text then the aligned fields."""
        mail = EmailMessage()
        # A line break in a header would be refused (or, elsewhere, inject headers): fold it away.
        subject = " ".join(message.subject.split())
        if message.level in ("warning", "critical"):
            subject = f"[{message.level.upper()}] {subject}"
        mail["Subject"] = subject
        mail["From"] = self.sender
        mail["To"] = ", ".join(self.recipients)
        mail["Date"] = email.utils.formatdate(localtime=False, usegmt=True)
        # An explicit domain: make_msgid() would otherwise ask DNS for this host's FQDN.
        mail["Message-ID"] = email.utils.make_msgid(domain=self.sender.rpartition("@")[2] or "sentinel.invalid")
        body = "\n\n".join(part for part in (message.text.rstrip(), message.field_block()) if part)
        mail.set_content(body + "\n")
        return mail

    def _send_blocking(self, mail: EmailMessage) -> dict[str, tuple[int, bytes]]:
        client: smtplib.SMTP
        if self.security == "tls":
            client = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=ssl.create_default_context())
        else:
            client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        with client:
            if self.security == "starttls":
                # Verified certificate and host name: the password follows over this connection.
                client.starttls(context=ssl.create_default_context())
            if self.username:
                client.login(self.username, self._password)
            return client.send_message(mail, from_addr=self.sender, to_addrs=list(self.recipients))

    async def send(self, message: Message) -> None:
        """Send the e-mail; a refused or failed transaction raises ``NotifyError``."""
        mail = self.email(message)
        try:
            refused = await asyncio.to_thread(self._send_blocking, mail)
        except (smtplib.SMTPException, OSError) as exc:  # OSError: refused, timed out, TLS failure
            detail = _redact(str(exc), [self._password])
            retryable = not _permanent_smtp(exc) if isinstance(exc, smtplib.SMTPException) else True
            raise NotifyError(f"SMTP {self.host}:{self.port}: {type(exc).__name__}: {detail}"[:500],
                              retryable=retryable) from None
        if refused:
            # Delivered to the others: sending again would duplicate their copy, so only report it.
            log.warning("some recipients refused the notification",
                        extra={"channel": self.name, "refused": sorted(refused)})


# --- the notifier -----------------------------------------------------------------------------------

class Notifier:
    """Sends each message to every channel, each retried on its own, and reports instead of raising."""

    def __init__(self, channels: Sequence[Channel], *, retries: int = 3, backoff_seconds: float = 0.5,
                 test_mode: bool = False) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if backoff_seconds < 0:
            raise ValueError("backoff_seconds must be >= 0")
        self.channels: tuple[Channel, ...] = tuple(channels)
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.test_mode = test_mode
        #: Messages notify() received in test mode, in order.
        self.sent: list[Message] = []

    @property
    def configured(self) -> bool:
        """Whether any channel exists (callers can skip rendering a report nobody receives)."""
        return bool(self.channels)

    async def notify(self, message: Message) -> list[Delivery]:
        """Deliver to every channel concurrently; one ``Delivery`` per channel, in channel order."""
        if self.test_mode:
            self.sent.append(message)
            names = [channel.name for channel in self.channels]
            log.info("test mode: notification not sent",
                     extra={"subject": message.subject, "severity": message.level, "channels": names})
            for name in names:
                NOTIFICATIONS.labels(name, "test").inc()
            return [Delivery(name, ok=True, attempts=0) for name in names]
        if not self.channels:
            log.debug("no notification channel configured", extra={"subject": message.subject})
            return []
        return list(await asyncio.gather(*(self._deliver(channel, message) for channel in self.channels)))

    def _delay(self, failures: int, error: NotifyError) -> float:
        delay: float = self.backoff_seconds * 2.0 ** (failures - 1)
        if error.retry_after is not None:
            delay = max(delay, min(error.retry_after, MAX_RETRY_AFTER_SECONDS))
        return delay

    async def _deliver(self, channel: Channel, message: Message) -> Delivery:
        name = channel.name
        attempts = 0
        while True:
            attempts += 1
            try:
                await channel.send(message)
            except NotifyError as exc:
                error = exc
            except Exception as exc:  # a bug in a channel: reported, never raised into the job
                # Only the type: an unknown exception's text might carry a credential.
                error = NotifyError(f"unexpected {type(exc).__name__} in the {name} channel", retryable=False)
            else:
                NOTIFICATIONS.labels(name, "sent").inc()
                return Delivery(name, ok=True, attempts=attempts)
            if not error.retryable or attempts > self.retries:
                NOTIFICATIONS.labels(name, "failed").inc()
                log.error("notification not delivered", extra={
                    "channel": name, "subject": message.subject, "severity": message.level,
                    "attempts": attempts, "error": str(error)})
                return Delivery(name, ok=False, attempts=attempts, error=str(error))
            delay = self._delay(attempts, error)
            log.warning("notification attempt failed; retrying", extra={
                "channel": name, "subject": message.subject, "attempt": attempts,
                "retry_in_seconds": round(delay, 3), "error": str(error)})
            await asyncio.sleep(delay)


def from_settings(settings: Settings) -> Notifier:
    """The notifier for this configuration: each channel only when its settings are present.

    Raises ``ValueError`` naming the variable to set when SMTP is half-configured, so that a
    missing recipient list fails at start and not at the first alert.
    """
    channels: list[Channel] = []
    url = settings.notify_slack_webhook_url.get_secret_value().strip()
    if url:
        channels.append(SlackWebhook(url))
    if settings.notify_smtp_host.strip():
        recipients = [to for to in settings.notify_smtp_to if to.strip()]
        missing = [var for var, present in (("SENTINEL_NOTIFY_SMTP_FROM", bool(settings.notify_smtp_from.strip())),
                                            ("SENTINEL_NOTIFY_SMTP_TO", bool(recipients)))
                   if not present]
        if missing:
            raise ValueError(f"SENTINEL_NOTIFY_SMTP_HOST is set, so {' and '.join(missing)} must be set too")
        password = settings.notify_smtp_password.get_secret_value()
        if password and not settings.notify_smtp_username:
            raise ValueError("SENTINEL_NOTIFY_SMTP_PASSWORD is set, so SENTINEL_NOTIFY_SMTP_USERNAME must be set too")
        security = settings.notify_smtp_security.strip().lower()
        if security not in SMTP_SECURITY:
            raise ValueError(f"SENTINEL_NOTIFY_SMTP_SECURITY must be one of {', '.join(SMTP_SECURITY)}, "
                             f"not {settings.notify_smtp_security!r}")
        channels.append(Smtp(settings.notify_smtp_host, settings.notify_smtp_port, settings.notify_smtp_from,
                             recipients, username=settings.notify_smtp_username, password=password,
                             security=security))
    return Notifier(channels, retries=settings.notify_retries, test_mode=settings.notify_test_mode)
