"""Forms of the staff pages (validation only; the services do the writing)."""
from __future__ import annotations

import json

from django import forms
from django.conf import settings

from learner.live import LiveConfig

from .config_fields import FIELDS, FieldInfo, grouped


INSTRUCTIONS_HELP = ("Shown to the annotators above the image (they can fold it away): what to label, how to "
                     "treat unclear images. Staff notes belong elsewhere: annotators read every word.")


class ProjectForm(forms.Form):
    name = forms.CharField(max_length=200)
    classes = forms.CharField(help_text="Class names, comma-separated or one per line.",
                              widget=forms.Textarea(attrs={"rows": 3}))
    description = forms.CharField(required=False, label="Instructions for annotators", help_text=INSTRUCTIONS_HELP,
                                  widget=forms.Textarea(attrs={"rows": 4}))

    def clean_classes(self):
        raw = self.cleaned_data["classes"].replace("\n", ",")
        names = [c.strip() for c in raw.split(",") if c.strip()]
        if len(names) < 2:
            raise forms.ValidationError("give at least two classes")
        if len(set(names)) != len(names):
            raise forms.ValidationError("class names must be unique")
        return names


class InstructionsForm(forms.Form):
    description = ProjectForm.base_fields["description"]


# --------------------------------------------------------------------------------------
# Settings: one input per LiveConfig field, plus the raw JSON
# --------------------------------------------------------------------------------------


def _to_form(info: FieldInfo, value):
    """A stored setting as the form shows it."""
    if info.kind == "tristate":
        return "auto" if value is None else ("on" if value else "off")
    if info.kind == "bool":
        return "on" if value else "off"
    if info.kind == "list":
        return "auto" if value is None else (",".join(value) if value else "none")
    return "" if value is None else value


def _from_form(info: FieldInfo, value):
    """A cleaned form value as LiveConfig takes it (None for an empty optional setting)."""
    if info.kind == "tristate":
        return {"on": True, "off": False}.get(value)  # "auto" or empty: null
    if info.kind == "bool":
        return value == "on"
    if info.kind == "list":
        value = (value or "").strip().lower()
        return None if value in ("", "auto") else value  # LiveConfig parses "none" and comma lists
    if value in (None, ""):
        return None
    return value


def _short_meaning(text: str, limit: int = 20) -> str:
    """What an empty setting means, short enough for its input box: the words before a colon
    ("off: every batch has the batch size" -> "off"), or "see below" when even those are long."""
    head = text.split(":", 1)[0].strip()
    return head if len(head) <= limit else "see below"


def _form_field(info: FieldInfo) -> forms.Field:
    help_text = info.help
    if info.kind in ("choice", "tristate", "bool"):
        coerce = int if info.name == "channels" else str
        field = forms.TypedChoiceField(choices=info.choices, coerce=coerce, required=False)
    elif info.kind == "int":
        field = forms.IntegerField(required=False)
    elif info.kind == "float":
        field = forms.FloatField(required=False, widget=forms.NumberInput(attrs={"step": "any"}))
    else:
        field = forms.CharField(required=False)
    field.label = info.label
    field.help_text = help_text
    field.widget.attrs.update({"data-setting": info.name})
    if info.blank_means:
        # the whole meaning on hover and in the help line; the box shows only what fits in it
        field.widget.attrs["placeholder"] = f"empty: {_short_meaning(info.blank_means)}"
        field.widget.attrs["title"] = f"empty: {info.blank_means}"
    return field


