// Keyboard grading of an inspection grid: one key grades the focused image and moves on.
// Each grading action carries a fresh UUID, so a retried request is recorded once.
(function () {
  "use strict";
  const grid = document.getElementById("grid");
  if (!grid) return;
  const cells = Array.from(grid.querySelectorAll(".cell"));
  const csrf = grid.dataset.csrf;
  const sample = grid.dataset.sample;
  const loopId = grid.dataset.loopId ? parseInt(grid.dataset.loopId, 10) : null;
  const campaign = grid.dataset.campaign;
  const statusEl = document.getElementById("status");
  const doneEl = document.getElementById("n-done");
  const KEYS = { a: "A", b: "B", c: "C", n: "N", "0": "N", x: "N", s: "S", " ": "S", "3": "A", "2": "B", "1": "C" };
  let pos = 0;

  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }
  function say(msg) { if (statusEl) statusEl.textContent = msg; }
  function countDone() { if (doneEl) doneEl.textContent = cells.filter((c) => c.dataset.grade).length; }
  function columns() {
    if (cells.length < 2) return 1;
    const top = cells[0].offsetTop;
    const n = cells.findIndex((c) => c.offsetTop !== top);
    return n < 0 ? cells.length : n;
  }
  function focus(i) {
    if (!cells.length) return;
    pos = Math.max(0, Math.min(cells.length - 1, i));
    cells.forEach((c) => c.classList.remove("focus"));
    cells[pos].classList.add("focus");
    cells[pos].focus({ preventScroll: true });
    cells[pos].scrollIntoView({ block: "nearest" });
  }
  async function post(url, body) {
    const r = await fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
    });
    let data = {};
    try { data = await r.json(); } catch (e) { data = {}; }
    if (!r.ok) throw new Error(data.error || (data.detail && JSON.stringify(data.detail)) || r.statusText);
    return data;
  }
  async function grade(cell, letter) {
    const body = { source_id: parseInt(cell.dataset.sourceId, 10), grade: letter, request_id: uuid(),
                   sample: sample, loop_id: loopId };
    cell.classList.add("pending");
    cell.classList.remove("failed");
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const data = await post("/api/grades", body);
        cell.classList.remove("pending", "g-A", "g-B", "g-C", "g-N", "g-S");
        cell.classList.add("graded", "g-" + letter);
        cell.dataset.grade = letter;
        cell.querySelector(".mine").textContent = letter;
        const cons = cell.querySelector(".consensus");
        if (cons) cons.textContent = data.consensus ? data.consensus.consensus_grade : "";
        countDone();
        if (data.loop) {
          say(`loop ${data.loop.loop_no}: ${data.loop.n_graded}/${data.loop.size} graded, ${data.loop.n_found} lens(es)` +
              (data.loop.complete ? " — batch complete: press Enter to retrain and get the next batch" : ""));
        } else {
          say(`${cell.dataset.sourceId}: ${letter}`);
        }
        return;
      } catch (err) {
        if (attempt === 2 || /4\d\d|token|log in/.test(String(err.message))) {
          cell.classList.remove("pending");
          cell.classList.add("failed");
          say(`not recorded: ${err.message}`);
          return;
        }
        await new Promise((res) => setTimeout(res, 400 * (attempt + 1)));
      }
    }
  }
  async function submitBatch() {
    if (!campaign) return;
    say("retraining…");
    try {
      const data = await post(`/api/learn/${encodeURIComponent(campaign)}/advance`, {});
      say(`loop ${data.loop_no} proposed`);
      window.location.assign(data.url);
    } catch (err) {
      say(err.message);
    }
  }
  document.addEventListener("keydown", (ev) => {
    if (ev.target && (ev.target.tagName === "INPUT" || ev.target.tagName === "TEXTAREA" || ev.target.tagName === "SELECT")) return;
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const key = ev.key.length === 1 ? ev.key.toLowerCase() : ev.key;
    const cols = columns();
    if (KEYS[key] && cells.length) {
      ev.preventDefault();
      const cell = cells[pos];
      grade(cell, KEYS[key]);
      focus(pos + 1);
    } else if (key === "ArrowRight" || key === "l") { ev.preventDefault(); focus(pos + 1); }
    else if (key === "ArrowLeft" || key === "h" || key === "Backspace") { ev.preventDefault(); focus(pos - 1); }
    else if (key === "ArrowDown" || key === "j") { ev.preventDefault(); focus(pos + cols); }
    else if (key === "ArrowUp" || key === "k") { ev.preventDefault(); focus(pos - cols); }
    else if (key === "o" && cells.length) { window.location.assign(`/source/${cells[pos].dataset.sourceId}`); }
    else if (key === "m" && cells.length) { window.location.assign(`/grid?kind=similar&n=50&source_id=${cells[pos].dataset.sourceId}`); }
    else if (key === "Enter" && loopId) { ev.preventDefault(); submitBatch(); }
    else if (key === "/") { const s = document.getElementById("search-box"); if (s) { ev.preventDefault(); s.focus(); } }
  });
  cells.forEach((c, i) => c.addEventListener("click", (ev) => { if (ev.target.tagName !== "A") focus(i); }));
  const btn = document.getElementById("submit-batch");
  if (btn) btn.addEventListener("click", submitBatch);
  const firstUngraded = cells.findIndex((c) => !c.dataset.grade);
  focus(firstUngraded < 0 ? 0 : firstUngraded);
  countDone();
})();
