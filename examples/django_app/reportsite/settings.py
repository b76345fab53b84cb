"""The least a Django project needs to serve the ``reports`` app: no ORM database
(durably keeps its own), no templates, no sessions."""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "only-for-the-example")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
ROOT_URLCONF = "reportsite.urls"
INSTALLED_APPS = ["reports"]  # its management/commands/durably_worker.py is found here
MIDDLEWARE: list[str] = []
USE_TZ = True

#: Where durably keeps its runs (any durably URL; a PostgreSQL or libSQL one in production).
DURABLY_DATABASE_URL = os.environ.get("DURABLY_DATABASE_URL", "sqlite:///reports.db")
