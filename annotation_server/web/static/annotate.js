// The annotation page: Best-of-N / Worst-of-N on one screen, judged at whole-pixel zoom, keyboard
// first, and no lost work (answers wait in localStorage until the server acknowledged them; the marks
// and texts of the task on screen survive a reload).
// User text only ever reaches the page through textContent or form values, never innerHTML.
// The same page, with data-review-task set, is the review page of one task: the same viewer and keys,
// every answer beside it, and the reviewer's decision (winner and loser, or no pair) instead of a vote.
"use strict";

(() => {
  const root = document.getElementById("workspace");
  const $ = (id) => document.getElementById(id);
  const projectId = Number(root.dataset.project);
  const requireContent = root.dataset.requireContent === "true";
  const requireDefect = root.dataset.requireDefect === "true";
  const reviewTaskId = root.dataset.reviewTask ? Number(root.dataset.reviewTask) : null;
  const reviewing = reviewTaskId !== null;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const QUEUE_KEY = `dspo.pending.${root.dataset.user}`; // per user: a shared browser keeps them apart
  const DRAFT_KEY = `dspo.drafts.${root.dataset.user}`;
  const DRAFT_DAYS = 7;
  const BEST_KEYS = "123456789";
  const WORST_KEYS = "qweryuio"; // the row under the digits, without T (tie) and P (1:1)
  const UNDO_MS = 30000; // the server accepts a replacement for 10 minutes, so a queued one still goes in
  const PRELOAD = 2; // two, so that one slow image render on the server does not reach the screen
  // Zoom is counted in device pixels per image pixel: whole numbers from 1 up keep every image pixel
  // a block of whole screen pixels, the same in every pane.
  const LEVELS = [0.125, 0.25, 0.5, 1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 48, 64];
  const MAX_ZOOM = 64;
  const HEAD = 28; // pane header height (CSS px), the same for the reference and the candidates
  const BORDER = 2;
  const GAP = 6;
  const MIN_PANE = 150; // narrowest pane: its header never wraps
  const FLICKER_RATES = [150, 250, 400, 700, 1000];

  const state = {
    task: null, // the task on screen
    phase: "loading", // loading | waiting (for the server) | task | done
    upcoming: [], // the next tasks, leased and preloaded (PRELOAD of them)
    resume: null, // during an undo: the task to come back to
    replaces: null, // during an undo: the submission id being replaced
    last: null, // {task, body, restore, at}: what Z can undo
    shownAt: 0,
    best: null,
    worst: null,
    outcome: "pick", // pick | tie | all_bad; on the review page pick | no_pair
    mode: "grid", // grid | focus | flicker | compare
    grid: { k: 1, ox: 0, oy: 0, vw: 1, vh: 1, fitK: 1 }, // zoom, image point at the top left, pane size
    single: { k: 1, ox: 0, oy: 0, vw: 1, vh: 1, fitK: 1 },
    lqMethod: "bicubic",
    outline: true,
    dim: false,
    crosshair: true,
    pointer: null, // image pixel under the pointer {x, y}
    focusShown: 0, // -1: the LQ reference; else a candidate index
    peekFrom: null, // while Space is held in focus mode: what was shown before
    flickerTimer: null,
    flickerRate: 400,
    flickerAuto: true,
    flickerIndex: 0,
    flickerLabels: ["", ""],
    split: 0.5, // compare: the split as a share of the image's width
    pairChosen: false, // the annotator picked the flicker/compare pair by hand: keep it
    blocked: "", // why the queue cannot be sent (logged out): retrying would not help
    firstShown: false,
    answered: 0, // answers given on this page, to notice one given while a request was out
  };
  const preloaded = new Map(); // url -> HTMLImageElement: keeps preloaded images alive in memory
  const masks = new Map(); // task id -> Promise of {w, h, path, dim (canvas)} of its region

  // ---- server calls -------------------------------------------------------------------------
  function api(method, url, body) {
    const headers = { "X-CSRF-Token": csrf };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    return fetch(url, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  }

  async function detail(response) {
    try {
      const data = await response.json();
      return typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
    } catch {
      return `HTTP ${response.status}`;
    }
  }

  // `next` refuses an annotator paused by their gold accuracy (403, with the reason): not a server
  // outage to wait out, but a message to show.
  class Paused extends Error {}

  async function fetchTask(position) {
    const response = await api("POST", `/api/v1/projects/${projectId}/next?position=${position}`);
    if (response.status === 204) return null;
    if (response.status === 403) throw new Paused(await detail(response));
    if (!response.ok) throw new Error(await detail(response));
    return response.json();
  }

  // ---- the queue of answers not yet acknowledged ----------------------------------------------
  const loadQueue = () => {
    try {
      return JSON.parse(localStorage.getItem(QUEUE_KEY) || "[]");
    } catch {
      return [];
    }
  };
  const saveQueue = (queue) => {
    localStorage.setItem(QUEUE_KEY, JSON.stringify(queue));
    renderPending();
  };
  const dropFromQueue = (id) => saveQueue(loadQueue().filter((item) => item.body.client_submission_id !== id));

  let flushing = null;
  let retryTimer = null;
  let retryDelay = 1000;

  function enqueue(taskId, body) {
    state.answered += 1;
    saveQueue([...loadQueue(), { task_id: taskId, body }]);
    flush();
  }

  function scheduleRetry(why, delay) {
    renderPending(why);
    if (retryTimer) return;
    retryTimer = setTimeout(() => {
      retryTimer = null;
      flush();
    }, delay ?? retryDelay);
    if (delay === undefined) retryDelay = Math.min(retryDelay * 2, 8000);
  }

  // Retry-After in seconds or as an HTTP date; undefined when absent or unreadable.
  function retryAfter(response) {
    const value = response.headers.get("Retry-After");
    if (!value) return undefined;
    const seconds = Number(value);
    const ms = Number.isFinite(seconds) ? seconds * 1000 : Date.parse(value) - Date.now();
    return Number.isFinite(ms) ? Math.min(Math.max(ms, 0), 300000) : undefined;
  }

  // Whether the server holds this very submission already: a 409 after a lost acknowledgement.
  async function alreadyRecorded(item) {
    try {
      const response = await api("GET", `/api/v1/tasks/${item.task_id}/votes`);
      if (!response.ok) return false;
      const votes = await response.json();
      return votes.some((vote) => vote.client_submission_id === item.body.client_submission_id);
    } catch {
      return false;
    }
  }

  // What to do with the server's answer to a queued item: "sent" (recorded, now or before), "retry"
  // (it may succeed later: network, 5xx, 408, 429), "login" (keep it until the user logs in again) or
  // "rejected" (it can never succeed: drop it and say so).
  async function verdict(item, response) {
    if (response.ok) return "sent";
    if (response.status === 409 && (await alreadyRecorded(item))) return "sent";
    if (response.status >= 500 || response.status === 408 || response.status === 429) return "retry";
    // 401: the session ended; 403 on a vote: the CSRF token is stale (logged out and in elsewhere).
    if (response.status === 401 || response.status === 403) return "login";
    return "rejected";
  }

  // Sends the queue in order, one at a time: a replacement (undo) always reaches the server after the
  // answer it replaces. Resolves true when the queue is empty.
  function flush() {
    if (flushing) return flushing;
    flushing = (async () => {
      for (let queue = loadQueue(); queue.length; queue = loadQueue()) {
        const item = queue[0];
        let response;
        try {
          response = await api("POST", `/api/v1/tasks/${item.task_id}/vote`, item.body);
        } catch {
          scheduleRetry("the server cannot be reached");
          return false;
        }
        const what = await verdict(item, response);
        if (what === "sent") {
          dropFromQueue(item.body.client_submission_id);
          retryDelay = 1000;
          state.blocked = "";
          continue;
        }
        if (what === "retry") {
          scheduleRetry(`the server answered ${response.status}`, retryAfter(response));
          return false;
        }
        if (what === "login") {
          state.blocked = await detail(response);
          renderPending();
          return false;
        }
        dropFromQueue(item.body.client_submission_id);
        notify(
          `Task ${item.task_id}: your answer was refused and is not recorded ` +
            `(the server said: ${await detail(response)}). The answers after it are sent as usual.`,
        );
      }
      return true;
    })().finally(() => {
      flushing = null;
    });
    flushing.then((drained) => drained && onDrained());
    return flushing;
  }

  function renderPending(why) {
    const n = loadQueue().length;
    const box = $("pending");
    box.hidden = n === 0;
    if (n === 0) return;
    const saved = `${n} answer${n === 1 ? "" : "s"} saved in this browser, not yet sent`;
    if (state.blocked) {
      box.replaceChildren(`${saved}: ${state.blocked}. `);
      const login = el("a", { href: `/login?next=${encodeURIComponent(location.pathname)}` }, "Log in again");
      box.append(login, "; they are kept here and sent after that.");
    } else {
      box.textContent = `${saved} (${why || "sending"}; retrying).`;
    }
  }

  // The review page sends no answers: a queue left by the task page waits for it.
  window.addEventListener("online", () => !reviewing && flush());
  window.addEventListener("storage", (event) => event.key === QUEUE_KEY && renderPending());

  // Called whenever every answer has been acknowledged: the server's lease queue now matches the
  // screen, so it is safe to ask for the next task or the one after it.
  async function onDrained() {
    refreshProgress();
    if (state.phase === "waiting") return loadCurrent();
    if (state.task && state.upcoming.length < PRELOAD && !state.resume) prefetchUpcoming();
  }

  let prefetching = false;
  // The server keeps this annotator's leases in order: [the task on screen, ...upcoming], so the next
  // one to lease is at position 1 + upcoming.length (asked only when no answer is in flight).
  async function prefetchUpcoming() {
    if (prefetching) return;
    prefetching = true;
    try {
      while (state.task && state.upcoming.length < PRELOAD && !state.resume) {
        const answered = state.answered;
        const task = await fetchTask(1 + state.upcoming.length);
        const known = [state.task, ...state.upcoming].some((t) => t && task && t.id === task.id);
        // An answer given meanwhile shifts the server's queue: the task stays leased and comes back
        // through a later request.
        if (!task || known || answered !== state.answered) break;
        state.upcoming.push(task);
        preload(task);
      }
    } catch {
      // The next task will be asked for when this one is answered.
    } finally {
      prefetching = false;
    }
  }

  async function loadCurrent() {
    showMessage("Loading the next task…", "", "loading");
    try {
      const task = await fetchTask(0);
      if (task) show(task);
      else showMessage("Nothing left for you", "You have answered every task of this project that needs you.", "done");
    } catch (error) {
      if (error instanceof Paused) {
        showMessage("Your annotation is paused", error.message, "paused");
        return;
      }
      showMessage(
        "Waiting for the server",
        "The next task cannot be fetched right now. Your answers are kept in this browser.",
        "waiting",
      );
      setTimeout(() => state.phase === "waiting" && flush(), 3000);
      return;
    }
    if (state.task) prefetchUpcoming();
  }

  // ---- drafts: the marks and texts of a task not yet submitted -----------------------------------
  const loadDrafts = () => {
    try {
      return JSON.parse(localStorage.getItem(DRAFT_KEY) || "{}");
    } catch {
      return {};
    }
  };

  function saveDraft() {
    const task = state.task;
    if (!task || state.resume || reviewing) return; // an undo restores the answer given, not a draft
    const drafts = loadDrafts();
    const id = (i) => (i === null ? null : task.candidates[i].id);
    const draft = {
      best: id(state.best),
      worst: id(state.worst),
      outcome: state.outcome,
      content: $("content").value,
      defect: $("defect").value,
      at: Date.now(),
    };
    const empty = !draft.best && !draft.worst && draft.outcome === "pick" && !draft.content && !draft.defect;
    if (empty) delete drafts[task.id];
    else drafts[task.id] = draft;
    const old = Date.now() - DRAFT_DAYS * 86400000;
    for (const [key, value] of Object.entries(drafts)) if (value.at < old) delete drafts[key];
    localStorage.setItem(DRAFT_KEY, JSON.stringify(drafts));
  }

  function forgetDraft(taskId) {
    const drafts = loadDrafts();
    delete drafts[taskId];
    localStorage.setItem(DRAFT_KEY, JSON.stringify(drafts));
  }

  function draftOf(task) {
    const draft = reviewing ? null : loadDrafts()[task.id];
    if (!draft) return null;
    const index = (id) => {
      const i = task.candidates.findIndex((c) => c.id === id);
      return i < 0 ? null : i;
    };
    return { ...draft, best: index(draft.best), worst: index(draft.worst) };
  }

  // ---- images and the region's outline -------------------------------------------------------------
  const lqUrl = (task) => `${task.lq_url}?method=${state.lqMethod}`;
  // Candidates are always loaded without a painted outline: the outline is drawn above them.
  const candidateUrl = (task, c) => (task.kind === "instance" ? `${c.image_url}?outline=false` : c.image_url);
  const thumbUrl = (task) => `/api/v1/images/sources/${task.source_id}/lq`;
  const cropSize = (task) => [task.box[2] - task.box[0], task.box[3] - task.box[1]];

  function loadImage(url) {
    let image = preloaded.get(url);
    if (!image) {
      image = new Image();
      image.src = url;
      preloaded.set(url, image);
      if (preloaded.size > 200) preloaded.delete(preloaded.keys().next().value);
    }
    return image.decode().then(
      () => image,
      () => null,
    );
  }

  function preload(task) {
    const urls = [lqUrl(task), thumbUrl(task), ...task.candidates.map((c) => candidateUrl(task, c))];
    return Promise.all([...urls.map(loadImage), regionOf(task)]);
  }

  // The mask cropped to the task's box: its outline as an SVG path along pixel edges (image
  // coordinates) and a canvas that darkens what lies outside it.
  function regionOf(task) {
    if (!task.mask_url) return Promise.resolve(null);
    if (!masks.has(task.id)) {
      masks.set(
        task.id,
        loadImage(task.mask_url).then((image) => (image ? traceRegion(image, task) : null)),
      );
      if (masks.size > 20) masks.delete(masks.keys().next().value);
    }
    return masks.get(task.id);
  }

  function traceRegion(image, task) {
    const [x0, y0] = task.box;
    const [w, h] = cropSize(task);
    const canvas = document.createElement("canvas");
    canvas.width = w;
    canvas.height = h;
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.drawImage(image, x0, y0, w, h, 0, 0, w, h);
    const pixels = context.getImageData(0, 0, w, h);
    const inside = new Uint8Array(w * h);
    for (let i = 0; i < w * h; i++) inside[i] = pixels.data[4 * i] > 127 ? 1 : 0;
    const at = (x, y) => (x >= 0 && y >= 0 && x < w && y < h ? inside[y * w + x] : 0);
    const parts = [];
    for (let y = 0; y <= h; y++) {
      let start = -1;
      for (let x = 0; x <= w; x++) {
        const edge = x < w && at(x, y - 1) !== at(x, y);
        if (edge && start < 0) start = x;
        if (!edge && start >= 0) {
          parts.push(`M${start} ${y}H${x}`);
          start = -1;
        }
      }
    }
    for (let x = 0; x <= w; x++) {
      let start = -1;
      for (let y = 0; y <= h; y++) {
        const edge = y < h && at(x - 1, y) !== at(x, y);
        if (edge && start < 0) start = y;
        if (!edge && start >= 0) {
          parts.push(`M${x} ${start}V${y}`);
          start = -1;
        }
      }
    }
    // The dimming layer: transparent inside the region, a translucent black outside.
    const shade = context.createImageData(w, h);
    for (let i = 0; i < w * h; i++) shade.data[4 * i + 3] = inside[i] ? 0 : 150;
    context.putImageData(shade, 0, 0);
    return { w, h, path: parts.join(""), dim: canvas };
  }

  // ---- building the panes ---------------------------------------------------------------------
  function el(tag, attrs = {}, text = "") {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    if (text) node.textContent = text;
    return node;
  }

  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs = {}) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    return node;
  }

  // A viewport: the image layers (moved by one transform) and, above them, an SVG overlay drawn at
  // screen resolution (the outline and the crosshair never touch the image's pixels).
  function viewport(images) {
    const box = el("div", { class: "viewport" });
    for (const image of images) box.append(image);
    const dim = el("canvas", { class: "layer dim", "aria-hidden": "true" });
    const overlay = svg("svg", { class: "overlay", "aria-hidden": "true" });
    const region = svg("g", { class: "region" });
    region.append(
      svg("path", { class: "outline", "vector-effect": "non-scaling-stroke", "shape-rendering": "crispEdges" }),
    );
    overlay.append(region, svg("g", { class: "cross" }));
    box.append(dim, overlay);
    attachPointer(box);
    return box;
  }

  function layerImage(src, alt) {
    return el("img", { class: "layer view", alt, draggable: "false", src });
  }

  function pane(title, image, alt, candidateIndex) {
    const box = el("div", { class: "pane" });
    const head = el("div", { class: "pane-head" });
    head.append(el("span", { class: "label", title }, title));
    if (candidateIndex !== undefined) {
      const [bestWord, worstWord] = isPair() ? ["Better", "Worse"] : ["Best", "Worst"];
      const best = el("button", { type: "button", class: "pick-best", "aria-pressed": "false" });
      best.textContent = `${bestWord} ${BEST_KEYS[candidateIndex] || ""}`.trim();
      best.setAttribute("aria-label", `Candidate ${title} is the ${bestWord.toLowerCase()}`);
      best.addEventListener("click", () => markBest(candidateIndex));
      const worst = el("button", { type: "button", class: "pick-worst", "aria-pressed": "false" });
      worst.textContent = `${worstWord} ${(WORST_KEYS[candidateIndex] || "").toUpperCase()}`.trim();
      worst.setAttribute("aria-label", `Candidate ${title} is the ${worstWord.toLowerCase()}`);
      worst.addEventListener("click", () => markWorst(candidateIndex));
      head.append(best, worst);
      box.dataset.index = candidateIndex;
    }
    box.append(head, viewport([layerImage(image, alt)]));
    return box;
  }

  // An evaluation task compares two outputs, left and right: choosing one side better makes the other
  // worse, and "all bad" does not apply (its button is hidden, its key does nothing).
  const isPair = () => state.task?.kind === "evaluation";

  function buildPanes(task) {
    const grid = $("grid");
    const reference = pane(`LQ ${state.lqMethod}`, lqUrl(task), `Low-quality reference, upscaled ${state.lqMethod}`);
    reference.classList.add("reference");
    const panes = [reference];
    task.candidates.forEach((c, i) => panes.push(pane(c.label, candidateUrl(task, c), `Candidate ${c.label}`, i)));
    grid.replaceChildren(...panes);

    for (const select of [$("pair-a"), $("pair-b")]) {
      select.replaceChildren(...task.candidates.map((c, i) => el("option", { value: String(i) }, c.label)));
    }
    state.pairChosen = false;
    $("pair-a").value = "0";
    $("pair-b").value = String(Math.min(1, task.candidates.length - 1));
  }

  // ---- zoom and layout ------------------------------------------------------------------------
  const dpr = () => window.devicePixelRatio || 1;

  // The largest zoom at which w x h image pixels fit in cw x ch CSS pixels: a whole number of device
  // pixels per image pixel when at least 1 fits, else the fractional fit.
  function fitZoom(cw, ch, w, h) {
    const k = Math.min((cw * dpr()) / w, (ch * dpr()) / h);
    return k >= 1 ? Math.floor(k) : k;
  }

  const area = () => $("stage-area");

  // The grid with the largest zoom for n panes (ties: fewer empty cells, then more room); every pane gets the same
  // viewport, the image's size at that zoom (or the cell, if the image is larger).
  function layoutGrid() {
    const task = state.task;
    const n = task.candidates.length + 1;
    const [w, h] = cropSize(task);
    const W = area().clientWidth;
    const H = area().clientHeight;
    let best = null;
    for (let cols = 1; cols <= n; cols++) {
      const rows = Math.ceil(n / cols);
      const cellW = Math.floor((W - GAP * (cols - 1)) / cols) - 2 * BORDER;
      const cellH = Math.floor((H - GAP * (rows - 1)) / rows) - HEAD - 2 * BORDER;
      if (cellH < 24 || (cellW < MIN_PANE && best)) continue;
      const k = fitZoom(cellW, cellH, w, h);
      const room = Math.min(cellW / w, cellH / h); // ties: the layout with more room around the image
      const empty = cols * rows - n;
      const better =
        !best ||
        k > best.k + 1e-9 ||
        (Math.abs(k - best.k) < 1e-9 && (empty < best.empty || (empty === best.empty && room > best.room)));
      if (better) best = { cols, k, cellW, cellH, empty, room };
    }
    const view = state.grid;
    view.vw = Math.min(best.cellW, Math.round((w * best.k) / dpr()));
    view.vh = Math.min(best.cellH, Math.round((h * best.k) / dpr()));
    view.fitK = best.k;
    const paneWidth = paneWidthFor(view.vw, MIN_PANE);
    const rows = Math.ceil(n / best.cols);
    const width = best.cols * (paneWidth + 2 * BORDER) + (best.cols - 1) * GAP;
    const height = rows * (view.vh + HEAD + 2 * BORDER) + (rows - 1) * GAP;
    const grid = $("grid");
    grid.style.setProperty("--cols", String(best.cols));
    grid.style.setProperty("--pane-width", `${paneWidth + 2 * BORDER}px`);
    grid.style.setProperty("--view-width", `${view.vw}px`);
    grid.style.setProperty("--view-height", `${view.vh}px`);
    grid.style.setProperty("--pad-x", `${Math.max(0, Math.floor((W - width) / 2))}px`);
    grid.style.setProperty("--pad-y", `${Math.max(0, Math.floor((H - height) / 2))}px`);
    root.dataset.columns = String(best.cols);
  }

  // A pane at least `least` wide, whose viewport sits centred at a whole pixel (even spare width).
  function paneWidthFor(viewWidth, least) {
    const width = Math.max(viewWidth, least);
    return width + ((width - viewWidth) % 2);
  }

  // The single pane of focus, flicker and compare: as large as the stage allows at a whole zoom.
  function layoutSingle() {
    const [w, h] = cropSize(state.task);
    const controls = state.mode === "focus" ? 0 : 34;
    const W = area().clientWidth - 2 * BORDER;
    const H = area().clientHeight - HEAD - controls - 2 * BORDER;
    const view = state.single;
    view.fitK = fitZoom(W, H, w, h);
    view.vw = Math.min(W, Math.round((w * view.fitK) / dpr()));
    view.vh = Math.min(H, Math.round((h * view.fitK) / dpr()));
    const single = $("single");
    const paneWidth = Math.min(paneWidthFor(view.vw, 520), W - ((W - view.vw) % 2));
    single.style.setProperty("--pane-width", `${paneWidth + 2 * BORDER}px`);
    single.style.setProperty("--view-width", `${view.vw}px`);
    single.style.setProperty("--view-height", `${view.vh}px`);
    single.style.setProperty("--pad-x", `${Math.floor((area().clientWidth - paneWidth - 2 * BORDER) / 2)}px`);
  }

  const currentView = () => (state.mode === "grid" ? state.grid : state.single);
  const currentViewports = () =>
    state.mode === "grid" ? [...$("grid").querySelectorAll(".viewport")] : [$("single-viewport")];

  function fit(view) {
    const [w, h] = cropSize(state.task);
    view.k = view.fitK;
    view.ox = (w - (view.vw * dpr()) / view.k) / 2;
    view.oy = (h - (view.vh * dpr()) / view.k) / 2;
  }

  function fitView() {
    if (!state.task) return;
    fit(currentView());
    applyView();
  }

  // Where the image lies in a viewport, in CSS pixels: its top-left corner (a whole number of device
  // pixels, the same in every pane) and the size of one image pixel.
  function placement(view) {
    const ratio = dpr();
    return {
      x: Math.round(-view.ox * view.k) / ratio,
      y: Math.round(-view.oy * view.k) / ratio,
      s: view.k / ratio,
    };
  }

  function applyView() {
    if (!state.task) return;
    const view = currentView();
    const { x, y, s } = placement(view);
    const transform = `translate(${x}px, ${y}px) scale(${s})`;
    for (const box of currentViewports()) {
      for (const layer of box.querySelectorAll(".layer")) layer.style.transform = transform;
      const region = box.querySelector("g.region");
      region.setAttribute("transform", `translate(${x} ${y}) scale(${s})`);
    }
    root.dataset.zoom = String(Math.round(view.k * 1000) / 1000);
    const k = view.k;
    const word = Number.isInteger(k) ? `${k}×` : `${k.toFixed(2)}×`;
    $("zoom-readout").textContent =
      `Zoom ${word}: 1 image pixel = ${Number.isInteger(k) ? k : k.toFixed(2)} screen pixel${k === 1 ? "" : "s"}`;
    const shrunk = view.fitK < 1 && k < 1;
    $("zoom-note").textContent = shrunk ? "shrunk: larger than the pane (P: 1:1)" : "";
    if (state.mode === "compare") drawSplit();
    drawCrosshair();
  }

  function zoomTo(next, px, py) {
    const view = currentView();
    const k = Math.min(MAX_ZOOM, Math.max(Math.min(view.fitK, 1) / 4, next));
    const ratio = dpr();
    // Keep the image point under (px, py) where it is.
    view.ox += (px * ratio) / view.k - (px * ratio) / k;
    view.oy += (py * ratio) / view.k - (py * ratio) / k;
    view.k = k;
    applyView();
  }

  function zoomStep(direction, px, py) {
    const view = currentView();
    const levels = [...new Set([...LEVELS, view.fitK])].sort((a, b) => a - b);
    const next =
      direction > 0
        ? (levels.find((level) => level > view.k + 1e-9) ?? MAX_ZOOM)
        : ([...levels].reverse().find((level) => level < view.k - 1e-9) ?? levels[0]);
    zoomTo(next, px ?? view.vw / 2, py ?? view.vh / 2);
  }

  const oneToOne = () => zoomTo(1, currentView().vw / 2, currentView().vh / 2);

  function pan(dx, dy) {
    const view = currentView();
    view.ox -= (dx * dpr()) / view.k;
    view.oy -= (dy * dpr()) / view.k;
    applyView();
  }

  let wheelSum = 0;
  function attachPointer(box) {
    box.addEventListener(
      "wheel",
      (event) => {
        event.preventDefault();
        // One zoom level per notch of a mouse wheel; a touchpad's small steps add up to one.
        wheelSum += event.deltaMode === 0 ? event.deltaY : event.deltaY * 40;
        if (Math.abs(wheelSum) < 50) return;
        const rect = box.getBoundingClientRect();
        zoomStep(wheelSum < 0 ? 1 : -1, event.clientX - rect.left, event.clientY - rect.top);
        wheelSum = 0;
      },
      { passive: false },
    );
    box.addEventListener("pointerdown", (event) => {
      if (event.button !== 0) return;
      box.setPointerCapture(event.pointerId);
      let [lastX, lastY] = [event.clientX, event.clientY];
      const move = (e) => {
        pan(e.clientX - lastX, e.clientY - lastY);
        [lastX, lastY] = [e.clientX, e.clientY];
      };
      const up = () => {
        box.removeEventListener("pointermove", move);
        box.removeEventListener("pointerup", up);
        box.removeEventListener("pointercancel", up);
      };
      box.addEventListener("pointermove", move);
      box.addEventListener("pointerup", up);
      box.addEventListener("pointercancel", up);
    });
    box.addEventListener("pointermove", (event) => {
      const rect = box.getBoundingClientRect();
      const view = currentView();
      const ratio = dpr();
      const x = Math.floor(view.ox + ((event.clientX - rect.left) * ratio) / view.k);
      const y = Math.floor(view.oy + ((event.clientY - rect.top) * ratio) / view.k);
      const [w, h] = cropSize(state.task);
      state.pointer = x >= 0 && y >= 0 && x < w && y < h ? { x, y } : null;
      drawCrosshair();
    });
    box.addEventListener("pointerleave", () => {
      state.pointer = null;
      drawCrosshair();
    });
  }

  // The crosshair marks the image pixel under the pointer in every pane: a box around the pixel and
  // lines that stop short of it, one device pixel wide.
  function drawCrosshair() {
    const task = state.task;
    const point = state.crosshair && task ? state.pointer : null;
    $("pixel-readout").textContent = point ? `pixel ${point.x + task.box[0]}, ${point.y + task.box[1]}` : "";
    const view = currentView();
    const { x, y, s } = placement(view);
    const line = 1 / dpr();
    for (const box of currentViewports()) {
      const cross = box.querySelector("g.cross");
      if (!point) {
        cross.replaceChildren();
        continue;
      }
      const left = x + point.x * s;
      const top = y + point.y * s;
      const size = Math.max(s, 5);
      const [bx, by] = [left + s / 2 - size / 2, top + s / 2 - size / 2];
      const [cx, cy] = [left + s / 2, top + s / 2];
      const gap = size / 2 + 4;
      const segments = [
        [0, cy, cx - gap, cy],
        [cx + gap, cy, view.vw, cy],
        [cx, 0, cx, cy - gap],
        [cx, cy + gap, cx, view.vh],
      ];
      cross.replaceChildren(
        svg("rect", { x: bx, y: by, width: size, height: size, "stroke-width": line }),
        ...segments.map(([x1, y1, x2, y2]) => svg("line", { x1, y1, x2, y2, "stroke-width": line })),
      );
    }
  }

  // ---- the region: outline and dimming above the images -------------------------------------------
  function drawRegion() {
    const task = state.task;
    if (!task) return;
    regionOf(task).then((region) => {
      if (state.task !== task) return;
      for (const box of currentViewports()) {
        const path = box.querySelector("path.outline");
        path.setAttribute("d", region && state.outline ? region.path : "");
        path.setAttribute("stroke-width", String(1 / dpr()));
        const dim = box.querySelector("canvas.dim");
        dim.hidden = !(region && state.dim);
        if (region && state.dim && (dim.width !== region.w || dim.height !== region.h || !dim.dataset.drawn)) {
          dim.width = region.w;
          dim.height = region.h;
          dim.getContext("2d").drawImage(region.dim, 0, 0);
          dim.dataset.drawn = "1";
        }
      }
      applyView();
    });
  }

  // ---- showing a task -------------------------------------------------------------------------
  function show(task, restore) {
    const keepFocus = state.mode === "focus";
    leaveMode();
    state.task = task;
    state.phase = "task";
    const draft = restore ?? draftOf(task);
    state.best = draft?.best ?? null;
    state.worst = draft?.worst ?? null;
    state.outcome = draft?.outcome ?? "pick";
    $("content").value = draft?.content ?? "";
    $("defect").value = draft?.defect ?? "";
    state.pointer = null;
    $("message").hidden = true;
    $("grid").hidden = false;
    root.dataset.kind = task.kind;
    $("task-kind").textContent = {
      instance: "Region: judge only what lies inside the outline",
      image: "Whole image: judge everything you see",
      evaluation: "Which of the two is the better super-resolution of the reference? Judge the whole image",
    }[task.kind];
    $("btn-allbad").hidden = reviewing || task.kind === "evaluation";
    buildPanes(task);
    const [w, h] = task.image_size;
    const [x0, y0, x1, y1] = task.box;
    $("thumb").src = thumbUrl(task);
    Object.assign($("thumb-box").style, {
      left: `${(100 * x0) / w}%`,
      top: `${(100 * y0) / h}%`,
      width: `${(100 * (x1 - x0)) / w}%`,
      height: `${(100 * (y1 - y0)) / h}%`,
    });
    $("thumb-caption").textContent =
      task.kind === "instance" ? `Region ${x1 - x0}×${y1 - y0} px of ${w}×${h}` : "Judge the whole image";
    for (const id of ["outline", "dim"]) $(id).disabled = task.kind !== "instance";
    layoutGrid();
    fit(state.grid);
    applyView();
    drawRegion();
    renderChoice();
    if (keepFocus) enterFocus(0);
    state.shownAt = performance.now();
    const images = [...$("grid").querySelectorAll("img"), $("thumb")];
    const preloadedAll = images.every((img) => img.complete);
    Promise.all([...images.map((img) => img.decode().catch(() => null)), regionOf(task)]).then(() => {
      if (state.task !== task) return;
      // Marks for bench/ui.py and the tests: the task is fully drawn from here on.
      root.dataset.shownTask = String(task.id);
      performance.mark("dspo-task-shown", { detail: { task: task.id, preloaded: preloadedAll } });
      if (!state.firstShown) {
        state.firstShown = true;
        performance.mark("dspo-first-task-shown");
      }
    });
    if (document.activeElement && document.activeElement !== document.body) document.activeElement.blur();
  }

  function showMessage(title, text, phase) {
    leaveMode();
    state.task = null;
    state.phase = phase;
    if (phase !== "loading") root.dataset.shownTask = phase; // loading is not a state to wait for
    $("grid").hidden = true;
    $("message").hidden = false;
    $("message-title").textContent = title;
    $("message-text").textContent = text;
  }

  function notify(text) {
    const box = $("notice");
    box.textContent = text;
    box.hidden = !text;
  }

  // ---- choosing -------------------------------------------------------------------------------
  function markBest(i) {
    if (!state.task || i < 0 || i >= state.task.candidates.length) return;
    state.best = i;
    if (state.worst === i) state.worst = null; // worst can never equal best
    if (isPair()) state.worst = 1 - i;
    state.outcome = "pick";
    renderChoice();
  }

  function markWorst(i) {
    if (!state.task || i < 0 || i >= state.task.candidates.length) return;
    state.worst = i;
    if (state.best === i) state.best = null;
    if (isPair()) state.best = 1 - i;
    state.outcome = "pick";
    renderChoice();
  }

  function setOutcome(outcome) {
    if (!state.task || (outcome === "all_bad" && isPair()) || (outcome === "no_pair") !== reviewing) return;
    state.outcome = state.outcome === outcome ? "pick" : outcome;
    renderChoice();
  }

  function renderChoice() {
    const task = state.task;
    if (!task) return;
    const label = (i) => (i === null ? "–" : task.candidates[i].label);
    const chosen = isPair() && state.best !== null ? `Answer: ${label(state.best)} is better` : "Answer: –";
    const text = {
      pick: isPair() ? chosen : `Best: ${label(state.best)} · Worst: ${label(state.worst)}`,
      tie: "Answer: no visible difference",
      all_bad: "Answer: all candidates are bad",
      no_pair: "Decision: no pair (the task gives no record)",
    }[state.outcome];
    $("answer").textContent = state.resume ? `Undo — changing your answer. ${text} (Esc keeps the old one)` : text;
    for (const node of $("grid").querySelectorAll(".pane[data-index]")) {
      const i = Number(node.dataset.index);
      const isBest = state.outcome === "pick" && state.best === i;
      const isWorst = state.outcome === "pick" && state.worst === i;
      node.classList.toggle("best", isBest);
      node.classList.toggle("worst", isWorst);
      node.querySelector(".pick-best").setAttribute("aria-pressed", String(isBest));
      node.querySelector(".pick-worst").setAttribute("aria-pressed", String(isWorst));
    }
    $("btn-tie").setAttribute("aria-pressed", String(state.outcome === "tie"));
    $("btn-allbad").setAttribute("aria-pressed", String(state.outcome === "all_bad"));
    $("btn-nopair")?.setAttribute("aria-pressed", String(state.outcome === "no_pair"));
    const undoable = state.last && Date.now() - state.last.at < UNDO_MS && !state.resume;
    $("btn-undo").disabled = !undoable;
    if (state.mode === "focus") renderFocusHead();
    saveDraft();
  }

  function newId() {
    // crypto.randomUUID needs a secure context; getRandomValues works on plain http too.
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function answer(outcome) {
    const task = state.task;
    const content = $("content").value.trim();
    const defect = $("defect").value.trim();
    if (outcome === "pick" && (state.best === null || state.worst === null)) {
      return notify(
        isPair()
          ? "Press 1 if the left one is better, 2 if the right one, T for no difference or S to skip."
          : "Choose the best (1…) and the worst (Q…) candidate, or press T, A or S.",
      );
    }
    // A blind evaluation answer needs no texts: they describe regions for the dataset.
    if (outcome !== "skip" && requireContent && !content && !isPair()) {
      $("content").focus();
      return notify("This project needs a description of what the region really shows.");
    }
    if (outcome === "pick" && requireDefect && !defect && !isPair()) {
      $("defect").focus();
      return notify("This project needs a description of what is wrong in the worst candidate.");
    }
    const pick = outcome === "pick";
    const body = {
      outcome,
      best_candidate_id: pick ? task.candidates[state.best].id : null,
      worst_candidate_id: pick ? task.candidates[state.worst].id : null,
      content_text: outcome === "skip" ? "" : content,
      defect_text: pick ? defect : "",
      lead_time_ms: Math.round(performance.now() - state.shownAt),
      client_submission_id: newId(),
    };
    if (state.replaces) body.replaces_submission_id = state.replaces;
    return body;
  }

  function submit(outcome = state.outcome) {
    if (!state.task) return;
    if (reviewing) return decide();
    const body = answer(outcome);
    if (!body) return;
    notify("");
    const restore = {
      best: state.best,
      worst: state.worst,
      outcome: outcome === "skip" ? "pick" : outcome,
      content: $("content").value,
      defect: $("defect").value,
    };
    state.last = { task: state.task, body, restore, at: Date.now() };
    forgetDraft(state.task.id);
    enqueue(state.task.id, body);
    advance();
    setTimeout(renderChoice, UNDO_MS + 50);
  }

  function advance() {
    state.replaces = null;
    if (state.resume) {
      const task = state.resume;
      state.resume = null;
      if (task.id) return show(task);
    }
    const next = state.upcoming.shift();
    if (next) return show(next);
    // Nothing preloaded: ask once every answer is in, so the server does not hand back this task.
    showMessage("Loading the next task…", "", "waiting");
    flush();
  }

  function undo() {
    const last = state.last;
    if (!last || Date.now() - last.at > UNDO_MS || state.resume) return notify("Nothing to undo.");
    state.resume = state.task || { id: null };
    state.last = null;
    show(last.task, last.restore);
    state.replaces = last.body.client_submission_id;
    renderChoice();
  }

  function cancelUndo() {
    const task = state.resume;
    state.resume = null;
    state.replaces = null;
    if (task && task.id) show(task);
    else loadCurrent();
  }

  // ---- the review page: every answer beside the viewer, and the decision ----------------------------
  async function loadReview() {
    showMessage("Loading the task…", "", "loading");
    const response = await api("GET", `/api/v1/tasks/${reviewTaskId}/review`);
    if (!response.ok) return showMessage("This task cannot be reviewed", await detail(response), "done");
    const task = await response.json();
    show(task);
    const newest = task.reviews[0];
    if (newest) {
      // Start from the decision in force, so that a second look changes only what it means to.
      const index = (id) => task.candidates.findIndex((c) => c.id === id);
      state.outcome = newest.decision === "pair" ? "pick" : "no_pair";
      state.best = newest.decision === "pair" ? index(newest.best_candidate_id) : null;
      state.worst = newest.decision === "pair" ? index(newest.worst_candidate_id) : null;
      $("content").value = newest.note;
      renderChoice();
    }
    renderReview(task);
  }

  function renderReview(task) {
    const label = (id) => task.candidates.find((c) => c.id === id)?.label ?? "?";
    const said = (a) =>
      a.outcome === "pick"
        ? `best ${label(a.best_candidate_id)}, worst ${label(a.worst_candidate_id)}`
        : { tie: "no difference", all_bad: "all bad", skip: "skipped" }[a.outcome];
    const box = $("review-answers");
    const contested = task.contested ? `Votes disagree: ${task.contested.replaceAll("_", " ")}` : "";
    const why = el("p", { class: "hint" }, contested);
    const table = el("table", { id: "answers" });
    const head = el("tr");
    for (const title of ["who", "answer", "shows", "wrong in worst"]) head.append(el("th", {}, title));
    table.append(head);
    for (const a of task.answers) {
      const row = el("tr", { "data-user": a.username });
      for (const text of [a.username, said(a), a.content_text, a.defect_text]) row.append(el("td", {}, text));
      table.append(row);
    }
    const flags = el("ul", { id: "flags", class: "flags" });
    for (const f of task.flags) flags.append(el("li", {}, `Flagged by ${f.username}: ${f.reason}`));
    const history = el("ul", { id: "review-history", class: "flags" });
    for (const r of task.reviews) {
      const what =
        r.decision === "pair"
          ? `winner ${label(r.best_candidate_id)}, loser ${label(r.worst_candidate_id)}`
          : "no pair";
      const when = new Date(r.created_at).toLocaleString();
      history.append(el("li", {}, `${r.reviewer}, ${when}: ${what}${r.note ? ` (${r.note})` : ""}`));
    }
    box.replaceChildren(why, table, flags, history);
  }

  async function decide() {
    const pick = state.outcome === "pick";
    if (pick && (state.best === null || state.worst === null)) {
      return notify("Choose the winner (1…) and the loser (Q…), or press N: no pair.");
    }
    const body = {
      decision: pick ? "pair" : "no_pair",
      best_candidate_id: pick ? state.task.candidates[state.best].id : null,
      worst_candidate_id: pick ? state.task.candidates[state.worst].id : null,
      note: $("content").value.trim(),
    };
    const response = await api("POST", `/api/v1/tasks/${reviewTaskId}/review`, body);
    if (!response.ok) return notify(`Your decision is not recorded: ${await detail(response)}`);
    notify("Decision recorded: datasets built from now on use it for this task.");
    const refreshed = await api("GET", `/api/v1/tasks/${reviewTaskId}/review`);
    if (refreshed.ok) renderReview(await refreshed.json());
    root.dataset.decided = body.decision;
  }

  // ---- flagging a task for a reviewer (the task page) ------------------------------------------------
  function openFlag() {
    if (!state.task) return;
    $("flag-reason").value = "";
    $("flag-dialog").returnValue = ""; // Esc keeps the last value: a cancel must not read as "flag"
    $("flag-dialog").showModal();
  }

  async function sendFlag() {
    const task = state.task;
    const reason = $("flag-reason").value.trim();
    if ($("flag-dialog").returnValue !== "flag" || !task || !reason) return;
    try {
      const response = await api("POST", `/api/v1/tasks/${task.id}/flag`, { reason });
      notify(
        response.ok
          ? `Task ${task.id} is flagged for a reviewer. Answer or skip it as usual.`
          : `Not flagged: ${await detail(response)}`,
      );
    } catch {
      notify("Not flagged: the server cannot be reached.");
    }
  }

  // ---- focus, flicker and compare: one large pane ---------------------------------------------------
  function pair() {
    let [a, b] = [Number($("pair-a").value), Number($("pair-b").value)];
    if (state.best !== null && state.worst !== null && !state.pairChosen) [a, b] = [state.best, state.worst];
    return [a, b];
  }

  function leaveMode() {
    clearInterval(state.flickerTimer);
    state.flickerTimer = null;
    state.peekFrom = null;
    $("single").hidden = true;
    $("single").classList.remove("best", "worst");
    $("flicker-controls").hidden = true;
    $("compare-controls").hidden = true;
    for (const id of ["btn-focus", "btn-flicker", "btn-compare"]) $(id).setAttribute("aria-pressed", "false");
    if (state.mode !== "grid") {
      state.mode = "grid";
      root.dataset.mode = "grid";
      if (state.task) {
        $("grid").hidden = false;
        applyView();
        drawRegion();
      }
    }
  }

  // Show the single pane with these layers (one image each), fitted to the image at a whole zoom.
  function enterSingle(mode, layers, hint) {
    leaveMode();
    state.mode = mode;
    root.dataset.mode = mode;
    $("grid").hidden = true;
    $("single").hidden = false;
    $(`btn-${mode}`).setAttribute("aria-pressed", "true");
    $("flicker-controls").hidden = mode !== "flicker";
    $("compare-controls").hidden = mode !== "compare";
    const fresh = viewport(layers);
    fresh.id = "single-viewport";
    $("single-viewport").replaceWith(fresh);
    $("single-hint").textContent = hint;
    layoutSingle();
    fit(state.single);
    applyView();
    drawRegion();
  }

  const sourceOf = (index) =>
    index < 0
      ? { url: lqUrl(state.task), label: "LQ", alt: `Low-quality reference, upscaled ${state.lqMethod}` }
      : {
          url: candidateUrl(state.task, state.task.candidates[index]),
          label: state.task.candidates[index].label,
          alt: `Candidate ${state.task.candidates[index].label}`,
        };

  function enterFocus(index) {
    const task = state.task;
    if (!task) return;
    const layers = [-1, ...task.candidates.keys()].map((i) => {
      const source = sourceOf(i);
      const img = layerImage(source.url, source.alt);
      img.dataset.index = String(i);
      return img;
    });
    enterSingle(
      "focus",
      layers,
      "1…9 switch · L reference · hold Space to peek · G best · X worst · V or Esc to leave",
    );
    const strip = $("single-strip");
    strip.replaceChildren(
      ...[-1, ...task.candidates.keys()].map((i) => {
        const button = el("button", { type: "button", "data-index": String(i) }, sourceOf(i).label);
        button.addEventListener("click", () => focusShow(i));
        return button;
      }),
    );
    focusShow(index);
  }

  function toggleFocus() {
    if (!state.task) return;
    if (state.mode === "focus") leaveMode();
    else enterFocus(state.best ?? 0);
  }

  function focusShow(index) {
    if (state.mode !== "focus" || index >= state.task.candidates.length) return;
    state.focusShown = index;
    for (const img of $("single-viewport").querySelectorAll("img.layer")) {
      img.hidden = Number(img.dataset.index) !== index;
    }
    root.dataset.focusShown = sourceOf(index).label;
    renderFocusHead();
  }

  function renderFocusHead() {
    const i = state.focusShown;
    const label = sourceOf(i).label;
    const marks = [];
    if (i >= 0 && state.outcome === "pick" && state.best === i) marks.push("best");
    if (i >= 0 && state.outcome === "pick" && state.worst === i) marks.push("worst");
    $("single-title").textContent = i < 0 ? "LQ reference" : `${label}${marks.length ? ` (${marks.join(", ")})` : ""}`;
    $("single").classList.toggle("best", marks.includes("best"));
    $("single").classList.toggle("worst", marks.includes("worst"));
    for (const button of $("single-strip").querySelectorAll("button")) {
      button.setAttribute("aria-pressed", String(Number(button.dataset.index) === i));
    }
  }

  function peek(down) {
    if (state.mode !== "focus") return;
    if (down && state.peekFrom === null) {
      state.peekFrom = state.focusShown;
      focusShow(-1);
    } else if (!down && state.peekFrom !== null) {
      const back = state.peekFrom;
      state.peekFrom = null;
      focusShow(back);
    }
  }

  function markShown(asBest) {
    if (state.mode !== "focus" || state.focusShown < 0) return;
    (asBest ? markBest : markWorst)(state.focusShown);
  }

  function toggleFlicker() {
    if (!state.task) return;
    if (state.mode === "flicker") return leaveMode();
    const [a, b] = pair().map(sourceOf);
    const layers = [a, b].map((source, i) => {
      const img = layerImage(source.url, source.alt);
      img.dataset.index = String(i);
      return img;
    });
    enterSingle("flicker", layers, "Space swaps by hand · , and . slower / faster · F or Esc to leave");
    $("single-strip").replaceChildren();
    state.flickerIndex = 0;
    state.flickerLabels = [a.label, b.label];
    flickerShow();
    setFlickerAuto(true);
  }

  function flickerShow() {
    for (const img of $("single-viewport").querySelectorAll("img.layer")) {
      img.hidden = Number(img.dataset.index) !== state.flickerIndex % 2;
    }
    const label = state.flickerLabels[state.flickerIndex % 2];
    $("single-title").textContent = `Flicker: showing ${label} (${state.flickerLabels.join(" ⇄ ")})`;
    root.dataset.flickerShown = label;
  }

  function flickerSwap() {
    state.flickerIndex += 1;
    flickerShow();
  }

  function setFlickerAuto(on) {
    clearInterval(state.flickerTimer);
    state.flickerTimer = on ? setInterval(flickerSwap, state.flickerRate) : null;
    state.flickerAuto = on;
    $("btn-flicker-auto").setAttribute("aria-pressed", String(on));
    $("flicker-rate").value = String(state.flickerRate);
  }

  function setFlickerRate(ms) {
    state.flickerRate = ms;
    if (state.mode === "flicker") setFlickerAuto(true);
  }

  function stepFlickerRate(direction) {
    const i = FLICKER_RATES.indexOf(state.flickerRate);
    const next = FLICKER_RATES[Math.max(0, Math.min(FLICKER_RATES.length - 1, i + direction))];
    setFlickerRate(next);
  }

  function toggleCompare() {
    if (!state.task) return;
    if (state.mode === "compare") return leaveMode();
    const [a, b] = pair().map(sourceOf);
    const under = layerImage(b.url, `Candidate ${b.label}, right of the split`);
    under.id = "compare-under";
    const over = layerImage(a.url, `Candidate ${a.label}, left of the split`);
    over.id = "compare-over";
    const split = el("div", { class: "split", id: "compare-split", "aria-hidden": "true" });
    enterSingle("compare", [under, over, split], ", and . move the split · C or Esc to leave");
    $("single-strip").replaceChildren();
    $("single-title").textContent = `Compare: ${a.label} on the left, ${b.label} on the right`;
    setSplit(state.split);
  }

  function setSplit(share) {
    state.split = Math.max(0, Math.min(1, share));
    $("compare-range").value = String(Math.round(state.split * 100));
    drawSplit();
  }

  // The split is a place on the image (a share of its width), drawn in the viewport where that column
  // of the image is; the slider below is as wide as the image on screen.
  function drawSplit() {
    const over = $("compare-over");
    if (!over || state.mode !== "compare") return;
    const view = state.single;
    const [w] = cropSize(state.task);
    const { x, s } = placement(view);
    const at = Math.round((x + state.split * w * s) * dpr()) / dpr();
    // The clip is in the image's own (unscaled) coordinates, since it applies before its transform.
    over.style.clipPath = `inset(0 ${(1 - state.split) * 100}% 0 0)`;
    $("compare-split").style.left = `${Math.max(0, Math.min(view.vw, at))}px`;
    const range = $("compare-range");
    const shownLeft = Math.max(0, x);
    const shownRight = Math.min(view.vw, x + w * s);
    range.style.marginLeft = `${$("single-viewport").offsetLeft + shownLeft}px`;
    range.style.width = `${Math.max(40, shownRight - shownLeft)}px`;
  }

  // ---- view options -----------------------------------------------------------------------------
  function refreshImages() {
    const task = state.task;
    if (!task) return;
    const mode = state.mode;
    const view = { ...state.grid };
    leaveMode();
    buildPanes(task);
    layoutGrid();
    Object.assign(state.grid, { k: view.k, ox: view.ox, oy: view.oy });
    applyView();
    drawRegion();
    renderChoice();
    if (mode === "focus") enterFocus(state.focusShown);
  }

  function toggleOutline() {
    if (!state.task || state.task.kind !== "instance") return;
    state.outline = !state.outline;
    $("outline").checked = state.outline;
    drawRegion();
  }

  function toggleDim() {
    if (!state.task || state.task.kind !== "instance") return;
    state.dim = !state.dim;
    $("dim").checked = state.dim;
    drawRegion();
  }

  function toggleCrosshair() {
    state.crosshair = !state.crosshair;
    $("crosshair").checked = state.crosshair;
    drawCrosshair();
  }

  function setLqMethod(method) {
    state.lqMethod = method;
    $("lq-method").value = method;
    refreshImages();
    state.upcoming.forEach(preload);
  }

  function focusText(id) {
    $(id).focus();
  }

  // ---- progress ---------------------------------------------------------------------------------
  async function refreshProgress() {
    const midnight = new Date();
    midnight.setHours(0, 0, 0, 0);
    try {
      const url = `/api/v1/projects/${projectId}/progress?since=${encodeURIComponent(midnight.toISOString())}`;
      const response = await api("GET", url);
      if (!response.ok) return;
      const p = await response.json();
      const pace = p.ms_per_task === null ? "–" : `${(p.ms_per_task / 1000).toFixed(1)} s`;
      $("progress").textContent =
        `Done today: ${p.done_today} · Left for you: ${p.left_for_you} · ` +
        `Project needs ${p.votes_left} more answers · ${pace} per task`;
    } catch {
      // Progress is informative only; the pending box already says when the server is away.
    }
  }

  // ---- the key map: the one place that says what each key does (the help is drawn from it) ----------
  const digit = (event) => {
    const match = /^Digit([1-9])$/.exec(event.code);
    return match ? Number(match[1]) - 1 : null;
  };
  const key = (event) => event.key.toLowerCase();
  const plain = (event) => !event.shiftKey;
  const stepOf = (event) => (event.shiftKey ? 0.5 : 0.1);
  const EVERYWHERE = ["grid", "focus", "flicker", "compare"];
  const PAGE = reviewing ? "review" : "annotate";

  // An entry with `only` belongs to the task page ("annotate") or to the review page ("review").
  const KEYMAP = [
    {
      id: "best",
      keys: "1 … 9",
      modes: ["grid", "flicker", "compare"],
      does: "mark candidate A, B, C … as the best",
      match: (e) => plain(e) && digit(e) !== null,
      run: (e) => markBest(digit(e)),
    },
    {
      id: "show",
      keys: "1 … 9",
      modes: ["focus"],
      does: "show candidate A, B, C … in the pane",
      match: (e) => plain(e) && digit(e) !== null,
      run: (e) => focusShow(digit(e)),
    },
    {
      id: "worst",
      keys: "Q W E R Y U I O, or Shift + 1 … 9",
      modes: EVERYWHERE,
      does: "mark candidate A, B, C … as the worst (never the one marked best)",
      match: (e) =>
        (e.shiftKey && digit(e) !== null) || (plain(e) && WORST_KEYS.includes(key(e)) && e.key.length === 1),
      run: (e) => markWorst(e.shiftKey ? digit(e) : WORST_KEYS.indexOf(key(e))),
    },
    {
      id: "tie",
      only: "annotate",
      keys: "T",
      modes: EVERYWHERE,
      does: "no visible difference (again: undo)",
      match: (e) => key(e) === "t",
      run: () => setOutcome("tie"),
    },
    {
      id: "all-bad",
      only: "annotate",
      keys: "A",
      modes: EVERYWHERE,
      does: "all candidates are bad (again: undo)",
      match: (e) => key(e) === "a",
      run: () => setOutcome("all_bad"),
    },
    {
      id: "submit",
      keys: "Enter",
      modes: EVERYWHERE,
      does: "submit the answer (also right after a mouse click)",
      match: (e) => e.key === "Enter",
      run: () => submit(),
    },
    {
      id: "skip",
      only: "annotate",
      keys: "S",
      modes: EVERYWHERE,
      does: "skip this task",
      match: (e) => key(e) === "s",
      run: () => submit("skip"),
    },
    {
      id: "undo",
      only: "annotate",
      keys: "Z",
      modes: EVERYWHERE,
      does: "undo the last submission (within 30 s)",
      match: (e) => key(e) === "z",
      run: () => undo(),
    },
    {
      id: "escape",
      keys: "Esc",
      modes: EVERYWHERE,
      does: "leave focus, flicker or compare; cancel an undo; leave a text field; close the help",
      match: (e) => e.key === "Escape",
      run: () => (state.mode !== "grid" ? leaveMode() : state.resume && cancelUndo()),
    },
    {
      id: "zoom-in",
      keys: "+ or =",
      modes: EVERYWHERE,
      does: "zoom in one step (wheel: at the pointer)",
      match: (e) => e.key === "+" || e.key === "=",
      run: () => zoomStep(1),
    },
    {
      id: "zoom-out",
      keys: "−",
      modes: EVERYWHERE,
      does: "zoom out one step",
      match: (e) => e.key === "-",
      run: () => zoomStep(-1),
    },
    {
      id: "fit",
      keys: "0",
      modes: EVERYWHERE,
      does: "fit: the largest whole zoom that shows the whole region",
      match: (e) => plain(e) && e.code === "Digit0",
      run: () => fitView(),
    },
    {
      id: "one-to-one",
      keys: "P",
      modes: EVERYWHERE,
      does: "1:1, one image pixel per screen pixel",
      match: (e) => key(e) === "p",
      run: () => oneToOne(),
    },
    {
      id: "pan",
      keys: "← → ↑ ↓",
      modes: EVERYWHERE,
      does: "pan (Shift: faster); drag with the mouse",
      match: (e) => e.key.startsWith("Arrow"),
      run: (e) => {
        const { vw, vh } = currentView();
        const step = stepOf(e);
        const moves = {
          ArrowLeft: [vw * step, 0],
          ArrowRight: [-vw * step, 0],
          ArrowUp: [0, vh * step],
          ArrowDown: [0, -vh * step],
        };
        pan(...moves[e.key]);
      },
    },
    {
      id: "focus",
      keys: "V",
      modes: EVERYWHERE,
      does: "focus: one large pane, candidates switched in place",
      match: (e) => key(e) === "v",
      run: () => toggleFocus(),
    },
    {
      id: "reference",
      keys: "L",
      modes: EVERYWHERE,
      does: "show the LQ reference in the focus pane",
      match: (e) => key(e) === "l",
      run: () => (state.mode === "focus" ? focusShow(-1) : enterFocus(-1)),
    },
    {
      id: "peek",
      keys: "Space (hold)",
      modes: ["focus"],
      does: "show the LQ reference while held",
      match: (e) => e.key === " ",
      run: (e) => !e.repeat && peek(true),
    },
    {
      id: "best-shown",
      keys: "G",
      modes: ["focus"],
      does: "mark the candidate shown as the best",
      match: (e) => key(e) === "g",
      run: () => markShown(true),
    },
    {
      id: "worst-shown",
      keys: "X",
      modes: ["focus"],
      does: "mark the candidate shown as the worst",
      match: (e) => key(e) === "x",
      run: () => markShown(false),
    },
    {
      id: "flicker",
      keys: "F",
      modes: EVERYWHERE,
      does: "flicker between the best and worst marked (or the pair chosen)",
      match: (e) => key(e) === "f",
      run: () => toggleFlicker(),
    },
    {
      id: "swap",
      keys: "Space",
      modes: ["flicker"],
      does: "swap by hand (stops the automatic flicker)",
      match: (e) => e.key === " ",
      run: () => {
        setFlickerAuto(false);
        flickerSwap();
      },
    },
    {
      id: "rate",
      keys: ", and .",
      modes: ["flicker"],
      does: "flicker slower / faster",
      match: (e) => e.key === "," || e.key === ".",
      run: (e) => stepFlickerRate(e.key === "," ? 1 : -1),
    },
    {
      id: "compare",
      keys: "C",
      modes: EVERYWHERE,
      does: "compare the same pair with a slider over the image",
      match: (e) => key(e) === "c",
      run: () => toggleCompare(),
    },
    {
      id: "split",
      keys: ", and .",
      modes: ["compare"],
      does: "move the split left / right",
      match: (e) => e.key === "," || e.key === ".",
      run: (e) => setSplit(state.split + (e.key === "," ? -0.05 : 0.05)),
    },
    {
      id: "outline",
      keys: "M",
      modes: EVERYWHERE,
      does: "the region's outline on / off",
      match: (e) => plain(e) && key(e) === "m",
      run: () => toggleOutline(),
    },
    {
      id: "dim",
      keys: "Shift + M",
      modes: EVERYWHERE,
      does: "dim what lies outside the region on / off",
      match: (e) => e.shiftKey && key(e) === "m",
      run: () => toggleDim(),
    },
    {
      id: "crosshair",
      keys: "K",
      modes: EVERYWHERE,
      does: "crosshair on / off: the pixel under the pointer, in every pane",
      match: (e) => key(e) === "k",
      run: () => toggleCrosshair(),
    },
    {
      id: "lq-method",
      keys: "B",
      modes: EVERYWHERE,
      does: "reference upscaled bicubic or nearest",
      match: (e) => key(e) === "b",
      run: () => setLqMethod(state.lqMethod === "bicubic" ? "nearest" : "bicubic"),
    },
    {
      id: "content",
      keys: "D",
      modes: EVERYWHERE,
      does: reviewing
        ? "type a note on your decision (Enter records it)"
        : "type what the region really shows (Enter submits)",
      match: (e) => plain(e) && key(e) === "d",
      run: () => focusText("content"),
    },
    {
      id: "defect",
      only: "annotate",
      keys: "Shift + D",
      modes: EVERYWHERE,
      does: "type what is wrong in the worst (Enter submits)",
      match: (e) => e.shiftKey && key(e) === "d",
      run: () => focusText("defect"),
    },
    {
      id: "flag",
      only: "annotate",
      keys: "N",
      modes: EVERYWHERE,
      does: "flag this task for a reviewer, with a short reason",
      match: (e) => key(e) === "n",
      run: () => openFlag(),
    },
    {
      id: "no-pair",
      only: "review",
      keys: "N",
      modes: EVERYWHERE,
      does: "no pair: the task gives no record (again: undo)",
      match: (e) => key(e) === "n",
      run: () => setOutcome("no_pair"),
    },
    {
      id: "help",
      keys: "H",
      modes: EVERYWHERE,
      does: "the project's instructions and these keys",
      match: (e) => key(e) === "h",
      run: () => openHelp(),
    },
  ].filter((entry) => !entry.only || entry.only === PAGE);

  function renderHelp() {
    const where = (modes) => (modes.length === EVERYWHERE.length ? "everywhere" : modes.join(", "));
    $("help-keys").replaceChildren(
      ...KEYMAP.map((entry) => {
        const row = el("tr", { "data-key": entry.id });
        row.append(el("th", {}, entry.keys), el("td", {}, where(entry.modes)), el("td", {}, entry.does));
        return row;
      }),
    );
  }

  function openHelp() {
    $("help").showModal();
    $("help").scrollTop = 0; // the focused Close button is at the end; the instructions come first
  }

  function onKey(event) {
    if (document.querySelector("dialog[open]") || event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target.matches("input[type=text]")) {
      if (event.key === "Enter") {
        event.preventDefault();
        submit();
      } else if (event.key === "Escape") target.blur();
      return;
    }
    // A button or link reached with Tab keeps Enter and Space (a mouse click never focuses one, see
    // keepFocusOffButtons), so after a click Enter submits.
    if (target.closest("button, a, summary") && (event.key === "Enter" || event.key === " ")) return;
    if (event.key.startsWith("Arrow") && target.matches("select, input[type=range]")) return;
    const entry = KEYMAP.find((e) => e.modes.includes(state.mode) && e.match(event));
    if (!entry) return;
    event.preventDefault();
    entry.run(event);
  }

  function onKeyUp(event) {
    if (event.key === " " && state.mode === "focus") peek(false);
  }

  // A mouse click leaves no focus behind, so the keys (Enter first) go on working on the page:
  // buttons are not focused by a press, other controls give their focus back once used.
  function keepFocusOffButtons(event) {
    if (event.target.closest("button, summary")) event.preventDefault();
  }

  function dropMouseFocus(event) {
    const control = event.target.closest("input[type=checkbox], input[type=range]");
    if (control && event.detail > 0) setTimeout(() => control.blur());
  }

  // ---- wiring -----------------------------------------------------------------------------------
  document.addEventListener("keydown", onKey);
  document.addEventListener("keyup", onKeyUp);
  document.addEventListener("mousedown", keepFocusOffButtons, true);
  document.addEventListener("click", dropMouseFocus, true);
  for (const id of ["lq-method", "pair-a", "pair-b", "flicker-rate", "compare-range"]) {
    $(id).addEventListener("change", () => $(id).blur());
  }
  $("btn-tie").addEventListener("click", () => setOutcome("tie"));
  $("btn-allbad").addEventListener("click", () => setOutcome("all_bad"));
  $("btn-skip").addEventListener("click", () => submit("skip"));
  $("btn-submit").addEventListener("click", () => submit());
  $("btn-undo").addEventListener("click", () => undo());
  $("btn-zoom-in").addEventListener("click", () => zoomStep(1));
  $("btn-zoom-out").addEventListener("click", () => zoomStep(-1));
  $("btn-fit").addEventListener("click", () => fitView());
  $("btn-pixels").addEventListener("click", () => oneToOne());
  $("btn-focus").addEventListener("click", () => toggleFocus());
  $("btn-flicker").addEventListener("click", () => toggleFlicker());
  $("btn-compare").addEventListener("click", () => toggleCompare());
  $("btn-flicker-swap").addEventListener("click", () => {
    setFlickerAuto(false);
    flickerSwap();
  });
  $("btn-flicker-auto").addEventListener("click", () => setFlickerAuto(!state.flickerAuto));
  $("flicker-rate").addEventListener("change", (event) => setFlickerRate(Number(event.target.value)));
  $("btn-help").addEventListener("click", () => openHelp());
  $("btn-nopair")?.addEventListener("click", () => setOutcome("no_pair"));
  $("btn-flag")?.addEventListener("click", () => openFlag());
  $("flag-dialog")?.addEventListener("close", () => sendFlag());
  $("outline").addEventListener("change", () => toggleOutline());
  $("dim").addEventListener("change", () => toggleDim());
  $("crosshair").addEventListener("change", () => toggleCrosshair());
  $("lq-method").addEventListener("change", (event) => setLqMethod(event.target.value));
  $("compare-range").addEventListener("input", (event) => setSplit(Number(event.target.value) / 100));
  for (const id of ["pair-a", "pair-b"]) $(id).addEventListener("change", () => (state.pairChosen = true));
  for (const id of ["content", "defect"]) $(id).addEventListener("input", () => saveDraft());
  new ResizeObserver(() => {
    if (!state.task) return;
    if (state.mode === "grid") {
      layoutGrid();
      fit(state.grid);
    } else {
      layoutSingle();
      fit(state.single);
    }
    applyView();
  }).observe(area());

  renderHelp();
  if (reviewing) {
    loadReview();
  } else {
    renderPending();
    showMessage("Loading…", "", "waiting");
    // Answers left from an earlier visit go first; once they are in, onDrained loads the task.
    flush();
  }
})();
