"""``python manage.py durably_worker``: run durably's worker until Ctrl-C or SIGTERM."""

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from reports.jobs import durably


class Command(BaseCommand):
    help = "Run the durably worker: claim and execute runs until Ctrl-C or SIGTERM."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--concurrency", type=int, default=None, help="runs at once")
        parser.add_argument(
            "--grace", type=float, default=30.0, help="seconds runs in flight get to finish"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(f"durably worker {durably.worker_id}: jobs {sorted(durably.jobs)}")
        self.stdout.flush()
        durably.run_worker(max_concurrent_runs=options["concurrency"], grace=options["grace"])
        # not closed here: the instance is the process's, shared with the views
        # (call_command may run in a process that goes on); it is closed at exit
        self.stdout.write("durably worker stopped")
