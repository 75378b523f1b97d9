// rentalbook's pages: the catalogue, My Page (live), the librarian's desk.
// Routes live in the URL's fragment (#/catalogue, #/mypage, #/desk,
// #/members/<id>); the token is an HttpOnly cookie the browser sends by itself.

import { ApiError, errorFor, get, post, query } from './api.js';
import {
  formatTime,
  language,
  preferredLanguage,
  setLanguage,
  t,
  translateStatic,
} from './i18n.js';
import {
  FINISHED,
  bookCard,
  bookTitle,
  idPart,
  journeyCard,
  noticeEl,
  replaceKeepingFocus,
  stageLabel,
} from './views.js';

const $ = (id) => document.getElementById(id);

const state = {
  /** `{devSignIn, member: {id, role, expiresAt} | null}` from GET /session. */
  session: { devSignIn: false, member: null },
  /** `{name, memberId}` of the view on screen. */
  route: { name: '' },
  catalogue: { q: '', books: [], next: '', searched: false },
  desk: { q: '', books: [], searched: false },
  /** The My Page on screen, whose member, and each journey's last stage. */
  page: null,
  pageOf: '',
  stages: new Map(),
  /** My Page's tab (`current` or `history`) and how much history it shows. */
  tab: 'current',
  historyShown: 0,
  /** The signed-in member's open journeys by book id (`{stage, queuePosition}`), for the catalogue. */
  holdings: new Map(),
  /** Notices inside cards, by card (`book:<id>`, `desk:<id>`, `journey:<id>`). */
  cardNotices: new Map(),
  /** The open WatchMyPage stream, and how long to wait before reopening it. */
  watch: null,
  retryMs: 1000,
  retryTimer: 0,
};

// ------------------------------------------------------------------ notices
//
// A notice sits next to what it is about (under its form, in its card,
// beside the live indicator), in the flow of the page so that it never
// covers a control; it goes when its cause is gone (the next success, an
// edit of the form, the stream live again) or when dismissed. Screen readers
// hear every outcome through two regions: polite status for outcomes,
// alert for problems.

const spokenLast = new Map();

/**
 * Reads `text` out: politely, or at once for problems. A sentence that
 * follows another within a moment (an outcome, then the change of stage it
 * caused) is added to it rather than replacing it before it is heard.
 */
function speak(text, kind = 'done') {
  const region = kind === 'problem' ? $('alert') : $('announce');
  const last = spokenLast.get(region);
  const now = Date.now();
  const joined = last && now - last.at < 1500 && !last.text.includes(text) ? `${last.text} ${text}` : text;
  spokenLast.set(region, { text: joined, at: now });
  region.textContent = '';
  // A fresh text node a moment later, so that the same sentence twice is
  // read twice (a timer, which runs in a background tab too).
  setTimeout(() => {
    region.textContent = joined;
  }, 30);
}

const HISTORY_PAGE = 10;

/**
 * Shows a notice in the slot `slotId` (an element of the page that follows
 * the form or control it is about) and reads it out.
 */
function setNotice(slotId, text, kind = 'problem', { actions = [], focus = false, quiet = false } = {}) {
  const slot = $(slotId);
  const el = noticeEl({ text, kind, actions, key: slotId, onDismiss: () => clearNotice(slotId, { focus: true }) });
  slot.replaceChildren(el);
  slot.dataset.kind = kind;
  if (!quiet) speak(text, kind);
  if (focus) el.focus();
}

/**
 * Takes the notice out of `slotId` (only a problem one with `problems`);
 * `focus` moves the focus to the control the notice was about.
 */
function clearNotice(slotId, { focus = false, problems = false } = {}) {
  const slot = $(slotId);
  if (!slot.childElementCount || (problems && slot.dataset.kind !== 'problem')) return;
  const hadFocus = slot.contains(document.activeElement);
  slot.replaceChildren();
  delete slot.dataset.kind;
  if (focus || hadFocus) {
    const target = slot.dataset.for && $(slot.dataset.for);
    if (target && target.offsetParent !== null) {
      if (target.tagName === 'H1') target.setAttribute('tabindex', '-1');
      target.focus();
    } else {
      focusHeading();
    }
  }
}

