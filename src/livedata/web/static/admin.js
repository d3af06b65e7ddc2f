// Administration page: users (admin), API tokens (everyone: their own; admins: the
// whole organisation's), device secrets (admin) and the audit log (admin).
//
// Secrets (a new API token, a new device secret) come back from the server once and
// are shown once, in a box with a Copy button; nothing keeps them after "Done" or a
// reload. Every refusal of the server (400 validation, 403 role, 409 conflict) is
// shown next to what was tried, in the server's words.

import { api } from './api.js';
import { $, h, showError, wireCopyButtons } from './dom.js';
import { can, startPage } from './session.js';

const MIN_PASSWORD = 10;
const USERNAME = /^[A-Za-z0-9_.@-]{1,64}$/;
const ROLES = ['viewer', 'operator', 'admin'];

const state = { me: null, orgId: null, isAdmin: false, users: [], tokens: [], machines: [] };

const dateTime = new Intl.DateTimeFormat(undefined, {
  year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', hour12: false,
});
const dateTimeSeconds = new Intl.DateTimeFormat(undefined, {
  month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false,
});
const when = (ms) => (ms == null ? '–' : dateTime.format(ms));

// ---- messages -----------------------------------------------------------------



// ---- copy / dismiss boxes ------------------------------------------------------

wireCopyButtons();
for (const button of document.querySelectorAll('[data-dismiss]')) {
  button.addEventListener('click', () => {
    const box = $(button.dataset.dismiss);
    box.hidden = true;
    for (const input of box.querySelectorAll('input')) input.value = '';
  });
}

function reveal(box, value) {
  const input = box.querySelector('input.secret');
  input.value = value;
  box.hidden = false;
  input.focus();
  input.select();
}

// ---- confirmation dialog --------------------------------------------------------

const confirmDialog = $('#confirm-dialog');
const confirmForm = $('#confirm-form');
let confirmAction = null;
for (const d of [confirmDialog, $('#user-dialog')]) {
  for (const b of d.querySelectorAll('[data-close]')) b.addEventListener('click', () => d.close());
}

/** Ask first; `action` returns a promise, and a rejection keeps the dialog open with its message. */
function confirm(title, text, okLabel, action) {
  $('#confirm-title').textContent = title;
  $('#confirm-text').textContent = text;
  $('#confirm-ok').textContent = okLabel;
  showError($('#confirm-error'), null);
  confirmAction = action;
  confirmDialog.showModal();
}

confirmForm.addEventListener('submit', async (event) => {
  event.preventDefault();
  const button = $('#confirm-ok');
  button.disabled = true;
  try {
    await confirmAction();
    confirmDialog.close();
  } catch (err) {
    showError($('#confirm-error'), err.message);
  } finally {
    button.disabled = false;
  }
});

// ---- users ------------------------------------------------------------------------

async function loadUsers() {
  try {
    state.users = await api.users(state.orgId);
    showError($('#users-error'), null);
  } catch (err) {
    showError($('#users-error'), `Cannot load the users: ${err.message}`);
    return;
  }
  renderUsers();
}

function renderUsers() {
  $('#users-body').replaceChildren(...state.users.map(userRow));
}

function userRow(user) {
  const self = user.id === state.me.id;
  const role = h('select', {
    'aria-label': `Role of ${user.username}`,
    disabled: self,
    title: self ? 'You cannot change your own role' : null,
    onchange: () => changeRole(user, role),
  }, ...ROLES.map((r) => h('option', { value: r, selected: r === user.role }, r)));
  role.value = user.role;
  const actions = self
    ? [h('span', { class: 'muted small' }, 'you')]
    : [
      h('button', { type: 'button', class: 'btn small', onclick: () => openPassword(user) }, 'Reset password'),
      h('button', { type: 'button', class: 'btn small', onclick: () => toggleDisabled(user) }, user.disabled ? 'Enable' : 'Disable'),
      h('button', { type: 'button', class: 'btn small danger-text', onclick: () => deleteUser(user) }, 'Delete'),
    ];
  return h('tr', { dataset: { userId: String(user.id), username: user.username }, class: user.disabled ? 'is-disabled' : null },
    h('td', { 'data-label': 'User' }, h('strong', {}, user.username)),
    h('td', { 'data-label': 'Role' }, role),
    h('td', { 'data-label': 'State' },
      h('span', { class: 'state-pill', dataset: { state: user.disabled ? 'disabled' : 'active' } },
        user.disabled ? 'disabled' : 'active')),
    h('td', { 'data-label': 'Created', class: 'muted' }, when(user.createdMs)),
    h('td', { class: 'row-actions' }, ...actions));
}

