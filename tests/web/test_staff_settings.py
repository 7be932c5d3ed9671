"""Project settings as a form: every LiveConfig setting shown with its default and meaning, the raw
JSON still there, a warning when the pool does not fit the settings, and after start only the
settings that may still change."""
from __future__ import annotations

import re

import pytest
from django.test import Client

from labeling import config_fields, project_settings, services, workflow
from labeling.forms import _to_form
from labeling.models import Project
from learner.live import LiveConfig
from tests.web.factories import ItemFactory, ProjectFactory, StaffFactory
from tests.web.labeling_support import labeling_dirs  # noqa: F401

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client():
    c = Client()
    c.force_login(StaffFactory(username="settings_boss"))
    return c


def test_every_setting_has_an_explanation_and_a_group():
    import dataclasses

    names = [f.name for f in dataclasses.fields(LiveConfig)]
    assert list(config_fields.FIELDS) == names
    for info in config_fields.FIELDS.values():
        assert info.help and info.label != info.name and info.group in dict(config_fields.GROUPS), (
            f"LiveConfig.{info.name} has no explanation for the staff form: add it to labeling/config_fields.py _INFO")
        assert info.editable_after_start or info.locked_reason, info.name
    assert set(config_fields.LIVE_EDITABLE) <= set(names)


def test_new_project_page_shows_each_default_and_its_meaning(staff_client):
    html = staff_client.get("/labeling/staff/projects/new/").content.decode()
    defaults = LiveConfig().to_dict()
    for name, info in config_fields.FIELDS.items():
        block = re.search(rf'<div class="setting[^"]*" id="setting-{name}">(.*?)</div>', html, re.S)
        assert block, name
        text = block.group(1)
        assert f'data-setting="{name}"' in text and info.help[:30].replace("'", "&#x27;") in text, name
        shown = _to_form(info, defaults[name])
        assert f"Default: <code>{shown if shown != '' else 'empty'}</code>" in text, name
    assert 'name="config"' in html and "Advanced: the settings as JSON" in html
    assert 'id="pool-fit"' in html and "No images yet. Start will need more than 70" in html


def test_new_project_from_the_form_fields(staff_client):
    data = {"name": "form made", "classes": "cat, dog", "description": "Label the animal.", "strategy": "margin",
            "batch_size": "7", "budget": "", "target": "0.9", "defenses": "off", "augment": "none", "channels": "1",
            "seed": "5", "audit_confidence": ""}
    r = staff_client.post("/labeling/staff/projects/new/", data)
    assert r.status_code == 302, r.content.decode()[:2000]
    p = Project.objects.get(name="form made")
    assert p.description == "Label the animal."
    c = p.config
    assert (c["strategy"], c["batch_size"], c["budget"], c["target"], c["defenses"], c["augment"], c["channels"],
            c["seed"], c["audit_confidence"]) == ("margin", 7, None, 0.9, False, [], 1, 5, None)
    assert c["secured_size"] == 50 and c["h"] == 3  # not posted: the default


def test_the_json_overrides_the_fields_and_errors_name_the_setting(staff_client):
    base = {"name": "json made", "classes": "a, b", "batch_size": "7"}
    r = staff_client.post("/labeling/staff/projects/new/", {**base, "config": '{"batch_size": 9, "h": 2}'})
    assert r.status_code == 302
    assert Project.objects.get(name="json made").config["batch_size"] == 9
    for data, message in [({"batch_size": "0"}, "Batch size</a>: must be an integer in 1..100000, got 0"),
                          ({"batch_size": ""}, "give a value (default: 20)"),
                          ({"config": "{nope"}, "not valid JSON"),
                          ({"config": "[1]"}, "give a JSON object"),
                          ({"config": '{"colour": 1}'}, "unknown setting(s) [&#x27;colour&#x27;]"),
                          ({"strategy": "nope"}, "Select a valid choice"),
                          ({"suspend_alpha": "0.5"}, "must not exceed flag_alpha")]:
        r = staff_client.post("/labeling/staff/projects/new/", {**base, "name": "bad", **data})
        assert r.status_code == 200 and message in r.content.decode(), (data, message)
    assert not Project.objects.filter(name="bad").exists()


@pytest.mark.parametrize("n,fits", [(9, False), (10, False), (11, True)])
def test_pool_fit_agrees_with_the_refusal_at_start(n, fits, labeling_dirs, monkeypatch):
    # members are not what this is about: any refusal for them would hide the one for the pool
    monkeypatch.setattr(services.selectors, "member_ids", lambda project: [1], raising=False)
    cfg = {"secured_size": 6, "initial_size": 4, "batch_size": 4, "strategy": "random"}
    project = ProjectFactory(config=cfg)
    for _ in range(n):
        ItemFactory(project=project)
    fit = config_fields.pool_fit(project.live_config, n)
    assert fit["fits"] is fits
    try:
        services.start_project(project=project)
    except workflow.Conflict as exc:
        refused = "would take them all" in exc.message
    else:
        refused = False
    assert refused is (not fits)


