// The ToDo page: notifications arrive over the gateway's WebSocket (no
// polling), and the new-task form posts with fetch() so the socket stays open.
import { connect } from "../gateway/notifications.js";

const config = JSON.parse(document.getElementById("notifications-config").textContent);
const list = document.getElementById("notifications");
const badge = document.getElementById("ws-state");

function showNotification(message) {
  const item = document.createElement("li");
  item.className = "notification";
  const time = document.createElement("time");
  time.textContent = new Date().toLocaleTimeString();
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = typeof message === "string" ? message : JSON.stringify(message);
  item.append(time, text);
  list.prepend(item);
}

const notifications = connect({
  url: config.wsUrl,
  // A fresh short-lived access token for this session before every attempt,
  // and to renew the open socket's token in-band before it expires.
  getToken: async () => {
    const response = await fetch(config.tokenUrl, { credentials: "same-origin", cache: "no-store" });
    if (response.status === 401) return null; // logged out: stop
    if (!response.ok) throw new Error(`token endpoint answered ${response.status}`);
    return (await response.json()).access;
  },
  onMessage: showNotification,
  onStateChange: (state, detail) => {
    badge.dataset.state = state;
    badge.textContent = state === "waiting" ? `reconnecting in ${(detail.delayMs / 1000).toFixed(1)} s` : state;
    badge.title = detail.code ? `close code ${detail.code} ${detail.reason || ""}` : "";
  },
});
window.notifications = notifications; // for the console and the tests

const tasks = document.getElementById("tasks");
document.getElementById("new-task").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const response = await fetch(window.location.pathname, {
    method: "POST",
    body: new FormData(form),
    headers: { Accept: "application/json" },
    credentials: "same-origin",
  });
  if (!response.ok) return;
  const task = await response.json();
  tasks.querySelector(".empty")?.remove();
  const item = document.createElement("li");
  item.dataset.taskId = task.id;
  const title = document.createElement("span");
  title.className = "title";
  title.textContent = task.title;
  item.append(title);
  if (task.due_at) {
    const due = document.createElement("time");
    due.dateTime = task.due_at;
    due.textContent = `due ${task.due_at.slice(0, 16).replace("T", " ")}`;
    item.append(due);
  }
  const done = document.createElement("form");
  done.method = "post";
  done.action = `/tasks/${task.id}/done/`;
  done.className = "inline";
  done.append(form.querySelector("[name=csrfmiddlewaretoken]").cloneNode());
  const button = document.createElement("button");
  button.textContent = "Done";
  done.append(button);
  item.append(done);
  tasks.append(item);
  form.reset();
});

// "Done" buttons post with fetch() too (the signal then says "Task done").
tasks.addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const response = await fetch(form.action, {
    method: "POST",
    body: new FormData(form),
    headers: { Accept: "application/json" },
    credentials: "same-origin",
  });
  if (response.ok) {
    form.closest("li").classList.add("done");
    form.remove();
  }
});
