// Fleet dashboard: every machine's status, gauges and sparklines of chosen fields,
// GPS positions, and the active alerts with acknowledge buttons.
//
// Opens from the REST fleet summary, alert rules and active alerts, fills the
// sparklines from the history API, then stays live through Socket.IO:
// `dashboard:update` (once a second: status, last seen, latest values),
// `alert-created` and `alert-updated`. Without Socket.IO it polls the summary.

import { $, cssVar, h, showBanner } from './dom.js';
import { showOrganisation, startSession } from './session.js';
import { SEVERITY_COLORS, SEVERITY_RANK, ago, alertsApi, api, clock, num } from './alerts-api.js';
import { FleetMap } from './fleet-map.js';

const { echarts } = globalThis; // classic <script defer> in fleet.html

const DEFAULT_FIELDS = ['engine_rpm', 'coolant_temp', 'fuel_level'];
const MAX_FIELDS = 4;
const GPS = ['gps_lat', 'gps_lng'];
const DTC_FIELD = 'dtc_active'; // active J1939 DTCs of a machine (from its DM1s)
const SPARK_MS = 120_000;
const TRAIL = 90; // points of a map trail ([lat, lng])
const POLL_MS = 2000;
const RULES_REFRESH_MS = 30_000;
const REALTIME_REFRESH_MS = 5_000;
// Colours of the current theme (app.css variables; theme.js switches them)
const NORMAL_BAND = () => cssVar('--chart-band');
const OFFLINE_COLOR = () => cssVar('--faint');
const ONLINE_COLOR = () => cssVar('--live');
// Canvas text needs a real font list ('inherit' is not a valid canvas font and falls back to 10px).
const FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif';
const TRAIL_COLORS = ['#2563eb', '#0891b2', '#8b5cf6', '#db2777', '#65a30d', '#ea580c', '#0d9488', '#4f46e5'];

const state = {
  orgId: null,
  fields: [],
  /** @type {Map<string, {unit: string, min: number|null, max: number|null, msgType: string}>} */
  fieldInfo: new Map(),
  /** @type {Map<string, object>} chassis -> machine view */
  machines: new Map(),
  rules: [],
  /** @type {Map<number, object>} active alerts by id */
  alerts: new Map(),
  socket: null,
  pollTimer: null,
  map: null,
  /** tile server of the map: {tiles: URL template, attribution}; '' = none */
  mapConfig: { tiles: '', attribution: '' },
  ackAlert: null,
  fresh: new Set(),
};

// ---- start ----------------------------------------------------------------

const params = new URLSearchParams(location.search);

async function start() {
  // The organisation is the logged-in user's own (/api/auth/me); ?org= is only kept in the URL.
  let org;
  try {
    const who = await startSession();
    org = await api.org(who.org);
  } catch (err) {
    showBanner(`Cannot load your organisation: ${err.message}`);
    return;
  }
  const select = $('#org-select');
  showOrganisation(select, org);
  const orgId = org.id;
  if (orgId) await selectOrg(orgId);
  else $('#fleet-info').textContent = 'No organisation.';
  setInterval(everySecond, 1000);
  setInterval(() => state.orgId && loadRules(), RULES_REFRESH_MS);
  setInterval(() => state.orgId && refreshRealtime(state.orgId), REALTIME_REFRESH_MS);
}

function chosenFields() {
  const fromUrl = params.get('fields');
  const stored = localStorage.getItem('livedata.fleet.fields');
  const list = (fromUrl ?? stored ?? DEFAULT_FIELDS.join(',')).split(',').map((f) => f.trim()).filter(Boolean);
  return [...new Set(list)].slice(0, MAX_FIELDS);
}

async function selectOrg(orgId) {
  disconnect();
  state.orgId = orgId;
  $('#org-select').value = orgId;
  state.fields = chosenFields();
  const query = new URLSearchParams({ org: orgId });
  if (params.get('fields')) query.set('fields', state.fields.join(','));
  history.replaceState(null, '', `?${query}`);
  for (const link of document.querySelectorAll('a[data-keep-org]')) {
    const url = new URL(link.getAttribute('href'), location.href);
    url.searchParams.set('org', orgId);
    link.setAttribute('href', `${url.pathname}${url.search}`);
  }
  let summary;
  let alerts;
  try {
    [summary, state.rules, alerts] = await Promise.all([
      alertsApi.fleet(orgId, [...state.fields, ...GPS, DTC_FIELD]),
      alertsApi.rules(orgId),
      alertsApi.alerts(orgId, 'active'),
    ]);
  } catch (err) {
    showBanner(`Cannot load the fleet of ${orgId}: ${err.message}`);
    return;
  }
  if (state.orgId !== orgId) return;
  state.fieldInfo = new Map(summary.fields.map((f) => [f.name, f]));
  state.mapConfig = summary.map ?? state.mapConfig;
  renderMachines(summary.machines);
  state.alerts = new Map(alerts.map((a) => [a.id, a]));
  renderAlerts();
  renderMap();
  updateStats();
  fillSparklines(orgId);
  connect(orgId);
}

