// tunelab label: the assessor's page. Plain JS, no build step. Text from the server is only ever set
// with textContent (never innerHTML), so an answer that contains HTML shows as text.
"use strict";

const $ = (id) => document.getElementById(id);
const KEYS = { a: "left", arrowleft: "left", b: "right", arrowright: "right", t: "tie", arrowdown: "tie", x: "both_bad" };
let token = sessionStorage.getItem("tunelab-token");
let criteria = {};
let current = null; // the showing on screen
let busy = false; // one request at a time: a key held down must not label twice

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    const err = new Error(typeof data.detail === "string" ? data.detail : `HTTP ${res.status}`);
    err.status = res.status;
    throw err;
  }
  return data;
}

function show(section) {
  for (const id of ["login", "work", "finished"]) $(id).hidden = id !== section;
  $("logout").hidden = section === "login";
}

function setProgress(data) {
  $("progress").textContent = `${data.done} / ${data.total}`;
}

function renderRulebook(book) {
  $("rules").textContent = book.text;
  criteria = book.criteria;
  const dl = $("criteria");
  const box = $("reasons");
  dl.replaceChildren();
  box.replaceChildren();
  Object.entries(criteria).forEach(([name, crit], i) => {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = `${crit.description} Reasons: ${crit.reasons.join("; ")}.`;
    dl.append(dt, dd);
    const label = document.createElement("label");
    const title = document.createElement("span");
    title.textContent = `${name} `;
    const key = document.createElement("kbd");
    key.textContent = String(i + 1);
    title.append(key);
    const select = document.createElement("select");
    select.id = `reason-${name}`;
    select.dataset.criterion = name;
    for (const reason of crit.reasons) {
      const opt = document.createElement("option");
      opt.value = reason;
      opt.textContent = reason;
      select.append(opt);
    }
    label.append(title, select);
    box.append(label);
  });
}

function resetReasons() {
  for (const select of $("reasons").querySelectorAll("select")) select.selectedIndex = 0;
}

function cycleReason(index) {
  const selects = $("reasons").querySelectorAll("select");
  const select = selects[index];
  if (select) select.selectedIndex = (select.selectedIndex + 1) % select.options.length;
}

async function loadNext() {
  const data = await api("GET", "/api/next");
  setProgress(data);
  current = data.showing;
  if (!current) {
    show("finished");
    return;
  }
  $("prompt").textContent = current.prompt;
  $("left").textContent = current.left;
  $("right").textContent = current.right;
  $("work").dataset.assignment = String(current.assignment);
  resetReasons();
  show("work");
}

async function run(action) {
  if (busy) return;
  busy = true;
  $("message").textContent = "";
  $("message").className = "";
  try {
    await action();
  } catch (err) {
    if (err.status === 401) return logout("Your token was refused; log in again.");
    $("message").textContent = err.message;
    $("message").className = "bad";
  } finally {
    busy = false;
  }
}

function choose(choice) {
  if (!current) return;
  return run(async () => {
    const reasons = {};
    for (const select of $("reasons").querySelectorAll("select")) reasons[select.dataset.criterion] = select.value;
    await api("POST", "/api/labels", { assignment: current.assignment, choice, reasons });
    await loadNext();
  });
}

function undo() {
  return run(async () => {
    await api("POST", "/api/undo");
    await loadNext();
    $("message").textContent = "Last label undone: label this pair again.";
  });
}

async function login(candidate) {
  token = candidate;
  try {
    const me = await api("GET", "/api/me");
    sessionStorage.setItem("tunelab-token", token);
    $("token").value = "";
    $("token").blur(); // the keys label pairs from here on
    $("project").textContent = me.project;
    $("who").textContent = me.assessor;
    renderRulebook(me.rulebook);
    await loadNext();
  } catch (err) {
    logout(err.status === 401 || err.status === 403 ? "That token is not an assessor's token." : err.message);
  }
}

function logout(message) {
  token = null;
  current = null;
  sessionStorage.removeItem("tunelab-token");
  $("who").textContent = "";
  $("progress").textContent = "";
  $("login-error").textContent = message || "";
  show("login");
}

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  login($("token").value.trim());
});
$("logout").addEventListener("click", () => logout(""));
$("undo").addEventListener("click", undo);
for (const button of document.querySelectorAll("[data-choice]")) {
  button.addEventListener("click", () => choose(button.dataset.choice));
}
document.addEventListener("keydown", (event) => {
  if (!token || event.altKey || event.metaKey || event.target.tagName === "INPUT") return;
  const key = event.key.toLowerCase();
  if (key === "u" || (event.ctrlKey && key === "z")) {
    event.preventDefault();
    undo();
  } else if (event.ctrlKey) {
    return;
  } else if (KEYS[key] && !$("work").hidden) {
    event.preventDefault();
    choose(KEYS[key]);
  } else if (/^[1-9]$/.test(key) && !$("work").hidden) {
    event.preventDefault();
    cycleReason(Number(key) - 1);
  }
});

if (token) login(token);
else show("login");
