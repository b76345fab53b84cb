"""The app's durable job, and the one blocking ``durably`` instance of this process.

Views import ``durably`` to trigger runs; ``manage.py durably_worker`` runs them.
"""

import os
import time

from django.conf import settings
from pydantic import BaseModel

from durably import Step, define_job
from durably.sync import create_durably

STEP_SECONDS = float(os.environ.get("REPORT_STEP_SECONDS", "0.5"))


class ReportIn(BaseModel):
    user: str
    days: int = 7


class ReportOut(BaseModel):
    user: str
    lines: int


def count_events(user: str, day: int) -> int:
    time.sleep(STEP_SECONDS)  # pretend to query something slow (a sync step: a thread)
    return len(user) * (day + 1)


@define_job("report", input=ReportIn, output=ReportOut)
async def build_report(step: Step, payload: ReportIn) -> ReportOut:
    lines = 0
    for day in range(payload.days):
        lines += await step.run(f"day-{day}", count_events, payload.user, day)
        step.progress(day + 1, payload.days, f"day {day + 1} of {payload.days}")
    step.log.info("report built", user=payload.user, lines=lines)
    return ReportOut(user=payload.user, lines=lines)


# Built when first imported (the first request, or the worker command); after a
# fork (gunicorn --preload) each process builds its own engine on first use.
durably = create_durably(settings.DURABLY_DATABASE_URL, jobs={"report": build_report})