// ---- machines -------------------------------------------------------------

function renderMachines(list) {
  for (const view of state.machines.values()) {
    view.gauges.dispose();
    view.sparks.dispose();
    view.observer.disconnect();
  }
  state.machines.clear();
  const container = $('#machines');
  container.replaceChildren();
  if (!list.length) {
    container.append(h('p', { class: 'panel-empty' }, 'This organisation has no machines yet.'));
    return;
  }
  for (const m of list) {
    const view = machineView(m);
    container.append(view.el);
    state.machines.set(m.chassisId, view);
    applyMachine(m.chassisId, { online: m.online, lastSeen: m.lastSeen, values: m.values, gps: m.gps, realtime: m.realtime });
  }
}

function machineView(m) {
  const status = h('span', { class: 'status-pill', dataset: { status: 'offline' } }, 'offline');
  const lastSeen = h('dd', { class: 'last-seen' }, '–');
  const realtime = h('dd', { class: 'realtime' }, 'unknown');
  const alertCount = h('dd', { class: 'alert-count' }, '0');
  const dtcCount = h('dd', { class: 'dtc-count' }, '–');
  const gaugesEl = h('div', { class: 'gauges', role: 'img', 'aria-label': `Gauges of ${m.chassisId}` });
  const sparksEl = h('div', { class: 'sparks', 'aria-hidden': 'true' });
  const el = h('article', { class: 'machine', dataset: { chassis: m.chassisId, status: 'offline' } },
    h('header', { class: 'machine-head' },
      h('div', { class: 'machine-title' },
        h('h3', {}, m.chassisId),
        h('span', { class: 'muted' }, [m.name, m.model].filter(Boolean).join(' · '))),
      status),
    h('dl', { class: 'machine-meta' },
      h('div', {}, h('dt', {}, 'Last seen'), lastSeen),
      h('div', {}, h('dt', {}, 'Real-time'), realtime),
      h('div', {}, h('dt', {}, 'Active alerts'), alertCount),
      h('div', {}, h('dt', {}, 'Active DTCs'), dtcCount)),
    gaugesEl,
    sparksEl);
  const gauges = echarts.init(gaugesEl, null, { renderer: 'canvas' });
  const sparks = echarts.init(sparksEl, null, { renderer: 'canvas' });
  const view = {
    chassis: m.chassisId,
    name: m.name,
    model: m.model,
    el,
    status,
    lastSeenEl: lastSeen,
    realtimeEl: realtime,
    alertCountEl: alertCount,
    dtcCountEl: dtcCount,
    gauges,
    sparks,
    online: false,
    lastSeen: null,
    values: {},
    gps: null,
    trail: [],
    spark: new Map(state.fields.map((f) => [f, []])),
    observer: new ResizeObserver(() => {
      gauges.resize();
      sparks.resize();
      layoutCharts(view);
    }),
  };
  view.observer.observe(gaugesEl);
  layoutCharts(view);
  return view;
}

/** Gauge and sparkline options sized for the card's current width. */
// A new theme: the gauges take its colours.
addEventListener('livedata:theme', () => {
  for (const view of state.machines.values()) layoutCharts(view);
});

