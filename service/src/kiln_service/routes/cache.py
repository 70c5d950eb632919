"""``/v1/cache``: the caller's compile cache: its size, and a purge (see ``kiln_service.cache``)."""

from __future__ import annotations

from fastapi import APIRouter

from kiln_client.models import CacheUsage
from kiln_service import cache
from kiln_service.deps import ArtifactStoreDep, JobStoreDep, SettingsDep, TenantDep

__all__ = ["router"]

router = APIRouter(prefix="/v1/cache", tags=["cache"])


@router.get("", response_model=CacheUsage, summary="Read the size of the compile cache")
def read_cache(store: JobStoreDep, settings: SettingsDep, tenant: TenantDep) -> CacheUsage:
    """Return how many outcomes the caller's compile cache holds and their size."""
    entries, size = store.cache_usage(tenant=tenant)
    return CacheUsage(entries=entries, bytes=size, max_bytes=settings.cache_max_bytes)


@router.delete("", response_model=CacheUsage, summary="Purge the compile cache")
def purge_cache(store: JobStoreDep, artifacts: ArtifactStoreDep, settings: SettingsDep,
                tenant: TenantDep) -> CacheUsage:
    """Remove every entry of the caller's compile cache; the next submissions compile again.

    Jobs answered from the cache keep their artifacts.
    """
    purged = cache.purge(store, artifacts, tenant=tenant)
    entries, size = store.cache_usage(tenant=tenant)
    return CacheUsage(entries=entries, bytes=size, max_bytes=settings.cache_max_bytes,
                      purged=purged)
