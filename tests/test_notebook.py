"""examples/notebook.ipynb runs as Jupyter runs it: each code cell compiled with
top-level ``await`` and executed on an event loop that keeps running in a thread of
its own between cells (the kernel's), the value of its last expression being what
the notebook shows; a blocking ``durably.sync`` call in a cell is refused
(docs/guides/frameworks.md#jupyter)."""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from durably import BlockingCallError

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "notebook.ipynb"


class Kernel:
    """What an IPython kernel does with a cell, without IPython."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="kernel")
        self.thread.start()
        self.namespace: dict[str, Any] = {"__name__": "__main__"}

    def run_cell(self, source: str) -> Any:
        """Execute the cell on the kernel's loop; the value of its last expression."""
        tree = ast.parse(source)
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = tree.body[-1]
            tree.body[-1] = ast.Assign(
                targets=[ast.Name("_out", ctx=ast.Store())], value=last.value
            )
            ast.fix_missing_locations(tree)
        code = compile(tree, "<cell>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)

        async def execute() -> None:
            result = eval(code, self.namespace)  # a coroutine when the cell awaits
            if inspect.iscoroutine(result):
                await result

        asyncio.run_coroutine_threadsafe(execute(), self.loop).result(timeout=120)
        return self.namespace.pop("_out", None)

    def shutdown(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Kernel]:
    monkeypatch.chdir(tmp_path)  # the notebook's database is relative: notebook.db
    kernel = Kernel()
    yield kernel
    kernel.shutdown()


def code_cells() -> list[str]:
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    return ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]


def test_notebook__cells_run_on_the_kernels_loop(
    kernel: Kernel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    define, start, wait, many, close = code_cells()
    assert kernel.run_cell(define) is None
    assert kernel.run_cell(start) is True  # the worker runs, between cells too
    assert kernel.run_cell(wait) == {"the": 3, "cat": 1, "hat": 1, "end": 1}
    assert capsys.readouterr().out.split() == ["1/3", "2/3", "3/3"]
    assert kernel.run_cell(many) == ["completed"] * 4
    assert kernel.run_cell(close) is None
    assert kernel.run_cell("durably.running") is False
    assert (tmp_path / "notebook.db").exists()


def test_notebook__a_blocking_call_in_a_cell_says_to_await(kernel: Kernel) -> None:
    kernel.run_cell("from durably.sync import create_durably")
    with pytest.raises(BlockingCallError, match="Jupyter") as info:
        kernel.run_cell('create_durably("memory://")')
    assert "await" in str(info.value)
