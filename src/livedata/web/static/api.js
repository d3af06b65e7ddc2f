// REST client for the gateway. Every failure becomes an ApiError carrying the
// server's {"error": {"code", "message"}} so callers can show the message as is.

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function request(method, path, body) {
  const init = { method, headers: { Accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
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

const enc = encodeURIComponent;
const orgPath = (orgId) => `/api/resources/${enc(orgId)}`;
const datasetPath = (orgId, chassisId) => `${orgPath(orgId)}/_common/datasets/${enc(chassisId)}`;

export const api = {
  async orgs() {
    return (await request('GET', '/api/orgs')).orgs;
  },
  async machines(orgId) {
    return (await request('GET', `${orgPath(orgId)}/machines`)).machines;
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
};

/** The live WebSocket URL, on the host that served the page. */
export function liveUrl(orgId, chassisId, msgType) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}${datasetPath(orgId, chassisId)}/live?msgType=${enc(msgType)}`;
}
