"""What a staff member may do in the admin follows from their role in a team: permissions as data.

Each team role maps to a Django group holding the model permissions that role needs. Django's
permissions are global, so this says *what* a member may do; *where* (their own teams' rows only) is
the admin's team scoping (admin.TeamScopedAdmin). The groups are created by a migration and kept in
step by `groups_sync` (idempotent), and a user's groups follow their memberships (`user_groups_sync`).
"""

from __future__ import annotations

from typing import Any

APP = "models_app"

# Everything a member reads in the console.
_READ = [
    f"view_{name}"
    for name in (
        "team",
        "project",
        "membership",
        "asset",
        "model",
        "trainingimage",
        "pair",
        "trainingtask",
        "trainingsample",
        "trainingcheckpoint",
        "creditentry",
        "generationjob",
        "webhookdelivery",
    )
]
# Curating datasets and running trainings: the team's everyday work.
_TRAIN = [
    "add_model",
    "change_model",
    "add_asset",
    "add_trainingimage",
    "change_trainingimage",
    "delete_trainingimage",
    "add_pair",
    "change_pair",
    "delete_pair",
    "add_trainingtask",  # start (a task is only ever created by starting a training)
    "change_trainingtask",  # cancel, priority
    "add_generationjob",
]
# Running the team: its settings, projects, people and API keys.
_ADMINISTER = [
    "change_team",
    "add_project",
    "change_project",
    "add_membership",
    "change_membership",
    "delete_membership",
    "view_apikey",
    "add_apikey",
    "change_apikey",
]

GROUPS: dict[str, list[str]] = {
    "Team trainers": _READ + _TRAIN,
    "Team admins": _READ + _TRAIN + _ADMINISTER,
}
ROLE_GROUPS: dict[str, tuple[str, ...]] = {
    "member": ("Team trainers",),
    "admin": ("Team admins",),
    "owner": ("Team admins",),
}


def groups_sync(apps: Any = None) -> None:
    """Create the role groups (or bring their permissions back to this table). `apps`: a migration's
    historical registry; the live one by default."""
    if apps is None:
        from django.apps import apps as live_apps

        apps = live_apps
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    for name, codenames in GROUPS.items():
        group, _ = group_model.objects.get_or_create(name=name)
        wanted = permission_model.objects.filter(content_type__app_label=APP, codename__in=codenames)
        group.permissions.set(wanted)


def user_groups_sync(user: Any) -> None:
    """Give the user the groups of their roles across all their teams (and take back the role groups they
    no longer hold); groups that are not role groups are left alone."""
    from django.contrib.auth.models import Group

    from models_app.models import Membership

    groups_sync()
    roles = set(Membership.objects.filter(user=user).values_list("role", flat=True))
    wanted = {name for role in roles for name in ROLE_GROUPS.get(role, ())}
    managed = Group.objects.filter(name__in=GROUPS)
    user.groups.remove(*managed.exclude(name__in=wanted))
    user.groups.add(*managed.filter(name__in=wanted))
