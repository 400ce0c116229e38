// Types for notifications.js, the gateway's browser client.

/** What the client does after a close code. */
export type CloseAdvice = "never" | "new_token" | "hint" | "backoff";

/**
 * idle → connecting → open → waiting (backoff) → connecting → ... → closed.
 * "closed" is final: reached through `close()`, a close code that must not
 * be retried, or a token that cannot be renewed.
 */
export type ConnectionState = "idle" | "connecting" | "open" | "waiting" | "closed";

export interface StateDetail {
  /** WebSocket close code that led here (1006 when the connection was lost or the handshake refused). */
  code?: number;
  /** Close reason or a short description of what happened. */
  reason?: string;
  /** In "waiting": how long until the next attempt. */
  delayMs?: number;
  /** In "waiting" after a drain close: the server's `retry_after_ms` hint. */
  retryAfterMs?: number;
  /** Consecutive failed attempts so far. */
  attempt?: number;
  /** True when no pong arrived in time and the socket was dropped. */
  dead?: boolean;
  /** True in "closed": no further attempts will be made. */
  final?: boolean;
}

export interface GetTokenContext {
  /**
   * True after the server refused the last token (4001/4002), and for an
   * in-band refresh: do not return a cached one.
   */
  forceRefresh: boolean;
  /** Consecutive failed attempts so far. */
  attempt: number;
  /** True when the token renews the open socket's token in-band (no reconnect). */
  refresh?: boolean;
}

/** The part of the WebSocket interface the client uses. */
export interface WebSocketLike {
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** What a recovering connection was told before its live frames (docs/recovery.md). */
export interface RecoveryStatus {
  /**
   * True when nothing was missed (or, on a first connect, nothing to recover).
   * False when some notifications may be gone: refetch what the page shows.
   */
  recovered: boolean;
  /** How many missed messages were replayed (to onMessage, before this call). */
  replayed: number;
  /** The position the client holds from here on (24 lowercase hex digits). */
  position: string | null;
}

export interface ConnectOptions {
  /** ws:// or wss:// URL of /ws/notifications/ (http(s) URLs and relative URLs are converted). */
  url: string;
  /**
   * Returns the access token for the next attempt; called before every attempt,
   * and (with `refresh: true`) ahead of the open socket's token expiry to renew it in-band.
   * Resolving to no token (null, undefined, "") stops the client only after the gateway
   * refused the last token (4001/4002: logged out); any other time it counts, like throwing,
   * as a failed attempt (onError, backoff), or for an in-band refresh as a failed refresh
   * that is tried again before expiry. Call close() at logout.
   * Leave it out to send no token (cookie authentication; no in-band refresh).
   */
  getToken?: (context: GetTokenContext) => Promise<string | null | undefined> | string | null | undefined;
  /**
   * Called with M for every `{"message": M}` frame; `frame` is the whole parsed object.
   * M is the same with or without recovery; a recovered or live frame of a recovering
   * connection also has `frame.position`.
   */
  onMessage?: (message: unknown, frame: Record<string, unknown> & { position?: string }) => void;
  /**
   * Called with other JSON frames (events.passthrough_types), never with pongs or the
   * recovery status frame; the position the gateway adds to them is taken off.
   */
  onFrame?: (frame: unknown) => void;
  /**
   * Ask for recovery of missed notifications (`recover=` in the query, then the greatest
   * position seen). A gateway without `layer.recovery` ignores it. Default true.
   */
  recover?: boolean;
  /** The position to recover from on the first attempt (e.g. one kept across a page load). */
  initialPosition?: string | null;
  /** Called once per recovering connection, after the replayed messages and before live ones. */
  onRecovery?: (status: RecoveryStatus) => void;
  onStateChange?: (state: ConnectionState, detail: StateDetail) => void;
  /** Errors from getToken, callbacks and unparsable frames (default: console.error). */
  onError?: (error: unknown) => void;
  /** WebSocket constructor (default: globalThis.WebSocket); tests pass the `ws` package. */
  WebSocketImpl?: new (url: string) => WebSocketLike;
  /** Query parameter name for the token (gateway's auth.token_query_param). Default "token". */
  tokenParam?: string;
  /** Backoff base. Default 500. */
  baseDelayMs?: number;
  /** Backoff ceiling. Default 30000. */
  maxDelayMs?: number;
  /** Random extra wait added to a `retry_after_ms` hint. Default 1000. */
  hintJitterMs?: number;
  /** Send `{"type": "ping"}` after this long without any frame. Default 25000. */
  pingIntervalMs?: number;
  /** Drop the socket when nothing arrives this long after a ping. Default 10000. */
  pongTimeoutMs?: number;
  /** Give up on a handshake after this long. Default 15000. */
  connectTimeoutMs?: number;
  /** An open socket that lasts this long resets the backoff. Default 5000. */
  stableAfterMs?: number;
  /** Consecutive 4001/4002 closes tolerated before stopping. Default 2. */
  maxAuthRetries?: number;
  /**
   * Renew the token on the open socket (`{"type": "refresh"}`) before its `exp`, so the
   * gateway never closes it with 4002. Needs getToken and a token whose payload has `exp`.
   * Default true.
   */
  refreshInBand?: boolean;
  /** Shares [low, high] of the token's time left between which the refresh is sent. Default [0.7, 0.9]. */
  refreshWindow?: [number, number];
  /** Refresh at least this long before expiry, when the lifetime leaves room for it. Default 10000. */
  refreshMarginMs?: number;
  /** A refresh the gateway does not answer within this long is tried again. Default 10000. */
  refreshTimeoutMs?: number;
  /** Random source in [0, 1) (tests). Default Math.random. */
  random?: () => number;
}

export interface NotificationConnection {
  readonly state: ConnectionState;
  /** The current socket, or null between attempts. */
  readonly socket: WebSocketLike | null;
  /** The greatest position seen (recovery), or null before the first. */
  readonly position: string | null;
  /** Stop for good: closes the socket with 1000 and cancels any pending retry. */
  close(): void;
  /** Skip the current backoff wait. */
  reconnectNow(): void;
}

export declare const CLOSE_ADVICE: Readonly<Record<number, CloseAdvice>>;
export declare function closeAdvice(code: number): CloseAdvice;
export declare function parseRetryAfter(reason: string | null | undefined): number | null;
export declare const MIN_REFRESH_DELAY_MS: number;
/** The claims of a JWT's payload, decoded and NOT verified; null if it has none. */
export declare function tokenClaims(token: string | null | undefined): Record<string, unknown> | null;
/** Milliseconds the token has left (its whole `exp - iat` lifetime when `fresh`); null without `exp`. */
export declare function tokenTimeLeft(
  token: string | null | undefined,
  options?: { fresh?: boolean; expiresAt?: number | null; now?: number },
): number | null;
/** When to refresh a token with `timeLeftMs` to go (jittered within the window, before the margin). */
export declare function refreshDelay(
  timeLeftMs: number,
  options?: { refreshWindow?: [number, number]; refreshMarginMs?: number; random?: () => number },
): number;
export declare function backoffDelay(
  attempt: number,
  options?: { baseDelayMs?: number; maxDelayMs?: number; random?: () => number },
): number;
export declare function connect(options: ConnectOptions): NotificationConnection;
export declare const RECOVER_PARAM: "recover";
/** True for a position: 24 lowercase hex digits. */
export declare function isPosition(value: unknown): value is string;
