// The pages' words: every string the user sees comes from a dictionary in
// /i18n/<lang>.json, chosen from the browser's languages and switchable.

export const LANGUAGES = ['en', 'ko'];
const STORAGE_KEY = 'rentalbook.lang';

let lang = 'en';
let dict = {};
let fallback = {};
let plurals = new Intl.PluralRules('en');

async function fetchDictionary(code) {
  const res = await fetch(`/i18n/${code}.json`, { credentials: 'same-origin' });
  if (!res.ok) throw new Error(`no dictionary for ${code}`);
  return res.json();
}

/** The language to start in: the one chosen before, else the browser's. */
export function preferredLanguage() {
  try {
    const saved = localStorage.getItem(STORAGE_KEY);
    if (LANGUAGES.includes(saved)) return saved;
  } catch {
    // Storage may be off; the browser's language decides.
  }
  const wanted = navigator.languages?.length ? navigator.languages : [navigator.language];
  for (const tag of wanted) {
    const base = String(tag || '').toLowerCase().split('-')[0];
    if (LANGUAGES.includes(base)) return base;
  }
  return 'en';
}

/** Loads `code`'s dictionary (English fills any gap) and makes it current. */
export async function setLanguage(code, { remember = false } = {}) {
  if (!LANGUAGES.includes(code)) code = 'en';
  if (!Object.keys(fallback).length) fallback = await fetchDictionary('en');
  dict = code === 'en' ? fallback : await fetchDictionary(code);
  lang = code;
  plurals = new Intl.PluralRules(code);
  document.documentElement.lang = code;
  if (remember) {
    try {
      localStorage.setItem(STORAGE_KEY, code);
    } catch {
      // Not remembered; nothing else changes.
    }
  }
}

export function language() {
  return lang;
}

/** Whether the dictionaries have `key` (the current one or English). */
export function has(key) {
  return dict[key] !== undefined || fallback[key] !== undefined;
}

/**
 * The string for `key` with `{name}` replaced from `vars`. An entry may be
 * an object of plural forms (`one`, `other`, ...) chosen by `vars.n`.
 */
export function t(key, vars = {}) {
  let entry = dict[key] ?? fallback[key];
  if (entry === undefined) return key;
  if (typeof entry === 'object') {
    const form = plurals.select(Number(vars.n ?? 0));
    entry = entry[form] ?? entry.other;
  }
  return String(entry).replace(/\{(\w+)\}/g, (whole, name) =>
    Object.hasOwn(vars, name) ? String(vars[name]) : whole,
  );
}

/**
 * The locale dates are written in: the browser's own when it is in the
 * page's language (en-GB gets day-month order, en-US month-day), else the
 * page's language.
 */
export function dateLocale() {
  const wanted = navigator.languages?.length ? navigator.languages : [navigator.language];
  for (const tag of wanted) {
    if (String(tag || '').toLowerCase().split('-')[0] !== lang) continue;
    try {
      return Intl.DateTimeFormat.supportedLocalesOf([tag])[0] || lang;
    } catch {
      // Not a tag Intl knows; try the next.
    }
  }
  return lang;
}

let dateFormat = null;

/** A timestamp (RFC 3339 text) as the reader's date and time. */
export function formatTime(value) {
  if (!value) return '';
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return '';
  const locale = dateLocale();
  if (dateFormat?.locale !== locale) {
    dateFormat = {
      locale,
      format: new Intl.DateTimeFormat(locale, { dateStyle: 'medium', timeStyle: 'short' }),
    };
  }
  return dateFormat.format.format(date);
}

const HANGUL = /[\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\uac00-\ud7af\ud7b0-\ud7ff]/;
const LATIN = /[A-Za-z\u00c0-\u024f]/;

/**
 * The `lang` a piece of text (a title, an author) needs when its script is
 * not the page's: Korean (Hangul) on an English page is "ko"; Latin letters
 * without Hangul on a Korean page are read as English. Undefined when the
 * page's language fits.
 */
export function textLang(text) {
  const s = String(text || '');
  if (HANGUL.test(s)) return lang === 'ko' ? undefined : 'ko';
  if (lang === 'ko' && LATIN.test(s)) return 'en';
  return undefined;
}

/** Fills every element marked with data-i18n (text) or data-i18n-* (attributes). */
export function translateStatic(root = document) {
  for (const el of root.querySelectorAll('[data-i18n]')) {
    el.textContent = t(el.dataset.i18n);
  }
  for (const el of root.querySelectorAll('[data-i18n-aria-label]')) {
    el.setAttribute('aria-label', t(el.dataset.i18nAriaLabel));
  }
  for (const el of root.querySelectorAll('[data-i18n-placeholder]')) {
    el.setAttribute('placeholder', t(el.dataset.i18nPlaceholder));
  }
}
