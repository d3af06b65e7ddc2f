// The browser session, shared by every page but the login page.
//
// - authFetch(): fetch with the session cookie; state-changing requests carry the
//   X-CSRF-Token header (the value of the readable `livedata_csrf` cookie), and a 401
//   (no session, or it expired) sends the browser to the login page, coming back here
//   afterwards. The returned promise then never settles: the page is going away.
// - startSession(): who is logged in (GET /api/auth/me), the header's user menu
//   (name, role, Admin/API tokens link, Log out), and `data-role` on <body> so that
//   elements marked `needs-operator` / `needs-admin` are hidden from lower roles.
//   The server enforces roles anyway; this only keeps the page from offering
//   what would be refused.

import { h, showBanner } from './dom.js';

export const LOGIN_PAGE = '/static/login.html';
export const CSRF_COOKIE = 'livedata_csrf';
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);
const RECHECK_MS = 60_000;
export const ROLES = ['viewer', 'operator', 'admin'];

/** The value of a cookie readable by scripts, or ''. */
export function cookie(name) {
  for (const part of document.cookie.split(';')) {
    const [key, ...rest] = part.trim().split('=');
    if (key === name) return decodeURIComponent(rest.join('='));
  }
  return '';
}

/** The login page, with this page (path, query, fragment) as where to come back. */
export function loginUrl(next = `${location.pathname}${location.search}${location.hash}`) {
  return `${LOGIN_PAGE}?next=${encodeURIComponent(next)}`;
}

let leaving = false;

/** Go to the login page; a promise that never settles, for callers to await. */
export function toLogin() {
  if (!leaving) {
    leaving = true;
    location.assign(loginUrl());
  }
  return new Promise(() => {});
}

/** fetch() with the CSRF header on state-changing methods and the login redirect on 401. */
export async function authFetch(path, init = {}) {
  const method = (init.method ?? 'GET').toUpperCase();
  const headers = new Headers(init.headers ?? {});
  if (!SAFE_METHODS.has(method)) {
    const csrf = cookie(CSRF_COOKIE);
    if (csrf) headers.set('X-CSRF-Token', csrf);
  }
  const response = await fetch(path, { ...init, method, headers, credentials: 'same-origin' });
  if (response.status === 401) return toLogin();
  return response;
}

/** True when `role` is at least `needed` (viewer < operator < admin). */
export function can(role, needed) {
  return ROLES.indexOf(role) >= ROLES.indexOf(needed);
}

let current = null;

/** The caller: {user, id, org, role, via}; fetched once per page. */
export function me() {
  current ??= (async () => {
    let response;
    try {
      response = await authFetch('/api/auth/me', { headers: { Accept: 'application/json' } });
    } catch (err) {
      current = null;
      throw new Error(`Cannot reach the server (${err.message}).`);
    }
    if (!response.ok) {
      current = null;
      throw new Error(`Cannot check who is logged in (HTTP ${response.status}).`);
    }
    return response.json();
  })();
  return current;
}

/** End the session (its live connections close too), then show the login page. */
export async function logout() {
  try {
    await authFetch('/api/auth/logout', { method: 'POST' });
  } catch {
    // the server is away: the cookie stays, but the user asked to leave
  }
  leaving = true;
  location.replace(`${LOGIN_PAGE}?logged_out=1`);
}

/** The light/dark switch (theme.js remembers the choice in this browser). */
function themeToggle() {
  const theme = window.livedataTheme;
  const button = h('button', { type: 'button', class: 'btn small theme-toggle', id: 'theme-toggle' });
  const show = () => {
    const dark = theme.get() === 'dark';
    button.textContent = dark ? '☀' : '☾';
    button.title = dark ? 'Light mode' : 'Dark mode';
    button.setAttribute('aria-label', button.title);
    button.setAttribute('aria-pressed', String(dark));
  };
  button.addEventListener('click', () => theme.set(theme.get() === 'dark' ? 'light' : 'dark'));
  addEventListener('livedata:theme', show);
  show();
  return button;
}

function userMenu(who) {
  const link = can(who.role, 'admin')
    ? h('a', { class: 'user-link', href: '/static/admin.html' }, 'Admin')
    : h('a', { class: 'user-link', href: '/static/admin.html' }, 'API tokens');
  if (location.pathname === '/static/admin.html') link.setAttribute('aria-current', 'page');
  const button = h('button', { type: 'button', class: 'btn small', id: 'logout' }, 'Log out');
  button.addEventListener('click', () => {
    button.disabled = true;
    logout();
  });
  return h('div', { class: 'user-menu', 'aria-label': 'Account' },
    link,
    themeToggle(),
    h('span', { class: 'user-who', title: `Logged in as ${who.user} (${who.role}) in ${who.org}` },
      h('span', { class: 'user-name' }, who.user),
      h('span', { class: 'role-badge', dataset: { role: who.role } }, who.role)),
    button);
}

/**
 * Show the page's organisation (the user's only one) as text in its picker's place;
 * the <select> stays, hidden, holding the id for the scripts that read it.
 */
export function showOrganisation(select, org) {
  select.replaceChildren(h('option', { value: org.id }, org.name || org.id));
  select.value = org.id;
  select.disabled = true;
  select.hidden = true;
  let name = select.parentElement.querySelector('.org-name');
  if (!name) {
    name = h('strong', { class: 'org-name' });
    select.after(name);
  }
  name.textContent = org.name || org.id;
  name.title = `Organisation ${org.id}`;
}

/**
 * Who is logged in, with the header's user menu added and <body data-role> set.
 * Rejects (with a message to show) when the server cannot be reached.
 */
export async function startSession() {
  const who = await me();
  document.body.dataset.role = who.role;
  const bar = document.querySelector('.topbar');
  if (bar && !bar.querySelector('.user-menu')) bar.append(userMenu(who));
  // A session that ends elsewhere (expiry, logout in another tab, disabled user)
  // sends an idle page to the login page too.
  setInterval(() => authFetch('/api/auth/me').catch(() => {}), RECHECK_MS);
  addEventListener('pageshow', (event) => {
    if (event.persisted) authFetch('/api/auth/me').catch(() => {});
  });
  return who;
}

/** startSession() for a page script: the caller, or null once the banner says why not. */
export async function startPage() {
  try {
    return await startSession();
  } catch (err) {
    showBanner(err.message);
    return null;
  }
}
