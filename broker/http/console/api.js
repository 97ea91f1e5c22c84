// The public HTTP API, called with the session cookie; writes carry the
// session's CSRF token.

let csrf = null;

export function setCsrf(token) {
  csrf = token;
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function api(path, { method = 'GET', body, headers = {} } = {}) {
  const sent = { ...headers };
  if (method !== 'GET' && csrf) sent['X-CSRF-Token'] = csrf;
  if (body !== undefined) sent['Content-Type'] = 'application/json';
  const response = await fetch(path, {
    method,
    headers: sent,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'same-origin',
  });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = data && data.error;
    throw new ApiError(response.status, error?.code ?? `http_${response.status}`, error?.message ?? text);
  }
  return data;
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : '';
}

// Runs `load` now and every `ms` until the returned stop is called; a
// load still running is not started again.
export function poll(load, ms = 2000) {
  let busy = false;
  const tick = async () => {
    if (busy) return;
    busy = true;
    try {
      await load();
    } finally {
      busy = false;
    }
  };
  tick();
  const timer = setInterval(tick, ms);
  return () => clearInterval(timer);
}
