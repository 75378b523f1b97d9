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

/** A timestamp (RFC 3339 text) as the reader's date and time. */
export function formatTime(value) {
  if (!value) return '';
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return '';
  return new Intl.DateTimeFormat(lang, { dateStyle: 'medium', timeStyle: 'short' }).format(date);
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
