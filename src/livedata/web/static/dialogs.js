// The Add/Edit group form and the delete confirmation, both native <dialog>s.
// `onSave` / `onConfirm` return a promise; a rejection keeps the dialog open and
// shows the error's message (the server's validation message) inside it.

import { api } from './api.js';
import { $, h, showError } from './dom.js';

const MSG_TYPES = ['vehicle_can', 'client_raw_data'];

const dialog = $('#group-dialog');
const form = $('#group-form');
const fieldList = $('#field-list');
const fieldFilter = $('#field-filter');
const fieldCount = $('#field-count');
const formError = $('#form-error');

let current = null; // {machine, onSave, unitEdited, orgId}
// The signal catalog of a DBC (GET …/models/{model}/signals or …/dbc/{id}/signals) by key:
// message, id/PGN, unit, range, resolution and comment of each vehicle_can signal.
const catalogs = new Map();

for (const d of [dialog, $('#confirm-dialog')]) {
  for (const button of d.querySelectorAll('[data-close]')) button.addEventListener('click', () => d.close());
}

/**
 * Open the group form.
 * @param {{group?: object, machine: object, orgId?: string, onSave: (body: object) => Promise<void>}} options
 */
export function openGroupForm({ group, machine, orgId, onSave }) {
  current = { machine, onSave, orgId, unitEdited: Boolean(group) };
  $('#group-dialog-title').textContent = group ? `Edit group “${group.name}”` : 'Add group';
  form.reset();
  showError(formError, null);
  form.elements.name.value = group?.name ?? '';
  const types = [...new Set([...MSG_TYPES, ...Object.keys(machine.msgTypes ?? {}), group?.msgType])]
    .filter(Boolean);
  form.elements.msgType.replaceChildren(...types.map((type) => h('option', { value: type }, type)));
  form.elements.msgType.value = group?.msgType ?? types.find((t) => machineFields(machine, t).length) ?? types[0];
  renderFields(group?.fields ?? []);
  // a mixed fleet: a group of one model's signals is shown for that model's machines only
  const models = [...new Set([machine.model, group?.model].filter(Boolean))];
  form.elements.model.replaceChildren(h('option', { value: '' }, 'every machine'),
    ...models.map((m) => h('option', { value: m }, `machines of model ${m}`)));
  form.elements.model.value = group ? (group.model ?? '') : (machine.model ?? '');
  form.elements.unit.value = group?.unit ?? '';
  if (!group) prefillUnit();
  dialog.showModal();
  form.elements.name.focus();
  loadCatalog(current);
}

/** The catalog of the machine's DBC (its own or its model's), then the rows again with it. */
async function loadCatalog(opened) {
  const { machine, orgId } = opened;
  if (!orgId || !machine.dbc) return;
  const key = machine.dbcOverride != null ? `dbc:${machine.dbcOverride}` : `model:${machine.model}`;
  let signals = catalogs.get(key);
  if (!signals) {
    try {
      const answer = machine.dbcOverride != null
        ? await api.dbcSignals(orgId, machine.dbcOverride)
        : await api.modelSignals(orgId, machine.model);
      signals = new Map(answer.signals.map((s) => [s.name, s]));
    } catch {
      return; // the picker works from the machine's own field list without it
    }
    catalogs.set(key, signals);
  }
  if (current !== opened || !dialog.open) return;
  opened.catalog = signals;
  if (form.elements.msgType.value === 'vehicle_can') {
    const needle = fieldFilter.value;
    renderFields(checkedBoxes().map((box) => box.value));
    fieldFilter.value = needle;
    filterRows();
  }
}

function machineFields(machine, msgType) {
  return machine.msgTypes?.[msgType]?.fields ?? [];
}

function renderFields(selected) {
  const known = machineFields(current.machine, form.elements.msgType.value);
  const knownNames = new Set(known.map((f) => f.name));
  // Fields of the group this machine does not decode stay listed, so editing keeps them.
  const catalog = form.elements.msgType.value === 'vehicle_can' ? current.catalog : null;
  const rows = [
    ...known.map((field) => ({ ...catalog?.get(field.name), ...field })),
    ...selected.filter((name) => !knownNames.has(name)).map((name) => ({ name, missing: true })),
  ];
  fieldFilter.value = '';
  fieldList.replaceChildren(
    ...(rows.length
      ? rows.map((field) => fieldRow(field, selected.includes(field.name)))
      : [h('p', { class: 'muted' }, 'This machine declares no fields for this message type.')]),
  );
  updateCount();
}