function layoutCharts(view) {
  const n = Math.max(1, state.fields.length);
  const width = view.gauges.getWidth() || 300;
  const height = view.gauges.getHeight() || 150;
  const cell = width / n;
  const radius = Math.max(30, Math.min(cell * 0.46, height * 0.56));
  const small = cell < 115;
  view.gauges.setOption({
    animation: false,
    textStyle: { fontFamily: FONT },
    series: state.fields.map((field, i) => gaugeSeries(view, field, i, n, radius, small)),
  }, { replaceMerge: ['series'] });
  const sparkWidth = view.sparks.getWidth() || width;
  const pad = Math.min(14, (sparkWidth / n) * 0.08);
  const grids = state.fields.map((_, i) => ({
    left: (sparkWidth / n) * i + pad, width: sparkWidth / n - 2 * pad, top: 4, bottom: 4,
  }));
  view.sparks.setOption({
    animation: false,
    grid: grids,
    xAxis: grids.map((_, i) => ({ type: 'time', gridIndex: i, show: false })),
    yAxis: grids.map((_, i) => ({
      type: 'value', gridIndex: i, show: false, min: (v) => v.min - sparkPad(v), max: (v) => v.max + sparkPad(v),
    })),
    series: state.fields.map((field, i) => ({
      type: 'line',
      name: field,
      xAxisIndex: i,
      yAxisIndex: i,
      showSymbol: false,
      lineStyle: { width: 1.5, color: '#2563eb' },
      areaStyle: { color: 'rgba(37, 99, 235, 0.08)' },
      data: view.spark.get(field) ?? [],
    })),
  }, { replaceMerge: ['grid', 'xAxis', 'yAxis', 'series'] });
}

/** Room above and below a sparkline, so that a small step does not look like a cliff. */
const sparkPad = (v) => Math.max((v.max - v.min) * 0.2, Math.abs(v.max) * 0.02, 0.5);

function fieldRange(field, view) {
  const info = state.fieldInfo.get(field) ?? {};
  let { min, max } = info;
  if (min == null || max == null) {
    const thresholds = rulesFor(view, field).flatMap((r) => [r.threshold, r.thresholdHigh]).filter((v) => v != null);
    const value = typeof view.values[field] === 'number' ? view.values[field] : 0;
    if (info.unit === '%') [min, max] = [0, 100];
    else {
      min = Math.min(0, value, ...thresholds);
      max = Math.max(1, value * 1.5, ...thresholds.map((t) => t * 1.25));
    }
  }
  return [min, max];
}

function gaugeSeries(view, field, i, n, radius, small) {
  const [min, max] = fieldRange(field, view);
  const unit = state.fieldInfo.get(field)?.unit ?? '';
  const value = view.values[field];
  const has = typeof value === 'number';
  const online = view.online;
  const needle = online ? cssVar('--chart-gauge') : OFFLINE_COLOR();
  return {
    type: 'gauge',
    name: field,
    center: [`${((i + 0.5) / n) * 100}%`, '56%'],
    radius,
    startAngle: 210,
    endAngle: -30,
    min,
    max,
    splitNumber: 4,
    axisLine: { lineStyle: { width: small ? 7 : 9, color: bandStops(view, field, min, max) } },
    splitLine: { distance: 0, length: small ? 7 : 9, lineStyle: { color: cssVar('--surface'), width: 2 } },
    axisTick: { show: false },
    axisLabel: { show: false },
    pointer: { show: has, length: '62%', width: small ? 3 : 4, itemStyle: { color: needle } },
    anchor: { show: has, size: small ? 6 : 8, itemStyle: { color: needle } },
    title: { offsetCenter: [0, '80%'], fontSize: small ? 10 : 12, color: cssVar('--text-2') },
    detail: {
      offsetCenter: [0, '42%'],
      formatter: (v) => (Number.isFinite(v) ? `{v|${num(v)}}${unit ? `{u|${unit === '°' ? '' : ' '}${unit}}` : ''}` : '{u|no data}'),
      rich: {
        v: { fontSize: small ? 13 : 16, fontWeight: 600, color: online ? cssVar('--text-strong') : OFFLINE_COLOR() },
        u: { fontSize: small ? 10 : 11, color: cssVar('--muted') },
      },
    },
    data: [{ name: field, value: typeof value === 'number' ? value : '-' }],
  };
}

/** Rules whose thresholds apply to this machine and field (enabled value rules in scope). */
function rulesFor(view, field) {
  return state.rules.filter((r) => r.enabled && r.kind === 'value' && r.field === field
    && (r.scope === 'all' || (r.scope === 'model' && r.scopeValue === view.model)
      || (r.scope === 'machine' && r.scopeValue === view.chassis)));
}

function holds(rule, v) {
  const t = rule.threshold;
  switch (rule.condition) {
    case '>': return v > t;
    case '>=': return v >= t;
    case '<': return v < t;
    case '<=': return v <= t;
    case 'outside': return v < t || v > rule.thresholdHigh;
    default: return false; // == and != have no band
  }
}

