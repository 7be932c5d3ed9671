"""Staff API of a project's members: ``GET/PUT /api/labeling/projects/<id>/members/``.

Thin: the writes are :mod:`labeling.membership`. PUT replaces the whole list (usernames); members
who are removed give back the items they hold in the open batch.
"""
from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from . import membership, selectors, workflow
from .models import Project
from .permissions import IsStaff


class MemberSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="pk")
    username = serializers.CharField(source="get_username")


class MembersOutSerializer(serializers.Serializer):
    project = serializers.IntegerField()
    members = MemberSerializer(many=True)


class MembersInSerializer(serializers.Serializer):
    members = serializers.ListField(child=serializers.CharField(max_length=150), max_length=10000,
                                    help_text="Usernames of active annotators: the project's whole member list.")


def _payload(project: Project) -> dict:
    users = list(selectors.User.objects.filter(project_memberships__project=project)
                 .order_by(selectors.User.USERNAME_FIELD))
    return {"project": project.pk, "members": users}


class ProjectMembersView(APIView):
    permission_classes = [IsStaff]

    @extend_schema(summary="A project's annotators (staff)", responses=MembersOutSerializer)
    def get(self, request, project_id: int):
        project = get_object_or_404(Project, pk=project_id)
        return Response(MembersOutSerializer(_payload(project)).data)

    @extend_schema(summary="Set a project's annotators (staff; replaces the list)", request=MembersInSerializer,
                   responses=MembersOutSerializer)
    def put(self, request, project_id: int):
        project = get_object_or_404(Project, pk=project_id)
        ser = MembersInSerializer(data=request.data)
        if not ser.is_valid():
            parts = [f"{field}: {' '.join(str(m) for m in msgs) if isinstance(msgs, list) else msgs}"
                     for field, msgs in ser.errors.items()]
            return Response({"detail": "; ".join(parts), "errors": ser.errors}, status=400)
        try:
            membership.set_members(project=project, users=ser.validated_data["members"], actor=request.user)
        except workflow.LabelingError as exc:
            return Response({"detail": exc.message}, status=exc.status_code)
        return Response(MembersOutSerializer(_payload(project)).data)


__all__ = ["ProjectMembersView"]
