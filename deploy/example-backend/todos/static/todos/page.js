// The ToDo page: notifications arrive over the gateway's WebSocket (no
// polling), and the new-task form posts with fetch() so the socket stays open.
// Notifications sent while the socket was down (gateway restart, network
// switch) are replayed on reconnect (recovery, on by default in the client);
// when the gateway says some may be missing, the task list is fetched again.
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
  onRecovery: showRecovery,
  onStateChange: (state, detail) => {
    badge.dataset.state = state;
    badge.textContent = state === "waiting" ? `reconnecting in ${(detail.delayMs / 1000).toFixed(1)} s` : state;
    badge.title = detail.code ? `close code ${detail.code} ${detail.reason || ""}` : "";
  },
});
window.notifications = notifications; // for the console and the tests

const tasks = document.getElementById("tasks");
const newTask = document.getElementById("new-task");

// One row of the task list, as the template renders it.
function taskItem(task) {
  const item = document.createElement("li");
  item.dataset.taskId = task.id;
  if (task.done) item.className = "done";
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
  if (!task.done) {
    const done = document.createElement("form");
    done.method = "post";
    done.action = `/tasks/${task.id}/done/`;
    done.className = "inline";
    done.append(newTask.querySelector("[name=csrfmiddlewaretoken]").cloneNode());
    const button = document.createElement("button");
    button.textContent = "Done";
    done.append(button);
    item.append(done);
  }
  return item;
}

newTask.addEventListener("submit", async (event) => {
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
  tasks.append(taskItem(task));
  form.reset();
});

// The whole list again from the JSON API (after notifications may have been
// missed: what they would have said is in the list).
async function refreshTasks() {
  const response = await fetch(config.tasksUrl, {
    headers: { Accept: "application/json" },
    credentials: "same-origin",
    cache: "no-store",
  });
  if (!response.ok) throw new Error(`task list answered ${response.status}`);
  const items = (await response.json()).map(taskItem);
  if (items.length === 0) {
    const empty = document.createElement("li");
    empty.className = "empty";
    empty.textContent = "No tasks yet.";
    items.push(empty);
  }
  tasks.replaceChildren(...items);
}

// After every (re)connect: what was replayed already went to onMessage; if
// the gateway could not replay everything (away longer than its window, or
// too many notifications), say so and fetch the list again.
function showRecovery({ recovered, replayed }) {
  badge.dataset.recovered = String(recovered);
  badge.dataset.replayed = String(replayed);
  if (recovered) return;
  const note = document.getElementById("recovery-note");
  note.textContent = "Some notifications may be missing; the task list was refreshed.";
  refreshTasks().then(
    () => {
      note.hidden = false;
      note.dataset.refreshedAt = new Date().toISOString();
    },
    (error) => {
      note.textContent = `Some notifications may be missing; reload the page (${error.message}).`;
      note.hidden = false;
    },
  );
}

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
