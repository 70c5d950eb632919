"""``Client`` and ``AsyncClient``: the Kiln API in a few methods, over one ``_request`` each.

Both read ``KILN_URL`` and ``KILN_API_KEY`` when not given, retry transient failures (see
:mod:`kiln_client._retry`) and turn error answers into :mod:`kiln_client.errors` exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

from kiln_client import models
from kiln_client._digest_first import ask_cache, ask_cache_async, digest_request
from kiln_client._forms import compile_form, model_sources, multipart, upload_files
from kiln_client._jobs import AsyncJob, Job
from kiln_client._resources import AsyncCache, AsyncJobs, Cache, Jobs
from kiln_client._retry import IDEMPOTENCY_HEADER, RetryPolicy
from kiln_client._upload import prepare_upload
from kiln_client.errors import APIConnectionError, APITimeoutError, make_status_error

__all__ = ["DEFAULT_BASE_URL", "AsyncClient", "Client"]

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 3
DEFAULT_POLL_INTERVAL = 1.0
_T = TypeVar("_T", bound="_BaseClient")
_NOT_GIVEN: Any = object()


def _sleep(seconds: float) -> None:
    """Backoff sleep (a seam for tests)."""
    time.sleep(seconds)


async def _async_sleep(seconds: float) -> None:
    """Backoff sleep of the async client (a seam for tests)."""
    await asyncio.sleep(seconds)


class _BaseClient:
    """Configuration shared by the twins; no I/O."""

    def __init__(
        self, base_url: str | None, api_key: str | None, timeout: float | httpx.Timeout,
        max_retries: int, poll_interval: float,
    ) -> None:
        url = base_url or os.environ.get("KILN_URL") or DEFAULT_BASE_URL
        url = url.rstrip("/")
        # Accept ".../v1" too: paths below always start with /v1.
        self.base_url = url[: -len("/v1")] if url.endswith("/v1") else url
        self.api_key = api_key if api_key is not None else os.environ.get("KILN_API_KEY") or None
        self.timeout = timeout
        self.max_retries = max_retries
        self.poll_interval = poll_interval
        self._retry = RetryPolicy(max_retries=max_retries)

    def __repr__(self) -> str:  # the key is deliberately left out
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def _headers(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = {"User-Agent": "kiln-client/0.1", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        headers.update(extra or {})
        return headers

    def _copy_options(self: _T, other: _T, base_url: Any, api_key: Any, timeout: Any,
                      max_retries: Any, poll_interval: Any) -> _T:
        _BaseClient.__init__(
            other,
            self.base_url if base_url is _NOT_GIVEN else base_url,
            self.api_key if api_key is _NOT_GIVEN else api_key,
            self.timeout if timeout is _NOT_GIVEN else timeout,
            self.max_retries if max_retries is _NOT_GIVEN else max_retries,
            self.poll_interval if poll_interval is _NOT_GIVEN else poll_interval,
        )
        return other

    def _build(self, http: httpx.Client | httpx.AsyncClient, method: str, path: str,
               kwargs: dict[str, Any]) -> httpx.Request:
        timeout = kwargs.pop("timeout", None) or self.timeout
        headers = self._headers(kwargs.pop("headers", None))
        return http.build_request(method, self.base_url + path, headers=headers,
                                  timeout=timeout, **kwargs)

    def _transport_error(self, exc: httpx.TransportError, request: httpx.Request) -> APIConnectionError:
        if isinstance(exc, httpx.TimeoutException):
            return APITimeoutError(request)
        return APIConnectionError(f"could not reach Kiln at {self.base_url}: {exc}", request=request)


class Client(_BaseClient):
    """Synchronous Kiln client.

    Args:
        base_url: the service's URL; ``KILN_URL``, then ``http://127.0.0.1:8000``.
        api_key: sent as a Bearer token; ``KILN_API_KEY`` when omitted.
        timeout: seconds per HTTP operation (connect, read, write).
        max_retries: retries of transient failures (connection errors, 429, 5xx).
        poll_interval: seconds between status checks in ``wait()``.
        http_client: an ``httpx.Client`` to use (tests pass a MockTransport here).

    Example::

        client = kiln_client.Client()
        job = client.compile("./my_saved_model", example_inputs=np.zeros((1, 3), "float32"))
        job.download("./compiled")
    """

    def __init__(
        self, base_url: str | None = None, api_key: str | None = None, *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT, max_retries: int = DEFAULT_MAX_RETRIES,
        poll_interval: float = DEFAULT_POLL_INTERVAL, http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, max_retries, poll_interval)
        self._http = http_client or httpx.Client()
        self._owns_http = http_client is None
        self.jobs = Jobs(self)
        self.cache = Cache(self)

    def with_options(
        self, *, base_url: Any = _NOT_GIVEN, api_key: Any = _NOT_GIVEN, timeout: Any = _NOT_GIVEN,
        max_retries: Any = _NOT_GIVEN, poll_interval: Any = _NOT_GIVEN,
    ) -> Client:
        """A copy with some options changed, sharing this client's connection pool.

        Example: ``client.with_options(max_retries=0).jobs.get(job_id)``.
        """
        other = Client.__new__(Client)
        self._copy_options(other, base_url, api_key, timeout, max_retries, poll_interval)
        other._http, other._owns_http, other.jobs = self._http, False, Jobs(other)
        other.cache = Cache(other)
        return other

    def close(self) -> None:
        """Close the connection pool (when this client created it)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, *, idempotent: bool = False, stream: bool = False,
                 **kwargs: Any) -> httpx.Response:
        """Send one API request with retries; return a 2xx/3xx answer or raise."""
        request = self._build(self._http, method, path, kwargs)
        attempt = 0
        while True:
            response: httpx.Response | None = None
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                error = self._transport_error(exc, request)
                if attempt >= self.max_retries or not self._retry.can_repeat(request, idempotent=idempotent):
                    raise error from exc
            else:
                logger.debug("%s %s -> %d", method, path, response.status_code)
                if response.status_code < 400:
                    return response
                response.read()
                response.close()
                if (attempt >= self.max_retries or not self._retry.should_retry_response(response)
                        or not self._retry.can_repeat(request, idempotent=idempotent)):
                    raise make_status_error(response)
            delay = self._retry.delay(attempt, response)
            logger.info("retrying %s %s in %.1fs (attempt %d)", method, path, delay, attempt + 1)
            _sleep(delay)
            attempt += 1

    @contextlib.contextmanager
    def _stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        response = self._request(method, path, stream=True, **kwargs)
        try:
            yield response
        finally:
            response.close()

    def compile(
        self, model: Any = None, example_inputs: Any = None, flags: str | Sequence[str] | None = None,
        target: str = "xla", signature: str = "serving_default",
        placement: models.PlacementSpec | Mapping[str, Any] | str | None = None,
        name: str | None = None,
        labels: Mapping[str, str] | None = None, timeout: int | None = None, wait: bool = True,
        progress: bool = True, *, input_shapes: Mapping[str, Sequence[int]] | None = None,
        webhook_url: str | None = None, webhook_events: Sequence[str] | None = None,
        webhook_secret: str | None = None, model_url: str | None = None,
        mlflow_model: str | None = None, mlflow_register: str | None = None,
        output_location: str | None = None, cache: bool = True,
    ) -> Job:
        """Upload a model, start a compile job and (by default) wait for it.

        Args:
            model: a SavedModel directory, an archive (.tar.gz, .tgz, .tar, .zip), or, with
                TensorFlow installed, a keras.Model or tf.function (saved for the upload); or
                ``s3://…`` / ``models:/…`` for the service to fetch.
            example_inputs: an array/tensor, a list, tuple or dict of them, or an ``.npz`` path;
                generated by the service from the signature when omitted.
            flags: ``NEURON_CC_FLAGS`` as a string or a list of arguments.
            target: ``xla`` or ``inf1``.
            signature: the SavedModel signature to compile.
            placement: ``"measured"`` (default) or ``"all"``, or a :class:`PlacementSpec` (or
                dict) with a ``mode`` and which ops may go to the accelerator.
            name: a name for the job.
            labels: key/value labels, usable as list filters.
            timeout: the compile's time limit in seconds (the service's default when omitted).
            wait: block until the job ends (raising if it fails).
            progress: draw upload/compile bars when stderr is a terminal.
            input_shapes: shapes for generated inputs (name → shape) when none are given.
            webhook_url: an http(s) URL the service POSTs this job's events to (signed; see
                :mod:`kiln_client.webhooks`).
            webhook_events: events to send (``job.running``, ``job.stage``, ``job.succeeded``,
                ``job.failed``, ``job.cancelled``); the three terminal ones when omitted.
            webhook_secret: your ``whsec_…`` signing secret (one is generated when omitted).
            model_url: ``s3://bucket/key`` of a model archive the service fetches (allowed
                buckets only) instead of an upload; a ``model`` string ``s3://…`` means the same.
            mlflow_model: ``models:/NAME/VERSION`` from the service's MLflow registry; a
                ``model`` string ``models:/…`` means the same.
            mlflow_register: register the compiled model as a new version of this MLflow model
                when the job succeeds (``Job.exports`` says how it went).
            output_location: ``s3://bucket/prefix`` the artifacts are also written to.
            cache: answer from your compile cache when this model, inputs, flags and toolchain
                were compiled before (the job then ends at once, ``job.cache.hit``); ``False``
                always compiles. A model on disk is first asked for by its content digest
                alone: a hit uploads nothing; on a miss the model is uploaded as usual.

        Returns:
            The job: finished when ``wait`` is true, else just queued.

        Raises:
            InputError: the model or inputs cannot be packed.
            ValidationError: the service refused the upload (422) - see its ``detail``.
            JobFailed: ``wait`` and the compile failed (``reason``, ``log_tail``).
            JobCancelled: ``wait`` and the job was cancelled meanwhile.
        """
        model, sources = model_sources(model, {
            "model_url": model_url, "mlflow_model": mlflow_model,
            "mlflow_register": mlflow_register, "output_location": output_location})
        form = compile_form(flags, target, signature, placement, name, labels, timeout, input_shapes,
                            webhook={"webhook_url": webhook_url, "webhook_events": webhook_events,
                                     "webhook_secret": webhook_secret}, sources=sources,
                            cache=cache)
        resp = self._submit(model, example_inputs, form, signature=signature, progress=progress)
        job = Job._bind(self, resp.json())
        logger.info("submitted job %s", job.id)
        if wait:
            job.wait(progress=progress)
        return job

    def _submit(self, model: Any, example_inputs: Any, form: dict[str, str], *, signature: str,
                progress: bool) -> httpx.Response:
        """``POST /v1/compile``: the model's digest alone first, the upload only on a miss."""
        # One key per compile() call: retries of this upload can never start a second job.
        headers = {IDEMPOTENCY_HEADER: uuid.uuid4().hex}
        with tempfile.TemporaryDirectory(prefix="kiln-upload-") as tmp:
            # First the digest alone: a cache hit then needs no upload (see _digest_first).
            ask = digest_request(model, example_inputs, form, signature=signature, workdir=Path(tmp))
            resp = ask_cache(self, ask, headers) if ask is not None else None
            if resp is None:
                upload = prepare_upload(model, ask.example_inputs if ask and ask.example_inputs
                                        else example_inputs, signature=signature, workdir=Path(tmp))
                with upload_files(upload, progress) as files:
                    resp = self._request("POST", "/v1/compile", headers=headers,
                                         **multipart(form, files))
        return resp


