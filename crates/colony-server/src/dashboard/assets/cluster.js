// The cluster dashboard's live list: task records from /v1/events as nodes write them.
// Every value goes in as textContent, never as HTML: errors are agents' words.
(function () {
  "use strict";
  const EVENTS = 100;

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
    try {
      addRecord(JSON.parse(e.data));
    } catch (_) {
      // A line that is not a record is skipped.
    }
  });
})();
