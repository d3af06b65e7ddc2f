// Models & DBC files page: upload DBC files (drag and drop or a file picker; cantools'
// error is shown with the offending line of the file), assign them to models, and
// browse a model's signal catalog with a search box. Viewers see everything; admins
// upload and assign.

import { api } from './api.js';
import { $, dropTarget, h, showError } from './dom.js';
import { can, startPage } from './session.js';

const state = { orgId: null, isAdmin: false, models: [], files: [], signals: [] };
const dateTime = new Intl.DateTimeFormat(undefined, { year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', hour12: false });
const number = new Intl.NumberFormat(undefined, { maximumFractionDigits: 8 });


async function load() {
  try {
    [state.models, state.files] = await Promise.all([api.models(state.orgId), api.dbcFiles(state.orgId)]);
    showError($('#models-error'), null);
  } catch (err) {
    showError($('#models-error'), `Cannot load models and DBC files: ${err.message}`);
    return;
  }
  renderFiles();
  renderModels();
  renderModelPicker();
}

// ---- DBC files -------------------------------------------------------------------------------

function renderFiles() {
  $('#dbc-body').replaceChildren(...[...state.files].reverse().map((f) => {
    const users = state.models.filter((m) => m.dbcId === f.id).map((m) => m.name);
    return h('tr', { dataset: { dbcId: String(f.id) } },
      h('td', { 'data-label': 'File' }, h('strong', {}, f.name), h('span', { class: 'muted small' }, ` #${f.id}`)),
      h('td', { 'data-label': 'Uploaded', class: 'muted' }, dateTime.format(f.created)),
      h('td', { 'data-label': 'Models' }, users.length ? users.join(', ') : h('span', { class: 'muted' }, 'none')));
  }));
  $('#dbc-empty').hidden = state.files.length > 0;
}

/** cantools names "line N, column M": show that line of the file with the column marked. */
function showDbcError(file, text, message) {
  const box = $('#dbc-error');
  const parts = [h('strong', {}, `${file.name} was refused. `), message];
  const at = /line (\d+), column (\d+)/.exec(message);
  if (at) {
    const lineNo = Number(at[1]);
    const column = Math.max(1, Number(at[2]));
    const line = text.split(/\r?\n/)[lineNo - 1] ?? '';
    parts.push(h('pre', {}, `${lineNo} │ `, line.slice(0, column - 1),
      h('mark', {}, line.slice(column - 1, column) || ' '), line.slice(column)));
  }
  box.replaceChildren(...parts);
  box.hidden = false;
}

async function uploadDbc(file) {
  await ready; // a file dropped while the page still loads waits for the session
  $('#dbc-error').hidden = true;
  const status = $('#dbc-status');
  status.hidden = false;
  status.textContent = `Checking ${file.name}…`;
  try {
    const dbc = await api.uploadDbc(state.orgId, file);
    status.textContent = `Uploaded ${dbc.name}: ${dbc.signals.length} signals. Assign it to a model below.`;
    await load();
  } catch (err) {
    status.hidden = true;
    showDbcError(file, await file.text().catch(() => ''), err.message);
  }
}

dropTarget($('#dbc-drop'), $('#dbc-file'), uploadDbc);

// ---- models ------------------------------------------------------------------------------------

function renderModels() {
  $('#models-body').replaceChildren(...state.models.map((m) => {
    const picker = h('select', {
      'aria-label': `DBC file of ${m.name}`,
      disabled: !state.isAdmin,
      onchange: () => assign(m, picker),
    }, h('option', { value: '' }, 'none'), ...state.files.map((f) => h('option', { value: String(f.id) }, `${f.name} #${f.id}`)));
    picker.value = m.dbcId == null ? '' : String(m.dbcId);
    return h('tr', { dataset: { model: m.name } },
      h('td', { 'data-label': 'Model' }, h('strong', {}, m.name)),
      h('td', { 'data-label': 'DBC file' }, picker),
      h('td', { 'data-label': 'Machines' }, m.machines.length
        ? `${m.machines.length}: ${m.machines.slice(0, 5).join(', ')}${m.machines.length > 5 ? ' …' : ''}`
        : h('span', { class: 'muted' }, 'none')));
  }));
  $('#models-empty').hidden = state.models.length > 0;
}

async function assign(model, picker) {
  const dbcId = picker.value === '' ? null : Number(picker.value);
  picker.disabled = true;
  try {
    await api.assignModelDbc(state.orgId, model.name, dbcId);
    showError($('#models-error'), null);
    await load();
  } catch (err) {
    showError($('#models-error'), `Cannot assign a DBC file to ${model.name}: ${err.message}`);
    picker.value = model.dbcId == null ? '' : String(model.dbcId);
  } finally {
    picker.disabled = !state.isAdmin;
  }
}

$('#model-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  await ready; // a file dropped while the page still loads waits for the session
  const input = event.currentTarget.elements.name;
  const name = input.value.trim();
  if (!name) {
    showError($('#models-error'), 'Give the model a name.');
    input.focus();
    return;
  }
  try {
    await api.createModel(state.orgId, name);
    input.value = '';
    showError($('#models-error'), null);
    await load();
  } catch (err) {
    showError($('#models-error'), `Cannot add model ${name}: ${err.message}`);
  }
});

// ---- signal catalog ------------------------------------------------------------------------------

function renderModelPicker() {
  const select = $('#catalog-model');
  const before = select.value;
  const withDbc = state.models.filter((m) => m.dbcId != null);
  select.replaceChildren(...withDbc.map((m) => h('option', { value: m.name }, `${m.name} (${m.dbc})`)));
  if (!withDbc.length) select.append(h('option', { value: '' }, 'no model has a DBC file'));
  if (withDbc.some((m) => m.name === before)) select.value = before;
  loadCatalog();
}

let catalogRequest = 0;

async function loadCatalog() {
  const model = $('#catalog-model').value;
  const request = ++catalogRequest;
  let signals = [];
  if (model) {
    try {
      signals = (await api.modelSignals(state.orgId, model)).signals;
    } catch (err) {
      if (request !== catalogRequest) return;
      $('#catalog-count').textContent = `Cannot load the catalog: ${err.message}`;
      $('#catalog-body').replaceChildren();
      return;
    }
  }
  if (request !== catalogRequest) return; // the user picked another model meanwhile
  state.signals = signals;
  renderCatalog();
}

const fmt = (v) => (v == null ? '–' : number.format(v));

function renderCatalog() {
  const needle = $('#catalog-search').value.trim().toLowerCase();
  const shown = state.signals.filter((s) => !needle
    || [s.name, s.message, s.unit, s.comment].some((v) => (v ?? '').toLowerCase().includes(needle)));
  $('#catalog-body').replaceChildren(...shown.map((s) => {
    const values = s.choices ? Object.entries(s.choices).map(([k, v]) => `${k} = ${v}`).join(', ') : '';
    return h('tr', { dataset: { signal: s.name } },
      h('td', { 'data-label': 'Signal' }, h('code', {}, s.name)),
      h('td', { 'data-label': 'Message' }, s.message),
      h('td', { 'data-label': 'Id / PGN' }, h('code', {}, s.id), s.pgn == null ? '' : h('span', { class: 'muted small' }, ` PGN ${s.pgn}`)),
      h('td', { 'data-label': 'Unit' }, s.unit || h('span', { class: 'muted' }, '–')),
      h('td', { 'data-label': 'Range', class: 'num' }, `${fmt(s.min)} … ${fmt(s.max)}`),
      h('td', { 'data-label': 'Resolution', class: 'num' }, fmt(s.resolution)),
      h('td', { 'data-label': 'Values' }, values ? h('div', { class: 'choices' }, values) : null, s.comment || null));
  }));
  const total = state.signals.length;
  $('#catalog-count').textContent = !$('#catalog-model').value ? 'Assign a DBC file to a model to see its signals.'
    : needle ? `${shown.length} of ${total} signals` : `${total} signals`;
}

$('#catalog-model').addEventListener('change', loadCatalog);
$('#catalog-search').addEventListener('input', renderCatalog);

// ---- start -------------------------------------------------------------------------------------

async function start() {
  const who = await startPage();
  if (!who) return;
  state.orgId = who.org;
  state.isAdmin = can(who.role, 'admin');
  await load();
}

const ready = start();
