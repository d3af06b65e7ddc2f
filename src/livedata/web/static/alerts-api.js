// REST client for alert rules, alerts and the fleet summary (the rest is in api.js).
// Failures throw an Error whose message is the server's {"error": {"message"}};
// requests go through session.js (CSRF header, login page on 401).

import { authFetch } from './session.js';

export { api } from './api.js';

const enc = encodeURIComponent;
const orgPath = (orgId) => `/api/resources/${enc(orgId)}`;

async function request(method, path, body) {
  const init = { method, headers: { Accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await authFetch(path, init);
  } catch (err) {
    throw Object.assign(new Error(`Cannot reach the server (${err.message}).`), { status: 0 });
  }
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = data?.error ?? {};
    throw Object.assign(
      new Error(error.message ?? `${method} ${path} failed with HTTP ${response.status}.`),
      { status: response.status, code: error.code },
    );
  }
  return data;
}

export const alertsApi = {
  async fleet(orgId, fields) {
    const query = fields?.length ? `?fields=${enc(fields.join(','))}` : '';
    return request('GET', `${orgPath(orgId)}/fleet${query}`);
  },
  async rules(orgId) {
    return (await request('GET', `${orgPath(orgId)}/alert-rules`)).rules;
  },
  createRule(orgId, body) {
    return request('POST', `${orgPath(orgId)}/alert-rules`, body);
  },
  updateRule(orgId, ruleId, body) {
    return request('PUT', `${orgPath(orgId)}/alert-rules/${enc(ruleId)}`, body);
  },
  deleteRule(orgId, ruleId) {
    return request('DELETE', `${orgPath(orgId)}/alert-rules/${enc(ruleId)}`);
  },
  async alerts(orgId, state, limit = 200) {
    const query = new URLSearchParams({ limit: String(limit) });
    if (state) query.set('state', state);
    return (await request('GET', `${orgPath(orgId)}/alerts?${query}`)).alerts;
  },
  acknowledge(orgId, alertId, comment) {
    return request('POST', `${orgPath(orgId)}/alerts/${enc(alertId)}/ack`, { comment });
  },
  async notifications(orgId, alertId) {
    return (await request('GET', `${orgPath(orgId)}/alerts/${enc(alertId)}/notifications`)).notifications;
  },
};

const timeFormat = new Intl.DateTimeFormat(undefined, {
  hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false,
});
const dateTimeFormat = new Intl.DateTimeFormat(undefined, {
  month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', hour12: false,
});

/** "now", "12 s ago", "5 min ago", or a time of day / date for older moments. */
export function ago(ms, now = Date.now()) {
  if (ms == null) return 'never';
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 2) return 'now';
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  return s < 86400 ? timeFormat.format(ms) : dateTimeFormat.format(ms);
}

export const clock = (ms) => (ms == null ? '–' : timeFormat.format(ms));

const numberFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
export const num = (v) => (typeof v === 'number' ? numberFormat.format(v) : v == null ? '–' : String(v));

export const SEVERITY_COLORS = { info: '#3b82f6', warning: '#f59e0b', critical: '#dc2626' };
export const SEVERITY_RANK = { info: 1, warning: 2, critical: 3 };
