// Live Data page: organisation and machine pickers, the group list with one
// chart per group, and one live feed per message type that has groups.

import { api, datasetPath } from './api.js';
import { GroupChart } from './charts.js';
import { fieldInfo } from './format.js';
import { confirmDelete, openGroupForm } from './dialogs.js';
import { $, h, showBanner } from './dom.js';
import { showDtcs } from './dtcs.js';
import { Feed, WINDOW_MS } from './feed.js';
import { ReplayFeed } from './replay.js';
import { can, showOrganisation, startSession } from './session.js';

const orgSelect = $('#org-select');
const machineSelect = $('#machine-select');
const groupsEl = $('#groups');
const emptyState = $('#empty-state');
const addButton = $('#add-group');
const rangeSelect = $('#range-select');
const tzSelect = $('#tz-select');
const TZ_KEY = 'livedata.timeZone';

// The time ranges of the header's selector. 2 min is the page as it always was (raw
// history, then live); the wider ranges load min/max downsampled history of about
// one point per chart pixel and keep appending live points.
const RANGES = [
  ['2m', '2 min', WINDOW_MS],
  ['15m', '15 min', 15 * 60_000],
  ['1h', '1 h', 3_600_000],
  ['24h', '24 h', 86_400_000],
  ['7d', '7 d', 7 * 86_400_000],
];

const state = {
  orgId: null,
  machines: [],
  machine: null,
  groups: [],
  /** @type {Map<string, Feed>} msgType -> feed */
  feeds: new Map(),
  /** @type {Map<string, {key: string, group: object, el: HTMLElement, chart: GroupChart}>} */
  cards: new Map(),
  range: '2m',
  role: 'viewer',
  /** @type {{from: number, to: number, speed: number} | null} a replay instead of live */
  replay: null,
};

const rangeMs = () => RANGES.find(([key]) => key === state.range)[2];

/** The history budget per field: about the chart width in pixels (none for 2 min). */
function maxPoints() {
  if (rangeMs() <= WINDOW_MS) return null;
  const width = groupsEl.querySelector('.chart')?.clientWidth || groupsEl.clientWidth || 1000;
  return Math.max(100, Math.min(10_000, Math.round(width)));
}

/** Points further apart than this are not joined: a few downsampling buckets, at least 5 s. */
function gapMs() {
  const budget = maxPoints();
  return budget ? Math.max(5000, (3 * rangeMs()) / (budget / 2)) : 5000;
}

rangeSelect.replaceChildren(...RANGES.map(([key, label]) => h('option', { value: key }, label)));

// ---- pickers --------------------------------------------------------------

async function start() {
  const params = new URLSearchParams(location.search);
  if (RANGES.some(([key]) => key === params.get('range'))) state.range = params.get('range');
  rangeSelect.value = state.range;
  // The organisation is the logged-in user's own (/api/auth/me); ?org= is only kept in the URL.
  let org;
  try {
    const who = await startSession();
    state.role = who.role;
    org = await api.org(who.org);
  } catch (err) {
    showBanner(`Cannot load your organisation: ${err.message}`);
    return;
  }
  showOrganisation(orgSelect, org);
  offerOrgZone(org.timezone);
  await selectOrg(org.id, params.get('machine'));
}

async function selectOrg(orgId, chassisId) {
  state.orgId = orgId;
  orgSelect.value = orgId;
  let machines;
  let groups;
  try {
    [machines, groups] = await Promise.all([api.machines(orgId), api.groups(orgId)]);
  } catch (err) {
    showBanner(`Cannot load organisation ${orgId}: ${err.message}`);
    return;
  }
  if (state.orgId !== orgId) return; // another organisation was picked meanwhile
  state.machines = machines;
  state.groups = groups;
  machineSelect.replaceChildren(...machines.map((m) =>
    h('option', { value: m.chassisId }, m.name ? `${m.chassisId} · ${m.name}` : m.chassisId)));
  machineSelect.disabled = machines.length === 0;
  const chosen = machines.find((m) => m.chassisId === chassisId) ?? machines[0] ?? null;
  selectMachine(chosen?.chassisId ?? null);
}

