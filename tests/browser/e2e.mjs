// End-to-end test of rentalbook's web pages in Debian's Chromium.
//
//   node tests/browser/e2e.mjs http://127.0.0.1:8088
//
// Run by tests/web.rs against a fresh all-in-one (`rentalbook`) with dev
// sign-in on. A librarian registers a book; member A reserves it and sees
// READY; member B reserves it and sees WAITING 1; A picks it up and returns
// it; B's page turns READY live, without a reload; B picks it up. Also:
// refusals are translated by their ErrorInfo reason (English sentence as the
// fallback), the desk offers to add copies to a book whose ISBN is typed
// again, notices sit next to what they are about, never cover a control,
// clear themselves and can be dismissed, the focus never falls to the page
// body after an action, long names wrap, Korean titles carry lang="ko",
// dates follow the browser's region, the catalogue shows what the member
// holds instead of Reserve, My Page has Current and History tabs (keyboard,
// paged), every control is at least 44x44 px on a phone, an overload is a
// sentence, the pages follow the browser's language (English, Korean) and
// switch, the sign-in works from the keyboard, a page on another port of the
// host cannot reserve with the member's cookie (cross-site request forgery),
// axe-core finds no serious or critical violation on the main screens, no
// page logs a console error, and nothing is wider than its screen.
//
// The circulation desk: a librarian scans a member and copies at the
// check-out as a barcode scanner types them (a copy scanned twice is listed
// once; a second copy of a book and a copy on loan to another member are
// refused beside the input, in words, until the next scan), opens a book's
// copies (Withdraw and Mark lost ask first; a copy on loan cannot be
// withdrawn), and checks copies in: "Hold shelf for alice", "Reshelve",
// "Not on loan", an unknown barcode, "Set aside" while the desk is away
// (played by the test) turning to where the copy goes once the desk is back,
// and a lost copy found again. A member renews from My Page ("Renew (2
// left)", the new due date, no Renew once none is left); a librarian's
// renewal while someone waits is refused in words. The staff views: the hold
// shelf live (a hold appears as the copy to pull, and goes when picked up),
// beyond its first page with "Show more" (a new hold joins the entries read
// that way, live), a book's queue in order (live: a member reserving joins
// it), loans due on a day (live: a loan made for that day joins them),
// overdue loans (live, on a second all-in-one with three-second loans when
// SHORT_LOANS_URL is given), members found by id prefix, a lost loan and
// older journeys in a member's history. A book's page, from its title: for
// a member in Korean on a phone (copies free, held and on loan, how many
// wait, when the next copy is expected back, Reserve) and for a librarian
// (each copy, who waits), both following the queue live. A second
// librarian lends in Korean on a phone. axe-core scans each of those
// screens.
//
// Notices, from real events (a reservation with a free copy is ready at
// once): a hold-ready notice appears on My Page live, in words, with the
// unread count on its tab and in the header, and Mark all read reads it (in
// another tab too, live), in English and in Korean on a phone; the notice
// settings refuse an address that is not one beside the field, and a fresh
// page shows what was saved; Erase my history asks first, then the finished
// journey leaves My Page and reserve-svc while the hold going on stays. A
// librarian reads a member's notices and settings, and the notices not
// delivered.
//
// Screenshots go to target/screenshots/ (SCREENSHOT_DIR overrides); the My
// Page, check-in and hold shelf ones are copied to docs/images/ when they are missing
// there or UPDATE_DOCS_SCREENSHOTS=1.

import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '..', '..');
const base = (process.argv[2] || process.env.BASE_URL || 'http://127.0.0.1:8088').replace(/\/$/, '');
const shots = process.env.SCREENSHOT_DIR || join(repo, 'target', 'screenshots');
const axeSource = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

const DESKTOP = { width: 1366, height: 768 };
const PHONE = { width: 390, height: 844 };
const started = Date.now();
let lastStep = started;

function step(what) {
  const now = Date.now();
  console.log(`[${((now - started) / 1000).toFixed(1)}s +${now - lastStep}ms] ${what}`);
  lastStep = now;
}

function check(ok, message) {
  if (!ok) throw new Error(`check failed: ${message}`);
}

// ------------------------------------------------------------------ browser

mkdirSync(shots, { recursive: true });
for (const old of readdirSync(shots).filter((f) => f.startsWith('failure-'))) rmSync(join(shots, old));
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  // playwright gives every launch a fresh, temporary user-data directory.
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-quic',
    '--no-first-run',
    '--disable-component-update',
    '--disable-sync',
  ],
});
step(`Chromium ${browser.version()} started`);

/** Console errors and page errors of every page, less the expected failed requests. */
const consoleErrors = [];
/** URLs of requests the test makes fail on purpose (a refusal, a mocked overload). */
const expectedFailures = new Set();

const pages = [];

async function newPage(name, { locale = 'en-US', viewport = DESKTOP } = {}) {
  const context = await browser.newContext({ locale, viewport, baseURL: base, timezoneId: 'UTC' });
  return track(await context.newPage(), name);
}

/** Watches a page (a new one, or another tab of a member's) for console errors. */
function track(page, name) {
  page.setDefaultTimeout(10_000);
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const url = msg.location()?.url ?? '';
    const failedLoad = /Failed to load resource/.test(msg.text());
    if (failedLoad && [...expectedFailures].some((u) => url.startsWith(u))) return;
    consoleErrors.push(`${name}: ${msg.text()} (${url})`);
  });
  page.on('pageerror', (e) => consoleErrors.push(`${name}: uncaught ${e.message}`));
  page.label = name;
  pages.push(page);
  page.navigations = 0;
  page.on('framenavigated', (frame) => {
    if (frame === page.mainFrame()) page.navigations += 1;
  });
  return page;
}

async function shot(page, file, { phone = false } = {}) {
  if (phone) await page.setViewportSize(PHONE);
  // Nothing sideways on a phone: the page is no wider than the screen.
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `${file}: the page is ${overflow}px wider than the window`);
  await page.screenshot({ path: join(shots, file), fullPage: true });
  if (phone) await page.setViewportSize(DESKTOP);
}

/** axe-core on the page as it is: no serious or critical violation. */
async function scan(page, screen) {
  // Evaluated over the DevTools protocol, which the page's CSP does not govern.
  if (!(await page.evaluate(() => typeof window.axe === 'object'))) await page.evaluate(axeSource);
  const result = await page.evaluate(() =>
    window.axe.run(document, { resultTypes: ['violations'] }),
  );
  const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  const minor = result.violations
    .filter((v) => !bad.includes(v))
    .map((v) => `${v.id} (${v.nodes.map((n) => n.target.join(' ')).join(', ')})`);
  console.log(`  axe on ${screen}: ${bad.length} serious or critical${minor.length ? `; minor: ${minor.join(', ')}` : ''}`);
  check(
    bad.length === 0,
    `axe on ${screen}:\n${bad
      .map((v) => `  ${v.impact} ${v.id}: ${v.help}\n${v.nodes.map((n) => `    ${n.target.join(' ')}: ${n.failureSummary}`).join('\n')}`)
      .join('\n')}`,
  );
}

/**
 * Waits for a visible notice whose sentence matches `pattern`, inside
 * `within` (a locator or a selector) when given; returns the sentence.
 */
async function notice(page, pattern, within = null, timeout = 10_000) {
  const root = typeof within === 'string' ? page.locator(within) : within ?? page.locator('main');
  const sentence = root.locator('.notice-sentence').filter({ hasText: pattern }).first();
  await sentence.waitFor({ state: 'visible', timeout });
  return (await sentence.textContent()).trim();
}

/** Waits until what screen readers hear (polite status, or the alert for problems) matches. */
async function spoken(page, pattern, kind = 'done') {
  const region = kind === 'problem' ? '#alert' : '#announce';
  const handle = await page
    .waitForFunction(
      ([sel, source, flags]) => {
        const text = document.querySelector(sel).textContent;
        return new RegExp(source, flags).test(text) ? text : false;
      },
      [region, pattern.source, pattern.flags],
      { timeout: 5000 },
    )
    .catch(async () => {
      const heard = await page.locator(region).textContent();
      throw new Error(`check failed: ${region} says "${heard}", not ${pattern}`);
    });
  return handle.jsonValue();
}

/** Forgets what was read out, so that the next outcome is not confused with an old one. */
async function hush(page) {
  await page.evaluate(() => {
    document.getElementById('announce').textContent = '';
    document.getElementById('alert').textContent = '';
  });
}

/** The sentences of the visible notices. */
async function visibleNotices(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll('.notice')]
      .filter((n) => n.checkVisibility())
      .map((n) => n.querySelector('.notice-sentence').textContent),
  );
}

/** No visible notice covers a control that is not its own. */
async function noticesCoverNothing(page, where) {
  const covered = await page.evaluate(() => {
    const shown = (el) => el.checkVisibility() && el.getClientRects().length > 0;
    const controls = [
      ...document.querySelectorAll('button, a[href], input, select, textarea, [role="tab"]'),
    ].filter(shown);
    const found = [];
    for (const n of [...document.querySelectorAll('.notice')].filter(shown)) {
      const a = n.getBoundingClientRect();
      for (const c of controls) {
        if (n.contains(c)) continue;
        const b = c.getBoundingClientRect();
        if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom) {
          found.push(`"${n.textContent.trim().slice(0, 40)}" covers ${c.tagName} "${(c.textContent || c.id).trim().slice(0, 30)}"`);
        }
      }
    }
    return found;
  });
  check(covered.length === 0, `${where}: ${covered.join('; ')}`);
}

/** The focus is on something (not the page's body) once `what` is done. */
async function focusKept(page, what) {
  const ok = await page
    .waitForFunction(() => document.activeElement && document.activeElement !== document.body, null, {
      timeout: 3000,
    })
    .then(() => true, () => false);
  const where = await page.evaluate(() => {
    const el = document.activeElement;
    return el ? `${el.tagName}${el.id ? `#${el.id}` : ''} "${(el.textContent || '').trim().slice(0, 40)}"` : 'nothing';
  });
  check(ok, `after ${what} the focus fell to the page body`);
  return where;
}

/** The header's parts (logo, who, Sign out, language, views) do not overlap. */
async function headerApart(page, where) {
  const overlaps = await page.evaluate(() => {
    const parts = ['.brand', '#who', '#sign-out', '.lang', '#nav']
      .map((sel) => document.querySelector(sel))
      .filter((el) => el && el.checkVisibility());
    const found = [];
    for (const [i, a] of parts.entries()) {
      for (const b of parts.slice(i + 1)) {
        const r = a.getBoundingClientRect();
        const q = b.getBoundingClientRect();
        if (r.left < q.right && q.left < r.right && r.top < q.bottom && q.top < r.bottom) {
          found.push(`${a.className || a.id} and ${b.className || b.id}`);
        }
      }
    }
    return found;
  });
  check(overlaps.length === 0, `${where}: the header's ${overlaps.join(', ')} overlap`);
}

/** Every visible control is at least 44x44 CSS px (WCAG 2.5.5 target size). */
async function tapTargets(page, where) {
  const small = await page.evaluate(() =>
    [
      ...document.querySelectorAll(
        'button, select, a.button, .nav a, .subnav a, .brand, .title-link, .staff-row .member-link, [role="tab"], input[type="text"], input[type="search"], input[type="number"], .choices label',
      ),
    ]
      .filter((el) => el.checkVisibility())
      .map((el) => {
        const r = el.getBoundingClientRect();
        return { el: `${el.tagName} "${(el.textContent || el.id).trim().slice(0, 24)}"`, w: r.width, h: r.height };
      })
      .filter((r) => r.w < 44 || r.h < 44),
  );
  check(
    small.length === 0,
    `${where}: targets under 44x44 px: ${small.map((s) => `${s.el} ${s.w.toFixed(0)}x${s.h.toFixed(0)}`).join(', ')}`,
  );
}

function assertSentence(text, what) {
  check(text && !/[{}]|"code"|"message"/.test(text), `${what} is a sentence, not JSON: ${text}`);
}

/** One view of the page (signin, catalogue, mypage, desk): labels repeat across views. */
const view = (page, name) => page.locator(`#view-${name}`);

async function signIn(page, member, role) {
  await page.goto('/');
  await page.getByRole('heading', { name: 'Sign in' }).waitFor();
  await view(page, 'signin').getByLabel('Member id').fill(member);
  await page.getByRole('radio', { name: role }).check();
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByText(`Signed in as ${member} (${role})`).waitFor();
}

/** Opens one of the desk's sub-views (Check out, Check in, ...) from its own navigation. */
async function deskTab(page, name) {
  if (await page.locator('#view-desk').isHidden()) {
    await page.getByRole('link', { name: 'Librarian desk' }).click();
  }
  const link = page.locator('#desk-nav').getByRole('link', { name, exact: true });
  await link.click();
  await page.locator('#desk-nav a[aria-current="page"]').filter({ hasText: name }).waitFor();
}

/** A book's card in the catalogue, or in another view's list. */
function card(page, title, where = 'catalogue') {
  return view(page, where).locator('li.card', {
    has: page.getByRole('heading', { name: title, exact: true }),
  });
}

function journey(page, title) {
  return page.locator('li.journey', { has: page.getByRole('heading', { name: title, exact: true }) });
}

/** A journey in My Page's Current tab. */
function current(page, title) {
  return page.locator('#journeys li.journey', { has: page.getByRole('heading', { name: title, exact: true }) });
}

async function search(page, text) {
  await page.getByRole('link', { name: 'Catalogue', exact: true }).click();
  await page.getByRole('heading', { name: 'Catalogue', level: 1 }).waitFor();
  await view(page, 'catalogue').getByLabel('Search by title, author or ISBN').fill(text);
  await view(page, 'catalogue').getByRole('button', { name: 'Search' }).click();
}

/**
 * Reserves `title` from the catalogue; the desk may not know a book
 * registered a moment ago, so that one refusal is retried. Returns the
 * sentence read out.
 */
async function reserve(page, title, expected) {
  for (let attempt = 0; ; attempt++) {
    await search(page, title);
    await hush(page);
    await card(page, title).getByRole('button', { name: 'Reserve' }).click();
    const handle = await page.waitForFunction((t) => {
      const heard = document.getElementById('announce').textContent;
      if (/Reserved/.test(heard)) return heard;
      const li = [...document.querySelectorAll('#books li.card')].find(
        (c) => c.querySelector('.card-title').textContent === t,
      );
      return li?.querySelector('.notice-sentence')?.textContent || false;
    }, title);
    const text = await handle.jsonValue();
    if (/Reserved/.test(text)) {
      check(expected.test(text), `reserving ${title}: ${text}`);
      return text;
    }
    check(/not known/.test(text) && attempt < 20, `reserving ${title}: ${text}`);
    await page.waitForTimeout(250);
  }
}

