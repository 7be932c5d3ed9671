"""Forms of the staff review actions."""
from __future__ import annotations

from django import forms


class NoteForm(forms.Form):
    note = forms.CharField(required=False, max_length=2000,
                           widget=forms.TextInput(attrs={"size": 40, "placeholder": "note (optional)"}))


class DiscardForm(NoteForm):
    since = forms.DateTimeField(help_text="Discard this labeler's labels given at or after this time (UTC).",
                                widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
                                input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"])
