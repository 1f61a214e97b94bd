// The cluster dashboard's live list: task records from /v1/events as nodes write them.
// Every value goes in as textContent, never as HTML: errors are agents' words.
(function () {
  "use strict";
  const EVENTS = 100;
  // Seconds the chart keeps.
  const KEEP = 900;
  const HEIGHT = 200;

  function byId(id) {
    return document.getElementById(id);
  }

  function setLive(text, cls) {
    const el = byId("live");
    if (el) {
      el.textContent = text;
      el.className = "live " + cls;
    }
  }

  function addRecord(r) {
    const list = byId("events");
    if (!list) {
      return;
    }
    const empty = list.querySelector(".empty");
    if (empty) {
      empty.remove();
    }
    const li = document.createElement("li");
    li.className = r.state === "failed" || r.state === "dead-lettered" ? "bad" : r.state === "succeeded" ? "ok" : "";
    const time = document.createElement("time");
    time.textContent = new Date(r["at-ms"] || Date.now()).toLocaleTimeString();
    const k = document.createElement("span");
    k.className = "kind";
    k.textContent = "task " + r.id;
    const message = document.createElement("span");
    let text = r.state + " (attempt " + r.attempt + " on " + r.node + ")";
    if (r.error) {
      text += ": " + r.error;
    }
    message.textContent = text;
    li.append(time, k, message);
    list.prepend(li);
    while (list.children.length > EVENTS) {
      list.lastElementChild.remove();
    }
  }

  // Tasks ended each second, by how, counted from the records as they come.
  const ended = { t: Math.floor(Date.now() / 1000), succeeded: 0, failed: 0 };
  // And in all since the server's history starts (or this page opened, when that history
  // could not be read), as the chart's caption says.
  const total = { succeeded: 0, failed: 0, since: "this page opened" };

  function showTotal() {
    const el = byId("ended-total");
    if (el) {
      el.textContent = total.succeeded + " succeeded, " + total.failed + " failed since " + total.since;
    }
  }
  let chart = null;
  const data = [[], [], []];

  // What both charts share: their axes, the last fifteen minutes however few seconds there
  // are yet, a range from zero, and the frame around a chart.
  const AXIS = { stroke: "#6b7280", grid: { stroke: "#eef0f3" }, ticks: { stroke: "#e5e7eb" } };
  const lastMinutes = {
    time: true,
    range: (u, min, max) => {
      const hi = max == null ? Math.floor(Date.now() / 1000) : max;
      return [hi - KEEP, hi];
    },
  };
  const zeroUp = (u, min, max) => [0, Math.max(1, (max || 0) * 1.15)];
  function frame(el, scales, axes, series) {
    return {
      width: Math.max(el.clientWidth, 240),
      height: HEIGHT,
      cursor: { drag: { x: false, y: false } },
      legend: { live: false },
      scales: Object.assign({ x: lastMinutes }, scales),
      axes: [AXIS].concat(axes),
      series,
    };
  }

  function makeChart() {
    const el = byId("chart-ended");
    if (!el || typeof uPlot === "undefined") {
      return null;
    }
    const line = (label, stroke) => ({ label, stroke, width: 2, points: { show: false } });
    const plot = new uPlot(
      frame(el, { y: { range: zeroUp } }, [Object.assign({ size: 56 }, AXIS)], [
        {},
        line("succeeded", "#15803d"),
        line("failed", "#b91c1c"),
      ]),
      data,
      el,
    );
    if (typeof ResizeObserver !== "undefined") {
      new ResizeObserver(() => plot.setSize({ width: Math.max(el.clientWidth, 240), height: HEIGHT })).observe(el);
    }
    return plot;
  }

  function tick() {
    const now = Math.floor(Date.now() / 1000);
    while (ended.t < now) {
      data[0].push(ended.t);
      data[1].push(ended.succeeded);
      data[2].push(ended.failed);
      ended.t += 1;
      ended.succeeded = 0;
      ended.failed = 0;
      if (data[0].length > KEEP) {
        data.forEach((column) => column.shift());
      }
    }
    if (!chart) {
      chart = makeChart();
    }
    if (chart) {
      chart.setData(data);
    }
  }
  setInterval(tick, 1000);

  // What the server saw before this page opened: the seconds of the chart (by the
  // server's clock), the counts and the latest records. The event stream opens first and
  // what it brings meanwhile waits; once the history is in (or could not be read), what it
  // already lists is dropped and the rest counted.
  let waiting = [];
  const key = (r) => r.id + "/" + r.state + "/" + r.attempt;

  function seed(h) {
    // What the clock drew before the history came (zeros) gives way to it.
    data.forEach((column) => {
      column.length = 0;
    });
    const now = Number.isInteger(h.now) ? h.now : Math.floor(Date.now() / 1000);
    // Seconds with no record are not kept by the server: drawn as zeros.
    const seconds = new Map((h.seconds || []).map(([t, succeeded, failed]) => [t, [succeeded, failed]]));
    const first = Math.min(...seconds.keys(), now);
    for (let t = Math.max(first, now - KEEP); t < now; t += 1) {
      const [succeeded, failed] = seconds.get(t) || [0, 0];
      data[0].push(t);
      data[1].push(succeeded);
      data[2].push(failed);
    }
    // The server's current second goes on counting here.
    const [succeeded, failed] = seconds.get(now) || [0, 0];
    ended.t = now;
    ended.succeeded = succeeded;
    ended.failed = failed;
    total.succeeded = h.succeeded || 0;
    total.failed = h.failed || 0;
    if (h["since-ms"]) {
      total.since = new Date(h["since-ms"]).toLocaleString();
    }
    const listed = new Set();
    for (const r of h.records || []) {
      addRecord(r);
      listed.add(key(r));
    }
    return listed;
  }

  function count(r) {
    addRecord(r);
    if (r.state === "succeeded") {
      ended.succeeded += 1;
      total.succeeded += 1;
    } else if (r.state === "failed" || r.state === "dead-lettered") {
      ended.failed += 1;
      total.failed += 1;
    }
    showTotal();
  }

  // Each role's agents (solid, left axis) and tasks waiting (dashed, right axis) over the
  // last fifteen minutes, from the server's samples (GET /v1/roles/history: the whole
  // window when the page opens, then what is new every 2 s).
  const COLORS = ["#2563eb", "#d97706", "#059669", "#7c3aed", "#db2777", "#0891b2", "#65a30d", "#dc2626"];
  const roles = { names: [], t: [], columns: [], marks: [], until: null, chart: null, keep: 450, observed: false };
  // The scaling leader's steps kept for the chart, as the server keeps them.
  const MARKS = 2048;

  // A dashed vertical line at each step the scaling leader decided, in its role's colour;
  // a step it wanted and was held from is a short solid tick at the top, so that it does
  // not read as a change of size.
  function drawRoleMarks(u) {
    const ctx = u.ctx;
    const [min, max] = [u.scales.x.min, u.scales.x.max];
    ctx.save();
    ctx.lineWidth = Math.max(1, devicePixelRatio);
    for (const m of roles.marks) {
      const t = m.t / 1000;
      if (t < min || t > max) {
        continue;
      }
      const held = m.kind === "scale:blocked";
      const x = Math.round(u.valToPos(t, "x", true));
      ctx.strokeStyle = colorOf(m.role);
      ctx.setLineDash(held ? [] : [4, 3]);
      ctx.beginPath();
      ctx.moveTo(x, u.bbox.top);
      ctx.lineTo(x, u.bbox.top + (held ? u.bbox.height * 0.08 : u.bbox.height));
      ctx.stroke();
    }
    ctx.restore();
  }

  // A role keeps its colour however the others come and go: chosen by its name.
  function colorOf(name) {
    let h = 0;
    for (let i = 0; i < name.length; i += 1) {
      h = (h * 31 + name.charCodeAt(i)) >>> 0;
    }
    return COLORS[h % COLORS.length];
  }

  function rolesChart() {
    const el = byId("chart-roles");
    if (!el || typeof uPlot === "undefined") {
      return null;
    }
    if (roles.chart) {
      roles.chart.destroy();
    }
    const series = [{}];
    roles.names.forEach((name) => {
      const stroke = colorOf(name);
      series.push({ label: name + " agents", stroke, width: 2, points: { show: false }, scale: "agents" });
      series.push({ label: name + " waiting", stroke, width: 1, dash: [5, 4], points: { show: false }, scale: "waiting" });
    });
    const plot = new uPlot(
      Object.assign(
        frame(
          el,
          { agents: { range: zeroUp }, waiting: { range: zeroUp } },
          [
            Object.assign({ size: 56, scale: "agents", label: "agents" }, AXIS),
            Object.assign({ size: 56, scale: "waiting", side: 1, label: "waiting" }, AXIS, { grid: { show: false } }),
          ],
          series,
        ),
        { hooks: { draw: [drawRoleMarks] } },
      ),
      rolesData(),
      el,
    );
    // One observer for the element, whichever chart it holds now.
    if (!roles.observed && typeof ResizeObserver !== "undefined") {
      roles.observed = true;
      let width = el.clientWidth;
      new ResizeObserver(() => {
        if (roles.chart && el.clientWidth !== width) {
          width = el.clientWidth;
          roles.chart.setSize({ width: Math.max(width, 240), height: HEIGHT });
        }
      }).observe(el);
    }
    return plot;
  }

  function rolesData() {
    const data = [roles.t.map((ms) => ms / 1000)];
    roles.columns.forEach((c) => data.push(c.agents, c.waiting));
    return data;
  }

  function takeRoles(answer) {
    roles.keep = answer["samples-kept"] || roles.keep;
    // A server whose newest sample is older than the chart's (started again, or another
    // behind the same address): the chart starts again from its whole history, next poll.
    if (roles.until != null && answer.until && answer.until < roles.until) {
      roles.names = [];
      roles.t = [];
      roles.columns = [];
      roles.marks = [];
      roles.until = null;
      roles.chart = rolesChart();
      return;
    }
    roles.until = Math.max(roles.until || 0, answer.until || 0);
    const names = roles.names.slice();
    for (const r of answer.roles || []) {
      if (!names.includes(r.role)) {
        names.push(r.role);
      }
    }
    names.sort();
    const fresh = names.length !== roles.names.length;
    if (fresh) {
      // A role first seen: its columns start as gaps where the samples before lacked it.
      const old = new Map(roles.names.map((name, i) => [name, roles.columns[i]]));
      const gaps = () => roles.t.map(() => null);
      roles.columns = names.map((name) => old.get(name) || { agents: gaps(), waiting: gaps() });
      roles.names = names;
    }
    const given = new Map((answer.roles || []).map((r) => [r.role, r]));
    (answer.t || []).forEach((t, row) => {
      if (roles.t.length > 0 && t <= roles.t[roles.t.length - 1]) {
        return;
      }
      roles.t.push(t);
      roles.names.forEach((name, i) => {
        const r = given.get(name);
        roles.columns[i].agents.push(r ? r.agents[row] : null);
        roles.columns[i].waiting.push(r ? r.waiting[row] : null);
      });
    });
    while (roles.t.length > roles.keep) {
      roles.t.shift();
      roles.columns.forEach((c) => {
        c.agents.shift();
        c.waiting.shift();
      });
    }
    // The leader's steps: those before the oldest sample kept are off the chart.
    roles.marks.push(...(answer.events || []));
    const oldest = roles.t.length > 0 ? roles.t[0] : 0;
    roles.marks = roles.marks.filter((m) => m.t >= oldest).slice(-MARKS);
    // A role gone from every sample kept leaves the chart.
    const seen = (column) => column.some((v) => v != null);
    const kept = roles.names.filter((_, i) => seen(roles.columns[i].agents) || seen(roles.columns[i].waiting));
    let changed = fresh;
    if (kept.length !== roles.names.length) {
      roles.columns = roles.columns.filter((c) => seen(c.agents) || seen(c.waiting));
      roles.names = kept;
      changed = true;
    }
    if (changed || !roles.chart) {
      roles.chart = rolesChart();
    } else {
      roles.chart.setData(rolesData());
    }
    const legend = byId("roles-now");
    if (legend) {
      const last = roles.t.length - 1;
      const taken = roles.marks.filter((m) => m.kind !== "scale:blocked");
      const step = taken[taken.length - 1];
      const latest = roles.marks[roles.marks.length - 1];
      let stepped = step
        ? "; last step: " + step.role + " " + step.from + " → " + step.to + " nodes (" + step.reason + ")"
        : "";
      // A hold is said while it is the latest mark and a minute old at most (its end is no
      // mark: the leader may have gone back to holding since).
      const newest = last >= 0 ? roles.t[last] : 0;
      if (latest && latest.kind === "scale:blocked" && latest.t >= newest - 60000) {
        stepped += "; held: " + latest.role + " at " + latest.to + " nodes, wanted " + latest.reason +
          " (by " + (latest.by || "?") + ")";
      }
      legend.textContent = (roles.names.length === 0 ? "No role yet." : roles.names
        .map((name, i) => {
          const c = roles.columns[i];
          const v = (column) => (last >= 0 && column[last] != null ? column[last] : "–");
          return name + ": " + v(c.agents) + " agents, " + v(c.waiting) + " waiting";
        })
        .join("; ")) + stepped;
      legend.dataset.marks = String(roles.marks.length);
    }
  }

  function pollRoles() {
    const since = roles.until == null ? "" : "?since=" + roles.until;
    fetch("/v1/roles/history" + since, { credentials: "same-origin" })
      .then((r) => (r.ok ? r.json() : null))
      .catch(() => null)
      .then((answer) => {
        if (answer) {
          takeRoles(answer);
        }
      })
      .finally(() => setTimeout(pollRoles, 2000));
  }
  pollRoles();

  listen();
  fetch("/v1/history", { credentials: "same-origin" })
    .then((r) => (r.ok ? r.json() : null))
    .catch(() => null)
    .then((h) => {
      const listed = h ? seed(h) : new Set();
      const came = waiting;
      waiting = null;
      for (const r of came) {
        if (!listed.has(key(r))) {
          count(r);
        }
      }
      showTotal();
    });

  function listen() {
    const source = new EventSource("/v1/events");
    source.addEventListener("open", () => setLive("live", "ok"));
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        setLive("disconnected: reload to retry", "down");
      } else {
        setLive("reconnecting…", "down");
      }
    });
    source.addEventListener("failed", (e) => {
      let why = "";
      try {
        why = JSON.parse(e.data).error || "";
      } catch (_) {
        // Said without the reason.
      }
      setLive("cluster unreadable: " + why, "down");
    });
    source.addEventListener("task", (e) => {
      let r;
      try {
        r = JSON.parse(e.data);
      } catch (_) {
        return; // A line that is not a record is skipped.
      }
      setLive("live", "ok");
      if (waiting) {
        // Bounded, should the history never come.
        if (waiting.length < 10000) {
          waiting.push(r);
        }
      } else {
        count(r);
      }
    });
  }
})();