async function openMyPage(page) {
  await page.getByRole('link', { name: 'My Page', exact: true }).click();
  await page.getByRole('heading', { name: 'My Page', level: 1 }).waitFor();
  await page.locator('#live[data-state="live"]').waitFor();
}

const stageOf = (page, title, stage) =>
  journey(page, title).and(page.locator(`[data-stage="JOURNEY_STAGE_${stage}"]`));

/** Opens My Page's tab `name` (Current, History; in the page's language). */
async function tab(page, name) {
  await page.getByRole('tab', { name: new RegExp(`^${name}`) }).click();
}

/** A refusal's JSON body as the edge sends it, with a google.rpc.ErrorInfo. */
function refusal(code, message, reason, metadata, ...more) {
  return JSON.stringify({
    code,
    message,
    details: [
      ...more,
      { '@type': 'type.googleapis.com/google.rpc.ErrorInfo', reason, domain: 'rentalbook', metadata },
    ],
  });
}

/** Whether a JSON error body carries an ErrorInfo (the backend's refusals will). */
const hasErrorInfo = (body) =>
  Array.isArray(body?.details) &&
  body.details.some((d) => d['@type'] === 'type.googleapis.com/google.rpc.ErrorInfo');

/** Every ErrorInfo reason (rentalbook.errors.v1.Reason): the pages translate them all. */
function reasons() {
  const proto = join(repo, 'proto', 'rentalbook', 'errors', 'v1', 'errors.proto');
  const known = [
    'INVALID_FIELD', 'INVALID_PAGE_TOKEN', 'INVALID_REQUEST_ID', 'REQUEST_ID_REUSED', 'MALFORMED_REQUEST',
    'SIGN_IN_REQUIRED', 'LIBRARIANS_ONLY', 'SERVICES_ONLY', 'OTHER_MEMBER', 'CROSS_SITE_REQUEST',
    'BOOK_NOT_FOUND', 'DUPLICATE_ISBN', 'TOO_MANY_COPIES',
    'ALREADY_RESERVED', 'ALREADY_ON_LOAN', 'TOO_MANY_RESERVATIONS', 'RESERVATION_NOT_FOUND',
    'RESERVATION_CLOSED', 'NO_READY_RESERVATION',
    'TOO_MANY_RENTALS', 'RENTAL_NOT_FOUND', 'RENTAL_NOT_ACTIVE',
    'ITEM_NOT_FOUND', 'BARCODE_TAKEN', 'ITEM_HELD_FOR_ANOTHER', 'ITEM_ON_LOAN', 'ITEM_NOT_IN_SERVICE',
    'RENEWAL_WAITED_FOR', 'RENEWALS_USED_UP',
    'TEMPORARILY_UNAVAILABLE', 'OVERLOADED', 'TOO_MANY_STREAMS',
  ];
  if (!existsSync(proto)) return known;
  const text = readFileSync(proto, 'utf8');
  const body = text.slice(text.indexOf('enum Reason'));
  return [...body.matchAll(/^\s*([A-Z][A-Z_]+)\s*=\s*\d+;/gm)]
    .map((m) => m[1])
    .filter((r) => r !== 'REASON_UNSPECIFIED');
}

// ------------------------------------------------------------------ the story

const KINDRED = 'Kindred';
const DISPOSSESSED = 'The Dispossessed';
const HUMAN_ACTS = '소년이 온다';
/** A call of the API from a signed-in page (its cookie), as the pages make them. */
const apiCall = (page, method, path, body) =>
  page.evaluate(
    async ([m, p, b]) => {
      const res = await fetch(p, {
        method: m,
        headers: { 'content-type': 'application/json', 'idempotency-key': crypto.randomUUID() },
        body: b === null ? undefined : JSON.stringify(b),
      });
      return { status: res.status, body: await res.json().catch(() => null) };
    },
    [method, path, body ?? null],
  );

/**
 * Overdue, live, on a second all-in-one whose loans last three seconds
 * (SHORT_LOANS_URL, from tests/web.rs): a loan appears once it falls due,
 * and goes when the copy is checked in. Runs beside the main story, since
 * it mostly waits for the loan to fall due.
 */
async function overdueStory(shortBase) {
  const shortContext = await browser.newContext({ locale: 'en-US', viewport: DESKTOP, baseURL: shortBase, timezoneId: 'UTC' });
  const lib3 = track(await shortContext.newPage(), 'librarian-short-loans');
  await signIn(lib3, 'lib-3', 'librarian');
  await deskTab(lib3, 'Overdue');
  await lib3.locator('#overdue-live[data-state="live"]').waitFor();
  await lib3.locator('#overdue-count').getByText('No loan is overdue.').waitFor();
  const dawn = (await apiCall(lib3, 'POST', '/v1/books', { title: 'Dawn', author: 'Octavia E. Butler', totalCopies: 1 })).body;
  // The registration answers with the copy's barcode; the desk learns the
  // copy a moment later (an event), so the first check-outs may not find it.
  const dawnCopy = dawn.items?.[0]?.barcode ?? '';
  check(dawnCopy !== '', `Dawn was registered with a copy: ${JSON.stringify(dawn)}`);
  expectedFailures.add(`${shortBase}/v1/desk:checkOut`);
  for (let attempt = 0; ; attempt++) {
    const lent = await apiCall(lib3, 'POST', '/v1/desk:checkOut', { memberId: 'olga', barcode: dawnCopy });
    if (lent.status === 200) break;
    check(attempt < 30, `lending ${dawnCopy} to olga: ${JSON.stringify(lent)}`);
    await lib3.waitForTimeout(150);
  }
  const lentAt = Date.now();
  const lateRow = lib3.locator(`#overdue-list li[data-barcode="${dawnCopy}"]`);
  await lateRow.getByRole('link', { name: 'olga' }).waitFor({ timeout: 15_000 });
  const lateMs = Date.now() - lentAt;
  await lateRow.locator('.badge', { hasText: 'Overdue' }).waitFor();
  await lateRow.getByText('Dawn').waitFor();
  await lib3.locator('#overdue-count').getByText('1 loan is overdue, the longest first.').waitFor();
  await scan(lib3, 'an overdue loan');
  await shot(lib3, 'desk-overdue.png');
  check((await apiCall(lib3, 'POST', '/v1/desk:checkIn', { barcode: dawnCopy })).status === 200, 'checked in');
  await lateRow.waitFor({ state: 'detached' });
  await lib3.locator('#overdue-count').getByText('No loan is overdue.').waitFor();
  step(`overdue, live (3-second loans): olga's loan listed ${lateMs} ms after it was lent, gone when checked in`);
}

