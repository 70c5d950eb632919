"""POST /v1/compile with the pipeline fields: what is refused before anything is fetched, and
that a refusal leaves nothing behind (the fetches themselves run against real S3 and MLflow
servers in tests/deploy/test_pipeline_s3.py and tests/pipeline/test_mlflow.py)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from service_helpers import assert_nothing_stored, assert_problem, good_inputs

from kiln_service.config import Settings


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"s3_allowed_buckets": "models, outputs"})


def multipart(**fields: str) -> dict[str, Any]:
    return {"files": {k: (None, v) for k, v in fields.items()}}


@pytest.mark.parametrize(("fields", "code", "says"), [
    ({"model_url": "s3://elsewhere/m.tar.gz"}, "bucket_not_allowed", "KILN_S3_ALLOWED_BUCKETS"),
    ({"model_url": "s3://models/m.tar.gz", "output_location": "s3://elsewhere/out"},
     "bucket_not_allowed", "output_location"),
    ({"model_url": "https://models/m.tar.gz"}, "invalid_model_source", "s3://bucket/key"),
    ({"model_url": "s3://models/"}, "invalid_model_source", "s3://bucket/key"),
    ({"model_url": "s3://models/m.tar.gz", "mlflow_model": "models:/m/1"},
     "invalid_model_source", "one way"),
    ({"mlflow_model": "models:/m/1"}, "invalid_model_source", "KILN_MLFLOW_TRACKING_URI"),
    ({"mlflow_register": "m"}, "invalid_model_source", "KILN_MLFLOW_TRACKING_URI"),
])
async def test_refused_before_fetching(client: httpx.AsyncClient, app: Any, app_settings: Settings,
                                       fields: dict[str, str], code: str, says: str) -> None:
    resp = await client.post("/v1/compile", **multipart(**fields))
    assert says in assert_problem(resp, 422, code)["detail"]
    assert_nothing_stored(app, app_settings)


async def test_a_model_uploaded_and_named_is_refused(client: httpx.AsyncClient, app: Any,
                                                     app_settings: Settings) -> None:
    files = {"model": ("m.tar.gz", b"not even an archive: never read", "application/gzip"),
             "example_inputs": ("x.npz", good_inputs(), "application/octet-stream")}
    resp = await client.post("/v1/compile", files=files, data={"model_url": "s3://models/m.tgz"})
    assert "a model file and model_url" in assert_problem(resp, 422, "invalid_model_source")["detail"]
    assert_nothing_stored(app, app_settings)


async def test_mlflow_model_uri_must_name_a_version(client: httpx.AsyncClient, app: Any,
                                                   app_settings: Settings) -> None:
    app.state.services.settings = app_settings.model_copy(
        update={"mlflow_tracking_uri": "http://127.0.0.1:9"})
    resp = await client.post("/v1/compile", **multipart(mlflow_model="models:/m/latest"))
    assert "models:/NAME/VERSION" in assert_problem(resp, 422, "invalid_model_source")["detail"]
