"""An example durably storage adapter: a synchronous stdlib ``sqlite3`` executor
under the shared ``SqlStorage``, opened by ``sqlite3sync:///path.db`` URLs.

Written by following ``docs/writing-a-storage-adapter.md`` (route 1: a
SQLite-compatible driver). It blocks the event loop for each statement, which
is fine for a small tool or a test and is the simplest executor there is; the
real ``durably-sqlite`` shows how to avoid that.
"""

__all__: list[str] = []