function selectMachine(chassisId) {
  for (const feed of state.feeds.values()) feed.close();
  state.feeds.clear();
  for (const card of state.cards.values()) card.chart.dispose();
  state.cards.clear();
  groupsEl.replaceChildren();

  state.machine = state.machines.find((m) => m.chassisId === chassisId) ?? null;
  machineSelect.value = chassisId ?? '';
  const query = new URLSearchParams({ org: state.orgId });
  if (chassisId) query.set('machine', chassisId);
  if (state.range !== '2m') query.set('range', state.range);
  history.replaceState(null, '', `?${query}`);

  const m = state.machine;
  $('#machine-info').textContent = m
    ? [m.chassisId, m.name, m.model && `model ${m.model}`].filter(Boolean).join(' · ')
    : '';
  addButton.disabled = !m;
  // only J1939 machines have DTCs: their vehicle_can fields include dtc_active
  const j1939 = m?.msgTypes?.vehicle_can?.fields?.some((f) => f.name === 'dtc_active');
  showDtcs(state.orgId, j1939 ? m.chassisId : null);
  if (!m) {
    setEmpty('noMachines');
    renderConnections();
    return;
  }
  applyGroups();
}

orgSelect.addEventListener('change', () => selectOrg(orgSelect.value, null));
machineSelect.addEventListener('change', () => selectMachine(machineSelect.value));
// The time zone of the charts: the browser's, UTC or the organisation's (when it has one),
// remembered in this browser.
tzSelect.value = localStorage.getItem(TZ_KEY) === 'UTC' ? 'UTC' : 'local';

/** Offer the organisation's own time zone (admin page setting) next to browser and UTC. */
function offerOrgZone(zone) {
  tzSelect.querySelector('option.org-zone')?.remove();
  if (zone) {
    tzSelect.append(h('option', { value: 'org', class: 'org-zone', dataset: { zone } },
      `the organisation's (${zone})`));
  }
  const wanted = localStorage.getItem(TZ_KEY);
  tzSelect.value = wanted === 'org' && zone ? 'org' : wanted === 'UTC' ? 'UTC' : 'local';
}

/** The zone the charts show: 'local', 'UTC' or the organisation's IANA zone. */
function chartZone() {
  return tzSelect.value === 'org' ? tzSelect.selectedOptions[0].dataset.zone : tzSelect.value;
}

tzSelect.addEventListener('change', () => {
  localStorage.setItem(TZ_KEY, tzSelect.value);
  for (const card of state.cards.values()) card.chart.setZone(chartZone());
});

rangeSelect.addEventListener('change', () => {
  state.range = rangeSelect.value;
  if (state.machine) selectMachine(state.machine.chassisId); // new feeds load the new range
});

const EMPTY_STATES = {
  noGroups: ['No chart groups yet', 'A group draws chosen signals of one message type in one chart, '
    + 'with the last two minutes of history and live values every second.'],
  noMachines: ['No machines', 'This organisation has no machines yet.'],
  noOrgs: ['No organisation', 'Your account belongs to no organisation.'],
};

/** Show the empty state `kind` (a key of EMPTY_STATES), or hide it with null. */
function setEmpty(kind) {
  emptyState.hidden = kind === null;
  if (kind === null) return;
  const [title, text] = EMPTY_STATES[kind];
  const editor = can(state.role, 'admin');
  emptyState.querySelector('h2').textContent = title;
  emptyState.querySelector('p').textContent = kind === 'noGroups' && !editor
    ? `${text} An administrator can add groups.`
    : text;
  emptyState.querySelector('button').hidden = kind !== 'noGroups';
}

// ---- groups -----------------------------------------------------------------

/** Field name -> how to show it (unit, value table, decimals), for one message type. */
function fieldInfos(msgType) {
  const fields = state.machine?.msgTypes?.[msgType]?.fields ?? [];
  return new Map(fields.map((f) => [f.name, fieldInfo(f)]));
}

/** Bring cards and feeds in line with state.groups. */
function applyGroups() {
  renderCards();
  syncFeeds();
  draw();
}

/** The groups of this machine: those for every machine and those for its model. */
function machineGroups() {
  return state.groups.filter((g) => !g.model || g.model === state.machine?.model);
}

