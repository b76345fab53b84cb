"""The test server of ``libsql_support``: ready means *this* server answers.

A whole run once failed on one libSQL conformance test with ``httpx.ReadError`` on a
sequential request. One way that happens: the test server's port was picked by
binding port 0 and closing it, so another process (the other xdist worker starting a
server of its own) could take it before ``tursodb`` bound it; ``tursodb`` then exited
on the held port, but "ready" only asked whether *something* answered there, so the
test ran against the other worker's server and lost its connection when that test
ended and stopped it. Now the port is the kernel's choice for the server itself and
ready checks that the server's own process listens on it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from libsql_support import TursoServer, listening_ports, pipeline_ready

pytestmark = pytest.mark.slow


def test_first_start__port_is_the_servers_own(tursodb: Path, tmp_path: Path) -> None:
    server = TursoServer(tursodb, tmp_path / "a.db").start()
    try:
        assert server.process is not None
        assert server.port != 0
        assert listening_ports(server.process.pid) == {server.port}
        assert pipeline_ready(server.url)
    finally:
        server.stop()


def test_port_answered_by_another_server__not_ready(tursodb: Path, tmp_path: Path) -> None:
    other = TursoServer(tursodb, tmp_path / "other.db").start()
    try:
        # a restart on a port another server took in the meantime
        server = TursoServer(tursodb, tmp_path / "mine.db", port=other.port)
        with pytest.raises(RuntimeError, match="tursodb"):
            server.start(ready_timeout=1.0)
        assert server.process is None
        assert pipeline_ready(other.url)  # the other one answers there all along
    finally:
        other.stop()


def test_restart__same_port(tursodb: Path, tmp_path: Path) -> None:
    server = TursoServer(tursodb, tmp_path / "a.db").start()
    try:
        port = server.port
        server.restart()
        assert server.port == port
        assert server.process is not None
        assert listening_ports(server.process.pid) == {port}
    finally:
        server.stop()
