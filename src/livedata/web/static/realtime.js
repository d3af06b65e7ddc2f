// Real-time control on the Live Data page: each group card gets a status line
// (🟢 "Real-Time is running" / 🔴 "Real-Time is stopped") with Start / Stop buttons
// that send the direct methods startMs / endMs through
// POST /api/iothubs/{org}/devices/{chassis}/methods. The buttons are disabled while a
// command is in flight; a failure (machine offline: 404, no answer: 504) is shown on
// the card. While real-time is off each chart carries an overlay "Real-time stopped"
// so it does not look frozen. The status is read once per machine
// (GET /api/resources/{org}/machines/{chassis}/status) and then pushed: one
// EventSource on the log table device_status (/db/watch/device_status, 1 s period)
// brings every change made elsewhere (another page or gateway, the device itself,
// presence) within about a second, without a reload. EventSource reconnects by
// itself (Last-Event-ID, so no change is lost); a slow poll every 30 s covers a
// stream that stays down.
//
// Start / Stop need the operator role: they are hidden from viewers (session.js's
// body[data-role]); a refusal by the server (403) is shown on the card like any failure.
//
// Self-contained: it reads the organisation and machine from the page's pickers and
// decorates the cards app.js renders in #groups (a MutationObserver adds the panel to
// new cards), so app.js needs no change.

import { $, h } from './dom.js';
import { authFetch } from './session.js';

const POLL_MS = 30000;
const STATUS_STREAM = '/db/watch/device_status?period=1s&timeformat=ms&max-rows=100';
const groupsEl = $('#groups');
const orgSelect = $('#org-select');
const machineSelect = $('#machine-select');

const rt = {
  key: '', // "org/chassis" the status belongs to
  status: null, // last status body, or null while unknown
  busy: false,
  error: '',
};

const style = document.createElement('style');
style.textContent = `
.rt-panel { display: flex; align-items: center; gap: 8px; margin: 6px 16px 0; font-size: 13px; flex-wrap: wrap; }
.rt-state { font-weight: 600; }
.rt-error { color: var(--danger-text); font-size: 12px; }
.rt-reason { font-size: 12px; }
.card { position: relative; }
.rt-overlay { position: absolute; left: 8px; right: 8px; bottom: 8px; height: 260px; display: flex;
  align-items: center; justify-content: center; pointer-events: none; font-size: 15px; font-weight: 600;
  color: var(--danger-text); background: var(--overlay); }
`;
document.head.append(style);

const current = () => ({ org: orgSelect?.value || '', chassis: machineSelect?.value || '' });

function label() {
  const s = rt.status;
  if (!s) return ['⚪', 'Real-Time status unknown'];
  if (!s.connected && s.online) return ['🟢', 'Sending (no command channel)'];
  if (!s.connected) return ['⚫', 'Machine offline'];
  if (s.realtime === 'on') return ['🟢', 'Real-Time is running'];
  if (s.realtime === 'off') return ['🔴', 'Real-Time is stopped'];
  return ['⚪', 'Real-Time status unknown'];
}

function panelFor(card) {
  let panel = card.querySelector(':scope > .rt-panel');
  if (!panel) {
    panel = h('div', { class: 'rt-panel', 'data-testid': 'rt-panel' },
      h('span', { class: 'rt-state', role: 'status' }),
      h('button', { type: 'button', class: 'btn small rt-start needs-operator', onclick: () => send('startMs') }, 'Start'),
      h('button', { type: 'button', class: 'btn small rt-stop needs-operator', onclick: () => send('endMs') }, 'Stop'),
      h('span', { class: 'rt-reason muted' }),
      h('span', { class: 'rt-error', role: 'alert' }));
    const head = card.querySelector(':scope > .card-head');
    if (head) head.after(panel);
    else card.prepend(panel);
  }
  return panel;
}

