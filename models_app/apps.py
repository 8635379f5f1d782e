from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class ModelsAppConfig(AppConfig):
    name = "models_app"
    verbose_name = "Training platform"
    default_auto_field = "django.db.models.BigAutoField"


class ConsoleAdminConfig(admin_apps.AdminConfig):
    """Django's admin with the training dashboard as its index (models_app.admin_dashboard); named in
    INSTALLED_APPS in place of django.contrib.admin. `admin.site` and `@admin.register` are unchanged."""

    default = False  # not a candidate for models_app's own config
    default_site = "models_app.admin_dashboard.ConsoleAdminSite"
