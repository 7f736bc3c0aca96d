"""The scheduler's notifier against real local servers: a webhook HTTP server and an aiosmtpd SMTP server.

No Sentinel stack is needed: every test starts the servers it talks to, on 127.0.0.1 and free ports.
"""

from __future__ import annotations

import email
import email.policy
import http.server
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from prometheus_client import REGISTRY
from pydantic import SecretStr
from sentinel.platform.config import Settings
from sentinel.platform.logging import JsonFormatter
from sentinel.scheduler.notify import (
    Delivery,
    Message,
    Notifier,
    NotifyError,
    SlackWebhook,
    Smtp,
    from_settings,
)

pytestmark = pytest.mark.integration

WEBHOOK_TOKEN = "xoxb-webhook-secret-9f3a7c"  # the secret part of the webhook path
SMTP_USER, SMTP_PASSWORD = "notifier", "smtp-pa55word-5e1f"
FAST = 0.001  # backoff_seconds: retries without waiting
#: aiosmtpd warns about AUTH without TLS, which is the point of these local servers.
PLAIN_AUTH = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")

MESSAGE = Message(
    subject="user service unhealthy",
    text="The user service failed 3 health checks in a row.\nOn-call has been paged.",
    fields=(("service", "user"), ("region", "eu-west-1"), ("failed checks", "3")),
    severity="critical",
)


# --- a webhook server -------------------------------------------------------------------------------

@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: Any


class WebhookServer:
    """Records the JSON POSTed to it; ``fail(status, times)`` scripts the next answers."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._script: list[tuple[int, dict[str, str]]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with outer._lock:
                    outer.requests.append(Request(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                  json.loads(raw)))
                    status, headers = outer._script.pop(0) if outer._script else (200, {})
                body = b"ok" if status == 200 else b"server_error" if status >= 500 else b"no_service"
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/services/T0001/B0001/{WEBHOOK_TOKEN}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    def fail(self, status: int, times: int, headers: dict[str, str] | None = None) -> None:
        with self._lock:
            self._script.extend([(status, headers or {})] * times)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


@pytest.fixture
def webhook() -> Iterator[WebhookServer]:
    server = WebhookServer()
    yield server
    server.close()


# --- an SMTP server ---------------------------------------------------------------------------------

@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    mail: EmailMessage
    login: str | None


@dataclass
class Recorder:
    """aiosmtpd handler: records each accepted e-mail; ``replies`` scripts the next DATA answers."""

    received: list[Received] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.replies:
            return self.replies.pop(0)
        content = envelope.original_content or b""
        mail = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(mail, EmailMessage)
        login = session.auth_data.decode() if session.authenticated and isinstance(session.auth_data, bytes) else None
        self.received.append(Received(envelope.mail_from or "", list(envelope.rcpt_tos), mail, login))
        return "250 Message accepted"


def authenticate(server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
    ok = (isinstance(auth_data, LoginPassword) and auth_data.login == SMTP_USER.encode()
          and auth_data.password == SMTP_PASSWORD.encode())
    # auth_data: what the session keeps (the login only, not the password).
    return AuthResult(success=ok, handled=False, auth_data=auth_data.login if ok else None)


def free_port() -> int:
    # aiosmtpd's Controller connects to its port once started, so it cannot be given port 0.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SmtpServer:
    controller: Controller
    recorder: Recorder

    @property
    def port(self) -> int:
        return int(self.controller.port)


def start_smtp(**kwargs: Any) -> SmtpServer:
    recorder = Recorder()
    controller = Controller(recorder, hostname="127.0.0.1", port=free_port(), **kwargs)
    controller.start()
    return SmtpServer(controller, recorder)


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    server = start_smtp()
    yield server
    server.controller.stop()


@pytest.fixture
def smtp_auth_server() -> Iterator[SmtpServer]:
    """Requires AUTH (over plain text: aiosmtpd allows it with auth_require_tls=False)."""
    server = start_smtp(authenticator=authenticate, auth_required=True, auth_require_tls=False)
    yield server
    server.controller.stop()


def smtp_channel(server: SmtpServer, **kwargs: Any) -> Smtp:
    return Smtp("127.0.0.1", server.port, "sentinel@example.com", ["oncall@example.com", "ops@example.com"],
                security="none", timeout=5.0, **kwargs)


# --- helpers ----------------------------------------------------------------------------------------

def body(mail: EmailMessage) -> str:
    """The text as written (SMTP carries it with CRLF line ends)."""
    return str(mail.get_content()).replace("\r\n", "\n")


def counted(channel: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("sentinel_notifications_total", {"channel": channel, "outcome": outcome}) or 0.0


def our_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Everything logged on the client side (aiosmtpd's own "mail.log" is the server's)."""
    return [r for r in caplog.records if not r.name.startswith("mail")]


