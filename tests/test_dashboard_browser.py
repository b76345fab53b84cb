"""The dashboard as an operator uses it: ``durably dashboard`` and ``durably worker``
as two real processes on one SQLite file, the page in Debian's headless chromium
driven by playwright-core (tests/browser/dashboard.mjs). Runs are triggered with
``durably trigger``; everything the page shows came through the database.

Screenshots go to ``$DURABLY_SCREENSHOTS`` when set (``docs/img`` holds the ones
the README and the docs show), else to the test's temporary directory.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
from cli_support import DURABLY, eventually, ops_env
from test_http_browser import BROWSER_DIR, browser_tools  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/counts", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.usefixtures("browser_tools")
def test_dashboard__trigger_watch_cancel_retry_in_a_browser(tmp_path: Path) -> None:
    shots = Path(os.environ.get("DURABLY_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    with ops_env(tmp_path) as ops:
        ops.ok("migrate")
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        dashboard = ops.start("dashboard", "--port", str(port), "--app", "ops_app:durably")
        worker = ops.start("worker", "ops_app:durably", "--concurrency", "2")
        eventually(lambda: _up(base), f"the dashboard on {base}\n{dashboard.output()}")
        done = subprocess.run(
            [
                "node",
                str(BROWSER_DIR / "dashboard.mjs"),
                base,
                str(tmp_path / "chromium-profile"),
                str(shots),
                str(ops.gates),
                str(DURABLY),
            ],
            cwd=BROWSER_DIR,
            env=ops.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-4000:] + dashboard.output()[-2000:]
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        assert seen["pageErrors"] == []
        assert seen["initialRows"] == []
        assert seen["liveSteps"] == ["row-0", "row-1"]
        assert seen["error"] == "row 2: price is not a number ('12,50')"
        assert seen["failedSteps"] == ["row-0:completed", "row-1:completed", "check:failed"]
        assert seen["failedLogs"] == 2
        assert seen["output"] == {"imported": 3}
        assert seen["cancelledTab"] == [seen["cancelled"]]
        assert seen["counts"] == {
            "all": "2",
            "pending": "0",
            "leased": "0",
            "waiting": "0",
            "completed": "1",
            "failed": "0",
            "cancelled": "1",
        }
        assert seen["finalRows"] == [seen["retriggered"], seen["cancelled"]]
        assert seen["waitMetadata"] == {"amount": 120}
        assert seen["waitingTab"] == "1"
        assert seen["signalled"] == {"status": "paid", "by": "dashboard"}
        assert seen["waitResult"] == 'signal: {"approved":true,"by":"dashboard"}'
        assert seen["signalForms"] == 0  # a resolved wait takes no other signal
        assert seen["offline"] is True  # every request went to the dashboard itself
        shots_taken = ("live", "failed", "retried", "waiting")
        for name in (f"dashboard-{shot}.png" for shot in shots_taken):
            assert (shots / name).stat().st_size > 10_000
        # and the database agrees with what the page showed
        cancelled = ops.run(seen["cancelled"])["run"]
        assert cancelled["status"] == "cancelled"
        assert ops.run(seen["retriggered"])["run"]["status"] == "completed"
        assert ops.durably("runs", "show", seen["retried"]).returncode == 3
        [wait] = ops.run(seen["expense"])["waits"]
        assert (wait["status"], wait["payload"]) == (
            "resolved",
            {"approved": True, "by": "dashboard"},
        )
        worker.signal(signal.SIGTERM)
        dashboard.signal(signal.SIGINT)
        assert worker.wait() == 0, worker.output()
        dashboard.wait()
