// rentalbook's pages: the catalogue, My Page (live), the librarian's desk.
// Routes live in the URL's fragment (#/catalogue, #/mypage, #/desk,
// #/members/<id>); the token is an HttpOnly cookie the browser sends by itself.

import { ApiError, call, errorFor, get, post, query } from './api.js';
import {
  formatTime,
  has,
  language,
  preferredLanguage,
  setLanguage,
  t,
  textLang,
  translateStatic,
} from './i18n.js';
import {
  FINISHED,
  bookCard,
  bookPage,
  bookTitle,
  checkInRow,
  failedRow,
  h,
  holdRow,
  idPart,
  journeyCard,
  loanEntryRow,
  loanRow,
  memberRow,
  noticeEl,
  noticeRow,
  noticeWords,
  replaceKeepingFocus,
  settingsFacts,
  stageLabel,
} from './views.js';

const $ = (id) => document.getElementById(id);

const state = {
  /** `{devSignIn, member: {id, role, expiresAt} | null}` from GET /session. */
  session: { devSignIn: false, member: null },
  /** `{name, memberId}` of the view on screen. */
  route: { name: '' },
  catalogue: { q: '', books: [], next: '', searched: false },
  desk: { q: '', books: [], searched: false, selected: new Set() },
  /** The desk's sub-view (`checkout`, `checkin`, `books`, `members`). */
  deskTab: 'checkout',
  /** Check-out: the member lent to, and this session's loans (newest first). */
  checkout: { member: '', loans: [] },
  /** Check-in: this session's scans (newest first), the last answer, and a session number. */
  checkin: { entries: [], last: null },
  checkinSession: 0,
  /** Books whose copies are open at the desk: `{items, confirm, highlight}` by book id. */
  items: new Map(),
  /** The My Page on screen, whose member, and each journey's last stage. */
  page: null,
  pageOf: '',
  stages: new Map(),
  /** My Page's tab (`current` or `history`) and how much history it shows. */
  tab: 'current',
  historyShown: 0,
  /**
   * Finished journeys read with ListHistory (`{of, journeys, next}`, next ''
   * on the last page, null before the first): My Page carries only the
   * newest journeys, the history goes further back.
   */
  hist: { of: null, journeys: [], next: null },
  /** The signed-in member's open journeys by book id (`{stage, queuePosition}`), for the catalogue. */
  holdings: new Map(),
  /** The signed-in member's own unread notices, for the badge in the header. */
  ownUnread: 0,
  /**
   * Notices up to this moment were marked read (MarkNoticesRead's answer):
   * shown read until the page itself says so (NoticesRead).
   */
  readUpTo: null,
  /** The notices the page on screen has shown, so that new ones are read out. */
  noticeIds: null,
  /** The notice settings on screen (`{of, settings, dirty}`, settings null while not read). */
  settings: { of: null, settings: null, dirty: false },
  /** "Erase my history" asks first: whether it is asking. */
  erasing: false,
  /** Notices not delivered, at the desk (`{notices, next}`, null before the first read). */
  failed: null,
  /** Notices inside cards, by card (`book:<id>`, `desk:<id>`, `journey:<id>`). */
  cardNotices: new Map(),
  /**
   * The desk's staff lists: the hold shelf, overdue loans and loans due on a
   * day (the first page of each, live), members found.
   */
  staff: { shelf: null, overdue: null, due: null, dueDay: '', members: null, membersPrefix: '' },
  /** Entries of the live lists beyond their first page, read with "Show more", by list. */
  further: {},
  /** The staff list followed live (`{sub, path, live}`). */
  staffWatch: null,
  /**
   * The book whose queue is followed live (`{bookId, where, live, status}`,
   * `where` the desk or the book's page): one at a time, since every live
   * list holds one of the few connections a browser opens to a site.
   */
  queueWatch: null,
  /** The book's page on screen: `{bookId, book, queue, items}` (null while not read). */
  bookPage: null,
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
  // Problems, and the check-in's answers, are said at once.
  const region = kind === 'problem' || kind === 'loud' ? $('alert') : $('announce');
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
  stopStaffWatch();
  stopQueueWatch();
  state.staff = { shelf: null, overdue: null, due: null, dueDay: '', members: null, membersPrefix: '' };
  state.further = {};
  state.bookPage = null;
  state.catalogue = { q: '', books: [], next: '', searched: false };
  state.desk = { q: '', books: [], searched: false, selected: new Set() };
  state.checkout = { member: '', loans: [] };
  state.checkin = { entries: [], last: null };
  state.checkinSession += 1;
  state.items = new Map();
  state.loans = new Map();
  state.page = null;
  state.pageOf = null;
  state.stages = new Map();
  state.tab = 'current';
  state.historyShown = HISTORY_PAGE;
  state.hist = { of: null, journeys: [], next: null };
  state.holdings = new Map();
  state.readUpTo = null;
  state.noticeIds = null;
  state.settings = { of: null, settings: null, dirty: false };
  state.erasing = false;
  state.failed = null;
  setOwnUnread(0);
  clearAllNotices();
  $('settings-form').reset();
  clearSettingsRefusal();
  renderPage();
  renderCatalogue();
  renderDeskBooks();
  renderCheckout();
  renderCheckin();
  renderStaff();
  renderFailed();
  renderBookPage();
  for (const id of ['search-q', 'desk-q', 'member-id', 'checkout-member', 'checkout-barcode', 'checkin-barcode', 'lookup-barcode', 'due-day', 'members-prefix']) {
    $(id).value = '';
  }
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
      // The desk opens where the librarian left it.
      return { name: 'desk', sub: DESK_TABS.includes(parts[1]) ? parts[1] : state.deskTab };
    case 'books':
      return parts[1] ? { name: 'book', bookId: decodeURIComponent(parts[1]) } : { name: 'catalogue' };
    case 'members':
      return parts[1]
        ? { name: 'member', memberId: decodeURIComponent(parts[1]) }
        : { name: 'desk', sub: 'members' };
    default:
      return { name: '' };
  }
}

/** The desk's sub-views, in the order of its navigation. */
const DESK_TABS = ['checkout', 'checkin', 'shelf', 'overdue', 'due', 'books', 'members'];

const VIEWS = {
  signin: 'view-signin',
  catalogue: 'view-catalogue',
  mypage: 'view-mypage',
  member: 'view-mypage',
  desk: 'view-desk',
  book: 'view-book',
};

/** The view whose link in the main navigation is marked as the current one. */
const NAV_OF = { member: 'desk', book: 'catalogue' };

