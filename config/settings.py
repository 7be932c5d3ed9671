"""Settings, all read from environment variables (documented in README.md).

The defaults are the *embedded* configuration: a SQLite file and Celery's
filesystem transport, so the whole product runs with no database or broker
server. Set ``DATABASE_URL`` and ``CELERY_BROKER_URL`` for PostgreSQL + Redis.
"""
from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if not value:
        return default
    return [part.strip() for part in value.split(",") if part.strip()]


DEBUG = env_bool("DEBUG", False)

# Where the embedded defaults keep their state (SQLite file, broker folders, media, caches).
DATA_DIR = Path(os.environ.get("ROBUSTAL_DATA_DIR", BASE_DIR / "var")).expanduser().resolve()
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", DATA_DIR / "media")).expanduser().resolve()
MEDIA_URL = "/media/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", DATA_DIR / "staticfiles")).expanduser().resolve()
STATIC_URL = "/static/"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]

# Feature/weight caches of the learner (never committed, derived locally).
ROBUSTAL_CACHE_DIR = Path(
    os.environ.get("ROBUSTAL_CACHE_DIR", Path.home() / ".cache" / "robustal")
).expanduser()
os.environ.setdefault("ROBUSTAL_CACHE_DIR", str(ROBUSTAL_CACHE_DIR))
# Optional read-only folder with the paper, CIFAR-10 JPEGs and CIFAR-2 (../shared by default).
ROBUSTAL_SHARED_DIR = Path(
    os.environ.get("ROBUSTAL_SHARED_DIR", BASE_DIR.parent / "shared")
).expanduser()
os.environ.setdefault("ROBUSTAL_SHARED_DIR", str(ROBUSTAL_SHARED_DIR))

_DEV_SECRET = "insecure-dev-only-secret-key-change-me-0123456789abcdefghijklmnopqrstuvwxyz"
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG and not env_bool("ROBUSTAL_ALLOW_DEV_SECRET", False):
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set SECRET_KEY, or DEBUG=1 for local development."
        )
    SECRET_KEY = _DEV_SECRET

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI as our own static files (no CDN)
    "axes",
    "labeling",
    "learner",
    "trust",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "config.middleware.RequestSizeLimitMiddleware",  # 413 from Content-Length, before the body is read
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "config.middleware.CSPMiddleware",  # django-csp's, with the static policy built once
    # Turns a locked-out login (too many failures) into a 429 with a clear message.
    "axes.middleware.AxesMiddleware",
    # styled 404 (never Django's debug URL list, even with DEBUG=1), 403 for non-staff in the admin
    "config.error_pages.FriendlyErrorPagesMiddleware",
    "config.middleware.DatabaseUnavailableMiddleware",  # DB down: a clear 503, not a traceback
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{DATA_DIR / 'db.sqlite3'}"),
        conn_max_age=int(os.environ.get("DB_CONN_MAX_AGE", "60")),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # SQLite is shared by web and worker processes. WAL lets readers work while one writer
    # writes; IMMEDIATE transactions take the write lock when they begin, so concurrent writers
    # queue on it (busy timeout 20 s) instead of failing with "database is locked" when a read
    # lock cannot be upgraded (the rollback-journal default answered most of 50 annotators' submits
    # with 503).
    DATABASES["default"].setdefault("OPTIONS", {}).update({
        "timeout": 20, "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL;",
    })
    # Persistent connections (``DB_CONN_MAX_AGE``, as for PostgreSQL; one per gunicorn thread):
    # a connection per request cost SQLite more CPU than the request's own statements (opening,
    # reading the schema, the PRAGMAs, a WAL checkpoint when the last connection closes, every
    # statement prepared again): with the other changes of that commit, 12.8 ms of Django's CPU
    # per next + answer fell to 3.9 ms (bench/profile_loop.py, docs/reliability.md).
    # A file, not memory, so that worker processes started by the tests see the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test-db.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# django-axes first: refuses logins (pages, admin, /api/token/) after too many failures.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve static files straight from the source folders when collectstatic has not run (dev, tests).
