// Machines page: the organisation's machine registry. Everyone sees the list; admins
// add, change, disable, delete and import machines, and connect them: creating a
// machine (or "Connect" later) issues its secret, shown once here with the MQTT and
// HTTP details, a ready-to-paste agent command line and the agent's config file.
// Every refusal of the server is shown where it happened, in the server's words.

import { api } from './api.js';
import { $, dropTarget, h, showError, wireCopyButtons } from './dom.js';
import { can, startPage } from './session.js';

const state = { orgId: null, isAdmin: false, machines: [], editing: null, deleting: null };


const splitTags = (text) => text.split(/[,;]/).map((t) => t.trim()).filter(Boolean);

// ---- list ------------------------------------------------------------------------------

async function loadMachines() {
  try {
    state.machines = await api.machines(state.orgId);
    showError($('#machines-error'), null);
  } catch (err) {
    showError($('#machines-error'), `Cannot load the machines: ${err.message}`);
    return;
  }
  render();
  const models = [...new Set(state.machines.map((m) => m.model))].sort();
  api.models(state.orgId).then((list) => {
    for (const m of list) if (!models.includes(m.name)) models.push(m.name);
    $('#model-list').replaceChildren(...models.sort().map((name) => h('option', { value: name })));
  }).catch(() => {});
}

function matches(machine, needle) {
  if (!needle) return true;
  const hay = [machine.chassisId, machine.name, machine.model, machine.location, ...(machine.tags ?? [])];
  return hay.some((v) => String(v ?? '').toLowerCase().includes(needle));
}

function render() {
  const needle = $('#machine-search').value.trim().toLowerCase();
  const shown = state.machines.filter((m) => matches(m, needle));
  $('#machines-body').replaceChildren(...shown.map(row));
  $('#machines-empty').hidden = state.machines.length > 0;
  $('#machines-info').textContent = `${state.machines.length} machine${state.machines.length === 1 ? '' : 's'}`
    + (needle ? `, ${shown.length} shown` : '');
}

function row(m) {
  const actions = state.isAdmin ? h('td', { class: 'row-actions' },
    h('button', { type: 'button', class: 'btn small', onclick: () => openEdit(m) }, 'Edit'),
    h('button', { type: 'button', class: 'btn small', onclick: () => provision(m) }, 'Connect'),
    h('button', { type: 'button', class: 'btn small danger-text', onclick: () => openDelete(m) }, 'Delete'),
  ) : null;
  return h('tr', { dataset: { chassis: m.chassisId }, class: m.disabled ? 'is-disabled' : null },
    h('td', { 'data-label': 'Chassis' }, h('a', { class: 'chassis', href: `/?org=${encodeURIComponent(state.orgId)}&machine=${encodeURIComponent(m.chassisId)}` }, m.chassisId)),
    h('td', { 'data-label': 'Name' }, m.name),
    h('td', { 'data-label': 'Model' }, m.model),
    h('td', { 'data-label': 'DBC', class: m.dbc ? null : 'muted' }, m.dbc ?? 'none'),
    h('td', { 'data-label': 'Tags' }, h('span', { class: 'tag-list' }, ...(m.tags ?? []).map((t) => h('span', { class: 'tag' }, t)))),
    h('td', { 'data-label': 'Location' }, m.location ?? ''),
    h('td', { 'data-label': 'State' }, h('span', { class: 'state-pill', dataset: { state: m.disabled ? 'disabled' : 'active' } }, m.disabled ? 'disabled' : 'enabled')),
    actions);
}

$('#machine-search').addEventListener('input', render);

// ---- add / edit --------------------------------------------------------------------------

const dialog = $('#machine-dialog');
const form = $('#machine-form');
for (const d of [dialog, $('#delete-dialog')]) {
  for (const b of d.querySelectorAll('[data-close]')) b.addEventListener('click', () => d.close());
}