class AsyncClient(_BaseClient):
    """Asynchronous twin of :class:`Client`: the same arguments, methods are coroutines."""

    def __init__(
        self, base_url: str | None = None, api_key: str | None = None, *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT, max_retries: int = DEFAULT_MAX_RETRIES,
        poll_interval: float = DEFAULT_POLL_INTERVAL, http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, max_retries, poll_interval)
        self._http = http_client or httpx.AsyncClient()
        self._owns_http = http_client is None
        self.jobs = AsyncJobs(self)
        self.cache = AsyncCache(self)

    def with_options(
        self, *, base_url: Any = _NOT_GIVEN, api_key: Any = _NOT_GIVEN, timeout: Any = _NOT_GIVEN,
        max_retries: Any = _NOT_GIVEN, poll_interval: Any = _NOT_GIVEN,
    ) -> AsyncClient:
        """A copy with some options changed, sharing the connection pool."""
        other = AsyncClient.__new__(AsyncClient)
        self._copy_options(other, base_url, api_key, timeout, max_retries, poll_interval)
        other._http, other._owns_http, other.jobs = self._http, False, AsyncJobs(other)
        other.cache = AsyncCache(other)
        return other

    async def close(self) -> None:
        """Close the connection pool (when this client created it)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _request(self, method: str, path: str, *, idempotent: bool = False,
                       stream: bool = False, **kwargs: Any) -> httpx.Response:
        """Send one API request with retries; see :meth:`Client._request`."""
        request = self._build(self._http, method, path, kwargs)
        attempt = 0
        while True:
            response: httpx.Response | None = None
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                error = self._transport_error(exc, request)
                if attempt >= self.max_retries or not self._retry.can_repeat(request, idempotent=idempotent):
                    raise error from exc
            else:
                logger.debug("%s %s -> %d", method, path, response.status_code)
                if response.status_code < 400:
                    return response
                await response.aread()
                await response.aclose()
                if (attempt >= self.max_retries or not self._retry.should_retry_response(response)
                        or not self._retry.can_repeat(request, idempotent=idempotent)):
                    raise make_status_error(response)
            delay = self._retry.delay(attempt, response)
            logger.info("retrying %s %s in %.1fs (attempt %d)", method, path, delay, attempt + 1)
            await _async_sleep(delay)
            attempt += 1

    @contextlib.asynccontextmanager
    async def _stream(self, method: str, path: str, **kwargs: Any) -> AsyncIterator[httpx.Response]:
        response = await self._request(method, path, stream=True, **kwargs)
        try:
            yield response
        finally:
            await response.aclose()

    async def compile(
        self, model: Any = None, example_inputs: Any = None, flags: str | Sequence[str] | None = None,
        target: str = "xla", signature: str = "serving_default",
        placement: models.PlacementSpec | Mapping[str, Any] | str | None = None,
        name: str | None = None,
        labels: Mapping[str, str] | None = None, timeout: int | None = None, wait: bool = True,
        progress: bool = True, *, input_shapes: Mapping[str, Sequence[int]] | None = None,
        webhook_url: str | None = None, webhook_events: Sequence[str] | None = None,
        webhook_secret: str | None = None, model_url: str | None = None,
        mlflow_model: str | None = None, mlflow_register: str | None = None,
        output_location: str | None = None, cache: bool = True,
    ) -> AsyncJob:
        """Upload a model and start a compile job; see :meth:`Client.compile`."""
        model, sources = model_sources(model, {
            "model_url": model_url, "mlflow_model": mlflow_model,
            "mlflow_register": mlflow_register, "output_location": output_location})
        form = compile_form(flags, target, signature, placement, name, labels, timeout, input_shapes,
                            webhook={"webhook_url": webhook_url, "webhook_events": webhook_events,
                                     "webhook_secret": webhook_secret}, sources=sources,
                            cache=cache)
        resp = await self._submit(model, example_inputs, form, signature=signature,
                                  progress=progress)
        job = AsyncJob._bind(self, resp.json())
        logger.info("submitted job %s", job.id)
        if wait:
            await job.wait(progress=progress)
        return job

    async def _submit(self, model: Any, example_inputs: Any, form: dict[str, str], *,
                      signature: str, progress: bool) -> httpx.Response:
        """``POST /v1/compile``; see :meth:`Client._submit`."""
        headers = {IDEMPOTENCY_HEADER: uuid.uuid4().hex}
        with tempfile.TemporaryDirectory(prefix="kiln-upload-") as tmp:
            # Digesting, packing (and saving a keras model) block: keep them off the event loop.
            ask = await asyncio.to_thread(digest_request, model, example_inputs, form,
                                          signature=signature, workdir=Path(tmp))
            resp = await ask_cache_async(self, ask, headers) if ask is not None else None
            if resp is None:
                upload = await asyncio.to_thread(
                    prepare_upload, model, ask.example_inputs if ask and ask.example_inputs
                    else example_inputs, signature=signature, workdir=Path(tmp))
                with upload_files(upload, progress) as files:
                    resp = await self._request("POST", "/v1/compile", headers=headers,
                                               **multipart(form, files))
        return resp
