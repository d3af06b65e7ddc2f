// A WebSocket that reconnects by itself: exponential backoff 1 s, 2 s, 4 s …
// capped at 15 s, with ±20 % jitter so that many browsers dropped at once by a
// gateway restart do not all come back in the same instant.
//
// It also resumes the live protocol: it remembers the epoch and seq of the last
// LIVE_DATA it passed on, and the first INIT_FIELD_LIST sent after a reconnect
// carries them as `since`. The server then answers with one RECOVERY holding
// exactly the messages missed meanwhile; they are passed on one by one as
// LIVE_DATA, in order, followed by the RECOVERY itself (`recovered: false` means
// they are gone, and the caller fills the gap from the history API).

const FIRST_DELAY_MS = 1000;
const MAX_DELAY_MS = 15000;
// From this many failed attempts on (down for about 1 + 2 + 4 s, now waiting 8 s
// or more), the link is shown as offline rather than reconnecting.
const OFFLINE_AFTER_ATTEMPTS = 4;

export class ReconnectingSocket {
  /**
   * @param {string} url
   * @param {{onOpen: () => void, onMessage: (message: object) => void, onStatus: () => void}} handlers
   */
  constructor(url, { onOpen, onMessage, onStatus }) {
    this.url = url;
    this.onOpen = onOpen;
    this.onMessage = onMessage;
    this.onStatus = onStatus;
    this.ws = null;
    this.attempt = 0; // failed attempts since the last successful open
    this.retryAt = null; // when the next attempt is due, while waiting for it
    this.timer = null;
    this.closed = false;
    this.last = null; // {epoch, seq} of the last LIVE_DATA passed on
    this.resumeNext = false; // the next INIT_FIELD_LIST carries `since`
    this.connect();
  }

  get isOpen() {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  /** {state: 'live' | 'connecting' | 'reconnecting' | 'offline', retryIn: seconds | null} */
  get status() {
    if (this.isOpen) return { state: 'live', retryIn: null };
    const retryIn = this.retryAt === null
      ? null
      : Math.max(0, Math.ceil((this.retryAt - Date.now()) / 1000));
    if (this.attempt === 0) return { state: 'connecting', retryIn };
    const offline = !navigator.onLine || this.attempt >= OFFLINE_AFTER_ATTEMPTS;
    return { state: offline ? 'offline' : 'reconnecting', retryIn };
  }

  send(message) {
    if (!this.isOpen) return;
    let out = message;
    if (message?.type === 'INIT_FIELD_LIST' && this.resumeNext) {
      this.resumeNext = false;
      // A rate-controlled subscription does not recover (the server ignores `since`).
      if (this.last && message.maxRate == null && message.since === undefined) {
        out = { ...message, since: this.last };
      }
    }
    this.ws.send(JSON.stringify(out));
  }

  /** Pass `message` on, unpacking a RECOVERY into its LIVE_DATA messages first. */
  deliver(message) {
    if (message?.type === 'RECOVERY') {
      for (const missed of Array.isArray(message.messages) ? message.messages : []) {
        this.deliver(missed);
      }
    } else if (message?.type === 'LIVE_DATA'
        && typeof message.epoch === 'string' && Number.isInteger(message.seq)) {
      this.last = { epoch: message.epoch, seq: message.seq };
    }
    this.onMessage(message);
  }

  /** Skip the remaining backoff (browser back online, user asked). */
  reconnectNow() {
    if (this.closed || this.retryAt === null) return;
    clearTimeout(this.timer);
    this.connect();
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    const { ws } = this;
    this.ws = null;
    if (!ws) return;
    ws.onclose = null;
    ws.onmessage = null;
    // Closing a socket that is still connecting makes the browser log an error; let it open first.
    ws.onopen = ws.readyState === WebSocket.CONNECTING ? () => ws.close(1000) : null;
    if (ws.readyState !== WebSocket.CONNECTING) ws.close(1000);
  }

  connect() {
    this.retryAt = null;
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => {
      this.attempt = 0;
      this.resumeNext = this.last !== null;
      this.onStatus();
      this.onOpen();
    };
    ws.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return; // not ours to interpret; the protocol is JSON only
      }
      this.deliver(message);
    };
    ws.onclose = () => {
      this.ws = null;
      this.scheduleReconnect();
    };
    this.onStatus();
  }

  scheduleReconnect() {
    const base = Math.min(FIRST_DELAY_MS * 2 ** this.attempt, MAX_DELAY_MS);
    const delay = Math.min(base * (0.8 + 0.4 * Math.random()), MAX_DELAY_MS);
    this.attempt += 1;
    this.retryAt = Date.now() + delay;
    this.timer = setTimeout(() => this.connect(), delay);
    this.onStatus();
  }
}