WHITENOISE_USE_FINDERS = True

# Uploads: keep big archives on disk, refuse absurd request bodies.
DATA_UPLOAD_MAX_MEMORY_SIZE = int(os.environ.get("DATA_UPLOAD_MAX_MEMORY_SIZE", 5 * 1024 * 1024))
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
ROBUSTAL_MAX_UPLOAD_BYTES = int(os.environ.get("ROBUSTAL_MAX_UPLOAD_BYTES", 512 * 1024 * 1024))

API_THROTTLE_ANON = os.environ.get("API_THROTTLE_ANON", "120/minute").strip()
API_THROTTLE_USER = os.environ.get("API_THROTTLE_USER", "3000/minute").strip()
API_THROTTLE_ANON = None if API_THROTTLE_ANON.lower() in ("", "off", "0") else API_THROTTLE_ANON
API_THROTTLE_USER = None if API_THROTTLE_USER.lower() in ("", "off", "0") else API_THROTTLE_USER
REST_FRAMEWORK = {
    # Token first: a scripted request (an Authorization header) then never loads a session.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "labeling.authentication.TokenAuthentication",  # DRF's, plus the annotator check in one query
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # DRF's negotiation, without parsing the Accept header when it asks for JSON (or anything)
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "labeling.negotiation.JSONFirstNegotiation",
    # Rates per client (anonymous: per IP; signed in: per user), counted in the cache (per process
    # with the default local-memory cache). "off" disables one. Users: high, a person labels < 2/s.
    "DEFAULT_THROTTLE_CLASSES": [
        cls for cls, rate in (("rest_framework.throttling.AnonRateThrottle", API_THROTTLE_ANON),
                              ("rest_framework.throttling.UserRateThrottle", API_THROTTLE_USER)) if rate
    ],
    "DEFAULT_THROTTLE_RATES": {"anon": API_THROTTLE_ANON, "user": API_THROTTLE_USER},
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Robust active labeling API",
    "DESCRIPTION": ("Annotators fetch assignments and submit labels; staff create, fill, start, pause and "
                    "follow projects. Authenticate with a session or `Authorization: Token <key>` "
                    "(POST /api/token/)."),
    "VERSION": "1.0.0",
    # /api/docs/ serves Swagger UI from drf-spectacular-sidecar's static files: it works offline
    # and under the site's 'self'-only Content-Security-Policy (no CDN, no online validator badge).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
}

# ---- Celery ---------------------------------------------------------------------------------
# Default: kombu's filesystem transport (no server). Redis when CELERY_BROKER_URL says so.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND") or None
BROKER_DIR = Path(os.environ.get("ROBUSTAL_BROKER_DIR", DATA_DIR / "broker")).expanduser()


def filesystem_broker_options(broker_dir: Path) -> dict:
    """Transport options of kombu's filesystem broker rooted at ``broker_dir`` (folders created)."""
    for sub in ("queue", "processed", "control"):
        (broker_dir / sub).mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(broker_dir / "queue"),
        "data_folder_out": str(broker_dir / "queue"),
        "processed_folder": str(broker_dir / "processed"),
        "store_processed": False,
        "control_folder": str(broker_dir / "control"),
    }


if CELERY_BROKER_URL.startswith("filesystem"):
    CELERY_BROKER_TRANSPORT_OPTIONS = filesystem_broker_options(BROKER_DIR)
    # The filesystem transport has no broadcast channel for remote control.
    CELERY_WORKER_ENABLE_REMOTE_CONTROL = False
else:
    _visibility = int(os.environ.get("CELERY_VISIBILITY_TIMEOUT", 3600))
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # Redelivery window for unacknowledged (late-ack) tasks of a dead worker: longer than any
        # retraining (a running task older than this is delivered again; the loop makes that a no-op).
        "visibility_timeout": _visibility,
        # Look for such tasks every few seconds (kombu's default scans every ~100 s).
        "unacked_restore_interval": min(10, max(1, _visibility // 5)),
        "unacked_restore_throttle": 1,
        # A vanished broker must not hang a web request (the enqueue after an answer).
        "socket_connect_timeout": 3,
        "socket_timeout": 10,
    }
# Publishing gives up quickly when the broker is down; the answer is already committed and the
# loop sweeper (below) sends the task again once the broker is back.
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2,
                                    "interval_max": 0.5}
