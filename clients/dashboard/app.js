/* Emotion Monitor dashboard: plain JS, no build step, no network but the
 * monitor's own WebSocket.
 *
 * URL parameters:
 *   ?ws=ws://host:port/ws   WebSocket endpoint (default: this page's host, path /ws)
 *   ?streams=a,b            show only these streams (also set by the stream chips)
 *   ?token=...              the monitor's token (access.token), when it has one: sent with
 *                           the events connection and the microphone's /ingest connection
 *
 * The "listen to this browser's microphone" button asks for consent in the
 * page, then getUserMedia -> AudioWorklet (mic-worklet.js, 16-bit PCM) ->
 * the monitor's /ingest endpoint (docs/ingest.md), as stream browser-XXXXXX.
 *
 * Protocol (see streamer/publishers/websocket.py): the server sends a "hello"
 * with the known streams and their last status/estimate, then one JSON event
 * per message; {"type":"subscribe","streams":[...]|null} chooses streams.
 * Labels are never assumed: bars, legend and timeline are built from the
 * "scores" keys of the estimates; every label gets a colour of its own (common
 * ones a fixed colour, others the first free one of a spare palette, picked by
 * a hash of the name, so a model's labels keep their colours across reloads).
 *
 * Each card lists the stream's recent utterances ("emotion.utterance": the
 * model's verdict on a whole utterance) with a warning badge when their audio
 * quality says the verdict is doubtful (clipping over 1%, SNR under 10 dB,
 * telephone band), and shows the current window's quality flags.
 *
 * Estimates may carry "importance" (streamer/core/importance.py): each card then
 * draws the latest such window as in the paper's Figure 6: its waveform envelope
 * over a heat map of DropFormer's last-layer token importance, the tokens the
 * Token Dropout Module dropped hatched, and a plain heat strip below. The canvas
 * says what it drew in data-* attributes (seq, cells, null-cells, tokens,
 * dropped, runs, envelope-points), for tests and for anyone curious.
 */
"use strict";

