"""The closed catalogue of API problem codes (the ``code`` of every problem+json answer).

Each member knows its usual HTTP status and what to do about it; the service's ``/docs/errors``
page lists them, and each problem's ``type`` URI is ``<server>/docs/errors#<code>``. Job failure
codes are apart, in :mod:`kiln_client.codes`.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["ProblemCode"]


class ProblemCode(str, Enum):
    """The machine ``code`` of an API problem document (snake_case)."""

    status: int
    help: str

    def __new__(cls, code: str, status: int, help: str) -> ProblemCode:
        member = str.__new__(cls, code)
        member._value_ = code
        member.status = status
        member.help = help
        return member

    def __str__(self) -> str:
        return str(self._value_)

    # -- 400 ----------------------------------------------------------------------------------
    #: the request is malformed
    BAD_REQUEST = "bad_request", 400, "The request is malformed; the detail says how."
    #: a multipart body is broken
    INVALID_MULTIPART = ("invalid_multipart", 400, "The multipart body is malformed (no boundary "
                         "or one over 70 characters, a part without a name, cut short). Let "
                         "your HTTP library build it.")
    #: a list cursor was not one the server gave
    INVALID_CURSOR = ("invalid_cursor", 400, "`cursor` is not a value from a previous page's "
                      "`next_cursor`; start again without it.")
    #: the Idempotency-Key header is unusable
    INVALID_IDEMPOTENCY_KEY = ("invalid_idempotency_key", 400, "The `Idempotency-Key` header is "
                               "empty, too long or has characters other than printable ASCII.")
    #: a tenant name breaks the naming rule
    INVALID_TENANT = ("invalid_tenant", 400, "Use 1 to 64 letters, digits, '.', '_' or '-' for a "
                      "tenant name.")
    # -- 401, 403, 404, 405, 406 --------------------------------------------------------------
    #: no valid API key
    UNAUTHORIZED = ("unauthorized", 401, "Send a valid API key as `Authorization: Bearer <key>`; "
                    "the operator creates keys with `kiln-service keys create`.")
    #: the key may not do this
    FORBIDDEN = "forbidden", 403, "The API key may not do this."
    #: no such route or resource
    NOT_FOUND = "not_found", 404, "There is nothing at this path; check the URL and the API version."
    #: no such job for this tenant
    JOB_NOT_FOUND = ("job_not_found", 404, "No job with this id is visible to your API key; list "
                     "your jobs with `GET /v1/jobs`.")
    #: the job has no artifact of that name
    ARTIFACT_NOT_FOUND = ("artifact_not_found", 404, "The job has no artifact of that name (yet); "
                          "its `artifacts` list the ones it has.")
    #: no API key with that id or prefix
    API_KEY_NOT_FOUND = ("api_key_not_found", 404, "No API key with that id or prefix; list them "
                         "with `kiln-service keys list`.")
    #: the method is not allowed on this path
    METHOD_NOT_ALLOWED = "method_not_allowed", 405, "Use a method the path allows (see the API docs)."
    #: no acceptable representation
    NOT_ACCEPTABLE = "not_acceptable", 406, "Accept `application/json` or the artifact's media type."
    #: no webhook endpoint with that id for this tenant (or the job has no webhook_url)
    WEBHOOK_NOT_FOUND = ("webhook_not_found", 404, "No webhook endpoint with this id is visible to "
                         "your API key; list them with `GET /v1/webhooks`.")
    #: no delivery with that id on the endpoint
    DELIVERY_NOT_FOUND = ("delivery_not_found", 404, "No delivery with this id on the endpoint; "
                          "list them with `GET /v1/webhooks/{id}/deliveries`.")
    # -- 409 ----------------------------------------------------------------------------------
    #: the request conflicts with the resource's state
    CONFLICT = "conflict", 409, "The request conflicts with the resource's current state."
    #: the job's status does not allow the operation
    JOB_STATE_CONFLICT = ("job_state_conflict", 409, "The job's status does not allow this "
                          "operation; read the job and try what its status allows.")
    #: the job has already finished: nothing to cancel
    JOB_FINISHED = "job_finished", 409, "The job has already finished; there is nothing to cancel."
    #: the job is still queued or running: it cannot be deleted
    JOB_NOT_FINISHED = ("job_not_finished", 409, "Cancel the job, or wait for it to finish, before "
                        "deleting it.")
    #: a request with this Idempotency-Key is still being processed
    IDEMPOTENCY_KEY_IN_FLIGHT = ("idempotency_key_in_flight", 409, "A request with the same "
                                 "`Idempotency-Key` is still being processed; retry after "
                                 "`Retry-After` to get its answer.")
    #: POST /v1/compile with model_digest alone: this tenant's compile cache does not hold it
    UPLOAD_REQUIRED = ("upload_required", 409, "The compile cache holds no outcome for this "
                       "`model_digest` and request (nothing was stored, no job was created); "
                       "send the same request again with the `model` file part instead of "
                       "`model_digest`. The SDK and `kiln compile` do this by themselves.")
    # -- 408, 413, 415, 416 -------------------------------------------------------------------
    #: the request body stopped arriving
    UPLOAD_STALLED = ("upload_stalled", 408, "The upload stopped arriving for longer than the "
                      "server waits (`KILN_UPLOAD_IDLE_TIMEOUT_SECONDS`); nothing was kept. Send "
                      "it again.")
    #: a body or file is over its size cap
    PAYLOAD_TOO_LARGE = "payload_too_large", 413, "The body is over the server's size cap."
    #: the whole request body is over its cap
    REQUEST_TOO_LARGE = ("request_too_large", 413, "The request body is over the server's cap "
                         "(`KILN_MAX_REQUEST_BYTES`); send a smaller model.")
    #: one uploaded file is over its cap
    UPLOAD_TOO_LARGE = ("upload_too_large", 413, "An uploaded file is over the server's cap; send a "
                        "smaller model or example inputs.")
    #: one form field is over its cap
    FIELD_TOO_LARGE = "field_too_large", 413, "A form field is longer than the server accepts."
    #: the body's media type is not accepted
    UNSUPPORTED_MEDIA_TYPE = ("unsupported_media_type", 415, "Send the body with a media type the "
                              "operation accepts.")
    #: POST /v1/compile needs multipart/form-data
    MULTIPART_REQUIRED = ("multipart_required", 415, "`POST /v1/compile` takes "
                          "`multipart/form-data` with a `model` file part.")
    #: the Range header does not fit the artifact
    RANGE_NOT_SATISFIABLE = ("range_not_satisfiable", 416, "The `Range` header does not fit the "
                             "artifact's size; ask for bytes inside it.")
    # -- 422: the upload or a field fails the checks made before queueing --------------------
    #: a field or query parameter is not valid
    INVALID_REQUEST = ("invalid_request", 422, "A field or parameter is not valid; `errors` lists "
                       "each one.")
    #: a form field is not valid
    INVALID_FIELD = "invalid_field", 422, "A form field is not valid; the detail names it."
    #: a form field the API does not know
    UNKNOWN_FIELD = "unknown_field", 422, "Remove the form field the API does not know."
    #: a form field sent twice
    DUPLICATE_FIELD = "duplicate_field", 422, "Send each form field once."
    #: a list filter is malformed
    INVALID_QUERY = "invalid_query", 422, "Write label filters as `label=key:value`."
    #: the flags string cannot be used
    INVALID_FLAGS = ("invalid_flags", 422, "Fix `flags`; the detail lists the flags Kiln accepts "
                     "and the ones that conflict.")
    #: the timeout is out of range
    INVALID_TIMEOUT = ("invalid_timeout", 422, "Give `timeout_seconds` between 1 and the server's "
                       "maximum (in the detail).")
    #: labels break the limits
    INVALID_LABELS = "invalid_labels", 422, "Keep labels to the counts and lengths the detail gives."
    #: no model file part
    MISSING_MODEL = ("missing_model", 422, "Send the SavedModel folder as a .tar.gz, .tar or .zip "
                     "archive in the `model` file part.")
    #: example_inputs and input_shapes both sent
    CONFLICTING_INPUTS = ("conflicting_inputs", 422, "Send either `example_inputs` or "
                          "`input_shapes`, not both.")
    #: no worker serves this target
    UNKNOWN_TARGET = "unknown_target", 422, "Use one of the targets the detail lists."
    #: the model archive cannot be read
    INVALID_ARCHIVE = ("invalid_archive", 422, "The `model` part is not a readable .tar.gz, .tar or "
                       ".zip archive; archive the SavedModel folder again.")
    #: an archive member is unsafe
    UNSAFE_ARCHIVE = ("unsafe_archive", 422, "An archive member is a link, a device, has an "
                      "absolute or `..` path, a duplicate name (also when case is ignored), a "
                      "name that is not UTF-8 or holds control characters, or an absurd "
                      "compression ratio; archive a plain SavedModel folder.")
    #: the archive is over its member or size caps
    ARCHIVE_TOO_LARGE = ("archive_too_large", 422, "The archive has too many entries or unpacks "
                         "to too many bytes.")
    #: no single SavedModel in the archive
    NO_SAVED_MODEL = ("no_saved_model", 422, "Put exactly one SavedModel (its `saved_model.pb`) at "
                      "the archive's root or one folder down.")
    #: saved_model.pb does not parse
    INVALID_SAVED_MODEL = ("invalid_saved_model", 422, "`saved_model.pb` is not a valid SavedModel; "
                           "save the model again with `tf.saved_model.save`.")
    #: the requested signature is not in the SavedModel
    UNKNOWN_SIGNATURE = ("unknown_signature", 422, "Pass one of the signatures the detail lists as "
                         "`signature`.")
    #: the signature runs ops Kiln refuses
    FORBIDDEN_OPS = ("forbidden_ops", 422, "The signature runs ops that read or write files, run "
                     "code or reach the network, or op types not on Kiln's allowlist (tensor "
                     "computation, variables, lookup tables, control flow: "
                     "`kiln_service._allowed_ops`); remove them from the served function.")
    #: example_inputs cannot be read
    INVALID_EXAMPLE_INPUTS = ("invalid_example_inputs", 422, "Send `example_inputs` as an .npz "
                              "file written by `numpy.savez`.")
    #: example_inputs holds pickled objects
    PICKLED_EXAMPLE_INPUTS = ("pickled_example_inputs", 422, "Send numeric or string arrays; "
                              "object arrays (pickles) are refused.")
    #: example_inputs does not match the signature
    EXAMPLE_INPUTS_MISMATCH = ("example_inputs_mismatch", 422, "Give one array per signature "
                               "input, with its name, dtype and a compatible shape.")
    #: input_shapes does not fit the signature
    INVALID_INPUT_SHAPES = ("invalid_input_shapes", 422, "Give `input_shapes` as JSON, input name "
                            "to a shape compatible with the signature.")
    #: an input needs a shape to generate example inputs
    INPUT_SHAPE_REQUIRED = ("input_shape_required", 422, "The signature leaves an input's shape "
                            "open; give it in `input_shapes` or send `example_inputs`.")
    #: the Idempotency-Key was used with another body
    IDEMPOTENCY_KEY_REUSED = ("idempotency_key_reused", 422, "Use a new `Idempotency-Key` for a "
                              "different request.")
    #: a webhook URL Kiln will not call
    INVALID_WEBHOOK_URL = ("invalid_webhook_url", 422, "Use an http(s) URL on a public address; "
                           "an operator allows internal ones with "
                           "KILN_WEBHOOK_ALLOW_PRIVATE_URLS=true.")
    #: an unknown webhook event name
    INVALID_WEBHOOK_EVENTS = ("invalid_webhook_events", 422, "Name events among job.running, "
                              "job.stage, job.succeeded, job.failed and job.cancelled.")
    #: a webhook secret not in the whsec_ format
    INVALID_WEBHOOK_SECRET = ("invalid_webhook_secret", 422, "Give 'whsec_' and the base64 of 24 to "
                              "64 random bytes, or leave the secret out and Kiln makes one.")
    #: an s3:// location in a bucket the operator has not allowed
    BUCKET_NOT_ALLOWED = ("bucket_not_allowed", 422, "Use a bucket the operator allows, or ask "
                          "the operator to add it to KILN_S3_ALLOWED_BUCKETS.")
    #: a malformed or unusable model_url, mlflow_model, mlflow_register or output_location
    INVALID_MODEL_SOURCE = ("invalid_model_source", 422, "Give the model one way: a `model` file, "
                            "`model_url` (s3://bucket/key), `mlflow_model` "
                            "(models:/NAME/VERSION) or `model_digest` (a compile cache look-up); "
                            "the detail says what is wrong.")
    #: the s3:// object or MLflow model version does not exist (or cannot be read)
    MODEL_SOURCE_NOT_FOUND = ("model_source_not_found", 422, "Check the s3:// key or the MLflow "
                              "model name and version; the service reads them with its own "
                              "credentials.")
    # -- 429 ----------------------------------------------------------------------------------
    #: too many requests
    RATE_LIMITED = ("rate_limited", 429, "Too many submissions for your tenant; retry after "
                    "`Retry-After` seconds.")
    #: too many unfinished jobs
    TOO_MANY_ACTIVE_JOBS = ("too_many_active_jobs", 429, "Your tenant has as many unfinished jobs "
                            "as allowed; wait for some to finish (retry after `Retry-After`).")
    # -- 5xx: Kiln's side ---------------------------------------------------------------------
    #: the server's disk is full
    INSUFFICIENT_STORAGE = ("insufficient_storage", 507, "The server's disk is full; the upload "
                            "was discarded. Retry after `Retry-After` seconds, or tell the "
                            "operator.")
    #: an unexpected server error
    INTERNAL_ERROR = ("internal_error", 500, "Kiln hit an unexpected error; report the "
                      "`request_id` if it persists.")
    #: another HTTP error
    HTTP_ERROR = "http_error", 500, "An HTTP error without a more specific code; see `status`."
    #: a dependency is down
    DEPENDENCY_UNAVAILABLE = ("dependency_unavailable", 503, "A dependency (database, broker, "
                              "storage) is down; retry after `Retry-After`.")
    #: the job or artifact store is unavailable
    STORE_UNAVAILABLE = ("store_unavailable", 503, "The job store or artifact store is "
                         "unavailable; retry after `Retry-After`.")
    #: the queue's broker is unreachable
    BROKER_UNAVAILABLE = ("broker_unavailable", 503, "The queue's broker (or, on Redis, the "
                          "shared rate-limit store) is unreachable; nothing was queued. Retry "
                          "after `Retry-After`.")
    #: no live worker serves the target
    NO_WORKER_FOR_TARGET = ("no_worker_for_target", 503, "No live worker serves the job's target "
                            "and the server refuses such jobs; retry later or pick another target.")
    #: the service is unavailable
    SERVICE_UNAVAILABLE = ("service_unavailable", 503, "The service is unavailable; retry after "
                           "`Retry-After`.")
    #: a readiness check failed
    NOT_READY = ("not_ready", 503, "`/readyz`: a dependency is down; the detail names it. The "
                 "operator should look at it.")
