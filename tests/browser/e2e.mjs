// End-to-end test of rentalbook's web pages in Debian's Chromium.
//
//   node tests/browser/e2e.mjs http://127.0.0.1:8088
//
// Run by tests/web.rs against a fresh all-in-one (`rentalbook`) with dev
// sign-in on. A librarian registers a book; member A reserves it and sees
// READY; member B reserves it and sees WAITING 1; A picks it up and returns
// it; B's page turns READY live, without a reload; B picks it up. Also: a
// refusal and an overload are shown as sentences, the pages follow the
// browser's language (English, Korean) and switch, the sign-in works from the
// keyboard, a page on another port of the host cannot reserve with the
// member's cookie (cross-site request forgery), axe-core finds no serious or
// critical violation on the main screens, no page logs a console error, and
// nothing is wider than a phone.
//
// Screenshots go to target/screenshots/ (SCREENSHOT_DIR overrides); the My
// Page one is copied to docs/images/mypage.png when that file is missing or
// UPDATE_DOCS_SCREENSHOTS=1.

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

const DESKTOP = { width: 1280, height: 860 };
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
  const page = await context.newPage();
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

/** Waits for the toast to show a sentence matching `pattern`; returns it. */
async function toast(page, pattern, timeout = 10_000) {
  const handle = await page.waitForFunction(
    ([source, flags]) => {
      const box = document.getElementById('toast');
      const text = document.getElementById('toast-text').textContent;
      return !box.hidden && new RegExp(source, flags).test(text) ? text : false;
    },
    [pattern.source, pattern.flags],
    { timeout },
  );
  return handle.jsonValue();
}

