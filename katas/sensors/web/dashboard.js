// The building page: live figures over server-sent events, their freshness, floor and zone views, and
// history charts drawn as inline SVG. Served as a file (the Content-Security-Policy allows no inline
// script). Everything that came from the server goes into the page through textContent and attributes,
// never as markup, so a hostile floor or zone id is shown as text.
"use strict";

(function () {
  const root = document.getElementById("dashboard");
  if (!root) {
    return;
  }
  const TYPES = ["temperature", "humidity", "co2", "occupancy", "light"];
  const LABELS = { temperature: "Temperature", humidity: "Humidity", co2: "CO2", occupancy: "Occupancy", light: "Light" };
  const UNITS = { temperature: "°C", humidity: "%", co2: "ppm", occupancy: "people", light: "lux" };
  const FRESH_S = 5;
  const HISTORY_MS = 24 * 3600 * 1000;
  const HISTORY_REFRESH_MS = 60 * 1000;
  const SVG = "http://www.w3.org/2000/svg";

  const figures = new Map(); // "level|floor|zone|type" -> the newest entry seen
  const figureEls = new Map(); // "level|floor|zone" -> {type: element} in the building and floor views
  const floorEls = new Map(); // floor -> {section, figures, zones}
  const zoneEls = new Map(); // "floor|zone" -> tile
  let skewMs = 0; // the server's clock minus this browser's
  let view = { floor: "", zone: "" };
  let historyAbort = null;

  // -- small DOM helpers -----------------------------------------------------------------------------
  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      node.setAttribute(name, value);
    }
    if (text !== undefined) {
      node.textContent = text;
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      node.setAttribute(name, String(value));
    }
    if (text !== undefined) {
      node.textContent = text;
    }
    return node;
  }

  function number(value) {
    if (typeof value !== "number" || !Number.isFinite(value)) {
      return "–";
    }
    const abs = Math.abs(value);
    return value.toFixed(abs >= 100 ? 0 : abs >= 10 ? 1 : 2);
  }

  function hashFor(floor, zone) {
    const params = new URLSearchParams();
    if (floor) {
      params.set("floor", floor);
    }
    if (zone) {
      params.set("zone", zone);
    }
    const text = params.toString();
    return text ? "#" + text : "#";
  }

  function keyOf(level, floor, zone) {
    return level + "|" + floor + "|" + zone;
  }

  // -- figures ---------------------------------------------------------------------------------------
  function figuresBlock(level, floor, zone) {
    const block = el("div", { class: "figures" });
    const byType = {};
    for (const type of TYPES) {
      const figure = el("div", { class: "figure", "data-type": type });
      figure.append(el("span", { class: "label" }, LABELS[type]));
      figure.append(el("span", { class: "mean" }, "–"));
      figure.append(el("span", { class: "unit" }, UNITS[type]));
      figure.append(el("span", { class: "last" }, ""));
      block.append(figure);
      byType[type] = figure;
    }
    figureEls.set(keyOf(level, floor, zone), byType);
    return block;
  }

  function paintFigure(figure, entry) {
    figure.dataset.mean = String(entry.mean);
    figure.dataset.last = String(entry.last);
    figure.dataset.asOf = entry.as_of;
    figure.querySelector(".mean").textContent = number(entry.mean);
    figure.querySelector(".last").textContent = "last " + number(entry.last);
    figure.title = "mean of " + entry.count + " readings in the " + entry.size_s + " s window from " + entry.start + "; newest " + entry.as_of;
  }

  function sortChildren(container, keyOfChild) {
    const children = Array.from(container.children);
    const sorted = children.slice().sort((a, b) => (keyOfChild(a) < keyOfChild(b) ? -1 : keyOfChild(a) > keyOfChild(b) ? 1 : 0));
    if (sorted.some((child, i) => child !== children[i])) {
      container.append(...sorted);
    }
  }

  function floorOf(floor) {
    let found = floorEls.get(floor);
    if (found) {
      return found;
    }
    const section = el("section", { class: "floor", "data-floor": floor });
    const title = el("h2");
    const link = el("a", { href: hashFor(floor, "") }, "Floor " + floor);
    title.append(link);
    const zones = el("div", { class: "zones" });
    const block = figuresBlock("floor", floor, "");
    section.append(title, block, zones);
    section.dataset.key = floor;
    document.getElementById("floors").append(section);
    sortChildren(document.getElementById("floors"), (n) => n.dataset.key);
    const nav = el("a", { href: hashFor(floor, ""), "data-view": "floor", "data-floor": floor }, floor);
    nav.dataset.key = floor;
    document.getElementById("floor-links").append(nav);
    sortChildren(document.getElementById("floor-links"), (n) => n.dataset.key);
    found = { section, zones, nav };
    floorEls.set(floor, found);
    section.hidden = Boolean(view.floor) && floor !== view.floor;
    nav.classList.toggle("current", floor === view.floor);
    return found;
  }

  function zoneOf(floor, zone) {
    const id = floor + "|" + zone;
    let tile = zoneEls.get(id);
    if (tile) {
      return tile;
    }
    const parent = floorOf(floor);
    tile = el("article", { class: "zone", "data-floor": floor, "data-zone": zone });
    const title = el("h3");
    title.append(el("a", { href: hashFor(floor, zone) }, zone));
    tile.append(title, figuresBlock("zone", floor, zone));
    tile.dataset.key = zone;
    parent.zones.append(tile);
    sortChildren(parent.zones, (n) => n.dataset.key);
    zoneEls.set(id, tile);
    return tile;
  }

  function newer(entry, shown) {
    if (!shown) {
      return true;
    }
    const start = Date.parse(entry.start) - Date.parse(shown.start);
    return start > 0 || (start === 0 && Date.parse(entry.as_of) >= Date.parse(shown.as_of));
  }

  function take(entries) {
    let zoneTouched = false;
    for (const entry of entries) {
      const key = keyOf(entry.level, entry.floor, entry.zone) + "|" + entry.type;
      if (!newer(entry, figures.get(key))) {
        continue;
      }
      figures.set(key, entry);
      if (entry.level === "zone") {
        zoneOf(entry.floor, entry.zone);
        zoneTouched = zoneTouched || (entry.floor === view.floor && entry.zone === view.zone);
      } else if (entry.level === "floor") {
        floorOf(entry.floor);
      }
      const block = figureEls.get(keyOf(entry.level, entry.floor, entry.zone));
      if (block && block[entry.type]) {
        paintFigure(block[entry.type], entry);
      }
    }
    if (zoneTouched) {
      paintZoneView();
    }
    paintFreshness();
  }

  // -- freshness -------------------------------------------------------------------------------------
  function paintFreshness() {
    let newest = NaN;
    for (const entry of figures.values()) {
      const t = Date.parse(entry.as_of);
      if (!(t <= newest)) {
        newest = t;
      }
    }
    const out = document.getElementById("freshness");
    if (Number.isNaN(newest)) {
      out.textContent = "no data yet";
      out.dataset.freshnessS = "";
      return;
    }
    const age = Math.max(0, (Date.now() + skewMs - newest) / 1000);
    out.textContent = age.toFixed(1) + " s";
    out.dataset.freshnessS = age.toFixed(2);
    out.dataset.newest = new Date(newest).toISOString();
    out.classList.toggle("stale", age >= FRESH_S);
  }

  // -- views -----------------------------------------------------------------------------------------
  function readView() {
    const params = new URLSearchParams(location.hash.slice(1));
    return { floor: params.get("floor") || "", zone: params.get("zone") || "" };
  }

  function paintZoneView() {
    const body = document.querySelector("#zone-figures tbody");
    const rows = [];
    for (const type of TYPES) {
      const entry = figures.get(keyOf("zone", view.floor, view.zone) + "|" + type);
      const row = el("tr", { "data-type": type });
      row.append(el("th", {}, LABELS[type] + " (" + UNITS[type] + ")"));
      for (const name of ["mean", "min", "max", "last"]) {
        row.append(el("td", { "data-figure": name }, entry ? number(entry[name]) : "–"));
      }
      row.append(el("td", { "data-figure": "count" }, entry ? String(entry.count) : "–"));
      row.append(el("td", { "data-figure": "as_of" }, entry ? entry.as_of : "–"));
      rows.push(row);
    }
    body.replaceChildren(...rows);
  }

  function applyView() {
    view = readView();
    const zoneView = document.getElementById("zone-view");
    const inZone = Boolean(view.floor && view.zone);
    document.getElementById("building-view").hidden = Boolean(view.floor);
    document.getElementById("floors").hidden = inZone;
    for (const [floor, parts] of floorEls) {
      parts.section.hidden = Boolean(view.floor) && floor !== view.floor;
      parts.nav.classList.toggle("current", floor === view.floor);
    }
    document.querySelector('#views [data-view="building"]').classList.toggle("current", !view.floor);
    zoneView.hidden = !inZone;
    root.dataset.view = inZone ? "zone" : view.floor ? "floor" : "building";
    if (inZone) {
      document.getElementById("zone-title").textContent = "Zone " + view.zone + " (floor " + view.floor + ")";
      document.getElementById("zone-back").setAttribute("href", hashFor(view.floor, ""));
      paintZoneView();
    }
    loadHistory();
  }

  // -- history charts --------------------------------------------------------------------------------
  function historyScope() {
    if (view.floor && view.zone) {
      return { level: "zone", floor: view.floor, zone: view.zone, title: "zone " + view.zone };
    }
    if (view.floor) {
      return { level: "floor", floor: view.floor, zone: "", title: "floor " + view.floor };
    }
    return { level: "building", floor: "", zone: "", title: "the building" };
  }

  function loadHistory() {
    const type = document.getElementById("history-type").value;
    const scope = historyScope();
    const to = new Date(Date.now() + skewMs);
    const from = new Date(to.getTime() - HISTORY_MS);
    const params = new URLSearchParams({ type, level: scope.level, from: from.toISOString(), to: to.toISOString() });
    const chart = document.getElementById("chart");
    if (historyAbort) {
      historyAbort.abort();
    }
    historyAbort = new AbortController();
    chart.dataset.state = "loading";
    fetch(root.dataset.history + "?" + params.toString(), { credentials: "same-origin", signal: historyAbort.signal })
      .then((answer) => {
        if (!answer.ok) {
          throw new Error("history answered " + answer.status);
        }
        return answer.json();
      })
      .then((body) => {
        const series = (Array.isArray(body.series) ? body.series : []).filter(
          (s) => (!scope.floor || s.floor === scope.floor) && (!scope.zone || s.zone === scope.zone)
        );
        const title = LABELS[type] + " (" + UNITS[type] + ") in " + scope.title + ", last 24 h";
        drawChart(chart, series, from.getTime(), to.getTime(), title, (body.step_s || 60) * 1000);
      })
      .catch((error) => {
        if (error.name === "AbortError") {
          return;
        }
        chart.dataset.state = "error";
        chart.replaceChildren(el("p", { class: "error" }, "History is not available: " + error.message));
      });
  }

  const PALETTE = ["#2563eb", "#dc2626", "#d97706", "#059669", "#7c3aed", "#db2777", "#0891b2", "#4b5563"];

  function drawChart(container, series, fromMs, toMs, title, stepMs) {
    const W = 720;
    const H = 260;
    const L = 56;
    const R = 16;
    const T = 44;
    const B = 28;
    const lines = series
      .map((s) => ({
        name: s.zone || s.floor || "building",
        points: (Array.isArray(s.points) ? s.points : [])
          .map((p) => ({ t: Date.parse(p.t), v: p.mean }))
          .filter((p) => Number.isFinite(p.t) && typeof p.v === "number" && Number.isFinite(p.v))
          .sort((a, b) => a.t - b.t),
      }))
      .filter((s) => s.points.length > 0);
    const chart = svg("svg", { viewBox: "0 0 " + W + " " + H, class: "chart", role: "img", "data-chart": "history", "aria-label": title });
    chart.append(svg("title", {}, title));
    chart.append(svg("text", { x: L, y: 16, "font-size": 13, "font-weight": "bold", fill: "#111827" }, title));
    if (lines.length === 0) {
      chart.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#6b7280", "font-size": 13 }, "no history in the last 24 h"));
      container.replaceChildren(chart);
      container.dataset.state = "empty";
      return;
    }
    let lo = Infinity;
    let hi = -Infinity;
    for (const line of lines) {
      for (const p of line.points) {
        lo = Math.min(lo, p.v);
        hi = Math.max(hi, p.v);
      }
    }
    if (hi - lo < 1e-9) {
      lo -= 1;
      hi += 1;
    }
    const pad = (hi - lo) * 0.05;
    lo -= pad;
    hi += pad;
    const x = (t) => L + ((W - L - R) * (t - fromMs)) / Math.max(1, toMs - fromMs);
    const y = (v) => T + (H - T - B) * (1 - (v - lo) / (hi - lo));
    for (const fraction of [0, 0.5, 1]) {
      const v = lo + (hi - lo) * fraction;
      chart.append(svg("line", { x1: L, x2: W - R, y1: y(v).toFixed(1), y2: y(v).toFixed(1), stroke: "#e5e7eb" }));
      chart.append(svg("text", { x: L - 6, y: (y(v) + 4).toFixed(1), "text-anchor": "end", "font-size": 11, fill: "#4b5563" }, number(v)));
    }
    const anchors = ["start", "middle", "end"];
    [fromMs, (fromMs + toMs) / 2, toMs].forEach((t, i) => {
      const label = new Date(t).toISOString().slice(11, 16) + " UTC";
      chart.append(svg("text", { x: x(t).toFixed(1), y: H - 8, "text-anchor": anchors[i], "font-size": 11, fill: "#4b5563" }, label));
    });
    let legendX = L;
    lines.forEach((line, i) => {
      const colour = PALETTE[i % PALETTE.length];
      let d = "";
      let previous = null;
      for (const p of line.points) {
        const gap = previous === null || p.t - previous > 2 * stepMs;
        d += (gap ? "M" : "L") + x(p.t).toFixed(1) + "," + y(p.v).toFixed(1) + " ";
        previous = p.t;
      }
      const path = svg("path", { d: d.trim(), fill: "none", stroke: colour, "stroke-width": 1.5, "data-series": line.name, "data-points": line.points.length });
      if (line.points.length === 1) {
        path.setAttribute("stroke-linecap", "round");
        path.setAttribute("stroke-width", 4);
        path.setAttribute("d", d.trim() + " l0.01,0");
      }
      chart.append(path);
      chart.append(svg("rect", { x: legendX, y: 26, width: 10, height: 10, fill: colour }));
      const label = svg("text", { x: legendX + 14, y: 35, "font-size": 11, fill: "#374151" }, line.name);
      chart.append(label);
      legendX += 24 + 7 * Math.min(line.name.length, 24);
    });
    container.replaceChildren(chart);
    container.dataset.state = "ready";
  }

  // -- the live stream -------------------------------------------------------------------------------
  function connect() {
    const status = document.getElementById("connection");
    const events = new EventSource(root.dataset.events);
    const clock = (data) => {
      const now = Date.parse(data.now);
      if (Number.isFinite(now)) {
        skewMs = now - Date.now();
      }
    };
    events.addEventListener("open", () => {
      status.dataset.state = "live";
      status.textContent = "live";
    });
    events.addEventListener("snapshot", (event) => {
      const data = JSON.parse(event.data);
      clock(data);
      take(data.entries || []);
    });
    events.addEventListener("update", (event) => {
      const data = JSON.parse(event.data);
      clock(data);
      take(data.entries || []);
    });
    events.addEventListener("error", () => {
      if (events.readyState === EventSource.CLOSED) {
        status.dataset.state = "closed";
        status.textContent = "disconnected: reload the page, or sign in again";
      } else {
        status.dataset.state = "reconnecting";
        status.textContent = "reconnecting…";
      }
    });
  }

  document.getElementById("history-type").addEventListener("change", loadHistory);
  window.addEventListener("hashchange", applyView);
  setInterval(paintFreshness, 1000);
  setInterval(loadHistory, HISTORY_REFRESH_MS);
  document.getElementById("building-figures").append(figuresBlock("building", "", ""));
  applyView();
  connect();
})();
