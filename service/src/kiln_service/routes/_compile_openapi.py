"""The OpenAPI description of ``POST /v1/compile``'s form (FastAPI cannot infer a streamed one)."""

from __future__ import annotations

from typing import Any

from kiln_service.config import TARGETS

__all__ = ["COMPILE_OPENAPI"]

COMPILE_OPENAPI: dict[str, Any] = {
    "parameters": [{
        "name": "Idempotency-Key", "in": "header", "required": False,
        "schema": {"type": "string", "maxLength": 255},
        "description": "Retry-safe submission: the same key and request return the first job "
                       "(`Idempotent-Replayed: true`); the same key with another request is a 422; "
                       "the same key while the first request is in flight is a 409.",
    }],
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "properties": {
                "model": {"type": "string", "format": "binary",
                          "description": "SavedModel folder as .tar.gz/.tgz/.tar/.zip (root or one folder "
                                         "down); or `model_url`, `mlflow_model` or `model_digest`"},
                "example_inputs": {"type": "string", "format": "binary",
                                   "description": ".npz keyed by signature input name (no pickle)"},
                "flags": {"type": "string", "description": "NEURON_CC_FLAGS"},
                "target": {"type": "string", "enum": list(TARGETS), "default": "xla"},
                "signature": {"type": "string", "default": "serving_default"},
                "placement": {"type": "string",
                              "description": "`measured` or `all`, or a JSON PlacementSpec "
                                             "(`mode`, op and name rules)"},
                "input_shapes": {"type": "string", "description": "JSON object: input name to shape"},
                "name": {"type": "string"},
                "labels": {"type": "string", "description": "JSON object of string labels"},
                "timeout_seconds": {"type": "integer"},
                "webhook_url": {"type": "string", "description": "http(s) URL for signed job events"},
                "webhook_events": {"type": "string", "description": "JSON list of event types"},
                "webhook_secret": {"type": "string", "description": "whsec_… (generated if omitted)"},
                "model_url": {"type": "string", "description": "s3://bucket/key of the model "
                              "archive, instead of the `model` part (allowed buckets only)"},
                "mlflow_model": {"type": "string", "description": "models:/NAME/VERSION, instead "
                                 "of the `model` part"},
                "mlflow_register": {"type": "string", "description": "register the compiled "
                                    "model as a new version of this MLflow model"},
                "output_location": {"type": "string", "description": "s3://bucket/prefix to "
                                    "write the artifacts to as well"},
                "cache": {"type": "boolean", "default": True,
                          "description": "`false`: compile even if the tenant's compile cache "
                                         "holds this model, inputs, flags and toolchain"},
                "model_digest": {"type": "string", "pattern": "^[0-9a-f]{64}$",
                                 "description": "Instead of the `model` part: the SavedModel's "
                                 "content digest (`kiln_client.digest.model_digest`), with every "
                                 "other field as usual. A hit in the tenant's compile cache "
                                 "answers as for an upload; a miss is a 409 `upload_required` "
                                 "(nothing stored): send the model then. See docs/cache.md."},
            },
        }}},
    }
}
