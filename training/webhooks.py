"""Webhook deliveries, run as django-q2 tasks on the housekeeping cluster.

Each attempt is one task: it claims the delivery (so two copies of a message never post twice at once),
POSTs the signed payload, records the outcome, and for a failure schedules the next attempt after its
back-off as a django-q2 schedule. Nothing lives in a process's memory: a worker that dies loses at most
the attempt in flight, which the reaper queues again once it is overdue.
"""

from __future__ import annotations

import httpx
from django.conf import settings

from models_app.errors import InvalidInput
from models_app.models import WebhookDelivery
from models_app.services.image_sources import check_url_host
from models_app.services.webhooks import (
    SIGNATURE_HEADER,
    payload_body,
    sign,
    webhook_claim_attempt,
    webhook_record_attempt,
    webhook_send,
)


def deliver(delivery_id: int) -> WebhookDelivery | None:
    """One attempt, if the delivery is due: POST the signed payload and record the outcome. Returns the
    delivery as it now stands (unchanged when it was not due), None if it no longer exists."""
    delivery = webhook_claim_attempt(delivery_id=delivery_id)
    if delivery is None:
        return WebhookDelivery.objects.filter(pk=delivery_id).first()
    body = payload_body(delivery.payload)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "image-training-platform-webhooks",
        SIGNATURE_HEADER: sign(delivery.team.webhook_secret, body),
        "X-Webhook-Event": delivery.event,
        "X-Webhook-Delivery": str(delivery.pk),
    }
    status_code: int | None = None
    error = ""
    try:
        # Checked again at every delivery: a name may resolve elsewhere now than when it was configured.
        check_url_host(delivery.url, "webhook_url")
    except InvalidInput as exc:
        return webhook_record_attempt(delivery_id=delivery_id, status_code=None, error=exc.message, give_up=True)
    try:
        with httpx.Client(timeout=settings.WEBHOOK_TIMEOUT_SECONDS, follow_redirects=False) as client:
            response = client.post(delivery.url, content=body, headers=headers)
        status_code = response.status_code
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}"
    except Exception as exc:  # any failure of the receiver is recorded as the attempt's outcome
        error = f"{type(exc).__name__}: {exc}"
    return webhook_record_attempt(delivery_id=delivery_id, status_code=status_code, error=error)


def deliver_and_schedule(delivery_id: int) -> str:
    """The django-q2 task: one attempt, then the retry scheduled at its back-off if one is due later."""
    delivery = deliver(delivery_id)
    if delivery is None:
        return "gone"
    if delivery.status == WebhookDelivery.Status.PENDING and delivery.next_attempt_at is not None:
        webhook_send(delivery_id=delivery_id, when=delivery.next_attempt_at)
    return str(delivery.status)
