"""``client.jobs`` (list all pages, get, cancel, delete) and ``client.cache``, sync and async."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from kiln_client import models
from kiln_client._forms import list_params
from kiln_client._jobs import AsyncJob, Job

if TYPE_CHECKING:
    from kiln_client._client import AsyncClient, Client

__all__ = ["AsyncCache", "AsyncJobs", "Cache", "Jobs"]


class Jobs:
    """``client.jobs``: list, get, cancel and delete jobs."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def list(
        self, *, status: str | models.JobStatus | None = None, label: Any = None,
        target: str | None = None, name: str | None = None, page_size: int = 50,
    ) -> Iterator[Job]:
        """Iterate over all matching jobs, newest first, fetching pages as needed.

        Args:
            status: only jobs in this status.
            label: ``"key=value"`` (or ``key:value``), a dict, or a list of them (all must match).
            target: only jobs of this target.
            name: only jobs with this name.
            page_size: jobs per request.

        Yields:
            Job handles.
        """
        params = list_params(status, label, target, name, page_size)
        while True:
            resp = self._client._request("GET", "/v1/jobs", params=params)
            page = models.JobList.model_validate_json(resp.content)
            for item in page.items:
                yield Job._bind(self._client, item)
            if not page.next_cursor:
                return
            params = {**params, "cursor": page.next_cursor}

    def get(self, job_id: str) -> Job:
        """Fetch one job. Raises ``NotFoundError`` when there is none with that id."""
        resp = self._client._request("GET", f"/v1/jobs/{job_id}")
        return Job._bind(self._client, resp.json())

    def cancel(self, job_id: str) -> Job:
        """Cancel a job; raises ``ConflictError`` when it has already finished."""
        resp = self._client._request("POST", f"/v1/jobs/{job_id}/cancel", idempotent=True)
        return Job._bind(self._client, resp.json())

    def delete(self, job_id: str) -> None:
        """Delete a finished job and its artifacts; ``ConflictError`` while it runs."""
        self._client._request("DELETE", f"/v1/jobs/{job_id}")


class AsyncJobs:
    """``client.jobs`` of :class:`AsyncClient`; ``list`` is an async iterator."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(
        self, *, status: str | models.JobStatus | None = None, label: Any = None,
        target: str | None = None, name: str | None = None, page_size: int = 50,
    ) -> AsyncIterator[AsyncJob]:
        """Iterate (``async for``) over all matching jobs; see :meth:`Jobs.list`."""
        params = list_params(status, label, target, name, page_size)
        while True:
            resp = await self._client._request("GET", "/v1/jobs", params=params)
            page = models.JobList.model_validate_json(resp.content)
            for item in page.items:
                yield AsyncJob._bind(self._client, item)
            if not page.next_cursor:
                return
            params = {**params, "cursor": page.next_cursor}

    async def get(self, job_id: str) -> AsyncJob:
        """Fetch one job."""
        return AsyncJob._bind(self._client, (await self._client._request("GET", f"/v1/jobs/{job_id}")).json())

    async def cancel(self, job_id: str) -> AsyncJob:
        """Cancel a job."""
        resp = await self._client._request("POST", f"/v1/jobs/{job_id}/cancel", idempotent=True)
        return AsyncJob._bind(self._client, resp.json())

    async def delete(self, job_id: str) -> None:
        """Delete a finished job and its artifacts."""
        await self._client._request("DELETE", f"/v1/jobs/{job_id}")


class Cache:
    """``client.cache``: the caller's compile cache (see ``Client.compile(cache=...)``)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def usage(self) -> models.CacheUsage:
        """How many outcomes the cache holds, their size and the size bound."""
        resp = self._client._request("GET", "/v1/cache")
        return models.CacheUsage.model_validate_json(resp.content)

    def purge(self) -> models.CacheUsage:
        """Empty the cache (``purged`` says how many entries went); finished jobs keep their
        artifacts."""
        resp = self._client._request("DELETE", "/v1/cache", idempotent=True)
        return models.CacheUsage.model_validate_json(resp.content)


class AsyncCache:
    """``client.cache`` of :class:`AsyncClient`."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def usage(self) -> models.CacheUsage:
        """See :meth:`Cache.usage`."""
        resp = await self._client._request("GET", "/v1/cache")
        return models.CacheUsage.model_validate_json(resp.content)

    async def purge(self) -> models.CacheUsage:
        """See :meth:`Cache.purge`."""
        resp = await self._client._request("DELETE", "/v1/cache", idempotent=True)
        return models.CacheUsage.model_validate_json(resp.content)