/** ECharts gauge colour stops: each range of the axis in the colour of the worst rule it meets. */
function bandStops(view, field, min, max) {
  const rules = rulesFor(view, field);
  if (!rules.length || !(max > min)) return [[1, NORMAL_BAND()]];
  const cuts = [min, max];
  for (const r of rules) for (const t of [r.threshold, r.thresholdHigh]) if (t != null && t > min && t < max) cuts.push(t);
  const points = [...new Set(cuts)].sort((a, b) => a - b);
  const stops = [];
  for (let k = 1; k < points.length; k += 1) {
    const mid = (points[k - 1] + points[k]) / 2;
    let worst = null;
    for (const r of rules) {
      if (holds(r, mid) && (!worst || SEVERITY_RANK[r.severity] > SEVERITY_RANK[worst])) worst = r.severity;
    }
    stops.push([(points[k] - min) / (max - min), worst ? SEVERITY_COLORS[worst] : NORMAL_BAND()]);
  }
  return stops;
}

function setRealtime(view, realtime) {
  if (!realtime) return;
  view.realtimeEl.textContent = realtime;
  view.realtimeEl.dataset.state = realtime;
}

/** Apply one machine's latest state: {online, lastSeen, values (flat), gps}. */
function applyMachine(chassis, update) {
  const view = state.machines.get(chassis);
  if (!view) return;
  view.online = update.online;
  const newer = update.lastSeen != null && (view.lastSeen == null || update.lastSeen > view.lastSeen);
  if (update.lastSeen != null) view.lastSeen = Math.max(view.lastSeen ?? 0, update.lastSeen);
  Object.assign(view.values, update.values ?? {});
  const dtcs = view.values[DTC_FIELD];
  view.dtcCountEl.textContent = typeof dtcs === 'number' ? String(dtcs) : '–';
  view.dtcCountEl.dataset.active = typeof dtcs === 'number' && dtcs > 0 ? 'yes' : 'no';
  const label = update.online ? 'online' : 'offline';
  view.status.textContent = label;
  view.status.dataset.status = label;
  view.el.dataset.status = label;
  view.lastSeenEl.textContent = ago(view.lastSeen);
  setRealtime(view, update.realtime);
  view.lastSeenEl.title = view.lastSeen ? new Date(view.lastSeen).toLocaleString() : '';
  if (newer) {
    for (const field of state.fields) {
      const v = update.values?.[field];
      if (typeof v !== 'number') continue;
      const points = view.spark.get(field);
      if (points.length && points[points.length - 1][0] >= update.lastSeen) continue;
      points.push([update.lastSeen, v]);
      while (points.length && points[0][0] < update.lastSeen - SPARK_MS) points.shift();
    }
  }
  const gps = update.gps;
  if (gps && (!view.gps || gps.ts > view.gps.ts)) {
    view.gps = gps;
    view.trail.push([gps.lat, gps.lng]);
    if (view.trail.length > TRAIL) view.trail.shift();
  }
  view.gauges.setOption({
    series: state.fields.map((field) => {
      const has = typeof view.values[field] === 'number';
      const color = view.online ? cssVar('--chart-gauge') : OFFLINE_COLOR();
      return {
        data: [{ name: field, value: has ? view.values[field] : '-' }],
        pointer: { show: has, itemStyle: { color } },
        anchor: { show: has, itemStyle: { color } },
        detail: { rich: { v: { color: view.online ? cssVar('--text-strong') : OFFLINE_COLOR() } } },
      };
    }),
  });
  if (newer) view.sparks.setOption({ series: state.fields.map((f) => ({ data: view.spark.get(f) })) });
}

