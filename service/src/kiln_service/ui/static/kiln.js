// Kiln dashboard: the live parts. Pages work without this file; it only keeps them fresh.
"use strict";
(function () {
  const csrf = () => document.getElementById("main").dataset.csrf || "";
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

  async function getJob(id) {
    const r = await fetch(`/v1/jobs/${id}`, { headers: { Accept: "application/json" } });
    return r.ok ? r.json() : null;
  }

  function setStatus(el, status) {
    el.textContent = status;
    el.className = `status status-${status}`;
  }

  // Jobs list: refresh the status of rows that are not finished.
  function liveList(table) {
    const tick = async () => {
      const rows = [...table.querySelectorAll("tr[data-job-id]")].filter(
        (row) => !TERMINAL.has(row.querySelector('[data-field="status"]').textContent));
      for (const row of rows) {
        const job = await getJob(row.dataset.jobId);
        if (job) setStatus(row.querySelector('[data-field="status"]'), job.status);
      }
      if (rows.length) setTimeout(tick, 1500);
    };
    setTimeout(tick, 1000);
  }

  // Job page: one typed event stream (/v1/jobs/{id}/events) carries status, stage and log.
  // EventSource resumes by itself after a dropped connection (it sends Last-Event-ID).
  function liveJob(section, pre) {
    const id = section.dataset.liveJob;
    const status = section.querySelector('[data-field="status"]');
    if (TERMINAL.has(status.textContent)) return;
    const stage = section.querySelector('[data-field="stage"]');
    const bar = section.querySelector('[data-field="progress"]');
    if (pre) pre.textContent = "";
    const source = new EventSource(`/v1/jobs/${id}/events`);
    const data = (e) => JSON.parse(e.data);
    const showStage = (name, progress, message) => {
      stage.textContent = name + (message ? `: ${message}` : "");
      bar.value = Math.round(progress * 100);
      bar.textContent = `${bar.value}%`;
    };
    source.addEventListener("status", (e) => {
      const job = data(e).job;
      setStatus(status, job.status);
      showStage(job.stage, job.progress, job.stage_message);
    });
    source.addEventListener("stage", (e) => {
      const s = data(e);
      showStage(s.stage, s.progress, s.message);
    });
    source.addEventListener("log", (e) => {
      if (!pre) return;
      pre.textContent += data(e).line + "\n";
      pre.scrollTop = pre.scrollHeight;
    });
    source.addEventListener("end", async () => {
      source.close();
      const job = await getJob(id);
      if (job) { setStatus(status, job.status); finished(job); }
    });
  }

  async function finished(job) {
    const area = document.getElementById("report-area");
    const r = await fetch(area.dataset.reportUrl);
    if (r.ok) { area.innerHTML = await r.text(); wireGraph(); }
    const actions = document.querySelector(".actions");
    if (actions) actions.innerHTML =
      `<form method="post" action="/ui/jobs/${job.id}/delete" class="inline">` +
      `<input type="hidden" name="csrf" value="${csrf()}">` +
      `<button type="submit" class="danger">Delete job</button></form>`;
    if (job.failure) location.reload();  // the failure box is rendered by the server
  }

  // Placement picture: the reason of an op as a tooltip on hover and on keyboard focus.
  function wireGraph() {
    const tip = document.getElementById("tip");
    if (!tip) return;
    for (const g of document.querySelectorAll("svg.placement g[data-tip]")) {
      const show = (e) => {
        tip.textContent = g.dataset.tip;
        tip.hidden = false;
        const box = g.getBoundingClientRect();
        tip.style.left = `${window.scrollX + (e.clientX || box.left) + 12}px`;
        tip.style.top = `${window.scrollY + (e.clientY || box.top) + 12}px`;
      };
      const hide = () => { tip.hidden = true; };
      g.addEventListener("mouseenter", show);
      g.addEventListener("mousemove", show);
      g.addEventListener("focus", show);
      g.addEventListener("mouseleave", hide);
      g.addEventListener("blur", hide);
    }
  }

  // Submit page: flags checked as you type; the form posted to the API with the CSRF token.
  function submitForm(form) {
    const flags = form.querySelector("#flags");
    const msg = form.querySelector("#flags-msg");
    let timer = null;
    flags.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(async () => {
        const r = await fetch(`/ui/flags/check?flags=${encodeURIComponent(flags.value)}`);
        if (!r.ok) return;
        const out = await r.json();
        msg.textContent = out.message;
        msg.className = `hint ${out.ok ? "good" : "bad"}`;
        flags.setAttribute("aria-invalid", out.ok ? "false" : "true");
      }, 250);
    });
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const status = form.querySelector("#submit-msg");
      const data = new FormData();
      data.append("model", form.model.files[0]);
      if (form.example_inputs.files[0]) data.append("example_inputs", form.example_inputs.files[0]);
      for (const key of ["flags", "target", "name"]) if (form[key].value) data.append(key, form[key].value);
      const ops = form.exclude_ops.value.split(",").map((s) => s.trim()).filter(Boolean);
      if (ops.length) data.append("placement", JSON.stringify({ exclude_ops: ops }));
      const labels = {};
      for (const pair of form.labels.value.split(",").map((s) => s.trim()).filter(Boolean)) {
        const at = pair.indexOf("=");
        if (at > 0) labels[pair.slice(0, at).trim()] = pair.slice(at + 1).trim();
      }
      if (Object.keys(labels).length) data.append("labels", JSON.stringify(labels));
      status.textContent = "Uploading…";
      const r = await fetch("/v1/compile", { method: "POST", body: data, headers: { "X-CSRF-Token": csrf() } });
      const body = await r.json().catch(() => ({}));
      if (r.ok) { status.textContent = `Job ${body.id} queued`; location.assign(`/ui/jobs/${body.id}`); }
      else status.textContent = `Refused (${r.status}): ${body.detail || body.title || "unknown error"}`;
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const list = document.querySelector("[data-live-jobs]");
    if (list) liveList(list);
    const job = document.querySelector("[data-live-job]");
    const log = document.getElementById("log");
    if (job) liveJob(job, log && log.dataset.terminal !== "true" ? log : null);
    const form = document.querySelector("[data-submit]");
    if (form) submitForm(form);
    wireGraph();
  });
})();
