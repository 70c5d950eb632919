"""Live job events: who announces a change, and how the API wakes the streams that follow a job.

Writers (the worker, the reconciler, the API itself) change a job in the job store, which records
an event row in the same transaction (:mod:`kiln_service.stores._events`) and then announces the
job id:

* PostgreSQL: ``NOTIFY kiln_jobs`` inside the transaction (no setting needed);
* a ``redis://`` broker: ``PUBLISH kiln_jobs <id>`` after the commit (:func:`make_publisher`);
* always, within the API process: the in-process bus.

Each API process runs one :class:`EventBus`: it listens on Redis pub/sub or PostgreSQL
``LISTEN`` and wakes the :class:`~kiln_service._hub.JobHub` of the job, which reads the new events
and log lines once and hands them to every follower of that job in this process. Followers never
query the database after their initial catch-up, whatever their number. With neither Redis nor
PostgreSQL (the embedded default, whose worker is another process) a hub re-reads its job every
``KILN_LOG_FOLLOW_POLL_SECONDS``, still once per job, not per follower.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterable

from kiln_service._hub import JobHub, StreamItem
from kiln_service.config import Settings
from kiln_service.stores._events import CHANNEL
from kiln_service.stores.jobs import JobStore

__all__ = ["EventBus", "make_publisher", "notifier_kind"]

logger = logging.getLogger(__name__)
Publisher = Callable[[set[str]], None]


def notifier_kind(settings: Settings) -> str:
    """``redis`` (a ``redis://`` broker), ``postgres`` (a PostgreSQL job store) or ``local``."""
    if settings.broker_url.startswith(("redis://", "rediss://")):
        return "redis"
    if settings.resolved_database_url.startswith("postgres"):
        return "postgres"
    return "local"


def make_publisher(settings: Settings) -> Publisher | None:
    """What a writer process calls after a commit: a Redis ``PUBLISH`` (``None`` without Redis)."""
    if notifier_kind(settings) != "redis":
        return None
    import redis

    client = redis.Redis.from_url(settings.broker_url, socket_timeout=2, socket_connect_timeout=2)

    def publish(job_ids: set[str]) -> None:
        try:
            with client.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.publish(CHANNEL, job_id)
                pipe.execute()
        except Exception as exc:  # followers fall back on their slow re-read; never fail a write
            logger.warning("could not announce job change on Redis: %s", exc)

    return publish


class EventBus:
    """The API process's wake-up service for live job streams.

    Args:
        settings: Selects the listener (Redis, PostgreSQL or none) and the fallback interval.
        store: The job store hubs read from.
    """

    def __init__(self, settings: Settings, store: JobStore) -> None:
        self.settings = settings
        self.store = store
        self.kind = notifier_kind(settings)
        self.publisher = make_publisher(settings)
        self.fallback_seconds = (settings.log_follow_poll_seconds if self.kind == "local"
                                 else settings.events_fallback_poll_seconds)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hubs: dict[str, tuple[JobHub, int]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def notify(self, job_ids: set[str]) -> None:
        """The API's own job store calls this after a commit (from any thread)."""
        if self.publisher is not None:
            self.publisher(job_ids)  # other API replicas learn of it too (this one as well)
        else:
            self.wake(job_ids)

    def wake(self, job_ids: Iterable[str]) -> None:
        """Wake the hubs of ``job_ids`` (thread-safe)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            ids = list(job_ids)
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(self._wake_now, ids)

    def _wake_now(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            entry = self._hubs.get(job_id)
            if entry is not None:
                entry[0].wake()

    def start(self) -> None:
        """Start listening (call from the running event loop)."""
        self._loop = asyncio.get_running_loop()
        target = {"redis": self._listen_redis, "postgres": self._listen_postgres}.get(self.kind)
        if target is not None:
            self._thread = threading.Thread(target=self._listen_forever, args=(target,),
                                            name=f"kiln-events-{self.kind}", daemon=True)
            self._thread.start()
        logger.info("live job events: woken by %s", {"redis": "Redis pub/sub", "postgres":
                    "PostgreSQL LISTEN/NOTIFY"}.get(self.kind, "an in-process notifier"))

    def stop(self) -> None:
        """Stop the listener thread (it ends within a second or two)."""
        self._stop.set()
        self._loop = None

    def _listen_forever(self, listen: Callable[[], None]) -> None:
        while not self._stop.is_set():
            try:
                listen()
            except Exception as exc:  # reconnect; hubs re-read on their fallback timer meanwhile
                logger.warning("job event listener (%s) lost its connection: %s", self.kind, exc)
                self._stop.wait(1.0)

    def _listen_redis(self) -> None:
        import redis

        client = redis.Redis.from_url(self.settings.broker_url, socket_connect_timeout=5)
        pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        try:
            pubsub.subscribe(CHANNEL)
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=1.0)
                if message is not None and message.get("type") == "message":
                    data = message["data"]
                    self.wake([data.decode() if isinstance(data, bytes) else str(data)])
        finally:
            pubsub.close()
            client.close()

    def _listen_postgres(self) -> None:
        import psycopg

        url = self.store.engine.url.set(drivername="postgresql")
        conninfo = url.render_as_string(hide_password=False)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            while not self._stop.is_set():
                for notify in conn.notifies(timeout=1.0):
                    self.wake([notify.payload])

    @contextlib.asynccontextmanager
    async def follow(self, job_id: str) -> AsyncIterator[tuple[JobHub, asyncio.Queue[StreamItem]]]:
        """Subscribe to job ``job_id``'s hub (created on first use) for the block's duration."""
        listening = self._thread is not None and self._thread.is_alive()
        # Without a listener (not started: an app served without its lifespan) re-read often.
        fallback = self.fallback_seconds if listening else self.settings.log_follow_poll_seconds
        hub, count = self._hubs.get(job_id) or (JobHub(self.store, job_id, fallback), 0)
        self._hubs[job_id] = (hub, count + 1)
        queue = hub.subscribe()
        try:
            yield hub, queue
        finally:
            hub.unsubscribe(queue)
            hub, count = self._hubs[job_id]
            if count <= 1:
                del self._hubs[job_id]
                await hub.close()
            else:
                self._hubs[job_id] = (hub, count - 1)
