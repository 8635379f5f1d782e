from django.db import migrations

REAPER = "reap stale training tasks"


def create_schedule(apps, schema_editor):  # noqa: ANN001, ANN201
    schedule = apps.get_model("django_q", "Schedule")
    schedule.objects.get_or_create(
        name=REAPER,
        defaults={"func": "training.tasks.reap_stale_tasks", "schedule_type": "I", "minutes": 1, "repeats": -1},
    )


def remove_schedule(apps, schema_editor):  # noqa: ANN001, ANN201
    apps.get_model("django_q", "Schedule").objects.filter(name=REAPER).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("models_app", "0004_worker_safety"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(create_schedule, remove_schedule)]
