"""DRF content negotiation with a shortcut for the API's usual request.

Nearly every API request asks for JSON (``Accept: application/json``, or ``*/*`` / no header as
``fetch`` and scripts send). DRF's negotiation parses the header and every renderer's media type
on each request; for those three cases it picks the first renderer (JSON) with the media type
``application/json``, and this class returns exactly that without the parsing. Anything else
(a browser's ``text/html``, ``?format=``, a format suffix, other renderers first) goes through
DRF's own negotiation unchanged.
"""
from __future__ import annotations

from rest_framework.negotiation import DefaultContentNegotiation

_JSON = "application/json"


class JSONFirstNegotiation(DefaultContentNegotiation):
    def select_renderer(self, request, renderers, format_suffix=None):
        if (not format_suffix and renderers and renderers[0].media_type == _JSON
                and request.META.get("HTTP_ACCEPT", "*/*") in (_JSON, "*/*")
                and (self.settings.URL_FORMAT_OVERRIDE or "") not in request.query_params):
            return renderers[0], _JSON
        return super().select_renderer(request, renderers, format_suffix)