function clearAllNotices() {
  for (const slot of document.querySelectorAll('.notice-slot')) {
    slot.replaceChildren();
    delete slot.dataset.kind;
  }
  state.cardNotices.clear();
}

/** Shows a notice inside a card (`book:<id>`, `desk:<id>`, `journey:<id>`) and reads it out. */
function setCardNotice(card, text, kind = 'problem', { actions = [] } = {}) {
  state.cardNotices.set(card, { text, kind, actions });
  speak(text, kind);
  renderCards(card);
}

function clearCardNotice(card) {
  if (state.cardNotices.delete(card)) renderCards(card);
}

/** The notice element of a card, if it has one. */
function cardNotice(card) {
  const n = state.cardNotices.get(card);
  if (!n) return null;
  // Dismissed: the card is drawn again and the focus goes to its heading.
  return noticeEl({ ...n, key: idPart(card), onDismiss: () => clearCardNotice(card) });
}

function renderCards(card) {
  if (card.startsWith('book:')) renderCatalogue();
  else if (card.startsWith('desk:')) renderDeskBooks();
  else renderPage();
}

/** Where a problem is shown: a slot's id, or a card (`book:<id>`, ...). */
function report(place, text, kind = 'problem', options = {}) {
  if (/^(book|desk|journey):/.test(place)) setCardNotice(place, text, kind, options);
  else setNotice(place, text, kind, options);
}

/** Focus on the view's heading, which is where a reader starts again. */
function focusHeading() {
  const view = VIEWS[state.route.name];
  const heading = view && $(view).querySelector('h1');
  if (!heading) return;
  heading.setAttribute('tabindex', '-1');
  heading.focus();
}

/** What to do with a failure: a notice at `place`, or the sign-in form when the sign-in is gone. */
async function problem(error, place = 'page-notice') {
  if (error instanceof ApiError && error.signedOut) {
    await refreshSession();
    if (!state.session.member) {
      forget();
      renderSession();
      await show({ name: 'signin' }, { focus: true });
      setNotice('signin-notice', t('signin.expired'));
      return;
    }
  }
  report(place, error instanceof ApiError ? error.message : t('error.server'));
  if (!(error instanceof ApiError)) console.warn(error);
}

/** Runs `work` for a button once at a time; a failure is shown at `place`. */
const running = new WeakSet();
async function act(button, work, place = 'page-notice') {
  if (button && running.has(button)) return;
  if (button) {
    running.add(button);
    button.setAttribute('aria-disabled', 'true');
  }
  try {
    await work();
  } catch (e) {
    await problem(e, place);
  } finally {
    if (button) {
      running.delete(button);
      button.removeAttribute('aria-disabled');
    }
  }
}

// ------------------------------------------------------------------ session

async function refreshSession() {
  try {
    state.session = await get('/session');
  } catch {
    state.session = { devSignIn: false, member: null };
  }
}

const signedIn = () => Boolean(state.session.member);

/** Drops everything the last signed-in person saw, so that nobody else sees it. */
function forget() {
  stopWatch();
  state.catalogue = { q: '', books: [], next: '', searched: false };
  state.desk = { q: '', books: [], searched: false };
  state.page = null;
  state.pageOf = null;
  state.stages = new Map();
  state.tab = 'current';
  state.historyShown = HISTORY_PAGE;
  state.holdings = new Map();
  clearAllNotices();
  renderPage();
  renderCatalogue();
  renderDeskBooks();
  for (const id of ['search-q', 'desk-q', 'member-id']) $(id).value = '';
}
const isLibrarian = () => state.session.member?.role === 'librarian';

function renderSession() {
  const member = state.session.member;
  $('who').hidden = !member;
  $('sign-out').hidden = !member;
  $('nav').hidden = !member;
  $('nav-desk').hidden = !isLibrarian();
  if (member) {
    $('who').textContent = t('who', { id: member.id, role: t(`role.${member.role}`) });
  }
  $('signin-dev').hidden = !state.session.devSignIn;
  $('signin-prod').hidden = state.session.devSignIn;
}

