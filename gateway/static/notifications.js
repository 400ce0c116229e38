// Browser client for the notification gateway (ES module, no dependencies).
//
//   import { connect } from "./notifications.js";
//   const notifications = connect({
//     url: "wss://notify.example.com/ws/notifications/",
//     getToken: async () => (await fetch("/gateway/token/")).json().then((b) => b.access),
//     onMessage: (message) => showNotification(message),
//     onStateChange: (state, detail) => console.debug(state, detail),
//   });
//   // later: notifications.close();
//
// What it does for you:
//
// * Authentication. The token goes in the `?token=` query parameter because
//   the browser WebSocket API cannot set request headers, so
//   `Authorization: Bearer` (which the gateway also accepts) is only usable
//   from non-browser clients. A cookie
//   (when the gateway sets `auth.token_cookie` or `auth.session_url`, with
//   its origin allowlist) works when the page and the gateway share a site:
//   leave `getToken` out and the client sends no query parameter at all.
//   Because a query string can end up in proxy logs, hand out short-lived
//   access tokens (SimpleJWT's default is 5 minutes): `getToken` is called
//   before every connection attempt, so each attempt uses a fresh token.
// * Token refresh on the open socket. The gateway closes a socket with 4002
//   when its token expires, so with `getToken` the client renews the token
//   in-band before then: it reads `exp` (and `iat`) from the token's payload
//   (decoded, not verified: the gateway verifies), and at a random point
//   between 70% and 90% of the time left (`refreshWindow`), and at least
//   `refreshMarginMs` before expiry when the lifetime allows, it asks
//   `getToken({forceRefresh: true, refresh: true})` for a new token and
//   sends `{"type": "refresh", "token": ...}`. The gateway answers
//   `{"type": "refreshed", "expires_at": N}` (and moves the socket into the
//   groups the new token grants), and the next refresh is planned from the
//   new token. The random point keeps sockets that opened together from
//   renewing (or, without it, reconnecting) together. A refresh that fails
//   (getToken throws or hands back the current token, no answer within
//   `refreshTimeoutMs`, or no token) is tried again after a quarter to a
//   half of the time left. If the token still runs out, or the gateway
//   refuses the new one
//   (4001/4003), the close codes below apply. A token whose payload has no
//   `exp` is not refreshed in-band; `refreshInBand: false` turns it off.
// * Reconnecting. Every close the server did not ask to be final is
//   followed by a new attempt after an exponential backoff with full jitter
//   (a random wait between 0 and min(maxDelayMs, baseDelayMs * 2^n)).
//   A getToken that resolves to no token (null, undefined, "") stops the
//   client for good only after the gateway refused the last token
//   (4001/4002): that is a logout. Any other time it counts as a failed
//   attempt (onError, then backoff), so a token endpoint's bad moment does
//   not end the user's notifications; call close() at logout.
//   The gateway's close codes (see the README) decide what happens:
//     4001/4002        ask getToken for a new token ({forceRefresh: true}) and
//                      retry at once; if it hands back the token that was
//                      just refused, or auth keeps failing, stop.
//     1000/1002/1003/1007/1008/1009/4003/4006
//                      stop: reconnecting unchanged cannot help.
//     1001             wait the `retry_after_ms=N` hinted in the close reason
//                      (plus up to hintJitterMs), else back off.
//     anything else    (1006 = connection lost or handshake refused with
//                      401/503, 1011, 4004, 4005, 4007, ...) back off.
// * Dead connections. Browsers answer the server's WebSocket pings but never
//   show them to scripts, so a half-open connection (laptop asleep, NAT
//   entry gone) looks open forever. When nothing has arrived for
//   pingIntervalMs the client sends the application-level ping
//   `{"type": "ping"}`, which the gateway answers with `{"type": "pong"}`;
//   if no frame at all arrives within pongTimeoutMs the socket is dropped
//   and a new one is opened.
// * Recovery of missed notifications (docs/recovery.md). By default
//   (`recover: true`) every attempt asks for it with `recover=` in the query
//   (next to `token=`): empty the first time, then the greatest position
//   this client has seen. A gateway with `layer.recovery` on then sends what
//   was published while no socket was open, each frame with its position,
//   then one status frame `{"type": "recovery", "recovered": ...,
//   "replayed": N, "position": ...}`, then live frames, also positioned.
//   The client keeps the greatest position (positions compare as strings;
//   it is kept across reconnects, and `initialPosition` seeds it), hands
//   `onMessage` the same `message` as without recovery (the frame, its
//   second argument, carries `position`), and gives the status to
//   `onRecovery({recovered, replayed, position})`, never to onMessage or
//   onFrame. `recovered: false` means some notifications may be gone (away
//   longer than the window, or too many of them): refetch what the page
//   shows. A gateway without recovery ignores `recover=` and its frames
//   are handled as before; `recover: false` leaves the parameter out.