async function fillSparklines(orgId) {
  const byType = new Map([['client_raw_data', [...GPS]]]);
  for (const field of state.fields) {
    const msgType = state.fieldInfo.get(field)?.msgType;
    if (msgType) byType.set(msgType, [...(byType.get(msgType) ?? []), field]);
  }
  const from = Date.now() - SPARK_MS;
  await Promise.all([...state.machines.values()].flatMap((view) => [...byType].map(async ([msgType, fields]) => {
    let body;
    try {
      body = await api.history(orgId, view.chassis, msgType, fields, from);
    } catch {
      return; // the sparkline fills from live data instead
    }
    if (state.orgId !== orgId) return;
    if (fields.includes(GPS[0])) {
      const lngs = new Map((body.series[GPS[1]] ?? []).map(([t, v]) => [t, v]));
      const trail = (body.series[GPS[0]] ?? []).filter(([t]) => lngs.has(t)).map(([t, lat]) => [lat, lngs.get(t)]);
      view.trail.unshift(...trail.slice(-TRAIL));
      view.trail.splice(0, Math.max(0, view.trail.length - TRAIL));
      renderMap();
    }
    for (const field of fields) {
      const live = view.spark.get(field);
      if (!live) continue;
      const first = live.length ? live[0][0] : Infinity;
      const old = (body.series[field] ?? []).filter((p) => p[0] < first && typeof p[1] === 'number');
      live.unshift(...old);
    }
    view.sparks.setOption({ series: state.fields.map((f) => ({ data: view.spark.get(f) })) });
  })));
}

/** Socket.IO's dashboard machine: values by message type, flattened. */
function fromDashboard(m) {
  const values = {};
  for (const byField of Object.values(m.values ?? {})) Object.assign(values, byField);
  const gps = typeof values.gps_lat === 'number' && typeof values.gps_lng === 'number'
    ? { lat: values.gps_lat, lng: values.gps_lng, ts: m.lastSeen } : null;
  return { online: m.status === 'online', lastSeen: m.lastSeen, values, gps };
}

function onDashboard(summary) {
  if (summary.org && summary.org !== state.orgId) return;
  for (const m of summary.machines ?? []) applyMachine(m.deviceId, fromDashboard(m));
  renderMap();
  updateStats();
}

// ---- live connection ------------------------------------------------------

function setConnection(label) {
  const chip = $('#updates');
  chip.dataset.state = label;
  chip.querySelector('.conn-state').textContent = label;
}

function connect(orgId) {
  if (typeof globalThis.io !== 'function') {
    setConnection('polling');
    state.pollTimer = setInterval(() => poll(orgId), POLL_MS);
    return;
  }
  const socket = globalThis.io({ query: { org: orgId }, transports: ['websocket', 'polling'] });
  state.socket = socket;
  let connectedBefore = false;
  socket.on('connect', () => {
    setConnection('live');
    if (connectedBefore) reloadAlerts(); // events may have been missed while away
    connectedBefore = true;
  });
  socket.on('disconnect', () => setConnection('reconnecting'));
  socket.on('connect_error', () => setConnection('reconnecting'));
  socket.on('dashboard:data', onDashboard);
  socket.on('dashboard:update', onDashboard);
  socket.on('alert-created', (alert) => upsertAlert(alert, true));
  socket.on('alert-updated', (alert) => upsertAlert(alert, false));
}

function disconnect() {
  state.socket?.close();
  state.socket = null;
  clearInterval(state.pollTimer);
  state.pollTimer = null;
}

/** Real-time on/off is not in the live events: refresh it from the fleet summary. */
async function refreshRealtime(orgId) {
  try {
    const summary = await alertsApi.fleet(orgId, []);
    if (state.orgId !== orgId) return;
    for (const m of summary.machines) {
      const view = state.machines.get(m.chassisId);
      if (view) setRealtime(view, m.realtime);
    }
  } catch {
    // the next refresh tries again; the connection chip shows real outages
  }
}

async function poll(orgId) {
  try {
    const summary = await alertsApi.fleet(orgId, [...state.fields, ...GPS]);
    if (state.orgId !== orgId) return;
    for (const m of summary.machines) applyMachine(m.chassisId, m);
    renderMap();
    updateStats();
    await reloadAlerts();
  } catch (err) {
    setConnection('offline');
  }
}

// ---- alerts ---------------------------------------------------------------

async function reloadAlerts() {
  const orgId = state.orgId;
  try {
    const alerts = await alertsApi.alerts(orgId, 'active');
    if (state.orgId !== orgId) return;
    state.alerts = new Map(alerts.map((a) => [a.id, a]));
    renderAlerts();
    updateStats();
  } catch (err) {
    showBanner(`Cannot load alerts: ${err.message}`);
  }
}

async function loadRules() {
  try {
    state.rules = await alertsApi.rules(state.orgId);
    for (const view of state.machines.values()) layoutCharts(view);
  } catch {
    // keep the bands we have
  }
}