async function signIn(event) {
  event.preventDefault();
  const form = event.currentTarget;
  if (!form.reportValidity()) return;
  const data = new FormData(form);
  await act(form.querySelector('button[type=submit]'), async () => {
    state.session = await post('/session/dev', {
      memberId: String(data.get('memberId')).trim(),
      role: String(data.get('role') || 'member'),
    });
    forget();
    renderSession();
    speak(t('signin.done', { id: state.session.member.id }));
    const wanted = parseRoute();
    if (wanted.name && wanted.name !== 'signin') {
      await show(wanted, { focus: true });
    } else {
      location.hash = defaultRoute();
    }
  }, 'signin-notice');
}

async function signOut() {
  await act($('sign-out'), async () => {
    state.session = await post('/session/logout');
    forget();
    renderSession();
    await show({ name: 'signin' }, { focus: true });
    setNotice('signin-notice', t('signout.done'), 'done');
  });
}

// ------------------------------------------------------------------ routes

function defaultRoute() {
  return isLibrarian() ? '#/desk' : '#/mypage';
}

function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, '').split('/');
  switch (parts[0]) {
    case 'catalogue':
      return { name: 'catalogue' };
    case 'mypage':
      return { name: 'mypage' };
    case 'desk':
      return { name: 'desk' };
    case 'members':
      return parts[1] ? { name: 'member', memberId: decodeURIComponent(parts[1]) } : { name: 'desk' };
    default:
      return { name: '' };
  }
}

const VIEWS = {
  signin: 'view-signin',
  catalogue: 'view-catalogue',
  mypage: 'view-mypage',
  member: 'view-mypage',
  desk: 'view-desk',
};

