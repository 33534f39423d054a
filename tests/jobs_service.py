"""The Jobs service (tests/protos/durable/jobs.proto) the durable suites serve in process: it does
what each job asks (work for a while, fail some attempts with a code) and records every delivery."""

from __future__ import annotations

import asyncio
from collections import Counter

from google.protobuf.empty_pb2 import Empty
from jobs.v1.jobs_pb2 import Job, JobResult
from jobs.v1.jobs_protobind import JobsService

import protobind
from protobind import Code, RpcError


class Jobs(JobsService):
    """Does what each job asks (see jobs.proto) and records every delivery."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.deliveries: list[tuple[str, int, str]] = []  # (job id, attempt, message id)
        self.running = 0
        self.most_running = 0
        self.release = asyncio.Event()
        self.release.set()

    async def _work(self, job: Job, context: protobind.Context) -> None:
        delivery = context.delivery
        assert delivery is not None
        self.deliveries.append((job.id, delivery.attempt, delivery.message_id))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self.release.wait()
            if job.work:
                await asyncio.sleep(job.work)
        finally:
            self.running -= 1
        if job.fail_attempts < 0 or delivery.attempt <= job.fail_attempts:
            if job.fail_code == 0:
                raise ValueError("a bug")  # becomes INTERNAL: retried
            raise RpcError(Code(job.fail_code), f"job {job.id} failed")

    async def submit(self, request: Job, context: protobind.Context) -> Empty:
        await self._work(request, context)
        return Empty()

    async def run(self, request: Job, context: protobind.Context) -> JobResult:
        await self._work(request, context)
        assert context.delivery is not None
        return JobResult(
            id=request.id,
            attempt=context.delivery.attempt,
            message_id=context.delivery.message_id,
            payload=self.name or request.payload,
        )

    def handled(self, job_id: str) -> list[int]:
        return [attempt for jid, attempt, _ in self.deliveries if jid == job_id]

    def ids(self) -> Counter[str]:
        return Counter(jid for jid, _, _ in self.deliveries)
