// REST client for the gateway. Every failure becomes an ApiError carrying the
// server's {"error": {"code", "message"}} so callers can show the message as is
// (a 403 says which role is needed). Requests go through session.js: CSRF header on
// POST/PUT/DELETE, and a 401 (not logged in, session expired) opens the login page.

import { authFetch } from './session.js';

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function request(method, path, body) {
  const init = { method, headers: { Accept: 'application/json' } };
  if (body instanceof FormData) {
    init.body = body; // the browser sets the multipart Content-Type with its boundary
  } else if (body instanceof Blob) {
    init.headers['Content-Type'] = 'application/octet-stream';
    init.body = body;
  } else if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await authFetch(path, init);
  } catch (err) {
    throw new ApiError(0, 'network', `Cannot reach the server (${err.message}).`);
  }
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = data?.error ?? {};
    throw new ApiError(
      response.status,
      error.code ?? `http_${response.status}`,
      error.message ?? `${method} ${path} failed with HTTP ${response.status}.`,
    );
  }
  return data;
}

/** POST one file as multipart/form-data (field "file"); the JSON answer, or an ApiError. */
export function upload(path, file) {
  const form = new FormData();
  form.append('file', file, file.name);
  return request('POST', path, form);
}

const enc = encodeURIComponent;
const orgPath = (orgId) => `/api/resources/${enc(orgId)}`;
export const datasetPath = (orgId, chassisId) => `${orgPath(orgId)}/_common/datasets/${enc(chassisId)}`;