async function show(route, { focus = false } = {}) {
  if (!signedIn()) route = { name: 'signin' };
  if ((route.name === 'desk' || route.name === 'member') && !isLibrarian()) route = { name: 'mypage' };
  if (!route.name) {
    history.replaceState(null, '', defaultRoute());
    route = parseRoute();
  }
  if (state.route.name && state.route.name !== route.name) clearNotice('page-notice');
  state.route = route;
  $('loading').hidden = true;
  for (const [name, id] of Object.entries(VIEWS)) {
    if (name !== route.name) $(id).hidden = true;
  }
  $(VIEWS[route.name]).hidden = false;
  for (const link of document.querySelectorAll('#nav a[data-route]')) {
    const here = link.dataset.route === (route.name === 'member' ? 'desk' : route.name);
    if (here) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  setTitle();
  if (route.name === 'mypage' || route.name === 'member') {
    const of = route.name === 'member' ? route.memberId : '';
    if (state.pageOf !== of) {
      stopWatch();
      state.page = null;
      state.stages = new Map();
      state.tab = 'current';
      state.historyShown = HISTORY_PAGE;
      clearNotice('mypage-notice');
      clearNotice('live-notice');
      for (const card of [...state.cardNotices.keys()]) {
        if (card.startsWith('journey:')) state.cardNotices.delete(card);
      }
      selectTab('current');
    }
    // Until the stream's first page comes, the last one (with this view's actions).
    renderPage();
    startWatch(of);
  } else {
    stopWatch();
  }
  if (focus) {
    const heading = $(VIEWS[route.name]).querySelector('h1');
    heading.setAttribute('tabindex', '-1');
    heading.focus();
  }
  if (route.name === 'catalogue') {
    // Availability moves all the time: read the list again on every visit,
    // with what the member holds already.
    $('search-q').value = state.catalogue.q;
    await Promise.all([
      loadHoldings(),
      searchCatalogue(state.catalogue.q).catch((e) => problem(e, 'search-notice')),
    ]);
  }
}

function setTitle() {
  const r = state.route;
  const key = r.name === 'member' ? 'title.member' : `title.${r.name || 'signin'}`;
  document.title = t(key, { id: r.memberId ?? '' });
  if (r.name === 'member') $('mypage-title').textContent = t('mypage.titleOf', { id: r.memberId });
  else $('mypage-title').textContent = t('mypage.title');
}

// ------------------------------------------------------------------ catalogue

async function searchCatalogue(q, { more = false } = {}) {
  const c = state.catalogue;
  const answer = await get(
    `/v1/books${query({ query: q, pageSize: 20, pageToken: more ? c.next : '' })}`,
  );
  if (!more) {
    for (const card of [...state.cardNotices.keys()]) {
      if (card.startsWith('book:')) state.cardNotices.delete(card);
    }
  }
  clearNotice('search-notice', { problems: true });
  c.q = q;
  c.books = more ? c.books.concat(answer.books || []) : answer.books || [];
  c.next = answer.nextPageToken || '';
  c.searched = true;
  renderCatalogue();
}

function renderCatalogue() {
  const c = state.catalogue;
  const actions = { reserve };
  replaceKeepingFocus(
    $('books'),
    c.books.map((b) =>
      bookCard(b, actions, {
        holding: state.holdings.get(b.bookId) ?? null,
        notice: cardNotice(`book:${b.bookId}`),
      }),
    ),
    $('catalogue-title'),
  );
  $('books-more').hidden = !c.next;
  let count = '';
  if (!c.searched) count = '';
  else if (!c.books.length) count = c.q ? t('catalogue.none', { q: c.q }) : t('catalogue.empty');
  else count = t(c.next ? 'catalogue.countMore' : 'catalogue.count', { n: c.books.length });
  $('catalogue-count').textContent = count;
}

/** Puts a fresh copy of `book` into every list that shows it. */
function updateBook(book) {
  for (const list of [state.catalogue.books, state.desk.books]) {
    const i = list.findIndex((b) => b.bookId === book.bookId);
    if (i >= 0) list[i] = book;
  }
  renderCatalogue();
  renderDeskBooks();
}

/** The member's open journeys by book, from their page (the catalogue shows them instead of Reserve). */
function holdingsOf(page) {
  const held = new Map();
  for (const j of page?.journeys || []) {
    if (j.bookId && !FINISHED.has(j.stage) && !held.has(j.bookId)) {
      held.set(j.bookId, { stage: j.stage, queuePosition: j.queuePosition ?? 0 });
    }
  }
  return held;
}

async function loadHoldings() {
  try {
    state.holdings = holdingsOf(await get('/v1/mypage'));
  } catch {
    // Without them every book offers Reserve; the desk refuses what it must.
    return;
  }
  if (state.catalogue.searched) renderCatalogue();
}

/** The sentence for a reservation just made. */
function reservedText(title, r) {
  return r.status === 'RESERVATION_STATUS_WAITING'
    ? t('book.reservedWaiting', { title, n: r.queuePosition })
    : t('book.reservedReady', { title });
}

/** What a reservation just made means for the catalogue: the book is the member's now. */
function holdFromReservation(bookId, r) {
  state.holdings.set(bookId, {
    stage: r.status === 'RESERVATION_STATUS_WAITING' ? 'JOURNEY_STAGE_WAITING' : 'JOURNEY_STAGE_READY',
    queuePosition: r.queuePosition ?? 0,
  });
}

async function reserve(book, button) {
  const card = `book:${book.bookId}`;
  await act(
    button,
    async () => {
      let r;
      try {
        r = await post('/v1/reservations', { bookId: book.bookId });
      } catch (e) {
        // Most refusals mean this page's picture of the member is out of date
        // (another tab reserved, a loan began): learn it again.
        if (e instanceof ApiError && e.status >= 400 && e.status < 500) loadHoldings();
        throw e;
      }
      state.cardNotices.delete(card);
      holdFromReservation(book.bookId, r);
      renderCatalogue();
      // Reserve is gone from the card: the focus goes to what replaced it.
      document.querySelector(`#books [data-focus-key="mine-${CSS.escape(idPart(book.bookId))}"]`)?.focus();
      speak(reservedText(book.title, r));
      refreshBookSoon(book.bookId);
    },
    card,
  );
}

/** "Show more": the next page, and the focus on its first book. */
async function moreBooks(button) {
  await act(
    button,
    async () => {
      const before = state.catalogue.books.length;
      await searchCatalogue(state.catalogue.q, { more: true });
      const added = state.catalogue.books.length - before;
      const first = $('books').children[before]?.querySelector('.card-title');
      if (first) first.focus();
      if (added > 0) speak(t('catalogue.moreShown', { n: added }));
    },
    'search-notice',
  );
}

/**
 * The catalogue learns availability from the lending events, a moment after
 * the desk decided: read the book again a few times until it has moved.
 */
function refreshBookSoon(bookId) {
  const shown = () =>
    JSON.stringify(state.catalogue.books.find((b) => b.bookId === bookId) ?? null);
  const before = shown();
  const delays = [150, 400, 1000, 2500];
  const again = async () => {
    const delay = delays.shift();
    if (delay === undefined) return;
    await new Promise((done) => setTimeout(done, delay));
    try {
      const book = await get(`/v1/books/${encodeURIComponent(bookId)}`);
      if (JSON.stringify(book) !== before) {
        updateBook(book);
        return;
      }
    } catch {
      return; // The list stays as it was; the reservation stands.
    }
    await again();
  };
  again();
}

// ------------------------------------------------------------------ My Page

function setLive(status) {
  const live = $('live');
  live.dataset.state = status;
  // Live again: whatever kept the page from its updates is gone.
  if (status === 'live') clearNotice('live-notice', { problems: true });
  $('live-text').textContent = t(
    status === 'live' ? 'mypage.live' : status === 'connecting' ? 'mypage.connecting' : 'mypage.reconnecting',
  );
}

function stopWatch() {
  clearTimeout(state.retryTimer);
  if (state.watch) {
    state.watch.close();
    state.watch = null;
  }
}

/** The gRPC code of a stream's error event, as the HTTP status the edge would give. */
const STATUS_OF_CODE = { 4: 504, 5: 404, 7: 403, 14: 503, 16: 401 };

function startWatch(memberId) {
  if (state.watch && state.pageOf === memberId) return;
  stopWatch();
  state.pageOf = memberId;
  setLive('connecting');
  // Same origin: the browser sends the token cookie with it.
  const source = new EventSource(`/v1/mypage:watch${query({ memberId })}`);
  state.watch = source;
  source.onopen = () => {
    state.retryMs = 1000;
  };
  source.onmessage = (event) => {
    if (state.watch !== source) return;
    setLive('live');
    try {
      renderPage(JSON.parse(event.data));
    } catch (e) {
      console.warn('an unreadable page', e);
    }
  };
  source.addEventListener('error', (event) => {
    if (state.watch !== source) return;
    if (typeof event.data === 'string') {
      // The edge's `error` event: the stream failed at the service, and ends.
      let body = null;
      try {
        body = JSON.parse(event.data);
      } catch {
        body = null;
      }
      source.close();
      state.watch = null;
      if (body?.code === 16) {
        // The sign-in the stream was opened with has expired.
        renewWatch(memberId);
        return;
      }
      setNotice('live-notice', errorFor(STATUS_OF_CODE[body?.code] ?? 400, body, null).message);
      setLive('reconnecting');
      recoverWatch(memberId);
      return;
    }
    setLive('reconnecting');
    if (source.readyState === EventSource.CLOSED) {
      // Refused (signed out, not allowed, busy): find out why, then try again.
      source.close();
      state.watch = null;
      recoverWatch(memberId);
    }
  });
}

/**
 * Follows the page again after the stream's sign-in expired: with the sign-in
 * the browser holds now (the sign-in flow renews the cookie), or, when it has
 * expired too, back to the sign-in form.
 */
async function renewWatch(memberId) {
  setLive('reconnecting');
  await refreshSession();
  if (!signedIn()) {
    await problem(new ApiError(t('error.signedOut'), { status: 401, code: 16 }), 'live-notice');
    return;
  }
  renderSession();
  state.retryMs = 1000;
  const r = state.route;
  const still = (r.name === 'mypage' && !memberId) || (r.name === 'member' && r.memberId === memberId);
  if (still && !state.watch) startWatch(memberId);
}

async function recoverWatch(memberId) {
  const path = memberId ? `/v1/members/${encodeURIComponent(memberId)}/mypage` : '/v1/mypage';
  try {
    renderPage(await get(path));
  } catch (e) {
    await problem(e, 'live-notice');
    if (!signedIn()) return;
    if (e instanceof ApiError && (e.status === 403 || e.status === 400 || e.status === 404)) return;
  }
  const wait = state.retryMs;
  state.retryMs = Math.min(state.retryMs * 2, 30000);
  state.retryTimer = setTimeout(() => {
    const r = state.route;
    const still = (r.name === 'mypage' && !memberId) || (r.name === 'member' && r.memberId === memberId);
    if (still && !state.watch) startWatch(memberId);
  }, wait);
}

const TABS = ['current', 'history'];

/** Shows one of My Page's tabs (the ARIA tabs pattern: one tab in the Tab order). */
function selectTab(name, { focus = false } = {}) {
  state.tab = name;
  for (const tab of TABS) {
    const on = tab === name;
    const button = $(`tab-${tab}`);
    button.setAttribute('aria-selected', String(on));
    button.tabIndex = on ? 0 : -1;
    $(`panel-${tab}`).hidden = !on;
  }
  if (focus) $(`tab-${name}`).focus();
}

function tabKeys(event) {
  const at = TABS.indexOf(event.target.dataset.tab);
  if (at < 0) return;
  let next = null;
  if (event.key === 'ArrowRight') next = TABS[(at + 1) % TABS.length];
  else if (event.key === 'ArrowLeft') next = TABS[(at - 1 + TABS.length) % TABS.length];
  else if (event.key === 'Home') next = TABS[0];
  else if (event.key === 'End') next = TABS[TABS.length - 1];
  if (!next) return;
  event.preventDefault();
  selectTab(next, { focus: true });
}

function renderPage(page = state.page) {
  state.page = page;
  const list = $('journeys');
  const history = $('history');
  if (!page) {
    list.replaceChildren();
    history.replaceChildren();
    $('mypage-summary').textContent = '';
    $('mypage-empty').hidden = true;
    $('history-empty').hidden = true;
    $('history-more').hidden = true;
    $('tab-current').textContent = t('mypage.tab.current', { n: 0 });
    $('tab-history').textContent = t('mypage.tab.history', { n: 0 });
    return;
  }
  const journeys = page.journeys || [];
  // Read out what changed since the last page (a queue moved, a copy came
  // back); a problem shown on a journey is about the stage it was in.
  const changes = [];
  for (const j of journeys) {
    const before = state.stages.get(j.reservationId);
    if (before && before !== j.stage) {
      changes.push(t('journey.changed', { title: bookTitle(j), stage: stageLabel(j.stage) }));
      const card = `journey:${j.reservationId}`;
      if (state.cardNotices.get(card)?.kind === 'problem') state.cardNotices.delete(card);
    }
    state.stages.set(j.reservationId, j.stage);
  }
  if (changes.length) announceChanges(changes.join(' '));
  const own = state.route.name === 'mypage';
  if (own) state.holdings = holdingsOf(page);
  const open = holdingsOf(page);
  const actions = own ? { rent, giveBack, cancel, reserveAgain } : { giveBack, cancel };
  const card = (j) =>
    journeyCard(j, actions, {
      open: open.has(j.bookId),
      notice: cardNotice(`journey:${j.reservationId}`),
    });
  const current = journeys.filter((j) => !FINISHED.has(j.stage));
  const past = journeys.filter((j) => FINISHED.has(j.stage));
  replaceKeepingFocus(list, current.map(card), $('panel-current'));
  const shown = Math.max(state.historyShown, HISTORY_PAGE);
  replaceKeepingFocus(history, past.slice(0, shown).map(card), $('panel-history'));
  $('history-more').hidden = past.length <= shown;
  if ($('history-more').hidden && document.activeElement === $('history-more')) $('panel-history').focus();
  $('tab-current').textContent = t('mypage.tab.current', { n: current.length });
  $('tab-history').textContent = t('mypage.tab.history', { n: past.length });
  $('mypage-summary').textContent = t('mypage.summary', {
    open: page.openReservations ?? 0,
    active: page.activeRentals ?? 0,
  });
  $('mypage-empty').hidden = current.length > 0;
  $('mypage-empty').textContent = current.length ? '' : t(journeys.length ? 'mypage.emptyCurrent' : 'mypage.empty');
  $('history-empty').hidden = past.length > 0;
  $('history-empty').textContent = past.length ? '' : t('mypage.emptyHistory');
}

/** Changes of stage, read out politely. */
function announceChanges(text) {
  speak(text);
}

/** "Show more" in the history: the next page, and the focus on its first journey. */
function moreHistory() {
  const before = $('history').children.length;
  state.historyShown = Math.max(state.historyShown, HISTORY_PAGE) + HISTORY_PAGE;
  renderPage();
  const added = $('history').children.length - before;
  const first = $('history').children[before]?.querySelector('.card-title');
  if (first) first.focus();
  else $('panel-history').focus();
  if (added > 0) speak(t('mypage.moreShown', { n: added }));
}

/**
 * After an action on a journey its button is gone (the journey moved on, or
 * to the history): the focus goes to the journey's heading where it is
 * shown, else to the tab's panel.
 */
function focusJourney(journey) {
  const panel = $(`panel-${state.tab}`);
  const key = CSS.escape(idPart(journey.reservationId));
  const heading = panel.querySelector(`[data-card-key="${key}"] .card-title`);
  (heading || panel).focus();
}

/** An outcome on My Page: above the tabs, so that it shows whichever tab is open. */
function pageOutcome(text) {
  setNotice('mypage-notice', text, 'done');
}

async function journeyAction(journey, button, work) {
  const card = `journey:${journey.reservationId}`;
  await act(
    button,
    async () => {
      const text = await work();
      state.cardNotices.delete(card);
      renderPage();
      pageOutcome(text);
      focusJourney(journey);
    },
    card,
  );
}

async function rent(journey, button) {
  await journeyAction(journey, button, async () => {
    const rental = await post('/v1/rentals', { bookId: journey.bookId });
    return t('journey.rented', { title: bookTitle(journey), time: formatTime(rental.dueAt) });
  });
}

async function giveBack(journey, button) {
  await journeyAction(journey, button, async () => {
    await post(`/v1/rentals/${encodeURIComponent(journey.rentalId)}:return`);
    return t('journey.returnedNotice', { title: bookTitle(journey) });
  });
}

async function cancel(journey, button) {
  await journeyAction(journey, button, async () => {
    await post(`/v1/reservations/${encodeURIComponent(journey.reservationId)}:cancel`);
    return t('journey.cancelled', { title: bookTitle(journey) });
  });
}

async function reserveAgain(journey, button) {
  await journeyAction(journey, button, async () => {
    const r = await post('/v1/reservations', { bookId: journey.bookId });
    holdFromReservation(journey.bookId, r);
    return reservedText(bookTitle(journey), r);
  });
}

// ------------------------------------------------------------------ desk

function renderDeskBooks() {
  replaceKeepingFocus(
    $('desk-books'),
    state.desk.books.map((b) => bookCard(b, { addCopies }, { notice: cardNotice(`desk:${b.bookId}`) })),
    $('copies-title'),
  );
}

/** Puts `book` first in the desk's list. */
function deskShows(book) {
  state.desk.books = [book, ...state.desk.books.filter((b) => b.bookId !== book.bookId)];
  renderDeskBooks();
}

async function register(event) {
  event.preventDefault();
  const form = event.currentTarget;
  if (!form.reportValidity()) return;
  const data = new FormData(form);
  const copies = Number(data.get('copies'));
  await act(
    form.querySelector('button[type=submit]'),
    async () => {
      let book;
      try {
        book = await post('/v1/books', {
          title: String(data.get('title')).trim(),
          author: String(data.get('author')).trim(),
          isbn: String(data.get('isbn') || '').trim(),
          totalCopies: copies,
        });
      } catch (e) {
        if (e instanceof ApiError && e.reason === 'DUPLICATE_ISBN' && e.metadata.bookId) {
          offerCopies(e, copies, form);
          return;
        }
        throw e;
      }
      setNotice('register-notice', t('desk.registered', { title: book.title, n: book.totalCopies }), 'done');
      deskShows(book);
      form.reset();
    },
    'register-notice',
  );
}

/** The ISBN is in the catalogue already: offer to add the copies to that book instead. */
function offerCopies(error, copies, form) {
  const existing = error.metadata;
  const title = existing.title || existing.isbn || String(existing.bookId).slice(0, 8);
  setNotice('register-notice', error.message, 'problem', {
    actions: [
      {
        label: t('desk.addToExisting', { n: copies, title }),
        focusKey: 'add-existing',
        onClick: (button) =>
          act(
            button,
            async () => {
              const updated = await post(`/v1/books/${encodeURIComponent(existing.bookId)}:addCopies`, {
                copies,
              });
              setNotice(
                'register-notice',
                t('book.copiesAdded', { title: updated.title, n: updated.totalCopies }),
                'done',
                { focus: true },
              );
              deskShows(updated);
              form.reset();
            },
            'register-notice',
          ),
      },
    ],
  });
}

async function addCopies(book, copies, button) {
  const card = `desk:${book.bookId}`;
  await act(
    button,
    async () => {
      const updated = await post(`/v1/books/${encodeURIComponent(book.bookId)}:addCopies`, { copies });
      state.cardNotices.set(card, {
        text: t('book.copiesAdded', { title: updated.title, n: updated.totalCopies }),
        kind: 'done',
        actions: [],
      });
      speak(state.cardNotices.get(card).text);
      updateBook(updated);
    },
    card,
  );
}

async function searchDesk(event) {
  event.preventDefault();
  const q = $('desk-q').value.trim();
  await act(
    event.submitter,
    async () => {
      const answer = await get(`/v1/books${query({ query: q, pageSize: 50 })}`);
      clearNotice('desk-search-notice');
      for (const card of [...state.cardNotices.keys()]) {
        if (card.startsWith('desk:')) state.cardNotices.delete(card);
      }
      state.desk = { q, books: answer.books || [], searched: true };
      renderDeskBooks();
    },
    'desk-search-notice',
  );
}

function openMemberPage(event) {
  event.preventDefault();
  const form = event.currentTarget;
  if (!form.reportValidity()) return;
  location.hash = `#/members/${encodeURIComponent($('member-id').value.trim())}`;
}

// ------------------------------------------------------------------ language

async function changeLanguage(code) {
  await setLanguage(code, { remember: true });
  $('lang').value = language();
  // Sentences in the old language go.
  clearAllNotices();
  translateStatic();
  renderSession();
  setTitle();
  setLive($('live').dataset.state || 'connecting');
  if (state.catalogue.searched) renderCatalogue();
  renderDeskBooks();
  renderPage();
}

// ------------------------------------------------------------------ start

async function start() {
  await setLanguage(preferredLanguage());
  $('lang').value = language();
  translateStatic();
  $('lang').addEventListener('change', (e) => changeLanguage(e.target.value).catch(problem));
  // Escape dismisses the notice the focus is in.
  document.addEventListener('keydown', (e) => {
    if (e.key !== 'Escape') return;
    const notice = document.activeElement?.closest?.('.notice');
    notice?.querySelector('.notice-close')?.click();
  });
  // A form's notice goes once the form is edited: its cause may be gone.
  for (const [form, slot] of [
    ['signin-form', 'signin-notice'],
    ['search-form', 'search-notice'],
    ['register-form', 'register-notice'],
    ['desk-search-form', 'desk-search-notice'],
  ]) {
    $(form).addEventListener('input', () => clearNotice(slot));
  }
  $('signin-form').addEventListener('submit', signIn);
  $('signin-check').addEventListener('click', async () => {
    await refreshSession();
    renderSession();
    await show(parseRoute(), { focus: true });
    if (!signedIn()) setNotice('signin-notice', t('signin.notYet'));
  });
  $('tab-current').addEventListener('click', () => selectTab('current'));
  $('tab-history').addEventListener('click', () => selectTab('history'));
  $('tab-current').parentElement.addEventListener('keydown', tabKeys);
  $('history-more').addEventListener('click', moreHistory);
  $('sign-out').addEventListener('click', signOut);
  $('search-form').addEventListener('submit', (e) => {
    e.preventDefault();
    act(e.submitter, () => searchCatalogue($('search-q').value.trim()), 'search-notice');
  });
  $('books-more').addEventListener('click', (e) => moreBooks(e.currentTarget));
  $('register-form').addEventListener('submit', register);
  $('desk-search-form').addEventListener('submit', searchDesk);
  $('member-form').addEventListener('submit', openMemberPage);
  window.addEventListener('hashchange', () => show(parseRoute(), { focus: true }).catch(problem));

  await refreshSession();
  renderSession();
  await show(parseRoute());
}

start().catch((e) => {
  console.warn(e);
  setNotice('page-notice', t('error.server'));
});
