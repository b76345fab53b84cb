"""Idempotency keys: trigger the same thing twice, get one run.

    uv run python examples/idempotency.py

Typical use: a webhook or a form that may be delivered or submitted twice. Key
the trigger by what makes it unique (here: the user and the email kind); a
second trigger with the same key returns the existing run — whatever its status,
even long after it finished — with ``disposition="idempotent"``, and its new
input is ignored. The key stays reserved until the run is deleted or purged.
Run the program twice: the second time even the first trigger is idempotent and
no email goes out — the keys live in the database, not in this process.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from durably import Step, create_durably, define_job

sent: list[str] = []  # what actually went out, to show it happened once


class EmailIn(BaseModel):
    to: str
    subject: str


def send(to: str, subject: str) -> str:
    sent.append(f"{to}: {subject}")
    return f"msg-{len(sent)}"


@define_job("send-email", input=EmailIn, output=str)
async def send_email(step: Step, email: EmailIn) -> str:
    message_id: str = await step.run("send", send, email.to, email.subject)
    return message_id


async def main() -> None:
    async with create_durably(jobs={"send_email": send_email}) as durably:
        key = "welcome:user-42"
        first = await durably.jobs.send_email.trigger(
            {"to": "ada@example.com", "subject": "Welcome!"}, idempotency_key=key
        )
        print(f"1st trigger: {first.disposition:<10} run {first.id}")

        # Same key, different input: the existing run comes back, nothing is queued.
        second = await durably.jobs.send_email.trigger(
            {"to": "ada@example.com", "subject": "Welcome (retry)"}, idempotency_key=key
        )
        print(f"2nd trigger: {second.disposition:<10} run {second.id}")
        print(f"same run: {second.id == first.id}; its input: {second.run.input['subject']!r}")

        # After the run has finished, the key still finds it: trigger_and_wait
        # returns the stored output without sending anything again.
        await durably.wait_for_run(first.id)
        third = await durably.jobs.send_email.trigger_and_wait(
            {"to": "ada@example.com", "subject": "Welcome!"}, idempotency_key=key
        )
        print(f"3rd trigger: {third.disposition:<10} run {third.id} -> {third.output}")

        # Keys are scoped per job and per key: another key is another run.
        other = await durably.jobs.send_email.trigger_and_wait(
            {"to": "bob@example.com", "subject": "Welcome!"}, idempotency_key="welcome:user-43"
        )
        print(f"other key:   {other.disposition:<10} run {other.id} -> {other.output}")

        print(f"emails sent: {len(sent)} {sent}")


if __name__ == "__main__":
    asyncio.run(main())
