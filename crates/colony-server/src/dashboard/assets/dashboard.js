// colony's dashboard: the charts and the list of events, fed by the server's event stream
// (GET /v1/events, a `snapshot` of the counters every second and `notable` events as they
// happen). The tables are htmx fragments rendered by the server. Text from the stream is set
// with textContent, never as HTML: agents' words are untrusted.
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

  // A uPlot chart in the element `id`, one line per series; null if uPlot did not load.
  function chart(id, series) {
    const el = byId(id);
    if (!el || typeof uPlot === "undefined") {
      return null;
    }
    const axis = { stroke: colors.grey, grid: { stroke: "#eef0f3" }, ticks: { stroke: "#e5e7eb" } };
    const opts = {
      width: Math.max(el.clientWidth, 240),
      height: HEIGHT,
      cursor: { drag: { x: false, y: false } },
      legend: { live: false },
      scales: {
        x: { time: true },
        y: { range: (u, min, max) => [0, Math.max(1, (max || 0) * 1.15)] },
      },
      axes: [axis, Object.assign({ size: 56 }, axis)],
      series: [{}].concat(
        series.map((s) => ({
          label: s.label,
          stroke: s.color,
          width: 2,
          points: { show: false },
        })),
      ),
    };
    const data = [[]].concat(series.map(() => []));
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
    return { plot, data };
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
    } else if (n.kind === "scaled") {
      addEvent("scaling", plural(n["agents-added"], "agent added", "agents added"), "scaling");
    } else {
      addEvent(String(n.kind), JSON.stringify(n), "other");
    }
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