function render() {
  const [icon, text] = label();
  const on = rt.status?.realtime;
  const stopped = rt.status && rt.status.connected && on === 'off';
  for (const card of groupsEl.querySelectorAll(':scope > .card')) {
    const panel = panelFor(card);
    panel.querySelector('.rt-state').textContent = `${icon} ${rt.busy ? 'Sending…' : text}`;
    // no command channel (offline, or sending over HTTP only): say why instead of a 404
    const reason = rt.status && !rt.status.connected
      ? (rt.status.commandsReason || 'the machine is not connected') : null;
    for (const [cls, same] of [['.rt-start', 'on'], ['.rt-stop', 'off']]) {
      const button = panel.querySelector(cls);
      button.disabled = rt.busy || !rt.status || on === same || Boolean(reason);
      button.title = reason ? `Not possible now: ${reason}` : '';
    }
    panel.querySelector('.rt-reason').textContent = reason && rt.status.online ? `Start/Stop: ${reason}` : '';
    panel.querySelector('.rt-error').textContent = rt.error;
    let overlay = card.querySelector(':scope > .rt-overlay');
    if (stopped && !overlay) {
      overlay = h('div', { class: 'rt-overlay' }, 'Real-time stopped');
      card.append(overlay);
    } else if (!stopped && overlay) overlay.remove();
  }
}

async function refresh() {
  const { org, chassis } = current();
  const key = `${org}/${chassis}`;
  if (key !== rt.key) Object.assign(rt, { key, status: null, error: '' });
  if (!org || !chassis) return render();
  try {
    const res = await authFetch(`/api/resources/${encodeURIComponent(org)}/machines/${encodeURIComponent(chassis)}/status`);
    if (res.ok && rt.key === key) rt.status = await res.json();
  } catch {
    // the server is away: keep the last state, the next poll tries again
  }
  render();
}

async function send(methodName) {
  const { org, chassis } = current();
  if (!org || !chassis || rt.busy) return;
  rt.busy = true;
  rt.error = '';
  render();
  try {
    const res = await authFetch(`/api/iothubs/${encodeURIComponent(org)}/devices/${encodeURIComponent(chassis)}/methods`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ methodName, payload: { reason: 'user_action', commandId: crypto.randomUUID?.() || String(Date.now()) }, responseTimeoutInSeconds: 10 }),
    });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) {
      const what = res.status === 404 && body.error?.code === 'DeviceNotConnected' ? 'Machine is offline'
        : res.status === 504 ? 'Machine did not answer in time'
          : res.status === 403 ? 'Not allowed' : 'Command failed';
      rt.error = `${what}: ${body.error?.message || res.status}`;
    } else if (body.status !== 200) {
      rt.error = `Machine answered ${body.status}: ${JSON.stringify(body.payload)}`;
    } else if (rt.status && body.payload?.realtime) {
      rt.status = { ...rt.status, realtime: body.payload.realtime };
    }
  } catch (err) {
    rt.error = `Command failed: ${err.message}`;
  } finally {
    rt.busy = false;
    render();
    refresh();
  }
}

// one status row pushed by the server: {TIME, MACHINE, CONNECTED, REALTIME, LAST_SEEN}
function onStatusRow(event) {
  let row;
  try {
    row = JSON.parse(event.data);
  } catch {
    return;
  }
  if (!row || row.MACHINE !== current().chassis || rt.busy) return;
  rt.status = {
    ...(rt.status || {}),
    deviceId: row.MACHINE,
    connected: Boolean(row.CONNECTED),
    online: row.ONLINE ?? Boolean(row.CONNECTED),
    commandsReason: row.COMMANDS_REASON ?? null,
    realtime: row.REALTIME || 'unknown',
    lastSeen: row.LAST_SEEN ?? rt.status?.lastSeen ?? null,
  };
  render();
}

if (window.EventSource) new EventSource(STATUS_STREAM).addEventListener('message', onStatusRow);

new MutationObserver(() => render()).observe(groupsEl, { childList: true });
orgSelect?.addEventListener('change', () => refresh());
machineSelect?.addEventListener('change', () => setTimeout(refresh, 0));
// read the status when the machine changes (also when app.js sets the picker itself),
// while it is still unknown, and every POLL_MS as a fallback for the stream
let fetchedAt = 0;
setInterval(() => {
  const { org, chassis } = current();
  const stale = `${org}/${chassis}` !== rt.key || !rt.status || rt.status.realtime === 'unknown';
  if (stale || Date.now() - fetchedAt > POLL_MS) {
    fetchedAt = Date.now();
    refresh();
  }
}, 1000);
refresh();
