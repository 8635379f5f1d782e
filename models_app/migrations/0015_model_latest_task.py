from django.db import migrations, models
from django.db.models import OuterRef, Subquery


def set_latest_tasks(apps, schema_editor):
    """Each existing model's newest task, as training_start records it from now on."""
    Model = apps.get_model("models_app", "Model")
    TrainingTask = apps.get_model("models_app", "TrainingTask")
    newest = TrainingTask.objects.filter(model_id=OuterRef("uuid")).order_by("-created_at", "-pk").values("pk")[:1]
    Model.objects.update(latest_task=Subquery(newest))


class Migration(migrations.Migration):
    dependencies = [
        ("models_app", "0014_asset_thumbnail"),
    ]

    operations = [
        migrations.AddField(
            model_name="model",
            name="latest_task",
            field=models.ForeignKey(
                blank=True,
                editable=False,
                null=True,
                on_delete=models.deletion.SET_NULL,
                related_name="+",
                to="models_app.trainingtask",
            ),
        ),
        migrations.RunPython(set_latest_tasks, migrations.RunPython.noop),
    ]
