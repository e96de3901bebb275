// The annotation page: Best-of-N / Worst-of-N on one screen, synchronised zoom, keyboard first, and
// no lost work (answers wait in localStorage until the server acknowledged them).
// User text only ever reaches the page through textContent or form values, never innerHTML.
"use strict";

(() => {
  const root = document.getElementById("workspace");
  const $ = (id) => document.getElementById(id);
  const projectId = Number(root.dataset.project);
  const requireContent = root.dataset.requireContent === "true";
  const requireDefect = root.dataset.requireDefect === "true";
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const QUEUE_KEY = `dspo.pending.${root.dataset.user}`; // per user: a shared browser keeps them apart
  const BEST_KEYS = "123456789";
  const WORST_KEYS = "qweryuiop"; // the row under the digits, without T (= tie)
  const UNDO_MS = 30000; // the server accepts a replacement for 10 minutes, so a queued one still goes in
  const FLICKER_MS = 450;
  const MAX_ZOOM = 64;
  const PRELOAD = 2; // two, so that one slow image render on the server does not reach the screen

  const state = {
    task: null, // the task on screen
    upcoming: [], // the next tasks, leased and preloaded (PRELOAD of them)
    resume: null, // during an undo: the task to come back to
    replaces: null, // during an undo: the submission id being replaced
    last: null, // {task, body, at}: what Z can undo
    shownAt: 0,
    best: null,
    worst: null,
    outcome: "pick",
    view: { s: 1, ox: 0, oy: 0 },
    fit: 1,
    lqMethod: "bicubic",
    outline: true,
    mode: "waiting", // until the first task is on screen
    flickerTimer: null,
    flickerIndex: 0,
    split: 50,
    blocked: "", // why the queue cannot be sent (login expired): retrying would not help
    firstShown: false,
    answered: 0, // answers given on this page, to notice one given while a request was out
  };
  const preloaded = new Map(); // url -> HTMLImageElement: keeps preloaded images alive in memory

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

  async function fetchTask(position) {
    const response = await api("POST", `/api/v1/projects/${projectId}/next?position=${position}`);
    if (response.status === 204) return null;
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
  const dropFromQueue = (id) =>
    saveQueue(loadQueue().filter((item) => item.body.client_submission_id !== id));

  let flushing = null;
  let retryTimer = null;
  let retryDelay = 1000;

  function enqueue(taskId, body) {
    state.answered += 1;
    saveQueue([...loadQueue(), { task_id: taskId, body }]);
    flush();
  }

  function scheduleRetry(why) {
    renderPending(why);
    if (retryTimer) return;
    retryTimer = setTimeout(() => {
      retryTimer = null;
      flush();
    }, retryDelay);
    retryDelay = Math.min(retryDelay * 2, 8000);
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
        if (response.ok) {
          dropFromQueue(item.body.client_submission_id);
          retryDelay = 1000;
          continue;
        }
        if (response.status >= 500 || response.status === 408 || response.status === 429) {
          scheduleRetry(`the server answered ${response.status}`);
          return false;
        }
        if (response.status === 401 || response.status === 403) {
          state.blocked = await detail(response);
          renderPending();
          return false;
        }
        // Any other refusal is final (e.g. the task was filled meanwhile): say so and go on.
        dropFromQueue(item.body.client_submission_id);
        notify(`Task ${item.task_id}: your answer was not recorded: ${await detail(response)}`);
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
    const reason = state.blocked
      ? `${state.blocked} — log in again, then reload this page; they are kept here`
      : `${why || "sending"}; retrying`;
    box.textContent = `${n} answer${n === 1 ? "" : "s"} saved in this browser, not yet sent (${reason}).`;
  }

  window.addEventListener("online", () => flush());
  window.addEventListener("storage", (event) => event.key === QUEUE_KEY && renderPending());

  // Called whenever every answer has been acknowledged: the server's lease queue now matches the
  // screen, so it is safe to ask for the next task or the one after it.
  async function onDrained() {
    refreshProgress();
    if (state.mode === "waiting") return loadCurrent();
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
    showMessage("Loading the next task…", "");
    state.mode = "loading";
    try {
      const task = await fetchTask(0);
      if (task) show(task);
      else showMessage("Nothing left for you", "You have answered every task of this project that needs you.", "done");
    } catch {
      state.mode = "waiting";
      showMessage(
        "Waiting for the server",
        "The next task cannot be fetched right now. Your answers are kept in this browser.",
        "waiting",
      );
      setTimeout(() => state.mode === "waiting" && flush(), 3000);
      return;
    }
    if (state.task) prefetchUpcoming();
  }

  // ---- images ---------------------------------------------------------------------------------
  const lqUrl = (task) => `${task.lq_url}?method=${state.lqMethod}`;
  const candidateUrl = (task, c) =>
    task.kind === "instance" && !state.outline ? `${c.image_url}?outline=false` : c.image_url;
  const thumbUrl = (task) => `/api/v1/images/sources/${task.source_id}/lq`;

  function preload(task) {
    const urls = [lqUrl(task), thumbUrl(task), ...task.candidates.map((c) => candidateUrl(task, c))];
    return Promise.all(
      urls.map((url) => {
        let image = preloaded.get(url);
        if (!image) {
          image = new Image();
          image.src = url;
          preloaded.set(url, image);
          if (preloaded.size > 200) preloaded.delete(preloaded.keys().next().value);
        }
        return image.decode().catch(() => null);
      }),
    );
  }

  // ---- building the panes ---------------------------------------------------------------------
  function el(tag, attrs = {}, text = "") {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    if (text) node.textContent = text;
    return node;
  }

  function pane(title, image, alt, candidateIndex) {
    const box = el("div", { class: "pane" });
    const head = el("div", { class: "pane-head" });
    head.append(el("span", { class: "label" }, title));
    if (candidateIndex !== undefined) {
      const best = el("button", { type: "button", class: "pick-best", "aria-pressed": "false" });
      best.textContent = `Best (${BEST_KEYS[candidateIndex] || "–"})`;
      best.addEventListener("click", () => markBest(candidateIndex));
      const worst = el("button", { type: "button", class: "pick-worst", "aria-pressed": "false" });
      worst.textContent = `Worst (${(WORST_KEYS[candidateIndex] || "–").toUpperCase()})`;
      worst.addEventListener("click", () => markWorst(candidateIndex));
      head.append(best, worst);
      box.dataset.index = candidateIndex;
    }
    const viewport = el("div", { class: "viewport" });
    const img = el("img", { class: "view", alt, draggable: "false", src: image });
    viewport.append(img);
    box.append(head, viewport);
    return box;
  }

  // The column count that draws the crop largest in the stage (every pane shows the same view).
  function bestColumns(n, task) {
    const stage = document.querySelector(".stage");
    const [x0, y0, x1, y1] = task.box;
    let best = [0, 1];
    for (let cols = 1; cols <= n; cols++) {
      const rows = Math.ceil(n / cols);
      const scale = Math.min(stage.clientWidth / cols / (x1 - x0), (stage.clientHeight / rows - 30) / (y1 - y0));
      if (scale > best[0]) best = [scale, cols];
    }
    return best[1];
  }

  function buildPanes(task) {
    const grid = $("grid");
    const panes = [pane(`LQ reference (${state.lqMethod})`, lqUrl(task), `Low-quality reference, upscaled ${state.lqMethod}`)];
    panes[0].classList.add("reference");
    task.candidates.forEach((c, i) => {
      panes.push(pane(`Candidate ${c.label}`, candidateUrl(task, c), `Candidate ${c.label}`, i));
    });
    grid.style.setProperty("--cols", String(bestColumns(panes.length, task)));
    grid.replaceChildren(...panes);
    for (const viewport of grid.querySelectorAll(".viewport")) attachPanZoom(viewport);

    for (const select of [$("pair-a"), $("pair-b")]) {
      select.replaceChildren(...task.candidates.map((c, i) => el("option", { value: String(i) }, c.label)));
    }
    pairChosen = false;
    $("pair-a").value = "0";
    $("pair-b").value = String(Math.min(1, task.candidates.length - 1));
  }

  function show(task, restore) {
    stopModes();
    state.task = task;
    state.best = restore?.best ?? null;
    state.worst = restore?.worst ?? null;
    state.outcome = restore?.outcome ?? "pick";
    $("content").value = restore?.content ?? "";
    $("defect").value = restore?.defect ?? "";
    $("message").hidden = true;
    $("grid").hidden = false;
    state.mode = "grid";
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
      task.kind === "image" ? "Judge the whole image" : `Region ${x1 - x0}×${y1 - y0} px of ${w}×${h}`;
    $("outline").disabled = task.kind !== "instance";
    fitView();
    renderChoice();
    state.shownAt = performance.now();
    const images = [...$("grid").querySelectorAll("img"), $("thumb")];
    const preloadedAll = images.every((img) => img.complete);
    Promise.all(images.map((img) => img.decode().catch(() => null))).then(() => {
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

  function showMessage(title, text, mode) {
    stopModes();
    if (mode) {
      state.task = null;
      state.mode = mode;
      root.dataset.shownTask = mode;
    }
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
    if (!state.task || i >= state.task.candidates.length) return;
    state.best = i;
    if (state.worst === i) state.worst = null; // worst can never equal best
    state.outcome = "pick";
    renderChoice();
  }

  function markWorst(i) {
    if (!state.task || i >= state.task.candidates.length) return;
    state.worst = i;
    if (state.best === i) state.best = null;
    state.outcome = "pick";
    renderChoice();
  }

  function setOutcome(outcome) {
    if (!state.task) return;
    state.outcome = state.outcome === outcome ? "pick" : outcome;
    renderChoice();
  }

  function renderChoice() {
    const task = state.task;
    if (!task) return;
    const label = (i) => (i === null ? "–" : task.candidates[i].label);
    const text = {
      pick: `Best: ${label(state.best)} · Worst: ${label(state.worst)}`,
      tie: "Answer: no visible difference",
      all_bad: "Answer: all candidates are bad",
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
    const undoable = state.last && Date.now() - state.last.at < UNDO_MS && !state.resume;
    $("btn-undo").disabled = !undoable;
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
      return notify("Choose the best (1…) and the worst (Q…) candidate, or press T, A or S.");
    }
    if (outcome !== "skip" && requireContent && !content) {
      $("content").focus();
      return notify("This project needs a description of what the region really shows.");
    }
    if (outcome === "pick" && requireDefect && !defect) {
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

  // ---- zoom and pan, one view for every pane ---------------------------------------------------
  function viewportSize() {
    const viewport = document.querySelector("#grid:not([hidden]) .viewport, .mode:not([hidden]) .viewport");
    return viewport ? [viewport.clientWidth || 1, viewport.clientHeight || 1] : [1, 1];
  }

  function applyView() {
    const { s, ox, oy } = state.view;
    const transform = `translate(${-ox * s}px, ${-oy * s}px) scale(${s})`;
    for (const img of document.querySelectorAll("img.view")) img.style.transform = transform;
    root.dataset.zoom = s.toFixed(3);
  }

  function fitView() {
    if (!state.task) return;
    const [vw, vh] = viewportSize();
    const [x0, y0, x1, y1] = state.task.box;
    const [w, h] = [x1 - x0, y1 - y0];
    const s = Math.min(vw / w, vh / h);
    state.fit = s;
    state.view = { s, ox: (w - vw / s) / 2, oy: (h - vh / s) / 2 };
    applyView();
  }

  function zoomAt(factor, px, py) {
    const { s, ox, oy } = state.view;
    const next = Math.min(MAX_ZOOM, Math.max(state.fit / 4, s * factor));
    // Keep the image point under (px, py) where it is.
    state.view = { s: next, ox: ox + px / s - px / next, oy: oy + py / s - py / next };
    applyView();
  }

  function zoomCentre(factor) {
    const [vw, vh] = viewportSize();
    zoomAt(factor, vw / 2, vh / 2);
  }

  function pan(dx, dy) {
    state.view.ox -= dx / state.view.s;
    state.view.oy -= dy / state.view.s;
    applyView();
  }

  function attachPanZoom(viewport) {
    viewport.addEventListener(
      "wheel",
      (event) => {
        event.preventDefault();
        const rect = viewport.getBoundingClientRect();
        zoomAt(Math.exp(-event.deltaY * 0.002), event.clientX - rect.left, event.clientY - rect.top);
      },
      { passive: false },
    );
    viewport.addEventListener("pointerdown", (event) => {
      if (event.button !== 0) return;
      viewport.setPointerCapture(event.pointerId);
      let [lastX, lastY] = [event.clientX, event.clientY];
      const move = (e) => {
        pan(e.clientX - lastX, e.clientY - lastY);
        [lastX, lastY] = [e.clientX, e.clientY];
      };
      const up = () => {
        viewport.removeEventListener("pointermove", move);
        viewport.removeEventListener("pointerup", up);
        viewport.removeEventListener("pointercancel", up);
      };
      viewport.addEventListener("pointermove", move);
      viewport.addEventListener("pointerup", up);
      viewport.addEventListener("pointercancel", up);
    });
  }

  // ---- flicker and slider compare ---------------------------------------------------------------
  let pairChosen = false; // the annotator picked the pair by hand: keep it

  function pair() {
    const c = state.task.candidates;
    let [a, b] = [Number($("pair-a").value), Number($("pair-b").value)];
    if (state.best !== null && state.worst !== null && state.mode === "grid" && !pairChosen) {
      [a, b] = [state.best, state.worst];
    }
    return [c[a], c[b]];
  }

  function stopModes() {
    clearInterval(state.flickerTimer);
    state.flickerTimer = null;
    $("flicker").hidden = true;
    $("compare").hidden = true;
    $("btn-flicker").setAttribute("aria-pressed", "false");
    $("btn-compare").setAttribute("aria-pressed", "false");
    if (state.mode === "flicker" || state.mode === "compare") {
      state.mode = "grid";
      $("grid").hidden = false;
    }
  }

  // Flicker and compare show two candidates in place of the grid; pressing a mode's key again leaves it.
  // Returns the pair to show, or null when the mode was left (or there is no task).
  function enterMode(mode) {
    if (!state.task) return null;
    if (state.mode === mode) {
      stopModes();
      return null;
    }
    const shown = pair();
    stopModes();
    state.mode = mode;
    $("grid").hidden = true;
    $(mode).hidden = false;
    $(`btn-${mode}`).setAttribute("aria-pressed", "true");
    return shown;
  }

  function toggleFlicker() {
    const shown = enterMode("flicker");
    if (!shown) return;
    const [a, b] = shown;
    const img = $("flicker-img");
    const flip = () => {
      const c = state.flickerIndex++ % 2 === 0 ? a : b;
      img.src = candidateUrl(state.task, c);
      img.alt = `Candidate ${c.label}`;
      $("flicker-label").textContent = `Candidate ${c.label}`;
    };
    flip();
    state.flickerTimer = setInterval(flip, FLICKER_MS);
    applyView();
  }

  function toggleCompare() {
    const shown = enterMode("compare");
    if (!shown) return;
    const [a, b] = shown;
    $("compare-over").src = candidateUrl(state.task, a);
    $("compare-over").alt = `Candidate ${a.label}, left of the split`;
    $("compare-under").src = candidateUrl(state.task, b);
    $("compare-under").alt = `Candidate ${b.label}, right of the split`;
    $("compare-left").textContent = a.label;
    $("compare-right").textContent = b.label;
    setSplit(state.split);
    applyView();
  }

  function setSplit(percent) {
    state.split = Math.max(0, Math.min(100, percent));
    $("compare-range").value = String(state.split);
    $("compare-clip").style.clipPath = `inset(0 ${100 - state.split}% 0 0)`;
    $("compare-split").style.left = `${state.split}%`;
  }

  // ---- view options -----------------------------------------------------------------------------
  function refreshImages() {
    const task = state.task;
    if (!task) return;
    const view = state.view;
    buildPanes(task);
    state.view = view;
    applyView();
    renderChoice();
  }

  function toggleOutline() {
    if (!state.task || state.task.kind !== "instance") return;
    state.outline = !state.outline;
    $("outline").checked = state.outline;
    refreshImages();
  }

  function setLqMethod(method) {
    state.lqMethod = method;
    $("lq-method").value = method;
    refreshImages();
    state.upcoming.forEach(preload);
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

  // ---- keyboard ---------------------------------------------------------------------------------
  function onKey(event) {
    if ($("help").open || event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target.matches("input[type=text]")) {
      if (event.key === "Enter") {
        event.preventDefault();
        submit();
      } else if (event.key === "Escape") target.blur();
      return;
    }
    // Enter and Space press a focused control; arrows move within a select or slider.
    if ((event.key === "Enter" || event.key === " ") && target.closest("button, select, a, input, summary")) return;
    if (event.key.startsWith("Arrow") && target.matches("select, input[type=range]")) return;
    const key = event.key.toLowerCase();
    const digit = /^Digit([1-9])$/.exec(event.code);
    const step = event.shiftKey ? 0.5 : 0.1;
    const [vw, vh] = viewportSize();
    const actions = {
      enter: () => submit(),
      t: () => setOutcome("tie"),
      a: () => setOutcome("all_bad"),
      s: () => submit("skip"),
      z: () => undo(),
      escape: () => state.resume && cancelUndo(),
      "+": () => zoomCentre(1.5),
      "=": () => zoomCentre(1.5),
      "-": () => zoomCentre(1 / 1.5),
      0: () => fitView(),
      p: () => zoomCentre(1 / state.view.s),
      arrowleft: () => pan(vw * step, 0),
      arrowright: () => pan(-vw * step, 0),
      arrowup: () => pan(0, vh * step),
      arrowdown: () => pan(0, -vh * step),
      f: () => toggleFlicker(),
      c: () => toggleCompare(),
      ",": () => state.mode === "compare" && setSplit(state.split - 5),
      ".": () => state.mode === "compare" && setSplit(state.split + 5),
      m: () => toggleOutline(),
      b: () => setLqMethod(state.lqMethod === "bicubic" ? "nearest" : "bicubic"),
      h: () => $("help").showModal(),
      d: () => $(event.shiftKey ? "defect" : "content").focus(),
    };
    let action = actions[key];
    if (digit && event.shiftKey) action = () => markWorst(Number(digit[1]) - 1);
    else if (BEST_KEYS.includes(key)) action = () => markBest(BEST_KEYS.indexOf(key));
    else if (WORST_KEYS.includes(key) && key.length === 1) action = () => markWorst(WORST_KEYS.indexOf(key));
    if (!action) return;
    event.preventDefault();
    action();
  }

  // ---- wiring -----------------------------------------------------------------------------------
  document.addEventListener("keydown", onKey);
  $("btn-tie").addEventListener("click", () => setOutcome("tie"));
  $("btn-allbad").addEventListener("click", () => setOutcome("all_bad"));
  $("btn-skip").addEventListener("click", () => submit("skip"));
  $("btn-submit").addEventListener("click", () => submit());
  $("btn-undo").addEventListener("click", () => undo());
  $("btn-zoom-in").addEventListener("click", () => zoomCentre(1.5));
  $("btn-zoom-out").addEventListener("click", () => zoomCentre(1 / 1.5));
  $("btn-fit").addEventListener("click", () => fitView());
  $("btn-pixels").addEventListener("click", () => zoomCentre(1 / state.view.s));
  $("btn-flicker").addEventListener("click", () => toggleFlicker());
  $("btn-compare").addEventListener("click", () => toggleCompare());
  $("btn-help").addEventListener("click", () => $("help").showModal());
  $("outline").addEventListener("change", () => toggleOutline());
  $("lq-method").addEventListener("change", (event) => setLqMethod(event.target.value));
  $("compare-range").addEventListener("input", (event) => setSplit(Number(event.target.value)));
  for (const id of ["pair-a", "pair-b"]) $(id).addEventListener("change", () => (pairChosen = true));
  for (const id of ["flicker", "compare"]) attachPanZoom($(id).querySelector(".viewport"));
  window.addEventListener("resize", () => fitView());

  renderPending();
  showMessage("Loading…", "");
  // Answers left from an earlier visit go first; once they are in, onDrained loads the task.
  flush();
})();
