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
import { bookCard, bookTitle, journeyCard, replaceKeepingFocus, stageLabel } from './views.js';

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
  /** The open WatchMyPage stream, and how long to wait before reopening it. */
  watch: null,
  retryMs: 1000,
  retryTimer: 0,
};

// ------------------------------------------------------------------ notices

let toastTimer = 0;

/** Shows a sentence in the toast and reads it out (politely, or at once for problems). */
function notify(text, kind = 'info') {
  clearTimeout(toastTimer);
  const toast = $('toast');
  $('toast-text').textContent = text;
  toast.dataset.kind = kind;
  toast.hidden = false;
  const region = kind === 'problem' ? $('alert') : $('announce');
  region.textContent = '';
  // A fresh text node, so that the same sentence twice is read twice.
  requestAnimationFrame(() => {
    region.textContent = text;
  });
  if (kind !== 'problem') toastTimer = setTimeout(hideToast, 8000);
}

function hideToast() {
  clearTimeout(toastTimer);
  $('toast').hidden = true;
}

function announce(text) {
  const region = $('announce');
  region.textContent = '';
  requestAnimationFrame(() => {
    region.textContent = text;
  });
}

/** What to do with a failure: a sentence, or the sign-in form when the sign-in is gone. */
async function problem(error) {
  if (error instanceof ApiError && error.signedOut) {
    await refreshSession();
    if (!state.session.member) {
      forget();
      renderSession();
      await show({ name: 'signin' }, { focus: true });
      notify(t('signin.expired'), 'problem');
      return;
    }
  }
  notify(error instanceof ApiError ? error.message : t('error.server'), 'problem');
  if (!(error instanceof ApiError)) console.warn(error);
}

/** Runs `work` for a button once at a time; the button keeps its focus. */
const running = new WeakSet();
async function act(button, work) {
  if (button && running.has(button)) return;
  if (button) {
    running.add(button);
    button.setAttribute('aria-disabled', 'true');
  }
  try {
    await work();
  } catch (e) {
    await problem(e);
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
    notify(t('signin.done', { id: state.session.member.id }));
    const wanted = parseRoute();
    if (wanted.name && wanted.name !== 'signin') {
      await show(wanted, { focus: true });
    } else {
      location.hash = defaultRoute();
    }
  });
}

async function signOut() {
  await act($('sign-out'), async () => {
    state.session = await post('/session/logout');
    forget();
    renderSession();
    notify(t('signout.done'));
    await show({ name: 'signin' }, { focus: true });
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
    // Availability moves all the time: read the list again on every visit.
    $('search-q').value = state.catalogue.q;
    await searchCatalogue(state.catalogue.q).catch(problem);
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
    c.books.map((b) => bookCard(b, actions)),
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

async function reserve(book, button) {
  await act(button, async () => {
    const r = await post('/v1/reservations', { bookId: book.bookId });
    const text =
      r.status === 'RESERVATION_STATUS_WAITING'
        ? t('book.reservedWaiting', { title: book.title, n: r.queuePosition })
        : t('book.reservedReady', { title: book.title });
    notify(text);
    refreshBookSoon(book.bookId);
  });
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
      notify(errorFor(STATUS_OF_CODE[body?.code] ?? 400, body, null).message, 'problem');
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
    await problem(new ApiError(t('error.signedOut'), { status: 401, code: 16 }));
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
    await problem(e);
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

function renderPage(page = state.page) {
  state.page = page;
  const list = $('journeys');
  if (!page) {
    list.replaceChildren();
    $('mypage-summary').textContent = '';
    $('mypage-empty').hidden = true;
    return;
  }
  // Read out what changed since the last page (a queue moved, a copy came back).
  const changes = [];
  for (const j of page.journeys || []) {
    const before = state.stages.get(j.reservationId);
    if (before && before !== j.stage) {
      changes.push(t('journey.changed', { title: bookTitle(j), stage: stageLabel(j.stage) }));
    }
    state.stages.set(j.reservationId, j.stage);
  }
  if (changes.length) announce(changes.join(' '));
  const own = state.route.name === 'mypage';
  const actions = own ? { rent, giveBack, cancel } : { giveBack, cancel };
  replaceKeepingFocus(
    list,
    (page.journeys || []).map((j) => journeyCard(j, actions)),
  );
  $('mypage-summary').textContent = t('mypage.summary', {
    open: page.openReservations ?? 0,
    active: page.activeRentals ?? 0,
  });
  const empty = !(page.journeys || []).length;
  $('mypage-empty').hidden = !empty;
  $('mypage-empty').textContent = empty ? t('mypage.empty') : '';
}

async function rent(journey, button) {
  await act(button, async () => {
    const rental = await post('/v1/rentals', { bookId: journey.bookId });
    notify(t('journey.rented', { title: bookTitle(journey), time: formatTime(rental.dueAt) }));
  });
}

async function giveBack(journey, button) {
  await act(button, async () => {
    await post(`/v1/rentals/${encodeURIComponent(journey.rentalId)}:return`);
    notify(t('journey.returnedNotice', { title: bookTitle(journey) }));
  });
}

async function cancel(journey, button) {
  await act(button, async () => {
    await post(`/v1/reservations/${encodeURIComponent(journey.reservationId)}:cancel`);
    notify(t('journey.cancelled', { title: bookTitle(journey) }));
  });
}

// ------------------------------------------------------------------ desk

function renderDeskBooks() {
  replaceKeepingFocus(
    $('desk-books'),
    state.desk.books.map((b) => bookCard(b, { addCopies })),
  );
}

async function register(event) {
  event.preventDefault();
  const form = event.currentTarget;
  if (!form.reportValidity()) return;
  const data = new FormData(form);
  await act(form.querySelector('button[type=submit]'), async () => {
    const book = await post('/v1/books', {
      title: String(data.get('title')).trim(),
      author: String(data.get('author')).trim(),
      isbn: String(data.get('isbn') || '').trim(),
      totalCopies: Number(data.get('copies')),
    });
    notify(t('desk.registered', { title: book.title, n: book.totalCopies }));
    state.desk.books = [book, ...state.desk.books.filter((b) => b.bookId !== book.bookId)];
    renderDeskBooks();
    form.reset();
  });
}

async function addCopies(book, copies, button) {
  await act(button, async () => {
    const updated = await post(`/v1/books/${encodeURIComponent(book.bookId)}:addCopies`, { copies });
    notify(t('book.copiesAdded', { title: updated.title, n: updated.totalCopies }));
    updateBook(updated);
  });
}

async function searchDesk(event) {
  event.preventDefault();
  const q = $('desk-q').value.trim();
  await act(event.submitter, async () => {
    const answer = await get(`/v1/books${query({ query: q, pageSize: 50 })}`);
    state.desk = { q, books: answer.books || [], searched: true };
    renderDeskBooks();
  });
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
  hideToast();
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
  $('toast-close').addEventListener('click', hideToast);
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && !$('toast').hidden) hideToast();
  });
  $('signin-form').addEventListener('submit', signIn);
  $('signin-check').addEventListener('click', async () => {
    await refreshSession();
    renderSession();
    if (!signedIn()) notify(t('signin.notYet'), 'problem');
    await show(parseRoute(), { focus: true });
  });
  $('sign-out').addEventListener('click', signOut);
  $('search-form').addEventListener('submit', (e) => {
    e.preventDefault();
    act(e.submitter, () => searchCatalogue($('search-q').value.trim()));
  });
  $('books-more').addEventListener('click', (e) =>
    act(e.currentTarget, () => searchCatalogue(state.catalogue.q, { more: true })),
  );
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
  notify(t('error.server'), 'problem');
});
