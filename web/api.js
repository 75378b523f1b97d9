// Calls to the edge. The token is an HttpOnly cookie the browser sends by
// itself to this origin: no script ever holds it. Every failure becomes an
// ApiError whose message is a sentence for people, never the raw JSON: a
// refusal's `google.rpc.ErrorInfo` reason is translated (`reason.<REASON>`
// in the dictionaries, with its metadata filled in), and the service's
// English sentence is the fallback for a reason the pages do not know.

import { has, t } from './i18n.js';

export class ApiError extends Error {
  constructor(message, { status = 0, code = 0, retryAfter = null, reason = '', metadata = {} } = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
    /** The ErrorInfo reason (`ALREADY_RESERVED`, ...), or '' when the answer had none. */
    this.reason = reason;
    /** The ErrorInfo metadata: the values the refusal is about (`bookId`, `limit`, ...). */
    this.metadata = metadata;
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

const ERROR_INFO = 'type.googleapis.com/google.rpc.ErrorInfo';
const RETRY_INFO = 'type.googleapis.com/google.rpc.RetryInfo';

/** The body's `google.rpc.ErrorInfo` detail, or null. */
export function errorInfo(body) {
  const details = Array.isArray(body?.details) ? body.details : [];
  const info = details.find((d) => d && d['@type'] === ERROR_INFO && typeof d.reason === 'string');
  return info ? { reason: info.reason, domain: info.domain ?? '', metadata: { ...(info.metadata || {}) } } : null;
}

/** Seconds of the body's `google.rpc.RetryInfo` ("5s", "1.5s"), or null. */
function retryInfoSeconds(body) {
  const details = Array.isArray(body?.details) ? body.details : [];
  const info = details.find((d) => d && d['@type'] === RETRY_INFO);
  const secs = Number.parseFloat(String(info?.retryDelay ?? ''));
  return Number.isFinite(secs) ? Math.max(1, Math.ceil(secs)) : null;
}

/**
 * A metadata value that is itself a word (a reservation's status, a copy's
 * state, a field's name), in the page's language when the dictionary has it.
 */
function word(kind, value) {
  const raw = String(value ?? '');
  const name = raw.replace(/^(RESERVATION_STATUS|ITEM_STATE)_/, '').toUpperCase();
  const key = kind === 'field' ? `field.${raw}` : `${kind}.${name}`;
  if (has(key)) return t(key);
  return kind === 'field' ? raw : raw.toLowerCase().replace(/_/g, ' ');
}

/**
 * The translated sentence for a reason, or '' when the dictionaries do not
 * know it. `{n}` (the count that picks a plural form) is the metadata's
 * `limit` or `max`, else `seconds`.
 */
export function reasonSentence(reason, metadata = {}, seconds = null) {
  const key = `reason.${reason}`;
  if (!reason || !has(key)) return '';
  const vars = { ...metadata };
  if (metadata.status !== undefined) vars.status = word('reservation.status', metadata.status);
  if (metadata.state !== undefined) vars.state = word('item.state', metadata.state);
  if (metadata.field !== undefined) vars.field = word('field', metadata.field);
  const n = metadata.limit ?? metadata.max ?? seconds;
  if (n !== undefined && n !== null) vars.n = Number(n);
  return t(key, vars);
}

/** The sentence for a failed answer. */
export function errorFor(status, body, retryAfterHeader) {
  const message = body && typeof body.message === 'string' ? body.message : '';
  const info = errorInfo(body);
  const extra = { status, code: body?.code ?? 0, reason: info?.reason ?? '', metadata: info?.metadata ?? {} };
  if (status === 503 || status === 429) {
    const n = retryInfoSeconds(body) ?? retryAfterSeconds(retryAfterHeader);
    const reasoned = info?.reason === 'OVERLOADED' ? '' : reasonSentence(info?.reason, info?.metadata, n);
    return new ApiError(reasoned || t('error.busy', { n }), { ...extra, code: body?.code ?? 14, retryAfter: n });
  }
  if (status === 401) return new ApiError(t('error.signedOut'), { ...extra, code: 16 });
  if (status === 504) return new ApiError(t('error.timeout'), { ...extra, code: 4 });
  const reasoned = info ? reasonSentence(info.reason, info.metadata) : '';
  if (reasoned) return new ApiError(reasoned, extra);
  if (status >= 500 || !message) {
    return new ApiError(status >= 500 ? t('error.server') : t('error.refused'), extra);
  }
  const key = status === 403 ? 'error.forbidden' : 'error.refusedBecause';
  return new ApiError(t(key, { reason: asSentence(message) }), extra);
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