function fieldRow(field, checked) {
  const range = field.min != null && field.max != null
    ? `${field.min} … ${field.max}` : '';
  const where = field.message
    ? `${field.message} · ${field.pgn != null ? `PGN ${field.pgn}` : field.id ?? ''}` : '';
  // "km/h" finds speeds too; with the signal catalog also the message and the comment
  const search = [field.name, field.unit, field.message, field.comment].filter(Boolean).join(' ').toLowerCase();
  const title = [
    where, field.resolution != null ? `resolution ${field.resolution}` : '', field.comment,
  ].filter(Boolean).join('\n');
  return h('label', { class: 'field-row', title, dataset: { name: field.name.toLowerCase(), search } },
    h('input', { type: 'checkbox', name: 'fields', value: field.name, checked, dataset: { unit: field.unit ?? '' } }),
    h('span', { class: 'field-name' }, field.name,
      where ? h('small', { class: 'field-message' }, where) : null),
    h('span', { class: 'field-unit' }, field.missing ? 'not on this machine' : field.unit ?? ''),
    h('span', { class: 'field-range' }, range));
}

function checkedBoxes() {
  return [...fieldList.querySelectorAll('input[type=checkbox]:checked')];
}

function updateCount() {
  const n = checkedBoxes().length;
  fieldCount.textContent = n ? `· ${n} selected` : '';
}

function prefillUnit() {
  if (current.unitEdited) return;
  form.elements.unit.value = checkedBoxes()[0]?.dataset.unit ?? '';
}

form.elements.msgType.addEventListener('change', () => {
  renderFields([]);
  prefillUnit();
});
fieldList.addEventListener('change', () => {
  updateCount();
  prefillUnit();
});
form.elements.unit.addEventListener('input', () => {
  current.unitEdited = true;
});
function filterRows() {
  const needle = fieldFilter.value.trim().toLowerCase();
  for (const row of fieldList.querySelectorAll('.field-row')) row.hidden = !row.dataset.search.includes(needle);
}
fieldFilter.addEventListener('input', filterRows);
// Enter in the filter box narrows the list; it must not submit the form.
fieldFilter.addEventListener('keydown', (event) => {
  if (event.key === 'Enter') event.preventDefault();
});

form.addEventListener('submit', async (event) => {
  event.preventDefault();
  const body = {
    name: form.elements.name.value.trim(),
    msgType: form.elements.msgType.value,
    fields: checkedBoxes().map((box) => box.value),
    unit: form.elements.unit.value.trim(),
    model: form.elements.model.value || null,
  };
  if (!body.name) return showError(formError, 'Give the group a name.');
  if (body.fields.length === 0) return showError(formError, 'Choose at least one field.');
  await submitWith(form, formError, () => current.onSave(body), dialog);
});

const confirmDialog = $('#confirm-dialog');
const confirmForm = $('#confirm-form');
const confirmError = $('#confirm-error');
let onConfirm = null;

/** Ask before deleting; `action` runs on confirmation. */
export function confirmDelete(name, action) {
  onConfirm = action;
  $('#confirm-text').textContent = `Delete the group “${name}”? Its chart disappears for every machine of the organisation.`;
  showError(confirmError, null);
  confirmDialog.showModal();
}

confirmForm.addEventListener('submit', async (event) => {
  event.preventDefault();
  await submitWith(confirmForm, confirmError, onConfirm, confirmDialog);
});

async function submitWith(formEl, errorEl, action, dialogEl) {
  const submit = formEl.querySelector('[type=submit]');
  submit.disabled = true;
  try {
    await action();
    dialogEl.close();
  } catch (err) {
    showError(errorEl, err.message);
  } finally {
    submit.disabled = false;
  }
}

