// Sentinel dashboard: plain browser JavaScript, no build step, no third-party code.
//
// Rule for the whole file: data from the API reaches the DOM only through textContent and attribute
// setters, never innerHTML. Dead letters are arbitrary bytes from the broker; alert fields and
// evidence come from configuration and models. The page's Content-Security-Policy is a second guard.
//
// The API wants "Authorization: Bearer" when tokens are configured. EventSource cannot send headers,
// so the alert stream is read with fetch() and parsed by SseParser below (Last-Event-ID is kept, so a
// reconnect resumes exactly after the last event seen).
"use strict";

(function () {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const TOKEN_KEY = "sentinel.token";
  const WINDOW_REFRESH_MS = 30000; // the windows also change without an alert (new clean windows)
  const LIVE_REFRESH_DELAY_MS = 250; // a burst of stream events causes one refresh, not one each
  const WINDOW_RESULTS_LIMIT = 1000; // latest results of the model; the API's page maximum
  const ALERTS_LIMIT = 200;
  const ANOMALIES_LIMIT = 20;
  const DEAD_LETTERS_LIMIT = 50;

  class AuthRequired extends Error {}

  // ------------------------------------------------------------------------------ SSE parsing

  // The text/event-stream format (WHATWG HTML, "Server-sent events"): lines end with CRLF, LF or CR;
  // "field: value"; a blank line dispatches the event; lines starting with ":" are comments.
  class SseParser {
    constructor(onEvent) {
      this.onEvent = onEvent;
      this.buffer = "";
      this.first = true;
      this.data = "";
      this.type = "";
      this.lastEventId = "";
      this.retry = null;
    }

    feed(chunk) {
      if (this.first && chunk.length > 0) {
        this.first = false;
        if (chunk.charCodeAt(0) === 0xfeff) chunk = chunk.slice(1);
      }
      this.buffer += chunk;
      let start = 0;
      let i = 0;
      while (i < this.buffer.length) {
        const c = this.buffer[i];
        if (c === "\n" || c === "\r") {
          // A CR at the end of the chunk may be the first half of a CRLF split across two chunks.
          if (c === "\r" && i + 1 === this.buffer.length) break;
          const line = this.buffer.slice(start, i);
          if (c === "\r" && this.buffer[i + 1] === "\n") i++;
          start = i + 1;
          this.line(line);
        }
        i++;
      }
      this.buffer = this.buffer.slice(start);
    }

    line(line) {
      if (line === "") {
        this.dispatch();
        return;
      }
      if (line[0] === ":") return;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value[0] === " ") value = value.slice(1);
      if (field === "event") this.type = value;
      else if (field === "data") this.data += value + "\n";
      else if (field === "id") {
        if (!value.includes("\0")) this.lastEventId = value;
      } else if (field === "retry" && /^[0-9]+$/.test(value)) this.retry = parseInt(value, 10);
    }

    dispatch() {
      const data = this.data;
      const type = this.type || "message";
      this.data = "";
      this.type = "";
      if (data === "") return;
      this.onEvent({ type: type, data: data.slice(0, -1), lastEventId: this.lastEventId });
    }
  }

  // ------------------------------------------------------------------------------ small helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "text") node.textContent = String(value);
      else node.setAttribute(key, String(value));
    }
    return node;
  }

  function finite(value) {
    return typeof value === "number" && Number.isFinite(value);
  }

  function fmt(value) {
    if (!finite(value)) return "–";
    if (value === 0) return "0";
    const size = Math.abs(value);
    if (size < 1e-3 || size >= 1e5) return value.toExponential(2);
    return String(Number(value.toPrecision(4)));
  }

  function fmtTime(iso) {
    // The API's times are RFC 3339 UTC ("...Z"); shown as UTC, to the second.
    if (!iso) return "–";
    return iso.replace("T", " ").replace(/\.\d+Z$/, "Z");
  }

  function ms(iso) {
    return Date.parse(iso);
  }

  function empty(message) {
    return el("p", { class: "empty", text: message });
  }

  function replaceContent(id, ...nodes) {
    document.getElementById(id).replaceChildren(...nodes);
  }

  function table(headings, rows) {
    const head = el("tr", {}, ...headings.map((h) => el("th", { scope: "col", text: h })));
    return el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows));
  }

  function sleep(delay) {
    return new Promise((resolve) => setTimeout(resolve, delay));
  }

  // ------------------------------------------------------------------------------ API access

  const state = {
    model: null,
    stream: null, // the AbortController of the open stream
    lastEventId: "",
    refreshTimer: null,
    pending: new Set(),
  };

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  function headers(extra) {
    const result = Object.assign({ Accept: "application/json" }, extra || {});
    if (token()) result.Authorization = "Bearer " + token();
    return result;
  }

  function askForToken() {
    const form = document.getElementById("auth-form");
    document.getElementById("auth-message").textContent = token()
      ? "The token was rejected; enter a valid read or admin token."
      : "This API needs a token.";
    form.hidden = false;
    document.getElementById("token-input").focus();
  }

  async function api(path, params) {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(params || {})) {
      if (value !== null && value !== undefined) query.set(key, String(value));
    }
    const url = "v1/" + path + (query.toString() ? "?" + query.toString() : "");
    const response = await fetch(url, { headers: headers(), cache: "no-store" });
    if (response.status === 401) {
      askForToken();
      throw new AuthRequired("401 from " + url);
    }
    if (!response.ok) {
      let detail = response.statusText;
      try {
        const body = await response.json();
        detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      } catch (ignored) {
        // not JSON: the status text says enough
      }
      throw new Error(url + ": " + response.status + " " + detail);
    }
    return response.json();
  }

  function showError(error) {
    const banner = document.getElementById("error-banner");
    if (error === null) {
      banner.hidden = true;
      banner.textContent = "";
      return;
    }
    banner.textContent = String(error.message || error);
    banner.hidden = false;
  }

  // ------------------------------------------------------------------------------ models

  async function loadModels() {
    const models = (await api("models")).items;
    const select = document.getElementById("model-select");
    const wanted = new URLSearchParams(location.hash.slice(1)).get("model");
    const names = models.map((m) => m.name);
    if (!names.includes(state.model)) {
      state.model = names.includes(wanted) ? wanted : names.length ? names[0] : null;
    }
    const current = Array.from(select.options).map((o) => o.value);
    if (current.join("\n") !== names.join("\n")) {
      select.replaceChildren(...names.map((name) => el("option", { value: name, text: name })));
    }
    select.value = state.model || "";
    select.disabled = names.length === 0;
    document.getElementById("models-empty").hidden = names.length > 0;
  }

  // ------------------------------------------------------------------------------ detector charts

  const CHART = { width: 640, height: 170, left: 60, right: 12, top: 10, bottom: 26 };
  const PVALUE = { height: 64, top: 6, bottom: 18 };

  function scale(domainMin, domainMax, rangeMin, rangeMax) {
    const span = domainMax - domainMin || 1;
    return (value) => rangeMin + ((value - domainMin) / span) * (rangeMax - rangeMin);
  }

  function extent(values) {
    let low = Infinity;
    let high = -Infinity;
    for (const v of values) {
      if (v < low) low = v;
      if (v > high) high = v;
    }
    return [low, high];
  }

  function windowTooltip(row) {
    return (
      fmtTime(row.window_start) + " – " + fmtTime(row.window_end) + "\nstatus: " + row.status +
      "\nstatistic: " + fmt(row.statistic) + "\nthreshold: " + fmt(row.threshold) +
      "\np-value: " + fmt(row.p_value) + "\nevents: " + row.n_events +
      (row.reason ? "\nreason: " + row.reason : "")
    );
  }

  function drawChart(detector, rows) {
    // rows: this detector's results, oldest window first.
    const c = CHART;
    const plotted = rows.filter((r) => finite(r.statistic));
    const [tMin, tMax] = extent(rows.flatMap((r) => [ms(r.window_start), ms(r.window_end)]));
    const values = rows.flatMap((r) => [r.statistic, r.threshold]).filter(finite);
    let [yMin, yMax] = values.length ? extent(values) : [0, 1];
    yMin = Math.min(0, yMin);
    if (yMax === yMin) yMax = yMin + 1;
    yMax += (yMax - yMin) * 0.08; // headroom, so the highest point is not cut by the frame
    const x = scale(tMin, tMax, c.left, c.width - c.right);
    const y = scale(yMin, yMax, c.height - c.bottom, c.top);
    const mid = (r) => (ms(r.window_start) + ms(r.window_end)) / 2;

    const chart = svg("svg", {
      class: "chart-svg",
      viewBox: "0 0 " + c.width + " " + c.height,
      role: "img",
      "aria-label": detector + ": statistic and threshold per window",
      "data-points": plotted.length,
    });
    chart.append(svg("rect", {
      class: "frame", x: c.left, y: c.top, width: c.width - c.left - c.right, height: c.height - c.top - c.bottom,
    }));
    for (const r of rows.filter((row) => row.status === "alert")) {
      const x0 = x(ms(r.window_start));
      chart.append(svg("rect", {
        class: "alert-band", x: x0, y: c.top,
        width: Math.max(2, x(ms(r.window_end)) - x0), height: c.height - c.top - c.bottom,
      }));
    }
    // The threshold is calibrated per window (it may change), so it is drawn as a step per window.
    const steps = [];
    for (const r of rows) {
      if (!finite(r.threshold)) continue;
      steps.push(x(ms(r.window_start)) + "," + y(r.threshold), x(ms(r.window_end)) + "," + y(r.threshold));
    }
    if (steps.length) chart.append(svg("polyline", { class: "threshold", points: steps.join(" ") }));
    if (plotted.length) {
      chart.append(svg("polyline", {
        class: "statistic", points: plotted.map((r) => x(mid(r)) + "," + y(r.statistic)).join(" "),
      }));
    }
    for (const r of plotted) {
      const point = svg("circle", {
        class: "point status-" + r.status, cx: x(mid(r)), cy: y(r.statistic), r: r.status === "alert" ? 4.5 : 3,
        "data-window-start": r.window_start,
      });
      point.append(svg("title", { text: windowTooltip(r) }));
      chart.append(point);
    }
    for (const r of rows.filter((row) => !finite(row.statistic))) {
      const tick = svg("rect", {
        class: "skipped", x: x(mid(r)) - 2, y: c.height - c.bottom - 8, width: 4, height: 8,
      });
      tick.append(svg("title", { text: windowTooltip(r) }));
      chart.append(tick);
    }
    const label = (text, lx, ly, anchor) =>
      chart.append(svg("text", { class: "axis", x: lx, y: ly, "text-anchor": anchor, text: text }));
    label(fmt(yMax), c.left - 4, c.top + 9, "end");
    label(fmt(yMin), c.left - 4, c.height - c.bottom, "end");
    label(fmtTime(rows[0].window_start), c.left, c.height - 8, "start");
    label(fmtTime(rows[rows.length - 1].window_end), c.width - c.right, c.height - 8, "end");
    return chart;
  }

  function drawPValues(rows) {
    const withP = rows.filter((r) => finite(r.p_value));
    if (!withP.length) return null;
    const c = { ...CHART, ...PVALUE };
    const [tMin, tMax] = extent(rows.flatMap((r) => [ms(r.window_start), ms(r.window_end)]));
    // log10 scale: the p-values of interest span many decades; 1e-300 stands in for an underflowed 0.
    const logs = withP.map((r) => Math.log10(Math.max(r.p_value, 1e-300)));
    const low = Math.min(-3, Math.floor(extent(logs)[0]));
    const x = scale(tMin, tMax, c.left, c.width - c.right);
    const y = scale(low, 0, c.height - c.bottom, c.top);
    const chart = svg("svg", {
      class: "pvalue-svg", viewBox: "0 0 " + c.width + " " + c.height, role: "img",
      "aria-label": "p-value per window (log scale)", "data-points": withP.length,
    });
    chart.append(svg("rect", {
      class: "frame", x: c.left, y: c.top, width: c.width - c.left - c.right, height: c.height - c.top - c.bottom,
    }));
    withP.forEach((r, i) => {
      const point = svg("circle", {
        class: "pvalue status-" + r.status,
        cx: x((ms(r.window_start) + ms(r.window_end)) / 2), cy: y(logs[i]), r: 2.5,
      });
      point.append(svg("title", { text: windowTooltip(r) }));
      chart.append(point);
    });
    chart.append(svg("text", { class: "axis", x: c.left - 4, y: c.top + 8, "text-anchor": "end", text: "p=1" }));
    chart.append(svg("text", {
      class: "axis", x: c.left - 4, y: c.height - c.bottom, "text-anchor": "end", text: "1e" + low,
    }));
    return chart;
  }

  function renderCharts(results) {
    if (!results.length) {
      replaceContent("charts", empty("No windows stored yet for " + state.model + "."));
      return;
    }
    const byDetector = new Map();
    for (const r of results) {
      if (!byDetector.has(r.detector)) byDetector.set(r.detector, []);
      byDetector.get(r.detector).push(r);
    }
    const figures = [];
    for (const detector of Array.from(byDetector.keys()).sort()) {
      const rows = byDetector.get(detector).sort((a, b) => ms(a.window_start) - ms(b.window_start));
      const latest = rows[rows.length - 1];
      const caption = el(
        "figcaption", {},
        el("strong", { text: detector }),
        el("span", { class: "muted", text: " " + latest.threat + " · " + rows.length + " windows · latest " }),
        el("span", { class: "badge status-" + latest.status, text: latest.status }),
        el("span", {
          class: "muted",
          text: " statistic " + fmt(latest.statistic) + " / threshold " + fmt(latest.threshold) +
            (finite(latest.p_value) ? " · p " + fmt(latest.p_value) : ""),
        }),
      );
      figures.push(el("figure", { class: "chart", "data-detector": detector }, caption,
        drawChart(detector, rows), drawPValues(rows)));
    }
    replaceContent("charts", ...figures);
  }

  async function loadWindows() {
    const page = await api("windows", { model: state.model, limit: WINDOW_RESULTS_LIMIT });
    renderCharts(page.items);
  }

  // ------------------------------------------------------------------------------ alerts

  function alertEnd(alert, now) {
    return ms(alert.resolved_at || (alert.state === "firing" ? now : alert.last_seen));
  }

  function renderTimeline(alerts) {
    // One lane per detector, bars from first seen to resolution (or now, while firing). Alerts of one
    // detector that overlap in time (several subjects, or a replay) get sub-rows instead of hiding each other.
    if (!alerts.length) {
      replaceContent("alert-timeline");
      return;
    }
    const now = new Date().toISOString();
    const rowHeight = 18;
    const subRows = new Map(); // detector -> the end time of the last bar in each of its sub-rows
    const placed = alerts
      .slice()
      .sort((a, b) => ms(a.first_seen) - ms(b.first_seen) || a.id - b.id)
      .map((a) => {
        const ends = subRows.get(a.detector) || [];
        let row = ends.findIndex((end) => end < ms(a.first_seen));
        if (row < 0) row = ends.push(0) - 1;
        ends[row] = alertEnd(a, now);
        subRows.set(a.detector, ends);
        return { alert: a, row: row };
      });
    const lanes = Array.from(subRows.keys()).sort();
    const laneTop = new Map();
    let rows = 0;
    for (const name of lanes) {
      laneTop.set(name, rows);
      rows += subRows.get(name).length;
    }
    // Drawn at the width it is shown at (not scaled up), so its labels keep their size on wide screens.
    const width = Math.max(480, document.getElementById("alerts").clientWidth || 640);
    const c = { width: width, left: 130, right: 12, top: 6, bottom: 22 };
    const height = c.top + rows * rowHeight + c.bottom;
    const [tMin, tMax] = extent(alerts.flatMap((a) => [ms(a.first_seen), alertEnd(a, now)]));
    const x = scale(tMin, tMax === tMin ? tMin + 60000 : tMax, c.left, c.width - c.right);
    const chart = svg("svg", {
      class: "timeline-svg", viewBox: "0 0 " + c.width + " " + height, role: "img",
      "aria-label": "alerts over time, one lane per detector",
    });
    for (const name of lanes) {
      const top = c.top + laneTop.get(name) * rowHeight;
      chart.append(svg("line", { class: "lane", x1: 0, x2: c.width, y1: top, y2: top }));
      chart.append(svg("text", { class: "axis", x: c.left - 6, y: top + 13, "text-anchor": "end", text: name }));
    }
    for (const { alert: a, row } of placed) {
      const x0 = x(ms(a.first_seen));
      const bar = svg("rect", {
        class: "alert-bar severity-" + a.severity + " state-" + a.state,
        x: x0, y: c.top + (laneTop.get(a.detector) + row) * rowHeight + 3,
        width: Math.max(6, x(alertEnd(a, now)) - x0), height: rowHeight - 6, rx: 3,
        tabindex: 0, "data-alert-id": a.id,
      });
      bar.append(svg("title", { text: a.state + " " + a.severity + ": " + a.title }));
      bar.addEventListener("click", () => showAlert(a.id));
      bar.addEventListener("keydown", (event) => {
        if (event.key === "Enter") showAlert(a.id);
      });
      chart.append(bar);
    }
    chart.append(svg("text", {
      class: "axis", x: c.left, y: height - 6,
      text: fmtTime(new Date(tMin).toISOString()) + "  (when the daemon saw it)",
    }));
    chart.append(svg("text", {
      class: "axis", x: c.width - c.right, y: height - 6, "text-anchor": "end",
      text: fmtTime(new Date(tMax).toISOString()),
    }));
    replaceContent("alert-timeline", chart);
  }

  function renderAlerts(alerts) {
    renderTimeline(alerts);
    if (!alerts.length) {
      replaceContent("alerts", empty("No alerts for " + state.model + "."));
      return;
    }
    const rows = alerts.map((a) => {
      const row = el(
        "tr", { class: "alert-row state-" + a.state, "data-alert-id": a.id, tabindex: 0 },
        el("td", {}, el("span", { class: "badge state-" + a.state, text: a.state })),
        el("td", {}, el("span", { class: "badge severity-" + a.severity, text: a.severity })),
        el("td", { text: a.detector }),
        el("td", { class: "alert-title", text: a.title }),
        el("td", { class: "time", text: fmtTime(a.window_start) }),
        el("td", { class: "time", text: fmtTime(a.first_seen) }),
        el("td", { class: "time", text: fmtTime(a.resolved_at) }),
        el("td", { class: "num", text: a.count }),
      );
      row.addEventListener("click", () => showAlert(a.id));
      row.addEventListener("keydown", (event) => {
        if (event.key === "Enter") showAlert(a.id);
      });
      return row;
    });
    replaceContent("alerts", table(
      ["state", "severity", "detector", "title", "window", "first seen", "resolved", "count"], rows,
    ));
  }

  async function loadAlerts() {
    const page = await api("alerts", { model: state.model, limit: ALERTS_LIMIT });
    renderAlerts(page.items);
  }

  async function showAlert(id) {
    const panel = document.getElementById("alert-detail");
    panel.hidden = false;
    panel.replaceChildren(el("p", { class: "muted", text: "loading alert " + id + " …" }));
    let alert;
    try {
      alert = await api("alerts/" + encodeURIComponent(id));
    } catch (error) {
      panel.replaceChildren(el("p", { class: "banner", text: String(error.message || error) }));
      return;
    }
    const fields = [
      ["state", alert.state], ["severity", alert.severity], ["threat", alert.threat],
      ["detector", alert.detector], ["summary", alert.summary],
      ["window", fmtTime(alert.window_start) + " – " + fmtTime(alert.window_end)],
      ["statistic", fmt(alert.statistic)], ["threshold", fmt(alert.threshold)], ["p-value", fmt(alert.p_value)],
      ["first seen", fmtTime(alert.first_seen)], ["last seen", fmtTime(alert.last_seen)],
      ["resolved", fmtTime(alert.resolved_at)], ["windows counted", alert.count],
      ["fingerprint", alert.fingerprint],
    ];
    const list = el("dl", {});
    for (const [name, value] of fields) list.append(el("dt", { text: name }), el("dd", { text: value }));
    const deliveries = alert.deliveries.length
      ? table(
        ["target", "state", "attempts", "last status", "last error"],
        alert.deliveries.map((d) => el(
          "tr", {}, el("td", { text: d.target }), el("td", { text: d.state }),
          el("td", { class: "num", text: d.attempts }),
          el("td", { text: d.last_status_code === null ? "–" : d.last_status_code }),
          el("td", { text: d.last_error || "–" }),
        )),
      )
      : empty("No notifications sent for this alert.");
    const close = el("button", { type: "button", class: "close", text: "close" });
    close.addEventListener("click", () => {
      panel.hidden = true;
      panel.replaceChildren();
    });
    panel.replaceChildren(
      el("h3", {}, "alert " + alert.id + ": ", el("span", { text: alert.title })), close, list,
      el("h4", { text: "details" }), el("pre", { text: JSON.stringify(alert.details, null, 2) }),
      el("h4", { text: "notifications" }), deliveries,
    );
  }

  // ------------------------------------------------------------------------------ anomalies, dead letters

  function compactJson(value, limit) {
    const text = value === null || value === undefined ? "–" : JSON.stringify(value);
    return text.length > limit ? text.slice(0, limit) + "…" : text;
  }

  async function loadAnomalies() {
    const items = (await api("anomalies", { model: state.model, limit: ANOMALIES_LIMIT })).items;
    if (!items.length) {
      replaceContent("anomalies", empty("No anomalous events stored for " + state.model + "."));
      return;
    }
    replaceContent("anomalies", table(
      ["score", "event", "event time", "client", "detector", "features"],
      items.map((a) => el(
        "tr", { class: "anomaly-row" }, el("td", { class: "num", text: fmt(a.score) }),
        el("td", {}, el("code", { text: a.event_id })), el("td", { class: "time", text: fmtTime(a.event_time) }),
        el("td", { text: a.client_id || "–" }), el("td", { text: a.detector }),
        el("td", {}, el("code", { class: "features", text: compactJson(a.features, 120) })),
      )),
    ));
  }

  async function loadDeadLetters() {
    const items = (await api("dead-letters", { limit: DEAD_LETTERS_LIMIT })).items;
    if (!items.length) {
      replaceContent("dead-letters", empty("No dead letters: every message was accepted."));
      return;
    }
    replaceContent("dead-letters", table(
      ["received", "source", "model", "reason", "payload"],
      items.map((d) => {
        const payload = d.preview === null
          ? "(not UTF-8, " + d.size + " bytes; raw_base64 in the API)"
          : d.preview + (d.truncated || d.preview.length < d.size ? " … (" + d.size + " bytes)" : "");
        return el(
          "tr", { class: "dead-letter-row" }, el("td", { class: "time", text: fmtTime(d.received_at) }),
          el("td", { text: d.topic + (d.partition === null ? "" : " [" + d.partition + "] @" + d.offset) }),
          el("td", { text: d.model || "–" }), el("td", { class: "reason", text: d.reason }),
          el("td", {}, el("code", { class: "payload", text: payload })),
        );
      }),
    ));
  }

  // ------------------------------------------------------------------------------ refreshing

  const LOADERS = {
    windows: loadWindows,
    alerts: loadAlerts,
    anomalies: loadAnomalies,
    deadLetters: loadDeadLetters,
  };

  async function refresh(parts) {
    try {
      await loadModels();
      if (state.model === null) {
        for (const id of ["charts", "alerts", "anomalies"]) replaceContent(id);
        replaceContent("alert-timeline");
        await loadDeadLetters(); // rejected messages are worth seeing before any model exists
      } else {
        await Promise.all(parts.map((part) => LOADERS[part]()));
      }
      showError(null);
      document.getElementById("refreshed-at").textContent = "updated " + fmtTime(new Date().toISOString());
      document.body.dataset.loaded = "true";
    } catch (error) {
      if (!(error instanceof AuthRequired)) showError(error);
    }
  }

  function refreshSoon(parts) {
    // Coalesces the refreshes asked for within LIVE_REFRESH_DELAY_MS into one.
    for (const part of parts) state.pending.add(part);
    if (state.refreshTimer !== null) return;
    state.refreshTimer = setTimeout(() => {
      const todo = Array.from(state.pending);
      state.pending.clear();
      state.refreshTimer = null;
      refresh(todo);
    }, LIVE_REFRESH_DELAY_MS);
  }

  function setLive(status) {
    const badge = document.getElementById("live-status");
    badge.className = "live live-" + status;
    badge.textContent = status;
  }

  function onStreamEvent(event) {
    state.lastEventId = event.lastEventId;
    if (event.type !== "alert") return;
    let body;
    try {
      body = JSON.parse(event.data);
    } catch (ignored) {
      return; // not an event of this API's shape: nothing to show
    }
    const alert = body.alert || {};
    document.getElementById("refreshed-at").textContent =
      "live: " + body.status + " " + (alert.detector || "") + " on " + (alert.model || "");
    if (alert.model === state.model) refreshSoon(["alerts", "windows"]);
  }

  async function streamAlerts() {
    let delay = 2000;
    for (;;) {
      const controller = new AbortController();
      state.stream = controller;
      try {
        const extra = { Accept: "text/event-stream" };
        if (state.lastEventId) extra["Last-Event-ID"] = state.lastEventId;
        const response = await fetch("v1/alerts/stream", {
          headers: headers(extra), cache: "no-store", signal: controller.signal,
        });
        if (response.status === 401) {
          setLive("offline");
          askForToken();
          return; // restarted once a token is entered
        }
        if (response.status === 422) {
          state.lastEventId = ""; // an id this server does not know (e.g. another database): start afresh
          throw new Error("stream refused the last event id");
        }
        if (!response.ok || !response.body) throw new Error("stream: HTTP " + response.status);
        setLive("live");
        // Alerts opened between the last list load and the stream's start are in neither: reload once.
        refreshSoon(["alerts", "windows"]);
        const parser = new SseParser(onStreamEvent);
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          parser.feed(decoder.decode(value, { stream: true }));
        }
        parser.feed(decoder.decode());
        if (parser.retry !== null) delay = parser.retry;
      } catch (error) {
        if (controller.signal.aborted) return;
        delay = Math.min(Math.max(delay * 2, 2000), 30000); // the server or the network is away: back off
      }
      setLive("reconnecting");
      await sleep(delay);
      if (controller.signal.aborted) return;
    }
  }

  function restartStream() {
    if (state.stream !== null) state.stream.abort();
    state.stream = null;
    streamAlerts();
  }

  function start() {
    const all = Object.keys(LOADERS);
    document.getElementById("model-select").addEventListener("change", (event) => {
      state.model = event.target.value;
      history.replaceState(null, "", "#model=" + encodeURIComponent(state.model));
      document.getElementById("alert-detail").hidden = true;
      refresh(all);
    });
    document.getElementById("auth-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = document.getElementById("token-input");
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      input.value = "";
      document.getElementById("auth-form").hidden = true;
      refresh(all);
      restartStream();
    });
    refresh(all);
    streamAlerts();
    setInterval(() => refreshSoon(["windows", "anomalies", "deadLetters"]), WINDOW_REFRESH_MS);
  }

  // Exposed for the browser tests of the stream parser; the page does not need it.
  window.SentinelDashboard = Object.freeze({ SseParser: SseParser });
  start();
})();