export const api = {
  /** Upload a recorded CAN log (a File) into the machine's history; the import summary. */
  importLog: (orgId, chassisId, file) =>
    request('POST', `${orgPath(orgId)}/machines/${enc(chassisId)}/import?filename=${enc(file.name)}`, file),
  async orgs() {
    return (await request('GET', '/api/orgs')).orgs;
  },
  /** {id, name} of one organisation (the caller's); just the id if the name cannot be had. */
  async org(orgId) {
    const orgs = await this.orgs().catch(() => []);
    return orgs.find((org) => org.id === orgId) ?? { id: orgId, name: orgId };
  },
  /** The organisation with its settings, after changing some of them (admin). */
  updateOrg(orgId, settings) {
    return request('PUT', orgPath(orgId), settings);
  },
  async machines(orgId) {
    return (await request('GET', `${orgPath(orgId)}/machines`)).machines;
  },
  /** {active, recent} diagnostic trouble codes of a machine. */
  dtcs(orgId, chassisId) {
    return request('GET', `${orgPath(orgId)}/machines/${enc(chassisId)}/dtcs`);
  },
  async groups(orgId) {
    return (await request('GET', `${orgPath(orgId)}/groups`)).groups;
  },
  createGroup(orgId, group) {
    return request('POST', `${orgPath(orgId)}/groups`, group);
  },
  updateGroup(orgId, groupId, group) {
    return request('PUT', `${orgPath(orgId)}/groups/${enc(groupId)}`, group);
  },
  deleteGroup(orgId, groupId) {
    return request('DELETE', `${orgPath(orgId)}/groups/${enc(groupId)}`);
  },
  /**
   * History of `fields`; without `from` the server returns the last 120 s. With
   * `maxPoints`, a field with more points comes back min/max downsampled; `to`
   * defaults to the server's now.
   */
  history(orgId, chassisId, msgType, fields, from, maxPoints, to) {
    const query = new URLSearchParams({ msgType, fields: fields.join(',') });
    if (from != null) query.set('from', String(from));
    if (to != null) query.set('to', String(to));
    if (maxPoints != null) query.set('maxPoints', String(maxPoints));
    return request('GET', `${datasetPath(orgId, chassisId)}/history?${query}`);
  },

  // ---- accounts (admin page) ----
  async users(orgId) {
    return (await request('GET', `${orgPath(orgId)}/users`)).users;
  },
  createUser(orgId, user) {
    return request('POST', `${orgPath(orgId)}/users`, user);
  },
  /** `change`: any of {role, password, disabled}. */
  updateUser(orgId, userId, change) {
    return request('PUT', `${orgPath(orgId)}/users/${enc(userId)}`, change);
  },
  deleteUser(orgId, userId) {
    return request('DELETE', `${orgPath(orgId)}/users/${enc(userId)}`);
  },
  async myTokens() {
    return (await request('GET', '/api/auth/tokens')).tokens;
  },
  async orgTokens(orgId) {
    return (await request('GET', `${orgPath(orgId)}/tokens`)).tokens;
  },
  /** The new token, with its secret value in `token` (shown this once). */
  createToken(name, expiresInDays) {
    return request('POST', '/api/auth/tokens', expiresInDays ? { name, expiresInDays } : { name });
  },
  revokeToken(tokenId) {
    return request('DELETE', `/api/auth/tokens/${enc(tokenId)}`);
  },
  /** {deviceId, username, secret}: a new device secret; the old one stops working. */
  newDeviceSecret(orgId, chassisId) {
    return request('POST', `${orgPath(orgId)}/machines/${enc(chassisId)}/secret`);
  },
  // ---- machine registry, models and DBC files ----
  /** {machine, provisioning}: `provisioning` (with the secret, shown once) unless provision is false. */
  createMachine(orgId, machine) {
    return request('POST', `${orgPath(orgId)}/machines`, machine);
  },
  /** `change`: any of {name, model, tags, location, disabled}. */
  updateMachine(orgId, chassisId, change) {
    return request('PUT', `${orgPath(orgId)}/machines/${enc(chassisId)}`, change);
  },
  /** `data`: 'keep' or 'delete' (its stored telemetry). */
  deleteMachine(orgId, chassisId, data) {
    return request('DELETE', `${orgPath(orgId)}/machines/${enc(chassisId)}?data=${enc(data)}`);
  },
  async machinePoints(orgId, chassisId) {
    return (await request('GET', `${orgPath(orgId)}/machines/${enc(chassisId)}/data`)).points;
  },
  provisionMachine(orgId, chassisId) {
    return request('POST', `${orgPath(orgId)}/machines/${enc(chassisId)}/provision`);
  },
  importMachines(orgId, file) {
    return upload(`${orgPath(orgId)}/machines/import`, file);
  },
  async models(orgId) {
    return (await request('GET', `${orgPath(orgId)}/models`)).models;
  },
  createModel(orgId, name) {
    return request('POST', `${orgPath(orgId)}/models`, { name });
  },
  assignModelDbc(orgId, model, dbcId) {
    return request('PUT', `${orgPath(orgId)}/models/${enc(model)}/dbc`, { dbcId });
  },
  assignMachineDbc(orgId, chassisId, dbcId) {
    return request('PUT', `${orgPath(orgId)}/machines/${enc(chassisId)}/dbc`, { dbcId });
  },
  async modelSignals(orgId, model) {
    return request('GET', `${orgPath(orgId)}/models/${enc(model)}/signals`);
  },
  /** {dbc, signals}: the signal catalog of one DBC file. */
  async dbcSignals(orgId, dbcId) {
    return request('GET', `${orgPath(orgId)}/dbc/${enc(dbcId)}/signals`);
  },
  async dbcFiles(orgId) {
    return (await request('GET', `${orgPath(orgId)}/dbc`)).dbc;
  },
  uploadDbc(orgId, file) {
    return upload(`${orgPath(orgId)}/dbc`, file);
  },
  async audit(orgId, limit = 100) {
    return (await request('GET', `${orgPath(orgId)}/audit?limit=${enc(limit)}`)).entries;
  },
};

/** The live WebSocket URL, on the host that served the page. */
export function liveUrl(orgId, chassisId, msgType) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}${datasetPath(orgId, chassisId)}/live?msgType=${enc(msgType)}`;
}
