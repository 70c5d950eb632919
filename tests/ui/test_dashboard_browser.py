"""The dashboard in real headless Chromium against a real ``kiln-service up``.

A person's path: sign in with the API key, submit the bundled model (flags checked as typed),
watch the job reach ``succeeded`` without reloading, read the placement picture (hover a CPU op
for its reason), download the compiled model and check its sha256, cancel a slow job, find
another tenant's job exactly as absent as a missing one, sign out. Every page is checked with
axe-core in the browser (no serious or critical violation), and every request the pages make
goes to the Kiln API's own origin.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ui_support import ROOT, Dashboard

pytestmark = pytest.mark.integration

MODEL = ROOT / "examples" / "mlp" / "mlp.tar.gz"
INPUTS = ROOT / "examples" / "mlp" / "example_inputs.npz"
JOB_SECONDS = 300_000  # ms: a compile on a busy 2-core machine


def _axe_serious(page: Any) -> list[str]:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    return [f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
            for v in results.response["violations"] if v.get("impact") in ("serious", "critical")]


@pytest.fixture
def page(browser: Any, dashboard: Dashboard) -> Iterator[Any]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1200, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    foreign: list[str] = []
    tab.on("request", lambda r: None if r.url.startswith(dashboard.url) else foreign.append(r.url))
    yield tab
    context.close()
    assert not foreign, f"the dashboard asked other hosts: {foreign}"


def _sign_in(page: Any, dashboard: Dashboard, key: str) -> None:
    page.goto(f"{dashboard.url}/ui/")
    assert page.url.endswith("/ui/login")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{dashboard.url}/ui/")


def _api(dashboard: Dashboard, key: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=dashboard.url, timeout=60,
                        headers={"Authorization": f"Bearer {key or dashboard.key}"})


def test_sign_in_submit_watch_place_download_sign_out(
        page: Any, dashboard: Dashboard, screenshots: Path, tmp_path: Path) -> None:
    page.goto(f"{dashboard.url}/ui/")
    assert _axe_serious(page) == []
    assert "api-key" not in page.url and dashboard.key not in page.content()
    page.get_by_label("API key").fill("kiln_wrongkey0000000")
    page.get_by_role("button", name="Sign in").click()
    assert "unknown or revoked" in page.get_by_role("alert").inner_text()
    _sign_in(page, dashboard, dashboard.key)
    cookie = next(c for c in page.context.cookies() if c["name"] == "kiln_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert dashboard.key not in cookie["value"]

    page.get_by_role("link", name="Submit", exact=True).click()
    assert _axe_serious(page) == []
    page.get_by_label("SavedModel archive").set_input_files(str(MODEL))
    page.get_by_label("Example inputs").set_input_files(str(INPUTS))
    flags = page.get_by_label("Compiler flags (NEURON_CC_FLAGS)")
    flags.fill("--dynamic-batch-size --bogus")
    message = page.locator("#flags-msg")
    message.filter(has_text="unknown flag").wait_for()
    assert "--bogus" in message.inner_text()
    flags.fill("--dynamic-batch-size")
    message.filter(has_text="flags OK").wait_for()
    page.get_by_label("Op types to keep on CPU").fill("Tanh")
    name = f"ui-{uuid.uuid4().hex[:6]}"
    page.get_by_label("Name (optional)").fill(name)
    page.get_by_label("Labels").fill("origin=ui")
    page.get_by_role("button", name="Compile").click()
    page.wait_for_url(re.compile(r".*/ui/jobs/[0-9a-f]+$"))
    job_id = page.url.rsplit("/", 1)[1]

    page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    page.locator('[data-live-job] [data-field="status"]').filter(has_text="succeeded").wait_for(
        timeout=JOB_SECONDS)
    page.locator("svg.placement").wait_for()
    assert page.evaluate("window.__sameDocument") is True, "the page reloaded to show the result"
    assert page.locator("#log").inner_text().strip(), "the live log stayed empty"

    with _api(dashboard) as api:
        job = api.get(f"/v1/jobs/{job_id}").json()
        report = api.get(f"/v1/jobs/{job_id}/artifacts/report.json").json()
    assert job["name"] == name and job["labels"] == {"origin": "ui"}
    assert job["placement"]["exclude_ops"] == ["Tanh"] and job["flags"] == "--dynamic-batch-size"
    tanh = next(op for op in report["tracer"]["cpu_ops"] if op["op"] == "Tanh")
    box = page.locator(f'svg.placement g.cpu-op[data-name="{tanh["name"]}"]')
    box.hover()
    tip = page.get_by_role("tooltip")
    tip.wait_for()
    assert tanh["reason"] in tip.inner_text()
    assert page.locator("svg.placement g.sg").count() >= 1
    page.screenshot(path=str(screenshots / "job-with-graph.png"), full_page=True)
    assert _axe_serious(page) == []

    artifact = next(a for a in job["artifacts"] if a["name"] == "compiled_model.tar.gz")
    link = page.get_by_role("link", name="compiled_model.tar.gz")
    assert link.get_attribute("data-sha256") == artifact["sha256"]
    with page.expect_download() as download:
        link.click()
    saved = tmp_path / "compiled_model.tar.gz"
    download.value.save_as(str(saved))
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == artifact["sha256"]

    page.get_by_role("link", name="Jobs", exact=True).click()
    row = page.locator(f'tr[data-job-id="{job_id}"]')
    assert "succeeded" in row.inner_text() and name in row.inner_text()
    page.screenshot(path=str(screenshots / "jobs-list.png"), full_page=True)
    assert _axe_serious(page) == []
    page.goto(f"{dashboard.url}/ui/?status=failed&name={name}")
    assert page.locator(f'tr[data-job-id="{job_id}"]').count() == 0

    page.get_by_role("link", name="Workers", exact=True).click()
    assert "xla" in page.locator("main table").inner_text()
    assert _axe_serious(page) == []

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{dashboard.url}/ui/login")
    page.goto(f"{dashboard.url}/ui/jobs/{job_id}")
    assert page.url.endswith("/ui/login")


def test_cancel_a_slow_job(page: Any, dashboard: Dashboard) -> None:
    with _api(dashboard) as api, MODEL.open("rb") as model:
        job = api.post("/v1/compile", files={"model": ("mlp.tar.gz", model)},
                       data={"name": "to-cancel"}).json()
    _sign_in(page, dashboard, dashboard.key)
    page.goto(f"{dashboard.url}/ui/jobs/{job['id']}")
    page.get_by_role("button", name="Cancel job").click()
    page.locator('[data-live-job] [data-field="status"]').filter(has_text="cancelled").wait_for(
        timeout=120_000)
    with _api(dashboard) as api:
        assert api.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"


def test_other_tenants_job_looks_exactly_like_a_missing_one(
        page: Any, dashboard: Dashboard) -> None:
    with _api(dashboard) as api, MODEL.open("rb") as model:
        theirs = api.post("/v1/compile", files={"model": ("mlp.tar.gz", model)}).json()["id"]
    _sign_in(page, dashboard, dashboard.other_key)
    answers = []
    for job_id in (theirs, uuid.uuid4().hex):
        response = page.goto(f"{dashboard.url}/ui/jobs/{job_id}")
        answers.append((response.status, page.locator("main").inner_text()))
    assert answers[0] == answers[1] and answers[0][0] == 404
    assert theirs not in page.content()
    assert _axe_serious(page) == []  # the not-found page
    page.goto(f"{dashboard.url}/ui/")
    assert page.locator(f'tr[data-job-id="{theirs}"]').count() == 0
    assert _axe_serious(page) == []


def _failing_model(tmp_path: Path) -> tuple[Path, Path]:
    """A SavedModel that raises its own error on the example inputs (an assertion)."""
    import subprocess
    import sys

    script = (
        "import sys, tarfile, numpy as np, tensorflow as tf\n"
        "class M(tf.Module):\n"
        "    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name='x')])\n"
        "    def __call__(self, x):\n"
        "        tf.debugging.assert_positive(x, message='inputs must be positive (ui test)')\n"
        "        return {'y': tf.nn.relu(x) * 2.0}\n"
        "m = M(); out = sys.argv[1]\n"
        "tf.saved_model.save(m, out + '/model', signatures=m.__call__)\n"
        "np.savez(out + '/inputs.npz', x=-np.ones((2, 4), 'float32'))\n"
        "with tarfile.open(out + '/model.tar.gz', 'w:gz') as t: t.add(out + '/model', 'model')\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=300,
                   capture_output=True)
    return tmp_path / "model.tar.gz", tmp_path / "inputs.npz"


def test_failed_job_page_shows_the_reason(page: Any, dashboard: Dashboard, screenshots: Path,
                                          tmp_path: Path) -> None:
    archive, inputs = _failing_model(tmp_path)
    with _api(dashboard) as api, archive.open("rb") as model, inputs.open("rb") as npz:
        answer = api.post("/v1/compile", files={"model": ("m.tar.gz", model),
                                                "example_inputs": ("x.npz", npz)})
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    _sign_in(page, dashboard, dashboard.key)
    page.goto(f"{dashboard.url}/ui/jobs/{job_id}")
    page.locator(".failure").wait_for(timeout=JOB_SECONDS)  # the script reloads to show it
    with _api(dashboard) as api:
        reason = api.get(f"/v1/jobs/{job_id}").json()["failure"]
    text = page.locator(".failure").inner_text()
    assert reason["code"] in text and "client_error" in text
    assert "inputs must be positive (ui test)" in text
    page.screenshot(path=str(screenshots / "failed-job.png"), full_page=True)
    assert _axe_serious(page) == []


def test_pages_are_small_and_keyboard_usable(page: Any, dashboard: Dashboard) -> None:
    _sign_in(page, dashboard, dashboard.key)
    sizes = {}
    for path in ("/ui/", "/ui/submit", "/ui/workers", "/ui/static/kiln.css", "/ui/static/kiln.js"):
        response = page.request.get(f"{dashboard.url}{path}")
        assert response.ok, path
        sizes[path] = len(response.body())
    assert sizes["/ui/"] + sizes["/ui/static/kiln.css"] + sizes["/ui/static/kiln.js"] < 200_000
    page.goto(f"{dashboard.url}/ui/")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