async function toastText(page) {
  return page.evaluate(() => (document.getElementById('toast').hidden ? '' : document.getElementById('toast-text').textContent));
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

/** A book's card in the catalogue, or in another view's list. */
function card(page, title, where = 'catalogue') {
  return view(page, where).locator('li.card', {
    has: page.getByRole('heading', { name: title, exact: true }),
  });
}

function journey(page, title) {
  return page.locator('li.journey', { has: page.getByRole('heading', { name: title, exact: true }) });
}

async function search(page, text) {
  await page.getByRole('link', { name: 'Catalogue' }).click();
  await page.getByRole('heading', { name: 'Catalogue', level: 1 }).waitFor();
  await view(page, 'catalogue').getByLabel('Search by title, author or ISBN').fill(text);
  await view(page, 'catalogue').getByRole('button', { name: 'Search' }).click();
}

/**
 * Reserves `title` from the catalogue; the desk may not know a book
 * registered a moment ago, so that one refusal is retried.
 */
async function reserve(page, title, expected) {
  for (let attempt = 0; ; attempt++) {
    await search(page, title);
    await card(page, title).getByRole('button', { name: 'Reserve' }).click();
    const text = await toast(page, /Reserved|not known|could not|cannot/);
    if (/Reserved/.test(text)) {
      check(expected.test(text), `reserving ${title}: ${text}`);
      return text;
    }
    check(/not known/.test(text) && attempt < 20, `reserving ${title}: ${text}`);
    await page.waitForTimeout(250);
  }
}

async function openMyPage(page) {
  await page.getByRole('link', { name: 'My Page' }).click();
  await page.getByRole('heading', { name: 'My Page', level: 1 }).waitFor();
  await page.locator('#live[data-state="live"]').waitFor();
}

const stageOf = (page, title, stage) =>
  journey(page, title).and(page.locator(`[data-stage="JOURNEY_STAGE_${stage}"]`));

// ------------------------------------------------------------------ the story

const KINDRED = 'Kindred';
const DISPOSSESSED = 'The Dispossessed';
let failed = null;
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
  for (const [title, author, isbn, copies] of [
    [KINDRED, 'Octavia E. Butler', '978-0-8070-8369-7', '1'],
    [DISPOSSESSED, 'Ursula K. Le Guin', '', '2'],
  ]) {
    const form = lib.locator('#register-form');
    await form.getByLabel('Title', { exact: true }).fill(title);
    await form.getByLabel('Author', { exact: true }).fill(author);
    await form.getByLabel('ISBN (optional)').fill(isbn);
    await form.getByLabel('Copies', { exact: true }).fill(copies);
    await form.getByRole('button', { name: 'Register' }).click();
    await toast(lib, new RegExp(`Registered “${title}” with ${copies} cop`));
  }
  step('the librarian registered two books');

  // Member A reserves Kindred: READY at once.
  const alice = await newPage('alice');
  await signIn(alice, 'alice', 'member');
  await reserve(alice, KINDRED, /a copy is held for you/);
  await card(alice, KINDRED).getByText('All copies held').waitFor();
  await shot(alice, 'catalogue.png');
  await scan(alice, 'catalogue');
  await openMyPage(alice);
  await stageOf(alice, KINDRED, 'READY').getByText('Pick up by').waitFor();
  step('alice reserved Kindred and sees READY');

  // Member B reserves it too: WAITING, number 1 in the queue.
  const bob = await newPage('bob');
  await signIn(bob, 'bob', 'member');
  await reserve(bob, KINDRED, /you are number 1 in the queue/);
  await card(bob, KINDRED).getByText('1 member', { exact: true }).waitFor();
  await shot(bob, 'catalogue-phone.png', { phone: true });

  // A refusal is a sentence: reserving it twice.
  expectedFailures.add(`${base}/v1/reservations`);
  await card(bob, KINDRED).getByRole('button', { name: 'Reserve' }).click();
  const refusal = await toast(bob, /already have an open reservation/);
  assertSentence(refusal, 'the refusal');
  check(/^You already have an open reservation for this book\.$/.test(refusal), refusal);
  step(`bob reserved Kindred (WAITING 1); reserving again says: "${refusal}"`);

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

  // A picks it up and returns it.
  await stageOf(alice, KINDRED, 'READY').getByRole('button', { name: 'Pick up' }).click();
  const rented = await toast(alice, /You have “Kindred”/);
  await stageOf(alice, KINDRED, 'RENTED').getByText('Due back').waitFor();
  await shot(alice, 'mypage-rented.png');
  const returnedAt = Date.now();
  await stageOf(alice, KINDRED, 'RENTED').getByRole('button', { name: 'Return' }).click();
  await toast(alice, /Returned “Kindred”/);
  await stageOf(alice, KINDRED, 'RETURNED').waitFor();
  step(`alice picked Kindred up ("${rented}") and returned it`);

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
  await toast(bob, /You have “Kindred”/);
  await stageOf(bob, KINDRED, 'RENTED').getByText('Due back').waitFor();
  await bob.locator('#toast-close').click();
  await shot(bob, 'mypage.png');
  await shot(bob, 'mypage-phone.png', { phone: true });
  step('bob picked Kindred up');

  // The librarian's desk: add copies, open bob's page.
  const desk = view(lib, 'desk');
  await lib.getByRole('link', { name: 'Librarian desk' }).click();
  await desk.getByLabel('Search by title, author or ISBN').fill(KINDRED);
  await desk.getByRole('button', { name: 'Search' }).click();
  await card(lib, DISPOSSESSED, 'desk').waitFor({ state: 'detached' });
  await card(lib, KINDRED, 'desk').getByLabel('Copies to add').fill('2');
  await card(lib, KINDRED, 'desk').getByRole('button', { name: 'Add copies' }).click();
  await toast(lib, /“Kindred” now has 3 copies/);
  await desk.getByLabel('Member id').fill('bob');
  await desk.getByRole('button', { name: 'Open page' }).click();
  await lib.getByRole('heading', { name: "bob's page", level: 1 }).waitFor();
  await stageOf(lib, KINDRED, 'RENTED').getByRole('button', { name: 'Return' }).waitFor();
  check((await stageOf(lib, KINDRED, 'RENTED').getByRole('button', { name: 'Pick up' }).count()) === 0, 'no pick-up for another member');
  await lib.getByRole('link', { name: 'Librarian desk' }).click();
  await lib.getByRole('heading', { name: 'Librarian desk', level: 1 }).waitFor();
  await lib.locator('#toast-close').click();
  await shot(lib, 'desk.png');
  await shot(lib, 'desk-phone.png', { phone: true });
  await scan(lib, 'librarian desk');
  step("the librarian added copies and opened bob's page");

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
    ],
    openReservations: 0,
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
  await desk.getByLabel('Member id').fill('dora');
  await desk.getByRole('button', { name: 'Open page' }).click();
  const late = stageOf(lib, 'Parable of the Sower', 'OVERDUE');
  await late.getByText(/Overdue since Jan 10, 2026/).waitFor();
  await late.locator('.badge', { hasText: 'Overdue' }).waitFor();
  await shot(lib, 'mypage-overdue.png');
  await lib.unroute('**/v1/mypage:watch?memberId=dora');
  step('an overdue loan is marked');

  // Overload: a 503 with Retry-After reads as a sentence.
  await bob.route('**/v1/books?*', (route) =>
    route.fulfill({
      status: 503,
      headers: { 'content-type': 'application/json', 'retry-after': '5' },
      body: JSON.stringify({ code: 14, message: 'the lending desk is overloaded', details: [] }),
    }),
  );
  expectedFailures.add(`${base}/v1/books?`);
  await search(bob, KINDRED);
  const busy = await toast(bob, /busy/);
  check(busy === 'The lending desk is busy, try again in 5 seconds.', `overload: ${busy}`);
  await bob.unroute('**/v1/books?*');
  step(`a 503 says: "${busy}"`);

  // Korean: switchable, and chosen from the browser's language.
  await openMyPage(bob);
  await bob.getByLabel('Language').selectOption('ko');
  await bob.getByRole('heading', { name: '내 페이지', level: 1 }).waitFor();
  check(await bob.locator('#toast').isHidden(), 'a sentence in the old language goes away');
  await stageOf(bob, KINDRED, 'RENTED').getByText('대출 중').first().waitFor();
  check((await bob.getAttribute('html', 'lang')) === 'ko', 'the document says it is Korean');
  await shot(bob, 'mypage-ko.png');
  await scan(bob, 'My Page (Korean)');
  // Cancelling, in Korean.
  await stageOf(bob, DISPOSSESSED, 'READY').getByRole('button', { name: '예약 취소' }).click();
  await toast(bob, /“The Dispossessed” 예약을 취소했습니다/);
  await stageOf(bob, DISPOSSESSED, 'CANCELLED').getByText('취소됨').first().waitFor();
  const carol = await newPage('carol', { locale: 'ko-KR', viewport: PHONE });
  await carol.goto('/');
  await carol.getByRole('heading', { name: '로그인' }).waitFor();
  await shot(carol, 'signin-ko-phone.png');
  step('Korean: switched, a reservation cancelled, and picked from the browser language');

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
  await carol.getByRole('button', { name: '로그아웃' }).press('Enter');
  await carol.getByRole('heading', { name: '로그인' }).waitFor();
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

  // A sign-in that is gone: the page asks for a new one instead of failing.
  expectedFailures.add(`${base}/v1/books`);
  await alice.context().clearCookies();
  await alice.getByRole('link', { name: 'Catalogue' }).click();
  await toast(alice, /^Your sign-in has expired\. Please sign in again\.$/);
  await alice.getByRole('heading', { name: 'Sign in', level: 1 }).waitFor();
  step('a lost sign-in leads back to the sign-in form');

  // Nobody's pages logged an error.
  check(consoleErrors.length === 0, `console errors:\n  ${consoleErrors.join('\n  ')}`);
  const docs = join(repo, 'docs', 'images', 'mypage.png');
  if (!existsSync(docs) || process.env.UPDATE_DOCS_SCREENSHOTS === '1') {
    mkdirSync(dirname(docs), { recursive: true });
    copyFileSync(join(shots, 'mypage.png'), docs);
    console.log(`  copied mypage.png to ${docs}`);
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