async function changeRole(user, select) {
  const role = select.value;
  select.disabled = true;
  try {
    const updated = await api.updateUser(state.orgId, user.id, { role });
    Object.assign(user, updated);
    showError($('#users-error'), null);
  } catch (err) {
    select.value = user.role;
    showError($('#users-error'), `Cannot change the role of ${user.username}: ${err.message}`);
  } finally {
    select.disabled = false;
  }
  refreshAfterChange();
}

function toggleDisabled(user) {
  const disable = !user.disabled;
  const go = async () => {
    const updated = await api.updateUser(state.orgId, user.id, { disabled: disable });
    Object.assign(user, updated);
    renderUsers();
    refreshAfterChange();
  };
  if (!disable) {
    go().catch((err) => showError($('#users-error'), `Cannot enable ${user.username}: ${err.message}`));
    return;
  }
  confirm(`Disable ${user.username}?`,
    `${user.username} is logged out at once, their live connections close and their API tokens stop working until enabled again.`,
    'Disable', go);
}

function deleteUser(user) {
  confirm(`Delete ${user.username}?`,
    `${user.username} and their API tokens are removed for good. Disabling keeps the account for later.`,
    'Delete', async () => {
      await api.deleteUser(state.orgId, user.id);
      state.users = state.users.filter((u) => u.id !== user.id);
      renderUsers();
      refreshAfterChange();
    });
}

// The add-user dialog doubles as the reset-password dialog.
const userDialog = $('#user-dialog');
const userForm = $('#user-form');
let passwordFor = null; // the user whose password is reset, or null when adding

function openUserDialog(user) {
  passwordFor = user;
  userForm.reset();
  showError($('#user-error'), null);
  for (const el of userForm.querySelectorAll('[data-new-only]')) el.hidden = Boolean(user);
  $('#user-dialog-title').textContent = user ? `New password for ${user.username}` : 'Add user';
  $('#user-dialog-note').textContent = user
    ? `${user.username} is logged out everywhere; tell them the new password.`
    : 'Tell the user their password; they are not asked to change it.';
  userForm.querySelector('button[type=submit]').textContent = user ? 'Set password' : 'Add user';
  userDialog.showModal();
  (user ? userForm.elements.password : userForm.elements.username).focus();
}

const openPassword = (user) => openUserDialog(user);
$('#add-user').addEventListener('click', () => openUserDialog(null));

/** 16 characters from an alphabet without look-alikes (no 0/O, 1/l/I). */
function generatePassword() {
  const alphabet = 'abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789';
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return [...bytes].map((b) => alphabet[b % alphabet.length]).join('');
}
$('#generate-password').addEventListener('click', () => {
  userForm.elements.password.value = generatePassword();
  userForm.elements.password.select();
});

userForm.addEventListener('submit', async (event) => {
  event.preventDefault();
  const el = userForm.elements;
  const password = el.password.value;
  const username = el.username.value.trim();
  if (!passwordFor && !USERNAME.test(username)) {
    showError($('#user-error'), 'User name: 1 to 64 letters, digits or . _ @ -');
    el.username.focus();
    return;
  }
  if (password.length < MIN_PASSWORD) {
    showError($('#user-error'), `The password needs at least ${MIN_PASSWORD} characters.`);
    el.password.focus();
    return;
  }
  const button = userForm.querySelector('button[type=submit]');
  button.disabled = true;
  try {
    if (passwordFor) {
      await api.updateUser(state.orgId, passwordFor.id, { password });
    } else {
      state.users.push(await api.createUser(state.orgId, { username, password, role: el.role.value }));
      renderUsers();
    }
    userDialog.close();
    refreshAfterChange();
  } catch (err) {
    showError($('#user-error'), err.message);
  } finally {
    button.disabled = false;
  }
});

// ---- API tokens -----------------------------------------------------------------

async function loadTokens() {
  try {
    state.tokens = state.isAdmin ? await api.orgTokens(state.orgId) : await api.myTokens();
    showError($('#tokens-error'), null);
  } catch (err) {
    showError($('#tokens-error'), `Cannot load the tokens: ${err.message}`);
    return;
  }
  renderTokens();
}

