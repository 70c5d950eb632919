"""Job handles: the API's :class:`~kiln_client.models.Job` plus methods to follow it.

``Job`` (sync) and ``AsyncJob`` (async) are twins: ``refresh``, ``wait``, ``logs``, ``cancel``,
``delete``, ``download`` (the compiled SavedModel, extracted and sha256-verified) and
``download_artifact``. Their fields are the wire schema's; ``model_dump()`` gives the API's JSON.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import httpx
from pydantic import PrivateAttr

from kiln_client import models
from kiln_client._artifacts import (
    COMPILED_MODEL,
    REDIRECT,
    SSEParser,
    append_download,
    append_download_async,
    artifact_target,
    extract_saved_model,
    finish_download,
)
from kiln_client._progress import ProgressBar, progress_enabled
from kiln_client.errors import APIConnectionError, JobCancelled, JobFailed, WaitTimeout
from kiln_client.events import JobEvent, aiter_events, iter_events

if TYPE_CHECKING:
    from kiln_client._client import AsyncClient, Client

__all__ = ["AsyncJob", "Job"]

_LOG_TAIL = 20
_TERMINAL_LOG_EVENTS = frozenset({"end", "done", "close"})


class _JobBase(models.Job):
    """Fields and pure helpers shared by both handles."""

    def _absorb(self, other: models.Job) -> None:
        for field in models.Job.model_fields:
            setattr(self, field, getattr(other, field))

    @property
    def done(self) -> bool:
        """True once the job is succeeded, failed or cancelled."""
        return self.status.is_terminal

    @property
    def failure_reason(self) -> str | None:
        """The failure message, when the job failed."""
        return self.failure.message if self.failure else None

    def _artifact_sha(self, name: str) -> str | None:
        return next((a.sha256 for a in self.artifacts if a.name == name), None)

    def _outcome_error(self, log_tail: list[str]) -> JobFailed | JobCancelled | None:
        handle = cast("Job | AsyncJob", self)  # _JobBase is only ever one of the two
        if self.status is models.JobStatus.FAILED:
            return JobFailed(handle, log_tail)
        if self.status is models.JobStatus.CANCELLED:
            return JobCancelled(handle)
        return None

    def _progress_text(self) -> str:
        return self.stage_message or self.stage.value


def _tail(text: str) -> list[str]:
    return text.splitlines()[-_LOG_TAIL:]


class Job(_JobBase):
    """A compile job, bound to the :class:`~kiln_client.Client` that fetched it."""

    _client: Client = PrivateAttr()

    @classmethod
    def _bind(cls, client: Client, data: Any) -> Job:
        job = cls.model_validate(data if isinstance(data, dict) else data.model_dump())
        job._client = client
        return job

    def refresh(self) -> Job:
        """Fetch the job's current state into this object and return it.

        Raises:
            NotFoundError: the job was deleted.
        """
        resp = self._client._request("GET", f"/v1/jobs/{self.id}")
        self._absorb(models.Job.model_validate_json(resp.content))
        return self

    def wait(
        self, timeout: float | None = None, *, poll_interval: float | None = None,
        progress: bool = False, raise_on_failure: bool = True,
    ) -> Job:
        """Block until the job ends.

        Args:
            timeout: give up after this many seconds (``None``: wait as long as it runs).
            poll_interval: seconds between status checks (the client's default otherwise).
            progress: draw a stage bar on stderr when it is a terminal.
            raise_on_failure: raise for a failed or cancelled job instead of returning it.

        Returns:
            This job, now terminal.

        Raises:
            JobFailed: it failed (``reason`` and ``log_tail`` attached).
            JobCancelled: it was cancelled.
            WaitTimeout: ``timeout`` passed first; the job goes on.
        """
        interval = poll_interval or self._client.poll_interval
        start = time.monotonic()
        bar = ProgressBar("compile", enabled=progress_enabled(progress))
        try:
            while not self.refresh().done:
                bar.update(self.progress, self._progress_text())
                waited = time.monotonic() - start
                if timeout is not None and waited >= timeout:
                    raise WaitTimeout(self, waited)
                time.sleep(min(interval, timeout - waited) if timeout is not None else interval)
            bar.update(1.0 if self.status is models.JobStatus.SUCCEEDED else self.progress, self.status.value)
        finally:
            bar.close()
        if raise_on_failure:
            error = self._outcome_error(self._log_tail())
            if error is not None:
                raise error
        return self

    def _log_tail(self) -> list[str]:
        if self.status is not models.JobStatus.FAILED:
            return []
        try:
            return _tail(self._client._request("GET", f"/v1/jobs/{self.id}/logs").text)
        except Exception:  # the tail is a courtesy; the failure reason matters more
            return []

    def logs(self, follow: bool = True) -> Iterator[str]:
        """Iterate over the compile log's lines.

        Args:
            follow: keep streaming new lines (server-sent events) until the job ends;
                ``False`` returns what is logged so far.

        Yields:
            Log lines without their newline. A dropped stream resumes after the last line seen.
        """
        if not follow:
            yield from self._client._request("GET", f"/v1/jobs/{self.id}/logs").text.splitlines()
            return
        parser = SSEParser()
        while True:
            headers = {"Accept": "text/event-stream"}
            if parser.last_id is not None:
                headers["Last-Event-ID"] = parser.last_id
            ended = False
            try:
                with self._client._stream("GET", f"/v1/jobs/{self.id}/logs", headers=headers) as resp:
                    for raw in resp.iter_lines():
                        for event, _id, data in parser.feed(raw.rstrip("\r")):
                            if event in _TERMINAL_LOG_EVENTS:
                                ended = True
                            elif event == "message":
                                yield data
            except (APIConnectionError, httpx.TransportError):
                pass  # reconnect below, resuming from Last-Event-ID
            if ended or self.refresh().done:
                return

    def events(self) -> Iterator[JobEvent]:
        """Follow the job's typed live events (status, stage, log) until it ends."""
        return iter_events(self)

    def cancel(self) -> Job:
        """Ask the service to cancel the job; returns its state after the request.

        Raises:
            ConflictError: it has already finished.
        """
        resp = self._client._request("POST", f"/v1/jobs/{self.id}/cancel", idempotent=True)
        self._absorb(models.Job.model_validate_json(resp.content))
        return self

    def delete(self) -> None:
        """Delete the finished job and its artifacts (409 while it runs)."""
        self._client._request("DELETE", f"/v1/jobs/{self.id}")

    def download_artifact(
        self, name: str, dest: str | Path | None = None, *, progress: bool = False
    ) -> Path:
        """Download one artifact, verifying its sha256; a dropped transfer resumes with Range.

        Args:
            name: such as ``compiled_model.tar.gz``, ``report.json``, ``compile.log``.
            dest: a directory (the file keeps its name) or a file path; the cwd when omitted.
            progress: draw a byte bar on stderr when it is a terminal.

        Returns:
            The written file.

        Raises:
            ChecksumError: the bytes do not match the announced sha256.
            NotFoundError: no such artifact.
        """
        target = artifact_target(name, dest)
        part = target.with_name(target.name + ".part")
        digest, expected = hashlib.sha256(), self._artifact_sha(name)
        bar = ProgressBar("download", enabled=progress_enabled(progress))
        path = f"/v1/jobs/{self.id}/artifacts/{name}"
        try:
            with part.open("wb") as out:
                for attempt in range(self._client.max_retries + 1):
                    headers = {"Range": f"bytes={out.tell()}-"} if out.tell() else {}
                    try:
                        with self._client._stream("GET", path, headers=headers,
                                                  params=REDIRECT) as resp:
                            expected = resp.headers.get("x-checksum-sha256") or expected
                            if resp.status_code != 307:
                                digest = append_download(resp, out, digest, bar, resp.iter_bytes())
                            else:  # a presigned URL: the bytes come straight from the store
                                with self._client._http.stream(
                                        "GET", resp.headers["location"], headers=headers,
                                        timeout=self._client.timeout) as direct:
                                    direct.raise_for_status()
                                    digest = append_download(direct, out, digest, bar, direct.iter_bytes())
                        break
                    except (APIConnectionError, httpx.TransportError):
                        if attempt == self._client.max_retries:
                            raise
        except BaseException:
            part.unlink(missing_ok=True)  # never leave a partial download behind
            raise
        finally:
            bar.close()
        return finish_download(part, target, name, digest, expected)

    def download(self, dest: str | Path, *, progress: bool = False) -> Path:
        """Download the compiled SavedModel, verify it and extract it into ``dest``.

        Args:
            dest: a directory to extract into (created).
            progress: draw a byte bar on stderr when it is a terminal.

        Returns:
            The extracted SavedModel directory (loadable with ``tf.saved_model.load``).

        Raises:
            ChecksumError: the archive does not match its sha256.
        """
        with tempfile.TemporaryDirectory(prefix="kiln-dl-") as tmp:
            archive = self.download_artifact(COMPILED_MODEL, Path(tmp) / COMPILED_MODEL, progress=progress)
            return extract_saved_model(archive, Path(dest))


class AsyncJob(_JobBase):
    """A compile job bound to an :class:`~kiln_client.AsyncClient`; methods are coroutines."""

    _client: AsyncClient = PrivateAttr()

    @classmethod
    def _bind(cls, client: AsyncClient, data: Any) -> AsyncJob:
        job = cls.model_validate(data if isinstance(data, dict) else data.model_dump())
        job._client = client
        return job

    async def refresh(self) -> AsyncJob:
        """Fetch the job's current state into this object and return it."""
        resp = await self._client._request("GET", f"/v1/jobs/{self.id}")
        self._absorb(models.Job.model_validate_json(resp.content))
        return self

    async def wait(
        self, timeout: float | None = None, *, poll_interval: float | None = None,
        progress: bool = False, raise_on_failure: bool = True,
    ) -> AsyncJob:
        """Wait until the job ends; see :meth:`Job.wait`."""
        interval = poll_interval or self._client.poll_interval
        start = time.monotonic()
        bar = ProgressBar("compile", enabled=progress_enabled(progress))
        try:
            while not (await self.refresh()).done:
                bar.update(self.progress, self._progress_text())
                waited = time.monotonic() - start
                if timeout is not None and waited >= timeout:
                    raise WaitTimeout(self, waited)
                await asyncio.sleep(min(interval, timeout - waited) if timeout is not None else interval)
        finally:
            bar.close()
        if raise_on_failure:
            tail: list[str] = []
            if self.status is models.JobStatus.FAILED:
                try:
                    tail = _tail((await self._client._request("GET", f"/v1/jobs/{self.id}/logs")).text)
                except Exception:  # the tail is a courtesy; the failure reason matters more
                    tail = []
            error = self._outcome_error(tail)
            if error is not None:
                raise error
        return self

    async def logs(self, follow: bool = True) -> AsyncIterator[str]:
        """Iterate over the compile log's lines; see :meth:`Job.logs`."""
        if not follow:
            resp = await self._client._request("GET", f"/v1/jobs/{self.id}/logs")
            for line in resp.text.splitlines():
                yield line
            return
        parser = SSEParser()
        while True:
            headers = {"Accept": "text/event-stream"}
            if parser.last_id is not None:
                headers["Last-Event-ID"] = parser.last_id
            ended = False
            try:
                async with self._client._stream("GET", f"/v1/jobs/{self.id}/logs", headers=headers) as resp:
                    async for raw in resp.aiter_lines():
                        for event, _id, data in parser.feed(raw.rstrip("\r")):
                            if event in _TERMINAL_LOG_EVENTS:
                                ended = True
                            elif event == "message":
                                yield data
            except (APIConnectionError, httpx.TransportError):
                pass
            if ended or (await self.refresh()).done:
                return

    def events(self) -> AsyncIterator[JobEvent]:
        """Follow the job's typed live events; see :meth:`Job.events`."""
        return aiter_events(self)

    async def cancel(self) -> AsyncJob:
        """Ask the service to cancel the job; see :meth:`Job.cancel`."""
        resp = await self._client._request("POST", f"/v1/jobs/{self.id}/cancel", idempotent=True)
        self._absorb(models.Job.model_validate_json(resp.content))
        return self

    async def delete(self) -> None:
        """Delete the finished job and its artifacts."""
        await self._client._request("DELETE", f"/v1/jobs/{self.id}")

    async def download_artifact(
        self, name: str, dest: str | Path | None = None, *, progress: bool = False
    ) -> Path:
        """Download one artifact, verifying its sha256; see :meth:`Job.download_artifact`."""
        target = artifact_target(name, dest)
        part = target.with_name(target.name + ".part")
        digest, expected = hashlib.sha256(), self._artifact_sha(name)
        bar = ProgressBar("download", enabled=progress_enabled(progress))
        path = f"/v1/jobs/{self.id}/artifacts/{name}"
        try:
            with part.open("wb") as out:
                for attempt in range(self._client.max_retries + 1):
                    headers = {"Range": f"bytes={out.tell()}-"} if out.tell() else {}
                    try:
                        async with self._client._stream("GET", path, headers=headers,
                                                        params=REDIRECT) as resp:
                            expected = resp.headers.get("x-checksum-sha256") or expected
                            if resp.status_code != 307:
                                digest = await append_download_async(resp, out, digest, bar, resp.aiter_bytes())
                            else:  # a presigned URL: the bytes come straight from the store
                                async with self._client._http.stream(
                                        "GET", resp.headers["location"], headers=headers,
                                        timeout=self._client.timeout) as direct:
                                    direct.raise_for_status()
                                    digest = await append_download_async(direct, out, digest, bar,
                                                          direct.aiter_bytes())
                        break
                    except (APIConnectionError, httpx.TransportError):
                        if attempt == self._client.max_retries:
                            raise
        except BaseException:
            part.unlink(missing_ok=True)  # never leave a partial download behind
            raise
        finally:
            bar.close()
        return finish_download(part, target, name, digest, expected)

    async def download(self, dest: str | Path, *, progress: bool = False) -> Path:
        """Download, verify and extract the compiled SavedModel; see :meth:`Job.download`."""
        with tempfile.TemporaryDirectory(prefix="kiln-dl-") as tmp:
            archive = await self.download_artifact(
                COMPILED_MODEL, Path(tmp) / COMPILED_MODEL, progress=progress
            )
            return extract_saved_model(archive, Path(dest))

