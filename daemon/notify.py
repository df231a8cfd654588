"""Builds the configured notifiers (the daemon is the only place that does)."""

from __future__ import annotations

import httpx

from tfwarden.daemon.config import Config
from tfwarden.lifecycle.notifiers.alertmanager import AlertmanagerNotifier, WebhookNotifier
from tfwarden.lifecycle.notifiers.base import Notifier


def notifiers_from(config: Config, client: httpx.AsyncClient) -> list[Notifier]:
    alerting = config.alerting
    notifiers: list[Notifier] = []
    if alerting.alertmanager is not None:
        notifiers.append(AlertmanagerNotifier(str(alerting.alertmanager.url), client,
                                              alerting.alertmanager.timeout_seconds))
    for hook in alerting.webhooks:
        notifier = WebhookNotifier(str(hook.url), client, hook.timeout_seconds)
        notifier.name = f"webhook:{hook.url}"
        notifiers.append(notifier)
    return notifiers