function openDialog(machine) {
  state.editing = machine;
  form.reset();
  const editing = machine != null;
  $('#machine-dialog-title').textContent = editing ? `Edit ${machine.chassisId}` : 'Add machine';
  $('#machine-submit').textContent = editing ? 'Save' : 'Add machine';
  form.elements.chassisId.readOnly = editing;
  for (const el of form.querySelectorAll('[data-edit-only]')) el.hidden = !editing;
  for (const el of form.querySelectorAll('[data-new-only]')) el.hidden = editing;
  if (editing) {
    form.elements.chassisId.value = machine.chassisId;
    form.elements.name.value = machine.name;
    form.elements.model.value = machine.model;
    form.elements.location.value = machine.location ?? '';
    form.elements.tags.value = (machine.tags ?? []).join(', ');
    form.elements.disabled.checked = machine.disabled;
    fillDbcChoice(machine);
  }
  showError($('#machine-error'), null);
  dialog.showModal();
  (editing ? form.elements.name : form.elements.chassisId).focus();
}

/** The machine's DBC: its model's (the default) or a file of its own. */
async function fillDbcChoice(machine) {
  const select = form.elements.dbc;
  select.replaceChildren(h('option', { value: '' }, `the model's DBC file (${machine.model})`));
  select.value = '';
  try {
    const files = await api.dbcFiles(state.orgId);
    select.append(...files.map((f) => h('option', { value: String(f.id) }, `${f.name} #${f.id}`)));
    select.value = machine.dbcOverride == null ? '' : String(machine.dbcOverride);
  } catch (err) {
    showError($('#machine-error'), `Cannot list the DBC files: ${err.message}`);
  }
}

const openEdit = (machine) => openDialog(machine);
$('#add-machine').addEventListener('click', () => openDialog(null));

form.addEventListener('submit', async (event) => {
  event.preventDefault();
  await ready; // a file dropped while the page still loads waits for the session
  const f = form.elements;
  const body = {
    name: f.name.value.trim(),
    model: f.model.value.trim(),
    tags: splitTags(f.tags.value),
    location: f.location.value.trim(),
  };
  const missing = [['chassisId', 'a chassis id'], ['name', 'a name'], ['model', 'a model']]
    .find(([key]) => !(key === 'chassisId' ? f.chassisId.value.trim() : body[key]));
  if (missing) {
    showError($('#machine-error'), `Give the machine ${missing[1]}.`);
    f[missing[0]].focus();
    return;
  }
  const button = $('#machine-submit');
  button.disabled = true;
  try {
    if (state.editing) {
      await api.updateMachine(state.orgId, state.editing.chassisId, { ...body, disabled: f.disabled.checked });
      const dbcId = f.dbc.value === '' ? null : Number(f.dbc.value);
      if (dbcId !== (state.editing.dbcOverride ?? null)) {
        await api.assignMachineDbc(state.orgId, state.editing.chassisId, dbcId);
      }
    } else {
      const created = await api.createMachine(state.orgId, {
        ...body, chassisId: f.chassisId.value.trim(), provision: f.provision.checked,
      });
      if (created.provisioning) showProvisioning(created.provisioning);
    }
    dialog.close();
    await loadMachines();
  } catch (err) {
    showError($('#machine-error'), err.message);
  } finally {
    button.disabled = false;
  }
});

// ---- provisioning ---------------------------------------------------------------------------

let configUrl = null;

function brokerText(broker) {
  if (!broker?.configured) return 'The server does not write the broker\'s files (mqtt_passwd_file): run livedata devices mqtt-config and reload Mosquitto.';
  if (broker.error) return `Broker files: ${broker.error}`;
  const reload = broker.reloaded == null ? '' : broker.reloaded ? '; broker reloaded' : '; reload failed';
  return `Broker files rewritten (${broker.machines} machine${broker.machines === 1 ? '' : 's'})${reload}: the machine can connect now.`;
}