function renderCards() {
  const groups = machineGroups();
  const wanted = new Map(groups.map((g) => [g.id, g]));
  for (const [id, card] of state.cards) {
    const group = wanted.get(id);
    if (!group || cardKey(group) !== card.key) {
      card.chart.dispose();
      card.el.remove();
      state.cards.delete(id);
    }
  }
  let previous = null;
  for (const group of groups) {
    let card = state.cards.get(group.id);
    if (!card) {
      const el = cardElement(group);
      groupsEl.insertBefore(el, previous ? previous.nextSibling : groupsEl.firstChild);
      card = { key: cardKey(group), group, el, chart: new GroupChart(el.querySelector('.chart'), group, fieldInfos(group.msgType), chartZone()) };
      state.cards.set(group.id, card);
    } else if (card.el.previousSibling !== previous) {
      groupsEl.insertBefore(card.el, previous ? previous.nextSibling : groupsEl.firstChild);
    }
    previous = card.el;
  }
  setEmpty(groups.length ? null : 'noGroups');
}

const cardKey = (g) => JSON.stringify([g.name, g.msgType, g.fields, g.unit, g.model]);

/** Download the group's fields over the shown range (raw, streamed by the export API). */
function download(group, fields, format) {
  const to = Date.now();
  const query = new URLSearchParams({
    msgType: group.msgType, fields: fields.join(','), from: String(to - rangeMs()), to: String(to), format,
  });
  const link = h('a', { href: `${datasetPath(state.orgId, state.machine.chassisId)}/export?${query}`, download: '' });
  document.body.append(link);
  link.click();
  link.remove();
}

function cardElement(group) {
  const declared = state.machine.msgTypes?.[group.msgType]?.fields;
  const known = new Set((declared ?? []).map((f) => f.name));
  const missing = group.fields.filter((f) => !known.has(f));
  let note = null;
  if (!declared) note = `${state.machine.chassisId} sends no ${group.msgType} data.`;
  else if (missing.length) note = `Not decoded for ${state.machine.chassisId}: ${missing.join(', ')}`;
  return h('article', { class: 'card', dataset: { groupId: group.id } },
    h('header', { class: 'card-head' },
      h('div', { class: 'card-title' },
        h('h2', {}, group.name),
        h('span', { class: 'tag' }, group.msgType),
        group.unit ? h('span', { class: 'tag unit' }, group.unit) : null,
        group.model ? h('span', { class: 'tag', title: `Shown for machines of model ${group.model}` }, group.model) : null),
      h('div', { class: 'card-downloads' },
        ['csv', 'parquet'].map((format) => h('button', {
          type: 'button',
          class: 'btn small',
          title: `Download the shown range of this group as ${format === 'csv' ? 'CSV' : 'Parquet'}`,
          dataset: { download: format },
          disabled: !group.fields.some((f) => known.has(f)),
          onclick: () => download(group, group.fields.filter((f) => known.has(f)), format),
        }, format === 'csv' ? 'CSV' : 'Parquet'))),
      h('div', { class: 'card-actions' },
        h('button', { type: 'button', class: 'btn small card-png', title: 'Download this chart as a PNG image', onclick: (event) => downloadChart(event, group) }, 'PNG'),
        h('button', { type: 'button', class: 'btn small needs-admin', onclick: () => editGroup(group.id) }, 'Edit'),
        h('button', { type: 'button', class: 'btn small danger-text needs-admin', onclick: () => deleteGroup(group.id) }, 'Delete'))),
    note ? h('p', { class: 'card-note' }, note) : null,
    h('div', { class: 'chart', role: 'img', 'aria-label': `${group.name}: ${group.fields.join(', ')}` }));
}

function downloadChart(event, group) {
  const el = event.currentTarget.closest('.card');
  const card = [...state.cards.values()].find((c) => c.el === el);
  const stamp = new Date().toISOString().slice(0, 19).replace(/[:T]/g, '-');
  card?.chart.downloadPng(`${state.machine.chassisId}-${group.name}-${stamp}.png`.replace(/[^\w.-]+/g, '_'));
}

function addGroup() {
  openGroupForm({
    machine: state.machine,
    orgId: state.orgId,
    onSave: async (body) => {
      const group = await api.createGroup(state.orgId, body);
      state.groups.push(group);
      applyGroups();
    },
  });
}