function tokenState(token) {
  if (token.revoked) return 'revoked';
  if (token.expiresMs != null && token.expiresMs <= Date.now()) return 'expired';
  return 'active';
}

function renderTokens() {
  // Active tokens first, newest first; revoked and expired ones after, for the record.
  const rank = (t) => (tokenState(t) === 'active' ? 0 : 1);
  const tokens = [...state.tokens].sort((a, b) => rank(a) - rank(b) || b.createdMs - a.createdMs);
  $('#tokens-body').replaceChildren(...tokens.map((token) => {
    const status = tokenState(token);
    const mine = token.user === state.me.user;
    return h('tr', { dataset: { tokenId: String(token.id), state: status }, class: status === 'active' ? null : 'is-disabled' },
      h('td', { 'data-label': 'Name' }, h('strong', {}, token.name)),
      h('td', { 'data-label': 'User', class: 'org-only' }, mine ? `${token.user} (you)` : token.user),
      h('td', { 'data-label': 'Token' }, h('code', {}, `${token.prefix}…`)),
      h('td', { 'data-label': 'Created', class: 'muted' }, when(token.createdMs)),
      h('td', { 'data-label': 'Expires', class: 'muted' }, token.expiresMs == null ? 'never' : when(token.expiresMs)),
      h('td', { class: 'row-actions' },
        status === 'active'
          ? h('button', { type: 'button', class: 'btn small danger-text', onclick: () => revokeToken(token) }, 'Revoke')
          : h('span', { class: 'state-pill', dataset: { state: 'disabled' } }, status)));
  }));
  $('#tokens-empty').hidden = state.tokens.length > 0;
}

function revokeToken(token) {
  const whose = token.user === state.me.user ? '' : ` of ${token.user}`;
  confirm(`Revoke “${token.name}”?`,
    `Programs using this token${whose} are refused from now on, and its live connections close.`,
    'Revoke', async () => {
      await api.revokeToken(token.id);
      await loadTokens();
      refreshAfterChange();
    });
}

$('#token-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const name = form.elements.name.value.trim();
  if (!name) {
    showError($('#tokens-error'), 'Give the token a name, to recognise it later.');
    form.elements.name.focus();
    return;
  }
  const button = form.querySelector('button[type=submit]');
  button.disabled = true;
  try {
    const days = Number(form.elements.expires.value) || null;
    const created = await api.createToken(name, days);
    showError($('#tokens-error'), null);
    form.elements.name.value = '';
    $('#token-reveal-name').textContent = created.name;
    reveal($('#token-reveal'), created.token);
    await loadTokens();
    refreshAfterChange();
  } catch (err) {
    showError($('#tokens-error'), `Cannot create the token: ${err.message}`);
  } finally {
    button.disabled = false;
  }
});

// ---- device secrets ------------------------------------------------------------------

async function loadMachines() {
  try {
    state.machines = await api.machines(state.orgId);
  } catch (err) {
    showError($('#secrets-error'), `Cannot load the machines: ${err.message}`);
    return;
  }
  const select = $('#secret-machine');
  select.replaceChildren(...state.machines.map((m) =>
    h('option', { value: m.chassisId }, m.name ? `${m.chassisId} · ${m.name}` : m.chassisId)));
  select.disabled = state.machines.length === 0;
  $('#secret-form').querySelector('button[type=submit]').disabled = state.machines.length === 0;
  if (!state.machines.length) showError($('#secrets-error'), 'This organisation has no machines yet.');
}

$('#secret-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const chassis = $('#secret-machine').value;
  if (!chassis) return;
  confirm(`New secret for ${chassis}?`,
    `The current secret of ${chassis} stops working at once: the machine cannot send data until it is given the new one.`,
    'Generate', async () => {
      const result = await api.newDeviceSecret(state.orgId, chassis);
      showError($('#secrets-error'), null);
      $('#secret-reveal-name').textContent = result.deviceId;
      $('#secret-username').textContent = result.username;
      reveal($('#secret-reveal'), result.secret);
      refreshAfterChange();
    });
});

// ---- audit log ------------------------------------------------------------------------

