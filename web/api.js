// Calls to the edge. The token is an HttpOnly cookie the browser sends by
// itself to this origin: no script ever holds it. Every failure becomes an
// ApiError whose message is a sentence for people, never the raw JSON.

import { t } from './i18n.js';

export class ApiError extends Error {
  constructor(message, { status = 0, code = 0, retryAfter = null } = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }

  get signedOut() {
    return this.status === 401;
  }
}

/** A fresh key for `Idempotency-Key`, so that a retried POST is safe. */
function newKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Seconds from a Retry-After header (seconds or an HTTP date), at least 1. */
export function retryAfterSeconds(header) {
  if (!header) return 1;
  const secs = Number(header);
  if (Number.isFinite(secs)) return Math.max(1, Math.ceil(secs));
  const when = Date.parse(header);
  if (Number.isNaN(when)) return 1;
  return Math.max(1, Math.ceil((when - Date.now()) / 1000));
}

/** "you already have ..." becomes "You already have ....". */
export function asSentence(text) {
  const s = String(text).trim();
  if (!s) return s;
  const first = s[0].toLocaleUpperCase();
  const end = /[.!?。]$/.test(s) ? '' : '.';
  return first + s.slice(1) + end;
}

/** The sentence for a failed answer. */
export function errorFor(status, body, retryAfterHeader) {
  const message = body && typeof body.message === 'string' ? body.message : '';
  if (status === 503 || status === 429) {
    const n = retryAfterSeconds(retryAfterHeader);
    return new ApiError(t('error.busy', { n }), { status, code: body?.code ?? 14, retryAfter: n });
  }
  if (status === 401) return new ApiError(t('error.signedOut'), { status, code: 16 });
  if (status === 504) return new ApiError(t('error.timeout'), { status, code: 4 });
  if (status >= 500 || !message) {
    return new ApiError(status >= 500 ? t('error.server') : t('error.refused'), {
      status,
      code: body?.code ?? 0,
    });
  }
  const key = status === 403 ? 'error.forbidden' : 'error.refusedBecause';
  return new ApiError(t(key, { reason: asSentence(message) }), { status, code: body?.code ?? 0 });
}

/** Calls the edge; resolves to the parsed JSON answer or throws an ApiError. */
export async function call(method, path, body) {
  const headers = { Accept: 'application/json' };
  const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  if (method === 'POST' && path.startsWith('/v1/')) headers['Idempotency-Key'] = newKey();
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    throw new ApiError(t('error.network'));
  }
  let parsed = null;
  const text = await res.text().catch(() => '');
  if (text) {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = null;
    }
  }
  if (res.ok) return parsed ?? {};
  throw errorFor(res.status, parsed, res.headers.get('Retry-After'));
}

export const get = (path) => call('GET', path);
export const post = (path, body = {}) => call('POST', path, body);

/** Query string of the non-empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}
