"""Permission matrix: every URL (URL conf + OpenAPI schema) x anonymous / annotator A / annotator B / staff.

``CASES`` declares, for each endpoint and method, the status each role gets. Three rules make a
forgotten endpoint fail:

* every route of the URL conf (admin aside) and every operation of the OpenAPI schema must be
  declared here (``test_every_url_is_declared``, ``test_every_schema_operation_is_declared``);
* any route not declared public or annotator-facing is checked by rule as staff-only: anonymous
  and annotators are refused on GET and POST and nothing changes (``test_undeclared_or_staff_routes_refuse_non_staff``),
  so an unprotected new URL fails even before someone declares it;
* every body an annotator receives is scanned for planted secrets (``assert_no_leak``): the item's
  file name, the other annotator's name, ground truth / trust / secured / re-annotation words, the
  trust value and the loop error.

The Django admin is staff-only by construction (``admin.site`` checks ``is_staff`` on every view);
a sample of its pages is checked.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest
from django.test import Client
from django.urls import URLResolver, get_resolver

from labeling import membership, services
from labeling.models import Annotation, Assignment, IterationMetric, Item, LabelerProfile, Project
from tests.web.factories import (AnnotatorFactory, AssignmentFactory, ItemFactory, ProjectFactory,
                                 QueryBatchFactory, StaffFactory)
from tests.web.labeling_support import labeling_dirs  # noqa: F401

pytestmark = pytest.mark.django_db

ROLES = ("anon", "a", "b", "staff")
LOGIN = "login"  # 302 to a login page

# Planted secrets: any of these in an annotator's response is a leak.
SOURCE_TOKEN = "zqsrc-hidden-file-name.png"
LOOP_ERROR_TOKEN = "zqloop-error-detail"
TRUST_VALUE = 0.31415
NAME_A, NAME_B, NAME_STAFF = "alpha_zq7", "bravo_zq3", "staff_zq9"
FORBIDDEN_WORDS = ("ground_truth", "ground truth", "groundtruth", "is_secured", "secured", "reannotation",
                   "re-annotation", "trust", "original_labeler", "loop_error", "stop_reason", "source",
                   SOURCE_TOKEN, LOOP_ERROR_TOKEN, str(TRUST_VALUE))
# API documentation: field names of staff endpoints, no data (and public by design).
SCAN_EXEMPT = {"api/schema/", "api/docs/"}


@dataclass
class World:
    project: Project
    other: Project  # a project where A and B have no work
    a: object
    b: object
    staff: object
    asg_a: Assignment  # A's open re-annotation of a secured item
    asg_b: Assignment
    done_b: Assignment  # B's answered assignment (label 2)
    item: Item

    def value(self, name: str):
        return {"project": self.project.pk, "other": self.other.pk, "asg_a": self.asg_a.pk, "asg_b": self.asg_b.pk,
                "item": self.item.pk, "user_a": self.a.pk, "user_b": self.b.pk}[name]

    def user(self, role: str):
        return {"anon": None, "a": self.a, "b": self.b, "staff": self.staff}[role]


@pytest.fixture
def world(labeling_dirs, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed: users made per test
    a, b = AnnotatorFactory(username=NAME_A), AnnotatorFactory(username=NAME_B)
    staff = StaffFactory(username=NAME_STAFF)
    project = ProjectFactory(name="matrix project", state=Project.State.LABELING, loop_error=LOOP_ERROR_TOKEN,
                             stop_reason="zqstop")
    other = ProjectFactory(name="other project", state=Project.State.LABELING)
    batch = QueryBatchFactory(project=project)
    item = ItemFactory(project=project, source=SOURCE_TOKEN, is_secured=True)
    asg_a = AssignmentFactory(batch=batch, item=item, labeler=a, kind=Assignment.Kind.REANNOTATION,
                              original_labeler=b)
    asg_b = AssignmentFactory(batch=batch, item=ItemFactory(project=project, source=SOURCE_TOKEN), labeler=b,
                              kind=Assignment.Kind.SECURED)
    done_b = AssignmentFactory(batch=batch, item=item, labeler=b, status=Assignment.Status.DONE)
    Annotation.objects.create(assignment=done_b, label=2)
    for user in (a, b):
        services.ensure_profile(user)
    membership.set_members(project=project, users=[a, b])
    LabelerProfile.objects.filter(user__in=[a, b]).update(trust=TRUST_VALUE)
    other_batch = QueryBatchFactory(project=other)
    AssignmentFactory(batch=other_batch, item=ItemFactory(project=other), labeler=staff)
    from django.utils import timezone

    IterationMetric.objects.create(project=project, iteration=0, labels_bought=3, n_labeled=3, n_artificial=0,
                                   secured_accuracy=0.5, ground_truth_accuracy=0.5, started_at=timezone.now())
    return World(project, other, a, b, staff, asg_a, asg_b, done_b, item)


def client_as(world: World, role: str) -> Client:
    c = Client()
    user = world.user(role)
    if user is not None:
        c.force_login(user)
    return c


def assert_no_leak(role: str, world: World, route: str, body: bytes) -> None:
    """An annotator's response must not hold any planted secret nor the other annotator's name."""
    if role not in ("a", "b") or route in SCAN_EXEMPT:
        return
    text = body.decode("latin-1").lower()
    other_name = NAME_B if role == "a" else NAME_A
    for word in (*FORBIDDEN_WORDS, other_name, NAME_STAFF):
        assert not re.search(rf"(?<![a-z]){re.escape(word.lower())}(?![a-z])", text), (
            f"{route}: {role}'s response contains {word!r}")


# --------------------------------------------------------------------------------------
# The declared matrix
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    route: str  # as the resolver writes it
    method: str
    expect: tuple  # statuses of (anon, a, b, staff); LOGIN = redirect to a login page
    params: tuple = ()  # (path parameter, World.value name or literal "=text")
    data: dict = field(default_factory=dict, hash=False, compare=False)
    access: str = "staff"  # public | annotator | staff

    @property
    def id(self) -> str:
        return f"{self.method} {self.route or '/'} {dict(self.params)}"

    def url(self, world: World) -> str:
        url = "/" + self.route
        for name, value in self.params:
            real = value[1:] if value.startswith("=") else str(world.value(value))
            url = re.sub(rf"<(?:\w+:)?{name}>", real, url)
        assert "<" not in url, url
        return url


P = (("project_id", "project"),)
Q = (("project_id", "other"),)
ASG_A = (("assignment_id", "asg_a"),)
USER_A = (("user_id", "user_a"),)
EXPORT = "api/labeling/projects/<int:project_id>/export/<str:kind>.<str:fmt>"

CASES = [
    # public
    Case("health/", "GET", (200, 200, 200, 200), access="public"),
    Case("accounts/login/", "GET", (200, 200, 200, 200), access="public"),
    Case("accounts/logout/", "POST", (302, 302, 302, 302), access="public"),
    Case("accounts/logout/", "GET", (405, 405, 405, 405), access="public"),
    Case("api/token/", "POST", (400, 400, 400, 400), data={"username": NAME_A, "password": "wrong"}, access="public"),
    Case("api/schema/", "GET", (200, 200, 200, 200), access="public"),
    Case("api/docs/", "GET", (200, 200, 200, 200), access="public"),
    # annotators (and staff)
    Case("", "GET", (LOGIN, 200, 200, 200), access="annotator"),
    Case("labeling/projects/<int:project_id>/annotate/", "GET", (LOGIN, 200, 200, 200), P, access="annotator"),
    Case("labeling/projects/<int:project_id>/annotate/", "GET", (LOGIN, 404, 404, 200), Q, access="annotator"),
    Case("labeling/assignments/<int:assignment_id>/image", "GET", (LOGIN, 200, 404, 200), ASG_A, access="annotator"),
    Case("labeling/assignments/<int:assignment_id>/image", "POST", (LOGIN, 405, 405, 405), ASG_A, access="annotator"),
    Case("api/labeling/next/", "GET", (403, 200, 200, 200), access="annotator"),
    Case("api/labeling/assignments/<int:assignment_id>/annotation/", "POST", (403, 201, 404, 404), ASG_A,
         data={"label": 1}, access="annotator"),
    Case("api/labeling/assignments/<int:assignment_id>/annotation/", "GET", (403, 405, 405, 405), ASG_A,
         access="annotator"),
    Case("api/labeling/assignments/<int:assignment_id>/skip/", "POST", (403, 200, 404, 404), ASG_A,
         access="annotator"),
    Case("api/labeling/undo/", "POST", (403, 409, 409, 409), access="annotator"),
    Case("api/labeling/projects/<int:project_id>/status/", "GET", (403, 200, 200, 200), P, access="annotator"),
    Case("api/labeling/projects/<int:project_id>/status/", "GET", (403, 404, 404, 200), Q, access="annotator"),
    # staff
    Case("labeling/staff/projects/new/", "GET", (LOGIN, 403, 403, 200)),
    Case("labeling/staff/projects/new/", "POST", (LOGIN, 403, 403, 302),
         data={"name": "new by matrix", "classes": "x, y"}),
    Case("labeling/staff/projects/<int:project_id>/", "GET", (LOGIN, 403, 403, 200), P),
    Case("labeling/staff/projects/<int:project_id>/import/", "POST", (LOGIN, 403, 403, 400), P,
         data={"dataset": "digits"}),
    Case("labeling/staff/notices/seen/", "POST", (LOGIN, 403, 403, 302), data={"until": "2020-01-01T00:00:00+00:00"}),
    Case("labeling/staff/notices/seen/", "GET", (LOGIN, 403, 403, 405)),
    Case("labeling/staff/projects/<int:project_id>/settings/", "POST", (LOGIN, 403, 403, 302), P,
         data={"budget": "50", "description": "instructions"}),
    Case("labeling/staff/projects/<int:project_id>/start/", "POST", (LOGIN, 403, 403, 302), P),
    Case("labeling/staff/projects/<int:project_id>/resume/", "POST", (LOGIN, 403, 403, 302), P),
    Case("labeling/staff/projects/<int:project_id>/pause/", "POST", (LOGIN, 403, 403, 302), P),
    Case("trust/", "GET", (LOGIN, 403, 403, 200)),
    Case("trust/labelers/<int:user_id>/", "GET", (LOGIN, 403, 403, 200), USER_A),
    Case("trust/labelers/<int:user_id>/reinstate/", "POST", (LOGIN, 403, 403, 302), USER_A),
    Case("trust/labelers/<int:user_id>/suspend/", "POST", (LOGIN, 403, 403, 302), USER_A),
    Case("trust/labelers/<int:user_id>/discard/", "POST", (LOGIN, 403, 403, 302), USER_A),
    Case("trust/items/<int:item_id>/image", "GET", (LOGIN, 403, 403, 200), (("item_id", "item"),)),
    Case("api/labeling/projects/<int:project_id>/metrics/", "GET", (403, 403, 403, 200), P),
    # the staff API (labeling/staff_api.py); the matrix project is labeling, so import and start refuse (409)
    Case("api/labeling/projects/", "GET", (403, 403, 403, 200)),
    Case("api/labeling/projects/", "POST", (403, 403, 403, 201), data={"name": "api by matrix", "classes": ["x", "y"]}),
    Case("api/labeling/projects/<int:project_id>/", "GET", (403, 403, 403, 200), P),
    Case("api/labeling/projects/<int:project_id>/images/", "POST", (403, 403, 403, 400), P),
    Case("api/labeling/projects/<int:project_id>/import/", "POST", (403, 403, 403, 409), P,
         data={"dataset": "digits"}),
    Case("api/labeling/projects/<int:project_id>/start/", "POST", (403, 403, 403, 409), P),
    Case("api/labeling/projects/<int:project_id>/pause/", "POST", (403, 403, 403, 200), P),
    Case("api/labeling/projects/<int:project_id>/resume/", "POST", (403, 403, 403, 200), P),
    Case("api/labeling/projects/<int:project_id>/batches/", "GET", (403, 403, 403, 200), P),
    Case("api/labeling/projects/<int:project_id>/annotators/", "GET", (403, 403, 403, 200), P),
    Case(EXPORT, "GET", (403, 403, 403, 200), (*P, ("kind", "=raw"), ("fmt", "=csv"))),
    Case(EXPORT, "GET", (403, 403, 403, 200), (*P, ("kind", "=resolved"), ("fmt", "=json"))),
    Case(EXPORT, "GET", (403, 403, 403, 400), (*P, ("kind", "=secret"), ("fmt", "=csv"))),
    Case("api/labeling/projects/<int:project_id>/members/", "GET", (403, 403, 403, 200), P),
    Case("api/labeling/projects/<int:project_id>/members/", "PUT", (403, 403, 403, 200), P,
         data={"members": [NAME_A, NAME_B]}),
    Case("labeling/staff/projects/<int:project_id>/members/", "POST", (LOGIN, 403, 403, 302), P,
         data={"members": []}),
]

ADMIN_SAMPLE = ["/admin/", "/admin/labeling/item/", "/admin/labeling/annotation/", "/admin/trust/",
                "/admin/auth/user/", "/admin/labeling/labelerprofile/", "/admin/axes/accessattempt/"]


def check_status(response, expected, case_id: str, role: str) -> None:
    if expected == LOGIN:
        assert response.status_code == 302, f"{case_id} as {role}: {response.status_code}, expected login redirect"
        assert "login" in response["Location"], f"{case_id} as {role}: redirected to {response['Location']}"
    else:
        assert response.status_code == expected, (f"{case_id} as {role}: {response.status_code}, expected "
                                                  f"{expected}: {response.content[:300]!r}")


def request(client: Client, method: str, url: str, data: dict):
    if method == "GET":
        return client.get(url)
    if method == "PUT":
        return client.put(url, data, content_type="application/json")
    return client.post(url, data)


def run_case(case: Case, role: str, world: World) -> None:
    response = request(client_as(world, role), case.method, case.url(world), case.data)
    check_status(response, case.expect[ROLES.index(role)], case.id, role)
    body = b"".join(response.streaming_content) if response.streaming else response.content
    assert_no_leak(role, world, case.route, body)


@pytest.mark.parametrize("case", [c for c in CASES if c.method == "GET"], ids=lambda c: c.id)
def test_matrix_reads(case: Case, world: World):
    """Reads change nothing: the four roles share one set of data."""
    for role in ROLES:
        run_case(case, role, world)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("case", [c for c in CASES if c.method != "GET"], ids=lambda c: c.id)
def test_matrix_writes(case: Case, role: str, world: World):
    """Writes run on fresh data for each role (an answer by A must not turn B's 404 into a 409)."""
    run_case(case, role, world)


# --------------------------------------------------------------------------------------
# Completeness and the rule for undeclared routes
# --------------------------------------------------------------------------------------


def all_routes() -> list[str]:
    def walk(resolver, prefix=""):
        for p in resolver.url_patterns:
            if isinstance(p, URLResolver):
                yield from walk(p, prefix + str(p.pattern))
            else:
                yield prefix + str(p.pattern)

    return [r for r in walk(get_resolver()) if not r.startswith("admin/")]


def undeclared_routes() -> list[str]:
    declared = {c.route for c in CASES}
    return [r for r in all_routes() if r not in declared]


def test_every_url_is_declared():
    missing = undeclared_routes()
    assert not missing, f"routes missing from the permission matrix (declare who may use them): {missing}"


def test_every_schema_operation_is_declared(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    declared = {("/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", c.route), c.method) for c in CASES}
    ops = {(path, method.upper()) for path, item in schema["paths"].items() for method in item
           if method in ("get", "post", "put", "patch", "delete")}
    assert ops, "the schema lists no operation"
    assert not ops - declared, f"API operations missing from the permission matrix: {sorted(ops - declared)}"


def _fill(route: str, world: World) -> str:
    by_name = {"project_id": world.project.pk, "assignment_id": world.asg_b.pk, "user_id": world.a.pk,
               "item_id": world.item.pk}
    return "/" + re.sub(r"<(?:(\w+):)?(\w+)>",
                        lambda m: str(by_name.get(m.group(2), 1 if m.group(1) == "int" else "x")), route)


def _fingerprint() -> tuple:
    from django.apps import apps

    models = [m for app in ("labeling", "trust") for m in apps.get_app_config(app).get_models()]
    return tuple((m.__name__, m.objects.count(), str(max(m.objects.values_list("pk", flat=True), default=0)))
                 for m in models) + tuple(Project.objects.order_by("pk").values_list("state", "name"))


def check_staff_only_rule(world: World) -> int:
    """Every route not declared public/annotator-facing refuses anonymous users and annotators, and changes nothing."""
    open_routes = {c.route for c in CASES if c.access in ("public", "annotator")}
    checked = 0
    before = _fingerprint()
    for route in all_routes():
        if route in open_routes:
            continue
        url = _fill(route, world)
        for role in ("anon", "a"):
            client = client_as(world, role)
            for method in ("GET", "POST"):
                r = request(client, method, url, {})
                denied = r.status_code in (401, 403, 404) or (r.status_code == 302 and "login" in r["Location"])
                assert denied, f"{method} {url} as {role}: {r.status_code} (a staff-only route must refuse)"
                assert_no_leak(role, world, route, r.content)
                checked += 1
    assert _fingerprint() == before, "a refused request changed the database"
    return checked


def test_undeclared_or_staff_routes_refuse_non_staff(world):
    assert check_staff_only_rule(world) >= 4 * 10


# A URL conf with one unprotected view added: the rules above must catch it.
def _leaky_view(request):
    from django.http import JsonResponse

    return JsonResponse({"ok": True})


def _leaky_urlpatterns():
    from django.urls import path

    import config.urls

    return [*config.urls.urlpatterns, path("labeling/staff/leaky/", _leaky_view)]


def test_the_rules_catch_a_new_unprotected_url(world, settings):
    import sys
    import types

    module = types.ModuleType("tests.web._leaky_urls")
    module.urlpatterns = _leaky_urlpatterns()
    sys.modules[module.__name__] = module
    try:
        settings.ROOT_URLCONF = module.__name__
        assert undeclared_routes() == ["labeling/staff/leaky/"]
        with pytest.raises(AssertionError, match="labeling/staff/leaky/ as anon: 200"):
            check_staff_only_rule(world)
    finally:
        del sys.modules[module.__name__]


@pytest.mark.parametrize("url", ADMIN_SAMPLE)
def test_admin_is_staff_only(url, world):
    r = client_as(world, "anon").get(url)
    assert r.status_code == 302 and "/admin/login/" in r["Location"], (url, r.status_code)
    r = client_as(world, "a").get(url)  # a signed-in annotator: the styled 403, not the admin's login form
    assert r.status_code == 403 and b'id="error-page"' in r.content, (url, r.status_code)
    world.staff.is_superuser = True
    world.staff.save()
    assert client_as(world, "staff").get(url).status_code == 200


# --------------------------------------------------------------------------------------
# A whole annotator session, scanned
# --------------------------------------------------------------------------------------


def test_annotator_session_reveals_nothing(world):
    """A goes through home, annotate page, next, image, answer, status and undo: no byte leaks."""
    c = client_as(world, "a")
    pages = [("", c.get("/")), ("annotate", c.get(f"/labeling/projects/{world.project.pk}/annotate/"))]
    nxt = c.get("/api/labeling/next/")
    assert nxt.json()["assignment"]["id"] == world.asg_a.pk
    pages += [("next", nxt), ("image", c.get(nxt.json()["assignment"]["image_url"])),
              ("answer", c.post(f"/api/labeling/assignments/{world.asg_a.pk}/annotation/", {"label": 0},
                                content_type="application/json")),
              ("status", c.get(f"/api/labeling/projects/{world.project.pk}/status/")),
              ("undo", c.post("/api/labeling/undo/", {}, content_type="application/json")),
              ("next again", c.get(f"/api/labeling/next/?project={world.project.pk}"))]
    for name, r in pages:
        assert r.status_code < 400, (name, r.status_code, r.content[:200])
        assert_no_leak("a", world, name, b"".join(r.streaming_content) if r.streaming else r.content)
    # B's label 2 and A's own label never appear as someone else's data in the status
    assert set(nxt.json()) == {"assignment", "upcoming", "project_state", "progress", "message"}
    assert set(nxt.json()["assignment"]) == {"id", "project", "project_name", "image_url", "classes", "status"}


def test_leak_scan_detects_a_leak(world):
    """The scanner is not blind: the staff status of the same project holds planted secrets."""
    r = client_as(world, "staff").get(f"/api/labeling/projects/{world.project.pk}/status/")
    with pytest.raises(AssertionError):
        assert_no_leak("a", world, "staff status", r.content)
    r = client_as(world, "staff").get(f"/api/labeling/projects/{world.project.pk}/export/raw.json")
    with pytest.raises(AssertionError):
        assert_no_leak("a", world, "staff export", r.content)