function editGroup(groupId) {
  const group = state.groups.find((g) => g.id === groupId);
  openGroupForm({
    group,
    machine: state.machine,
    orgId: state.orgId,
    onSave: async (body) => {
      const updated = await api.updateGroup(state.orgId, groupId, body);
      state.groups = state.groups.map((g) => (g.id === groupId ? updated : g));
      applyGroups();
    },
  });
}

function deleteGroup(groupId) {
  const group = state.groups.find((g) => g.id === groupId);
  confirmDelete(group.name, async () => {
    await api.deleteGroup(state.orgId, groupId);
    state.groups = state.groups.filter((g) => g.id !== groupId);
    applyGroups();
  });
}

addButton.addEventListener('click', addGroup);
$('#empty-add-group').addEventListener('click', addGroup);

// ---- feeds --------------------------------------------------------------------

/**
 * One feed per message type that has groups, asking for the union of their fields
 * that the machine declares (a field it cannot decode would only earn an ERROR).
 */
function syncFeeds() {
  const wanted = new Map();
  for (const group of machineGroups()) {
    const known = fieldInfos(group.msgType);
    const fields = wanted.get(group.msgType) ?? [];
    for (const field of group.fields) if (known.has(field) && !fields.includes(field)) fields.push(field);
    wanted.set(group.msgType, fields);
  }
  for (const [msgType, feed] of state.feeds) {
    if (!wanted.get(msgType)?.length) {
      feed.close();
      state.feeds.delete(msgType);
    }
  }
  for (const [msgType, fields] of wanted) {
    if (!fields.length) continue;
    const feed = state.feeds.get(msgType);
    if (feed) {
      feed.setFields(fields);
    } else if (state.replay) {
      state.feeds.set(msgType, new ReplayFeed({
        orgId: state.orgId,
        chassisId: state.machine.chassisId,
        msgType,
        fields,
        ...state.replay,
        windowMs: rangeMs(),
        onData: scheduleDraw,
        onStatus: renderConnections,
        onError: showBanner,
        onState: renderReplay,
      }));
    } else {
      state.feeds.set(msgType, new Feed({
        orgId: state.orgId,
        chassisId: state.machine.chassisId,
        msgType,
        fields,
        onData: scheduleDraw,
        onStatus: renderConnections,
        onError: showBanner,
        windowMs: rangeMs(),
        maxPoints: maxPoints(),
      }));
    }
  }
  renderConnections();
}

/** One chip per feed; chips are updated in place so a click is never lost to a redraw. */
function renderConnections() {
  const container = $('#connections');
  const chips = [...state.feeds.values()].map((feed) => {
    const chip = container.querySelector(`[data-msg-type="${feed.msgType}"]`) ?? connectionChip(feed.msgType);
    const { state: linkState, retryIn } = feed.status;
    chip.dataset.state = linkState;
    chip.title = linkState === 'live'
      ? `${feed.msgType}: receiving live data`
      : `${feed.msgType}: not connected, click to retry now`;
    chip.querySelector('.conn-state').textContent = connectionLabel(linkState, retryIn);
    return chip;
  });
  const current = [...container.children];
  if (chips.length !== current.length || chips.some((chip, i) => chip !== current[i])) {
    container.replaceChildren(...chips);
  }
}

function connectionChip(msgType) {
  const reconnect = () => state.feeds.get(msgType)?.reconnectNow();
  return h('button', { type: 'button', class: 'conn', dataset: { msgType }, onclick: reconnect },
    h('span', { class: 'dot' }), h('span', { class: 'conn-type' }, msgType), h('span', { class: 'conn-state' }));
}

function connectionLabel(linkState, retryIn) {
  if (linkState === 'connecting') return 'connecting…';
  if (linkState === 'reconnecting') return retryIn === null ? 'reconnecting…' : `reconnecting (${retryIn} s)`;
  if (linkState === 'offline' && retryIn !== null) return `offline · retry in ${retryIn} s`;
  return linkState;
}

addEventListener('online', () => {
  for (const feed of state.feeds.values()) feed.reconnectNow();
});
addEventListener('offline', renderConnections);

// ---- drawing -----------------------------------------------------------------

