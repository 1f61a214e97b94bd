// colony's dashboard: the charts and the list of events, fed by the server's event stream
// (GET /v1/events, a `snapshot` of the counters every second and `notable` events as they
// happen), and the pools chart, fed by the server's history of pool sizes (GET
// /v1/pools/history: the last 15 minutes at page load, then what is new every second). The
// tables are htmx fragments rendered by the server. Text from the server is set with
// textContent, never as HTML: agents' words and pool names are untrusted.
"use strict";

(function () {
  // Seconds of history the charts keep, and lines the event list keeps.
  const KEEP = 300;
  const EVENTS = 80;
  const HEIGHT = 200;

  const colors = {
    blue: "#2563eb",
    green: "#16a34a",
    red: "#dc2626",
    amber: "#d97706",
    violet: "#7c3aed",
    grey: "#6b7280",
  };

  function byId(id) {
    return document.getElementById(id);
  }

  const AXIS = { stroke: colors.grey, grid: { stroke: "#eef0f3" }, ticks: { stroke: "#e5e7eb" } };
  const fromZero = (u, min, max) => [0, Math.max(1, (max || 0) * 1.15)];

  // A uPlot chart of `data` in `el`: time across, `series` (the time series first), a y axis
  // from zero (`more.y` adds to it), and `more.scales`, `more.axes` and `more.hooks` besides;
  // it follows the element's width.
  function plotIn(el, data, series, more) {
    const opts = {
      width: Math.max(el.clientWidth, 240),
      height: HEIGHT,
      cursor: { drag: { x: false, y: false } },
      legend: { live: false },
      scales: Object.assign({ x: { time: true }, y: { range: fromZero } }, more.scales),
      axes: [AXIS, Object.assign({ size: 56 }, more.y, AXIS)].concat(more.axes || []),
      series,
      hooks: more.hooks || {},
    };
    const plot = new uPlot(opts, data, el);
    if (typeof ResizeObserver !== "undefined") {
      let width = el.clientWidth;
      new ResizeObserver(() => {
        if (el.clientWidth !== width) {
          width = el.clientWidth;
          plot.setSize({ width: Math.max(width, 240), height: HEIGHT });
        }
      }).observe(el);
    }
    return plot;
  }

  // A uPlot chart in the element `id`, one line per series; null if uPlot did not load.
  function chart(id, series) {
    const el = byId(id);
    if (!el || typeof uPlot === "undefined") {
      return null;
    }
    const lines = [{}].concat(
      series.map((s) => ({
        label: s.label,
        stroke: s.color,
        width: 2,
        points: { show: false },
      })),
    );
    const data = [[]].concat(series.map(() => []));
    return { plot: plotIn(el, data, lines, {}), data };
  }

  function push(c, t, values) {
    if (!c) {
      return;
    }
    c.data[0].push(t);
    values.forEach((v, i) => c.data[i + 1].push(v));
    if (c.data[0].length > KEEP) {
      c.data.forEach((column) => column.shift());
    }
    c.plot.setData(c.data);
  }

  function addEvent(kind, text, cls) {
    const list = byId("events");
    if (!list) {
      return;
    }
    const empty = list.querySelector(".empty");
    if (empty) {
      empty.remove();
    }
    const li = document.createElement("li");
    li.className = cls;
    const time = document.createElement("time");
    time.textContent = new Date().toLocaleTimeString();
    const k = document.createElement("span");
    k.className = "kind";
    k.textContent = kind;
    const message = document.createElement("span");
    message.textContent = text;
    li.append(time, k, message);
    list.prepend(li);
    while (list.children.length > EVENTS) {
      list.lastElementChild.remove();
    }
  }

  function ms(v) {
    return typeof v === "number" ? v.toFixed(1) + " ms" : "?";
  }

  function plural(n, one, many) {
    return n + " " + (n === 1 ? one : many);
  }

  const throughput = chart("chart-throughput", [
    { label: "succeeded/s", color: colors.green },
    { label: "failed/s", color: colors.red },
    { label: "accepted/s", color: colors.blue },
  ]);
  const latency = chart("chart-latency", [
    { label: "p50 ms", color: colors.green },
    { label: "p99 ms", color: colors.amber },
  ]);
  const queue = chart("chart-queue", [
    { label: "queued", color: colors.amber },
    { label: "running", color: colors.blue },
  ]);
  const recoveries = chart("chart-recoveries", [
    { label: "restarts", color: colors.amber },
    { label: "escalations", color: colors.red },
    { label: "health failures", color: colors.violet },
  ]);

  let previous = null;

  function onSnapshot(s) {
    const t = Date.now() / 1000;
    if (previous) {
      const p = previous.s;
      const dt = Math.max(t - previous.t, 0.001);
      const rate = (k) => Math.max(0, (s[k] - p[k]) / dt);
      push(throughput, t, [
        rate("succeeded"),
        rate("failed") + rate("dead_lettered"),
        rate("accepted"),
      ]);
      const failures = s.health_failures - p.health_failures;
      if (failures > 0) {
        addEvent("health", plural(failures, "silent agent declared failed", "silent agents declared failed"), "alert");
      }
      const quarantined = s.quarantined - p.quarantined;
      if (quarantined > 0) {
        addEvent("quarantine", plural(quarantined, "poison task dead-lettered", "poison tasks dead-lettered"), "alert");
      }
    }
    // `null` in a second when no task ended: a gap in the line, not a zero.
    push(latency, t, [s["latency-p50-ms"], s["latency-p99-ms"]]);
    push(queue, t, [s.queued, s.running]);
    push(recoveries, t, [s.restarts, s.escalations, s.health_failures]);
    previous = { t, s };
  }

  function onNotable(n) {
    if (n.kind === "health-alert") {
      addEvent(
        "health alert",
        "agent " + n.agent + " answers in " + ms(n["average-ms"]) + " on average, against a baseline of " + ms(n["baseline-ms"]),
        "alert",
      );
    } else if (n.kind === "supervisor-escalated") {
      const who = n.supervisor === null || n.supervisor === undefined ? "the top tier" : "agent " + n.supervisor;
      addEvent("escalation", who + " gave up: " + n.cause, "escalation");
    } else if (n.kind === "recovered") {
      // The stream counts a second's restarts in one line.
      const cause = n["last-cause"] ? " (latest: " + n["last-cause"] + ")" : "";
      addEvent("recovery", plural(n.agents, "agent restarted", "agents restarted") + cause, "recovery");
    } else if (n.kind === "rebalanced") {
      const parts = [];
      if (n.stolen > 0) {
        parts.push(plural(n.stolen, "task stolen by an idle worker", "tasks stolen by idle workers"));
      }
      if (n.moved > 0) {
        parts.push(plural(n.moved, "task moved between queues", "tasks moved between queues"));
      }
      addEvent("balancing", parts.join("; "), "scaling");
    } else if (n.kind === "backup:failed") {
      addEvent(
        "backup failed",
        "the journal's backup to " + n.to + " failed (" + plural(n["consecutive-failures"], "time", "times") + " in a row): " + n.error,
        "alert",
      );
    } else if (n.kind === "backup:recovered") {
      addEvent("backup", "the journal is backed up to " + n.to + " again", "recovery");
    } else if (n.kind === "scaled") {
      addEvent("scaling", plural(n["agents-added"], "agent added", "agents added"), "scaling");
    } else {
      addEvent(String(n.kind), JSON.stringify(n), "other");
    }
  }

  // The pools chart: each pool's agents (solid), the size the autoscaler wants (dashed) and
  // its backlog (thin, on the right-hand axis), with the decisions on its size as vertical
  // marks. The server keeps the samples; the page asks for those after the last it has.
  const POOL_COLORS = [colors.blue, colors.green, colors.violet, colors.amber, colors.red, colors.grey];
  const MARK_COLORS = {
    "scale:up": colors.green,
    "scale:down": colors.blue,
    "scale:blocked": colors.amber,
    "scale:manual": colors.grey,
  };
  // Decisions listed beside the chart, newest first; decisions kept for the chart (as the
  // server keeps them).
  const DECISIONS = 60;
  const MARKS = 2048;
  const POLL_MS = 1000;
  const RETRY_MS = 5000;

  const pools = {
    chart: null,
    // Columns as uPlot wants them: times in seconds, then agents, desired and waiting of
    // each pool in turn.
    data: null,
    names: [],
    marks: [],
    // Each pool's newest count of busy agents: in the table, not on the chart.
    busy: [],
    keep: 900,
    until: null,
  };

  function poolName(p) {
    return (p.kind || "?") + "/" + (p.role || "?");
  }

  // Vertical lines at the decisions' times; a blocked step is a short tick at the top, so
  // that a pool held at its bounds every look does not hide the lines.
  function drawMarks(u) {
    const ctx = u.ctx;
    const top = u.bbox.top;
    const height = u.bbox.height;
    const [min, max] = [u.scales.x.min, u.scales.x.max];
    ctx.save();
    ctx.lineWidth = Math.max(1, devicePixelRatio);
    for (const m of pools.marks) {
      const t = m.t / 1000;
      if (t < min || t > max) {
        continue;
      }
      const x = Math.round(u.valToPos(t, "x", true));
      ctx.strokeStyle = MARK_COLORS[m.kind] || colors.grey;
      ctx.setLineDash(m.kind === "scale:blocked" ? [] : [4, 3]);
      ctx.beginPath();
      ctx.moveTo(x, top);
      ctx.lineTo(x, m.kind === "scale:blocked" ? top + height * 0.08 : top + height);
      ctx.stroke();
    }
    ctx.restore();
  }

  function poolChart(answer) {
    const el = byId("chart-pools");
    if (!el || typeof uPlot === "undefined") {
      return null;
    }
    // A size holds from one sample to the next: steps, not slopes.
    const steps = uPlot.paths && uPlot.paths.stepped ? uPlot.paths.stepped({ align: 1 }) : undefined;
    const series = [{}];
    answer.pools.forEach((p, i) => {
      const color = POOL_COLORS[i % POOL_COLORS.length];
      const name = poolName(p);
      series.push(
        { label: name + " agents", stroke: color, width: 2, paths: steps, points: { show: false } },
        { label: name + " desired", stroke: color, width: 1.5, dash: [6, 4], paths: steps, points: { show: false } },
        { label: name + " backlog", stroke: color, width: 1, scale: "tasks", alpha: 0.5, points: { show: false } },
      );
    });
    return plotIn(el, pools.data, series, {
      scales: { tasks: { range: fromZero } },
      y: { label: "agents" },
      axes: [Object.assign({ size: 56, side: 1, scale: "tasks", label: "backlog", grid: { show: false } }, AXIS)],
      hooks: { draw: [drawMarks] },
    });
  }

  // Each pool's newest sample, in a table under the chart.
  function showNow() {
    const table = byId("pool-now");
    if (!table) {
      return;
    }
    const body = table.tBodies[0];
    body.replaceChildren();
    const last = pools.data[0].length - 1;
    pools.names.forEach((name, i) => {
      const value = (column) => {
        const v = last >= 0 ? pools.data[1 + 3 * i + column][last] : null;
        return v === null || v === undefined ? "-" : String(v);
      };
      const busy = pools.busy[i];
      const row = document.createElement("tr");
      row.dataset.pool = String(i);
      const cells = [
        name,
        value(0),
        value(1),
        value(2),
        busy === null || busy === undefined ? "-" : String(busy),
      ];
      cells.forEach((text, c) => {
        const td = document.createElement("td");
        td.textContent = text;
        if (c > 0) {
          td.className = "num";
        }
        row.append(td);
      });
      body.append(row);
    });
  }

  function describe(m) {
    if (m.kind === "scale:blocked") {
      return "wanted to scale (" + m.wanted + "), held by " + m.by;
    }
    const arrow = m.from + " → " + m.to;
    if (m.kind === "scale:manual") {
      return "resized by hand " + arrow;
    }
    return (m.kind === "scale:up" ? "grown " : "shrunk ") + arrow + " (" + m.reason + ")";
  }

  function listDecisions(events) {
    const list = byId("pool-decisions");
    if (!list || events.length === 0) {
      return;
    }
    const empty = list.querySelector(".empty");
    if (empty) {
      empty.remove();
    }
    for (const m of events) {
      // A pool held at a bound is blocked at every look: one line, counted.
      const key = m.pool + " " + describe(m);
      const newest = list.firstElementChild;
      if (newest && newest.dataset.key === key) {
        const n = Number(newest.dataset.count) + 1;
        newest.dataset.count = String(n);
        newest.querySelector("time").textContent = new Date(m.t).toLocaleTimeString();
        newest.querySelector(".count").textContent = " ×" + n;
        continue;
      }
      const li = document.createElement("li");
      li.dataset.key = key;
      li.dataset.count = "1";
      li.className = m.kind === "scale:blocked" ? "other" : "scaling";
      li.dataset.kind = m.kind;
      const time = document.createElement("time");
      time.textContent = new Date(m.t).toLocaleTimeString();
      const k = document.createElement("span");
      k.className = "kind";
      k.textContent = pools.names[m.pool] || "pool " + m.pool;
      const message = document.createElement("span");
      message.textContent = describe(m);
      const count = document.createElement("span");
      count.className = "count";
      message.append(count);
      li.append(time, k, message);
      list.prepend(li);
    }
    while (list.children.length > DECISIONS) {
      list.lastElementChild.remove();
    }
  }

  function onHistory(answer) {
    if (!pools.data || answer.pools.length !== pools.names.length) {
      pools.names = answer.pools.map(poolName);
      pools.data = [[]].concat(...answer.pools.map(() => [[], [], []]));
      pools.marks = [];
      pools.busy = [];
      pools.keep = answer["samples-kept"] || pools.keep;
      if (pools.chart) {
        pools.chart.destroy();
      }
      pools.chart = poolChart(answer);
    }
    const data = pools.data;
    answer.t.forEach((t) => data[0].push(t / 1000));
    answer.pools.forEach((p, i) => {
      data[1 + 3 * i].push(...p.agents);
      data[2 + 3 * i].push(...p.desired);
      data[3 + 3 * i].push(...p.waiting);
      if (p.busy.length) {
        pools.busy[i] = p.busy[p.busy.length - 1];
      }
    });
    const extra = data[0].length - pools.keep;
    if (extra > 0) {
      data.forEach((column) => column.splice(0, extra));
    }
    pools.marks.push(...answer.events);
    const oldest = data[0].length ? data[0][0] * 1000 : 0;
    pools.marks = pools.marks.filter((m) => m.t >= oldest).slice(-MARKS);
    pools.until = answer.until;
    if (pools.chart) {
      pools.chart.setData(data);
    }
    const el = byId("chart-pools");
    if (el) {
      el.dataset.samples = String(data[0].length);
      el.dataset.marks = String(pools.marks.length);
    }
    showNow();
    listDecisions(answer.events);
  }

  function pollPools() {
    const since = pools.until === null ? "" : "?since=" + encodeURIComponent(pools.until);
    fetch("/v1/pools/history" + since, { credentials: "same-origin", cache: "no-store" })
      .then((r) => (r.ok ? r.json() : Promise.reject(new Error("HTTP " + r.status))))
      .then((answer) => {
        onHistory(answer);
        setTimeout(pollPools, POLL_MS);
      })
      .catch(() => setTimeout(pollPools, RETRY_MS));
  }

  if (byId("chart-pools")) {
    pollPools();
  }

  function setLive(text, cls) {
    const el = byId("live");
    if (el) {
      el.textContent = text;
      el.className = "live " + cls;
    }
  }

  function parse(e) {
    try {
      return JSON.parse(e.data);
    } catch (_) {
      return null;
    }
  }

  const source = new EventSource("/v1/events");
  source.addEventListener("open", () => setLive("live", "ok"));
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      setLive("disconnected: reload to retry", "down");
    } else {
      setLive("reconnecting…", "down");
    }
  });
  source.addEventListener("snapshot", (e) => {
    const s = parse(e);
    if (s) {
      onSnapshot(s);
    }
  });
  source.addEventListener("notable", (e) => {
    const n = parse(e);
    if (n) {
      onNotable(n);
    }
  });
})();
