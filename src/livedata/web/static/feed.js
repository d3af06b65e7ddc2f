// One Feed per (machine, message type): a single live WebSocket carrying the
// union of the fields of all groups of that type, plus the points drawn so far.
//
// History and live data meet without a gap or a doubled point: after the socket
// opens and INIT_FIELD_LIST is sent, LIVE_DATA is buffered while history is
// fetched; the history is merged first, then the buffer. Points are kept sorted
// by ts and a ts already present is not added again. After a reconnect, history
// from the last point seen fills what was missed while the socket was down.

import { api, liveUrl } from './api.js';
import { ReconnectingSocket } from './live.js';

export const WINDOW_MS = 120_000;
// Points older than the window plus this, behind the newest point of their series, are dropped.
const KEEP_EXTRA_MS = 30_000;
// Live data goes out before the store has it (ingest does not make live wait for
// storage), so the last moments before the socket opened can reach the store only
// after the history was read: this long after each open, those seconds are read once
// more (merging skips points already drawn). The server covers live records when the
// socket sends `since` (RECOVERY, or after `recovered: false` what its live history
// holds), but not a first open, and not backfill (stored, never live: a restarted
// device's catch-up), so the re-read stays.
const SETTLE_MS = 3000;

export class Feed {
  /**
   * @param {{orgId: string, chassisId: string, msgType: string, fields: string[],
   *          onData: () => void, onStatus: () => void,
   *          onError: (message: string) => void,
   *          windowMs?: number, maxPoints?: number | null}} options
   * `windowMs` is the time range kept and backfilled (2 min by default); with
   * `maxPoints`, history comes min/max downsampled to at most that many points per
   * field (the wider ranges), and live points are appended as they come.
   */
  constructor({ orgId, chassisId, msgType, fields, onData, onStatus, onError, windowMs = WINDOW_MS, maxPoints = null }) {
    this.windowMs = windowMs;
    this.maxPoints = maxPoints;
    this.orgId = orgId;
    this.chassisId = chassisId;
    this.msgType = msgType;
    this.fields = new Set(fields);
    this.onData = onData;
    this.onError = onError;
    /** @type {Map<string, Array<[number, number]>>} field -> points sorted by ts */
    this.series = new Map();
    this.lastTs = null;
    this.backfills = 0; // history requests in flight; LIVE_DATA is buffered meanwhile
    this.buffer = [];
    this.settleTimer = null; // the second read of the seconds before the last open
    this.closed = false;
    this.socket = new ReconnectingSocket(liveUrl(orgId, chassisId, msgType), {
      onOpen: () => this.handleOpen(),
      onMessage: (message) => this.handleMessage(message),
      onStatus,
    });
  }

  get status() {
    return this.socket.status;
  }

  /** Replace the field list: tell the server, and backfill fields that are new. */
  setFields(fields) {
    const next = new Set(fields);
    const added = fields.filter((field) => !this.fields.has(field));
    const removed = [...this.fields].filter((field) => !next.has(field));
    if (added.length === 0 && removed.length === 0) return;
    for (const field of removed) this.series.delete(field);
    this.fields = next;
    if (!this.socket.isOpen) return; // the next open sends the list and backfills
    this.sendFieldList();
    if (added.length) this.backfill(added, null);
  }

  reconnectNow() {
    this.socket.reconnectNow();
  }

  close() {
    this.closed = true;
    clearTimeout(this.settleTimer);
    this.socket.close();
  }

  handleOpen() {
    this.sendFieldList();
    // Resume from the last point seen if it is still in the window; fields that have
    // no points yet (added while disconnected) get the whole window.
    const fields = [...this.fields];
    const resume = this.lastTs !== null && this.lastTs > Date.now() - this.windowMs;
    const resumed = resume ? fields.filter((field) => this.series.has(field)) : [];
    const fresh = fields.filter((field) => !resumed.includes(field));
    if (resumed.length) this.backfill(resumed, this.lastTs);
    if (fresh.length) this.backfill(fresh, null);
    const openedAt = Date.now();
    clearTimeout(this.settleTimer);
    this.settleTimer = setTimeout(() => {
      if (!this.closed) this.backfill([...this.fields], openedAt - SETTLE_MS);
    }, SETTLE_MS);
  }

  sendFieldList() {
    this.socket.send({ type: 'INIT_FIELD_LIST', payload: [...this.fields] });
  }

  async backfill(fields, from) {
    this.backfills += 1;
    try {
      // A whole wide window is asked with both ends (the server refuses more than 7 d,
      // and its clock may run a little ahead of ours); live points after `to` are buffered.
      const now = Date.now();
      const whole = from == null && this.windowMs !== WINDOW_MS;
      const history = await api.history(
        this.orgId, this.chassisId, this.msgType, fields,
        whole ? now - this.windowMs : from, this.maxPoints, whole ? now : null);
      if (this.closed) return;
      for (const [field, points] of Object.entries(history.series ?? {})) {
        if (this.fields.has(field)) this.merge(field, points);
      }
    } catch (err) {
      if (!this.closed) this.onError(`${this.msgType} history: ${err.message}`);
    } finally {
      this.backfills -= 1;
      if (this.backfills === 0 && !this.closed) {
        for (const message of this.buffer.splice(0)) this.applyLive(message);
        this.onData();
      }
    }
  }

  handleMessage(message) {
    if (message.type === 'LIVE_DATA') {
      if (this.backfills > 0) {
        this.buffer.push(message);
      } else {
        this.applyLive(message);
        this.onData();
      }
    } else if (message.type === 'ERROR') {
      const code = message.code ? ` (${message.code})` : '';
      this.onError(`${this.msgType}: ${message.message ?? 'error from server'}${code}`);
    }
  }

  applyLive(message) {
    const ts = Number.isFinite(message.ts) ? message.ts : Date.now();
    for (const [field, value] of Object.entries(message.payload ?? {})) {
      if (this.fields.has(field)) this.merge(field, [[ts, value]]);
    }
  }

  merge(field, points) {
    if (points.length === 0) return;
    let series = this.series.get(field);
    if (!series) {
      series = [];
      this.series.set(field, series);
    }
    for (const point of points) insertPoint(series, point);
    const newest = series[series.length - 1][0];
    const cutoff = newest - this.windowMs - KEEP_EXTRA_MS;
    let stale = 0;
    while (series[stale][0] < cutoff) stale += 1;
    if (stale) series.splice(0, stale);
    if (this.lastTs === null || newest > this.lastTs) this.lastTs = newest;
  }
}

/** Insert [ts, value] keeping `series` sorted by ts; a ts already present is kept as is. */
export function insertPoint(series, point) {
  const ts = point[0];
  if (series.length === 0 || series[series.length - 1][0] < ts) {
    series.push(point);
    return;
  }
  let lo = 0;
  let hi = series.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (series[mid][0] < ts) lo = mid + 1;
    else hi = mid;
  }
  if (series[lo][0] !== ts) series.splice(lo, 0, point);
}
