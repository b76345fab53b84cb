"""The seed use case: a 3-step "process image" job, triggered and awaited.

    uv run python examples/basic.py            # uses DURABLY_DATABASE_URL or sqlite:///durably.db

Each step is a checkpoint. Kill the program during a step (Ctrl-C or kill -9)
and run it again: the same run (same idempotency key) is picked up once its
lease expires, the finished steps are replayed from the database without
running again, and the job continues where it stopped.
"""

from __future__ import annotations

import asyncio
import os
import time

from pydantic import BaseModel

from durably import Step, create_durably, define_job

# How long each pretend step takes; long enough to kill the program mid-run.
STEP_SECONDS = float(os.environ.get("BASIC_STEP_SECONDS", "1.0"))


class ImageIn(BaseModel):
    url: str
    width: int = 800


class ImageOut(BaseModel):
    url: str
    size: int


def download(url: str) -> bytes:
    # A sync function: durably runs it in a worker thread, so it can block.
    print(f"  downloading {url} ...", flush=True)
    time.sleep(STEP_SECONDS)
    return b"\x89PNG" + url.encode()


def resize(data: bytes, width: int) -> dict[str, int]:
    print(f"  resizing to {width}px ...", flush=True)
    time.sleep(STEP_SECONDS)
    return {"width": width, "size": len(data) * 10}


async def upload(size: int) -> str:
    print(f"  uploading {size} bytes ...", flush=True)
    await asyncio.sleep(STEP_SECONDS)
    return f"https://cdn.example.com/images/{size}.png"


@define_job("process-image", input=ImageIn, output=ImageOut)
async def process_image(step: Step, image: ImageIn) -> ImageOut:
    # Step results are stored as JSON; bytes would not be, so keep their length only.
    data_len = await step.run("download", lambda: len(download(image.url)))
    resized = await step.run("resize", resize, b"x" * data_len, image.width)
    url = await step.run("upload", upload, resized["size"])
    return ImageOut(url=url, size=resized["size"])


async def main() -> None:
    # A short lease so that, after a kill, the next start resumes within seconds.
    async with create_durably(
        jobs={"process_image": process_image},
        lease_duration=3.0,
        lease_renew_interval=1.0,
        polling_interval=0.5,
    ) as durably:
        # The idempotency key makes a rerun find the same run instead of starting anew.
        result = await durably.jobs.process_image.trigger_and_wait(
            {"url": "https://example.com/cat.png"}, idempotency_key="cat.png"
        )
        print(f"run {result.id} ({result.disposition}) -> {result.output.model_dump_json()}")


if __name__ == "__main__":
    asyncio.run(main())
