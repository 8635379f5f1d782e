"""Sending webhook deliveries from a background thread, so a slow or failing receiver never slows training.

Each process has one sender thread with a queue; an attempt that fails is recorded and retried after
its back-off by the same thread, and the reaper re-submits deliveries whose process died.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time

import httpx
from django.conf import settings
from django.db import close_old_connections, connection

from models_app.errors import InvalidInput
from models_app.models import WebhookDelivery
from models_app.services.image_sources import check_url_host
from models_app.services.webhooks import SIGNATURE_HEADER, payload_body, sign, webhook_record_attempt

logger = logging.getLogger(__name__)


def deliver(delivery_id: int) -> WebhookDelivery | None:
    """One attempt: POST the signed payload, record the outcome. None if the delivery no longer exists."""
    delivery = WebhookDelivery.objects.select_related("team").filter(pk=delivery_id).first()
    if delivery is None or delivery.status != WebhookDelivery.Status.PENDING:
        return delivery
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
    except Exception as exc:  # any failure of the receiver is recorded, never raised into training
        error = f"{type(exc).__name__}: {exc}"
    return webhook_record_attempt(delivery_id=delivery_id, status_code=status_code, error=error)


class WebhookSender:
    def __init__(self) -> None:
        self._due: list[tuple[float, int]] = []
        self._stopped = False
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="webhook-sender", daemon=True)
        self._thread.start()

    def submit(self, delivery_id: int, *, at: float | None = None) -> None:
        with self._condition:
            heapq.heappush(self._due, (at or time.monotonic(), delivery_id))
            self._condition.notify()

    def stop(self, *, timeout: float) -> None:
        """Stop after the attempt in flight; deliveries still due stay pending in the database, where the
        reaper finds them."""
        with self._condition:
            self._stopped = True
            self._condition.notify()
        self._thread.join(timeout=timeout)

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._stopped and (not self._due or self._due[0][0] > time.monotonic()):
                    timeout = self._due[0][0] - time.monotonic() if self._due else None
                    self._condition.wait(timeout=timeout)
                if self._stopped:
                    return
                _, delivery_id = heapq.heappop(self._due)
            try:
                close_old_connections()
                delivery = deliver(delivery_id)
                if delivery and delivery.status == WebhookDelivery.Status.PENDING and delivery.next_attempt_at:
                    from django.utils import timezone

                    wait = (delivery.next_attempt_at - timezone.now()).total_seconds()
                    self.submit(delivery_id, at=time.monotonic() + max(0.0, wait))
            except Exception:
                logger.exception("webhook delivery %s could not be attempted", delivery_id)
            finally:
                connection.close()


_sender: WebhookSender | None = None
_sender_lock = threading.Lock()


def sender() -> WebhookSender:
    """This process's sender, started on first use (after a fork, the child starts its own)."""
    global _sender
    with _sender_lock:
        if _sender is None or not _sender._thread.is_alive():
            _sender = WebhookSender()
        return _sender


def stop_sender(*, timeout: float = 30.0) -> None:
    """Stop this process's sender thread, if one runs (a test's end, a process shutting down)."""
    global _sender
    with _sender_lock:
        running, _sender = _sender, None
    if running is not None:
        running.stop(timeout=timeout)