function upsertAlert(alert, isNew) {
  if (alert.state === 'active') {
    state.alerts.set(alert.id, alert);
    if (isNew) {
      state.fresh.add(alert.id);
      setTimeout(() => {
        state.fresh.delete(alert.id);
        document.querySelector(`.alert-item[data-id="${alert.id}"]`)?.classList.remove('fresh');
      }, 4000);
    }
  } else {
    state.alerts.delete(alert.id);
  }
  renderAlerts();
  updateStats();
  renderMap();
}

function sortedAlerts() {
  return [...state.alerts.values()].sort((a, b) =>
    (SEVERITY_RANK[b.severity] - SEVERITY_RANK[a.severity]) || (b.raisedMs - a.raisedMs));
}

function renderAlerts() {
  const list = sortedAlerts();
  $('#alert-list').replaceChildren(...list.map(alertItem));
  $('#alerts-empty').hidden = list.length > 0;
  const counts = new Map();
  for (const a of list) counts.set(a.chassisId, (counts.get(a.chassisId) ?? 0) + 1);
  for (const view of state.machines.values()) {
    const n = counts.get(view.chassis) ?? 0;
    view.alertCountEl.textContent = String(n);
    view.alertCountEl.dataset.severity = list.find((a) => a.chassisId === view.chassis)?.severity ?? '';
  }
}

function alertItem(alert) {
  const acked = alert.acknowledged;
  return h('li', {
    class: `alert-item${state.fresh.has(alert.id) ? ' fresh' : ''}${acked ? ' acked' : ''}`,
    dataset: { id: String(alert.id), severity: alert.severity },
  },
  h('span', { class: 'sev-badge' }, alert.severity),
  h('div', { class: 'alert-body' },
    h('div', { class: 'alert-title' },
      h('strong', {}, alert.ruleName),
      h('span', { class: 'alert-machine' }, alert.chassisId)),
    h('div', { class: 'alert-msg' }, alert.message),
    h('div', { class: 'alert-meta muted' },
      `raised ${clock(alert.raisedMs)} · `, h('span', { class: 'since', dataset: { ms: String(alert.raisedMs) } }, ago(alert.raisedMs))),
    acked ? h('div', { class: 'alert-ack' },
      `Acknowledged by ${alert.acknowledgedBy} at ${clock(alert.acknowledgedMs)}`,
      alert.comment ? h('q', {}, alert.comment) : null) : null),
  acked ? null : h('button', { type: 'button', class: 'btn small ack-btn needs-operator', onclick: () => openAck(alert) }, 'Acknowledge'));
}

const ackDialog = $('#ack-dialog');
const ackForm = $('#ack-form');
for (const d of [ackDialog, $('#fields-dialog')]) {
  for (const b of d.querySelectorAll('[data-close]')) b.addEventListener('click', () => d.close());
}

function openAck(alert) {
  state.ackAlert = alert;
  ackForm.reset();
  $('#ack-error').hidden = true;
  $('#ack-text').textContent = `${alert.ruleName} on ${alert.chassisId}: ${alert.message}`;
  ackDialog.showModal();
  ackForm.elements.comment.focus();
}

ackForm.addEventListener('submit', async (event) => {
  event.preventDefault();
  const alert = state.ackAlert;
  const button = ackForm.querySelector('button[type=submit]');
  button.disabled = true;
  try {
    const updated = await alertsApi.acknowledge(state.orgId, alert.id, ackForm.elements.comment.value.trim());
    upsertAlert(updated, false);
    ackDialog.close();
  } catch (err) {
    $('#ack-error').textContent = err.message;
    $('#ack-error').hidden = false;
  } finally {
    button.disabled = false;
  }
});

// ---- stats ------------------------------------------------------------------

function updateStats() {
  const views = [...state.machines.values()];
  const online = views.filter((v) => v.online).length;
  $('#stat-online').textContent = String(online);
  $('#stat-offline').textContent = String(views.length - online);
  const bySeverity = { critical: 0, warning: 0, info: 0 };
  for (const a of state.alerts.values()) bySeverity[a.severity] = (bySeverity[a.severity] ?? 0) + 1;
  for (const [sev, n] of Object.entries(bySeverity)) {
    const el = $(`#stat-${sev}`);
    el.textContent = String(n);
    el.closest('.stat').dataset.active = n > 0 ? 'true' : 'false';
  }
  const alerts = state.alerts.size;
  $('#fleet-info').textContent = `${online} of ${views.length} machines online · `
    + `${alerts} active alert${alerts === 1 ? '' : 's'}`;
}

