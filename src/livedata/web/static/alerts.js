// Alert rules page: list, create, edit and delete rules (the server's validation
// message is shown in the form), and the recent alerts with their notifications.

import { $, h, showBanner } from './dom.js';
import { showOrganisation, startSession } from './session.js';
import { ago, alertsApi, api, clock } from './alerts-api.js';

const MSG_TYPES = ['vehicle_can', 'client_raw_data'];
const dialog = $('#rule-dialog');
const form = $('#rule-form');
const deleteDialog = $('#delete-dialog');

const state = { orgId: null, rules: [], machines: [], editing: null, deleting: null };

for (const d of [dialog, deleteDialog]) {
  for (const b of d.querySelectorAll('[data-close]')) b.addEventListener('click', () => d.close());
}

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
  setInterval(() => state.orgId && loadHistory(), 5000);
}

async function selectOrg(orgId) {
  state.orgId = orgId;
  $('#org-select').value = orgId;
  history.replaceState(null, '', `?org=${encodeURIComponent(orgId)}`);
  for (const link of document.querySelectorAll('a[data-keep-org]')) {
    const url = new URL(link.getAttribute('href'), location.href);
    url.searchParams.set('org', orgId);
    link.setAttribute('href', `${url.pathname}${url.search}`);
  }
  try {
    [state.rules, state.machines] = await Promise.all([alertsApi.rules(orgId), api.machines(orgId)]);
  } catch (err) {
    showBanner(`Cannot load the rules of ${orgId}: ${err.message}`);
    return;
  }
  renderRules();
  loadHistory();
}

// ---- rules table ------------------------------------------------------------

function scopeText(rule) {
  if (rule.scope === 'all') return 'all machines';
  return rule.scope === 'model' ? `model ${rule.scopeValue}` : rule.scopeValue;
}

function clearText(rule) {
  if (rule.clearThreshold == null) return '';
  if (rule.condition === 'outside') return `, clears inside ${rule.clearThreshold}..${rule.clearThresholdHigh}`;
  return `, clears ${rule.condition.startsWith('>') ? 'below' : 'above'} ${rule.clearThreshold}`;
}

function notifyText(rule) {
  const parts = [];
  if (rule.notify.webhook) parts.push(`webhook${rule.notify.webhook.hasSecret ? ' (signed)' : ''}`);
  if (rule.notify.email.length) parts.push(`${rule.notify.email.length} e-mail`);
  return parts.join(', ') || '–';
}

function renderRules() {
  $('#rules-body').replaceChildren(...state.rules.map((rule) => h('tr', { dataset: { ruleId: String(rule.id) } },
    h('td', { 'data-label': 'Name' }, h('strong', {}, rule.name)),
    h('td', { class: 'rule-desc', 'data-label': 'Condition' }, rule.description + clearText(rule)),
    h('td', { 'data-label': 'Scope' }, scopeText(rule)),
    h('td', { 'data-label': 'Severity' }, h('span', { class: 'sev-text', dataset: { severity: rule.severity } }, rule.severity)),
    h('td', { 'data-label': 'Notify' }, notifyText(rule)),
    h('td', { 'data-label': 'Enabled' }, rule.enabled ? 'yes' : 'no'),
    h('td', { class: 'actions needs-admin' },
      h('button', { type: 'button', class: 'btn small', onclick: () => openForm(rule) }, 'Edit'),
      h('button', { type: 'button', class: 'btn small danger-text', onclick: () => confirmDelete(rule) }, 'Delete')))));
  $('#rules-empty').hidden = state.rules.length > 0;
}

