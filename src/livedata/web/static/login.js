// Login page: POST /api/auth/login {username, password}; the server sets the
// session cookie (HttpOnly) and the readable CSRF cookie. Then back to `next`,
// which must be a path on this site (an absolute or protocol-relative URL would
// make this page an open redirect, so anything else goes to the Live Data page).

import { $ } from './dom.js';
import { CSRF_COOKIE, LOGIN_PAGE, cookie } from './session.js';

const form = $('#login-form');
const errorEl = $('#login-error');
const notice = $('#login-notice');
const submit = form.querySelector('button[type=submit]');
const params = new URLSearchParams(location.search);
let waitTimer = null;

/** `raw` as a same-origin path (with query and fragment), or '/' when it is not one. */
export function safeNext(raw) {
  if (!raw || !raw.startsWith('/') || raw.startsWith('//') || raw.startsWith('/\\')) return '/';
  let url;
  try {
    url = new URL(raw, location.origin);
  } catch {
    return '/';
  }
  if (url.origin !== location.origin || url.pathname === LOGIN_PAGE) return '/';
  return `${url.pathname}${url.search}${url.hash}`;
}

const next = safeNext(params.get('next'));

function showError(message) {
  errorEl.textContent = message;
  errorEl.hidden = !message;
}

function showNotice(message) {
  notice.textContent = message;
  notice.hidden = !message;
}

/** "45 s", "5 min", "4 min 56 s". */
function duration(seconds) {
  const minutes = Math.floor(seconds / 60);
  const rest = seconds % 60;
  if (!minutes) return `${rest} s`;
  return rest ? `${minutes} min ${rest} s` : `${minutes} min`;
}

/** Keep the button disabled for `seconds`, counting down in the error message. */
function throttled(seconds) {
  clearInterval(waitTimer);
  let left = Math.max(1, Math.ceil(seconds));
  const tick = () => {
    if (left <= 0) {
      clearInterval(waitTimer);
      waitTimer = null;
      submit.disabled = false;
      showError('You can try again now.');
      return;
    }
    showError(`Too many failed attempts. Try again in ${duration(left)}.`);
    left -= 1;
  };
  submit.disabled = true;
  tick();
  waitTimer = setInterval(tick, 1000);
}

// The wait is per user name and address: another user name may be let in.
form.elements.username.addEventListener('input', () => {
  if (waitTimer === null) return;
  clearInterval(waitTimer);
  waitTimer = null;
  submit.disabled = false;
  showError('');
});

form.addEventListener('submit', async (event) => {
  event.preventDefault();
  if (submit.disabled) return;
  const username = form.elements.username.value.trim();
  const password = form.elements.password.value;
  if (!username || !password) {
    showError(username ? 'Enter your password.' : 'Enter your user name.');
    (username ? form.elements.password : form.elements.username).focus();
    return;
  }
  showError('');
  submit.disabled = true;
  submit.textContent = 'Logging in…';
  let response;
  try {
    response = await fetch('/api/auth/login', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify({ username, password }),
      credentials: 'same-origin',
    });
  } catch (err) {
    submit.disabled = false;
    submit.textContent = 'Log in';
    showError(`Cannot reach the server (${err.message}).`);
    return;
  }
  submit.textContent = 'Log in';
  if (response.ok) {
    location.replace(next);
    return;
  }
  submit.disabled = false;
  const body = await response.json().catch(() => null);
  if (response.status === 401) {
    showError('Wrong user name or password.');
    form.elements.password.select();
    form.elements.password.focus();
  } else if (response.status === 429) {
    throttled(Number(response.headers.get('Retry-After')) || 60);
  } else {
    showError(body?.error?.message ?? `Login failed (HTTP ${response.status}).`);
  }
});

async function start() {
  if (params.has('logged_out')) showNotice('You have logged out.');
  else if (params.has('next')) showNotice('Log in to continue.');
  // Already logged in (the readable CSRF cookie is there and the session is valid)? Go on.
  if (cookie(CSRF_COOKIE)) {
    try {
      const response = await fetch('/api/auth/me', { credentials: 'same-origin' });
      if (response.ok) location.replace(next);
    } catch {
      // stay here and let the user log in
    }
  }
}

start();