/** As long an author as the catalogue takes (200 characters), unbroken. */
const LONG_AUTHOR = 'W'.repeat(200);
let failed = null;
const shortLoans = process.env.SHORT_LOANS_URL;
// Beside the main story; its failure fails the run at the end.
const overdueRun = shortLoans ? overdueStory(shortLoans).then(() => null, (e) => e) : Promise.resolve(null);
if (!shortLoans) step('overdue, live: skipped (no SHORT_LOANS_URL with short loans)');
try {
  // A librarian registers the books.
  const lib = await newPage('librarian');
  await lib.goto('/');
  await lib.getByRole('heading', { name: 'Sign in' }).waitFor();
  await view(lib, 'signin').getByLabel('Member id').waitFor();
  await shot(lib, 'signin.png');
  await shot(lib, 'signin-phone.png', { phone: true });
  await scan(lib, 'sign-in');
  await signIn(lib, 'lib-1', 'librarian');
  await lib.getByRole('heading', { name: 'Librarian desk', level: 1 }).waitFor();
  check(
    (await lib.evaluate(() => document.activeElement?.id)) === 'checkout-member',
    'the desk opens on the check-out, ready for a member id',
  );
  await deskTab(lib, 'Books and copies');
  const form = lib.locator('#register-form');
  const fillBook = async (title, author, isbn, copies) => {
    await form.getByLabel('Title', { exact: true }).fill(title);
    await form.getByLabel('Author', { exact: true }).fill(author);
    await form.getByLabel('ISBN (optional)').fill(isbn);
    await form.getByLabel('Copies', { exact: true }).fill(copies);
  };
  for (const [title, author, isbn, copies] of [
    [KINDRED, 'Octavia E. Butler', '978-0-8070-8369-7', '1'],
    [DISPOSSESSED, 'Ursula K. Le Guin', '', '2'],
    [HUMAN_ACTS, '한강', '', '1'],
    ['Longwords', LONG_AUTHOR, '', '1'],
  ]) {
    await fillBook(title, author, isbn, copies);
    await form.getByRole('button', { name: 'Register' }).click();
    await notice(lib, new RegExp(`Registered “${title}” with ${copies} cop`), '#register-notice');
  }
  step('the librarian registered four books');

  // The same ISBN again: refused next to the form. With the reason, the
  // desk offers to add the copies to the book that has it.
  expectedFailures.add(`${base}/v1/books`);
  await fillBook('Kindred (again)', 'Octavia Butler', '9780807083697', '1');
  const [again] = await Promise.all([
    lib.waitForResponse((r) => r.url() === `${base}/v1/books` && r.request().method() === 'POST'),
    form.getByRole('button', { name: 'Register' }).click(),
  ]);
  check(again.status() === 409, `a second ISBN is refused: ${again.status()}`);
  const againBody = await again.json();
  const duplicate = await notice(lib, /Kindred/, '#register-notice');
  assertSentence(duplicate, 'the duplicate ISBN refusal');
  check(hasErrorInfo(againBody), 'the duplicate ISBN comes with its ErrorInfo');
  await lib.locator('#register-notice').getByRole('button', { name: 'Add 1 copy to “Kindred”' }).waitFor();
  check((await spoken(lib, /Kindred/, 'problem')).includes('Kindred'), 'the refusal is read out as an alert');
  await noticesCoverNothing(lib, 'the desk with a refusal');
  // Editing the form: the refusal is about what was typed, so it goes.
  await form.getByLabel('ISBN (optional)').fill('');
  await lib.locator('#register-notice .notice').waitFor({ state: 'detached' });
  // Played by the test (the backend's ErrorInfo): DUPLICATE_ISBN naming The Dispossessed.
  const dispossessedId = await lib
    .locator('#desk-books-list li.card', { has: lib.getByRole('heading', { name: DISPOSSESSED, exact: true }) })
    .getAttribute('data-book-id');
  await lib.route(`${base}/v1/books`, (route) =>
    route.request().method() !== 'POST'
      ? route.fallback()
      : route.fulfill({
          status: 409,
          headers: { 'content-type': 'application/json' },
          body: refusal(
            6,
            `ISBN 9780060512750 is already in the catalogue: "${DISPOSSESSED}" (book ${dispossessedId}); add copies to it instead`,
            'DUPLICATE_ISBN',
            { isbn: '9780060512750', bookId: dispossessedId, title: DISPOSSESSED },
          ),
        }),
  );
  await fillBook(DISPOSSESSED, 'Ursula K. Le Guin', '0-06-051275-X', '1');
  await form.getByRole('button', { name: 'Register' }).click();
  const offer = await notice(lib, /already in the catalogue/, '#register-notice');
  await scan(lib, 'the desk offering to add copies');
  check(
    offer === `ISBN 9780060512750 is already in the catalogue: “${DISPOSSESSED}”. Add copies to it instead.`,
    `the duplicate ISBN, translated: ${offer}`,
  );
  await lib.unroute(`${base}/v1/books`);
  await lib.getByRole('button', { name: `Add 1 copy to “${DISPOSSESSED}”` }).click();
  await notice(lib, new RegExp(`“${DISPOSSESSED}” now has 3 copies`), '#register-notice');
  check(
    (await lib.evaluate(() => document.activeElement?.className)) === 'notice',
    'the focus is on the outcome once the pressed button is gone',
  );
  step(`a duplicate ISBN is refused ("${duplicate}"); with the reason the desk adds the copies to the book instead`);

  // Member A reserves Kindred: READY at once; Reserve gives way to what she holds.
  const alice = await newPage('alice');
  await signIn(alice, 'alice', 'member');
  await reserve(alice, KINDRED, /a copy is held for you/);
  const alicesKindred = card(alice, KINDRED);
  await alicesKindred.getByText('All copies held').waitFor();
  await alicesKindred.getByText('A copy is held for you: pick it up from My Page.').waitFor();
  check((await alicesKindred.getByRole('button', { name: 'Reserve' }).count()) === 0, 'no Reserve on a book held for her');
  await alicesKindred.getByRole('link', { name: 'Open My Page' }).waitFor();
  check(
    (await alice.evaluate(() => document.activeElement?.textContent)) === 'Open My Page',
    'after Reserve the focus is on what replaced it',
  );
  await shot(alice, 'catalogue.png');
  await scan(alice, 'catalogue');
  await openMyPage(alice);
  await stageOf(alice, KINDRED, 'READY').getByText('Pick up by').waitFor();
  step('alice reserved Kindred and sees READY; the catalogue shows it held for her');

  // Member B has two more tabs on the catalogue, one in Korean, from before he reserves.
  const bob = await newPage('bob');
  await signIn(bob, 'bob', 'member');
  const bob2 = track(await bob.context().newPage(), 'bob-tab-2');
  await bob2.goto('/#/catalogue');
  await search(bob2, KINDRED);
  await card(bob2, KINDRED).getByRole('button', { name: 'Reserve' }).waitFor();
  const bob3 = track(await bob.context().newPage(), 'bob-tab-3');
  await bob3.goto('/#/catalogue');
  // The page has drawn the catalogue (its start is over) before the member
  // switches language.
  await card(bob3, KINDRED).waitFor();
  await bob3.getByLabel('Language').selectOption('ko');
  await bob3.getByRole('heading', { name: '도서 목록', level: 1 }).waitFor();
  await bob3.locator('#search-q').fill('');
  await view(bob3, 'catalogue').getByRole('button', { name: '검색' }).click();
  await card(bob3, DISPOSSESSED).getByRole('button', { name: '예약' }).waitFor();

  await bob.bringToFront();
  // B reserves it: WAITING, number 1 in the queue.
  await reserve(bob, KINDRED, /you are number 1 in the queue/);
  await card(bob, KINDRED).getByText('1 member', { exact: true }).waitFor();
  await card(bob, KINDRED).getByText('You are number 1 in the queue for this book.').waitFor();
  await shot(bob, 'catalogue-phone.png', { phone: true });

  // A refusal is a sentence, in the card: reserving it again from the older tab.
  expectedFailures.add(`${base}/v1/reservations`);
  await bob2.bringToFront();
  await card(bob2, KINDRED).getByRole('button', { name: 'Reserve' }).click();
  const refused = await notice(bob2, /already have an open reservation/, card(bob2, KINDRED));
  assertSentence(refused, 'the refusal');
  check(refused === 'You already have an open reservation for this book.', refused);
  await spoken(bob2, /^You already have an open reservation for this book\.$/, 'problem');
  // The tab learns what bob holds: his place in the queue instead of Reserve.
  await card(bob2, KINDRED).getByText('You are number 1 in the queue for this book.').waitFor();
  await focusKept(bob2, 'a refusal that took Reserve away');
  await noticesCoverNothing(bob2, 'the catalogue with a refusal');
  await scan(bob2, 'the catalogue with a refusal');
  // The same refusal on a Korean page: translated when it carries its reason.
  await bob3.bringToFront();
  const [koAnswer] = await Promise.all([
    bob3.waitForResponse((r) => r.url() === `${base}/v1/reservations` && r.request().method() === 'POST'),
    card(bob3, KINDRED).getByRole('button', { name: '예약' }).click(),
  ]);
  const koBody = await koAnswer.json();
  const koRefused = await notice(bob3, /./, card(bob3, KINDRED));
  check(hasErrorInfo(koBody), 'the refusal comes with its ErrorInfo');
  check(koRefused === '이미 이 책을 예약해 두었습니다.', `the real refusal in Korean: ${koRefused}`);
  // The Korean tab learns his place in the queue too.
  await card(bob3, KINDRED).getByText('이 책의 대기 순번 1번입니다.').waitFor();
  await card(bob3, KINDRED).getByRole('link', { name: '내 페이지 열기' }).waitFor();
  // The reason as the backend sends it (played here): Korean, whatever the English sentence.
  await bob3.route(`${base}/v1/reservations`, (route) =>
    route.fulfill({
      status: 409,
      headers: { 'content-type': 'application/json' },
      body: refusal(
        6,
        'you already have an open reservation for this book',
        'ALREADY_RESERVED',
        { bookId: dispossessedId },
        { '@type': 'type.googleapis.com/google.rpc.RequestInfo', requestId: 'e2e-1', servingData: '' },
      ),
    }),
  );
  await card(bob3, DISPOSSESSED).getByRole('button', { name: '예약' }).click();
  const koMocked = await notice(bob3, /./, card(bob3, DISPOSSESSED));
  check(koMocked === '이미 이 책을 예약해 두었습니다.', `ALREADY_RESERVED in Korean: ${koMocked}`);
  await spoken(bob3, /이미 이 책을 예약해 두었습니다\./, 'problem');
  await bob3.unroute(`${base}/v1/reservations`);
  // Every reason has its sentence in both languages, with its metadata in it.
  const dictionaries = await bob3.evaluate(async () => ({
    en: await (await fetch('/i18n/en.json')).json(),
    ko: await (await fetch('/i18n/ko.json')).json(),
  }));
  const enKeys = Object.keys(dictionaries.en).sort().join();
  check(enKeys === Object.keys(dictionaries.ko).sort().join(), 'English and Korean have the same keys');
  const untranslated = reasons().filter((r) => !dictionaries.en[`reason.${r}`] || !dictionaries.ko[`reason.${r}`]);
  check(untranslated.length === 0, `reasons without a sentence: ${untranslated.join(', ')}`);
  const sentences = await bob3.evaluate(async () => {
    const { errorFor } = await import('/api.js');
    const info = (reason, metadata = {}) => ({
      code: 9,
      message: 'the English sentence',
      details: [{ '@type': 'type.googleapis.com/google.rpc.ErrorInfo', reason, domain: 'rentalbook', metadata }],
    });
    return {
      limit: errorFor(400, info('TOO_MANY_RESERVATIONS', { limit: '5' })).message,
      closed: errorFor(400, info('RESERVATION_CLOSED', { status: 'RESERVATION_STATUS_CANCELLED' })).message,
      held: errorFor(400, info('ITEM_HELD_FOR_ANOTHER', { barcode: '31234000123' })).message,
      renewals: errorFor(400, info('RENEWALS_USED_UP', { max: '2' })).message,
      duplicate: errorFor(409, info('DUPLICATE_ISBN', { isbn: '9780807083697', bookId: 'b', title: 'Kindred' })).message,
      unknown: errorFor(400, info('A_REASON_FROM_TOMORROW')).message,
      none: errorFor(400, { code: 9, message: 'the English sentence', details: [] }).message,
      down: errorFor(503, {
        code: 14,
        message: 'down',
        details: [
          { '@type': 'type.googleapis.com/google.rpc.RetryInfo', retryDelay: '3s' },
          { '@type': 'type.googleapis.com/google.rpc.ErrorInfo', reason: 'TEMPORARILY_UNAVAILABLE', domain: 'rentalbook' },
        ],
      }).message,
    };
  });
  check(sentences.limit === '이미 예약이 5건 있습니다. 회원 한 명이 할 수 있는 최대 건수입니다.', sentences.limit);
  check(sentences.closed === '이 예약은 취소됨 상태라서 더 이상 바꿀 수 없습니다.', sentences.closed);
  check(sentences.held === '31234000123 책은 다른 회원을 위해 보관 중입니다.', sentences.held);
  check(sentences.renewals.includes('2회'), sentences.renewals);
  check(sentences.duplicate.includes('9780807083697') && sentences.duplicate.includes('“Kindred”'), sentences.duplicate);
  check(sentences.unknown === '요청을 처리할 수 없습니다: The English sentence.', sentences.unknown);
  check(sentences.none === sentences.unknown, sentences.none);
  check(sentences.down.includes('3초'), sentences.down);
  const english = await bob2.evaluate(async () => {
    const { errorFor } = await import('/api.js');
    const body = (reason, metadata) => ({
      code: 9,
      message: 'x',
      details: [{ '@type': 'type.googleapis.com/google.rpc.ErrorInfo', reason, domain: 'rentalbook', metadata }],
    });
    return [
      errorFor(409, body('ALREADY_RESERVED', { bookId: 'b' })).message,
      errorFor(400, body('TOO_MANY_RESERVATIONS', { limit: '1' })).message,
      errorFor(400, body('TOO_MANY_RENTALS', { limit: '5' })).message,
    ];
  });
  check(
    english.join('|') ===
      'You already have an open reservation for this book.|You already have 1 open reservation, the most a member may have.|You already have 5 books on loan, the most a member may have; return one first.',
    `English by reason: ${english.join('|')}`,
  );
  await bob2.close();
  await bob3.close();
  step(`bob reserved Kindred (WAITING 1); again from an older tab: "${refused}" (Korean: "${koRefused}"); every reason translated`);

  await reserve(bob, DISPOSSESSED, /a copy is held for you/);
  await openMyPage(bob);
  const waiting = stageOf(bob, KINDRED, 'WAITING');
  await waiting.getByText('Queue position').waitFor();
  check((await waiting.locator('.queue dd').textContent()) === '1', 'bob is number 1');
  // Marks this document: a reload would lose the mark.
  await bob.evaluate(() => {
    window.__sameDocument = true;
  });
  const bobNavigations = bob.navigations;
  await shot(bob, 'mypage-waiting-phone.png', { phone: true });
  step('bob sees WAITING, queue position 1');

  // A picks it up and returns it; the focus stays on the journey, then its tab.
  await stageOf(alice, KINDRED, 'READY').getByRole('button', { name: 'Pick up' }).click();
  const rented = await notice(alice, /You have “Kindred”/, '#mypage-notice');
  await stageOf(alice, KINDRED, 'RENTED').getByText('Due back').waitFor();
  const afterPickUp = await focusKept(alice, 'Pick up');
  await spoken(alice, /You have “Kindred”/);
  await shot(alice, 'mypage-rented.png');
  const returnedAt = Date.now();
  await stageOf(alice, KINDRED, 'RENTED').getByRole('button', { name: 'Return' }).click();
  await notice(alice, /Returned “Kindred”/, '#mypage-notice');
  await current(alice, KINDRED).waitFor({ state: 'detached' });
  const afterReturn = await focusKept(alice, 'Return');
  await tab(alice, 'History');
  await stageOf(alice, KINDRED, 'RETURNED').waitFor();
  step(`alice picked Kindred up ("${rented}"; focus on ${afterPickUp}) and returned it (focus on ${afterReturn})`);

  // B's page turns READY by itself.
  const ready = stageOf(bob, KINDRED, 'READY');
  await ready.getByText('Pick up by').waitFor();
  const liveMs = Date.now() - returnedAt;
  check(
    (await bob.evaluate(() => window.__sameDocument === true)) && bob.navigations === bobNavigations,
    "bob's page was not reloaded",
  );
  step(`bob's page turned READY live, within ${liveMs} ms of alice's click on Return, without a reload`);
  await scan(bob, 'My Page');
  await ready.getByRole('button', { name: 'Pick up' }).click();
  await notice(bob, /You have “Kindred”/, '#mypage-notice');
  await stageOf(bob, KINDRED, 'RENTED').getByText('Due back').waitFor();
  await focusKept(bob, "bob's Pick up");
  await shot(bob, 'mypage-phone.png', { phone: true });
  // Dismissed: the notice goes, and the focus goes to what it was about.
  await bob.locator('#mypage-notice').getByRole('button', { name: 'Dismiss' }).click();
  await bob.locator('#mypage-notice .notice').waitFor({ state: 'detached' });
  check((await bob.evaluate(() => document.activeElement?.id)) === 'mypage-title', 'dismissing focuses the heading');
  await shot(bob, 'mypage.png');
  step('bob picked Kindred up and dismissed the confirmation');

  // A finished journey offers "Reserve again"; once reserved it is open again.
  const returned = stageOf(alice, KINDRED, 'RETURNED');
  await hush(alice);
  await returned.getByRole('button', { name: 'Reserve again' }).click();
  await spoken(alice, /Reserved “Kindred”: you are number 1 in the queue/);
  await returned.getByRole('button', { name: 'Reserve again' }).waitFor({ state: 'detached' });
  await focusKept(alice, 'Reserve again');
  await alice.getByRole('tab', { name: 'Current (1)' }).waitFor();
  step('alice reserved Kindred again from her history');

  // The librarian's desk: add copies, open bob's page.
  const desk = view(lib, 'desk');
  await lib.getByRole('link', { name: 'Librarian desk' }).click();
  await desk.getByLabel('Search by title, author or ISBN').fill(KINDRED);
  await desk.getByRole('button', { name: 'Search' }).click();
  await card(lib, DISPOSSESSED, 'desk').waitFor({ state: 'detached' });
  await card(lib, KINDRED, 'desk').getByLabel('Copies to add').fill('2');
  await card(lib, KINDRED, 'desk').getByRole('button', { name: 'Add copies' }).click();
  await notice(lib, /“Kindred” now has 3 copies/, card(lib, KINDRED, 'desk'));
  await noticesCoverNothing(lib, 'the desk with a confirmation');
  // A failed search: the notice sits under the search form, covers nothing,
  // and goes once the search is edited.
  await lib.route(`${base}/v1/books?*`, (route) =>
    route.fulfill({
      status: 503,
      headers: { 'content-type': 'application/json', 'retry-after': '2' },
      body: JSON.stringify({ code: 14, message: 'overloaded', details: [] }),
    }),
  );
  expectedFailures.add(`${base}/v1/books?`);
  await desk.getByRole('button', { name: 'Search' }).click();
  await notice(lib, /busy/, '#desk-search-notice');
  await noticesCoverNothing(lib, 'the desk with a failed search (1366x768)');
  const gap = await lib.evaluate(
    () =>
      document.getElementById('desk-search-notice').getBoundingClientRect().top -
      document.getElementById('desk-search-form').getBoundingClientRect().bottom,
  );
  check(gap >= 0 && gap < 40, `the notice is right under its form (${gap}px)`);
  await lib.unroute(`${base}/v1/books?*`);
  await desk.getByLabel('Search by title, author or ISBN').press('End');
  await desk.getByLabel('Search by title, author or ISBN').press('Space');
  await lib.locator('#desk-search-notice .notice').waitFor({ state: 'detached' });
  await deskTab(lib, 'Members');
  await lib.locator('#member-id').fill('bob');
  await desk.getByRole('button', { name: 'Open page' }).click();
  await lib.getByRole('heading', { name: "bob's page", level: 1 }).waitFor();
  await stageOf(lib, KINDRED, 'RENTED').getByRole('button', { name: 'Return' }).waitFor();
  check((await stageOf(lib, KINDRED, 'RENTED').getByRole('button', { name: 'Pick up' }).count()) === 0, 'no pick-up for another member');
  check((await lib.getByRole('button', { name: 'Reserve again' }).count()) === 0, 'no Reserve again for another member');
  await lib.getByRole('link', { name: 'Librarian desk' }).click();
  await lib.getByRole('heading', { name: 'Librarian desk', level: 1 }).waitFor();
  check(lib.url().endsWith('#/desk/members'), `the desk opens where the librarian left it: ${lib.url()}`);
  await deskTab(lib, 'Books and copies');
  await card(lib, KINDRED, 'desk').getByRole('button', { name: 'Dismiss' }).click();
  await shot(lib, 'desk.png');
  await scan(lib, 'librarian desk');
  // On a phone: a short header, and every control big enough for a finger.
  await lib.setViewportSize(PHONE);
  const header = await lib.evaluate(() => document.querySelector('header.top').getBoundingClientRect().height);
  check(header <= 112, `the librarian's header takes ${header}px of an 844px screen`);
  await tapTargets(lib, 'the desk on a phone');
  await headerApart(lib, 'the desk on a phone');
  await scan(lib, 'the desk on a phone');
  await lib.setViewportSize(DESKTOP);
  await shot(lib, 'desk-phone.png', { phone: true });
  step(`the librarian added copies and opened bob's page; the header takes ${header}px on a phone`);

  // ---------------------------------------------------------------- the circulation desk
  // A new book with two copies; its copies, from the desk's search result.
  const TALENTS = 'Parable of the Talents';
  await fillBook(TALENTS, 'Octavia E. Butler', '', '2');
  await form.getByRole('button', { name: 'Register' }).click();
  await notice(lib, /Registered “Parable of the Talents” with 2 copies/, '#register-notice');
  const talents = card(lib, TALENTS, 'desk');
  await talents.getByRole('button', { name: 'Show copies' }).click();
  check(
    (await talents.getByRole('button', { name: 'Hide copies' }).getAttribute('aria-expanded')) === 'true',
    'the copies button says it is open',
  );
  const copyRow = (code) => talents.locator(`li.item[data-barcode="${code}"]`);
  await talents.locator('li.item').nth(1).waitFor();
  const [b1, b2] = await talents.locator('li.item').evaluateAll((rows) => rows.map((r) => r.dataset.barcode));
  check(b1 && b2 && b1 !== b2, `two copies with barcodes: ${b1}, ${b2}`);
  const talentsId = await talents.getAttribute('data-book-id');
  await copyRow(b1).getByText('On the shelf').waitFor();
  step(`a book's copies at the desk: ${b1}, ${b2}, on the shelf`);

  // Check-out as a barcode scanner does it: the member, Enter, then each copy, Enter.
  await deskTab(lib, 'Check out');
  const focusId = (page) => page.evaluate(() => document.activeElement?.id ?? '');
  check((await focusId(lib)) === 'checkout-member', 'the check-out starts in the member id');
  const scanCode = async (page, code) => {
    await page.keyboard.type(code);
    await page.keyboard.press('Enter');
  };
  await scanCode(lib, 'frank');
  await lib.locator('#checkout-who').getByText('Lending to frank').waitFor();
  check((await focusId(lib)) === 'checkout-barcode', 'then the focus waits for the first copy');
  const outRow = (page, code) => page.locator(`#checkout-list li[data-barcode="${code}"]`);
  await hush(lib);
  await scanCode(lib, b1);
  await outRow(lib, b1).getByText(TALENTS).waitFor();
  await outRow(lib, b1).getByText('Due back').waitFor();
  await spoken(lib, new RegExp(`Lent “${TALENTS}” \\(${b1}\\), due back`));
  const scanReady = async (page, id) => {
    const [f, value] = await page.evaluate((i) => [document.activeElement?.id, document.getElementById(i).value], id);
    check(f === id && value === '', `after a scan ${id} is empty (${value}) and has the focus (${f})`);
  };
  await scanReady(lib, 'checkout-barcode');
  // The same copy again: the same loan, listed once, and said so beside the input.
  await scanCode(lib, b1);
  await notice(lib, new RegExp(`^Copy ${b1} is lent to frank already\\.$`), '#checkout-notice');
  check((await lib.locator(`#checkout-list li[data-barcode="${b1}"]`).count()) === 1, 'a copy scanned twice is listed once');
  await scanReady(lib, 'checkout-barcode');
  // Another copy of the same book: refused beside the input, in words, and
  // not listed; the focus stays for the next scan.
  expectedFailures.add(`${base}/v1/desk:checkOut`);
  await hush(lib);
  await scanCode(lib, b2);
  const twice = await notice(lib, /./, '#checkout-notice');
  check(twice === 'frank has this book on loan already.', `a second copy of a book: ${twice}`);
  await spoken(lib, /^frank has this book on loan already\.$/, 'problem');
  await scanReady(lib, 'checkout-barcode');
  check((await outRow(lib, b2).count()) === 0, 'a refused copy is not listed');
  await lib.locator('#checkout-list-title').getByText('1 copy lent to frank at this desk').waitFor();
  await noticesCoverNothing(lib, 'the check-out with a refusal');
  const outGap = await lib.evaluate(
    () =>
      document.getElementById('checkout-notice').getBoundingClientRect().top -
      document.getElementById('checkout-form').getBoundingClientRect().bottom,
  );
  check(outGap >= 0 && outGap < 40, `the refusal is right under the scan input (${outGap}px)`);
  await scan(lib, 'the check-out with a refusal');
  await shot(lib, 'desk-checkout-refused.png');
  // The next scan takes the refusal away (from its first character on).
  await lib.keyboard.type('NO-SUCH-COPY');
  await lib.locator('#checkout-notice .notice').waitFor({ state: 'detached' });
  await lib.keyboard.press('Enter');
  await notice(lib, /^No copy has the barcode NO-SUCH-COPY\.$/, '#checkout-notice');
  // Another member: frank's copy is on loan; the other one is gus's.
  await lib.getByRole('button', { name: 'Another member' }).click();
  check((await focusId(lib)) === 'checkout-member', '"Another member" starts again at the member id');
  check((await lib.locator('#checkout-list li').count()) === 0, "the last member's list is gone");
  await scanCode(lib, 'gus');
  await lib.locator('#checkout-who').getByText('Lending to gus').waitFor();
  await scanCode(lib, b1);
  const onLoan = await notice(lib, /./, '#checkout-notice');
  check(onLoan === `The copy ${b1} is on loan.`, `a copy on loan to another member: ${onLoan}`);
  await scanCode(lib, b2);
  await outRow(lib, b2).getByText('Due back').waitFor();
  await lib.locator('#checkout-notice .notice').waitFor({ state: 'detached' });
  await scanReady(lib, 'checkout-barcode');
  await shot(lib, 'desk-checkout.png');
  step(`check-out: frank gets ${b1} (twice: listed once), not ${b2} ("${twice}"); gus not ${b1} ("${onLoan}") but ${b2}`);

  // A copy on loan cannot be withdrawn: asked first, then refused in words.
  await deskTab(lib, 'Books and copies');
  await copyRow(b1).getByText('On loan').waitFor();
  await copyRow(b1).getByRole('link', { name: 'frank' }).waitFor();
  await copyRow(b1).getByRole('button', { name: 'Mark lost' }).click();
  await copyRow(b1).getByText(`Mark copy ${b1} as lost?`).waitFor();
  check((await lib.evaluate(() => document.activeElement?.textContent)) === 'Yes, mark lost', 'the question has the focus');
  await copyRow(b1).getByRole('button', { name: 'Keep it' }).click();
  await copyRow(b1).getByText(`Mark copy ${b1} as lost?`).waitFor({ state: 'detached' });
  check((await lib.evaluate(() => document.activeElement?.textContent)) === 'Mark lost', '"Keep it" goes back to the button');
  expectedFailures.add(`${base}/v1/items:withdraw`);
  await copyRow(b1).getByRole('button', { name: 'Withdraw' }).click();
  await copyRow(b1).getByText(`Withdraw copy ${b1} from the library for good?`).waitFor();
  await scan(lib, 'a copy asking before it is withdrawn');
  await copyRow(b1).getByRole('button', { name: 'Yes, withdraw' }).click();
  const withdrawRefused = await notice(lib, /./, talents);
  check(withdrawRefused === `The copy ${b1} is on loan.`, `withdrawing a copy on loan: ${withdrawRefused}`);
  await copyRow(b1).getByRole('button', { name: 'Withdraw' }).waitFor();
  const afterRefusal = await focusKept(lib, 'a refused withdrawal');
  check(/^SPAN/.test(afterRefusal) && afterRefusal.includes(b1), `the focus is on the copy, not ${afterRefusal}`);
  await noticesCoverNothing(lib, 'a copy with a refusal');
  step(`a copy's Withdraw and Mark lost ask first; withdrawing a copy on loan: "${withdrawRefused}"`);

  // frank renews on his My Page: "Renew (2 left)", then the new due date.
  const frank = await newPage('frank');
  await signIn(frank, 'frank', 'member');
  await frank.locator('#live[data-state="live"]').waitFor();
  const loanOf = (page, code) => page.locator('#journeys li.journey', { hasText: code });
  const renewOne = loanOf(frank, b1).getByRole('button', { name: 'Renew (2 left)' });
  await renewOne.waitFor();
  const dueBefore = await loanOf(frank, b1).locator('.due time').getAttribute('datetime');
  await scan(frank, 'My Page with Renew');
  const [renewed] = await Promise.all([
    frank.waitForResponse((r) => r.url().endsWith(':renew') && r.request().method() === 'POST'),
    renewOne.click(),
  ]);
  const renewal = await renewed.json();
  const renewedText = await notice(frank, /^Renewed “Parable of the Talents”: it is due back/, '#mypage-notice');
  await loanOf(frank, b1).getByRole('button', { name: 'Renew (1 left)' }).waitFor();
  const dueAfter = await loanOf(frank, b1).locator('.due time').getAttribute('datetime');
  check(
    dueAfter === renewal.dueAt && Date.parse(dueAfter) >= Date.parse(dueBefore),
    `the new due date shows: ${dueBefore} -> ${dueAfter} (${renewal.dueAt})`,
  );
  await focusKept(frank, 'Renew');
  await shot(frank, 'mypage-renew.png');
  await loanOf(frank, b1).getByRole('button', { name: 'Renew (1 left)' }).click();
  await notice(frank, /^Renewed/, '#mypage-notice');
  await loanOf(frank, b1).getByRole('button', { name: /^Renew/ }).waitFor({ state: 'detached' });
  await focusKept(frank, 'the last renewal');
  // alice waits for the book now: a librarian renewing gus's loan is refused,
  // in words, inside the loan's card.
  await reserve(alice, TALENTS, /you are number 1 in the queue/);
  await openMyPage(alice);
  await lib.getByRole('link', { name: 'Librarian desk' }).click();
  await deskTab(lib, 'Members');
  await lib.locator('#member-id').fill('gus');
  await lib.getByRole('button', { name: 'Open page' }).click();
  await lib.getByRole('heading', { name: "gus's page", level: 1 }).waitFor();
  expectedFailures.add(`${base}/v1/rentals/`);
  await loanOf(lib, b2).getByRole('button', { name: 'Renew (2 left)' }).click();
  const waitedFor = await notice(lib, /./, loanOf(lib, b2));
  check(waitedFor === 'Someone is waiting for this book, so the loan cannot be renewed.', `renewing while alice waits: ${waitedFor}`);
  await spoken(lib, /Someone is waiting for this book/, 'problem');
  await focusKept(lib, 'a refused renewal');
  await noticesCoverNothing(lib, 'a member page with a refused renewal');
  await scan(lib, 'a member page with a refused renewal');
  step(`frank renewed twice ("${renewedText}"), then Renew was gone; with alice waiting, gus's: "${waitedFor}"`);

  // Check-in: each answer said loudly, and listed.
  await deskTab(lib, 'Check in');
  check((await focusId(lib)) === 'checkin-barcode', 'the check-in waits for a scan');
  const loud = lib.locator('#checkin-answer .loud-words');
  await hush(lib);
  await scanCode(lib, b1);
  await loud.getByText('Hold shelf for alice', { exact: true }).waitFor();
  await lib.locator('#checkin-answer').getByText(`Put “${TALENTS}” (${b1}) on the hold shelf: alice is next in line.`).waitFor();
  await spoken(lib, /Hold shelf for alice Put “Parable of the Talents”/, 'problem');
  await scanReady(lib, 'checkin-barcode');
  const loudSize = await loud.evaluate((el) => parseFloat(getComputedStyle(el).fontSize));
  check(loudSize >= 24, `the answer is large (${loudSize}px)`);
  await scan(lib, 'the check-in saying hold shelf');
  await shot(lib, 'desk-checkin.png');
  await scanCode(lib, b2);
  await loud.getByText('Reshelve', { exact: true }).waitFor();
  await scanCode(lib, b2);
  await loud.getByText('Not on loan — nothing changed', { exact: true }).waitFor();
  await spoken(lib, /Not on loan — nothing changed/, 'problem');
  expectedFailures.add(`${base}/v1/desk:checkIn`);
  await scanCode(lib, 'NO-SUCH-COPY');
  const unknownCopy = await notice(lib, /./, '#checkin-notice');
  check(unknownCopy === 'No copy has the barcode NO-SUCH-COPY.', `an unknown barcode: ${unknownCopy}`);
  check(await lib.locator('#checkin-answer').isHidden(), "a refused scan does not show the last copy's answer");
  await scanReady(lib, 'checkin-barcode');
  await lib.locator('#checkin-list-title').getByText('3 copies checked in at this desk').waitFor();
  check((await lib.locator('#checkin-list li').count()) === 3, 'the session lists three check-ins');
  await noticesCoverNothing(lib, 'the check-in with a refusal');
  await shot(lib, 'desk-checkin-session.png');
  // The desk away (played: the all-in-one's desk always answers): set aside, then where it goes, live.
  const fakeRental = '0190f1e2-0000-7000-8000-00000000aside';
  let asked = 0;
  await lib.route(`${base}/v1/desk:checkIn`, (route) =>
    route.fulfill({
      status: 200,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        action: 'CHECK_IN_ACTION_SET_ASIDE',
        barcode: b2,
        bookId: talentsId,
        rental: { rentalId: fakeRental, bookId: talentsId, memberId: 'frank', barcode: b2, status: 'RENTAL_STATUS_RETURNED', returnConfirmation: 'RETURN_CONFIRMATION_PENDING' },
      }),
    }),
  );
  await lib.route(`${base}/v1/rentals/${fakeRental}`, (route) =>
    route.fulfill({
      status: 200,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        rentalId: fakeRental,
        status: 'RENTAL_STATUS_RETURNED',
        returnConfirmation: ++asked >= 1 ? 'RETURN_CONFIRMATION_CONFIRMED' : 'RETURN_CONFIRMATION_PENDING',
      }),
    }),
  );
  await scanCode(lib, b2);
  await lib.locator('#checkin-notice .notice').waitFor({ state: 'detached' });
  await loud.getByText('Set aside — the desk will take it when it is back (pending)', { exact: true }).waitFor();
  await spoken(lib, /Set aside/, 'problem');
  await lib.unroute(`${base}/v1/desk:checkIn`);
  await loud.getByText('Reshelve', { exact: true }).waitFor({ timeout: 8000 });
  await spoken(lib, new RegExp(`Set-aside copy ${b2}: Reshelve\\.`), 'problem');
  await lib.unroute(`${base}/v1/rentals/${fakeRental}`);
  step('check-in: hold shelf for alice, reshelve, not on loan, an unknown barcode, and set aside (played) turning to reshelve live');

  // A copy on the shelf marked lost, then found at the check-in.
  await deskTab(lib, 'Books and copies');
  await copyRow(b1).getByText('for alice').waitFor();
  await copyRow(b2).getByRole('button', { name: 'Mark lost' }).click();
  await copyRow(b2).getByRole('button', { name: 'Yes, mark lost' }).click();
  await notice(lib, new RegExp(`^Copy ${b2} is marked lost\\.$`), talents);
  await copyRow(b2).locator('.badge', { hasText: 'Lost' }).waitFor();
  await focusKept(lib, 'Mark lost');
  await scan(lib, 'a book\'s copies');
  await shot(lib, 'desk-copies.png');
  await deskTab(lib, 'Check in');
  await scanCode(lib, b2);
  await lib.locator('#checkin-answer').getByText('Found: this copy was marked lost and is in service again.').waitFor();
  await scan(lib, 'the check-in of a found copy');
  step(`${b2} marked lost, then found again at the check-in`);

  // ---------------------------------------------------------------- staff views
  /** Reserves a book registered a moment ago (the desk learns it from an event). */
  const reserveByApi = async (page, bookId) => {
    for (let attempt = 0; ; attempt++) {
      const r = await apiCall(page, 'POST', '/v1/reservations', { bookId });
      if (r.status === 200) return r.body;
      check(attempt < 30, `reserving ${bookId}: ${JSON.stringify(r)}`);
      await page.waitForTimeout(150);
    }
  };
  // The hold shelf, live: alice's copy came over the desk, so it is not to pull.
  await deskTab(lib, 'Hold shelf');
  await lib.locator('#shelf-live[data-state="live"]').waitFor();
  const shelfRow = (page, code) => page.locator(`#shelf-list li[data-barcode="${code}"]`);
  await shelfRow(lib, b1).getByRole('link', { name: 'alice' }).waitFor();
  await shelfRow(lib, b1).getByText('On the hold shelf').waitFor();
  // A new book with one copy: frank reserves it, the copy on the open shelf
  // is held for him and appears live among the copies to pull.
  const FLEDGLING = 'Fledgling';
  const fledgling = (await apiCall(lib, 'POST', '/v1/books', { title: FLEDGLING, author: 'Octavia E. Butler', totalCopies: 1 })).body;
  check(fledgling?.bookId, `registered ${FLEDGLING}: ${JSON.stringify(fledgling)}`);
  let fledglingCopy = '';
  for (let i = 0; !fledglingCopy && i < 30; i++) {
    fledglingCopy = (await apiCall(lib, 'GET', `/v1/books/${fledgling.bookId}/items`)).body?.items?.[0]?.barcode ?? '';
    if (!fledglingCopy) await lib.waitForTimeout(100);
  }
  const trapped = Date.now();
  await reserveByApi(frank, fledgling.bookId);
  await lib.locator('#shelf-pull .barcode', { hasText: fledglingCopy }).waitFor();
  const pullText = (await lib.locator('#shelf-pull .pull-words').textContent()).trim();
  check(pullText.startsWith('Pull from the shelves:') && pullText.includes(fledglingCopy), `the copies to pull: ${pullText}`);
  await shelfRow(lib, fledglingCopy).getByRole('link', { name: 'frank' }).waitFor();
  await shelfRow(lib, fledglingCopy).getByText('To pull').waitFor();
  const shelfLiveMs = Date.now() - trapped;
  const shelfOrder = await lib.locator('#shelf-list li').evaluateAll((rows) => rows.map((r) => r.dataset.barcode));
  check(shelfOrder.indexOf(b1) < shelfOrder.indexOf(fledglingCopy), `the soonest deadline first: ${shelfOrder}`);
  await scan(lib, 'the hold shelf');
  await shot(lib, 'desk-shelf.png');
  await lib.setViewportSize(PHONE);
  await tapTargets(lib, 'the hold shelf on a phone');
  await scan(lib, 'the hold shelf on a phone');
  await lib.setViewportSize(DESKTOP);
  // alice and bob wait for it, in that order.
  check((await reserveByApi(alice, fledgling.bookId)).queuePosition === 1, 'alice waits first');
  check((await reserveByApi(bob, fledgling.bookId)).queuePosition === 2, 'bob waits second');
  // frank picks it up: it leaves the hold shelf, live.
  const fledglingLoan = await apiCall(frank, 'POST', '/v1/rentals', { bookId: fledgling.bookId });
  check(fledglingLoan.status === 200, `frank picks ${FLEDGLING} up: ${JSON.stringify(fledglingLoan)}`);
  await shelfRow(lib, fledglingCopy).waitFor({ state: 'detached' });
  await lib.locator('#shelf-pull .barcode', { hasText: fledglingCopy }).waitFor({ state: 'detached' });
  step(`the hold shelf: ${fledglingCopy} for frank to pull, live within ${shelfLiveMs} ms; gone when he picked it up`);

  // More holds than a page: the stream sends the first page (asked here for
  // pages of one, as if there were hundreds), "Show more" reads the rest,
  // and those stay right as the list moves.
  const shelfTotal = (await apiCall(lib, 'GET', '/v1/staff/holdShelf')).body.total;
  check(shelfTotal >= 2, `holds on the shelf: ${shelfTotal}`);
  await lib.route('**/v1/staff/holdShelf:watch?*', (route) => {
    const url = new URL(route.request().url());
    url.searchParams.set('pageSize', '1');
    return route.continue({ url: url.toString() });
  });
  await deskTab(lib, 'Overdue');
  await deskTab(lib, 'Hold shelf');
  const shelfCount = lib.locator('#shelf-count');
  await shelfCount.getByText(`1 of ${shelfTotal} shown.`, { exact: false }).waitFor();
  check((await lib.locator('#shelf-list li').count()) === 1, 'the first page shows one hold');
  await hush(lib);
  await lib.locator('#shelf-more').click();
  await shelfCount.getByText(`1 of ${shelfTotal} shown.`, { exact: false }).waitFor({ state: 'detached' });
  await lib.locator('#shelf-more').waitFor({ state: 'hidden' });
  const shelfIds = () => lib.locator('#shelf-list li').evaluateAll((rows) => rows.map((r) => r.dataset.reservationId));
  const shown = await shelfIds();
  check(shown.length === shelfTotal && new Set(shown).size === shelfTotal, `Show more shows every hold once: ${shown}`);
  const afterShelfMore = await lib.evaluate(() => {
    const el = document.activeElement;
    return { link: el?.classList.contains('member-link'), row: [...document.querySelectorAll('#shelf-list li')].indexOf(el?.closest('li')) };
  });
  check(afterShelfMore.link && afterShelfMore.row === 1, `after Show more the focus is on the next hold: ${JSON.stringify(afterShelfMore)}`);
  await spoken(lib, new RegExp(`^${shelfTotal - 1} more shown\\.$`));
  await scan(lib, 'the hold shelf beyond its first page');
  // A new hold, the latest deadline, joins beyond the first page, live.
  const MIND = 'Mind of My Mind';
  const mind = (await apiCall(lib, 'POST', '/v1/books', { title: MIND, author: 'Octavia E. Butler', totalCopies: 1 })).body;
  const mindCopy = mind.items?.[0]?.barcode ?? '';
  check(mindCopy !== '', `${MIND} was registered with a copy: ${JSON.stringify(mind)}`);
  await reserveByApi(frank, mind.bookId);
  await shelfRow(lib, mindCopy).getByRole('link', { name: 'frank' }).waitFor();
  await shelfCount.getByText(`${shelfTotal + 1} copies wait`, { exact: false }).waitFor();
  const grown = await lib.locator('#shelf-list li').evaluateAll((rows) => rows.map((r) => r.dataset.barcode));
  check(
    grown.length === shelfTotal + 1 && new Set(grown).size === grown.length && grown.at(-1) === mindCopy,
    `the hold joined once, at the end: ${grown}`,
  );
  await lib.unroute('**/v1/staff/holdShelf:watch?*');
  step(`the hold shelf beyond its first page: Show more read ${shelfTotal - 1} more, and a new hold joined them live`);

  await deskTab(lib, 'Books and copies');
  // A book registered twice: both records selected at the desk and merged
  // into the older one, which then has both copies; the other leaves the list.
  const WILD_SEED = 'Wild Seed';
  for (const copies of [1, 2]) {
    const made = await apiCall(lib, 'POST', '/v1/books', { title: WILD_SEED, author: 'Octavia E. Butler', totalCopies: copies });
    check(made.status === 200, `registering ${WILD_SEED}: ${JSON.stringify(made)}`);
  }
  await desk.getByLabel('Search by title, author or ISBN').fill(WILD_SEED);
  await desk.getByRole('button', { name: 'Search' }).click();
  const twins = card(lib, WILD_SEED, 'desk');
  await twins.nth(1).waitFor();
  check(await lib.locator('#merge-bar').isHidden(), 'nothing to merge before two books are selected');
  await twins.nth(0).getByLabel('Select to merge').check();
  check(await lib.locator('#merge-bar').isHidden(), 'one book alone is not merged');
  await twins.nth(1).getByLabel('Select to merge').check();
  await lib.locator('#merge-summary').getByText(/Merge 2 selected books into the oldest record, “Wild Seed”/).waitFor();
  await tapTargets(lib, 'the desk with two books selected to merge');
  await lib.getByRole('button', { name: 'Merge', exact: true }).click();
  await notice(lib, /Merged into “Wild Seed”, which now has 3 copies\./, '#merge-notice');
  await twins.nth(1).waitFor({ state: 'detached' });
  check((await twins.count()) === 1, 'one record of Wild Seed is left');
  check(await lib.locator('#merge-bar').isHidden(), 'the merge bar goes once merged');
  await scan(lib, 'the desk after a merge');
  step(`${WILD_SEED}, registered twice, merged into one record with 3 copies`);

  // The book's queue, next to its copies.
  await deskTab(lib, 'Books and copies');
  await desk.getByLabel('Search by title, author or ISBN').fill(FLEDGLING);
  await desk.getByRole('button', { name: 'Search' }).click();
  const fledglingCard = card(lib, FLEDGLING, 'desk');
  await fledglingCard.getByRole('button', { name: 'Show copies' }).click();
  await fledglingCard.getByText('2 members wait, in this order').waitFor();
  const queued = await fledglingCard.locator('.queue-list li').evaluateAll((rows) => rows.map((r) => r.dataset.memberId));
  check(queued.join(',') === 'alice,bob', `the queue in order: ${queued}`);
  await fledglingCard.locator('.queue-list').getByRole('link', { name: 'alice' }).waitFor();
  await fledglingCard.locator('.queue .live[data-state="live"]').waitFor();
  await scan(lib, "a book's copies and queue");
  step(`${FLEDGLING}'s queue: ${queued.join(', ')}`);

  // The book's page, for a member in Korean on a phone: reached from the
  // catalogue's title, it says how many copies are free, held and on loan,
  // how many wait and when the next copy is expected back (frank's loan),
  // and offers Reserve; nobody's name.
  const hana = await newPage('hana', { locale: 'ko-KR', viewport: PHONE });
  await hana.goto('/');
  await hana.locator('#signin-member').fill('hana');
  await hana.locator('#signin-form button[type="submit"]').click();
  await hana.getByRole('heading', { name: '내 페이지', level: 1 }).waitFor();
  await hana.getByRole('link', { name: '도서 목록', exact: true }).click();
  await hana.locator('#search-q').fill(FLEDGLING);
  await view(hana, 'catalogue').getByRole('button', { name: '검색' }).click();
  await card(hana, FLEDGLING).getByRole('link', { name: FLEDGLING, exact: true }).click();
  await hana.getByRole('heading', { name: FLEDGLING, level: 1 }).waitFor();
  check(hana.url().endsWith(`#/books/${fledgling.bookId}`), `the book's page has its own address: ${hana.url()}`);
  const hanaBook = view(hana, 'book');
  await hana.locator('#book-live[data-state="live"]').getByText('실시간').waitFor();
  await hanaBook.getByText('1권 중 0권 대출 가능').waitFor();
  await hanaBook.locator('.facts .queue dd').getByText('2명', { exact: true }).waitFor();
  const nextDue = hanaBook.locator('.next-due');
  await nextDue.getByText('다음 반납 예정').waitFor();
  check(
    (await nextDue.locator('time').getAttribute('datetime')) === fledglingLoan.body.dueAt,
    `the next copy is expected back when frank's loan is due: ${await nextDue.textContent()}`,
  );
  check((await hanaBook.locator('.queue-list, .item-list').count()) === 0, 'a member sees no one by name');
  await tapTargets(hana, "a book's page on a phone (Korean)");
  await headerApart(hana, "a book's page on a phone (Korean)");
  await scan(hana, "a book's page on a phone (Korean)");
  await shot(hana, 'book-ko-phone.png');
  // Reserve: her place in the queue instead, the focus on what replaced it.
  await hanaBook.getByRole('button', { name: '예약', exact: true }).click();
  await hanaBook.getByText('이 책의 대기 순번 3번입니다.').waitFor();
  check(
    (await hana.evaluate(() => document.activeElement?.textContent)) === '내 페이지 열기',
    'after Reserve the focus is on "Open My Page"',
  );
  await hanaBook.locator('.facts .queue dd').getByText('3명', { exact: true }).waitFor();
  // At the desk, the queue follows: hana joins it, with no reload.
  await fledglingCard.locator('.queue-list li[data-member-id="hana"]').waitFor();
  await fledglingCard.getByText('3 members wait, in this order').waitFor();
  step("a book's page in Korean on a phone: counts, the next copy back, Reserve; the desk's queue took hana in live");

  // The librarian opens it from the desk's card: each copy with its state,
  // and who waits, in order; hana cancelling leaves the queue, live.
  await fledglingCard.getByRole('link', { name: FLEDGLING, exact: true }).click();
  await lib.getByRole('heading', { name: FLEDGLING, level: 1 }).waitFor();
  check(lib.url().endsWith(`#/books/${fledgling.bookId}`), `the librarian's book page: ${lib.url()}`);
  const libBook = view(lib, 'book');
  const pageCopy = libBook.locator(`li.item[data-barcode="${fledglingCopy}"]`);
  await pageCopy.getByText('On loan').waitFor();
  await pageCopy.getByRole('link', { name: 'frank' }).waitFor();
  await libBook.getByText('3 members wait, in this order').waitFor();
  const waitingHere = await libBook.locator('.queue-list li').evaluateAll((rows) => rows.map((r) => r.dataset.memberId));
  check(waitingHere.join(',') === 'alice,bob,hana', `who waits, in order: ${waitingHere}`);
  check(
    (await libBook.locator('.next-due time').getAttribute('datetime')) === fledglingLoan.body.dueAt,
    'the librarian sees when the next copy is expected back too',
  );
  await scan(lib, "a book's page for a librarian");
  await shot(lib, 'book.png');
  await lib.setViewportSize(PHONE);
  await tapTargets(lib, "a book's page for a librarian, on a phone");
  await lib.setViewportSize(DESKTOP);
  const hanaHold = (await apiCall(hana, 'GET', '/v1/reservations')).body.reservations.find(
    (r) => r.bookId === fledgling.bookId && r.status === 'RESERVATION_STATUS_WAITING',
  );
  check(
    (await apiCall(hana, 'POST', `/v1/reservations/${hanaHold.reservationId}:cancel`)).status === 200,
    'hana cancels',
  );
  await libBook.locator('.queue-list li[data-member-id="hana"]').waitFor({ state: 'detached' });
  await libBook.getByText('2 members wait, in this order').waitFor();
  // Her own page of the book learns it too: Reserve again.
  await hanaBook.getByRole('button', { name: '예약', exact: true }).waitFor();
  await hanaBook.locator('.facts .queue dd').getByText('2명', { exact: true }).waitFor();
  step("the librarian's book page: the copy on loan to frank, alice, bob and hana waiting; hana's cancellation live on both");

  // Loans due on a day, live: none today, frank's on its due day, and a
  // loan made meanwhile for that day joins it with no reload.
  await deskTab(lib, 'Due');
  await lib.locator('#due-live[data-state="live"]').waitFor();
  await lib.locator('#due-count').getByText(/^No loan is due on .* \(UTC\)\.$/).waitFor();
  const dueDay = fledglingLoan.body.dueAt.slice(0, 10);
  await lib.locator('#due-day').fill(dueDay);
  await lib.locator('#due-form').getByRole('button', { name: 'Show' }).click();
  const dueRow = lib.locator(`#due-list li[data-barcode="${fledglingCopy}"]`);
  await dueRow.getByRole('link', { name: 'frank' }).waitFor();
  await dueRow.getByText(FLEDGLING).waitFor();
  await lib.locator('#due-live[data-state="live"]').waitFor();
  const dueCount = await lib.locator('#due-list li').count();
  const BLOODCHILD = 'Bloodchild';
  const bloodchild = (await apiCall(lib, 'POST', '/v1/books', { title: BLOODCHILD, author: 'Octavia E. Butler', totalCopies: 1 })).body;
  const bloodCopy = bloodchild.items?.[0]?.barcode ?? '';
  check(bloodCopy !== '', `${BLOODCHILD} was registered with a copy: ${JSON.stringify(bloodchild)}`);
  let bloodLoan = null;
  for (let attempt = 0; !bloodLoan; attempt++) {
    // The desk learns the copy a moment after it is registered.
    const lent = await apiCall(lib, 'POST', '/v1/desk:checkOut', { memberId: 'gus', barcode: bloodCopy });
    if (lent.status === 200) bloodLoan = lent.body;
    else check(attempt < 30, `lending ${bloodCopy} to gus: ${JSON.stringify(lent)}`);
    if (!bloodLoan) await lib.waitForTimeout(150);
  }
  check(bloodLoan.dueAt.slice(0, 10) === dueDay, `gus's loan is due on ${dueDay} too: ${bloodLoan.dueAt}`);
  const bloodRow = lib.locator(`#due-list li[data-barcode="${bloodCopy}"]`);
  await bloodRow.getByRole('link', { name: 'gus' }).waitFor();
  await bloodRow.getByText(BLOODCHILD).waitFor();
  check((await lib.locator('#due-list li').count()) === dueCount + 1, 'the loan joined the list once');
  await scan(lib, 'loans due on a day');
  // Overdue: live, and none (loans here last 14 days).
  await deskTab(lib, 'Overdue');
  await lib.locator('#overdue-live[data-state="live"]').waitFor();
  await lib.locator('#overdue-count').getByText('No loan is overdue.').waitFor();
  await scan(lib, 'overdue loans');
  step(`due on ${dueDay}, live: frank's ${fledglingCopy}, then gus's ${bloodCopy} as it was lent; nothing overdue, live`);

  // Members by id prefix, as the librarian types; a member leads to their page.
  await deskTab(lib, 'Members');
  await lib.locator('#members-prefix').fill('fr');
  const foundFrank = lib.locator('#members-list li[data-member-id="frank"]');
  await foundFrank.waitFor();
  check((await lib.locator('#members-list li').count()) === 1, 'only frank starts with "fr"');
  await lib.locator('#members-count').getByText('1 member\'s id starts with “fr”.').waitFor();
  await scan(lib, 'members found by prefix');
  await lib.setViewportSize(PHONE);
  await tapTargets(lib, 'members found, on a phone');
  await lib.setViewportSize(DESKTOP);
  // A member's history is read with ListHistory too, which goes back further
  // than My Page carries: an old journey (played) added to the real answer shows.
  const OLD_LOAN = 'Lilith’s Brood';
  await lib.route('**/v1/members/frank/history?*', async (route) => {
    const real = await (await route.fetch()).json();
    real.journeys = [
      ...(real.journeys || []),
      {
        reservationId: '00000000-0000-7000-8000-000000000001',
        bookId: '00000000-0000-7000-8000-0000000000b9',
        bookTitle: OLD_LOAN,
        stage: 'JOURNEY_STAGE_RETURNED',
        returnedAt: '2025-01-10T10:00:00Z',
        returnConfirmation: 'RETURN_CONFIRMATION_CONFIRMED',
        steps: [{ kind: 'STEP_KIND_RETURNED', at: '2025-01-10T10:00:00Z' }],
      },
    ];
    await route.fulfill({ status: 200, headers: { 'content-type': 'application/json' }, body: JSON.stringify(real) });
  });
  await foundFrank.getByRole('link', { name: 'frank' }).click();
  await lib.getByRole('heading', { name: "frank's page", level: 1 }).waitFor();
  await current(lib, FLEDGLING).waitFor();
  step('members starting with "fr": frank, whose page opens from the list');

  // A copy lost on loan closes frank's loan as lost: his history says so.
  check((await apiCall(lib, 'POST', '/v1/items:markLost', { barcode: fledglingCopy })).status === 200, 'marked lost');
  await current(frank, FLEDGLING).waitFor({ state: 'detached' });
  await tab(frank, 'History');
  await stageOf(frank, FLEDGLING, 'LOST').getByText('This copy was marked lost, so the loan is closed.').waitFor();
  await stageOf(frank, FLEDGLING, 'LOST').getByText('Copy marked lost').waitFor();
  await tab(frank, 'Current');
  // The librarian on frank's page: the lost loan (live) above the old one (from the history).
  await tab(lib, 'History');
  await stageOf(lib, FLEDGLING, 'LOST').waitFor();
  await stageOf(lib, OLD_LOAN, 'RETURNED').getByText('Return confirmed').first().waitFor();
  const pastOrder = await lib.locator('#history li.journey .card-title').allTextContents();
  check(pastOrder.indexOf(FLEDGLING) === 0 && pastOrder.indexOf(OLD_LOAN) === pastOrder.length - 1, `history newest first: ${pastOrder}`);
  await scan(lib, "a member's history");
  await tab(lib, 'Current');
  await lib.unroute('**/v1/members/frank/history?*');
  step('a copy lost on loan shows as lost in the member\'s history, with older journeys from ListHistory');

  // In Korean, on a phone: a second librarian lends 소년이 온다.
  const copiesOf = (title) =>
    lib.evaluate(async (t) => {
      const books = await (await fetch(`/v1/books?query=${encodeURIComponent(t)}`)).json();
      return (await (await fetch(`/v1/books/${books.books[0].bookId}/items`)).json()).items;
    }, title);
  const humanCopy = (await copiesOf(HUMAN_ACTS))[0].barcode;
  const bobsCopy = (await copiesOf(KINDRED)).find((i) => i.memberId === 'bob' && i.reservationStatus === 'RESERVATION_STATUS_FULFILLED').barcode;
  const lib2 = await newPage('librarian-ko', { locale: 'ko-KR', viewport: PHONE });
  await lib2.goto('/');
  await lib2.locator('#signin-member').fill('lib-2');
  await lib2.locator('input[name="role"][value="librarian"]').check();
  await lib2.locator('#signin-form button[type="submit"]').click();
  await lib2.getByRole('heading', { name: '사서 데스크', level: 1 }).waitFor();
  check((await focusId(lib2)) === 'checkout-member', 'the Korean desk opens on the check-out too');
  await scanCode(lib2, 'gina');
  await lib2.getByText('gina 회원에게 대출 중').waitFor();
  await scanCode(lib2, humanCopy);
  await outRow(lib2, humanCopy).getByText(HUMAN_ACTS).waitFor();
  await outRow(lib2, humanCopy).getByText('반납 기한').waitFor();
  await scanCode(lib2, bobsCopy);
  const koOnLoan = await notice(lib2, /./, '#checkout-notice');
  check(koOnLoan === `${bobsCopy} 책은 대출 중입니다.`, `the refusal in Korean: ${koOnLoan}`);
  await spoken(lib2, new RegExp(`${bobsCopy} 책은 대출 중입니다`), 'problem');
  await scanReady(lib2, 'checkout-barcode');
  const deskHead = await lib2.evaluate(() => ({
    header: document.querySelector('header.top').getBoundingClientRect().height,
    desk: document.querySelector('.desk-head').getBoundingClientRect().height,
  }));
  check(deskHead.header <= 112 && deskHead.desk <= 100, `on a phone the headers stay short: ${JSON.stringify(deskHead)}`);
  await tapTargets(lib2, 'the check-out on a phone (Korean)');
  await headerApart(lib2, 'the check-out on a phone (Korean)');
  await noticesCoverNothing(lib2, 'the check-out on a phone (Korean)');
  await scan(lib2, 'the check-out on a phone (Korean)');
  await shot(lib2, 'desk-checkout-ko-phone.png');
  // The desk's navigation from the keyboard: Tab reaches it, Enter opens the check-in.
  await lib2.locator('#desk-nav a[data-desk="checkin"]').focus();
  await lib2.keyboard.press('Enter');
  await lib2.locator('#desk-nav a[aria-current="page"]').filter({ hasText: '반납' }).waitFor();
  check((await focusId(lib2)) === 'checkin-barcode', 'Enter on a desk link opens it, ready to scan');
  await tapTargets(lib2, 'the check-in on a phone (Korean)');
  // The hold shelf in Korean, on a phone.
  await lib2.locator('#desk-nav a[data-desk="shelf"]').click();
  await lib2.getByRole('heading', { name: '예약 보관대', level: 2 }).waitFor();
  await lib2.locator('#shelf-live').getByText('실시간').waitFor();
  await lib2.locator(`#shelf-list li[data-barcode="${b1}"]`).getByText('보관대에 있음').waitFor();
  await tapTargets(lib2, 'the hold shelf on a phone (Korean)');
  await scan(lib2, 'the hold shelf on a phone (Korean)');
  await shot(lib2, 'desk-shelf-ko-phone.png');
  step(`in Korean on a phone: gina borrowed ${HUMAN_ACTS}; again: "${koOnLoan}"; the desk head takes ${deskHead.desk}px`);

  // An overdue loan is marked (the stream is played by the test: loans here
  // last weeks).
  const overduePage = {
    memberId: 'dora',
    journeys: [
      {
        reservationId: '0190f1e2-0000-7000-8000-000000000001',
        bookId: '0190f1e2-0000-7000-8000-0000000000b1',
        bookTitle: 'Parable of the Sower',
        stage: 'JOURNEY_STAGE_OVERDUE',
        rentalId: '0190f1e2-0000-7000-8000-0000000000a1',
        dueAt: '2026-01-10T10:00:00Z',
        steps: [
          { kind: 'STEP_KIND_RESERVED', at: '2025-12-20T09:00:00Z' },
          { kind: 'STEP_KIND_READY', at: '2025-12-20T09:00:01Z' },
          { kind: 'STEP_KIND_RENTED', at: '2025-12-27T15:30:00Z' },
        ],
      },
      {
        // A READY journey that carries the copy held for her.
        reservationId: '0190f1e2-0000-7000-8000-000000000002',
        bookId: '0190f1e2-0000-7000-8000-0000000000b2',
        bookTitle: 'Wild Seed',
        stage: 'JOURNEY_STAGE_READY',
        pickupDeadline: '2026-01-12T10:00:00Z',
        barcode: '31234000123',
        steps: [{ kind: 'STEP_KIND_RESERVED', at: '2026-01-05T09:00:00Z' }],
      },
    ],
    openReservations: 1,
    activeRentals: 1,
  };
  await lib.route('**/v1/mypage:watch?memberId=dora', (route) =>
    route.fulfill({
      status: 200,
      headers: { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' },
      body: `retry: 60000\ndata: ${JSON.stringify(overduePage)}\n\n`,
    }),
  );
  await lib.getByRole('link', { name: 'Librarian desk' }).click();
  await deskTab(lib, 'Members');
  await lib.locator('#member-id').fill('dora');
  await desk.getByRole('button', { name: 'Open page' }).click();
  const late = stageOf(lib, 'Parable of the Sower', 'OVERDUE');
  await late.getByText(/Overdue since Jan 10, 2026/).waitFor();
  await late.locator('.badge', { hasText: 'Overdue' }).waitFor();
  const wildSeed = stageOf(lib, 'Wild Seed', 'READY');
  check(
    (await wildSeed.locator('.copy').textContent()) === 'Copy to pick up31234000123',
    `a READY journey names the copy to pick up: ${await wildSeed.locator('.copy').textContent()}`,
  );
  await shot(lib, 'mypage-overdue.png');
  await lib.unroute('**/v1/mypage:watch?memberId=dora');
  step('an overdue loan is marked; a READY journey names the copy to pick up');

  // A British member: dates day-month; a Korean title says it is Korean;
  // the history is a tab of its own, paged, and works from the keyboard.
  const erin = await newPage('erin', { locale: 'en-GB' });
  const finished = Array.from({ length: 13 }, (_, i) => ({
    reservationId: `0190f1e2-0000-7000-8000-0000000001${String(i).padStart(2, '0')}`,
    bookId: `0190f1e2-0000-7000-8000-0000000002${String(i).padStart(2, '0')}`,
    bookTitle: `Finished book ${i + 1}`,
    stage: i % 3 === 2 ? 'JOURNEY_STAGE_CANCELLED' : 'JOURNEY_STAGE_RETURNED',
    returnedAt: i % 3 === 2 ? undefined : '2026-02-03T10:00:00Z',
    returnConfirmation: 'RETURN_CONFIRMATION_CONFIRMED',
    steps: [{ kind: 'STEP_KIND_RESERVED', at: '2026-01-05T09:00:00Z' }],
  }));
  const erinPage = {
    memberId: 'erin',
    journeys: [
      { ...overduePage.journeys[0], bookTitle: '채식주의자' },
      ...finished,
    ],
    openReservations: 0,
    activeRentals: 1,
  };
  await erin.route(`${base}/v1/mypage:watch`, (route) =>
    route.fulfill({
      status: 200,
      headers: { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' },
      body: `retry: 60000\ndata: ${JSON.stringify(erinPage)}\n\n`,
    }),
  );
  await signIn(erin, 'erin', 'member');
  await erin.getByRole('heading', { name: 'My Page', level: 1 }).waitFor();
  const vegetarian = stageOf(erin, '채식주의자', 'OVERDUE');
  await vegetarian.getByText(/Overdue since 10 Jan 2026/).waitFor();
  check(
    (await vegetarian.locator('.card-title').getAttribute('lang')) === 'ko',
    'a Korean title on an English page has lang="ko"',
  );
  // The page may draw the card again meanwhile (live data): ask of the
  // title as it stands, for a moment.
  check(
    await vegetarian
      .locator('.card-title')
      .evaluate(
        (el) =>
          new Promise((resolve) => {
            const started = Date.now();
            const look = () => {
              const title = el.isConnected ? el : document.querySelector('.card-title[lang="ko"]');
              if (title && getComputedStyle(title).wordBreak === 'keep-all') return resolve(true);
              if (Date.now() - started > 5000) return resolve(false);
              requestAnimationFrame(look);
            };
            look();
          }),
      ),
    'Korean breaks between words',
  );
  // The tabs from the keyboard: arrows move between them.
  await erin.getByRole('tab', { name: 'Current (1)' }).focus();
  await erin.keyboard.press('ArrowRight');
  const history = erin.getByRole('tab', { name: 'History (13)' });
  check((await history.getAttribute('aria-selected')) === 'true', 'ArrowRight selects History');
  check((await erin.evaluate(() => document.activeElement?.id)) === 'tab-history', 'and focuses it');
  check(await erin.locator('#panel-current').isHidden(), 'the Current panel is hidden');
  check((await erin.locator('#history > li').count()) === 10, 'the history shows 10 at first');
  check(/^3 Feb 2026/.test(await erin.locator('#history .returned dd').first().textContent()), 'returned on 3 Feb 2026');
  await scan(erin, 'My Page history');
  await shot(erin, 'mypage-history.png');
  await hush(erin);
  await erin.locator('#history-more').click();
  check((await erin.locator('#history > li').count()) === 13, 'Show more shows the rest');
  await erin.locator('#history-more').waitFor({ state: 'hidden' });
  const afterMore = await erin.evaluate(() => document.activeElement?.textContent);
  check(afterMore === 'Finished book 11', `after Show more the focus is on the next journey, not ${afterMore}`);
  await spoken(erin, /3 more shown\./);
  await erin.getByRole('tab', { name: 'Current (1)' }).click();
  await erin.unroute(`${base}/v1/mypage:watch`);
  step('en-GB dates, lang="ko" on a Korean title, the history tab paged, from the keyboard');

  // ---------------------------------------------------------------- notices, their settings, erasing one's history
  // Notices come from real events: a reservation with a free copy is ready
  // at once, and notice-svc tells the member (no SMTP here: My Page only).
  const IMAGO = 'Imago';
  const SURVIVOR = 'Survivor';
  const RITES = 'Adulthood Rites';
  const registered = {};
  for (const title of [IMAGO, SURVIVOR, RITES]) {
    registered[title] = (await apiCall(lib, 'POST', '/v1/books', { title, author: 'Octavia E. Butler', totalCopies: 1 })).body;
    check(registered[title]?.items?.[0]?.barcode, `${title} was registered with a copy: ${JSON.stringify(registered[title])}`);
  }
  const nora = await newPage('nora', { locale: 'en-GB' });
  await signIn(nora, 'nora', 'member');
  await nora.locator('#live[data-state="live"]').waitFor();
  await tab(nora, 'Notices');
  await nora.locator('#notices-count').getByText(/^No notices yet\./).waitFor();
  check(await nora.locator('#nav-badge').isHidden(), 'no badge while nothing is unread');
  // A second tab of hers, open before she marks them read.
  const nora2 = track(await nora.context().newPage(), 'nora-tab-2');
  await nora2.goto('/#/mypage');
  await nora2.locator('#live[data-state="live"]').waitFor();
  await nora.bringToFront();
  await nora.evaluate(() => {
    window.__sameDocument = true;
  });
  const noraNavigations = nora.navigations;
  await hush(nora);
  const imagoCopy = registered[IMAGO].items[0].barcode;
  const reservedAt = Date.now();
  const imagoHold = await reserveByApi(nora, registered[IMAGO].bookId);
  const imagoNotice = nora.locator('#notices-list li[data-kind="HOLD_READY"]');
  await imagoNotice.waitFor();
  const noticeMs = Date.now() - reservedAt;
  const noticeTime = imagoNotice.locator('.inbox-words time');
  const deadlineText = await nora.evaluate(
    (at) => new Intl.DateTimeFormat('en-GB', { dateStyle: 'medium', timeStyle: 'short' }).format(new Date(at)),
    await noticeTime.getAttribute('datetime'),
  );
  check(/^\d{1,2} [A-Z][a-z]{2} \d{4}, \d{2}:\d{2}$/.test(deadlineText), `an en-GB deadline: ${deadlineText}`);
  const imagoWords = (await imagoNotice.locator('.inbox-words').textContent()).trim();
  check(imagoWords === `Pick up copy ${imagoCopy} of “${IMAGO}” by ${deadlineText}.`, `the hold-ready notice: ${imagoWords}`);
  check((await imagoNotice.getAttribute('data-read')) === 'false', 'a new notice is unread');
  await imagoNotice.locator('.badge', { hasText: 'New' }).waitFor();
  await nora.locator('#notices-count').getByText('You have 1 unread notice.').waitFor();
  await nora.getByRole('tab', { name: 'Notices (1 unread)' }).waitFor();
  await nora.locator('#nav-badge', { hasText: /^1$/ }).waitFor();
  check((await nora.locator('#nav-unread').textContent()) === '1 unread notice', 'and says so to screen readers');
  await spoken(nora, new RegExp(`New notice: Pick up copy ${imagoCopy}`));
  check(
    (await nora.evaluate(() => window.__sameDocument === true)) && nora.navigations === noraNavigations,
    "nora's page was not reloaded",
  );
  await scan(nora, 'My Page notices');
  await shot(nora, 'mypage-notices.png');
  await nora.setViewportSize(PHONE);
  await tapTargets(nora, 'My Page notices on a phone');
  await headerApart(nora, 'My Page notices on a phone');
  await nora.setViewportSize(DESKTOP);
  // Mark all read: read at once here, and live in her other tab (the page's own NoticesRead).
  await tab(nora2, 'Notices');
  await nora2.locator('#notices-count').getByText('You have 1 unread notice.').waitFor();
  await nora.getByRole('button', { name: 'Mark all read' }).click();
  await notice(nora, /^Your notices are marked read\.$/, '#notices-notice');
  await nora.locator('#notices-count').getByText('Every notice is read.').waitFor();
  check((await imagoNotice.getAttribute('data-read')) === 'true', 'the notice shows read');
  check(await nora.locator('#nav-badge').isHidden(), 'the badge goes with the last unread notice');
  await nora.getByRole('tab', { name: 'Notices', exact: true }).waitFor();
  await focusKept(nora, 'Mark all read');
  await nora2.locator('#notices-count').getByText('Every notice is read.').waitFor();
  await nora2.locator(`#notices-list li[data-notice-id="${await imagoNotice.getAttribute('data-notice-id')}"][data-read="true"]`).waitFor();
  check(await nora2.locator('#nav-badge').isHidden(), "the other tab's badge goes too");
  await nora2.close();
  step(`a hold-ready notice on My Page ${noticeMs} ms after the reservation, live, with the unread count in the tab and the header; Mark all read, live in another tab`);

  // The notice settings: an address that is not one is refused beside the
  // field; the saved settings are what a fresh page shows.
  const settings = nora.locator('#settings-form');
  const email = settings.getByLabel('E-mail address');
  await nora.locator('#settings-changed').getByText("The library's defaults, never changed.").waitFor();
  check(
    (await email.inputValue()) === '' && (await settings.getByLabel('한국어').isChecked()),
    'the defaults: no e-mail, in Korean (DEFAULT_LANGUAGE)',
  );
  for (const kind of ['a copy is held for me to pick up', 'a loan is due soon', 'a loan is overdue', 'a hold expired before I picked it up']) {
    check(await settings.getByLabel(kind).isChecked(), `by default: ${kind}`);
  }
  expectedFailures.add(`${base}/v1/mypage/noticeSettings`);
  await email.fill('nora.example.org');
  await hush(nora);
  await settings.getByRole('button', { name: 'Save settings' }).click();
  const badAddress = await notice(nora, /./, '#settings-email-notice');
  check(badAddress === '“nora.example.org” is not an e-mail address. Correct it, or leave it empty.', `a bad address: ${badAddress}`);
  await spoken(nora, /is not an e-mail address/, 'problem');
  check((await email.getAttribute('aria-invalid')) === 'true', 'the field is marked invalid');
  check((await nora.evaluate(() => document.activeElement?.id)) === 'settings-email', 'the focus is on the field refused');
  const besideField = await nora.evaluate(
    () =>
      document.getElementById('settings-email-notice').getBoundingClientRect().top -
      document.getElementById('settings-email').getBoundingClientRect().bottom,
  );
  check(besideField >= 0 && besideField < 60, `the refusal is right under the field (${besideField}px)`);
  check((await nora.locator('#settings-notice .notice').count()) === 0, 'nothing else is said under the form');
  await noticesCoverNothing(nora, 'the notice settings with a refused address');
  await scan(nora, 'the notice settings with a refused address');
  await email.fill('nora@example.org');
  await nora.locator('#settings-email-notice .notice').waitFor({ state: 'detached' });
  await settings.getByLabel('English').check();
  await settings.getByLabel('a loan is due soon').uncheck();
  await settings.getByRole('button', { name: 'Save settings' }).click();
  await notice(nora, /^Your notice settings are saved\.$/, '#settings-notice');
  await nora.reload();
  await nora.locator('#live[data-state="live"]').waitFor();
  await tab(nora, 'Notices');
  await nora.locator('#settings-changed').getByText(/^Last changed /).waitFor();
  const saved = {
    email: await email.inputValue(),
    english: await settings.getByLabel('English').isChecked(),
    dueSoon: await settings.getByLabel('a loan is due soon').isChecked(),
    others: await Promise.all(
      ['a copy is held for me to pick up', 'a loan is overdue', 'a hold expired before I picked it up'].map((k) => settings.getByLabel(k).isChecked()),
    ),
  };
  check(
    saved.email === 'nora@example.org' && saved.english && !saved.dueSoon && saved.others.every(Boolean),
    `after a reload the saved settings show: ${JSON.stringify(saved)}`,
  );
  step('the notice settings: a bad address refused beside the field; saved, and shown again after a reload');

  // In Korean, on a phone: a notice arrives live, with its count, and is marked read.
  const mina = await newPage('mina', { locale: 'ko-KR', viewport: PHONE });
  await mina.goto('/');
  await mina.locator('#signin-member').fill('mina');
  await mina.locator('#signin-form button[type="submit"]').click();
  await mina.getByRole('heading', { name: '내 페이지', level: 1 }).waitFor();
  await mina.locator('#live[data-state="live"]').waitFor();
  await tab(mina, '알림');
  await mina.locator('#notices-count').getByText(/^아직 알림이 없습니다\./).waitFor();
  await reserveByApi(mina, registered[RITES].bookId);
  const ritesNotice = mina.locator('#notices-list li[data-kind="HOLD_READY"]');
  await ritesNotice.waitFor();
  const koDeadline = await mina.evaluate(
    (at) => new Intl.DateTimeFormat('ko-KR', { dateStyle: 'medium', timeStyle: 'short' }).format(new Date(at)),
    await ritesNotice.locator('.inbox-words time').getAttribute('datetime'),
  );
  const ritesWords = (await ritesNotice.locator('.inbox-words').textContent()).trim();
  const ritesCopy = registered[RITES].items[0].barcode;
  check(ritesWords === `“${RITES}” 소장본 ${ritesCopy}을(를) ${koDeadline}까지 수령하세요.`, `the notice in Korean: ${ritesWords}`);
  check((await ritesNotice.locator('.inbox-title').getAttribute('lang')) === 'en', 'an English title in a Korean notice says so');
  await mina.locator('#notices-count').getByText('읽지 않은 알림이 1건 있습니다.').waitFor();
  await mina.getByRole('tab', { name: '알림 (읽지 않음 1건)' }).waitFor();
  await mina.locator('#nav-badge', { hasText: /^1$/ }).waitFor();
  await tapTargets(mina, 'My Page notices on a phone (Korean)');
  await headerApart(mina, 'My Page notices on a phone (Korean)');
  await scan(mina, 'My Page notices on a phone (Korean)');
  await shot(mina, 'mypage-notices-ko-phone.png');
  await mina.getByRole('button', { name: '모두 읽음으로 표시' }).click();
  await notice(mina, /^알림을 모두 읽음으로 표시했습니다\.$/, '#notices-notice');
  await mina.locator('#notices-count').getByText('알림을 모두 읽었습니다.').waitFor();
  check(await mina.locator('#nav-badge').isHidden(), 'the Korean badge goes too');
  step('in Korean on a phone: a notice arrives live with its count, and is marked read');

  // Erasing one's history: asked first, then finished journeys leave My Page
  // and every service; what is going on stays.
  check(
    (await apiCall(nora, 'POST', `/v1/reservations/${imagoHold.reservationId}:cancel`)).status === 200,
    `nora cancels ${IMAGO}`,
  );
  await reserveByApi(nora, registered[SURVIVOR].bookId);
  await tab(nora, 'Current');
  await current(nora, SURVIVOR).waitFor();
  await tab(nora, 'History');
  await stageOf(nora, IMAGO, 'CANCELLED').waitFor();
  await nora.getByRole('button', { name: 'Erase my history' }).click();
  const question = (await nora.locator('#erase-question').textContent()).trim();
  check(
    /finished loan and reservation/.test(question) && /on loan or reserved now stays/.test(question) && /cannot be undone/.test(question),
    `the question says what erasing does: ${question}`,
  );
  check((await nora.evaluate(() => document.activeElement?.textContent)) === 'Yes, erase my history', 'the question has the focus');
  await scan(nora, 'erasing the history, asked first');
  await nora.getByRole('button', { name: 'Keep it' }).click();
  check((await nora.evaluate(() => document.activeElement?.textContent)) === 'Erase my history', '"Keep it" goes back to the button');
  await stageOf(nora, IMAGO, 'CANCELLED').waitFor();
  await nora.getByRole('button', { name: 'Erase my history' }).click();
  await nora.getByRole('button', { name: 'Yes, erase my history' }).click();
  await notice(nora, /^Your history is erased/, '#erase-notice');
  await stageOf(nora, IMAGO, 'CANCELLED').waitFor({ state: 'detached' });
  await nora.getByRole('tab', { name: 'History (0)' }).waitFor();
  await nora.getByRole('tab', { name: 'Current (1)' }).waitFor();
  await focusKept(nora, 'erasing the history');
  await tab(nora, 'Current');
  await stageOf(nora, SURVIVOR, 'READY').waitFor();
  // The notice about the finished hold went with it; the one about the hold going on stays.
  await nora.locator('#notices-list li', { hasText: IMAGO }).waitFor({ state: 'detached' });
  await nora.locator('#notices-list li', { hasText: SURVIVOR }).waitFor({ state: 'attached' });
  // Everywhere: her history and her reservations at the desk name nothing finished.
  check(((await apiCall(nora, 'GET', '/v1/mypage/history')).body.journeys || []).length === 0, 'the history read is empty');
  let held = [];
  for (let i = 0; i < 40; i++) {
    held = ((await apiCall(nora, 'GET', '/v1/reservations')).body.reservations || []).map((r) => r.bookId);
    if (!held.includes(registered[IMAGO].bookId)) break;
    await nora.waitForTimeout(100);
  }
  check(held.join() === registered[SURVIVOR].bookId, `reserve-svc keeps only her hold going on: ${held}`);
  step('erasing the history: asked first, the cancelled hold gone from My Page and from reserve-svc, the hold going on kept');

  // A librarian sees a member's notices and settings, and the notices not delivered.
  await lib.goto('/#/members/nora');
  await lib.getByRole('heading', { name: "nora's page", level: 1 }).waitFor();
  await tab(lib, 'Notices');
  await lib.locator('#notices-list li', { hasText: SURVIVOR }).waitFor();
  const noraSettings = lib.locator('#settings-view');
  await noraSettings.getByText('nora@example.org').waitFor();
  check((await noraSettings.locator('.kinds dd').textContent()) === 'Ready for pickup, Overdue, Hold expired', 'the notices she wants');
  check(await lib.locator('#settings-form').isHidden(), "a librarian reads a member's settings, and does not change them");
  check((await lib.getByRole('button', { name: 'Mark all read' }).count()) === 0, "a librarian does not mark a member's notices read");
  await scan(lib, "a member's notices and settings");
  await tab(lib, 'Current');
  await deskTab(lib, 'Members');
  await lib.locator('#failed-count').getByText("No notice's e-mail has failed.").waitFor();
  // An e-mail that failed (played: the all-in-one sends none).
  await lib.route('**/v1/staff/notices/failed?*', (route) =>
    route.fulfill({
      status: 200,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        notices: [
          {
            noticeId: '0190f1e2-0000-7000-8000-0000000000f1',
            memberId: 'olga',
            kind: 'NOTICE_KIND_OVERDUE',
            bookId: '0190f1e2-0000-7000-8000-0000000000b7',
            bookTitle: 'Dawn',
            barcode: '00000042',
            deadline: '2026-01-10T10:00:00Z',
            createdAt: '2026-01-11T10:00:00Z',
            emailState: 'EMAIL_STATE_FAILED',
            attempts: 7,
            lastError: '550 5.1.1 mailbox unavailable',
          },
        ],
      }),
    }),
  );
  await deskTab(lib, 'Overdue');
  await deskTab(lib, 'Members');
  const failedRow = lib.locator('#failed-list li[data-member-id="olga"]');
  await failedRow.getByRole('link', { name: 'olga' }).waitFor();
  await failedRow.getByText('7 attempts · last error: 550 5.1.1 mailbox unavailable').waitFor();
  await failedRow.locator('.badge', { hasText: 'Overdue' }).waitFor();
  await lib.locator('#failed-count').getByText('1 notice was not delivered, the newest first.').waitFor();
  await scan(lib, 'the notices not delivered');
  await lib.unroute('**/v1/staff/notices/failed?*');
  step("a librarian reads nora's notices and settings, and the notices not delivered");

  // Overload: a 503 with Retry-After reads as a sentence, under the search.
  await bob.route('**/v1/books?*', (route) =>
    route.fulfill({
      status: 503,
      headers: { 'content-type': 'application/json', 'retry-after': '5' },
      body: JSON.stringify({ code: 14, message: 'the lending desk is overloaded', details: [] }),
    }),
  );
  await search(bob, KINDRED);
  const busy = await notice(bob, /busy/, '#search-notice');
  check(busy === 'The lending desk is busy, try again in 5 seconds.', `overload: ${busy}`);
  await bob.unroute('**/v1/books?*');
  // The next search that works takes the notice away.
  await view(bob, 'catalogue').getByRole('button', { name: 'Search' }).click();
  await bob.locator('#search-notice .notice').waitFor({ state: 'detached' });
  step(`a 503 says: "${busy}", and goes with the next search`);

  // My Page cannot reach the library for a moment: the notice goes when it is live again.
  expectedFailures.add(`${base}/v1/mypage`);
  await bob.route(`${base}/v1/mypage:watch`, (route) =>
    route.fulfill({ status: 503, headers: { 'content-type': 'application/json' }, body: '{"code":14,"message":"down","details":[]}' }),
  );
  await bob.route(`${base}/v1/mypage`, (route) => route.abort('connectionrefused'));
  await bob.getByRole('link', { name: 'My Page', exact: true }).click();
  await notice(bob, /cannot be reached/, '#live-notice');
  await noticesCoverNothing(bob, 'My Page, unreachable');
  await bob.unroute(`${base}/v1/mypage:watch`);
  await bob.unroute(`${base}/v1/mypage`);
  await bob.locator('#live[data-state="live"]').waitFor();
  await bob.locator('#live-notice .notice').waitFor({ state: 'detached' });
  step('"cannot be reached" goes when My Page is live again');

  // Korean: switchable, and chosen from the browser's language.
  await bob.getByLabel('Language').selectOption('ko');
  await bob.getByRole('heading', { name: '내 페이지', level: 1 }).waitFor();
  check((await visibleNotices(bob)).length === 0, 'sentences in the old language go away');
  await stageOf(bob, KINDRED, 'RENTED').getByText('대출 중').first().waitFor();
  check((await bob.getAttribute('html', 'lang')) === 'ko', 'the document says it is Korean');
  check(
    (await bob.evaluate(() => getComputedStyle(document.body).wordBreak)) === 'keep-all',
    'Korean pages break between words',
  );
  check(
    (await stageOf(bob, KINDRED, 'RENTED').locator('.card-title').getAttribute('lang')) === 'en',
    'an English title on a Korean page says so',
  );
  await shot(bob, 'mypage-ko.png');
  await scan(bob, 'My Page (Korean)');
  // Cancelling, in Korean: the journey goes to the history, the focus to its panel.
  await stageOf(bob, DISPOSSESSED, 'READY').getByRole('button', { name: '예약 취소' }).click();
  await notice(bob, /“The Dispossessed” 예약을 취소했습니다/, '#mypage-notice');
  await current(bob, DISPOSSESSED).waitFor({ state: 'detached' });
  const afterCancel = await focusKept(bob, 'Cancel');
  await tab(bob, '지난 기록');
  await stageOf(bob, DISPOSSESSED, 'CANCELLED').getByText('취소됨').first().waitFor();
  await tapTargets(bob, 'My Page (Korean)');
  await bob.setViewportSize(PHONE);
  await tapTargets(bob, 'My Page on a phone (Korean)');
  await bob.setViewportSize(DESKTOP);
  const carol = await newPage('carol', { locale: 'ko-KR', viewport: PHONE });
  await carol.goto('/');
  await carol.getByRole('heading', { name: '로그인' }).waitFor();
  await shot(carol, 'signin-ko-phone.png');
  await tapTargets(carol, 'the sign-in on a phone');
  await headerApart(carol, 'the sign-in on a phone');
  step(`Korean: switched, a reservation cancelled (focus on ${afterCancel}), and picked from the browser language`);

  // The keyboard alone signs carol in.
  let focused = '';
  for (let i = 0; i < 12 && focused !== 'signin-member'; i++) {
    await carol.keyboard.press('Tab');
    focused = await carol.evaluate(() => document.activeElement?.id ?? '');
  }
  check(focused === 'signin-member', 'Tab reaches the member id');
  await carol.keyboard.type('carol');
  await carol.keyboard.press('Enter');
  await carol.getByRole('heading', { name: '내 페이지', level: 1 }).waitFor();
  const focusedAfter = await carol.evaluate(() => document.activeElement?.tagName);
  check(focusedAfter === 'H1', `focus moves to the new view's heading, not ${focusedAfter}`);
  await tapTargets(carol, 'My Page on a phone, signed in');
  await headerApart(carol, 'My Page on a phone, signed in');
  await carol.getByRole('button', { name: '로그아웃' }).press('Enter');
  await carol.getByRole('heading', { name: '로그인' }).waitFor();
  await notice(carol, /^로그아웃했습니다\.$/, '#signin-notice');
  step('carol signed in and out with the keyboard');

  // Cross-site request forgery: a page on another port of this host is
  // same-site, so the browser sends it the SameSite=Strict cookie; its
  // text/plain form and no-cors fetch must still reserve nothing.
  const dave = await newPage('dave');
  await signIn(dave, 'dave', 'member');
  const kindredId = await dave.evaluate(async (title) => {
    const res = await fetch(`/v1/books?query=${encodeURIComponent(title)}`);
    return (await res.json()).books[0].bookId;
  }, KINDRED);
  const attacker = createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    res.end(`<!doctype html><title>win a prize</title>
<iframe name="sink"></iframe>
<form id="f" method="POST" action="${base}/v1/reservations" enctype="text/plain" target="sink">
<input name='{"bookId":"${kindredId}","x":"' value='"}'></form>
<script>
window.fetched = false;
window.posted = false;
fetch('${base}/v1/reservations', { method: 'POST', mode: 'no-cors', credentials: 'include',
  headers: { 'Content-Type': 'text/plain' }, body: JSON.stringify({ bookId: '${kindredId}' }) })
  .finally(() => { window.fetched = true; });
const sink = document.querySelector('iframe');
sink.addEventListener('load', () => {
  // The edge's answer is another origin's: reading its location throws.
  try { sink.contentWindow.location.href; } catch { window.posted = true; }
});
document.getElementById('f').submit();
</script>`);
  });
  await new Promise((ok) => attacker.listen(0, '127.0.0.1', ok));
  const evil = await dave.context().newPage();
  await evil.goto(`http://127.0.0.1:${attacker.address().port}/`);
  await evil.waitForFunction(() => window.fetched && window.posted);
  await evil.close();
  attacker.close();
  const daveHolds = await dave.evaluate(async () => {
    const res = await fetch('/v1/reservations');
    return (await res.json()).reservations?.length ?? 0;
  });
  check(daveHolds === 0, `a page on another port reserved for dave (${daveHolds} reservations)`);
  await reserve(dave, KINDRED, /Reserved/);
  step('a same-site page could not reserve with the cookie; the page itself can');

  // Long names wrap: nothing is wider than the screen, on a desktop or a
  // phone; an author in Hangul says it is Korean.
  await search(dave, '');
  const longCard = card(dave, 'Longwords');
  await longCard.waitFor();
  const wide = async () => dave.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check((await wide()) <= 0, `a 200-character author widens the page by ${await wide()}px`);
  await dave.setViewportSize(PHONE);
  check((await wide()) <= 0, `a 200-character author widens a phone's page by ${await wide()}px`);
  await dave.setViewportSize(DESKTOP);
  const humanActs = card(dave, HUMAN_ACTS);
  check((await humanActs.locator('.card-title').getAttribute('lang')) === 'ko', 'a Korean title has lang="ko"');
  check((await humanActs.locator('.author [lang="ko"]').textContent()) === '한강', 'a Korean author has lang="ko"');
  await shot(dave, 'catalogue-long-names-phone.png', { phone: true });
  // "Show more": the next page, with the focus on its first book (pages played by the test).
  const fakeBook = (i) => ({
    bookId: `0190f1e2-0000-7000-8000-0000000003${String(i).padStart(2, '0')}`,
    title: `Paged book ${i + 1}`,
    author: i === 21 ? 'M'.repeat(300) : 'Anonymous',
    totalCopies: 1,
    freeCopies: 1,
    status: 'BOOK_STATUS_AVAILABLE',
  });
  await dave.route(`${base}/v1/books?*`, (route) => {
    const second = new URL(route.request().url()).searchParams.get('pageToken') === 'p2';
    const books = second ? [20, 21, 22].map(fakeBook) : Array.from({ length: 20 }, (_, i) => fakeBook(i));
    return route.fulfill({
      status: 200,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ books, nextPageToken: second ? '' : 'p2' }),
    });
  });
  await search(dave, 'paged');
  await card(dave, 'Paged book 20').waitFor();
  await hush(dave);
  await dave.locator('#books-more').click();
  await card(dave, 'Paged book 23').waitFor();
  await dave.locator('#books-more').waitFor({ state: 'hidden' });
  check((await wide()) <= 0, `a 300-character author widens the page by ${await wide()}px`);
  await dave.setViewportSize(PHONE);
  check((await wide()) <= 0, `a 300-character author widens a phone's page by ${await wide()}px`);
  await dave.setViewportSize(DESKTOP);
  const afterBooks = await dave.evaluate(() => document.activeElement?.textContent);
  check(afterBooks === 'Paged book 21', `after Show more the focus is on the next book, not ${afterBooks}`);
  await spoken(dave, /3 more books shown\./);
  await dave.unroute(`${base}/v1/books?*`);
  step('long names wrap on a desktop and a phone; Show more moves the focus to the next book');

  // A sign-in that is gone: the page asks for a new one instead of failing.
  await alice.context().clearCookies();
  await alice.getByRole('link', { name: 'Catalogue', exact: true }).click();
  await notice(alice, /^Your sign-in has expired\. Please sign in again\.$/, '#signin-notice');
  await alice.getByRole('heading', { name: 'Sign in', level: 1 }).waitFor();
  step('a lost sign-in leads back to the sign-in form');

  const overdueFailed = await overdueRun;
  if (overdueFailed) throw overdueFailed;

  // Nobody's pages logged an error.
  check(consoleErrors.length === 0, `console errors:\n  ${consoleErrors.join('\n  ')}`);
  for (const image of ['mypage.png', 'desk-checkin.png', 'desk-shelf.png']) {
    const docs = join(repo, 'docs', 'images', image);
    if (!existsSync(docs) || process.env.UPDATE_DOCS_SCREENSHOTS === '1') {
      mkdirSync(dirname(docs), { recursive: true });
      copyFileSync(join(shots, image), docs);
      console.log(`  copied ${image} to ${docs}`);
    }
  }
} catch (e) {
  failed = e;
  for (const page of pages) {
    await page
      .screenshot({ path: join(shots, `failure-${page.label}.png`), fullPage: true })
      .catch(() => {});
  }
} finally {
  await browser.close();
}
if (failed) {
  console.error(`FAILED after ${((Date.now() - started) / 1000).toFixed(1)} s: ${failed.stack || failed}`);
  if (consoleErrors.length) console.error(`console errors:\n  ${consoleErrors.join('\n  ')}`);
  process.exit(1);
}
console.log(`passed in ${((Date.now() - started) / 1000).toFixed(1)} s; screenshots in ${shots}`);