function showProvisioning(p) {
  $('#provision-chassis').textContent = p.chassisId;
  $('#p-secret').value = p.secret;
  $('#p-mqtt-row').hidden = !p.mqtt;
  if (p.mqtt) {
    $('#p-mqtt').textContent = p.mqtt.url;
    $('#p-username').textContent = p.mqtt.username;
  }
  $('#p-http').textContent = p.http.url;
  $('#p-agent-row').hidden = !p.agentCommand;
  $('#p-agent').value = p.agentCommand ?? '';
  $('#p-config-row').hidden = !p.configFile;
  if (configUrl) URL.revokeObjectURL(configUrl);
  configUrl = null;
  if (p.configFile) {
    configUrl = URL.createObjectURL(new Blob([p.configFile.content], { type: 'application/toml' }));
    $('#p-config').href = configUrl;
    $('#p-config').download = p.configFile.name;
  }
  $('#p-broker').textContent = p.mqtt ? brokerText(p.broker) : 'This server has no MQTT broker configured: the machine sends over HTTP.';
  $('#provision').hidden = false;
  $('#provision').scrollIntoView({ block: 'start' });
}

$('#provision-done').addEventListener('click', () => {
  $('#provision').hidden = true;
  for (const el of $('#provision').querySelectorAll('input, textarea')) el.value = '';
  if (configUrl) URL.revokeObjectURL(configUrl);
  configUrl = null;
});

async function provision(machine) {
  const ok = window.confirm(`Issue a new secret for ${machine.chassisId}? Its current secret stops working at once.`);
  if (!ok) return;
  try {
    showProvisioning(await api.provisionMachine(state.orgId, machine.chassisId));
    await loadMachines();
  } catch (err) {
    showError($('#machines-error'), `Cannot connect ${machine.chassisId}: ${err.message}`);
  }
}

// ---- delete --------------------------------------------------------------------------------

async function openDelete(machine) {
  state.deleting = machine;
  $('#delete-title').textContent = `Delete ${machine.chassisId}?`;
  $('#delete-text').textContent = 'Counting its stored data…';
  $('#delete-form').reset();
  showError($('#delete-error'), null);
  $('#delete-dialog').showModal();
  try {
    const points = await api.machinePoints(state.orgId, machine.chassisId);
    $('#delete-text').textContent = `${machine.name} is removed from the registry and can no longer connect. `
      + `It has ${points.toLocaleString()} stored value${points === 1 ? '' : 's'}.`;
  } catch (err) {
    $('#delete-text').textContent = `Cannot count its stored data: ${err.message}`;
  }
}

$('#delete-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const data = new FormData(event.currentTarget).get('data');
  const button = $('#delete-ok');
  button.disabled = true;
  try {
    await api.deleteMachine(state.orgId, state.deleting.chassisId, data);
    $('#delete-dialog').close();
    await loadMachines();
  } catch (err) {
    showError($('#delete-error'), err.message);
  } finally {
    button.disabled = false;
  }
});

// ---- CSV import ------------------------------------------------------------------------------

$('#import-open').addEventListener('click', () => {
  $('#import-section').hidden = false;
  $('#import-drop').focus();
});
$('#import-close').addEventListener('click', () => { $('#import-section').hidden = true; });

async function importFile(file) {
  await ready; // a file dropped while the page still loads waits for the session
  const report = $('#import-report');
  report.hidden = false;
  report.replaceChildren(h('p', { class: 'muted' }, `Importing ${file.name}…`));
  let result;
  try {
    result = await api.importMachines(state.orgId, file);
  } catch (err) {
    report.replaceChildren(h('p', { class: 'form-error' }, `${file.name}: ${err.message}`));
    return;
  }
  const summary = `${file.name}: ${result.created.length} created, ${result.updated.length} updated, `
    + `${result.unchanged.length} unchanged, ${result.errors.length} bad row${result.errors.length === 1 ? '' : 's'}.`;
  report.replaceChildren(
    h('p', { class: result.errors.length ? null : 'ok' }, summary),
    result.errors.length ? h('ul', { class: 'report-errors' },
      ...result.errors.map((e) => h('li', {}, `Line ${e.line}${e.chassis ? ` (${e.chassis})` : ''}: ${e.error}`))) : null);
  await loadMachines();
}

dropTarget($('#import-drop'), $('#import-file'), importFile);

// ---- start ---------------------------------------------------------------------------------------

async function start() {
  wireCopyButtons();
  const who = await startPage();
  if (!who) return;
  state.orgId = who.org;
  state.isAdmin = can(who.role, 'admin');
  await loadMachines();
}

const ready = start();