def assert_no_secrets(caplog: pytest.LogCaptureFixture, *more: str) -> None:
    formatter = JsonFormatter("scheduler")
    for record in our_records(caplog):
        line = formatter.format(record)  # also proves the fields are JSON-able
        json.loads(line)
        for secret in (WEBHOOK_TOKEN, SMTP_PASSWORD, *more):
            assert secret not in line, f"{secret!r} logged by {record.name}: {line}"


@pytest.fixture(autouse=True)
def _no_notify_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """from_settings must see only what a test gives it, not the developer's environment."""
    for key in list(os.environ):
        if key.startswith("SENTINEL_NOTIFY_"):
            monkeypatch.delenv(key)


# --- Slack ------------------------------------------------------------------------------------------

async def test_slack_payload(webhook: WebhookServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fields = (*((f"metric {i}", f"value {i}") for i in range(12)), ("tenant", "<!channel> & co"))
    message = Message("SLO report: 99.95%", "Error budget left: *42%*.", fields, severity="warning")
    before = counted("slack", "sent")

    deliveries = await Notifier([SlackWebhook(webhook.url)], backoff_seconds=FAST).notify(message)

    assert deliveries == [Delivery("slack", ok=True, attempts=1, error="")]
    assert counted("slack", "sent") == before + 1
    [request] = webhook.requests
    assert request.path == f"/services/T0001/B0001/{WEBHOOK_TOKEN}"
    assert request.headers["content-type"] == "application/json"
    body = request.body
    assert body["text"] == "SLO report: 99.95%"
    [attachment] = body["attachments"]
    assert attachment["color"] == "#daa038"
    header, text, *sections = attachment["blocks"]
    assert header == {"type": "header", "text": {"type": "plain_text", "text": "SLO report: 99.95%", "emoji": True}}
    assert text == {"type": "section", "text": {"type": "mrkdwn", "text": "Error budget left: *42%*."}}
    # 13 fields: Slack takes at most 10 per section.
    assert [len(s["fields"]) for s in sections] == [10, 3]
    assert all(s["type"] == "section" for s in sections)
    assert sections[0]["fields"][0] == {"type": "mrkdwn", "text": "*metric 0*\nvalue 0"}
    # Escaped, so a tenant name cannot ping the whole channel.
    assert sections[1]["fields"][2]["text"] == "*tenant*\n&lt;!channel&gt; &amp; co"
    # httpx logs each request URL at INFO: the webhook path is blanked out of it.
    [httpx_line] = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert "HTTP Request: POST" in httpx_line and "***" in httpx_line
    assert_no_secrets(caplog)


@pytest.mark.parametrize(("severity", "color"), [
    ("ok", "#2eb886"), ("warning", "#daa038"), ("critical", "#a30200"), ("info", "#439fe0"),
    ("CRITICAL", "#a30200"), ("bogus", "#439fe0"),
])
def test_slack_colors(severity: str, color: str) -> None:
    payload = SlackWebhook("https://hooks.slack.com/services/T/B/x").payload(Message("s", "", severity=severity))
    assert payload["attachments"][0]["color"] == color
    # No text and no fields: only the header (Slack refuses an empty section).
    assert [b["type"] for b in payload["attachments"][0]["blocks"]] == ["header"]


async def test_slack_500_then_ok(webhook: WebhookServer) -> None:
    webhook.fail(500, 1)
    deliveries = await Notifier([SlackWebhook(webhook.url)], backoff_seconds=FAST).notify(MESSAGE)
    assert deliveries == [Delivery("slack", ok=True, attempts=2)]
    assert len(webhook.requests) == 2
    assert webhook.requests[0].body == webhook.requests[1].body


async def test_slack_429_retry_after(webhook: WebhookServer) -> None:
    channel = SlackWebhook(webhook.url)
    webhook.fail(429, 1, {"Retry-After": "0"})
    with pytest.raises(NotifyError) as caught:
        await channel.send(MESSAGE)
    assert caught.value.retry_after == 0.0 and caught.value.retryable
    assert "HTTP 429" in str(caught.value)

    webhook.fail(429, 1, {"Retry-After": "0"})
    assert await Notifier([channel], backoff_seconds=FAST).notify(MESSAGE) == [Delivery("slack", True, 2)]

    # A Retry-After longer than the backoff wins.
    webhook.fail(429, 1, {"Retry-After": "1"})
    start = time.monotonic()
    assert await Notifier([channel], backoff_seconds=FAST).notify(MESSAGE) == [Delivery("slack", True, 2)]
    assert time.monotonic() - start >= 0.9
    assert len(webhook.requests) == 5


async def test_slack_4xx_is_not_retried(webhook: WebhookServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    webhook.fail(404, 1)
    [delivery] = await Notifier([SlackWebhook(webhook.url)], retries=3, backoff_seconds=FAST).notify(MESSAGE)
    assert (delivery.ok, delivery.attempts) == (False, 1)
    assert delivery.error == "Slack webhook answered HTTP 404: no_service"
    assert len(webhook.requests) == 1
    assert_no_secrets(caplog)


async def test_failing_channel_does_not_stop_the_other(webhook: WebhookServer, smtp_server: SmtpServer,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    webhook.fail(500, 100)
    failed_before, smtp_before = counted("slack", "failed"), counted("smtp", "sent")
    notifier = Notifier([SlackWebhook(webhook.url), smtp_channel(smtp_server)], retries=2, backoff_seconds=FAST)

    slack, smtp = await notifier.notify(MESSAGE)

    assert (slack.channel, slack.ok, slack.attempts) == ("slack", False, 3)
    assert slack.error == "Slack webhook answered HTTP 500: server_error"
    assert len(webhook.requests) == 3
    assert smtp == Delivery("smtp", ok=True, attempts=1)
    assert len(smtp_server.recorder.received) == 1
    assert counted("slack", "failed") == failed_before + 1
    assert counted("smtp", "sent") == smtp_before + 1

    # Two retries logged as warnings, then the failure as an error with its fields.
    records = [r for r in caplog.records if r.name == "sentinel.notify"]
    assert [r.levelname for r in records] == ["WARNING", "WARNING", "ERROR"]
    final = records[-1]
    assert (final.channel, final.attempts, final.subject) == ("slack", 3, MESSAGE.subject)  # type: ignore[attr-defined]
    assert final.error == slack.error  # type: ignore[attr-defined]
    assert_no_secrets(caplog)


async def test_slack_unreachable(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"http://127.0.0.1:{free_port()}/services/T0001/B0001/{WEBHOOK_TOKEN}"  # nobody listens
    [delivery] = await Notifier([SlackWebhook(url, timeout=2.0)], retries=1, backoff_seconds=FAST).notify(MESSAGE)
    assert (delivery.ok, delivery.attempts) == (False, 2)
    assert delivery.error.startswith("Slack webhook unreachable: ConnectError")
    assert WEBHOOK_TOKEN not in delivery.error and "127.0.0.1" not in delivery.error
    assert_no_secrets(caplog)


def test_slack_validation() -> None:
    for url in (f"hooks.slack.com/services/T/B/{WEBHOOK_TOKEN}", f"https://hooks.slack.com:{WEBHOOK_TOKEN}/x"):
        with pytest.raises(ValueError, match="URL") as caught:
            SlackWebhook(url)
        assert WEBHOOK_TOKEN not in str(caught.value)
    assert WEBHOOK_TOKEN not in repr(SlackWebhook(f"https://hooks.slack.com/services/T/B/{WEBHOOK_TOKEN}"))


# --- e-mail -----------------------------------------------------------------------------------------

async def test_smtp_email(smtp_server: SmtpServer) -> None:
    notifier = Notifier([smtp_channel(smtp_server)], backoff_seconds=FAST)
    warning = Message("burn rate high", "5% of the budget in an hour.", (("slo", "availability"), ("burn", "14.4x")),
                      severity="warning")

    assert await notifier.notify(MESSAGE) == [Delivery("smtp", ok=True, attempts=1)]
    assert await notifier.notify(warning) == [Delivery("smtp", ok=True, attempts=1)]
    assert await notifier.notify(Message("all good", "Recovered.", severity="ok")) == [Delivery("smtp", True, 1)]

    critical, warned, ok = smtp_server.recorder.received
    assert critical.mail_from == "sentinel@example.com"
    assert critical.rcpt_tos == ["oncall@example.com", "ops@example.com"]
    mail = critical.mail
    assert mail["Subject"] == "[CRITICAL] user service unhealthy"
    assert mail["From"] == "sentinel@example.com"
    assert mail["To"] == "oncall@example.com, ops@example.com"
    assert mail["Message-ID"].endswith("@example.com>") and mail["Date"]
    assert mail.get_content_type() == "text/plain"
    assert body(mail) == (
        "The user service failed 3 health checks in a row.\nOn-call has been paged.\n"
        "\n"
        "service:       user\n"
        "region:        eu-west-1\n"
        "failed checks: 3\n"
    )
    assert warned.mail["Subject"] == "[WARNING] burn rate high"
    assert body(warned.mail).endswith("slo:  availability\nburn: 14.4x\n")
    assert ok.mail["Subject"] == "all good"
    assert body(ok.mail) == "Recovered.\n"


async def test_smtp_subject_cannot_inject_headers(smtp_server: SmtpServer) -> None:
    message = Message("tenant acme\r\nBcc: victim@example.org", "x")
    assert await Notifier([smtp_channel(smtp_server)]).notify(message) == [Delivery("smtp", True, 1)]
    [received] = smtp_server.recorder.received
    assert received.mail["Subject"] == "tenant acme Bcc: victim@example.org"
    assert received.mail["Bcc"] is None
    assert received.rcpt_tos == ["oncall@example.com", "ops@example.com"]


async def test_smtp_retries(smtp_server: SmtpServer) -> None:
    notifier = Notifier([smtp_channel(smtp_server)], retries=2, backoff_seconds=FAST)
    smtp_server.recorder.replies = ["451 4.3.0 Try again later"]
    assert await notifier.notify(MESSAGE) == [Delivery("smtp", ok=True, attempts=2)]
    assert len(smtp_server.recorder.received) == 1

    # A permanent refusal is not retried.
    smtp_server.recorder.replies = ["554 5.7.1 Rejected"] * 5
    [delivery] = await notifier.notify(MESSAGE)
    assert (delivery.ok, delivery.attempts) == (False, 1)
    assert "SMTPDataError" in delivery.error and "554" in delivery.error
    assert smtp_server.recorder.replies == ["554 5.7.1 Rejected"] * 4


@PLAIN_AUTH
async def test_smtp_auth(smtp_auth_server: SmtpServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    good = Notifier([smtp_channel(smtp_auth_server, username=SMTP_USER, password=SMTP_PASSWORD)],
                    backoff_seconds=FAST)
    assert await good.notify(MESSAGE) == [Delivery("smtp", ok=True, attempts=1)]
    [received] = smtp_auth_server.recorder.received
    assert received.login == SMTP_USER

    wrong = "wrong-pa55word-0c2d"
    bad = Notifier([smtp_channel(smtp_auth_server, username=SMTP_USER, password=wrong)], backoff_seconds=FAST)
    [delivery] = await bad.notify(MESSAGE)
    assert (delivery.ok, delivery.attempts) == (False, 1)  # bad credentials: not retried
    assert "SMTPAuthenticationError" in delivery.error
    assert wrong not in delivery.error

    # Without credentials the server refuses the mail (530): permanent as well.
    [anonymous] = await Notifier([smtp_channel(smtp_auth_server)], backoff_seconds=FAST).notify(MESSAGE)
    assert (anonymous.ok, anonymous.attempts) == (False, 1)
    assert len(smtp_auth_server.recorder.received) == 1
    assert_no_secrets(caplog, wrong)


async def test_smtp_unreachable() -> None:
    channel = Smtp("127.0.0.1", free_port(), "a@example.com", ["b@example.com"], security="none",
                   username=SMTP_USER, password=SMTP_PASSWORD, timeout=2.0)
    [delivery] = await Notifier([channel], retries=1, backoff_seconds=FAST).notify(MESSAGE)
    assert (delivery.ok, delivery.attempts) == (False, 2)
    assert "ConnectionRefusedError" in delivery.error
    assert SMTP_PASSWORD not in delivery.error and SMTP_PASSWORD not in repr(channel)


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"security": "ssl"}, "security must be one of starttls, tls, none"),
    ({"recipients": []}, "recipient"),
    ({"recipients": ["  "]}, "recipient"),
    ({"sender": ""}, "sender"),
    ({"host": ""}, "host"),
    ({"port": 0}, "port"),
    ({"password": "x"}, "without a username"),
])
def test_smtp_validation(kwargs: dict[str, Any], error: str) -> None:
    args: dict[str, Any] = {"host": "mail.example.com", "port": 587, "sender": "a@example.com",
                            "recipients": ["b@example.com"], **kwargs}
    with pytest.raises(ValueError, match=error):
        Smtp(**args)


# --- test mode and configuration --------------------------------------------------------------------

async def test_test_mode_sends_nothing(webhook: WebhookServer, smtp_server: SmtpServer,
                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    before = counted("slack", "test")
    notifier = Notifier([SlackWebhook(webhook.url), smtp_channel(smtp_server, username=SMTP_USER,
                                                                  password=SMTP_PASSWORD)], test_mode=True)

    deliveries = await notifier.notify(MESSAGE)

    assert deliveries == [Delivery("slack", ok=True, attempts=0), Delivery("smtp", ok=True, attempts=0)]
    assert notifier.sent == [MESSAGE]
    assert webhook.requests == [] and smtp_server.recorder.received == []
    assert counted("slack", "test") == before + 1
    [record] = [r for r in caplog.records if r.name == "sentinel.notify"]
    assert record.subject == MESSAGE.subject  # type: ignore[attr-defined]
    assert record.channels == ["slack", "smtp"]  # type: ignore[attr-defined]
    assert_no_secrets(caplog)


def test_notifier_configured() -> None:
    assert not Notifier([]).configured
    assert Notifier([SlackWebhook("https://hooks.slack.com/services/T/B/x")]).configured
    with pytest.raises(ValueError, match="retries"):
        Notifier([], retries=-1)


async def test_notifier_without_channels() -> None:
    assert await Notifier([]).notify(MESSAGE) == []


def test_from_settings_channels() -> None:
    assert not from_settings(Settings()).configured

    slack = from_settings(Settings(notify_slack_webhook_url=SecretStr("https://hooks.slack.com/services/T/B/x"),
                                   notify_retries=5, notify_test_mode=True))
    assert [c.name for c in slack.channels] == ["slack"]
    assert (slack.retries, slack.test_mode) == (5, True)

    smtp = from_settings(Settings(notify_smtp_host="mail.example.com", notify_smtp_from="s@example.com",
                                  notify_smtp_to=["a@example.com"], notify_smtp_security="tls", notify_smtp_port=465,
                                  notify_smtp_username="u", notify_smtp_password=SecretStr(SMTP_PASSWORD)))
    [channel] = smtp.channels
    assert isinstance(channel, Smtp)
    assert (channel.host, channel.port, channel.security, channel.recipients) == (
        "mail.example.com", 465, "tls", ("a@example.com",))
    assert SMTP_PASSWORD not in repr(channel)

    both = from_settings(Settings(notify_slack_webhook_url=SecretStr("https://hooks.slack.com/services/T/B/x"),
                                  notify_smtp_host="mail.example.com", notify_smtp_from="s@example.com",
                                  notify_smtp_to=["a@example.com"]))
    assert [c.name for c in both.channels] == ["slack", "smtp"]


@pytest.mark.parametrize(("settings", "missing"), [
    ({"notify_smtp_to": ["a@example.com"]}, "SENTINEL_NOTIFY_SMTP_FROM must"),
    ({"notify_smtp_from": "s@example.com"}, "SENTINEL_NOTIFY_SMTP_TO must"),
    ({}, "SENTINEL_NOTIFY_SMTP_FROM and SENTINEL_NOTIFY_SMTP_TO"),
    ({"notify_smtp_from": "s@example.com", "notify_smtp_to": ["a@example.com"], "notify_smtp_security": "ssl"},
     "SENTINEL_NOTIFY_SMTP_SECURITY"),
    ({"notify_smtp_from": "s@example.com", "notify_smtp_to": ["a@example.com"],
      "notify_smtp_password": SecretStr(SMTP_PASSWORD)}, "SENTINEL_NOTIFY_SMTP_USERNAME"),
])
def test_from_settings_refuses_incomplete_smtp(settings: dict[str, Any], missing: str) -> None:
    with pytest.raises(ValueError, match=missing) as caught:
        from_settings(Settings(notify_smtp_host="mail.example.com", **settings))
    assert SMTP_PASSWORD not in str(caught.value)


@PLAIN_AUTH
async def test_from_settings_end_to_end(webhook: WebhookServer, smtp_auth_server: SmtpServer,
                                        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    """Configured from the environment as in production: the secrets given as *_FILE."""
    caplog.set_level(logging.DEBUG)
    (tmp_path / "webhook").write_text(webhook.url + "\n")
    (tmp_path / "smtp-password").write_text(SMTP_PASSWORD)
    for name, value in {
        "SLACK_WEBHOOK_URL_FILE": str(tmp_path / "webhook"),
        "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp_auth_server.port), "SMTP_SECURITY": "none",
        "SMTP_FROM": "sentinel@example.com", "SMTP_TO": '["oncall@example.com"]',
        "SMTP_USERNAME": SMTP_USER, "SMTP_PASSWORD_FILE": str(tmp_path / "smtp-password"),
        "RETRIES": "1",
    }.items():
        monkeypatch.setenv(f"SENTINEL_NOTIFY_{name}", value)
    notifier = from_settings(Settings())

    assert await notifier.notify(MESSAGE) == [Delivery("slack", True, 1), Delivery("smtp", True, 1)]
    assert webhook.requests[0].body["text"] == MESSAGE.subject
    [received] = smtp_auth_server.recorder.received
    assert (received.login, received.rcpt_tos) == (SMTP_USER, ["oncall@example.com"])
    assert_no_secrets(caplog)
