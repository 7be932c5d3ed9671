"""Forms of the staff pages (validation only; the services do the writing)."""
from __future__ import annotations

import json

from django import forms
from django.conf import settings

from learner.live import LiveConfig


class ProjectForm(forms.Form):
    name = forms.CharField(max_length=200)
    classes = forms.CharField(help_text="Class names, comma-separated or one per line.",
                              widget=forms.Textarea(attrs={"rows": 3}))
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    config = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 6}),
                             help_text="JSON, e.g. {\"strategy\": \"robust\", \"batch_size\": 20, \"h\": 3}. "
                                       "Empty: defaults.")

    def clean_classes(self):
        raw = self.cleaned_data["classes"].replace("\n", ",")
        names = [c.strip() for c in raw.split(",") if c.strip()]
        if len(names) < 2:
            raise forms.ValidationError("give at least two classes")
        if len(set(names)) != len(names):
            raise forms.ValidationError("class names must be unique")
        return names

    def clean_config(self):
        raw = (self.cleaned_data.get("config") or "").strip()
        if not raw:
            return {}
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"not valid JSON: {exc}") from None
        try:
            return LiveConfig.from_dict(data).to_dict()
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None


class ImportForm(forms.Form):
    archive = forms.FileField(required=False, help_text="A .zip of images (optionally one folder per class).")
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