async function show(route, { focus = false } = {}) {
  if (!signedIn()) route = { name: 'signin' };
  if ((route.name === 'desk' || route.name === 'member') && !isLibrarian()) route = { name: 'mypage' };
  if (!route.name) {
    history.replaceState(null, '', defaultRoute());
    route = parseRoute();
  }
  const from = state.route.name;
  if (from && from !== route.name) clearNotice('page-notice');
  state.route = route;
  // The header's badge counts the reader's own unread notices: the desk reads
  // them on the way in (My Page, the catalogue and a book's page read them anyway).
  const atDesk = (name) => name === 'desk' || name === 'member';
  if (atDesk(route.name) && !atDesk(from)) loadHoldings();
  $('loading').hidden = true;
  for (const [name, id] of Object.entries(VIEWS)) {
    if (name !== route.name) $(id).hidden = true;
  }
  $(VIEWS[route.name]).hidden = false;
  for (const link of document.querySelectorAll('#nav a[data-route]')) {
    const here = link.dataset.route === (NAV_OF[route.name] ?? route.name);
    if (here) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  if (route.name !== 'desk') stopStaffWatch();
  // A book's queue is followed on its page, or at the desk's copies.
  if (route.name !== 'book' && state.queueWatch?.where === 'book') stopQueueWatch();
  followDeskQueue();
  if (route.name === 'desk') {
    if (location.hash !== `#/desk/${route.sub}`) history.replaceState(null, '', `#/desk/${route.sub}`);
    showDeskTab(route.sub);
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
      state.loans = new Map();
      state.readUpTo = null;
      state.noticeIds = null;
      state.erasing = false;
      clearNotice('mypage-notice');
      clearNotice('live-notice');
      for (const slot of ['notices-notice', 'erase-notice', 'settings-notice']) clearNotice(slot);
      for (const card of [...state.cardNotices.keys()]) {
        if (card.startsWith('journey:')) state.cardNotices.delete(card);
      }
      selectTab('current');
    }
    // Until the stream's first page comes, the last one (with this view's actions).
    renderPage();
    startWatch(of);
    // The history as it is now, beyond what the page carries.
    loadHistory().catch(() => {});
    loadSettings().catch((e) => problem(e, 'settings-notice'));
  } else {
    stopWatch();
  }
  if (focus) {
    // A scanning screen is ready for the next scan; any other view starts at its heading.
    const scanInput = route.name === 'desk' ? deskScanInput(route.sub) : null;
    if (scanInput) {
      scanInput.focus();
    } else {
      const heading = $(VIEWS[route.name]).querySelector('h1');
      heading.setAttribute('tabindex', '-1');
      heading.focus();
    }
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
  if (route.name === 'book') await openBookPage(route.bookId);
}

function setTitle() {
  const r = state.route;
  const key = r.name === 'member' ? 'title.member' : `title.${r.name || 'signin'}`;
  const vars = { id: r.memberId ?? '', title: state.bookPage?.book?.title || t('bookPage.title') };
  document.title = r.name === 'desk' ? t('title.deskTab', { tab: t(`desk.tab.${r.sub}`) }) : t(key, vars);
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
  if (state.bookPage?.bookId === book.bookId) state.bookPage.book = book;
  renderCatalogue();
  renderDeskBooks();
  renderBookPage();
}

/** The copy of a book a list or page shows, if any does. */
function shownBook(bookId) {
  const shown = [...state.catalogue.books, ...state.desk.books, state.bookPage?.book];
  return shown.find((b) => b?.bookId === bookId) ?? null;
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
  let page;
  try {
    page = await get('/v1/mypage');
  } catch {
    // Without them every book offers Reserve; the desk refuses what it must.
    return;
  }
  state.holdings = holdingsOf(page);
  setOwnUnread(noticesOf(page, state.pageOf === '' ? state.readUpTo : null).unread);
  if (state.catalogue.searched) renderCatalogue();
  renderBookPage();
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

/**
 * Reserve, from the catalogue's card or (`place` its notice slot, `list`
 * what holds the button) the book's page.
 */
async function reserve(book, button, { place = `book:${book.bookId}`, list = 'books' } = {}) {
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
      if (place.startsWith('book:')) state.cardNotices.delete(place);
      else clearNotice(place);
      holdFromReservation(book.bookId, r);
      renderCatalogue();
      renderBookPage();
      // Reserve is gone: the focus goes to what replaced it.
      document.querySelector(`#${list} [data-focus-key="mine-${CSS.escape(idPart(book.bookId))}"]`)?.focus();
      speak(reservedText(book.title, r));
      refreshBookSoon(book.bookId);
    },
    place,
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
  const before = JSON.stringify(shownBook(bookId));
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

const TABS = ['current', 'history', 'notices'];

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
    renderNotices(null);
    renderErase(0);
    return;
  }
  const journeys = (page.journeys || []).map(withLoan);
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
  const actions = own ? { rent, giveBack, cancel, reserveAgain, renew } : { giveBack, cancel, renew };
  const card = (j) =>
    journeyCard(j, actions, {
      open: open.has(j.bookId),
      notice: cardNotice(`journey:${j.reservationId}`),
    });
  const current = journeys.filter((j) => !FINISHED.has(j.stage));
  const past = pastJourneys(journeys);
  replaceKeepingFocus(list, current.map(card), $('panel-current'));
  const shown = Math.max(state.historyShown, HISTORY_PAGE);
  replaceKeepingFocus(history, past.slice(0, shown).map(card), $('panel-history'));
  $('history-more').hidden = past.length <= shown && !historyBeyond();
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
  renderNotices(page);
  renderErase(past.length);
}

const ON_LOAN = new Set(['JOURNEY_STAGE_RENTED', 'JOURNEY_STAGE_OVERDUE']);

/**
 * A journey with what a renewal just answered (the new due date, renewals
 * left), until the page itself has the renewal (LoanRenewed): journeys carry
 * `renewals`, `renewalsLeft` and the copy's barcode.
 */
function withLoan(j) {
  const loan = j.rentalId && ON_LOAN.has(j.stage) ? state.loans.get(j.rentalId) : null;
  if (!loan || (j.renewals ?? 0) >= (loan.renewals ?? 0)) return j;
  const out = { ...j, renewals: loan.renewals ?? 0, renewalsLeft: loan.renewalsLeft ?? 0 };
  if (!out.barcode && loan.barcode) out.barcode = loan.barcode;
  if (loan.dueAt && (!out.dueAt || Date.parse(loan.dueAt) > Date.parse(out.dueAt))) {
    out.dueAt = loan.dueAt;
    if (out.stage === 'JOURNEY_STAGE_OVERDUE' && Date.parse(loan.dueAt) > Date.now()) {
      out.stage = 'JOURNEY_STAGE_RENTED';
    }
  }
  return out;
}

/** Changes of stage, read out politely. */
function announceChanges(text) {
  speak(text);
}

const HISTORY_READ = 100;

/** The member's history read, when it is this page's. */
const historyRead = () => (state.hist.of === (state.pageOf ?? '') ? state.hist : null);
const historyBeyond = () => Boolean(historyRead()?.next);

/** Reads the history's first page again, or (`more`) its next page. */
async function loadHistory({ more = false } = {}) {
  const of = state.pageOf ?? '';
  if (state.hist.of !== of) state.hist = { of, journeys: [], next: null };
  const read = state.hist;
  const path = of ? `/v1/members/${encodeURIComponent(of)}/history` : '/v1/mypage/history';
  const answer = await get(`${path}${query({ pageSize: HISTORY_READ, pageToken: more ? read.next : '' })}`);
  if (state.hist !== read) return;
  const got = answer.journeys || [];
  const journeys = more ? read.journeys.concat(got) : got;
  const next = answer.nextPageToken || '';
  // Drawn again only when it shows something new (a redraw moves nothing, but costs).
  const changed = JSON.stringify(journeys) !== JSON.stringify(read.journeys) || Boolean(next) !== Boolean(read.next);
  read.journeys = journeys;
  read.next = next;
  if (changed) renderPage();
}

/**
 * The finished journeys, newest first: the page's own (live), then the
 * older ones of the history read, which the page does not carry.
 */
function pastJourneys(journeys) {
  const past = journeys.filter((j) => FINISHED.has(j.stage));
  const onPage = new Set(journeys.map((j) => j.reservationId));
  for (const j of historyRead()?.journeys || []) {
    if (!onPage.has(j.reservationId)) past.push(j);
  }
  return past;
}

