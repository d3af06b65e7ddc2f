// A replay of a stored range through the gateway's replay socket (the live protocol
// plus REPLAY_CONTROL / REPLAY_STATE): the same shape as a Feed, so the same charts
// draw it. `now` is the replay clock (data time), moving between messages at the
// replay speed, so the charts move as they do live.

import { datasetPath } from './api.js';
import { insertPoint } from './feed.js';

export class ReplayFeed {
  /**
   * @param {{orgId: string, chassisId: string, msgType: string, fields: string[],
   *          from: number, to: number, speed: number, windowMs: number,
   *          onData: () => void, onStatus: () => void, onError: (message: string) => void,
   *          onState: (state: object) => void}} options
   */
  constructor({ orgId, chassisId, msgType, fields, from, to, speed, windowMs, onData, onStatus, onError, onState }) {
    this.msgType = msgType;
    this.fields = new Set(fields);
    this.windowMs = windowMs;
    this.series = new Map();
    this.onData = onData;
    this.onStatus = onStatus;
    this.onError = onError;
    this.onState = onState;
    this.clock = { ts: from, at: performance.now(), speed, playing: false };
    this.linkState = 'connecting';
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const query = new URLSearchParams({ msgType, from: String(from), to: String(to), speed: String(speed) });
    this.socket = new WebSocket(`${scheme}//${location.host}${datasetPath(orgId, chassisId)}/replay?${query}`);
    this.socket.onopen = () => {
      this.linkState = 'replay';
      this.send({ type: 'INIT_FIELD_LIST', payload: [...this.fields] });
      this.onStatus();
    };
    this.socket.onclose = () => {
      this.linkState = 'offline';
      this.clock.playing = false;
      this.onStatus();
    };
    this.socket.onmessage = (event) => this.handle(JSON.parse(event.data));
  }

  /** The replay clock: the data time the charts end at. */
  get now() {
    const { ts, at, speed, playing } = this.clock;
    return playing ? ts + (performance.now() - at) * speed : ts;
  }

  get status() {
    return { state: this.linkState, retryIn: null };
  }

  send(message) {
    if (this.socket.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(message));
  }

  control(action, extra = {}) {
    this.send({ type: 'REPLAY_CONTROL', action, ...extra });
  }

  setFields(fields) {
    this.fields = new Set(fields);
    this.series.clear();
    this.send({ type: 'INIT_FIELD_LIST', payload: fields });
  }

  reconnectNow() {}

  close() {
    this.socket.onclose = null;
    this.socket.close();
  }

  handle(message) {
    if (message.type === 'LIVE_DATA') {
      for (const [field, value] of Object.entries(message.payload ?? {})) {
        if (!this.fields.has(field)) continue;
        let series = this.series.get(field);
        if (!series) this.series.set(field, (series = []));
        insertPoint(series, [message.ts, value]);
        let stale = 0;
        while (series[stale][0] < message.ts - this.windowMs) stale += 1;
        if (stale) series.splice(0, stale);
      }
      if (message.ts > this.now) this.clock = { ...this.clock, ts: message.ts, at: performance.now() };
      this.onData();
    } else if (message.type === 'REPLAY_STATE') {
      if (message.ts < this.now - 1000) this.series.clear(); // a seek back
      this.clock = { ts: message.ts, at: performance.now(), speed: message.speed, playing: message.state === 'playing' };
      this.onState(message);
      this.onData();
    } else if (message.type === 'ERROR') {
      this.onError(`${this.msgType} replay: ${message.message ?? 'error from server'}`);
    }
  }
}