class SettingsForm(forms.Form):
    """The project's settings, each with its default and what it does; ``config`` is the raw JSON.

    ``current`` is the stored config (the form's initial values). ``started``: labeling has begun,
    so only ``LIVE_EDITABLE`` settings take input (the others are disabled and keep ``current``,
    whatever is posted); ``finished`` disables all. A setting missing from the posted data keeps
    its current value (a script may post only ``config``); an empty optional one becomes null.
    Keys of the JSON override the fields. ``cleaned_config`` is the validated result.
    """

    config = forms.CharField(required=False, label="Advanced: settings as JSON",
                             widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false"}),
                             help_text='Keys given here override the fields above, e.g. {"batch_size": 20, '
                                       '"h": 3}. Leave empty to use the fields.')

    def __init__(self, data=None, *, current: dict | None = None, started: bool = False, finished: bool = False,
                 **kwargs):
        super().__init__(data, **kwargs)
        self.current = LiveConfig.from_dict(current or {}).to_dict()
        self.started, self.finished = started, finished
        self.cleaned_config: dict | None = None
        for name, info in FIELDS.items():
            assert name not in self.fields, f"setting {name!r} clashes with a form field"
            field = _form_field(info)
            field.initial = _to_form(info, self.current[name])
            field.default_text = _to_form(info, info.default)
            field.locked_reason = ("the project is finished" if finished else
                                   info.locked_reason if started and not info.editable_after_start else "")
            field.disabled = bool(field.locked_reason)
            self.fields[name] = field
        self.order_fields([*FIELDS, "config"])
        if finished:
            self.fields["config"].disabled = True

    def groups(self):
        """(title, [bound fields]) per group, for the template."""
        return [(key, title, [self[i.name] for i in infos]) for key, title, infos in grouped()]

    def clean(self):
        data = super().clean()
        values = {}
        for name, info in FIELDS.items():
            field = self.fields[name]
            if field.disabled or name not in self.data:
                values[name] = self.current[name]
                continue
            value = data.get(name)
            if value in (None, "") and not info.optional and info.kind not in ("list",):
                self.add_error(name, f"give a value (default: {field.default_text})")
                continue
            values[name] = _from_form(info, value)
        raw, extra = (data.get("config") or "").strip(), {}
        if raw:
            try:
                extra = json.loads(raw)
            except json.JSONDecodeError as exc:
                self.add_error("config", f"not valid JSON: {exc}")
                return data
            if not isinstance(extra, dict):
                self.add_error("config", 'give a JSON object, e.g. {"batch_size": 20}')
                return data
            values.update(extra)
        if self.errors:
            return data
        try:
            cfg = LiveConfig.from_dict(values).to_dict()
        except ValueError as exc:  # the message starts with the setting's name
            name = str(exc).split(" ", 1)[0]
            if name in extra:
                target = "config"
            elif name in FIELDS and not self.fields[name].disabled:
                target = name
            else:
                target = "config" if raw else None
            message = str(exc)
            if target == name:  # shown under the field (and after its label in the summary), which names it
                message = message[len(name):].strip()
            self.add_error(target, message)
            return data
        if self.started or self.finished:
            locked = [k for k in cfg if cfg[k] != self.current.get(k) and self.fields[k].disabled]
            if locked:
                self.add_error("config" if raw else None, "; ".join(
                    f"{k} cannot change now: {self.fields[k].locked_reason}" for k in locked))
                return data
        self.cleaned_config = cfg
        return data


class ImportForm(forms.Form):
    archive = forms.FileField(required=False, help_text="A .zip of images (optionally one folder per class).",
                              widget=forms.ClearableFileInput(attrs={"accept": ".zip,application/zip"}))
    folder = forms.CharField(required=False, help_text="Or a folder on the server (inside the import roots).")
    dataset = forms.CharField(required=False,
                              help_text="Or a data set: digits, cifar2, cifar10, or a path to .npz / CIFAR-10 archive.")
    pool_size = forms.IntegerField(required=False, min_value=1, help_text="Data sets: how many pool images.")
    upscale = forms.IntegerField(required=False, min_value=1, max_value=32, initial=1,
                                 help_text="Data sets: enlarge tiny images (nearest neighbour) for display.")
    skip_invalid = forms.BooleanField(required=False,
                                      help_text="Import the valid files and list the refused ones "
                                                "(default: refuse the whole import on any problem).")

    def clean_archive(self):
        f = self.cleaned_data.get("archive")
        if f is not None and f.size > settings.ROBUSTAL_MAX_UPLOAD_BYTES:
            raise forms.ValidationError(f"the upload is larger than {settings.ROBUSTAL_MAX_UPLOAD_BYTES} bytes")
        return f

    def clean(self):
        data = super().clean()
        given = [k for k in ("archive", "folder", "dataset") if data.get(k)]
        if len(given) != 1:
            raise forms.ValidationError("give exactly one source: a zip upload, a server folder or a data set")
        return data


class MembersForm(forms.Form):
    """The project's annotators (only they are handed its work)."""

    members = forms.ModelMultipleChoiceField(
        queryset=None, required=False, widget=forms.CheckboxSelectMultiple, label="Annotators of this project",
        help_text="Only members are handed the project's images. Someone removed gives back the images they hold; "
                  "their answers stay.")

    def __init__(self, *args, project, **kwargs):
        from . import selectors

        super().__init__(*args, **kwargs)
        self.fields["members"].queryset = selectors.annotators().order_by("username")
        if not self.is_bound:
            self.initial["members"] = list(project.members.values_list("pk", flat=True))