/** "Show more" in the history: the next page, and the focus on its first journey. */
async function moreHistory() {
  const before = $('history').children.length;
  state.historyShown = Math.max(state.historyShown, HISTORY_PAGE) + HISTORY_PAGE;
  if (pastJourneys(state.page?.journeys || []).length < state.historyShown && historyBeyond()) {
    await act($('history-more'), () => loadHistory({ more: true }), 'mypage-notice');
  }
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

async function renew(journey, button) {
  await journeyAction(journey, button, async () => {
    const rental = await post(`/v1/rentals/${encodeURIComponent(journey.rentalId)}:renew`, {});
    state.loans.set(rental.rentalId, rental);
    return t('journey.renewed', { title: bookTitle(journey), time: formatTime(rental.dueAt), n: rental.renewalsLeft ?? 0 });
  });
}

async function reserveAgain(journey, button) {
  await journeyAction(journey, button, async () => {
    const r = await post('/v1/reservations', { bookId: journey.bookId });
    holdFromReservation(journey.bookId, r);
    return reservedText(bookTitle(journey), r);
  });
}

// ------------------------------------------------------------------ My Page: notices

/**
 * A page's notices (newest first) and how many are unread, those up to
 * `readUpTo` shown read already (marked read a moment ago, before the page
 * itself says so).
 */
function noticesOf(page, readUpTo = state.readUpTo) {
  const upTo = readUpTo ? Date.parse(readUpTo) : NaN;
  let pending = 0;
  const notices = (page?.notices || []).map((n) => {
    if (n.read || !(Date.parse(n.createdAt) <= upTo)) return n;
    pending += 1;
    return { ...n, read: true };
  });
  return { notices, unread: Math.max(0, (page?.unreadNotices ?? 0) - pending) };
}

/** The badge beside My Page in the header: the signed-in member's unread notices. */
function setOwnUnread(n) {
  state.ownUnread = n;
  const badge = $('nav-badge');
  badge.hidden = !n;
  badge.textContent = n ? String(n) : '';
  $('nav-unread').textContent = n ? t('nav.unread', { n }) : '';
}

/** The Notices tab: its label with the unread count, the notices, and "Mark all read" on one's own page. */
function renderNotices(page) {
  const { notices, unread } = noticesOf(page);
  const tab = $('tab-notices');
  tab.replaceChildren(
    t('mypage.tab.notices'),
    ...(unread
      ? [
          h('span', { class: 'count-badge', 'aria-hidden': 'true' }, String(unread)),
          h('span', { class: 'visually-hidden' }, t('notices.tabUnread', { n: unread })),
        ]
      : []),
  );
  const own = state.route.name === 'mypage';
  if (own && page) setOwnUnread(unread);
  // Read out the notices that arrive while the page is open.
  const ids = new Set(notices.map((n) => n.noticeId));
  if (page && state.noticeIds) {
    const arrived = notices.filter((n) => !n.read && !state.noticeIds.has(n.noticeId));
    if (arrived.length) speak(arrived.map((n) => t('notices.arrived', { text: noticeWords(n, { plain: true }) })).join(' '));
  }
  if (page) state.noticeIds = ids;
  let count = '';
  if (page) count = !notices.length ? t('notices.none') : unread ? t('notices.unread', { n: unread }) : t('notices.allRead');
  $('notices-count').textContent = count;
  const button = $('notices-read');
  button.hidden = !own || !unread || !notices.length;
  if (button.hidden && document.activeElement === button) $('panel-notices').focus();
  replaceKeepingFocus($('notices-list'), notices.map(noticeRow), $('panel-notices'));
}

/** "Mark all read": every notice up to the newest shown (a newer one that came meanwhile stays unread). */
async function markNoticesRead(event) {
  const newest = (state.page?.notices || [])[0];
  if (!newest) return;
  await act(
    event.currentTarget,
    async () => {
      const answer = await post('/v1/mypage/notices:markRead', { noticeId: newest.noticeId });
      state.readUpTo = answer.upTo || newest.createdAt;
      clearNotice('notices-notice');
      renderPage();
      setNotice('notices-notice', t('notices.markedRead'), 'done');
      // The button is gone.
      $('panel-notices').focus();
    },
    'notices-notice',
  );
}

// ------------------------------------------------------------------ My Page: notice settings

/** Reads the notice settings of the page on screen (a librarian's are read only). */
async function loadSettings() {
  const of = state.pageOf ?? '';
  if (state.settings.of !== of) {
    state.settings = { of, settings: null, dirty: false };
    $('settings-form').reset();
    clearSettingsRefusal();
    renderSettings();
  }
  const mine = state.settings;
  const path = of ? `/v1/members/${encodeURIComponent(of)}/noticeSettings` : '/v1/mypage/noticeSettings';
  const answer = await get(path);
  if (state.settings !== mine) return;
  mine.settings = answer;
  // What the member is typing stays.
  if (!mine.dirty) fillSettings(answer);
  renderSettings();
}

function fillSettings(s) {
  const form = $('settings-form');
  form.elements.email.value = s.email || '';
  for (const radio of form.querySelectorAll('input[name="language"]')) radio.checked = radio.value === s.language;
  for (const field of ['holdReady', 'dueSoon', 'overdue', 'holdExpired']) form.elements[field].checked = Boolean(s[field]);
}

/** The member's own form, or, on a member's page, their settings as facts. */
function renderSettings() {
  const { of, settings } = state.settings;
  const own = state.route.name === 'mypage' && of === '';
  $('settings-form').hidden = !own;
  $('settings-hint').hidden = !own;
  const facts = $('settings-view');
  facts.hidden = own || !settings;
  facts.replaceChildren(...(!own && settings ? settingsFacts(settings) : []));
  $('settings-changed').textContent = !settings
    ? t('settings.loading')
    : settings.updatedAt
      ? t('settings.changed', { time: formatTime(settings.updatedAt) })
      : t('settings.defaults');
}

/** Where a refusal of a settings field goes: beside that field. */
const SETTINGS_FIELDS = { email: 'settings-email' };

function clearSettingsRefusal() {
  for (const id of Object.values(SETTINGS_FIELDS)) {
    $(id).removeAttribute('aria-invalid');
    $(id).setAttribute('aria-describedby', `${id}-hint`);
    clearNotice(`${id}-notice`);
  }
}

/** A field refused (INVALID_FIELD): the sentence beside it, the field marked and focused. */
function refuseSettingsField(error, field, value) {
  const id = SETTINGS_FIELDS[field];
  const key = `settings.invalid.${field}`;
  setNotice(`${id}-notice`, has(key) ? t(key, { value }) : error.message);
  const sentence = $(`${id}-notice`).querySelector('.notice-sentence');
  sentence.id = `${id}-error`;
  const input = $(id);
  input.setAttribute('aria-invalid', 'true');
  input.setAttribute('aria-describedby', `${id}-error ${id}-hint`);
  input.focus();
}

async function saveSettings(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const mine = state.settings;
  // Nothing to save over before the settings are read.
  if (!mine.settings) return;
  const data = new FormData(form);
  const body = {
    email: String(data.get('email') || '').trim(),
    language: String(data.get('language') || mine.settings.language || ''),
    holdReady: data.has('holdReady'),
    dueSoon: data.has('dueSoon'),
    overdue: data.has('overdue'),
    holdExpired: data.has('holdExpired'),
  };
  await act(
    event.submitter || form.querySelector('button[type=submit]'),
    async () => {
      let saved;
      try {
        saved = await call('PATCH', '/v1/mypage/noticeSettings', body);
      } catch (e) {
        const field = e instanceof ApiError && e.reason === 'INVALID_FIELD' ? String(e.metadata.field ?? '') : '';
        if (SETTINGS_FIELDS[field]) {
          clearNotice('settings-notice');
          refuseSettingsField(e, field, body[field]);
          return;
        }
        throw e;
      }
      if (state.settings !== mine) return;
      mine.settings = saved;
      mine.dirty = false;
      fillSettings(saved);
      clearSettingsRefusal();
      renderSettings();
      setNotice('settings-notice', t('settings.saved'), 'done');
    },
    'settings-notice',
  );
}

// ------------------------------------------------------------------ My Page: erasing the history

/** "Erase my history", under the history on one's own page while there is any. */
function renderErase(finished) {
  const own = state.route.name === 'mypage';
  const section = $('erase');
  if (!own) state.erasing = false;
  section.hidden = !own || (!finished && !state.erasing);
  $('erase-ask').hidden = state.erasing;
  $('erase-confirm').hidden = !state.erasing;
  if (section.hidden && section.contains(document.activeElement)) $('panel-history').focus();
}

function askErase() {
  state.erasing = true;
  clearNotice('erase-notice');
  renderPage();
  $('erase-yes').focus();
}

function keepHistory() {
  state.erasing = false;
  renderPage();
  $('erase-ask').focus();
}

/**
 * Erases the member's finished history everywhere (HistoryErased): the
 * page's finished journeys go as view-svc applies it, live; what the history
 * read held was finished before, so it goes at once.
 */
async function eraseHistory(event) {
  await act(
    event.currentTarget,
    async () => {
      await post('/v1/mypage/history:erase', {});
      state.erasing = false;
      state.hist = { of: state.pageOf ?? '', journeys: [], next: '' };
      state.historyShown = HISTORY_PAGE;
      renderPage();
      setNotice('erase-notice', t('erase.done'), 'done', { focus: true });
    },
    'erase-notice',
  );
}

// ------------------------------------------------------------------ desk

function renderDeskBooks() {
  const actions = { addCopies, toggleItems, askItem, keepItem, changeItem, select: selectForMerge };
  const w = state.queueWatch?.where === 'desk' ? state.queueWatch : null;
  replaceKeepingFocus(
    $('desk-books-list'),
    state.desk.books.map((b) =>
      bookCard(b, actions, {
        notice: cardNotice(`desk:${b.bookId}`),
        items: state.items.get(b.bookId) ?? null,
        queueLive: w?.bookId === b.bookId ? w.status : null,
        selected: state.desk.selected.has(b.bookId),
      }),
    ),
    $('copies-title'),
  );
  renderMergeBar();
}

// ------------------------------------------------------------------ desk: merging books

/** The books selected to merge, oldest (the one kept) first. */
function booksToMerge() {
  return state.desk.books
    .filter((b) => state.desk.selected.has(b.bookId))
    .sort((a, b) => String(a.registeredAt).localeCompare(String(b.registeredAt)) || a.bookId.localeCompare(b.bookId));
}

function selectForMerge(book, checked) {
  if (checked) state.desk.selected.add(book.bookId);
  else state.desk.selected.delete(book.bookId);
  renderMergeBar();
}

/** Says what merging the selected books does, once two or more are selected. */
function renderMergeBar() {
  const chosen = booksToMerge();
  const bar = $('merge-bar');
  bar.hidden = chosen.length < 2;
  if (bar.hidden) return;
  $('merge-summary').textContent = t('merge.summary', { n: chosen.length, title: chosen[0].title });
}

async function mergeSelected(event) {
  const chosen = booksToMerge();
  if (chosen.length < 2) return;
  await act(
    event.currentTarget,
    async () => {
      const kept = await post('/v1/books:merge', { bookIds: chosen.map((b) => b.bookId) });
      const gone = new Set(chosen.map((b) => b.bookId).filter((id) => id !== kept.bookId));
      state.desk.selected = new Set();
      state.desk.books = state.desk.books.filter((b) => !gone.has(b.bookId));
      for (const id of gone) state.items.delete(id);
      setNotice('merge-notice', t('merge.done', { title: kept.title, n: kept.totalCopies }), 'done', {
        focus: true,
      });
      updateBook(kept);
      renderDeskBooks();
    },
    'merge-notice',
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
      state.desk = { q, books: answer.books || [], searched: true, selected: new Set() };
      clearNotice('merge-notice');
      renderDeskBooks();
      followDeskQueue();
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

// ------------------------------------------------------------------ desk: navigation

/** Shows one of the desk's sub-views and marks its link as the current one. */
function showDeskTab(sub) {
  state.deskTab = sub;
  for (const name of DESK_TABS) $(`desk-${name}`).hidden = name !== sub;
  for (const link of document.querySelectorAll('#desk-nav a[data-desk]')) {
    if (link.dataset.desk === sub) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  if (sub === 'checkout') renderCheckout();
  if (sub === 'checkin') renderCheckin();
  // Notices not delivered, as they are now.
  if (sub === 'members') loadFailed().catch((e) => problem(e, 'failed-notice'));
  // The hold shelf, the overdue loans and the loans due follow the events live while open.
  if (STAFF_LIVE[sub]) startStaffWatch(sub);
  else stopStaffWatch();
  // Copies move while the librarian is elsewhere: read the open lists again.
  if (sub === 'books') for (const bookId of state.items.keys()) loadItems(bookId).catch(() => {});
  followDeskQueue();
}

/** The input a scanning screen waits in: the member first, then the copies. */
function deskScanInput(sub) {
  if (sub === 'checkout') return state.checkout.member ? $('checkout-barcode') : $('checkout-member');
  if (sub === 'checkin') return $('checkin-barcode');
  return null;
}

/**
 * Scans are taken one after another, in the order they were made: a scanner
 * types the next code while the desk still answers the last one.
 */
const scanQueues = { checkout: Promise.resolve(), checkin: Promise.resolve() };
function enqueue(queue, work) {
  scanQueues[queue] = scanQueues[queue].then(work, work);
}

/** Every scan's row gets a key of its own, so that the lists can redraw it. */
let scanCount = 0;

/** Book titles by id, for the desk's lists (a rental and a check-in name only the book). */
const titles = new Map();
async function titleOf(bookId) {
  if (!bookId) return '';
  if (titles.has(bookId)) return titles.get(bookId);
  try {
    const book = await get(`/v1/books/${encodeURIComponent(bookId)}`);
    titles.set(bookId, book.title);
    return book.title;
  } catch {
    return t('journey.untitled', { id: String(bookId).slice(0, 8) });
  }
}

// ------------------------------------------------------------------ desk: check out

function renderCheckout() {
  const c = state.checkout;
  const lending = Boolean(c.member);
  $('checkout-member-form').hidden = lending;
  $('checkout-lending').hidden = !lending;
  if (lending) {
    $('checkout-who').textContent = t('checkout.lendingTo', { id: c.member });
    $('checkout-page').href = `#/members/${encodeURIComponent(c.member)}`;
  }
  const title = $('checkout-list-title');
  title.hidden = !lending || !c.loans.length;
  title.textContent = t('checkout.listTitle', { id: c.member, n: c.loans.filter((l) => l.rental).length });
  replaceKeepingFocus($('checkout-list'), c.loans.map((l) => loanRow(l)), $('checkout-barcode'));
}

function startLending(event) {
  event.preventDefault();
  const form = event.currentTarget;
  if (!form.reportValidity()) return;
  const member = $('checkout-member').value.trim();
  clearNotice('checkout-member-notice');
  state.checkout = { member, loans: [] };
  renderCheckout();
  $('checkout-barcode').value = '';
  $('checkout-barcode').focus();
  speak(t('checkout.started', { id: member }));
}

function anotherMember() {
  state.checkout = { member: '', loans: [] };
  clearNotice('checkout-notice');
  $('checkout-member').value = '';
  renderCheckout();
  $('checkout-member').focus();
}

function scanOut(event) {
  event.preventDefault();
  const input = $('checkout-barcode');
  const barcode = input.value.trim();
  input.value = '';
  input.focus();
  if (!barcode) return;
  // A new scan: the last one's refusal is about another copy.
  clearNotice('checkout-notice');
  const loan = { key: `out-${++scanCount}`, barcode, member: state.checkout.member, rental: null };
  state.checkout.loans.unshift(loan);
  renderCheckout();
  enqueue('checkout', () => lend(loan));
}

async function lend(loan) {
  const still = () => state.checkout.member === loan.member && state.checkout.loans.includes(loan);
  try {
    const rental = await post('/v1/desk:checkOut', { memberId: loan.member, barcode: loan.barcode });
    loan.title = await titleOf(rental.bookId);
    if (!still()) return;
    // The member has this copy already (scanned twice): the same loan, listed once.
    if (state.checkout.loans.some((l) => l.rental?.rentalId === rental.rentalId)) {
      state.checkout.loans = state.checkout.loans.filter((l) => l !== loan);
      renderCheckout();
      setNotice('checkout-notice', t('checkout.already', { barcode: rental.barcode || loan.barcode, id: loan.member }), 'done');
      return;
    }
    loan.rental = rental;
    renderCheckout();
    speak(t('checkout.lent', { title: loan.title, barcode: rental.barcode || loan.barcode, time: formatTime(rental.dueAt) }));
  } catch (e) {
    if (still()) {
      state.checkout.loans = state.checkout.loans.filter((l) => l !== loan);
      renderCheckout();
    }
    await problem(aboutMember(e, loan.member), 'checkout-notice');
  }
}

/**
 * A refusal that speaks to the member ("You have this book on loan") said
 * about them instead, for the librarian lending to them.
 */
function aboutMember(error, member) {
  const key = `checkout.reason.${error?.reason}`;
  if (!(error instanceof ApiError) || !has(key)) return error;
  const n = Number(error.metadata.limit ?? error.metadata.max ?? 0);
  return new ApiError(t(key, { id: member, n }), error);
}

// ------------------------------------------------------------------ desk: check in

const CHECK_IN = 'CHECK_IN_ACTION_';

/** The big words for a check-in's answer, and the sentence under them. */
function checkInWords(entry) {
  const a = entry.settled || entry.answer;
  const action = String(a.action || '').replace(CHECK_IN, '') || 'UNSPECIFIED';
  const vars = { title: entry.title || '', barcode: entry.barcode, member: a.heldForMemberId || '' };
  return {
    action,
    loud: t(`checkin.loud.${action}`, vars),
    detail: t(`checkin.detail.${action}`, vars),
    found: entry.answer.found ? t('checkin.found', vars) : '',
    settled: Boolean(entry.settled),
  };
}

function renderCheckin() {
  const c = state.checkin;
  const loud = $('checkin-answer');
  const last = c.last;
  loud.hidden = !last;
  if (last) {
    const w = checkInWords(last);
    loud.dataset.action = w.action;
    loud.replaceChildren(
      ...[
        h('p', { class: 'loud-words' }, w.loud),
        h('p', { class: 'loud-detail' }, w.detail),
        w.found ? h('p', { class: 'loud-found' }, w.found) : null,
        w.settled ? h('p', { class: 'loud-detail' }, t('checkin.settledNote')) : null,
      ].filter(Boolean),
    );
  }
  const title = $('checkin-list-title');
  const done = c.entries.filter((e) => e.answer).length;
  title.hidden = !c.entries.length;
  title.textContent = t('checkin.listTitle', { n: done });
  replaceKeepingFocus($('checkin-list'), c.entries.map((e) => checkInRow(e, e.answer ? checkInWords(e) : null)), $('checkin-barcode'));
}

function scanIn(event) {
  event.preventDefault();
  const input = $('checkin-barcode');
  const barcode = input.value.trim();
  input.value = '';
  input.focus();
  if (!barcode) return;
  clearNotice('checkin-notice');
  const entry = { key: `in-${++scanCount}`, barcode, answer: null, settled: null, at: new Date().toISOString() };
  state.checkin.entries.unshift(entry);
  renderCheckin();
  enqueue('checkin', () => takeBack(entry));
}

async function takeBack(entry) {
  const session = state.checkinSession;
  try {
    const answer = await post('/v1/desk:checkIn', { barcode: entry.barcode });
    entry.title = await titleOf(answer.bookId || answer.rental?.bookId);
    entry.answer = answer;
    if (session !== state.checkinSession) return;
    state.checkin.last = entry;
    renderCheckin();
    const w = checkInWords(entry);
    speak([w.loud, w.detail, w.found].filter(Boolean).join(' '), 'loud');
    if (answer.action === `${CHECK_IN}SET_ASIDE` && answer.rental?.rentalId) followSetAside(entry, session);
  } catch (e) {
    if (session === state.checkinSession) {
      state.checkin.entries = state.checkin.entries.filter((x) => x !== entry);
      // The last answer was about another copy: only the refusal shows.
      state.checkin.last = null;
      renderCheckin();
    }
    await problem(e, 'checkin-notice');
  }
}

/** Delays between asking again whether a set-aside return went through. */
const SET_ASIDE_WAITS = [1000, 2000, 4000, 8000, 15000, 30000];

/**
 * A copy set aside while the desk was away: its return completes once the
 * desk answers again. Asks after the rental now and then; once the return is
 * confirmed, the copy's own record says whether it is held for someone.
 */
async function followSetAside(entry, session) {
  const rentalId = entry.answer.rental.rentalId;
  for (let i = 0; i < 40; i++) {
    await new Promise((done) => setTimeout(done, SET_ASIDE_WAITS[Math.min(i, SET_ASIDE_WAITS.length - 1)]));
    if (session !== state.checkinSession || !signedIn()) return;
    let settled = null;
    try {
      const rental = await get(`/v1/rentals/${encodeURIComponent(rentalId)}`);
      if (rental.returnConfirmation !== 'RETURN_CONFIRMATION_CONFIRMED') continue;
      const item = await get(`/v1/items:lookUp${query({ barcode: entry.barcode })}`);
      settled =
        item.reservationStatus === 'RESERVATION_STATUS_READY' && item.memberId
          ? { action: `${CHECK_IN}HOLD_SHELF`, heldForMemberId: item.memberId }
          : { action: `${CHECK_IN}RESHELVE` };
    } catch {
      continue; // Still away: ask again later.
    }
    if (session !== state.checkinSession) return;
    entry.settled = settled;
    renderCheckin();
    const w = checkInWords(entry);
    speak(t('checkin.settled', { barcode: entry.barcode, loud: w.loud }), 'loud');
    return;
  }
}

// ------------------------------------------------------------------ desk: copies

/** Opens or closes a book's copies in the desk's list. */
async function toggleItems(book, button) {
  const open = state.items.get(book.bookId);
  if (open) {
    state.items.delete(book.bookId);
    renderDeskBooks();
    followDeskQueue();
    return;
  }
  state.items.set(book.bookId, { items: null, confirm: null });
  renderDeskBooks();
  await act(button, () => loadItems(book.bookId), `desk:${book.bookId}`);
}

async function loadItems(bookId, { attempt = 0 } = {}) {
  // The queue followed live is fresher than one read now.
  const followed = () => state.queueWatch?.where === 'desk' && state.queueWatch.bookId === bookId && state.queueWatch.seen;
  const [answer, queue] = await Promise.all([
    get(`/v1/books/${encodeURIComponent(bookId)}/items`),
    // Without the queue the copies still show.
    followed() ? null : get(`/v1/books/${encodeURIComponent(bookId)}/queue${query({ pageSize: STAFF_PAGE })}`).catch(() => null),
  ]);
  const view = state.items.get(bookId);
  if (!view) return;
  const items = answer.items || [];
  const book = state.desk.books.find((b) => b.bookId === bookId);
  // The desk learns a book's copies a moment after they are registered.
  if (!items.length && (book?.totalCopies ?? 0) > 0 && attempt < 8) {
    await new Promise((done) => setTimeout(done, 150 * (attempt + 1)));
    return loadItems(bookId, { attempt: attempt + 1 });
  }
  view.items = items;
  if (queue && !followed()) view.queue = queue;
  renderDeskBooks();
  followDeskQueue();
}

/** Withdraw or Mark lost pressed: the row asks first. */
function askItem(book, item, action) {
  const view = state.items.get(book.bookId);
  if (!view) return;
  view.confirm = { barcode: item.barcode, action };
  renderDeskBooks();
  document.querySelector(`[data-focus-key="confirm-${CSS.escape(idPart(item.barcode))}"]`)?.focus();
}

/** "Keep it": the question goes, the focus back to the button that asked it. */
function keepItem(book, item) {
  const view = state.items.get(book.bookId);
  if (!view) return;
  const action = view.confirm?.action;
  view.confirm = null;
  renderDeskBooks();
  document.querySelector(`[data-focus-key="${action}-${CSS.escape(idPart(item.barcode))}"]`)?.focus();
}

async function changeItem(book, item, button) {
  const view = state.items.get(book.bookId);
  const action = view?.confirm?.action;
  if (!action) return;
  const card = `desk:${book.bookId}`;
  await act(
    button,
    async () => {
      try {
        await post(action === 'withdraw' ? '/v1/items:withdraw' : '/v1/items:markLost', { barcode: item.barcode });
      } finally {
        view.confirm = null;
      }
      state.cardNotices.set(card, {
        text: t(action === 'withdraw' ? 'items.withdrawn' : 'items.lost', { barcode: item.barcode }),
        kind: 'done',
        actions: [],
      });
      speak(state.cardNotices.get(card).text);
      const [updated] = await Promise.all([
        get(`/v1/books/${encodeURIComponent(book.bookId)}`).catch(() => null),
        loadItems(book.bookId),
      ]);
      if (updated) updateBook(updated);
      else renderDeskBooks();
    },
    card,
  );
  // Done or refused, the question is gone: the focus goes to the copy's row.
  document.querySelector(`[data-focus-key="item-${CSS.escape(idPart(item.barcode))}"]`)?.focus();
}

/** "Show its book": the copy's book in the list, with its copies open. */
async function lookUpItem(event) {
  event.preventDefault();
  const form = event.currentTarget;
  if (!form.reportValidity()) return;
  const barcode = $('lookup-barcode').value.trim();
  await act(
    event.submitter,
    async () => {
      const item = await get(`/v1/items:lookUp${query({ barcode })}`);
      const book = await get(`/v1/books/${encodeURIComponent(item.bookId)}`);
      clearNotice('lookup-notice');
      // Opened last: its queue is the one followed live.
      state.items.delete(book.bookId);
      state.items.set(book.bookId, { items: null, confirm: null, highlight: item.barcode });
      deskShows(book);
      await loadItems(book.bookId);
      const row = document.querySelector(`[data-focus-key="item-${CSS.escape(idPart(item.barcode))}"]`);
      row?.focus();
      row?.scrollIntoView({ block: 'nearest' });
    },
    'lookup-notice',
  );
}

// ------------------------------------------------------------------ live lists

/**
 * A list followed live over a watch stream (Server-Sent Events, the token
 * cookie sent with it): `onData(list, raw)` gets every message as it comes
 * (`raw` its text, the same again for the stream's heartbeat). When the
 * stream fails, the list is read once with `list` (`onData(list)`), and the
 * stream opened again a little later (1 s, doubling up to 30 s);
 * `onFailure(error)` says what to do when that read fails too: `retry`
 * (later, quietly) or `stop` (it has shown why). `onRefusal(error)` shows
 * why the service ended a stream; `onState` hears `connecting`, `live` and
 * `reconnecting`.
 */
class LiveList {
  constructor({ watch, list, onData, onState, onFailure, onRefusal }) {
    Object.assign(this, { watch, list, onData, onState, onFailure, onRefusal });
    this.source = null;
    this.timer = 0;
    this.retryMs = 1000;
    this.closed = false;
  }

  open() {
    this.onState('connecting');
    const source = new EventSource(this.watch);
    this.source = source;
    source.onopen = () => {
      this.retryMs = 1000;
    };
    source.onmessage = (event) => {
      if (this.source !== source) return;
      this.onState('live');
      let data;
      try {
        data = JSON.parse(event.data);
      } catch (e) {
        console.warn('an unreadable list', e);
        return;
      }
      this.onData(data, event.data);
    };
    source.addEventListener('error', (event) => {
      if (this.source !== source) return;
      this.onState('reconnecting');
      const failed = typeof event.data === 'string';
      if (!failed && source.readyState !== EventSource.CLOSED) return; // The browser reconnects by itself.
      let body = null;
      if (failed) {
        try {
          body = JSON.parse(event.data);
        } catch {
          body = null;
        }
      }
      source.close();
      this.source = null;
      // The edge's `error` event: the stream failed at the service. An
      // expired sign-in (16) is found out by the read that follows.
      if (body && body.code !== 16) this.onRefusal(errorFor(STATUS_OF_CODE[body.code] ?? 400, body, null));
      this.recover();
    });
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    this.source?.close();
    this.source = null;
  }

  /** The stream failed: the list as it is now, then the stream again a little later. */
  async recover() {
    try {
      const data = await get(this.list);
      if (this.closed) return;
      this.onData(data);
    } catch (e) {
      if (this.closed || (await this.onFailure(e)) === 'stop') return;
    }
    const wait = this.retryMs;
    this.retryMs = Math.min(this.retryMs * 2, 30000);
    this.timer = setTimeout(() => {
      if (!this.closed && !this.source) this.open();
    }, wait);
  }
}

/**
 * A failed read of a live list, shown at `place`: `stop` when it is the
 * sign-in, or a refusal that asking again would not change.
 */
async function liveFailure(error, place) {
  await problem(error, place);
  if (!signedIn()) return 'stop';
  const refused = error instanceof ApiError && [400, 403, 404].includes(error.status);
  return refused ? 'stop' : 'retry';
}

// ------------------------------------------------------------------ desk: staff views

/**
 * The parts that follow a staff list live: its stream and its list (read
 * when the stream fails, and for the entries beyond the stream's page), the
 * field that holds the entries and what tells one from another.
 */
const STAFF_LIVE = {
  shelf: { watch: '/v1/staff/holdShelf:watch', list: '/v1/staff/holdShelf', entries: 'holds', key: 'reservationId' },
  overdue: { watch: '/v1/staff/overdue:watch', list: '/v1/staff/overdue', entries: 'loans', key: 'rentalId' },
  due: { watch: '/v1/staff/due:watch', list: '/v1/staff/due', entries: 'loans', key: 'rentalId' },
};
/** Entries a live list's stream sends (its first page), and each further page "Show more" reads. */
const STAFF_PAGE = 100;

/** A staff list's stream or list request; `more` are further query parameters. */
function staffPath(sub, kind, more = {}) {
  // The loans due on the day the stream answers for ("today" when it opened).
  const day = sub === 'due' ? (kind === 'list' && state.staff.due?.day) || state.staff.dueDay : undefined;
  return `${STAFF_LIVE[sub][kind]}${query({ day, pageSize: STAFF_PAGE, ...more })}`;
}

function setStaffLive(sub, status) {
  setLiveState($(`${sub}-live`), status);
  if (status === 'live') clearNotice(`${sub}-notice`, { problems: true });
}

function stopStaffWatch() {
  if (state.staffWatch) {
    state.staffWatch.live.close();
    state.staffWatch = null;
  }
}

/** Entries beyond a live list's first page, as "Show more" read them: `{items, next, chain}`. */
const noFurther = () => ({ items: [], next: '', chain: Promise.resolve(), refreshing: false });

/** Follows the list `sub` live (the stream opened again when what it asks for changed: another day). */
function startStaffWatch(sub) {
  const path = staffPath(sub, 'watch');
  if (state.staffWatch?.sub === sub && state.staffWatch.path === path) return;
  stopStaffWatch();
  // The list is read anew: its first page, "Show more" for the rest.
  state.further[sub] = noFurther();
  const watch = { sub, path, raw: null };
  watch.live = new LiveList({
    watch: path,
    list: staffPath(sub, 'list'),
    onState: (status) => setStaffLive(sub, status),
    onData: (list, raw) => {
      // The heartbeat sends the same list again.
      if (raw !== undefined && raw === watch.raw) return;
      watch.raw = raw ?? null;
      state.staff[sub] = list;
      renderStaff();
      refreshFurther(sub);
    },
    onRefusal: (e) => setNotice(`${sub}-notice`, e.message),
    onFailure: (e) => liveFailure(e, `${sub}-notice`),
  });
  state.staffWatch = watch;
  renderStaff();
  watch.live.open();
}

/** The entries shown: the live page's, then those read beyond it (each once). */
function staffEntries(sub) {
  const { entries, key } = STAFF_LIVE[sub];
  const first = state.staff[sub]?.[entries] || [];
  const seen = new Set(first.map((e) => e[key]));
  return first.concat((state.further[sub]?.items || []).filter((e) => !seen.has(e[key])));
}

/** Where "Show more" goes on from: after the last entry read, or after the live page. */
function furtherToken(sub) {
  const f = state.further[sub];
  return f?.items.length ? f.next : state.staff[sub]?.nextPageToken || '';
}

/** Runs reads of a list's further entries one after another, in order. */
function queueFurther(sub, work) {
  const f = state.further[sub];
  const run = f.chain.then(work);
  f.chain = run.catch(() => {});
  return run;
}

/**
 * Reads the entries after the live page: the next page (`more`), or again
 * as many as were shown, from where the live page ends now (entries joined
 * or left it, so those after it moved); when they went to the end of the
 * list, to its end again, so that entries that joined there show too.
 */
async function readFurther(sub, { more = false } = {}) {
  const f = state.further[sub];
  const page = state.staff[sub];
  let items = more ? f.items : [];
  let token = more ? furtherToken(sub) : page?.nextPageToken || '';
  let wanted = more ? STAFF_PAGE : f.items.length + (f.next ? 0 : STAFF_PAGE);
  while (token && wanted > 0) {
    const answer = await get(staffPath(sub, 'list', { pageToken: token, pageSize: Math.min(wanted, STAFF_PAGE) }));
    if (state.further[sub] !== f) return;
    const got = answer[STAFF_LIVE[sub].entries] || [];
    items = items.concat(got);
    wanted -= got.length;
    token = answer.nextPageToken || '';
    if (!got.length) break;
  }
  f.items = items;
  f.next = token;
  renderStaff();
}

/** The live page changed: the entries shown beyond it are read again. */
function refreshFurther(sub) {
  const f = state.further[sub];
  if (!f?.items.length || f.refreshing) return;
  f.refreshing = true;
  queueFurther(sub, () => {
    f.refreshing = false;
    return readFurther(sub);
  }).catch(() => {
    // Kept as they were; the next change of the list reads them again.
  });
}

/** "Show more": the next page of the list, and the focus on its first entry. */
async function moreStaff(sub, button) {
  await act(
    button,
    async () => {
      const list = $(`${sub}-list`);
      const before = list.children.length;
      await queueFurther(sub, () => readFurther(sub, { more: true }));
      const added = list.children.length - before;
      const first = list.children[before]?.querySelector('a');
      if (first) first.focus();
      if (added > 0) speak(t('mypage.moreShown', { n: added }));
    },
    `${sub}-notice`,
  );
}

/** Focus on a heading (or anything else) that is not in the Tab order. */
function focusOn(el) {
  if (!el.hasAttribute('tabindex')) el.setAttribute('tabindex', '-1');
  el.focus();
}

/** "Show more" under a list: there while it has more; the focus leaves it when it goes. */
function showMore(sub) {
  const button = $(`${sub}-more`);
  button.hidden = !furtherToken(sub);
  if (button.hidden && document.activeElement === button) focusOn($(`${sub}-title`));
}

/** ", 100 of 130 shown" when the list shows only some of them. */
function shownOf(shown, total) {
  return shown < total ? ` ${t('staff.shownOf', { shown, n: total })}` : '';
}

function renderStaff() {
  renderShelf();
  renderOverdue();
  renderDue();
  renderMembers();
}

function renderShelf() {
  const shelf = state.staff.shelf;
  const holds = staffEntries('shelf');
  const pull = holds.filter((e) => e.toPull && e.barcode);
  const box = $('shelf-pull');
  box.hidden = !pull.length;
  box.replaceChildren(
    ...(pull.length
      ? [
          h(
            'p',
            { class: 'pull-words' },
            `${t('shelf.pull')} `,
            ...pull.map((e) => h('span', { class: 'barcode' }, e.barcode)),
          ),
          h('p', { class: 'pull-detail' }, t('shelf.pullDetail', { n: shelf.toPull ?? pull.length })),
        ]
      : []),
  );
  const total = shelf?.total ?? holds.length;
  $('shelf-count').textContent = !shelf
    ? ''
    : holds.length
      ? t('shelf.count', { n: total }) + shownOf(holds.length, total)
      : t('shelf.empty');
  replaceKeepingFocus($('shelf-list'), holds.map(holdRow), $('shelf-title'));
  showMore('shelf');
}

function renderOverdue() {
  const overdue = state.staff.overdue;
  const loans = staffEntries('overdue');
  const total = overdue?.total ?? loans.length;
  $('overdue-count').textContent = !overdue
    ? ''
    : loans.length
      ? t('overdue.count', { n: total }) + shownOf(loans.length, total)
      : t('overdue.empty');
  replaceKeepingFocus($('overdue-list'), loans.map(loanEntryRow), $('overdue-title'));
  showMore('overdue');
}

function renderDue() {
  const due = state.staff.due;
  const loans = staffEntries('due');
  const day = due?.day ? formatDay(due.day) : '';
  const total = due?.total ?? loans.length;
  $('due-count').textContent = !due
    ? ''
    : t(loans.length ? 'due.count' : 'due.empty', { n: total, day, zone: due.timeZone || '' }) +
      shownOf(loans.length, total);
  replaceKeepingFocus($('due-list'), loans.map(loanEntryRow), $('due-title'));
  showMore('due');
}

/** "2026-01-10" in the page's language, as a day (no time, no zone shift). */
function formatDay(day) {
  const [y, m, d] = day.split('-').map(Number);
  if (!y || !m || !d) return day;
  const locale = language() === 'ko' ? 'ko-KR' : undefined;
  try {
    return new Intl.DateTimeFormat(locale, { dateStyle: 'medium', timeZone: 'UTC' }).format(Date.UTC(y, m - 1, d));
  } catch {
    return day;
  }
}

/** "Show": the loans due on the day typed (today when empty), followed live. */
function showDue(event) {
  event.preventDefault();
  const day = $('due-day').value.trim();
  if (day !== state.staff.dueDay) {
    // Another day's loans are not this day's.
    state.staff.dueDay = day;
    state.staff.due = null;
  }
  clearNotice('due-notice');
  startStaffWatch('due');
}

function renderMembers() {
  const found = state.staff.members;
  const members = found?.members || [];
  $('members-count').textContent = !found
    ? ''
    : members.length
      ? t(found.nextPageToken ? 'members.countMore' : 'members.count', { n: members.length, prefix: state.staff.membersPrefix })
      : t('members.none', { prefix: state.staff.membersPrefix });
  replaceKeepingFocus($('members-list'), members.map(memberRow), $('members-prefix'));
}

let membersAsked = 0;
async function findMembers(prefix) {
  const asked = ++membersAsked;
  const answer = await get(`/v1/staff/members${query({ prefix, pageSize: 20 })}`);
  // A later keystroke's answer wins.
  if (asked !== membersAsked) return;
  clearNotice('members-notice', { problems: true });
  state.staff.members = answer;
  state.staff.membersPrefix = prefix;
  renderMembers();
}

let membersTimer = 0;
/** Type-ahead: the members whose id starts with what is typed, a moment after the last key. */
function membersTyped() {
  clearTimeout(membersTimer);
  const prefix = $('members-prefix').value.trim();
  membersTimer = setTimeout(() => {
    if (!prefix) {
      membersAsked += 1;
      state.staff.members = null;
      renderMembers();
      return;
    }
    findMembers(prefix).catch((e) => problem(e, 'members-notice'));
  }, 250);
}

function searchMembers(event) {
  event.preventDefault();
  clearTimeout(membersTimer);
  act(event.submitter, () => findMembers($('members-prefix').value.trim()), 'members-notice');
}

// ------------------------------------------------------------------ desk: notices not delivered

const FAILED_PAGE = 20;

/** Reads the notices whose e-mail failed, newest first: the first page again, or (`more`) the next. */
async function loadFailed({ more = false } = {}) {
  const before = state.failed;
  const answer = await get(
    `/v1/staff/notices/failed${query({ pageSize: FAILED_PAGE, pageToken: more ? before?.next : '' })}`,
  );
  const got = answer.notices || [];
  state.failed = { notices: more && before ? before.notices.concat(got) : got, next: answer.nextPageToken || '' };
  clearNotice('failed-notice', { problems: true });
  renderFailed();
}

function renderFailed() {
  const failed = state.failed;
  const notices = failed?.notices || [];
  $('failed-count').textContent = !failed
    ? ''
    : !notices.length
      ? t('failed.none')
      : t(failed.next ? 'failed.countMore' : 'failed.count', { n: notices.length });
  replaceKeepingFocus($('failed-list'), notices.map(failedRow), $('failed-title'));
  const more = $('failed-more');
  more.hidden = !failed?.next;
  if (more.hidden && document.activeElement === more) focusOn($('failed-title'));
}

/** "Show more": the next page, and the focus on its first notice's member. */
async function moreFailed(button) {
  await act(
    button,
    async () => {
      const list = $('failed-list');
      const before = list.children.length;
      await loadFailed({ more: true });
      const first = list.children[before]?.querySelector('a');
      if (first) first.focus();
      const added = list.children.length - before;
      if (added > 0) speak(t('mypage.moreShown', { n: added }));
    },
    'failed-notice',
  );
}

// ------------------------------------------------------------------ a book's queue, live

function stopQueueWatch() {
  if (state.queueWatch) {
    state.queueWatch.live.close();
    state.queueWatch = null;
  }
}

/**
 * Follows a book's queue live (WatchBookQueue; a member gets its aggregate
 * form) for the desk's copies or the book's page (`where`). Each change of
 * it after the first reads again what moves with it: the copies, and on the
 * book's page the counts and what the reader has of the book.
 */
function followQueue(bookId, where) {
  if (state.queueWatch?.bookId === bookId && state.queueWatch.where === where) return;
  stopQueueWatch();
  const follow = { bookId, where, status: null, raw: null, seen: false };
  const place = where === 'desk' ? `desk:${bookId}` : 'book-notice';
  follow.live = new LiveList({
    watch: `/v1/staff/queue:watch${query({ bookId, pageSize: STAFF_PAGE })}`,
    list: `/v1/books/${encodeURIComponent(bookId)}/queue${query({ pageSize: STAFF_PAGE })}`,
    onState: (status) => {
      if (follow.status === status) return;
      follow.status = status;
      if (where === 'desk') renderDeskBooks();
      else setLiveState($('book-live'), status);
    },
    onData: (queue, raw) => {
      // The heartbeat sends the same queue again.
      if (raw !== undefined && raw === follow.raw) return;
      follow.raw = raw ?? null;
      const again = follow.seen;
      follow.seen = true;
      queueArrived(follow, queue, again);
    },
    onRefusal: (e) => report(place, e.message),
    // A book registered a moment ago is not known here yet: ask again later.
    onFailure: (e) => (e instanceof ApiError && e.status === 404 ? 'retry' : liveFailure(e, place)),
  });
  state.queueWatch = follow;
  follow.live.open();
}

function queueArrived(follow, queue, again) {
  const { bookId } = follow;
  if (follow.where === 'desk') {
    const view = state.items.get(bookId);
    if (!view) return;
    view.queue = queue;
    renderDeskBooks();
    if (again) loadItems(bookId).catch(() => {});
    return;
  }
  if (state.bookPage?.bookId !== bookId) return;
  state.bookPage.queue = queue;
  renderBookPage();
  if (!again) return;
  refreshBookSoon(bookId);
  loadHoldings();
  if (isLibrarian()) loadPageItems(bookId).catch(() => {});
}

/**
 * At the desk's Books and copies, the queue of the book whose copies were
 * opened last is followed live, once its copies and queue have been read
 * (the view knows the book); the others show theirs as read with the copies.
 */
function followDeskQueue() {
  let target = null;
  if (state.route.name === 'desk' && state.deskTab === 'books') {
    for (const [bookId, view] of state.items) {
      if (view.items && view.queue && state.desk.books.some((b) => b.bookId === bookId)) target = bookId;
    }
  }
  if (target) followQueue(target, 'desk');
  else if (state.queueWatch?.where === 'desk') stopQueueWatch();
}

/** A live indicator (`.live` with its `.live-text`) in the state `status`. */
function setLiveState(el, status) {
  el.dataset.state = status;
  el.querySelector('.live-text').textContent = t(
    status === 'live' ? 'mypage.live' : status === 'connecting' ? 'mypage.connecting' : 'mypage.reconnecting',
  );
}

// ------------------------------------------------------------------ a book's page

/**
 * A book's page (`#/books/<id>`): the book, what the reader has of it, for
 * a librarian its copies, and its queue followed live.
 */
async function openBookPage(bookId) {
  if (state.bookPage?.bookId !== bookId) {
    state.bookPage = { bookId, book: null, queue: null, items: null };
    clearNotice('book-notice');
  }
  renderBookPage();
  followQueue(bookId, 'book');
  await Promise.all([
    readBookPage(bookId).catch((e) => {
      // No such book: there is no queue to follow either.
      if (e instanceof ApiError && e.status === 404 && state.queueWatch?.bookId === bookId) stopQueueWatch();
      return problem(e, 'book-notice');
    }),
    loadHoldings(),
    isLibrarian() ? loadPageItems(bookId).catch(() => {}) : null,
  ]);
}

async function readBookPage(bookId) {
  const book = await get(`/v1/books/${encodeURIComponent(bookId)}`);
  if (state.bookPage?.bookId !== bookId) return;
  state.bookPage.book = book;
  renderBookPage();
  setTitle();
}

async function loadPageItems(bookId) {
  const answer = await get(`/v1/books/${encodeURIComponent(bookId)}/items`);
  if (state.bookPage?.bookId !== bookId) return;
  state.bookPage.items = answer.items || [];
  renderBookPage();
}

/** Reserve on the book's page: its notice under the page's facts. */
const reserveHere = (book, button) => reserve(book, button, { place: 'book-notice', list: 'book-detail' });

function renderBookPage() {
  const page = state.bookPage;
  const book = page?.book;
  const title = $('book-title');
  title.textContent = book?.title || t('bookPage.title');
  $('book-live').hidden = !book;
  const lang = textLang(book?.title);
  if (lang) title.lang = lang;
  else title.removeAttribute('lang');
  const { summary, staff } = book
    ? bookPage(book, {
        queue: page.queue,
        holding: state.holdings.get(book.bookId) ?? null,
        items: page.items,
        librarian: isLibrarian(),
        actions: { reserve: reserveHere },
      })
    : { summary: page ? [h('p', { class: 'hint' }, t('bookPage.loading'))] : [], staff: [] };
  replaceKeepingFocus($('book-detail'), summary, title);
  replaceKeepingFocus($('book-staff'), staff, title);
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
  renderCheckout();
  renderCheckin();
  for (const sub of Object.keys(STAFF_LIVE)) setStaffLive(sub, $(`${sub}-live`).dataset.state || 'connecting');
  setLiveState($('book-live'), $('book-live').dataset.state || 'connecting');
  renderStaff();
  renderFailed();
  renderBookPage();
  renderPage();
  renderSettings();
  setOwnUnread(state.ownUnread);
  clearSettingsRefusal();
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
    ['checkout-member-form', 'checkout-member-notice'],
    ['checkout-form', 'checkout-notice'],
    ['checkin-form', 'checkin-notice'],
    ['lookup-form', 'lookup-notice'],
    ['due-form', 'due-notice'],
    ['members-form', 'members-notice'],
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
  $('tab-notices').addEventListener('click', () => selectTab('notices'));
  $('notices-read').addEventListener('click', markNoticesRead);
  $('settings-form').addEventListener('submit', saveSettings);
  $('settings-form').addEventListener('input', (e) => {
    state.settings.dirty = true;
    // The notice is about the settings as they were.
    clearNotice('settings-notice');
    if (e.target === $('settings-email') && $('settings-email').hasAttribute('aria-invalid')) clearSettingsRefusal();
  });
  $('erase-ask').addEventListener('click', askErase);
  $('erase-keep').addEventListener('click', keepHistory);
  $('erase-yes').addEventListener('click', eraseHistory);
  $('failed-more').addEventListener('click', (e) => moreFailed(e.currentTarget));
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
  $('merge-button').addEventListener('click', mergeSelected);
  $('checkout-member-form').addEventListener('submit', startLending);
  $('checkout-form').addEventListener('submit', scanOut);
  $('checkout-change').addEventListener('click', anotherMember);
  $('checkin-form').addEventListener('submit', scanIn);
  $('lookup-form').addEventListener('submit', lookUpItem);
  $('member-form').addEventListener('submit', openMemberPage);
  $('due-form').addEventListener('submit', showDue);
  for (const sub of Object.keys(STAFF_LIVE)) {
    $(`${sub}-more`).addEventListener('click', (e) => moreStaff(sub, e.currentTarget));
  }
  $('members-form').addEventListener('submit', searchMembers);
  $('members-prefix').addEventListener('input', membersTyped);
  window.addEventListener('hashchange', () => show(parseRoute(), { focus: true }).catch(problem));

  await refreshSession();
  renderSession();
  await show(parseRoute());
}

start().catch((e) => {
  console.warn(e);
  setNotice('page-notice', t('error.server'));
});
