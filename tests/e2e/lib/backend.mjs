// The example ToDo backend (deploy/example-backend): Django runserver and a
// real Celery worker with embedded beat, on a fresh SQLite file.
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { REPO, SECRET, start, freePort, waitFor, fatal } from "./procs.mjs";

export const BACKEND_DIR = path.join(REPO, "deploy", "example-backend");

export function backendPython() {
  const python = process.env.BACKEND_PYTHON || path.join(BACKEND_DIR, ".venv", "bin", "python");
  if (!fs.existsSync(python)) {
    throw new Error(`${python} missing: run python3 deploy/example-backend/ensure_venv.py`);
  }
  return python;
}

export async function startBackend({ redisUrl, wsUrl, reminderScanSeconds = 1, extraEnv = {}, celery = true, name = "django" }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "todo-e2e-"));
  const port = await freePort();
  const env = {
    DJANGO_DB_PATH: path.join(dir, "db.sqlite3"),
    REDIS_URL: redisUrl,
    GATEWAY_WS_URL: wsUrl,
    JWT_SIGNING_KEY: SECRET,
    REMINDER_SCAN_SECONDS: String(reminderScanSeconds),
    DUE_SOON_MINUTES: "60",
    PYTHONUNBUFFERED: "1",
    ...extraEnv,
  };
  const python = backendPython();
  const manage = (args) =>
    execFileSync(python, ["manage.py", ...args], {
      cwd: BACKEND_DIR,
      env: { ...process.env, ...env },
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
    });
  manage(["migrate", "--noinput", "-v", "0"]);
  manage(["seed_demo"]);
  const workerLog = path.join(REPO, "tests", "artifacts", "celery.log");
  fs.rmSync(workerLog, { force: true });
  const web = start(name, python, ["manage.py", "runserver", "--noreload", `127.0.0.1:${port}`], {
    cwd: BACKEND_DIR,
    env,
  });
  const url = `http://127.0.0.1:${port}`;
  const webReady = () =>
    waitFor(
      async () => {
        if (web.exitCode !== null) throw fatal(`runserver exited (see tests/artifacts/${name}.log)`);
        return (await fetch(`${url}/accounts/login/`)).ok;
      },
      { timeoutMs: 30000, what: "django runserver" },
    );
  if (!celery) {
    await webReady();
    return { url, web, worker: null, dir, env, manage };
  }
  const worker = start(
    "celery",
    python,
    ["-m", "celery", "-A", "todo", "worker", "--beat", "--concurrency", "1", "--loglevel", "INFO",
      "--schedule", path.join(dir, "celerybeat-schedule"), "--without-gossip", "--without-mingle"],
    { cwd: BACKEND_DIR, env },
  );
  await webReady();
  await waitFor(() => {
    if (worker.exitCode !== null) throw fatal("celery worker exited (see tests/artifacts/celery.log)");
    return fs.readFileSync(workerLog, "utf8").includes("ready.");
  }, {
    timeoutMs: 60000,
    intervalMs: 200,
    what: "celery worker ready",
  });
  return { url, web, worker, dir, env, manage };
}