let drawPending = false;

function scheduleDraw() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => {
    drawPending = false;
    draw();
  });
}

function draw() {
  const windowMs = rangeMs();
  const gap = gapMs();
  for (const card of state.cards.values()) {
    const feed = state.feeds.get(card.group.msgType);
    card.chart.update(feed?.series, feed?.now ?? Date.now(), windowMs, gap);
  }
}

// ---- log import ---------------------------------------------------------------

$('#import-file').addEventListener('change', async (event) => {
  const file = event.target.files[0];
  event.target.value = '';
  if (!file || !state.machine) return;
  const status = $('#import-state');
  status.textContent = `importing ${file.name}…`;
  try {
    const s = await api.importLog(state.orgId, state.machine.chassisId, file);
    status.textContent = `${file.name}: ${s.frames} frames: ${s.decoded} decoded, `
      + `${s.unknownIds} unknown ids, ${s.errors} errors; ${s.records} rows`
      + (s.from == null ? '' : ` from ${new Date(s.from).toLocaleString()} to ${new Date(s.to).toLocaleString()}`);
    restartFeeds(); // the shown range may hold imported history now
  } catch (err) {
    status.textContent = '';
    showBanner(`Import of ${file.name} failed: ${err.message}`);
  }
});

// ---- replay -------------------------------------------------------------------

const replayFrom = $('#replay-from');
const replaySpeed = $('#replay-speed');
const replayPause = $('#replay-pause');
const replayLive = $('#replay-live');
const replaySeek = $('#replay-seek');

/** Close every feed and open them again: live, or the replay of state.replay. */
function restartFeeds() {
  for (const feed of state.feeds.values()) feed.close();
  state.feeds.clear();
  if (state.machine) syncFeeds();
  replayPause.hidden = replayLive.hidden = replaySeek.hidden = !state.replay;
  replaySeek.value = '0';
  $('#replay-state').textContent = state.replay ? 'replay: connecting…' : '';
  scheduleDraw();
}

function renderReplay(message) {
  const when = new Date(message.ts).toLocaleString();
  $('#replay-state').textContent = `replay ${message.state} · ${message.speed}× · ${when}`;
  $('#replay-state').dataset.state = message.state;
  replayPause.textContent = message.state === 'playing' ? 'Pause' : 'Play';
  showReplayPosition(message.ts);
}

/** The seek slider at data time `ts` of the replayed range (not while the user drags it). */
function showReplayPosition(ts) {
  if (!state.replay || document.activeElement === replaySeek) return;
  const { from, to } = state.replay;
  replaySeek.value = String(Math.round(((ts - from) / Math.max(1, to - from)) * 1000));
}

$('#replay-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const from = new Date(replayFrom.value).getTime();
  if (!Number.isFinite(from)) {
    showBanner('Pick the time to replay from.');
    return;
  }
  state.replay = { from, to: Math.min(Date.now(), from + rangeMs()), speed: Number(replaySpeed.value) };
  restartFeeds();
});
replayPause.addEventListener('click', () => {
  const action = replayPause.textContent === 'Pause' ? 'pause' : 'play';
  for (const feed of state.feeds.values()) feed.control?.(action);
});
replaySpeed.addEventListener('change', () => {
  if (!state.replay) return;
  state.replay.speed = Number(replaySpeed.value);
  for (const feed of state.feeds.values()) feed.control?.('speed', { speed: state.replay.speed });
});
replaySeek.addEventListener('change', () => {
  if (!state.replay) return;
  const { from, to } = state.replay;
  const ts = Math.round(from + ((to - from) * Number(replaySeek.value)) / 1000);
  for (const feed of state.feeds.values()) feed.control?.('seek', { ts });
  replaySeek.blur();
});
replayLive.addEventListener('click', () => {
  state.replay = null;
  restartFeeds();
});
{
  const hourAgo = new Date(Date.now() - 3_600_000 - new Date().getTimezoneOffset() * 60_000);
  replayFrom.value = hourAgo.toISOString().slice(0, 19);
}

setInterval(() => {
  draw();
  renderConnections();
  const feed = state.replay ? state.feeds.values().next().value : null;
  if (feed) showReplayPosition(feed.now);
}, 1000);

start();