async function loadHistory() {
  const orgId = state.orgId;
  let alerts;
  try {
    alerts = await alertsApi.alerts(orgId, null, 50);
  } catch {
    return;
  }
  const notes = await Promise.all(alerts.map((a) => alertsApi.notifications(orgId, a.id).catch(() => [])));
  if (state.orgId !== orgId) return;
  $('#history-body').replaceChildren(...alerts.map((a, i) => h('tr', { dataset: { alertId: String(a.id) } },
    h('td', { title: new Date(a.raisedMs).toLocaleString(), 'data-label': 'Raised' }, `${clock(a.raisedMs)} (${ago(a.raisedMs)})`),
    h('td', { 'data-label': 'Machine' }, a.chassisId),
    h('td', { 'data-label': 'Rule' }, h('div', {}, a.ruleName, h('div', { class: 'muted small' }, a.message))),
    h('td', { 'data-label': 'Severity' }, h('span', { class: 'sev-text', dataset: { severity: a.severity } }, a.severity)),
    h('td', { 'data-label': 'State' }, h('div', {}, h('span', { class: 'state-text', dataset: { state: a.state } }, a.state),
      a.clearedMs ? h('div', { class: 'muted small' }, `at ${clock(a.clearedMs)}`) : null)),
    h('td', { 'data-label': 'Acknowledged' }, a.acknowledged ? `${a.acknowledgedBy}${a.comment ? `: “${a.comment}”` : ''}`
      : h('button', { type: 'button', class: 'btn small needs-operator alert-ack', onclick: () => acknowledge(a) }, 'Acknowledge')),
    h('td', { 'data-label': 'Notifications' }, notes[i].length ? notes[i].map((n) => h('span', {
      class: 'notif',
      dataset: { status: n.status },
      title: n.lastError ? `${n.target}: ${n.lastError}` : n.target,
    }, `${n.event} ${n.channel} ${n.status}${n.attempts > 1 ? ` ×${n.attempts}` : ''}`)) : '–'))));
  $('#history-empty').hidden = alerts.length > 0;
}

/** Acknowledge (operators and admins), with an optional comment; the table then says who. */
async function acknowledge(alert) {
  const comment = window.prompt(`Acknowledge “${alert.ruleName}” on ${alert.chassisId}? Comment (optional):`, '');
  if (comment === null) return;
  try {
    await alertsApi.acknowledge(state.orgId, alert.id, comment.trim() || undefined);
  } catch (err) {
    showBanner(`Cannot acknowledge the alert: ${err.message}`);
    return;
  }
  await loadHistory();
}

// ---- the form -----------------------------------------------------------------

function fieldNames(msgType) {
  const names = new Set();
  for (const m of state.machines) {
    for (const [type, { fields }] of Object.entries(m.msgTypes ?? {})) {
      if (!msgType || type === msgType) for (const f of fields) names.add(f.name);
    }
  }
  return [...names].sort();
}

function syncForm() {
  const el = form.elements;
  const kind = el.kind.value;
  const condition = el.condition.value;
  const show = {
    value: kind === 'value',
    nodata: kind === 'nodata',
    outside: kind === 'value' && condition === 'outside',
    hysteresis: kind === 'value' && !['==', '!='].includes(condition),
    scoped: el.scope.value !== 'all',
  };
  for (const node of form.querySelectorAll('[data-show]')) node.hidden = !show[node.dataset.show];
  form.querySelector('[data-label=threshold]').textContent = condition === 'outside' && show.value ? 'Low' : 'Threshold';
  const msgTypeValue = el.msgType.value;
  el.msgType.replaceChildren(
    ...(kind === 'nodata' ? [h('option', { value: '' }, 'any')] : []),
    ...MSG_TYPES.map((t) => h('option', { value: t }, t)));
  el.msgType.value = [...el.msgType.options].some((o) => o.value === msgTypeValue) ? msgTypeValue : el.msgType.options[0].value;
  $('#field-options').replaceChildren(...fieldNames(el.msgType.value).map((n) => h('option', { value: n })));
  const scopeValue = el.scopeValue.value;
  const choices = el.scope.value === 'model'
    ? [...new Set(state.machines.map((m) => m.model))].sort()
    : state.machines.map((m) => m.chassisId);
  el.scopeValue.replaceChildren(...choices.map((c) => h('option', { value: c }, c)));
  if (choices.includes(scopeValue)) el.scopeValue.value = scopeValue;
}

for (const name of ['kind', 'condition', 'scope', 'msgType']) form.elements[name].addEventListener('change', syncForm);

