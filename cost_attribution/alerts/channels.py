"""Where alerts go: a Slack incoming webhook and/or email over SMTP.

Both channels live in one configured resource so the sensor has a single thing to
call. Secrets (the webhook URL, which is a bearer credential in Slack's design, and
the SMTP password) come from dg.EnvVar in the deployed Definitions; tests pass plain
values pointing at loopback servers. An empty webhook URL / SMTP host disables that
channel.
"""

from __future__ import annotations

import json
import smtplib
import urllib.request
from dataclasses import dataclass, field
from email.message import EmailMessage

import dagster as dg


@dataclass
class Alert:
    kind: str  # "asset_check_failed" | "cost_over_threshold"
    dedup_key: str
    title: str
    lines: list[str]
    fields: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        body = [self.title, *self.lines, *(f"{k}: {v}" for k, v in self.fields.items())]
        return "\n".join(body)

    def slack_payload(self) -> dict:
        """Slack incoming-webhook JSON: `text` is the notification fallback, `blocks` the message."""
        detail = "\n".join(self.lines)
        fields = [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in list(self.fields.items())[:10]]
        blocks: list[dict] = [
            {"type": "header", "text": {"type": "plain_text", "text": self.title[:150]}},
        ]
        if detail:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": detail[:3000]}})
        if fields:
            blocks.append({"type": "section", "fields": fields})
        return {"text": self.text()[:3000], "blocks": blocks}


class AlertDeliveryError(RuntimeError):
    pass


class AlertChannels(dg.ConfigurableResource):
    """Alert destinations of the platform team."""

    webhook_url: str = ""
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_starttls: bool = False
    email_from: str = "cost-attribution@localhost"
    email_to: list[str] = []
    timeout_seconds: float = 10.0

    @property
    def enabled(self) -> list[str]:
        channels = []
        if self.webhook_url:
            channels.append("webhook")
        if self.smtp_host and self.email_to:
            channels.append("email")
        return channels

    def post_webhook(self, alert: Alert) -> None:
        request = urllib.request.Request(
            self.webhook_url,
            data=json.dumps(alert.slack_payload()).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
            if response.status >= 300:
                raise AlertDeliveryError(f"webhook answered {response.status}")

    def send_email(self, alert: Alert) -> None:
        message = EmailMessage()
        message["Subject"] = alert.title
        message["From"] = self.email_from
        message["To"] = ", ".join(self.email_to)
        message.set_content(alert.text())
        with smtplib.SMTP(self.smtp_host, self.smtp_port, timeout=self.timeout_seconds) as smtp:
            if self.smtp_starttls:
                smtp.starttls()
            if self.smtp_username:
                smtp.login(self.smtp_username, self.smtp_password)
            smtp.send_message(message)

    def send(self, alert: Alert) -> tuple[list[str], list[str]]:
        """Deliver on every enabled channel. Returns (delivered, errors). An alert counts
        as sent once one channel took it: retrying would duplicate it on the others."""
        delivered, errors = [], []
        senders = {"webhook": self.post_webhook, "email": self.send_email}
        for channel in self.enabled:
            try:
                senders[channel](alert)
                delivered.append(channel)
            except Exception as error:  # network, HTTP or SMTP failure: reported, retried next tick
                errors.append(f"{channel}: {type(error).__name__}: {error}")
        return delivered, errors