function everySecond() {
  for (const view of state.machines.values()) view.lastSeenEl.textContent = ago(view.lastSeen);
  for (const el of document.querySelectorAll('.alert-item .since')) el.textContent = ago(Number(el.dataset.ms));
}

// ---- map --------------------------------------------------------------------

function worstSeverity(view) {
  let worst = null;
  for (const a of state.alerts.values()) {
    if (a.chassisId === view.chassis && (!worst || SEVERITY_RANK[a.severity] > SEVERITY_RANK[worst])) worst = a.severity;
  }
  return worst;
}

function markerColor(view, severity) {
  if (severity) return SEVERITY_COLORS[severity];
  return view.online ? ONLINE_COLOR() : OFFLINE_COLOR();
}

function mapPopup(item) {
  return h('div', { class: 'popup' },
    h('div', { class: 'popup-head' },
      h('strong', {}, item.chassis),
      h('span', { class: 'status-pill', dataset: { status: item.status } }, item.status)),
    item.name ? h('div', { class: 'muted' }, [item.name, item.model].filter(Boolean).join(' · ')) : null,
    h('dl', {},
      h('dt', {}, 'Last seen'), h('dd', { title: item.lastSeen ? new Date(item.lastSeen).toLocaleString() : '' }, ago(item.lastSeen)),
      item.severity ? h('dt', {}, 'Alert') : null,
      item.severity ? h('dd', { class: `sev-text`, dataset: { severity: item.severity } }, item.severity) : null,
      h('dt', {}, 'Position'), h('dd', {}, `${item.lat.toFixed(5)}, ${item.lng.toFixed(5)}`)));
}

function renderMap() {
  if (!state.map) {
    if (!globalThis.L) return; // Leaflet not vendored: the rest of the page still works
    state.map = new FleetMap($('#map'), mapPopup);
  }
  state.map.setTiles(state.mapConfig);
  const views = [...state.machines.values()].filter((v) => v.gps);
  state.map.update(views.map((v, i) => {
    const severity = worstSeverity(v);
    return {
      chassis: v.chassis,
      name: v.name,
      model: v.model,
      online: v.online,
      status: v.online ? 'online' : 'offline',
      lastSeen: v.lastSeen,
      lat: v.gps.lat,
      lng: v.gps.lng,
      severity,
      color: markerColor(v, severity),
      trail: v.trail,
      trailColor: TRAIL_COLORS[i % TRAIL_COLORS.length],
    };
  }));
}

// ---- gauge fields -----------------------------------------------------------

const fieldsDialog = $('#fields-dialog');
const fieldsForm = $('#fields-form');

$('#choose-fields').addEventListener('click', async () => {
  let machines = [];
  try {
    machines = await api.machines(state.orgId);
  } catch (err) {
    showBanner(`Cannot load fields: ${err.message}`);
    return;
  }
  const names = new Map();
  for (const m of machines) {
    for (const [msgType, { fields }] of Object.entries(m.msgTypes ?? {})) {
      for (const f of fields) if (!GPS.includes(f.name) && !names.has(f.name)) names.set(f.name, { ...f, msgType });
    }
  }
  const rows = [...names.values()].sort((a, b) => a.name.localeCompare(b.name));
  $('#fields-choices').replaceChildren(...rows.map((f) => h('label', { class: 'field-row' },
    h('input', { type: 'checkbox', name: 'field', value: f.name, checked: state.fields.includes(f.name) }),
    h('span', { class: 'field-name' }, f.name),
    h('span', { class: 'field-unit' }, f.unit ?? ''),
    h('span', { class: 'field-range' }, f.msgType))));
  $('#fields-error').hidden = true;
  fieldsDialog.showModal();
});

fieldsForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const chosen = [...fieldsForm.querySelectorAll('input[name=field]:checked')].map((i) => i.value);
  const error = chosen.length === 0 ? 'Choose at least one field.'
    : chosen.length > MAX_FIELDS ? `Choose at most ${MAX_FIELDS} fields (${chosen.length} chosen).` : null;
  if (error) {
    $('#fields-error').textContent = error;
    $('#fields-error').hidden = false;
    return;
  }
  localStorage.setItem('livedata.fleet.fields', chosen.join(','));
  params.delete('fields');
  fieldsDialog.close();
  selectOrg(state.orgId);
});

start();
