"""Alerts for the platform team: failing asset checks, costly experiments and failed runs -> webhook/email."""

import dagster as dg

from cost_attribution import environment as env
from cost_attribution.alerts.channels import Alert, AlertChannels, AlertDeliveryError
from cost_attribution.alerts.sensor import AlertCursor, AlertPolicy, build_alert_sensor, evaluate_alerts


def alert_resources() -> dict:
    """The deployed alert resources. Secrets stay dg.EnvVar references (never resolved
    into the definitions the UI shows); a secret that is not set at all disables its
    channel instead of failing every sensor tick. Non-secret settings are read as plain
    values when the definitions load."""
    recipients = [r.strip() for r in env.get(env.ALERT_EMAIL_TO_ENV).split(",") if r.strip()]
    return {
        "alert_channels": AlertChannels(
            webhook_url=dg.EnvVar(env.ALERT_WEBHOOK_ENV) if env.is_set(env.ALERT_WEBHOOK_ENV) else "",
            smtp_host=env.get(env.SMTP_HOST_ENV),
            smtp_port=int(env.get(env.SMTP_PORT_ENV, "25")),
            smtp_username=env.get(env.SMTP_USER_ENV),
            smtp_password=dg.EnvVar(env.SMTP_PASSWORD_ENV) if env.is_set(env.SMTP_PASSWORD_ENV) else "",
            smtp_starttls=env.smtp_starttls(),
            email_from=env.get(env.ALERT_EMAIL_FROM_ENV, "cost-attribution@localhost"),
            email_to=recipients,
        ),
        "alert_policy": AlertPolicy(
            min_check_severity=env.get(env.ALERT_MIN_SEVERITY_ENV, "ERROR"),
            dagster_url=env.get(env.DAGSTER_URL_ENV),
        ),
    }


def alert_sensors() -> list[dg.SensorDefinition]:
    return [build_alert_sensor()]


__all__ = [
    "Alert", "AlertChannels", "AlertCursor", "AlertDeliveryError", "AlertPolicy", "alert_resources",
    "alert_sensors", "build_alert_sensor", "evaluate_alerts",
]
