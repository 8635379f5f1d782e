from django.db import migrations


def create_role_groups(apps, schema_editor):
    """The groups a team role grants (models_app/permissions.py). Django creates permissions after the
    migrations run, so they are made here first."""
    from django.contrib.auth.management import create_permissions

    from models_app.permissions import groups_sync

    app_config = apps.get_app_config("models_app")
    app_config.models_module = True  # the historical stub lacks it; create_permissions skips apps without
    create_permissions(app_config, verbosity=0, apps=apps)
    app_config.models_module = None
    groups_sync(apps)


def remove_role_groups(apps, schema_editor):
    from models_app.permissions import GROUPS

    apps.get_model("auth", "Group").objects.filter(name__in=GROUPS).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("models_app", "0011_housekeeping_cluster_and_attempts"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_role_groups, remove_role_groups)]