def test_project_page_warns_when_the_pool_is_too_small(staff_client, labeling_dirs):
    project = ProjectFactory(config={"secured_size": 50, "initial_size": 20})
    for _ in range(40):
        ItemFactory(project=project)
    html = staff_client.get(f"/labeling/staff/projects/{project.pk}/").content.decode()
    warning = re.search(r'<p id="start-fit" class="pool-fit warn"[^>]*>(.*?)</p>', html, re.S)
    assert warning and "The pool has 40 images" in warning.group(1) and "start will refuse" in warning.group(1)
    # lowering the secured set through the form makes it fit
    r = staff_client.post(f"/labeling/staff/projects/{project.pk}/settings/",
                          {"secured_size": "10", "initial_size": "10", "description": "Look closely."})
    assert r.status_code == 302
    html = staff_client.get(f"/labeling/staff/projects/{project.pk}/").content.decode()
    assert re.search(r'<p id="start-fit" class="pool-fit\s*"[^>]*>The pool has 40 images: 10 go to the secured set', html)
    project.refresh_from_db()
    assert project.description == "Look closely." and project.config["secured_size"] == 10


def test_after_start_only_the_live_settings_change(staff_client, labeling_dirs):
    project = ProjectFactory(state=Project.State.LABELING, config={"batch_size": 4, "secured_size": 2, "h": 2})
    url = f"/labeling/staff/projects/{project.pk}/settings/"
    html = staff_client.get(f"/labeling/staff/projects/{project.pk}/").content.decode()
    for name, info in config_fields.FIELDS.items():
        tag = re.search(rf'<(?:input|select)[^>]*data-setting="{name}"[^>]*>', html).group(0)
        assert ("disabled" in tag) is (not info.editable_after_start), name
    assert "Fixed: used once, when labeling started." in html
    r = staff_client.post(url, {"batch_size": "12", "budget": "300", "target": "0.95", "tau": "",
                                "secured_size": "40", "description": "New words."})
    assert r.status_code == 302
    project.refresh_from_db()
    c = project.config
    assert (c["batch_size"], c["budget"], c["target"], c["secured_size"]) == (12, 300, 0.95, 2)  # posted secured_size ignored
    assert project.description == "New words."
    r = staff_client.post(url, {"config": '{"h": 5, "budget": 10}'})
    assert r.status_code == 400 and "h cannot change now: re-annotation rounds already open were sized with it" in \
        r.content.decode()
    project.refresh_from_db()
    assert project.config["h"] == 2 and project.config["budget"] == 300


def test_a_finished_project_keeps_its_settings(staff_client, labeling_dirs):
    project = ProjectFactory(state=Project.State.FINISHED)
    r = staff_client.post(f"/labeling/staff/projects/{project.pk}/settings/",
                          {"batch_size": "99", "config": '{"budget": 5}', "description": "kept"})
    assert r.status_code == 302  # the disabled inputs are ignored; the instructions change
    project.refresh_from_db()
    assert project.config["batch_size"] == 4 and project.config.get("budget") is None
    assert project.description == "kept"
    with pytest.raises(workflow.Conflict, match="budget cannot change now: the project is finished"):
        project_settings.update_project(project=project, config={**project.config, "budget": 5})


def test_the_service_refuses_locked_changes(labeling_dirs):
    project = ProjectFactory(state=Project.State.LABELING)
    with pytest.raises(workflow.Conflict, match="backbone cannot change now: the pool's features were extracted"):
        project_settings.update_project(project=project, config={**project.config, "backbone": "resnet20"})
    with pytest.raises(ValueError, match="batch_size must be"):
        project_settings.update_project(project=project, config={**project.config, "batch_size": -1})
    p = project_settings.update_project(project=project, config={**project.config, "budget": 7})
    assert p.config["budget"] == 7
    # a second opinion may be switched on while labeling runs (it only decides what new labels get)
    p = project_settings.update_project(project=p, config={**p.config, "verify_labels": True})
    assert p.config["verify_labels"] is True


@pytest.mark.parametrize("state", [Project.State.DRAFT, Project.State.LABELING])
def test_odd_values_in_any_setting_are_refused_not_a_server_error(state, staff_client, labeling_dirs):
    project = ProjectFactory(state=state)
    url = f"/labeling/staff/projects/{project.pk}/settings/"
    before = dict(project.config)
    odd = ["", "abc", "-1", "1e309", "x" * 3000]
    for name in config_fields.FIELDS:
        for value in odd:
            r = staff_client.post(url, {name: value})
            assert r.status_code in (302, 400), (name, value, r.status_code)
    for value in odd + ["nan", "null", "[]", '{"h": "3"}', '{"budget": -5}', '{"batch_size": true}', '{"augment": ["x"]}', "{" * 100]:
        r = staff_client.post(url, {"config": value})
        assert r.status_code in (302, 400), (value, r.status_code)
    project.refresh_from_db()
    if state == Project.State.LABELING:  # nothing locked moved
        assert {k: v for k, v in project.config.items() if k not in config_fields.LIVE_EDITABLE} == \
            {k: v for k, v in LiveConfig.from_dict(before).to_dict().items() if k not in config_fields.LIVE_EDITABLE}


def test_an_empty_settings_meaning_fits_its_box_and_is_said_in_full_below():
    from labeling.forms import SettingsForm

    form = SettingsForm()
    attrs = form.fields["batch_per_annotator"].widget.attrs
    assert attrs["placeholder"] == "empty: off" and attrs["title"] == "empty: off: every batch has the batch size"
    long = form.fields["audit_confidence_proven"].widget.attrs
    assert long["placeholder"] == "empty: see below" and "every annotator" in long["title"]
    assert form.fields["budget"].widget.attrs["placeholder"] == "empty: no limit"