CELERY_TASK_DEFAULT_QUEUE = "default"
# Heavy model work (retraining, crafting, feature extraction) goes to `train` (GPU workers).
CELERY_TASK_ROUTES = {
    "learner.tasks.train.*": {"queue": "train"},
    "labeling.tasks.train.*": {"queue": "train"},
}
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = TIME_ZONE
# Loop sweeper: re-sends the loop task of a complete batch whose task was lost (broker down when
# it was sent, filesystem-broker worker killed). Runs at worker start and on beat
# (`celery -A config worker -B` or `celery -A config beat`).
LABELING_SWEEP_AFTER_SECONDS = float(os.environ.get("LABELING_SWEEP_AFTER_SECONDS", 60))
LABELING_STALE_TASK_SECONDS = float(os.environ.get("LABELING_STALE_TASK_SECONDS", 3600))
# Shared queue: a claim on an item lasts this long; then anyone eligible may take the item over.
LABELING_LEASE_SECONDS = float(os.environ.get("ROBUSTAL_LEASE_SECONDS", 300))
if "LABELING_LOOP_DELAY_SECONDS" in os.environ:  # grace before the loop task; default: the undo window
    LABELING_LOOP_DELAY_SECONDS = float(os.environ["LABELING_LOOP_DELAY_SECONDS"])
# Workers write their own heartbeat row this often (learner/heartbeat.py; the staff home shows it).
ROBUSTAL_WORKER_HEARTBEAT_SECONDS = float(os.environ.get("ROBUSTAL_WORKER_HEARTBEAT_SECONDS", 30))
CELERY_BEAT_SCHEDULE = {
    "labeling-sweep-loop": {
        "task": "labeling.tasks.sweep_loop",
        "schedule": float(os.environ.get("LABELING_SWEEP_INTERVAL_SECONDS", 30)),
        "options": {"expires": 60},
    },
}
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")

# ---- Email (staff notices: a labeler flagged or suspended by the trust rules) ------------------
# The console backend prints mails to the log until an SMTP server is configured.
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", 25))
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = 10
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "robustal@localhost")
# The site's address as people reach it, for links in mails (e.g. https://labels.example.com).
ROBUSTAL_SITE_URL = os.environ.get("ROBUSTAL_SITE_URL", "http://127.0.0.1:8000").rstrip("/")

# ---- Production hardening (on whenever DEBUG is off) ------------------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", True)
    SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", 60 * 60 * 24 * 30))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
    if not SECURE_HSTS_PRELOAD:
        # Preloading binds the whole domain (and its subdomains) to HTTPS in browsers for months and is
        # slow to undo: the domain owner opts in (SECURE_HSTS_PRELOAD=1, with SECURE_HSTS_SECONDS >= 1 year).
        SILENCED_SYSTEM_CHECKS = ["security.W021"]
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Content-Security-Policy (django-csp): scripts and styles only from our own origin, no inline
# scripts, no framing. Inline style *attributes* stay allowed (the Django admin uses a few).
# The Swagger page (/api/docs/) needs no exception: its files are ours (drf-spectacular-sidecar).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "style-src-attr": ["'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}

# Login throttling (django-axes): after LOGIN_FAILURE_LIMIT failed logins for one user name from
# one address, that pair is locked for LOGIN_LOCKOUT_MINUTES (or until staff unlock it: admin
# "Axes > Access attempts", or `manage.py axes_reset_username <name>`). A success resets the count.
AXES_FAILURE_LIMIT = int(os.environ.get("LOGIN_FAILURE_LIMIT", 5))
AXES_COOLOFF_TIME = float(os.environ.get("LOGIN_LOCKOUT_MINUTES", 15)) / 60  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "config.middleware.login_locked_out"
AXES_VERBOSE = False

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}