function openForm(rule) {
  state.editing = rule ?? null;
  form.reset();
  $('#rule-error').hidden = true;
  $('#rule-title').textContent = rule ? `Edit rule “${rule.name}”` : 'Add rule';
  const el = form.elements;
  el.kind.value = rule?.kind ?? 'value';
  el.scope.value = rule?.scope ?? 'all';
  syncForm();
  if (rule) {
    el.name.value = rule.name;
    el.severity.value = rule.severity;
    el.msgType.value = rule.msgType ?? '';
    el.scopeValue.value = rule.scopeValue ?? '';
    el.field.value = rule.field ?? '';
    el.condition.value = rule.condition ?? '>';
    for (const key of ['threshold', 'thresholdHigh', 'clearThreshold', 'clearThresholdHigh', 'nodataSeconds']) {
      el[key].value = rule[key] ?? '';
    }
    el.forSeconds.value = rule.forSeconds ?? 0;
    el.enabled.checked = rule.enabled;
    el.webhookUrl.value = rule.notify.webhook?.url ?? '';
    el.webhookSecret.placeholder = rule.notify.webhook?.hasSecret ? 'unchanged' : '';
    el.email.value = rule.notify.email.join(', ');
  }
  syncForm();
  dialog.showModal();
  el.name.focus();
}

const numberOrNull = (input) => (input.value.trim() === '' ? null : Number(input.value));

function body() {
  const el = form.elements;
  const kind = el.kind.value;
  const outside = el.condition.value === 'outside';
  const webhookUrl = el.webhookUrl.value.trim();
  const secret = el.webhookSecret.value;
  return {
    name: el.name.value.trim(),
    enabled: el.enabled.checked,
    kind,
    scope: el.scope.value,
    scopeValue: el.scope.value === 'all' ? null : el.scopeValue.value || null,
    msgType: el.msgType.value || null,
    field: kind === 'value' ? el.field.value.trim() || null : null,
    condition: kind === 'value' ? el.condition.value : null,
    threshold: kind === 'value' ? numberOrNull(el.threshold) : null,
    thresholdHigh: kind === 'value' && outside ? numberOrNull(el.thresholdHigh) : null,
    clearThreshold: kind === 'value' ? numberOrNull(el.clearThreshold) : null,
    clearThresholdHigh: kind === 'value' && outside ? numberOrNull(el.clearThresholdHigh) : null,
    forSeconds: kind === 'value' ? numberOrNull(el.forSeconds) ?? 0 : 0,
    nodataSeconds: kind === 'nodata' ? numberOrNull(el.nodataSeconds) : null,
    severity: el.severity.value,
    notify: {
      webhook: webhookUrl ? { url: webhookUrl, ...(secret ? { secret } : {}) } : null,
      email: el.email.value.split(/[,;\s]+/).map((s) => s.trim()).filter(Boolean),
    },
  };
}

form.addEventListener('submit', async (event) => {
  event.preventDefault();
  const button = form.querySelector('button[type=submit]');
  button.disabled = true;
  try {
    const payload = body();
    if (state.editing) {
      const saved = await alertsApi.updateRule(state.orgId, state.editing.id, payload);
      state.rules = state.rules.map((r) => (r.id === saved.id ? saved : r));
    } else {
      state.rules.push(await alertsApi.createRule(state.orgId, payload));
    }
    renderRules();
    dialog.close();
  } catch (err) {
    $('#rule-error').textContent = err.message;
    $('#rule-error').hidden = false;
  } finally {
    button.disabled = false;
  }
});

function confirmDelete(rule) {
  state.deleting = rule;
  $('#delete-text').textContent = `Delete “${rule.name}”? Its active alerts are cleared; their history stays.`;
  $('#delete-error').hidden = true;
  deleteDialog.showModal();
}

$('#delete-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  try {
    await alertsApi.deleteRule(state.orgId, state.deleting.id);
    state.rules = state.rules.filter((r) => r.id !== state.deleting.id);
    renderRules();
    deleteDialog.close();
  } catch (err) {
    $('#delete-error').textContent = err.message;
    $('#delete-error').hidden = false;
  }
});

$('#add-rule').addEventListener('click', () => openForm(null));

start();
