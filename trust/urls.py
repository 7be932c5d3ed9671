"""Staff review pages of the trust app (mounted at /trust/)."""
from django.urls import path

from . import views

app_name = "trust"

urlpatterns = [
    path("", views.labeler_list, name="labelers"),
    path("labelers/<int:user_id>/", views.labeler_detail, name="labeler"),
    path("labelers/<int:user_id>/reinstate/", views.reinstate, name="reinstate"),
    path("labelers/<int:user_id>/suspend/", views.suspend, name="suspend"),
    path("labelers/<int:user_id>/discard/", views.discard, name="discard"),
    path("items/<int:item_id>/image", views.item_image, name="item-image"),
]
