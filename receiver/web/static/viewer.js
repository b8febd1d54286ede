// The receiver viewer: plain JavaScript over the /v1 API, no build step.
// Receiver.grid() drives GET /, Receiver.job() drives GET /jobs/<id>.
"use strict";

const Receiver = (() => {
  const cfg = JSON.parse(document.getElementById("config").textContent);
  const KEY = "receiver.apiKey";
  const $ = (sel) => document.querySelector(sel);
  const el = (tag, attrs = {}, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v);
    }
    kids.forEach((k) => e.append(k));
    return e;
  };

  // --- API access (asks for a key once when /v1 needs one) -------------------------------------------
  let keyPrompt = null;
  const storedKey = () => localStorage.getItem(KEY) || "";

  function askKey(message) {
    if (keyPrompt) return keyPrompt;
    const form = $("#key-form");
    form.hidden = false;
    $("#key-error").textContent = message || "";
    $("#api-key").focus();
    keyPrompt = new Promise((resolve) => {
      form.addEventListener("submit", function onSubmit(ev) {
        ev.preventDefault();
        localStorage.setItem(KEY, $("#api-key").value.trim());
        form.removeEventListener("submit", onSubmit);
        form.hidden = true;
        keyPrompt = null;
        resolve();
      });
    });
    return keyPrompt;
  }

  async function api(path, accept) {
    for (;;) {
      if (cfg.keys_required && !storedKey()) await askKey();
      const headers = {Accept: accept || "application/json"};
      if (storedKey()) headers.Authorization = "Bearer " + storedKey();
      const resp = await fetch(path, {headers});
      if (resp.status === 401) {
        localStorage.removeItem(KEY);
        await askKey("That key was not accepted; try another.");
        continue;
      }
      const body = await resp.json().catch(() => null);
      if (!resp.ok) {
        const err = new Error((body && body.error && body.error.message) || `HTTP ${resp.status}`);
        err.status = resp.status;
        throw err;
      }
      return body;
    }
  }

  function setupKeyButton() {
    const b = $("#forget-key");
    b.hidden = !cfg.keys_required;
    b.addEventListener("click", () => { localStorage.removeItem(KEY); location.reload(); });
  }

  function say(text) { $("#status-line").textContent = text; }

  // --- live updates (GET /v1/stream); polling is the fallback while the stream is down ------------------
  // The URL comes from /v1/stream/url (signed, short-lived, when API keys gate /v1: EventSource cannot send
  // headers). While the stream is open, the page does not poll. When it fails for good (the browser gave
  // up: an expired signature on reconnect, 503, a proxy that buffers), polling resumes and a new stream is
  // tried a little later, resuming after the last message seen.
  const RETRY_LIVE_MS = 15000;
  function live(query, handlers) {
    const state = {open: false, lastId: null};
    async function connect() {
      if (!window.EventSource) return;
      let url;
      try {
        url = (await api("/v1/stream/url" + query)).url;
      } catch (e) {
        setTimeout(connect, RETRY_LIVE_MS);
        return;
      }
      if (state.lastId !== null) url += (url.includes("?") ? "&" : "?") + "last_event_id=" + state.lastId;
      const es = new EventSource(url);
      es.onopen = () => { state.open = true; document.body.dataset.live = "open"; say("Live"); };
      for (const [type, fn] of Object.entries(handlers)) {
        es.addEventListener(type, (ev) => {
          state.lastId = ev.lastEventId || state.lastId;
          let body;
          try { body = JSON.parse(ev.data); } catch (e) { return; }
          Promise.resolve(fn(body.data)).catch((e) => say("Could not show an update: " + e.message));
        });
      }
      es.onerror = () => {
        if (es.readyState === EventSource.CLOSED) {
          state.open = false;
          document.body.dataset.live = "down";
          say("Live updates interrupted; refreshing every few seconds");
          setTimeout(connect, RETRY_LIVE_MS);
        } else {
          state.open = false; // reconnecting by itself (with Last-Event-ID); poll meanwhile
          document.body.dataset.live = "reconnecting";
        }
      };
    }
    connect();
    return state;
  }

  async function signedSnapshot(snap) {
    // Message bodies carry plain thumbnail URLs; with API keys the API hands out signed ones.
    return cfg.keys_required ? api("/v1/snapshots/" + encodeURIComponent(snap.id)) : snap;
  }

  // --- formatting ------------------------------------------------------------------------------------
  const B83 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~";
  function placeholderColor(snap) {
    // The BlurHash's DC term is the average colour: a cheap background while the thumbnail loads.
    const h = snap && snap.placeholder && snap.placeholder.blurhash;
    if (!h || h.length < 6) return "";
    let v = 0;
    for (const c of h.slice(2, 6)) v = v * 83 + B83.indexOf(c);
    return `rgb(${v >> 16}, ${(v >> 8) & 255}, ${v & 255})`;
  }
  const fmtTime = (ms) => new Date(ms).toLocaleString([], {dateStyle: "short", timeStyle: "medium"});
  const fmtClock = (ms) => new Date(ms).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit"});
  function fmtAgo(ms) {
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 90) return `${s} s ago`;
    if (s < 5400) return `${Math.round(s / 60)} min ago`;
    return `${Math.round(s / 3600)} h ago`;
  }
  function fmtDuration(ms) {
    const s = Math.round(ms / 1000);
    return s < 120 ? `${s} s` : s < 7200 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`;
  }
  function thumbFor(snap, width) {
    // The largest thumbnail not wider than `width`, else the smallest there is.
    const ts = [...snap.thumbnails].sort((a, b) => a.width - b.width);
    const fit = ts.filter((t) => t.width <= width);
    return fit.length ? fit[fit.length - 1] : ts[0];
  }
  function badge(node, health) {
    node.hidden = false;
    node.className = "badge h-" + (health || "unknown");
    node.textContent = health || "unknown";
    node.setAttribute("aria-label", "health: " + (health || "unknown"));
  }

  // --- GET / ----------------------------------------------------------------------------------------
  function grid() {
    setupKeyButton();
    const ul = $("#grid");
    const cards = new Map();

    function card(job) {
      const img = el("img", {alt: "", width: "320", height: "180"});
      const li = el("li", {class: "card", "data-job-id": job.job_id},
        el("a", {href: "/jobs/" + encodeURIComponent(job.job_id)},
          el("div", {class: "frame"}, img, el("span", {class: "none", text: "no snapshot yet"})),
          el("div", {class: "meta"}, el("span", {class: "name"}), el("span", {class: "jid"}), el("span", {class: "badge"}),
            el("time", {class: "ago"}))));
      return li;
    }

    function update(li, job) {
      const name = job.name || job.job_id;
      li.querySelector(".name").textContent = name;
      li.querySelector(".jid").textContent = name === job.job_id ? "" : job.job_id;
      li.dataset.name = name;
      badge(li.querySelector(".badge"), job.health);
      li.classList.toggle("empty", !job.latest);
      if (job.latest) showLatest(li, job.latest);
    }

    function showLatest(li, latest) {
      const img = li.querySelector("img");
      const shownMs = Number(img.dataset.ms || 0);
      if (latest.captured_at_ms < shownMs) return; // a late arrival: the card shows the newest
      li.classList.remove("empty");
      if (img.dataset.snapshotId !== latest.id) {
        const t = thumbFor(latest, 320);
        img.style.backgroundColor = placeholderColor(latest);
        img.src = t.url;
        img.dataset.snapshotId = latest.id;
        img.dataset.ms = String(latest.captured_at_ms);
        img.alt = `Latest snapshot of ${li.dataset.name}, taken ${fmtTime(latest.captured_at_ms)}`;
      }
      const time = li.querySelector("time");
      time.dateTime = latest.captured_at;
      time.dataset.ms = String(latest.captured_at_ms);
      time.textContent = fmtAgo(latest.captured_at_ms);
    }

    async function refresh() {
      const items = [];
      let cursor = null;
      do {
        const page = await api("/v1/jobs?limit=500" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
        items.push(...page.items);
        cursor = page.next_cursor;
      } while (cursor);
      $("#empty").hidden = items.length > 0;
      for (const job of items) {
        let li = cards.get(job.job_id);
        if (!li) { li = card(job); cards.set(job.job_id, li); ul.append(li); }
        update(li, job);
      }
      say(`Updated ${fmtClock(Date.now())}`);
    }

    const stream = live("?types=snapshot.created,stream.health_changed", {
      "snapshot.created": async (snap) => {
        const li = cards.get(snap.job_id);
        if (!li) return refresh(); // a job seen for the first time: its card comes from the list
        showLatest(li, await signedSnapshot(snap));
        say(`Updated ${fmtClock(Date.now())} (live)`);
      },
      "stream.health_changed": (change) => {
        const li = cards.get(change.job_id);
        if (li) badge(li.querySelector(".badge"), change.status);
      },
    });
    // "5 s ago" ages without asking the server.
    setInterval(() => {
      for (const t of ul.querySelectorAll("time[data-ms]")) t.textContent = fmtAgo(Number(t.dataset.ms));
    }, 5000);
    loop(refresh, stream);
  }

  function loop(fn, stream) {
    let first = true;
    const tick = async () => {
      // The first run loads the page; after it, a live stream makes polling unnecessary.
      if (first || !stream || !stream.open) {
        try { await fn(); } catch (e) { say("Could not refresh: " + e.message); }
      }
      first = false;
      setTimeout(tick, document.hidden ? cfg.poll_ms * 4 : cfg.poll_ms);
    };
    tick();
  }

  // --- GET /jobs/<id> ---------------------------------------------------------------------------------
  function job() {
    setupKeyButton();
    const root = $("#job");
    const jobId = root.dataset.jobId;
    const base = "/v1/jobs/" + encodeURIComponent(jobId);
    const strip = $("#strip");
    let intervalMs = 60000;
    let health = null;
    let cursor = null;
    let loading = false;
    let exhausted = false;
    let newestMs = null;
    let oldestShown = null; // the last (oldest) snapshot in the strip, for gap markers across pages

    async function loadJob() {
      try {
        const j = await api(base);
        $("#job-name").textContent = j.name || j.job_id;
        badge($("#job-health"), j.health);
        if (j.interval_seconds) intervalMs = j.interval_seconds * 1000;
      } catch (e) {
        if (e.status === 404) say("No such job: it appears here with its first callback.");
        else throw e;
      }
    }

    function runList(kind, runs) {
      return runs.map((r) => `${kind} ${fmtClock(r.start_ms)}–${fmtClock(r.end_ms)} (${r.snapshots}` +
        (kind === "gap" ? " missing)" : " frames)"));
    }

    async function loadHealth() {
      const range = Number($("#tl-range").value);
      const until = Date.now();
      const since = until - range;
      health = await api(`${base}/health?since=${since}&until=${until}`);
      intervalMs = health.interval_seconds * 1000;
      badge($("#job-health"), health.status);
      const tl = $("#timeline");
      tl.replaceChildren();
      const pct = (ms) => Math.min(100, Math.max(0, ((ms - since) / range) * 100));
      const add = (kind, r) => {
        const left = pct(r.start_ms);
        const width = Math.max(0.6, pct(r.end_ms) - left);
        const label = runList(kind, [r])[0];
        const b = el("button", {type: "button", class: "seg seg-" + kind, title: label, "aria-label": label});
        b.style.left = left + "%";
        b.style.width = width + "%";
        b.addEventListener("click", () => showNearest(r.start_ms));
        tl.append(b);
      };
      // Before the job's first snapshot there is nothing to expect: shade it instead of painting it "seen".
      const dataStart = until - health.expected * intervalMs;
      if (dataStart - since > range / 200) {
        const none = el("div", {class: "seg seg-none", title: "before the first snapshot"});
        none.style.left = "0%";
        none.style.width = pct(dataStart) + "%";
        tl.append(none);
      }
      health.gaps.forEach((r) => add("gap", r));
      health.frozen.forEach((r) => add("frozen", r));
      health.black.forEach((r) => add("black", r));
      const parts = [...runList("gap", health.gaps), ...runList("frozen", health.frozen), ...runList("black", health.black)];
      tl.setAttribute("aria-label", `Timeline: ${health.seen} of ${health.expected} expected snapshots; ` +
        (parts.length ? parts.join("; ") : "no gaps, frozen or black stretches"));
      $("#tl-start").textContent = fmtTime(since);
      $("#tl-end").textContent = "now";
      $("#tl-summary").textContent = `${health.seen} of ${health.expected} expected snapshots · ` +
        `${health.gaps.length} gaps · ${health.frozen.length} frozen · ${health.black.length} black · status ${health.status}`;
      markRuns();
    }

    function inRun(ms, runs) { return runs.some((r) => ms >= r.start_ms && ms <= r.end_ms); }
    function markRuns() {
      if (!health) return;
      for (const li of strip.querySelectorAll(".shot")) {
        const ms = Number(li.dataset.ms);
        li.classList.toggle("is-frozen", inRun(ms, health.frozen));
        li.classList.toggle("is-black", inRun(ms, health.black));
      }
    }

    function gapMarker(newer, older) {
      const missing = Math.max(1, Math.round((newer - older) / intervalMs) - 1);
      return el("li", {class: "gap-marker", role: "separator",
        text: `gap: ${fmtDuration(newer - older)} without snapshots (~${missing} missing)`});
    }

    function shotItem(s) {
      const t = thumbFor(s, 160);
      const when = fmtTime(s.captured_at_ms);
      const img = el("img", {src: t.url, alt: `Snapshot taken ${when}`, width: String(t.width),
        height: String(t.height), loading: "lazy"});
      img.style.backgroundColor = placeholderColor(s);
      const btn = el("button", {type: "button", class: "thumb", "aria-label": `Open the original taken ${when}`}, img);
      btn.addEventListener("click", () => openOriginal(s));
      return el("li", {class: "shot", "data-id": s.id, "data-ms": String(s.captured_at_ms)}, btn,
        el("time", {datetime: s.captured_at, text: fmtClock(s.captured_at_ms)}));
    }

    function appendOlder(items) {
      for (const s of items) {
        if (oldestShown !== null && oldestShown - s.captured_at_ms > cfg.gap_factor * intervalMs) {
          strip.append(gapMarker(oldestShown, s.captured_at_ms));
        }
        strip.append(shotItem(s));
        oldestShown = s.captured_at_ms;
        if (newestMs === null) newestMs = s.captured_at_ms;
      }
    }

    async function loadOlder() {
      if (loading || exhausted) return;
      loading = true;
      try {
        const page = await api(`${base}/snapshots?limit=${cfg.page_size}` +
          (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
        appendOlder(page.items);
        cursor = page.next_cursor;
        exhausted = !cursor;
        $("#more").hidden = exhausted;
        $("#strip-end").textContent = exhausted ? (strip.children.length ? "Start of history." : "No snapshots yet.") : "";
        markRuns();
      } finally {
        loading = false;
      }
    }

    async function loadNewer() {
      if (newestMs === null) return;
      const page = await api(`${base}/snapshots?order=asc&limit=${cfg.page_size}&since=${newestMs + 1}`);
      page.items.forEach(prependNewer);
    }

    function prependNewer(s) {
      if (newestMs !== null && s.captured_at_ms <= newestMs) return; // shown already, or older than the top
      if (strip.querySelector(`.shot[data-id="${s.id}"]`)) return;
      const first = strip.querySelector(".shot");
      if (newestMs !== null && s.captured_at_ms - newestMs > cfg.gap_factor * intervalMs) {
        strip.prepend(gapMarker(s.captured_at_ms, newestMs));
      }
      strip.insertBefore(shotItem(s), strip.firstChild);
      if (!first) oldestShown = s.captured_at_ms;
      newestMs = s.captured_at_ms;
      if ($("#strip-end").textContent.startsWith("No snapshots")) $("#strip-end").textContent = "";
    }

    // The timeline follows new snapshots and health changes, redrawn at most every few seconds.
    let healthTimer = null;
    function healthSoon() {
      if (healthTimer) return;
      healthTimer = setTimeout(() => { healthTimer = null; loadHealth().catch((e) => say(e.message)); }, 3000);
    }

    async function showNearest(ms) {
      const box = $("#nearest");
      try {
        const s = await api(`${base}/snapshots/nearest?time=${Math.round(ms)}`);
        const t = thumbFor(s, 320);
        const delta = Math.round((s.captured_at_ms - ms) / 1000);
        const img = el("img", {src: t.url, alt: `Nearest snapshot, taken ${fmtTime(s.captured_at_ms)}`,
          width: String(t.width), height: String(t.height)});
        img.style.backgroundColor = placeholderColor(s);
        const btn = el("button", {type: "button", class: "thumb", "aria-label": "Open this original"}, img);
        btn.addEventListener("click", () => openOriginal(s));
        box.replaceChildren(el("figure", {"data-snapshot-id": s.id}, btn,
          el("figcaption", {text: `${fmtTime(s.captured_at_ms)} (${delta >= 0 ? "+" : ""}${delta} s from the time asked)`})));
      } catch (e) {
        box.textContent = e.status === 404 ? "No snapshots for this job yet." : "Could not look it up: " + e.message;
      }
    }

    async function openOriginal(s) {
      const dlg = $("#original");
      try {
        const o = await api(`/v1/snapshots/${s.id}/original`, "application/json");
        const img = $("#original-img");
        img.src = o.url;
        img.alt = `Original snapshot taken ${fmtTime(s.captured_at_ms)} (${s.width}×${s.height})`;
        $("#original-title").textContent = fmtTime(s.captured_at_ms);
        $("#original-link").href = o.url;
        dlg.showModal();
      } catch (e) {
        say("Original not available: " + e.message);
      }
    }

    $("#jump").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const v = $("#jump-time").value;
      if (v) showNearest(new Date(v).getTime());
    });
    $("#more").addEventListener("click", () => loadOlder().catch((e) => say(e.message)));
    $("#tl-range").addEventListener("change", () => loadHealth().catch((e) => say(e.message)));
    $("#original").addEventListener("click", (ev) => { if (ev.target.id === "original") ev.target.close(); });

    (async () => {
      try {
        await loadJob();
        await loadHealth();
        await loadOlder();
      } catch (e) { say("Could not load: " + e.message); }
      // Scrolling near the end of the strip loads the next (older) page.
      new IntersectionObserver((entries) => {
        if (entries.some((e) => e.isIntersecting)) loadOlder().catch((e) => say(e.message));
      }, {rootMargin: "200px"}).observe($("#strip-end"));
      const stream = live("?job_id=" + encodeURIComponent(jobId), {
        "snapshot.created": async (snap) => {
          prependNewer(await signedSnapshot(snap));
          markRuns();
          healthSoon();
          say(`Updated ${fmtClock(Date.now())} (live)`);
        },
        "stream.health_changed": (change) => {
          badge($("#job-health"), change.status);
          healthSoon();
        },
      });
      let first = true;
      loop(async () => {
        if (first) { first = false; return; }
        await loadNewer();
        await loadHealth();
      }, stream);
    })();
  }

  return {grid, job, api};
})();
