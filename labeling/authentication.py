"""DRF token authentication that also answers "is this user an annotator?" in the same query.

Every annotator request checks the ``annotators`` group (:class:`labeling.permissions.IsAnnotator`).
Token requests (scripts, integrations, the load benchmark) get that answer from the token lookup
itself, one hand-written statement (the ORM spends about 1 ms compiling this join on every
request). Nothing is cached across requests: a user removed from the group, deactivated or whose
token was deleted is refused on their next request.
"""
from __future__ import annotations

import functools

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions

from .db import instances, prepared_cursor
from .models import ANNOTATORS_GROUP

#: attribute set on the request's user: True/False when known, absent otherwise
IS_ANNOTATOR_ATTR = "_labeling_is_annotator"


@functools.cache
def _token_sql(vendor: str) -> str:
    q = connection.ops.quote_name
    User = get_user_model()
    token_model = authentication.TokenAuthentication().get_model()
    memberships = User.groups.through
    m_user = memberships._meta.get_field("user").column
    m_group = memberships._meta.get_field("group").column
    return (f"SELECT u.*, EXISTS(SELECT 1 FROM {q(memberships._meta.db_table)} m JOIN {q(Group._meta.db_table)} g "
            f"ON g.id = m.{q(m_group)} WHERE m.{q(m_user)} = u.{q(User._meta.pk.column)} AND g.name = %s) "
            f"AS {IS_ANNOTATOR_ATTR} FROM {q(User._meta.db_table)} u JOIN {q(token_model._meta.db_table)} t "
            f"ON t.{q(token_model._meta.get_field('user').column)} = u.{q(User._meta.pk.column)} "
            f"WHERE t.{q(token_model._meta.pk.column)} = %s")


class TokenAuthentication(authentication.TokenAuthentication):
    """``Authorization: Token <key>``, as DRF's, plus the annotator-group flag on the user.

    It runs before session authentication (a scripted request then never loads a session) but
    keeps the API's answers as they were with sessions first: no ``WWW-Authenticate`` challenge,
    so a request without valid credentials gets 403, not 401.
    """

    def authenticate_header(self, request):
        return None

    def authenticate_credentials(self, key):
        model = self.get_model()
        with prepared_cursor() as cursor:
            cursor.execute(_token_sql(connection.vendor), [ANNOTATORS_GROUP, key])
            found = instances(get_user_model(), cursor)  # the group flag: an attribute, unconverted
        if not found:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        user = found[0]
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        setattr(user, IS_ANNOTATOR_ATTR, bool(getattr(user, IS_ANNOTATOR_ATTR)))
        return user, model(key=key, user=user)
