"""Fuzz the labeling API with schemathesis against its own OpenAPI schema; print a table.

Every operation of ``/api/schema/`` gets generated requests (valid ones and, with ``--negative``,
schema-violating ones: wrong types, missing fields, out-of-range ids) sent to the WSGI
application in-process, authenticated by token as an annotator and as staff. A case fails when the
server answers 5xx, or a 4xx without a clear message (JSON with a non-empty ``detail`` string).

Self-contained: a throw-away SQLite database and media folder in a temporary directory, migrated,
with a started project (two annotators with open assignments, a staff member). Nothing is left
behind.

    .venv/bin/python bench/fuzz_api.py                      # >= 1,000 cases (default 60 per operation x role x mode)
    .venv/bin/python bench/fuzz_api.py --examples 200 --seed 7

The test suite runs a short version (``tests/web/test_api_fuzz.py``) through :func:`fuzz`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_URL = "/api/schema/?format=json"


@dataclass
class FuzzResult:
    cases: int = 0
    statuses: Counter = field(default_factory=Counter)  # (role, status) -> count
    per_operation: Counter = field(default_factory=Counter)  # (role, "METHOD path") -> count
    by_operation_status: Counter = field(default_factory=Counter)  # ("METHOD path", status) -> count
    failures: list[dict] = field(default_factory=list)
    # operations with nothing a request could get wrong (no parameter, no body): no negative case exists
    no_negative: set = field(default_factory=set)

    def merge_failure(self, item: dict) -> None:
        key = (item["role"], item["operation"], item["status"], item["problem"])
        if not any((f["role"], f["operation"], f["status"], f["problem"]) == key for f in self.failures):
            self.failures.append(item)


def problem_with(response) -> str | None:
    """Why a response breaks the promise (no 5xx; every 4xx says why), or None."""
    status = response.status_code
    if status >= 500:
        return "server error"
    if 400 <= status < 500:
        try:
            body = json.loads(response.content or b"")
        except ValueError:
            return "4xx without a JSON body"
        detail = body.get("detail") if isinstance(body, dict) else None
        if not (isinstance(detail, str) and detail.strip()):
            return "4xx without a 'detail' message"
    return None


def make_world():
    """Users, tokens and a started project with open assignments for both annotators (needs the DB)."""
    from rest_framework.authtoken.models import Token

    from labeling import services
    from labeling.models import Assignment, Project
    from tests.web.factories import (AnnotatorFactory, AssignmentFactory, ItemFactory, ProjectFactory,
                                     QueryBatchFactory, StaffFactory)

    a, b = AnnotatorFactory(username="fuzz_ann_a"), AnnotatorFactory(username="fuzz_ann_b")
    staff = StaffFactory(username="fuzz_staff")
    project = ProjectFactory(name="fuzz project", state=Project.State.LABELING)
    batch = QueryBatchFactory(project=project)
    for k in range(6):
        AssignmentFactory(batch=batch, item=ItemFactory(project=project), labeler=a if k % 2 else b,
                          kind=Assignment.Kind.FIRST_LABEL)
    for user in (a, b):
        services.ensure_profile(user)
    mine = list(Assignment.objects.filter(labeler=a).values_list("pk", flat=True))
    theirs = list(Assignment.objects.filter(labeler=b).values_list("pk", flat=True))
    return {
        "project": project,
        "real_ids": {"project_id": [project.pk], "assignment_id": mine + theirs[:1]},
        "headers": {role: {"Authorization": f"Token {Token.objects.create(user=user).key}"}
                    for role, user in (("annotator", a), ("staff", staff))},
    }


def fuzz(app, headers: dict[str, dict], *, examples: int, negative: bool = True, seed: int = 0,
         real_ids: dict[str, list] | None = None, result: FuzzResult | None = None) -> FuzzResult:
    """Send ``examples`` generated cases per operation, role and generation mode to the WSGI ``app``.

    ``real_ids`` (path parameter -> existing ids): each generated case with such a parameter is
    sent a second time with a real id in it, so fuzzed bodies reach the code behind the lookup.
    """
    import schemathesis
    from schemathesis.generation import GenerationMode

    result = result or FuzzResult()
    schema = schemathesis.openapi.from_wsgi(SCHEMA_URL, app)
    modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if negative else [])
    operations = [r.ok() for r in schema.get_all_operations()]
    for op in operations:
        name = f"{op.method.upper()} {op.path}"
        for role, role_headers in headers.items():
            for mode in modes:
                _run_operation(op, name, role, role_headers, mode, examples, seed, real_ids or {}, result)
    return result


def _run_operation(op, name, role, role_headers, mode, examples, seed, real_ids, result: FuzzResult) -> None:
    from hypothesis import HealthCheck, Phase, given, seed as hseed, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation import GenerationMode

    @hseed(seed)
    @settings(max_examples=examples, database=None, deadline=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.generate], print_blob=False)
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case):
        send(case)
        # Random ids mostly miss: send the same generated query/body again at real objects' ids.
        params = case.path_parameters or {}
        if any(k in real_ids for k in params):
            counter[0] += 1
            case.path_parameters = {k: (real_ids[k][counter[0] % len(real_ids[k])] if k in real_ids else v)
                                    for k, v in params.items()}
            send(case)

    def send(case):
        response = case.call(headers=role_headers)
        result.cases += 1
        result.statuses[(role, response.status_code)] += 1
        result.per_operation[(role, name)] += 1
        result.by_operation_status[(name, response.status_code)] += 1
        why = problem_with(response)
        if why:
            result.merge_failure({"role": role, "operation": name, "mode": mode.value, "status": response.status_code,
                                  "problem": why, "request": f"{case.method} {case.formatted_path} query={case.query} "
                                                            f"body={str(case.body)[:200]}",
                                  "body": response.content[:300].decode("utf-8", "replace")})

    counter = [0]
    try:
        run()
    except Unsatisfiable:
        if mode != GenerationMode.NEGATIVE or op.path_parameters or op.query or op.body:
            raise
        result.no_negative.add(name)  # e.g. GET /api/labeling/projects/: no input to violate


def table(result: FuzzResult, seconds: float) -> str:
    lines = [f"cases: {result.cases} in {seconds:.1f} s ({result.cases / max(seconds, 1e-9):.0f}/s)", ""]
    roles = sorted({r for r, _ in result.statuses})
    codes = sorted({s for _, s in result.statuses})
    lines.append(f"{'status':>8} | " + " | ".join(f"{r:>10}" for r in roles) + " |      total")
    lines.append("-" * (12 + 13 * (len(roles) + 1)))
    for code in codes:
        row = [result.statuses[(r, code)] for r in roles]
        lines.append(f"{code:>8} | " + " | ".join(f"{v:>10}" for v in row) + f" | {sum(row):>10}")
    lines.append("")
    lines.append(f"{'operation':<62} | " + " | ".join(f"{r:>10}" for r in roles))
    for op in sorted({o for _, o in result.per_operation}):
        lines.append(f"{op:<62} | " + " | ".join(f"{result.per_operation[(r, op)]:>10}" for r in roles))
    lines.append("")
    lines.append("statuses per operation (both roles):")
    for op in sorted({o for o, _ in result.by_operation_status}):
        counts = sorted((s, n) for (o, s), n in result.by_operation_status.items() if o == op)
        lines.append(f"  {op:<60} " + ", ".join(f"{s}: {n}" for s, n in counts))
    lines.append("")
    if result.no_negative:
        lines.append(f"no negative cases (nothing to violate): {', '.join(sorted(result.no_negative))}")
    fives = sum(v for (_, s), v in result.statuses.items() if s >= 500)
    lines.append(f"5xx responses: {fives}; distinct failures: {len(result.failures)}")
    for f in result.failures:
        lines.append(f"  FAIL {f['role']} {f['operation']} [{f['mode']}] -> {f['status']} {f['problem']}: "
                     f"{f['request']} => {' '.join(f['body'].split())[:160]}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=60, help="generated cases per operation, role and mode")
    parser.add_argument("--no-negative", action="store_true", help="only schema-valid requests")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="fuzz-api-"))
    os.environ.update({
        "DEBUG": "0", "SECRET_KEY": "fuzz-only-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz-XYZ",
        "ALLOWED_HOSTS": "localhost,127.0.0.1,testserver", "SECURE_SSL_REDIRECT": "0",
        "ROBUSTAL_DATA_DIR": str(tmp), "DATABASE_URL": f"sqlite:///{tmp / 'fuzz.sqlite3'}",
        "MEDIA_ROOT": str(tmp / "media"), "CELERY_BROKER_URL": "filesystem://", "LOG_LEVEL": "CRITICAL",
        "DJANGO_SETTINGS_MODULE": "config.settings",
    })
    sys.path.insert(0, str(ROOT))
    try:
        import logging

        import django

        django.setup()
        logging.disable(logging.WARNING)  # every refused request logs a warning; the table says it all
        from django.conf import settings as dj_settings
        from django.core.management import call_command
        from django.core.wsgi import get_wsgi_application

        dj_settings.LABELING_LOOP_DELAY_SECONDS = 0
        call_command("migrate", verbosity=0)
        world = make_world()
        app = get_wsgi_application()
        started = time.perf_counter()
        result = fuzz(app, world["headers"], examples=args.examples, negative=not args.no_negative, seed=args.seed,
                      real_ids=world["real_ids"])
        print(table(result, time.perf_counter() - started))
        return 1 if result.failures else 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
