"""Alerts for the platform team: failing asset checks, costly experiments and failed runs -> webhook/email."""

import os

import dagster as dg

from cost_attribution.alerts.channels import Alert, AlertChannels, AlertDeliveryError
from cost_attribution.alerts.sensor import AlertCursor, AlertPolicy, build_alert_sensor, evaluate_alerts

WEBHOOK_ENV = "COST_ATTRIBUTION_ALERT_WEBHOOK_URL"
SMTP_PASSWORD_ENV = "COST_ATTRIBUTION_SMTP_PASSWORD"


def _env_or_plain(name: str, default: str = ""):
    # Non-secret settings are read as plain values when the definitions load.
    return os.environ.get(name, default)


def alert_resources() -> dict:
    """The deployed alert resources. Secrets stay dg.EnvVar references (never resolved
    into the definitions the UI shows); a secret that is not set at all disables its
    channel instead of failing every sensor tick."""
    recipients = [r.strip() for r in _env_or_plain("COST_ATTRIBUTION_ALERT_EMAIL_TO").split(",") if r.strip()]
    return {
        "alert_channels": AlertChannels(
            webhook_url=dg.EnvVar(WEBHOOK_ENV) if WEBHOOK_ENV in os.environ else "",
            smtp_host=_env_or_plain("COST_ATTRIBUTION_SMTP_HOST"),
            smtp_port=int(_env_or_plain("COST_ATTRIBUTION_SMTP_PORT", "25")),
            smtp_username=_env_or_plain("COST_ATTRIBUTION_SMTP_USER"),
            smtp_password=dg.EnvVar(SMTP_PASSWORD_ENV) if SMTP_PASSWORD_ENV in os.environ else "",
            smtp_starttls=_env_or_plain("COST_ATTRIBUTION_SMTP_STARTTLS", "false").lower() == "true",
            email_from=_env_or_plain("COST_ATTRIBUTION_ALERT_EMAIL_FROM", "cost-attribution@localhost"),
            email_to=recipients,
        ),
        "alert_policy": AlertPolicy(
            cost_threshold_usd=float(_env_or_plain("COST_ATTRIBUTION_ALERT_COST_THRESHOLD_USD", "10000")),
            min_check_severity=_env_or_plain("COST_ATTRIBUTION_ALERT_MIN_SEVERITY", "ERROR"),
            dagster_url=_env_or_plain("COST_ATTRIBUTION_DAGSTER_URL"),
        ),
    }


def alert_sensors() -> list[dg.SensorDefinition]:
    return [build_alert_sensor()]


__all__ = [
    "Alert", "AlertChannels", "AlertCursor", "AlertDeliveryError", "AlertPolicy", "alert_resources",
    "alert_sensors", "build_alert_sensor", "evaluate_alerts",
]