/** What to do after each close code the gateway sends. */
export const CLOSE_ADVICE = Object.freeze({
  1000: "never",
  1001: "hint",
  1002: "never",
  1003: "never",
  1007: "never",
  1008: "never",
  1009: "never",
  1011: "backoff",
  4001: "new_token",
  4002: "new_token",
  4003: "never",
  4004: "backoff",
  4005: "backoff",
  4006: "never",
  4007: "backoff",
});

/** "never" | "new_token" | "hint" | "backoff" for a close code. */
export function closeAdvice(code) {
  return CLOSE_ADVICE[code] || "backoff";
}

/** The N of a `retry_after_ms=N` close-reason hint, or null. */
export function parseRetryAfter(reason) {
  const match = /(?:^|[\s;,])retry_after_ms=(\d+)/.exec(String(reason || ""));
  return match ? Number(match[1]) : null;
}

/** The claims of a JWT's payload (decoded, never verified), or null. */
export function tokenClaims(token) {
  if (typeof token !== "string") return null;
  const payload = token.split(".")[1];
  if (!payload || !globalThis.atob) return null;
  try {
    const base64 = payload.replace(/-/g, "+").replace(/_/g, "/");
    const binary = globalThis.atob(base64.padEnd(base64.length + ((4 - (base64.length % 4)) % 4), "="));
    const bytes = Uint8Array.from(binary, (char) => char.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" && !Array.isArray(claims) ? claims : null;
  } catch {
    return null;
  }
}

/**
 * Milliseconds a token has left, from its `exp` (and `iat`), or null when it
 * has no `exp`. A `fresh` token (just handed out after forceRefresh) has its
 * whole lifetime (`exp - iat`) left whatever this machine's clock says, and
 * so has one whose `exp` this clock already sees as past (the gateway took
 * it: the clock is ahead). `expiresAt` (seconds, the gateway's `refreshed`
 * reply) stands in for a missing `exp`.
 */
export function tokenTimeLeft(token, { fresh = false, expiresAt = null, now = Date.now() } = {}) {
  const claims = tokenClaims(token) || {};
  const exp = typeof claims.exp === "number" ? claims.exp : typeof expiresAt === "number" ? expiresAt : null;
  if (exp === null) return null;
  const untilExp = exp * 1000 - now;
  const lifetime = typeof claims.iat === "number" && exp > claims.iat ? (exp - claims.iat) * 1000 : null;
  if (lifetime === null) return untilExp > 0 ? untilExp : null;
  if (fresh || untilExp <= 0) return lifetime;
  return Math.min(untilExp, lifetime);
}

/** No in-band refresh is planned sooner than this after the last. */
export const MIN_REFRESH_DELAY_MS = 1000;

/**
 * When to refresh a token with `timeLeftMs` to go: uniform between
 * `refreshWindow[0]` and `refreshWindow[1]` of it, but no later than
 * `refreshMarginMs` before expiry unless that is before the window opens
 * (a short lifetime), and never sooner than MIN_REFRESH_DELAY_MS.
 */
export function refreshDelay(
  timeLeftMs,
  { refreshWindow = [0.7, 0.9], refreshMarginMs = 10000, random = Math.random } = {},
) {
  const [low, high] = refreshWindow;
  const earliest = timeLeftMs * low;
  const latest = Math.max(earliest, Math.min(timeLeftMs * high, timeLeftMs - refreshMarginMs));
  return Math.max(MIN_REFRESH_DELAY_MS, Math.floor(earliest + (latest - earliest) * random()));
}

/** Full-jitter exponential backoff: uniform in [0, min(max, base * 2^attempt)). */
export function backoffDelay(attempt, { baseDelayMs = 500, maxDelayMs = 30000, random = Math.random } = {}) {
  const ceiling = Math.min(maxDelayMs, baseDelayMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/** The query parameter a client asks for recovery with. */
export const RECOVER_PARAM = "recover";

const POSITION = /^[0-9a-f]{24}$/;

/** True for a position: 24 lowercase hex digits (they compare as strings). */
export function isPosition(value) {
  return typeof value === "string" && POSITION.test(value);
}

// The recovery side of one client: the greatest position seen (kept across
// its reconnects), the `recover` parameter, and the status frame.
function recoveryTracker(opts) {
  let position = isPosition(opts.initialPosition) ? opts.initialPosition : null;
  function see(candidate) {
    if (isPosition(candidate) && (position === null || candidate > position)) position = candidate;
  }
  return {
    get position() {
      return position;
    },
    addTo(searchParams) {
      if (opts.recover) searchParams.set(RECOVER_PARAM, position || "");
    },
    // What to dispatch for a parsed frame: the frame itself (a message frame
    // keeps its position, which onMessage's second argument shows), another
    // frame without the position the gateway added, or undefined for the
    // status frame (handled here).
    consume(frame) {
      if (!opts.recover || !frame || typeof frame !== "object" || Array.isArray(frame)) return frame;
      if (frame.type === "recovery" && typeof frame.recovered === "boolean" && !("message" in frame)) {
        see(frame.position);
        const replayed = Number.isInteger(frame.replayed) ? frame.replayed : 0;
        if (opts.onRecovery) opts.onRecovery({ recovered: frame.recovered, replayed, position });
        return undefined;
      }
      if (!isPosition(frame.position)) return frame;
      see(frame.position);
      if (Object.prototype.hasOwnProperty.call(frame, "message")) return frame;
      const rest = { ...frame };
      delete rest.position;
      return rest;
    },
  };
}

const DEFAULTS = {
  recover: true,
  tokenParam: "token",
  baseDelayMs: 500,
  maxDelayMs: 30000,
  hintJitterMs: 1000,
  pingIntervalMs: 25000,
  pongTimeoutMs: 10000,
  connectTimeoutMs: 15000,
  stableAfterMs: 5000,
  maxAuthRetries: 2,
  refreshInBand: true,
  refreshWindow: [0.7, 0.9],
  refreshMarginMs: 10000,
  refreshTimeoutMs: 10000,
};

/**
 * Opens the connection and keeps it open until `close()` or a final close
 * code. Returns a handle: { close(), reconnectNow(), state, socket }.
 */
export function connect(options) {
  const opts = { ...DEFAULTS, ...options };
  if (!opts.url) throw new TypeError("connect: `url` is required");
  const WebSocketImpl = opts.WebSocketImpl || globalThis.WebSocket;
  if (!WebSocketImpl) throw new TypeError("connect: no WebSocket implementation (pass WebSocketImpl)");
  const random = opts.random || Math.random;
  const now = () => Date.now();
  const recovery = recoveryTracker(opts);

  let state = "idle";
  let socket = null;
  let stopped = false;
  let attempt = 0; // consecutive failed attempts, drives the backoff
  let authFailures = 0; // consecutive 4001/4002 closes
  let forceRefresh = false;
  let lastToken = null;
  let rejectedToken = null;
  let retryTimer = null;
  let connectTimer = null;
  let stableTimer = null;
  let heartbeatTimer = null;
  let pongTimer = null;
  let lastHeard = 0;
  // In-band refresh of the open socket's token.
  let refreshTimer = null;
  let refreshReplyTimer = null;
  let pendingRefresh = null; // the token sent, until the gateway answers
  let refreshDeadline = 0; // when this clock expects the token to run out

  function setState(next, detail = {}) {
    state = next;
    if (opts.onStateChange) {
      try {
        opts.onStateChange(next, detail);
      } catch (error) {
        report(error);
      }
    }
  }

  function report(error) {
    if (opts.onError) opts.onError(error);
    else if (globalThis.console) console.error("notifications:", error);
  }

  function clearTimers() {
    for (const timer of [retryTimer, connectTimer, stableTimer, pongTimer, refreshTimer, refreshReplyTimer]) {
      clearTimeout(timer);
    }
    clearInterval(heartbeatTimer);
    retryTimer = connectTimer = stableTimer = heartbeatTimer = pongTimer = null;
    refreshTimer = refreshReplyTimer = pendingRefresh = null;
  }

  // Forget a socket: its late events must not touch the new one.
  function drop(ws, code, reason) {
    const ignore = () => {};
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = ignore;
    try {
      ws.close(code, reason);
    } catch {
      // already closing, or still connecting in an implementation that throws
    }
  }

  function buildUrl(token) {
    const base = globalThis.location ? globalThis.location.href : undefined;
    const url = new URL(opts.url, base);
    if (url.protocol === "http:") url.protocol = "ws:";
    if (url.protocol === "https:") url.protocol = "wss:";
    if (token) url.searchParams.set(opts.tokenParam, token);
    recovery.addTo(url.searchParams);
    return url.toString();
  }

  async function open() {
    retryTimer = null;
    if (stopped) return;
    setState("connecting", { attempt });
    let token = null;
    if (opts.getToken) {
      try {
        token = await opts.getToken({ forceRefresh, attempt });
      } catch (error) {
        report(error);
        if (!stopped) scheduleRetry(backoff(), { reason: "getToken failed" });
        return;
      }
      if (stopped) return;
      if (!token) {
        // No token is proof of a logout only once the gateway has refused
        // the last one; before that it is a failed getToken (a token
        // endpoint that answered badly, a network hiccup): try again later.
        if (rejectedToken !== null) {
          finish({ reason: "no token" });
          return;
        }
        report(new Error("getToken returned no token"));
        if (!stopped) scheduleRetry(backoff(), { reason: "getToken returned no token" });
        return;
      }
      if (rejectedToken !== null && token === rejectedToken) {
        // getToken handed back the token the server just refused: looping
        // would only hammer the server.
        finish({ code: 4001, reason: "token refused and no new token available" });
        return;
      }
    }
    const fresh = forceRefresh;
    forceRefresh = false;
    lastToken = token;

    let ws;
    try {
      ws = new WebSocketImpl(buildUrl(token));
    } catch (error) {
      report(error);
      scheduleRetry(backoff(), { reason: String(error) });
      return;
    }
    socket = ws;
    connectTimer = setTimeout(() => {
      if (socket !== ws) return;
      socket = null;
      drop(ws, 1000, "connect timeout");
      clearTimers();
      scheduleRetry(backoff(), { reason: "connect timeout" });
    }, opts.connectTimeoutMs);

    ws.onopen = () => {
      clearTimeout(connectTimer);
      connectTimer = null;
      lastHeard = now();
      rejectedToken = null;
      setState("open", { attempt });
      stableTimer = setTimeout(() => {
        attempt = 0;
        authFailures = 0;
      }, opts.stableAfterMs);
      startHeartbeat(ws);
      planRefresh(ws, token, { fresh });
    };
    ws.onmessage = (event) => {
      lastHeard = now();
      clearTimeout(pongTimer);
      pongTimer = null;
      handleFrame(ws, event.data);
    };
    ws.onerror = () => {
      // A close event always follows; it carries the code.
    };
    ws.onclose = (event) => {
      if (socket !== ws) return;
      socket = null;
      clearTimers();
      afterClose(event.code, event.reason || "");
    };
  }

  function startHeartbeat(ws) {
    const every = Math.max(50, Math.min(opts.pingIntervalMs, 1000));
    heartbeatTimer = setInterval(() => {
      if (socket !== ws || pongTimer) return;
      if (now() - lastHeard < opts.pingIntervalMs) return;
      try {
        ws.send(JSON.stringify({ type: "ping" }));
      } catch {
        // the close event will follow
      }
      pongTimer = setTimeout(() => {
        if (socket !== ws) return;
        socket = null;
        clearTimers();
        drop(ws, 4000, "no pong");
        scheduleRetry(backoff(), { reason: "no pong within pongTimeoutMs", dead: true });
      }, opts.pongTimeoutMs);
    }, every);
  }

  // Plans the next in-band refresh of `ws`'s token (only with getToken,
  // and only for a token whose expiry can be read).
  function planRefresh(ws, token, { fresh, expiresAt = null }) {
    if (!opts.getToken || !opts.refreshInBand || socket !== ws) return;
    const timeLeft = tokenTimeLeft(token, { fresh, expiresAt, now: now() });
    if (timeLeft === null) return;
    refreshDeadline = now() + timeLeft;
    const delay = refreshDelay(timeLeft, {
      refreshWindow: opts.refreshWindow,
      refreshMarginMs: opts.refreshMarginMs,
      random,
    });
    armRefresh(ws, delay);
  }

  function armRefresh(ws, delayMs) {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(() => refreshNow(ws), delayMs);
  }

  async function refreshNow(ws) {
    refreshTimer = null;
    if (stopped || socket !== ws) return;
    let token;
    try {
      token = await opts.getToken({ forceRefresh: true, attempt, refresh: true });
    } catch (error) {
      report(error);
      retryRefresh(ws);
      return;
    }
    if (stopped || socket !== ws) return;
    if (!token) {
      // Not proof of a logout (the gateway has refused nothing): keep the
      // socket and try again; if the token runs out meanwhile the gateway
      // closes with 4002, and no token then stops for good. A page that
      // knows its user logged out calls close().
      report(new Error("getToken returned no token for the refresh"));
      retryRefresh(ws);
      return;
    }
    if (token === lastToken) {
      // The same token again would renew nothing.
      retryRefresh(ws);
      return;
    }
    try {
      ws.send(JSON.stringify({ type: "refresh", token }));
    } catch {
      retryRefresh(ws);
      return;
    }
    // A 4001 from here on refuses this token: remember it as the one sent.
    lastToken = token;
    pendingRefresh = token;
    clearTimeout(refreshReplyTimer);
    refreshReplyTimer = setTimeout(() => {
      refreshReplyTimer = null;
      if (socket !== ws || pendingRefresh !== token) return;
      pendingRefresh = null;
      report(new Error("no answer to the token refresh within refreshTimeoutMs"));
      retryRefresh(ws);
    }, opts.refreshTimeoutMs);
  }

  // Tries again after a quarter to a half of the time left, so several
  // tries fit before expiry; when too little is left, the gateway's 4002
  // and the reconnect that follows take over.
  function retryRefresh(ws) {
    if (stopped || socket !== ws) return;
    const left = refreshDeadline - now();
    if (left < 2 * MIN_REFRESH_DELAY_MS) return;
    armRefresh(ws, Math.max(MIN_REFRESH_DELAY_MS, Math.floor((left / 4) * (1 + random()))));
  }

  function refreshed(ws, frame) {
    const token = pendingRefresh;
    pendingRefresh = null;
    clearTimeout(refreshReplyTimer);
    refreshReplyTimer = null;
    const expiresAt = typeof frame.expires_at === "number" ? frame.expires_at : null;
    planRefresh(ws, token, { fresh: true, expiresAt });
  }

  function handleFrame(ws, data) {
    if (typeof data !== "string") return;
    let frame;
    try {
      frame = JSON.parse(data);
    } catch (error) {
      report(error);
      return;
    }
    if (frame && frame.type === "pong") return;
    if (frame && frame.type === "refreshed" && pendingRefresh !== null) {
      refreshed(ws, frame);
      return;
    }
    try {
      frame = recovery.consume(frame);
      if (frame === undefined) return;
      if (frame && Object.prototype.hasOwnProperty.call(frame, "message")) {
        if (opts.onMessage) opts.onMessage(frame.message, frame);
      } else if (opts.onFrame) {
        opts.onFrame(frame);
      }
    } catch (error) {
      report(error);
    }
  }

  function backoff() {
    const delay = backoffDelay(attempt, { baseDelayMs: opts.baseDelayMs, maxDelayMs: opts.maxDelayMs, random });
    attempt += 1;
    return delay;
  }

  function afterClose(code, reason) {
    if (stopped) return;
    const detail = { code, reason };
    switch (closeAdvice(code)) {
      case "never":
        finish(detail);
        return;
      case "new_token":
        authFailures += 1;
        if (!opts.getToken || authFailures > opts.maxAuthRetries) {
          finish(detail);
          return;
        }
        forceRefresh = true;
        rejectedToken = lastToken;
        scheduleRetry(Math.floor(random() * opts.baseDelayMs), detail);
        return;
      case "hint": {
        const hint = parseRetryAfter(reason);
        if (hint !== null) {
          attempt += 1;
          scheduleRetry(hint + Math.floor(random() * opts.hintJitterMs), { ...detail, retryAfterMs: hint });
        } else {
          scheduleRetry(backoff(), detail);
        }
        return;
      }
      default:
        scheduleRetry(backoff(), detail);
    }
  }

  function scheduleRetry(delayMs, detail) {
    if (stopped) return;
    clearTimeout(retryTimer);
    setState("waiting", { ...detail, delayMs, attempt });
    retryTimer = setTimeout(open, delayMs);
  }

  function finish(detail) {
    stopped = true;
    clearTimers();
    removeOnline();
    setState("closed", { ...detail, final: true });
  }

  // Back online after a network outage: no need to wait out the backoff.
  const onOnline = () => {
    if (state === "waiting" && !stopped) {
      clearTimeout(retryTimer);
      open();
    }
  };
  const canListen = typeof globalThis.addEventListener === "function";
  if (canListen) globalThis.addEventListener("online", onOnline);
  function removeOnline() {
    if (canListen) globalThis.removeEventListener("online", onOnline);
  }

  open();

  return {
    get state() {
      return state;
    },
    get socket() {
      return socket;
    },
    /** The greatest position seen (recovery), or null. */
    get position() {
      return recovery.position;
    },
    /** Stop for good: closes the socket (1000) and cancels any retry. */
    close() {
      if (stopped) return;
      stopped = true;
      const ws = socket;
      socket = null;
      clearTimers();
      removeOnline();
      if (ws) drop(ws, 1000, "client closed");
      setState("closed", { code: 1000, reason: "client closed", final: true });
    },
    /** Skip the current backoff wait and try at once. */
    reconnectNow() {
      if (!stopped && state === "waiting") {
        clearTimeout(retryTimer);
        open();
      }
    },
  };
}
