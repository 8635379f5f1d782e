"""Webhook events of a training: recorded as deliveries, signed, and sent off the training's path."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from models_app.models import TrainingTask, WebhookDelivery
from models_app.services.queue import queue_send, queue_send_at

EVENTS = ("queued", "started", "progress", "checkpoint", "completed", "failed", "cancelled")
SIGNATURE_HEADER = "X-Webhook-Signature"
MAX_ATTEMPTS = 6
BACKOFF_SECONDS = (5, 30, 120, 600, 1800)


def sign(secret: str, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of the body>`: what the receiver recomputes with the team's webhook secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def payload_body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def task_payload(task: TrainingTask, event: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "event": event,
        "task_id": str(task.pk),
        "model_id": task.model.public_id if task.model_id else None,
        "status": task.status,
        "progress": task.progress,
        "current_step": task.current_step,
        "total_steps": task.total_steps,
        "eta_seconds": task.eta_seconds,
        "error_message": task.error_message,
        "sent_at": timezone.now().isoformat().replace("+00:00", "Z"),
        **(data or {}),
    }


def webhook_emit(*, task_id: Any, event: str, data: dict[str, Any] | None = None) -> WebhookDelivery | None:
    """Record the event for the task's webhook (if it has one) and, after commit, queue its delivery on
    the housekeeping cluster: no training or request ever waits for a receiver."""
    task = TrainingTask.objects.select_related("model", "team").filter(pk=task_id).first()
    if task is None or not task.webhook_url:
        return None
    delivery = WebhookDelivery.objects.create(
        team=task.team,
        task=task,
        event=event,
        url=task.webhook_url,
        payload=task_payload(task, event, data),
        next_attempt_at=timezone.now(),
    )

    transaction.on_commit(lambda: webhook_send(delivery_id=delivery.pk))
    return delivery


DELIVER_MESSAGE = "training.tasks.deliver_webhook"


def webhook_send(*, delivery_id: int, when: datetime | None = None) -> None:
    """Queue an attempt of this delivery on the housekeeping cluster, now or (a retry's back-off) at
    `when`, as a django-q2 schedule named after the delivery, so a retry moves rather than doubles."""
    if when is None:
        queue_send(DELIVER_MESSAGE, delivery_id, queue=settings.HOUSEKEEPING_QUEUE, task_name=f"webhook-{delivery_id}")
    else:
        queue_send_at(
            DELIVER_MESSAGE, delivery_id, queue=settings.HOUSEKEEPING_QUEUE, when=when, name=f"webhook-{delivery_id}"
        )


def webhook_claim_attempt(*, delivery_id: int) -> WebhookDelivery | None:
    """Take a due delivery for one attempt, or None if it is not due (delivered, given up, or already being
    attempted: the claim moves its next attempt past the attempt's own time limit, so a reaper re-send
    and a scheduled retry never post the same event twice at once, while a sender that dies mid-attempt
    leaves it due again a minute later)."""
    now = timezone.now()
    due = Q(next_attempt_at__lte=now) | Q(next_attempt_at__isnull=True)
    claimed = WebhookDelivery.objects.filter(due, pk=delivery_id, status=WebhookDelivery.Status.PENDING).update(
        next_attempt_at=now + timedelta(seconds=settings.WEBHOOK_TIMEOUT_SECONDS + 60)
    )
    if not claimed:
        return None
    return WebhookDelivery.objects.select_related("team").get(pk=delivery_id)


def webhook_record_attempt(
    *, delivery_id: int, status_code: int | None, error: str, give_up: bool = False
) -> WebhookDelivery | None:
    """Write one attempt's outcome; schedule the next with back-off, or give up after MAX_ATTEMPTS (or at once
    with `give_up`: a URL refused by the input rules will not become acceptable by waiting). None when the
    delivery was deleted meanwhile (its team or task went): there is nothing left to record."""
    with transaction.atomic():
        delivery = WebhookDelivery.objects.select_for_update().filter(pk=delivery_id).first()
        if delivery is None:
            return None
        delivery.attempts += 1
        delivery.response_status = status_code
        delivery.last_error = error[:2000]
        now = timezone.now()
        if status_code is not None and 200 <= status_code < 300:
            delivery.status = WebhookDelivery.Status.DELIVERED
            delivery.delivered_at = now
            delivery.next_attempt_at = None
        elif give_up or delivery.attempts >= MAX_ATTEMPTS:
            delivery.status = WebhookDelivery.Status.FAILED
            delivery.next_attempt_at = None
        else:
            wait = BACKOFF_SECONDS[min(delivery.attempts - 1, len(BACKOFF_SECONDS) - 1)]
            delivery.next_attempt_at = now + timedelta(seconds=wait)
        delivery.save()
        return delivery


def webhook_due_deliveries(*, overdue_seconds: float = 60, limit: int = 100) -> list[int]:
    """Deliveries whose next attempt is overdue: their queued attempt or retry schedule was lost (a
    process died between the commit and the enqueue, or mid-attempt). The reaper queues them again."""
    cutoff = timezone.now() - timedelta(seconds=overdue_seconds)
    return list(
        WebhookDelivery.objects.filter(status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=cutoff)
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