const ACTIONS = {
  login: 'logged in',
  login_failed: 'failed to log in',
  logout: 'logged out',
  token_created: 'created token',
  token_revoked: 'revoked token',
  org_renamed: 'renamed the organisation to',
  org_settings: 'changed the settings of',
  machine_created: 'registered machine',
  machine_changed: 'changed machine',
  machine_deleted: 'deleted machine',
  machines_imported: 'imported machines:',
  device_secret: 'issued a secret for',
};

// Other entries are requests that changed something: their HTTP method and path.
const HTTP_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

async function loadAudit() {
  const button = $('#audit-refresh');
  button.disabled = true;
  let entries;
  try {
    entries = await api.audit(state.orgId, Number($('#audit-limit').value));
    showError($('#audit-error'), null);
  } catch (err) {
    showError($('#audit-error'), `Cannot load the audit log: ${err.message}`);
    return;
  } finally {
    button.disabled = false;
  }
  $('#audit-body').replaceChildren(...entries.map((e) => h('tr', { dataset: { action: e.action } },
    h('td', { 'data-label': 'Time', class: 'nowrap' }, dateTimeSeconds.format(e.ts)),
    h('td', { 'data-label': 'Who' }, e.actor || '–'),
    h('td', { 'data-label': 'Action' }, h('span', {
      class: `audit-action${HTTP_METHODS.has(e.action) ? ' http' : ''}`,
      dataset: { action: e.action },
    }, ACTIONS[e.action] ?? e.action)),
    h('td', { 'data-label': 'Target', class: 'audit-target' }, e.target || ''),
    h('td', { 'data-label': 'From', class: 'muted' }, e.address || ''))));
  $('#audit-empty').hidden = entries.length > 0;
}

$('#audit-refresh').addEventListener('click', loadAudit);
$('#audit-limit').addEventListener('change', loadAudit);

/** After a change the audit log has a new entry: show it. */
function refreshAfterChange() {
  if (state.isAdmin) loadAudit();
}

// ---- organisation ------------------------------------------------------------------------

function showOrg(org) {
  const form = $('#org-form').elements;
  $('#org-id').textContent = org.id;
  form.name.value = org.name || org.id;
  form.timezone.value = org.timezone || '';
  form.followViewers.checked = Boolean(org.followViewers);
  form.graceMinutes.value = org.viewerGraceSeconds ? +(org.viewerGraceSeconds / 60).toFixed(2) : 5;
  $('#admin-info').textContent = state.isAdmin
    ? `Users, tokens, device secrets and the audit log of ${org.name || org.id}.`
    : `Your API tokens in ${org.name || org.id}.`;
}

$('#tz-list').replaceChildren(...(Intl.supportedValuesOf?.('timeZone') ?? [])
  .map((zone) => h('option', { value: zone })));

$('#org-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = event.currentTarget.elements;
  const name = form.name.value.trim();
  if (!name) {
    showError($('#org-error'), 'Give the organisation a name.');
    form.name.focus();
    return;
  }
  const minutes = Number(form.graceMinutes.value);
  if (!(minutes > 0 && minutes <= 1440)) {
    showError($('#org-error'), 'The time after the last viewer is 0.1 to 1440 minutes.');
    form.graceMinutes.focus();
    return;
  }
  try {
    showOrg(await api.updateOrg(state.orgId, {
      name,
      timezone: form.timezone.value.trim(),
      followViewers: form.followViewers.checked,
      viewerGraceSeconds: Math.max(1, Math.round(minutes * 60)),
    }));
    showError($('#org-error'), null);
    refreshAfterChange();
  } catch (err) {
    showError($('#org-error'), `Cannot save the organisation: ${err.message}`);
  }
});

// ---- start ------------------------------------------------------------------------------

async function start() {
  const who = await startPage();
  if (!who) return;
  state.me = who;
  state.orgId = who.org;
  state.isAdmin = can(who.role, 'admin');
  document.body.classList.toggle('org-tokens', state.isAdmin);
  const org = await api.org(who.org);
  $('#admin-title').textContent = state.isAdmin ? 'Administration' : 'API tokens';
  document.title = `${state.isAdmin ? 'Administration' : 'API tokens'} · livedata`;
  showOrg(org);
  $('#tokens-title').textContent = state.isAdmin ? 'API tokens of the organisation' : 'Your API tokens';
  const loads = [loadTokens()];
  if (state.isAdmin) loads.push(loadUsers(), loadMachines(), loadAudit());
  await Promise.all(loads);
}

start();
