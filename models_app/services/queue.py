"""django-q2's queues as the rest of the code sees them: one place that sends messages and counts them.

There are two queues (settings.TRAINING_QUEUE and settings.HOUSEKEEPING_QUEUE, see the settings). A
message is always addressed to its queue by name: the sender may be a process of the other cluster
(the housekeeping reaper re-queues trainings), and django-q2 would otherwise use the sender's own.

The database is the truth about work; messages only wake a worker. So the reaper may count the
messages still waiting and add what is missing: a message lost between a commit and its enqueue, or
one taken by a cluster that was then killed, costs at most one reaper period.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone


def queue_send(func: str, *args: Any, queue: str, task_name: str = "", group: str = "") -> str:
    """Put a message on `queue`; returns django-q2's task id."""
    from django_q.tasks import async_task

    options: dict[str, Any] = {"cluster": queue}
    if task_name:
        options["task_name"] = task_name
    if group:
        options["group"] = group
    return str(async_task(func, *args, **options))


def queue_send_at(func: str, *args: Any, queue: str, when: datetime, name: str) -> None:
    """Run `func(*args)` once on `queue` at `when` (a django-q2 ONCE schedule; its scheduler looks every
    30 s or so). `name` identifies the schedule: sending the same name again moves it, never doubles it."""
    from django_q.models import Schedule

    Schedule.objects.update_or_create(
        name=name,
        defaults={
            "func": func,
            "args": repr(tuple(args)),
            "schedule_type": Schedule.ONCE,
            "repeats": -1,  # a ONCE schedule with negative repeats deletes itself after running
            "next_run": when,
            "cluster": queue,
        },
    )


def queue_waiting(func: str, *, queue: str) -> int | None:
    """How many messages for `func` wait on `queue` for a worker to take them; None when the broker
    cannot be read.

    A message a worker has taken is not waiting, even if that worker died with it: the ORM broker keeps
    such a row locked until django-q2's `retry` passes (hours for trainings), and Redis has already
    removed it from its list. Counting those as waiting is how a task once stayed queued for half a day.
    """
    from django_q.brokers import get_broker
    from django_q.conf import Conf
    from django_q.signing import SignedPackage

    broker = get_broker(queue)
    if Conf.ORM is not None:
        from django_q.models import OrmQ

        rows = OrmQ.objects.using(Conf.ORM).filter(key=queue, lock__lte=timezone.now())
        return sum(1 for row in rows if row.func() == func)
    if Conf.REDIS is not None or Conf.DJANGO_REDIS:
        payloads = broker.connection.lrange(broker.list_key, 0, -1)
        return sum(1 for payload in payloads if SignedPackage.loads(payload).get("func") == func)
    return None