(() => {
  const TIMELINE_S = 60;          // seconds of audio shown in the timeline
  const TRANSITIONS_KEPT = 10;    // entries in each card's transition log
  const UTTERANCES_KEPT = 8;      // entries in each card's utterance list
  const CLIPPING_WARN = 0.01;     // quality: a share of clipped samples above this is flagged
  const SNR_WARN_DB = 10;         // quality: an SNR estimate below this is flagged
  const ALERTS_KEPT = 5;          // alerts shown per card
  const TRAIL_POINTS = 12;        // arousal/valence trail length
  const BACKOFF_INITIAL_MS = 500; // first reconnect delay; doubles per failure
  const BACKOFF_MAX_MS = 10000;   // longest reconnect delay
  const STATES = ["online", "speech", "silence", "offline", "error"];
  const OFFLINE_KEEP_S = 300;     // cards of streams offline this long are removed (ended calls)
  const MIC_BLOCK_S = 0.1;        // audio per message sent to /ingest

  // Colours for common emotion labels (several corpora's spellings), distinct
  // within every common label set (EmoDB, MELD, IEMOCAP, RAVDESS, CREMA-D). Any
  // other label gets the first spare colour not yet taken on this page, starting
  // at a hash of its name: distinct from the others, stable for a model's labels.
  const KNOWN_COLOURS = {
    neutral: "#9aa7b8", calm: "#5fc9b0", happy: "#f4c430", happiness: "#f4c430", joy: "#f4c430",
    excited: "#ffa94d", excitement: "#ffa94d", surprise: "#ff6fb5", surprised: "#ff6fb5",
    angry: "#ef4f4f", anger: "#ef4f4f", frustrated: "#c2410c", frustration: "#c2410c",
    sad: "#4d9bf0", sadness: "#4d9bf0", fear: "#b26ddf", fearful: "#b26ddf", afraid: "#b26ddf",
    anxiety: "#b26ddf", disgust: "#7dbb42", disgusted: "#7dbb42", contempt: "#d4a373",
    boredom: "#a0785a", bored: "#a0785a",
  };
  const KNOWN_ORDER = Object.keys(KNOWN_COLOURS);
  const SPARE_COLOURS = [
    "#17becf", "#6b6ecf", "#bcbd22", "#ce6dbd", "#e7ba52", "#637939",
    "#ad494a", "#393b79", "#8ca252", "#de9ed6", "#3182bd", "#e6550d",
  ];
  const spareTaken = new Map();  // label (lower case) -> its spare colour

  function colourOf(label) {
    const key = String(label).toLowerCase();
    if (KNOWN_COLOURS[key]) return KNOWN_COLOURS[key];
    if (spareTaken.has(key)) return spareTaken.get(key);
    let h = 0;
    for (let i = 0; i < key.length; i++) h = (h * 31 + key.charCodeAt(i)) >>> 0;
    const used = new Set(spareTaken.values());
    let colour = `hsl(${h % 360} 65% 62%)`;  // only when every spare colour is taken
    for (let i = 0; i < SPARE_COLOURS.length; i++) {
      const c = SPARE_COLOURS[(h + i) % SPARE_COLOURS.length];
      if (!used.has(c)) { colour = c; break; }
    }
    spareTaken.set(key, colour);
    return colour;
  }

  // Why audio with these quality measures may be hard to judge ([] when fine).
  function qualityWarnings(q) {
    if (!q || typeof q !== "object") return [];
    const out = [];
    if (isNum(q.clipping) && q.clipping > CLIPPING_WARN) out.push(`clipping ${Math.round(q.clipping * 100)}%`);
    if (isNum(q.snr_db) && q.snr_db < SNR_WARN_DB) out.push(`low SNR (${Math.round(q.snr_db)} dB)`);
    if (q.telephone_band === true) out.push("telephone band");
    return out;
  }

  // ---------------------------------------------------------------- helpers
  const $ = (sel, root = document) => root.querySelector(sel);
  const role = (root, name) => root.querySelector(`[data-role="${name}"]`);
  const isNum = (x) => typeof x === "number" && Number.isFinite(x);
  const pct = (x) => (isNum(x) ? `${Math.round(x * 100)}%` : "–");
  const secs = (ms) => (isNum(ms) ? `${(ms / 1000).toFixed(1)} s` : "–");
  const signed = (x) => (isNum(x) ? (x >= 0 ? "+" : "−") + Math.abs(x).toFixed(2) : "–");
  const clamp = (x, lo, hi) => Math.min(hi, Math.max(lo, x));
  const clock = (d) => d.toLocaleTimeString([], { hour12: false });

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function labelChip(label) {
    const chip = el("span", "lchip");
    const sw = el("span", "swatch");
    sw.style.background = colourOf(label);
    sw.setAttribute("aria-hidden", "true");
    chip.append(sw, el("span", "lname", label));
    return chip;
  }

  // ------------------------------------------------------------ page state
  const params = new URLSearchParams(location.search);
  function withToken(url) {  // browsers cannot send headers: the token goes in the query
    const token = params.get("token");
    if (!token) return url;
    try {
      const u = new URL(url);
      if (!u.searchParams.has("token")) u.searchParams.set("token", token);
      return u.toString();
    } catch (err) {
      return url;  // a bad ?ws= is reported when connecting
    }
  }
  const defaultWs = location.host
    ? `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`
    : "ws://127.0.0.1:8765/ws";
  const wsUrl = withToken(params.get("ws") || defaultWs);
  const initial = (params.get("streams") || "").split(",").map((s) => s.trim()).filter(Boolean);

  const streams = new Map();   // stream id -> view state
  const labelsSeen = new Set();
  let selected = initial.length ? new Set(initial) : null; // null: every stream
  let socket = null;
  let backoffMs = BACKOFF_INITIAL_MS;
  let retryAt = 0;
  let retryTimer = null;
  let connected = false;
  let messages = 0;
  let badMessages = 0;
  let renderQueued = false;

  // ------------------------------------------------------------ stream cards
  function streamView(id) {
    let s = streams.get(id);
    if (s) return s;
    const card = $("#card-template").content.firstElementChild.cloneNode(true);
    card.dataset.stream = id;
    card.setAttribute("aria-label", `stream ${id}`);
    role(card, "sid").textContent = id;
    s = {
      id, card, estimate: null, status: null, history: [], trail: [],
      transitions: [], alerts: [], utterances: [], lastUpdate: null, labels: [], untrained: false,
      dirty: true, timelineDirty: true, importance: null, importanceDirty: false,
    };
    streams.set(id, s);
    // keep cards ordered by stream id
    const after = [...streams.keys()].filter((k) => k > id).sort()[0];
    const main = $("#cards");
    if (after !== undefined) main.insertBefore(card, streams.get(after).card);
    else main.appendChild(card);
    $("#empty").hidden = true;
    new ResizeObserver(() => { s.timelineDirty = true; queueRender(); }).observe(role(card, "timeline"));
    new ResizeObserver(() => { s.importanceDirty = true; queueRender(); }).observe(role(card, "importance"));
    applyFilterTo(s);
    renderChips();
    return s;
  }

  function onEstimate(ev) {
    const s = streamView(ev.stream_id);
    const prev = s.estimate;
    if (prev && prev.seq === ev.seq && prev.audio_end_ms === ev.audio_end_ms) return; // replayed by hello
    s.estimate = ev;
    s.lastUpdate = new Date();
    const scores = ev.scores && typeof ev.scores === "object" ? ev.scores : {};
    const labels = Object.keys(scores);
    if (labels.join("\u0000") !== s.labels.join("\u0000")) {
      s.labels = labels;
      s.history = [];          // a new label set (another model): start afresh
      s.barsBuilt = false;
    }
    labels.forEach((l) => labelsSeen.add(l));
    const t = isNum(ev.audio_end_ms) ? ev.audio_end_ms : 0;
    const last = s.history[s.history.length - 1];
    if (last && t < last.t) s.history = []; // audio clock restarted (daemon restart)
    s.history.push({ t, speech: ev.speech !== false, scores: { ...scores } });
    while (s.history.length && s.history[0].t < t - (TIMELINE_S + 5) * 1000) s.history.shift();
    if (isNum(ev.arousal) && isNum(ev.valence)) {
      s.trail.push([ev.valence, ev.arousal]);
      if (s.trail.length > TRAIL_POINTS) s.trail.shift();
    }
    s.untrained = Boolean(ev.model && ev.model.random_init);
    s.dirty = s.timelineDirty = true;
    onImportance(s, ev);
  }

  function onImportance(s, ev) {
    if (!ev.importance || typeof ev.importance !== "object") return;
    const cur = s.importance;
    if (cur && cur.seq === ev.seq && cur.audio_end_ms === ev.audio_end_ms) return;
    s.importance = ev;
    s.importanceDirty = true;
  }

  function onStatus(ev) {
    const s = streamView(ev.stream_id);
    s.status = ev;
    s.offlineSince = ev.state === "offline" ? (s.offlineSince || Date.now()) : null;
    s.dirty = true;
  }

  function dropEndedCards() {
    const now = Date.now();
    for (const s of [...streams.values()]) {
      if (s.offlineSince && now - s.offlineSince > OFFLINE_KEEP_S * 1000) {
        s.card.remove();
        streams.delete(s.id);
        renderChips();
      }
    }
    $("#empty").hidden = streams.size > 0;
  }

  const transitionKey = (ev) => `${ev.seq}|${ev.audio_ms}|${ev.to}`;

  function onTransition(ev, replayed = false) {
    const s = streamView(ev.stream_id);
    // a hello replays the stream's last transitions: keep the ones this page has not seen
    if (replayed && s.transitions.some((t) => transitionKey(t.ev) === transitionKey(ev))) return;
    s.transitions.unshift({ ev, at: new Date() });
    s.transitions.length = Math.min(s.transitions.length, TRANSITIONS_KEPT);
    s.transitionsDirty = s.dirty = true;
  }

  const utteranceKey = (ev) => `${ev.seq}|${ev.audio_start_ms}|${ev.audio_end_ms}`;

  function onUtterance(ev, replayed = false) {
    const s = streamView(ev.stream_id);
    if (s.utterances.some((u) => utteranceKey(u) === utteranceKey(ev))) return;  // replayed by hello
    if (replayed) {  // a hello lists the stream's last ones, oldest first: keep time order
      s.utterances.push(ev);
      s.utterances.sort((a, b) => (b.audio_end_ms || 0) - (a.audio_end_ms || 0));
    } else {
      s.utterances.unshift(ev);
    }
    s.utterances.length = Math.min(s.utterances.length, UTTERANCES_KEPT);
    if (ev.scores && typeof ev.scores === "object") Object.keys(ev.scores).forEach((l) => labelsSeen.add(l));
    s.utterancesDirty = s.dirty = true;
  }

  function onAlert(ev) {
    const s = streamView(ev.stream_id);
    s.alerts.unshift({ ev, at: new Date() });
    s.alerts.length = Math.min(s.alerts.length, ALERTS_KEPT);
    s.alertsDirty = s.dirty = true;
  }

  function onHello(ev) {
    const known = new Set(Array.isArray(ev.streams) ? ev.streams : []);
    known.forEach((id) => streamView(id));
    for (const s of streams.values()) {
      if (!known.has(s.id)) {   // e.g. the daemon restarted without this stream
        s.status = { ...(s.status || {}), state: "offline", detail: "not served by the monitor now" };
        s.dirty = true;
      }
    }
    for (const st of Object.values(ev.last_status || {})) onStatus(st);
    for (const es of Object.values(ev.last_estimate || {})) onEstimate(es);
    // a page that connects late still lists the labels so far (oldest first, newest ends on top)
    for (const list of Object.values(ev.transitions || {})) {
      if (Array.isArray(list)) list.forEach((t) => { if (t && typeof t.stream_id === "string") onTransition(t, true); });
    }
    for (const list of Object.values(ev.utterances || {})) {
      if (Array.isArray(list)) list.forEach((u) => { if (u && typeof u.stream_id === "string") onUtterance(u, true); });
    }
    for (const es of Object.values(ev.last_importance || {})) {
      if (es && typeof es.stream_id === "string") onImportance(streamView(es.stream_id), es);
    }
  }

  const HANDLERS = {
    "hello": onHello,
    "emotion.estimate": onEstimate,
    "emotion.transition": onTransition,
    "emotion.utterance": (ev) => onUtterance(ev),
    "stream.status": onStatus,
    "alert": onAlert,
    "subscribed": () => {},
    "error": (ev) => console.warn("server:", ev.message),
  };

  function handleMessage(data) {
    let ev;
    try {
      ev = JSON.parse(data);
    } catch (_) {
      countBad("not JSON", data);
      return;
    }
    const fn = ev && HANDLERS[ev.type];
    if (!fn) { countBad("unknown message type", ev && ev.type); return; }
    if (ev.type !== "hello" && ev.type !== "subscribed" && ev.type !== "error" &&
        typeof ev.stream_id !== "string") { countBad("event without stream_id", ev.type); return; }
    messages++;
    fn(ev);
    queueRender();
  }

  function countBad(why, what) {
    badMessages++;
    console.warn(`ignoring a message (${why}):`, String(what).slice(0, 80));
    $("#bad-count").textContent = String(badMessages);
    $("#bad-count-wrap").hidden = false;
  }

  // -------------------------------------------------------------- rendering
  function queueRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(render);
  }

  function render() {
    renderQueued = false;
    for (const s of streams.values()) {
      if (s.dirty) renderCard(s);
      if (s.timelineDirty && !s.card.hidden) drawTimeline(s);
      if (s.importanceDirty && !s.card.hidden) drawImportance(s);
    }
    renderLegend();
    renderBanner();
    $("#msg-count").textContent = String(messages);
  }

  function renderCard(s) {
    s.dirty = false;
    const c = s.card;
    // state badge
    const st = s.status;
    const state = st && STATES.includes(st.state) ? st.state : (st ? "error" : "online");
    c.dataset.state = state;
    role(c, "state").textContent = st ? st.state : "online";
    const detail = role(c, "detail");
    detail.hidden = !(st && st.detail);
    detail.textContent = st && st.detail ? st.detail : "";
    if (st && st.counters) {
      const k = st.counters;
      role(c, "windows").textContent = `${k.windows ?? "–"} / ${k.inferred ?? "–"}`;
      role(c, "skipped_stale").textContent = String(k.skipped_stale ?? "–");
      role(c, "skipped_silence").textContent = String(k.skipped_silence ?? "–");
      role(c, "dropped").textContent = `${k.dropped_frames ?? "–"} / ${k.bad_samples ?? "–"}`;
    }
    role(c, "untrained").hidden = !s.untrained;

    const ev = s.estimate;
    if (ev) {
      const lab = role(c, "label");
      lab.textContent = ev.label;
      lab.style.color = colourOf(ev.label);
      role(c, "current").style.setProperty("--accent", colourOf(ev.label));
      role(c, "confidence").textContent = pct(ev.confidence);
      role(c, "speech").textContent = ev.speech === false ? "no speech in this window" : "speech";
      role(c, "audio-pos").textContent = `audio ${secs(ev.audio_end_ms)}`;
      const m = ev.model || {};
      role(c, "model").textContent = [m.name, m.frontend].filter(Boolean).join(" · ");
      role(c, "model").title = m.rev ? `model rev ${m.rev}` : "";
      const tk = ev.tokens || {};
      role(c, "tokens").textContent = isNum(tk.kept) && isNum(tk.in)
        ? `${tk.kept} / ${tk.in} (${tk.in ? Math.round((100 * tk.kept) / tk.in) : 0}%)` : "–";
      role(c, "latency").textContent = isNum(ev.latency_ms) ? `${ev.latency_ms.toFixed(1)} ms` : "–";
      renderBars(s);
      renderCircumplex(s);
      renderQuality(s);
    }
    renderAgo(s);
    if (s.transitionsDirty) renderTransitions(s);
    if (s.utterancesDirty) renderUtterances(s);
    if (s.alertsDirty) renderAlerts(s);
  }

  function renderBars(s) {
    const box = role(s.card, "bars");
    if (!s.barsBuilt) {
      box.replaceChildren();
      for (const l of s.labels) {
        const row = el("div", "bar-row");
        row.setAttribute("role", "listitem");
        row.dataset.label = l;
        const name = el("span", "bar-name", l);
        const track = el("span", "bar-track");
        const fill = el("span", "bar-fill");
        fill.style.background = colourOf(l);
        track.append(fill);
        row.append(name, track, el("span", "bar-value", "–"));
        box.append(row);
      }
      s.barsBuilt = true;
    }
    const scores = s.estimate.scores || {};
    for (const row of box.children) {
      const v = scores[row.dataset.label];
      row.querySelector(".bar-fill").style.width = `${clamp(isNum(v) ? v : 0, 0, 1) * 100}%`;
      row.querySelector(".bar-value").textContent = pct(v);
      row.classList.toggle("top", row.dataset.label === s.estimate.label);
    }
  }

  function renderCircumplex(s) {
    const ev = s.estimate;
    const point = role(s.card, "point");
    const cap = role(s.card, "av");
    if (!isNum(ev.arousal) || !isNum(ev.valence)) {
      point.setAttribute("visibility", "hidden");
      cap.replaceChildren(el("span", null, "arousal –"), el("span", null, "valence –"));
      return;
    }
    const xy = ([v, a]) => [clamp(v, -1, 1) * 100, -clamp(a, -1, 1) * 100];
    const [x, y] = xy([ev.valence, ev.arousal]);
    point.setAttribute("cx", x.toFixed(1));
    point.setAttribute("cy", y.toFixed(1));
    point.setAttribute("visibility", "visible");
    point.style.fill = colourOf(ev.label);
    role(s.card, "trail").setAttribute("points",
      s.trail.map((p) => xy(p).map((n) => n.toFixed(1)).join(",")).join(" "));
    cap.replaceChildren(el("span", null, `arousal ${signed(ev.arousal)}`),
      el("span", null, `valence ${signed(ev.valence)}`));
    role(s.card, "circumplex").setAttribute("aria-label",
      `arousal ${signed(ev.arousal)}, valence ${signed(ev.valence)}`);
  }

  function renderTransitions(s) {
    s.transitionsDirty = false;
    const ol = role(s.card, "transitions");
    ol.replaceChildren();
    for (const { ev, at } of s.transitions) {
      const li = el("li", "transition");
      const from = ev.from == null ? el("span", "t-first", "first label") : labelChip(String(ev.from));
      li.append(el("time", "t-time", secs(ev.audio_ms)), from,
        el("span", "arrow", "→"), labelChip(String(ev.to)),
        el("span", "t-conf", pct(ev.confidence)));
      li.title = `received ${clock(at)}`;
      li.setAttribute("aria-label",
        `at ${secs(ev.audio_ms)}: ${ev.from == null ? "first label" : ev.from} to ${ev.to}, confidence ${pct(ev.confidence)}`);
      ol.append(li);
    }
    if (!s.transitions.length) ol.append(el("li", "placeholder", "none yet"));
  }

  // The current window's quality: its measures, and a badge for each warning.
  function renderQuality(s) {
    const box = role(s.card, "quality");
    const ev = s.estimate;
    const q = ev && ev.speech !== false ? ev.quality : null;  // silent windows carry none
    if (!q || typeof q !== "object") {
      if (!ev || ev.speech !== false) { box.hidden = true; box.dataset.warn = ""; }
      return;  // a silent window keeps the last speech window's flags on show
    }
    const warnings = qualityWarnings(q);
    box.hidden = false;
    box.dataset.warn = warnings.join(",");
    const parts = [
      el("span", "q-title", "audio"),
      el("span", "q-item", isNum(q.level_dbfs) ? `${Math.round(q.level_dbfs)} dBFS` : "–"),
      el("span", "q-item", isNum(q.snr_db) ? `SNR ${Math.round(q.snr_db)} dB` : "SNR –"),
      el("span", "q-item", isNum(q.bandwidth_hz) ? `band ${(q.bandwidth_hz / 1000).toFixed(1)} kHz` : "band –"),
    ];
    for (const w of warnings) parts.push(el("span", "q-warn", `⚠ ${w}`));
    if (!warnings.length) parts.push(el("span", "q-ok", "ok"));
    box.replaceChildren(...parts);
    box.title = "quality of the latest speech window: level, signal-to-noise ratio, band limit";
  }

  function renderUtterances(s) {
    s.utterancesDirty = false;
    const ol = role(s.card, "utterances");
    ol.replaceChildren();
    for (const ev of s.utterances) {
      const li = el("li", "utterance");
      const span = `${secs(ev.audio_start_ms)} – ${secs(ev.audio_end_ms)}`;
      li.dataset.label = String(ev.label);
      li.append(el("time", "u-time", span), labelChip(String(ev.label)),
        el("span", "u-conf", pct(ev.confidence)));
      if (ev.truncated) {
        const t = el("span", "u-trunc", "last part");
        t.title = "a long utterance: the model heard only its last part";
        li.append(t);
      }
      const warnings = qualityWarnings(ev.quality);
      if (warnings.length) {
        const badge = el("span", "u-warn", `⚠ ${warnings.join(", ")}`);
        badge.title = "the audio may be too poor for a reliable estimate";
        li.append(badge);
      }
      li.setAttribute("aria-label", `utterance ${span}: ${ev.label}, confidence ${pct(ev.confidence)}` +
        (warnings.length ? `; warning: ${warnings.join(", ")}` : ""));
      ol.append(li);
    }
    if (!s.utterances.length) ol.append(el("li", "placeholder", "none yet"));
  }

  function renderAlerts(s) {
    s.alertsDirty = false;
    const ul = role(s.card, "alerts");
    ul.replaceChildren();
    for (const { ev, at } of s.alerts) {
      const sev = ["info", "warning", "critical"].includes(ev.severity) ? ev.severity : "warning";
      const li = el("li", `alert sev-${sev}`);
      li.append(el("span", "sev", sev), el("span", "a-kind", ev.kind || "alert"),
        el("span", "a-msg", ev.message || ""), el("time", "a-time", `${secs(ev.audio_ms)} · ${clock(at)}`));
      ul.append(li);
    }
  }

  function renderAgo(s) {
    const out = role(s.card, "updated");
    if (!s.lastUpdate) { out.textContent = "–"; return; }
    const ago = Math.max(0, Math.round((Date.now() - s.lastUpdate.getTime()) / 1000));
    out.textContent = ago < 2 ? "just now" : `${ago} s ago`;
    out.title = `last estimate received ${clock(s.lastUpdate)}`;
  }

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function drawTimeline(s) {
    s.timelineDirty = false;
    const canvas = role(s.card, "timeline");
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (!w || !h) return;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const padL = 30, padR = 8, padT = 8, padB = 18;
    const pw = w - padL - padR, ph = h - padT - padB;
    const hist = s.history;
    const tEnd = hist.length ? hist[hist.length - 1].t : TIMELINE_S * 1000;
    const tStart = tEnd - TIMELINE_S * 1000;
    const X = (t) => padL + ((t - tStart) / (TIMELINE_S * 1000)) * pw;
    const Y = (v) => padT + (1 - clamp(v, 0, 1)) * ph;

    g.font = `10px ${cssVar("--font-mono") || "monospace"}`;
    g.fillStyle = cssVar("--muted");
    g.strokeStyle = cssVar("--grid");
    g.lineWidth = 1;
    g.textAlign = "right";
    g.textBaseline = "middle";
    for (const v of [0, 0.5, 1]) {
      g.beginPath(); g.moveTo(padL, Y(v) + 0.5); g.lineTo(w - padR, Y(v) + 0.5); g.stroke();
      g.fillText(v.toFixed(1), padL - 4, Y(v));
    }
    g.textBaseline = "top";
    for (let k = 0; k <= TIMELINE_S; k += 10) {
      const x = X(tStart + k * 1000);
      g.textAlign = k === 0 ? "left" : k === TIMELINE_S ? "right" : "center";
      g.fillText(k === TIMELINE_S ? "now" : `−${TIMELINE_S - k}s`, x, h - padB + 5);
    }
    // shade windows without speech
    g.fillStyle = cssVar("--nospeech");
    for (let i = 0; i < hist.length; i++) {
      if (hist[i].speech) continue;
      const x0 = X(i ? hist[i - 1].t : hist[i].t - 500);
      g.fillRect(Math.max(padL, x0), padT, Math.max(1, X(hist[i].t) - Math.max(padL, x0)), ph);
    }
    g.lineWidth = 2;
    g.lineJoin = "round";
    for (const l of s.labels) {
      g.strokeStyle = colourOf(l);
      g.beginPath();
      let started = false;
      for (const p of hist) {
        if (p.t < tStart) continue;
        const v = p.scores[l];
        if (!isNum(v)) continue;
        if (started) g.lineTo(X(p.t), Y(v)); else { g.moveTo(X(p.t), Y(v)); started = true; }
      }
      g.stroke();
    }
    const top = s.estimate;
    canvas.setAttribute("aria-label", top
      ? `smoothed scores over the last ${TIMELINE_S} s of audio; now ${top.label} ${pct(top.confidence)}`
      : `smoothed scores over the last ${TIMELINE_S} s of audio`);
  }

  // ------------------------------------------- where the model listened
  const HEAT_STOPS = [[43, 29, 107], [91, 42, 134], [184, 57, 107], [240, 128, 60], [252, 211, 77]];
  const STRIP_H = 14;             // CSS px of the plain heat strip under the waveform
  const STRIP_GAP = 4;

  function heat(v) {               // 0 (least important span of the window) .. 1 (most)
    const x = clamp(v, 0, 1) * (HEAT_STOPS.length - 1);
    const i = Math.min(HEAT_STOPS.length - 2, Math.floor(x));
    const f = x - i;
    const c = HEAT_STOPS[i].map((a, k) => Math.round(a + (HEAT_STOPS[i + 1][k] - a) * f));
    return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
  }

  function decodeDropped(hex, tokens) {  // lowercase hex, 4 tokens a digit, first token in the high bit
    const out = new Array(tokens).fill(false);
    if (typeof hex !== "string") return out;
    for (let i = 0; i < tokens; i++) {
      const d = parseInt(hex[i >> 2], 16);
      out[i] = Number.isFinite(d) && ((d >> (3 - (i & 3))) & 1) === 1;
    }
    return out;
  }

  function drawImportance(s) {
    s.importanceDirty = false;
    const ev = s.importance;
    const wrap = role(s.card, "importance-wrap");
    wrap.hidden = !ev;
    if (!ev) return;
    const canvas = role(s.card, "importance");
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (!w || !h) return;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const imp = ev.importance;
    const values = Array.isArray(imp.values) ? imp.values : [];
    const env = Array.isArray(imp.envelope) ? imp.envelope : [];
    const tokens = Number.isInteger(imp.tokens) && imp.tokens > 0 ? imp.tokens : 0;
    const dropped = decodeDropped(imp.dropped, tokens);
    const waveH = h - STRIP_H - STRIP_GAP;
    const stripY = waveH + STRIP_GAP;
    const spanX = (i, n) => [Math.round((i * w) / n), Math.round(((i + 1) * w) / n)];

    // heat: behind the waveform (faint) and as a plain strip below it
    let cells = 0, nullCells = 0;
    values.forEach((v, i) => {
      const [x0, x1] = spanX(i, values.length);
      if (isNum(v)) { cells++; g.fillStyle = heat(v); } else { nullCells++; g.fillStyle = cssVar("--nospeech") || "#888"; }
      g.globalAlpha = isNum(v) ? 0.5 : 1;
      g.fillRect(x0, 0, x1 - x0, waveH);
      g.globalAlpha = 1;
      g.fillRect(x0, stripY, x1 - x0, STRIP_H);
    });

    // the waveform envelope, mirrored about the middle
    if (env.length) {
      const mid = waveH / 2, amp = waveH / 2 - 2;
      const X = (i) => ((i + 0.5) * w) / env.length;
      g.beginPath();
      env.forEach((v, i) => { const y = mid - clamp(isNum(v) ? v : 0, 0, 1) * amp; if (i) g.lineTo(X(i), y); else g.moveTo(X(i), y); });
      for (let i = env.length - 1; i >= 0; i--) g.lineTo(X(i), mid + clamp(isNum(env[i]) ? env[i] : 0, 0, 1) * amp);
      g.closePath();
      g.fillStyle = cssVar("--text") || "#fff";
      g.globalAlpha = 0.85;
      g.fill();
      g.globalAlpha = 1;
    }

    // dropped tokens: hatched over the waveform, run by run
    const runs = [];
    for (let i = 0; i < tokens; i++) {
      if (!dropped[i]) continue;
      if (runs.length && runs[runs.length - 1][1] === i) runs[runs.length - 1][1] = i + 1;
      else runs.push([i, i + 1]);
    }
    g.strokeStyle = cssVar("--muted") || "#888";
    g.lineWidth = 1.2;
    for (const [a, b] of runs) {
      const x0 = (a * w) / tokens, x1 = (b * w) / tokens;
      g.save();
      g.beginPath();
      g.rect(x0, 0, x1 - x0, waveH);
      g.clip();
      g.fillStyle = "rgba(0, 0, 0, 0.25)";
      g.fillRect(x0, 0, x1 - x0, waveH);
      g.beginPath();
      for (let x = x0 - waveH; x < x1; x += 5) { g.moveTo(x, waveH); g.lineTo(x + waveH, 0); }
      g.stroke();
      g.restore();
    }

    const nDropped = dropped.filter(Boolean).length;
    Object.assign(canvas.dataset, {
      seq: String(ev.seq), cells: String(cells), nullCells: String(nullCells), tokens: String(tokens),
      dropped: String(nDropped), runs: String(runs.length), envelopePoints: String(env.length),
    });
    const pctDropped = tokens ? Math.round((100 * nDropped) / tokens) : 0;
    role(s.card, "importance-caption").textContent =
      `${secs(ev.audio_start_ms)}–${secs(ev.audio_end_ms)} · ${tokens} tokens · ${nDropped} dropped (${pctDropped}%) · layer ${imp.layer}`;
    canvas.setAttribute("aria-label",
      `window ${secs(ev.audio_start_ms)} to ${secs(ev.audio_end_ms)}: importance of ${tokens} tokens, ${nDropped} dropped`);
  }

  function renderLegend() {
    const ul = $("#legend");
    if (ul.childElementCount === labelsSeen.size) return;
    const rank = (l) => { const i = KNOWN_ORDER.indexOf(l.toLowerCase()); return i < 0 ? 1e9 : i; };
    const sorted = [...labelsSeen].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
    ul.replaceChildren(...sorted.map((l) => { const li = el("li"); li.append(labelChip(l)); return li; }));
  }

  function renderBanner() {
    const bad = [...streams.values()].filter((s) => s.untrained);
    $("#banner-untrained").hidden = bad.length === 0;
    if (bad.length) {
      const m = bad[0].estimate && bad[0].estimate.model ? bad[0].estimate.model : {};
      $("#banner-untrained-detail").textContent =
        `The ${m.name || "model"} weights are random (model.random_init) on stream${bad.length > 1 ? "s" : ""} ` +
        `${bad.map((s) => s.id).join(", ")}. Load a trained checkpoint.`;
    }
  }

  // ------------------------------------------------------- stream filter
  function renderChips() {
    const box = $("#filter-chips");
    const ids = [...new Set([...streams.keys(), ...(selected || [])])].sort();
    const mk = (id, label, pressed) => {
      const b = el("button", "chip", label);
      b.type = "button";
      b.dataset.stream = id;
      b.setAttribute("aria-pressed", String(pressed));
      return b;
    };
    box.replaceChildren(mk("*", "All", selected === null),
      ...ids.map((id) => mk(id, id, selected !== null && selected.has(id))));
  }

  function onChipClick(e) {
    const b = e.target.closest("button.chip");
    if (!b) return;
    const id = b.dataset.stream;
    if (id === "*") selected = null;
    else {
      const next = new Set(selected || []);
      if (next.has(id)) next.delete(id); else next.add(id);
      selected = next.size ? next : null;
    }
    const p = new URLSearchParams(location.search);
    if (selected) p.set("streams", [...selected].sort().join(",")); else p.delete("streams");
    history.replaceState(null, "", `${location.pathname}${p.toString() ? "?" + p : ""}`);
    sendSubscribe();
    for (const s of streams.values()) applyFilterTo(s);
    renderChips();
    queueRender();
  }

  function applyFilterTo(s) {
    const hide = selected !== null && !selected.has(s.id);
    if (s.card.hidden !== hide) { s.card.hidden = hide; s.timelineDirty = s.importanceDirty = true; }
  }

  function sendSubscribe() {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ type: "subscribe", streams: selected ? [...selected].sort() : null }));
    }
  }

  // ------------------------------------------------------------ connection
  function setConn(state, text) {
    const c = $("#conn");
    c.dataset.state = state;
    $("#conn-text").textContent = text;
    document.body.classList.toggle("stale", state !== "connected");
  }

  function connect() {
    retryTimer = null;
    setConn("connecting", "connecting…");
    let ws;
    try {
      ws = new WebSocket(wsUrl);
    } catch (err) {
      setConn("disconnected", `cannot connect: bad WebSocket URL ${wsUrl} (fix ?ws=)`);
      console.warn(err);
      return;
    }
    socket = ws;
    ws.onopen = () => {
      connected = true;
      everConnected = true;
      backoffMs = BACKOFF_INITIAL_MS;
      setConn("connected", "connected");
      if (selected) sendSubscribe();
    };
    ws.onmessage = (e) => handleMessage(e.data);
    ws.onclose = () => {
      if (socket !== ws) return;
      socket = null;
      connected = false;
      const delay = backoffMs * (0.8 + 0.4 * Math.random());
      backoffMs = Math.min(backoffMs * 2, BACKOFF_MAX_MS);
      retryAt = Date.now() + delay;
      retryTimer = setTimeout(connect, delay);
      showRetry();
      checkAccess();
    };
  }

  let tokenHint = "";  // why connecting fails, when the monitor says it needs a token
  let accessChecked = false;
  function showRetry() {
    if (connected || !retryTimer) return;
    const left = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
    setConn("disconnected", `disconnected · ${tokenHint}reconnecting in ${left} s`);
  }

  let everConnected = false;
  function checkAccess() {  // a refused handshake looks like any failure to the page: ask /healthz
    if (!location.host || tokenHint || everConnected || accessChecked) return;
    accessChecked = true;  // once per page: a monitor that is down is not asked again and again
    fetch("/healthz", { cache: "no-store" }).then((r) => r.json()).then((h) => {
      if (h && h.access && h.access.token_required) {
        tokenHint = params.get("token")
          ? "the monitor refused this page's token · "
          : "this monitor needs a token: open the page as /?token=… · ";
        showRetry();
      }
    }).catch(() => {});
  }

  // ------------------------------------------------------ browser microphone
  let mic = null;  // {ws, ctx, media, node, id}
  const micId = `browser-${Math.random().toString(36).slice(2, 8)}`;

  function ingestUrl() {
    const u = new URL(wsUrl);
    u.pathname = "/ingest";
    u.search = "";
    const token = params.get("token");
    if (token) u.searchParams.set("token", token);
    return u.toString();
  }

  function setMic(text, state) {
    const st = $("#mic-status");
    st.textContent = text;
    st.dataset.state = state;
    const b = $("#mic-button");
    b.setAttribute("aria-pressed", String(state === "listening" || state === "starting"));
    b.textContent = mic ? "Stop the microphone" : "Listen to this browser's microphone";
  }

  function onMicButton() {
    if (mic) { stopMic("stopped"); return; }
    if (!navigator.mediaDevices || !window.AudioWorkletNode) {
      setMic("this browser cannot share its microphone here (it needs https or localhost)", "error");
      return;
    }
    $("#mic-consent-host").textContent = new URL(ingestUrl()).host;
    $("#mic-consent-stream").textContent = micId;
    $("#mic-consent").hidden = false;
    $("#mic-accept").focus();
  }

  async function startMic() {
    setMic("asking for the microphone…", "starting");
    let media, ctx;
    try {
      media = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      });
      ctx = new AudioContext();
      await ctx.audioWorklet.addModule("mic-worklet.js");
    } catch (err) {
      if (media) media.getTracks().forEach((t) => t.stop());
      if (ctx) ctx.close();
      setMic(`no microphone: ${err.message || err}`, "error");
      return;
    }
    const rate = Math.round(ctx.sampleRate);
    const node = new AudioWorkletNode(ctx, "pcm-sender", {
      processorOptions: { blockSamples: Math.round(rate * MIC_BLOCK_S) },
    });
    const ws = new WebSocket(ingestUrl());
    ws.binaryType = "arraybuffer";
    mic = { ws, ctx, media, node, id: micId, started: false };
    setMic("connecting…", "starting");
    ws.onopen = () => ws.send(JSON.stringify({
      type: "start", v: 1, stream_id: micId, sample_rate_hz: rate, encoding: "pcm_s16le",
      channels: 1, metadata: { source: "browser" },
    }));
    ws.onmessage = (e) => {
      let msg;
      try { msg = JSON.parse(e.data); } catch (_) { return; }
      if (msg.type === "started" && mic && mic.ws === ws) {
        mic.started = true;
        node.port.onmessage = (m) => { if (ws.readyState === WebSocket.OPEN) ws.send(m.data); };
        const src = ctx.createMediaStreamSource(media);
        const mute = ctx.createGain();
        mute.gain.value = 0;          // keeps the graph pulling without playing the voice back
        src.connect(node).connect(mute).connect(ctx.destination);
        setMic(`listening as ${micId} (${rate} Hz)`, "listening");
      } else if (msg.type === "error") {
        console.warn("ingest:", msg.code, msg.message);
        if (msg.fatal) setMic(`the monitor refused: ${msg.message}`, "error");
      }
    };
    ws.onclose = (e) => {
      if (!mic || mic.ws !== ws) return;
      const why = e.code === 1000 ? "stopped" : `the monitor closed the microphone (${e.code} ${e.reason || ""})`;
      stopMic(why, e.code === 1000 ? "idle" : "error");
    };
  }

  function stopMic(text, state = "idle") {
    const m = mic;
    mic = null;
    if (m) {
      m.node.port.postMessage("stop");
      m.media.getTracks().forEach((t) => t.stop());
      m.ctx.close();
      if (m.ws.readyState === WebSocket.OPEN) {
        if (m.started) m.ws.send(JSON.stringify({ type: "stop" }));
        setTimeout(() => m.ws.close(1000), 5000);  // the monitor closes first after stop
      } else if (m.ws.readyState === WebSocket.CONNECTING) {
        m.ws.close();
      }
    }
    setMic(text, state);
  }

  // ------------------------------------------------------------------ start
  function start() {
    $("#ws-url").textContent = wsUrl;
    $("#filter-chips").addEventListener("click", onChipClick);
    renderChips();
    setInterval(() => {          // "updated N s ago", the retry countdown, ended calls
      for (const s of streams.values()) renderAgo(s);
      showRetry();
      dropEndedCards();
    }, 1000);
    $("#mic-button").addEventListener("click", onMicButton);
    $("#mic-accept").addEventListener("click", () => { $("#mic-consent").hidden = true; startMic(); });
    $("#mic-cancel").addEventListener("click", () => { $("#mic-consent").hidden = true; setMic("", "idle"); });
    window.addEventListener("resize", () => {
      for (const s of streams.values()) s.timelineDirty = s.importanceDirty = true;
      queueRender();
    });
    connect();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
