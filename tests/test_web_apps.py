"""The framework recipes through the blocking API: the Flask app of
``examples/flask_app.py`` and the Django project of ``examples/django_app/`` trigger
runs from their (sync) views, through each framework's test client and through a
real threaded WSGI server with many requests at once; the Django management command
``durably_worker`` runs the worker (docs/guides/frameworks.md)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from socketserver import ThreadingMixIn
from types import ModuleType
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from engine_support import at_once

from durably import RunStatus
from durably.sync import SyncDurably, create_durably

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DJANGO_PROJECT = EXAMPLES / "django_app"


def expected_lines(user: str, days: int) -> int:
    return sum(len(user) * (day + 1) for day in range(days))


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    # the listen backlog: socketserver's default of 5 is less than the clients a test
    # connects at once (24); on a loaded machine the accepting thread falls behind
    # and the connections past the backlog are reset
    request_queue_size = 128


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def wsgi_server(app: Callable[..., Any]) -> Iterator[str]:
    """A real WSGI server (stdlib wsgiref, a thread per request) on a free port."""
    server = make_server(
        "127.0.0.1", 0, app, server_class=ThreadingWSGIServer, handler_class=QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="wsgi-server")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def http(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def many_at_once(base: str, users: list[str]) -> list[str]:
    """One thread per user POSTs /reports at once; the run ids, in the users' order."""
    answers = at_once(lambda u: http("POST", f"{base}/reports", {"user": u, "days": 2}), users)
    assert {code for code, _ in answers} == {202}, answers
    return [body["id"] for _, body in answers]


# -- Flask --


@pytest.fixture
def flask_app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    monkeypatch.setenv("REPORT_STEP_SECONDS", "0")
    spec = importlib.util.spec_from_file_location("flask_app_example", EXAMPLES / "flask_app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    app = module.create_app(f"sqlite:///{tmp_path / 'flask.db'}")
    yield app
    app.extensions["durably"].close()


def test_flask__a_view_triggers_a_run_a_worker_executes_it(flask_app: Any, tmp_path: Path) -> None:
    client = flask_app.test_client()
    r = client.post("/reports", json={"user": "ada", "days": 3})
    assert r.status_code == 202, r.get_json()
    run_id = r.get_json()["id"]
    assert r.get_json()["status"] == "pending"
    assert client.get(f"/reports/{run_id}").get_json()["status"] == "pending"

    # the worker: another instance on the same database, as another process has
    job = flask_app.extensions["durably"].jobs.report.definition
    with create_durably(f"sqlite:///{tmp_path / 'flask.db'}", jobs={"report": job}) as worker:
        worker.wait_for_run(run_id, timeout=60)
    body = client.get(f"/reports/{run_id}").get_json()
    assert body["status"] == "completed"
    assert body["output"] == {"user": "ada", "lines": expected_lines("ada", 3)}
    assert body["progress"] == {"current": 3, "total": 3}


def test_flask__client_mistakes_are_4xx_with_durablys_message(flask_app: Any) -> None:
    client = flask_app.test_client()
    bad = client.post("/reports", json={"days": 3})
    assert bad.status_code == 400
    assert "user" in bad.get_json()["error"]
    assert client.get("/reports/nope").status_code == 404
    assert client.post("/reports/nope/cancel").status_code == 404
    run_id = client.post("/reports", json={"user": "bo"}).get_json()["id"]
    assert client.post(f"/reports/{run_id}/cancel").get_json()["status"] == "cancelled"
    again = client.post(f"/reports/{run_id}/cancel")
    assert again.status_code == 409
    assert "cancelled" in again.get_json()["error"]


@pytest.mark.slow
def test_flask__many_requests_at_once_on_a_real_wsgi_server(flask_app: Any) -> None:
    durably: SyncDurably = flask_app.extensions["durably"]
    users = [f"user{i}" for i in range(24)]
    with wsgi_server(flask_app) as base:
        ids = many_at_once(base, users)
        assert len(set(ids)) == len(users)
        durably.start()  # here the web process runs the worker too
        for run_id in ids:
            durably.wait_for_run(run_id, timeout=60)
        bodies = [http("GET", f"{base}/reports/{run_id}")[1] for run_id in ids]
    assert [b["output"] for b in bodies] == [
        {"user": u, "lines": expected_lines(u, 2)} for u in users
    ]


# -- Django --


@pytest.fixture(scope="module")
def django_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The example project, set up once in this process (Django's settings are
    process-wide); yields its ``reports.jobs`` module."""
    db = tmp_path_factory.mktemp("django") / "reports.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DJANGO_SETTINGS_MODULE", "reportsite.settings")
        mp.setenv("DURABLY_DATABASE_URL", f"sqlite:///{db}")
        mp.setenv("REPORT_STEP_SECONDS", "0")
        mp.syspath_prepend(str(DJANGO_PROJECT))
        import django

        django.setup()
        from reports import jobs

        yield jobs
        jobs.durably.close()


@pytest.mark.slow
def test_django__many_requests_at_once_on_a_real_wsgi_server(django_project: ModuleType) -> None:
    from reportsite.wsgi import application

    durably: SyncDurably = django_project.durably
    users = [f"dj{i}" for i in range(24)]
    with wsgi_server(application) as base:
        ids = many_at_once(base, users)
        assert durably.process_until_idle() >= len(users)
        bodies = [http("GET", f"{base}/reports/{run_id}")[1] for run_id in ids]
    assert [b["output"] for b in bodies] == [
        {"user": u, "lines": expected_lines(u, 2)} for u in users
    ]


def test_django__a_view_triggers_and_the_management_command_runs_the_worker(
    django_project: ModuleType,
) -> None:
    from django.core.management import call_command
    from django.test import Client

    client = Client()
    r = client.post("/reports", {"user": "grace", "days": 4}, content_type="application/json")
    assert r.status_code == 202, r.content
    run_id = r.json()["id"]
    assert client.get(f"/reports/{run_id}").json()["status"] == "pending"

    durably: SyncDurably = django_project.durably
    # `manage.py durably_worker` in a thread of this process: off the main thread it
    # runs until durably.stop() (in its own process, until SIGINT / SIGTERM)
    worker = threading.Thread(target=call_command, args=("durably_worker",), kwargs={"grace": 5})
    worker.start()
    try:
        assert durably.wait_for_run(run_id, timeout=60).status == RunStatus.COMPLETED
    finally:
        durably.stop()
        worker.join(60)
    assert not worker.is_alive()
    body = client.get(f"/reports/{run_id}").json()
    assert body["status"] == "completed"
    assert body["output"] == {"user": "grace", "lines": expected_lines("grace", 4)}

    bad = client.post("/reports", {"days": 1}, content_type="application/json")
    assert bad.status_code == 400
    assert "user" in bad.json()["error"]
    assert client.post("/reports", "{not json", content_type="application/json").status_code == 400
    assert client.get("/reports/nope").status_code == 404
