// Rendering: books and journeys as DOM elements built from data (never from
// HTML strings, so no title can inject markup).

import { formatTime, has, t, textLang } from './i18n.js';

/** An element with attributes (`on*` functions become listeners) and children. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2).toLowerCase(), value);
    } else if (name === 'class') {
      el.className = value;
    } else if (name === 'dataset') {
      Object.assign(el.dataset, value);
    } else if (value === true) {
      el.setAttribute(name, '');
    } else {
      el.setAttribute(name, String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** A stable, id-safe form of a server id. */
export const idPart = (id) => String(id).replace(/[^A-Za-z0-9_-]/g, '');

/**
 * `t(key)` with `{name}` replaced by the node `node` (an author in a span of
 * its own language), as a list of children.
 */
function sentenceWith(key, name, node) {
  const mark = '\u0000';
  const [before, after = ''] = t(key, { [name]: mark }).split(mark);
  return [before, node, after].filter((part) => part !== '');
}

/**
 * `t(key)` with some of its `{name}`s replaced by nodes (a title in a span
 * of its own language, a date in a time element), as a list of children.
 */
function sentenceOf(key, vars) {
  const nodes = [];
  const text = {};
  for (const [name, value] of Object.entries(vars)) {
    if (value instanceof Node) {
      text[name] = `\u0000${nodes.length}\u0000`;
      nodes.push(value);
    } else {
      text[name] = value;
    }
  }
  return t(key, text)
    .split(/\u0000(\d+)\u0000/)
    .map((part, i) => (i % 2 ? nodes[Number(part)] : part))
    .filter((part) => part !== '');
}

/**
 * A card's heading: focusable by script, so that focus can land on it after
 * an action; with `href`, its text is a link there (a book's own page).
 */
function cardHeading(text, id, key, href = null) {
  return h(
    'h2',
    { id, class: 'card-title', tabindex: '-1', lang: textLang(text), dataset: { focusKey: `head-${key}` } },
    href ? h('a', { class: 'title-link', href, dataset: { focusKey: `open-${key}` } }, text) : text,
  );
}

/** The address of a book's own page. */
const bookHref = (bookId) => `#/books/${encodeURIComponent(bookId)}`;

/**
 * A notice: a sentence next to what it is about, with its own Dismiss
 * button and any further action (`actions: [{label, focusKey, onClick}]`).
 * It is not a live region itself: the page reads outcomes out through its
 * status and alert regions.
 */
export function noticeEl({ text, kind = 'problem', actions = [], onDismiss, key = '' }) {
  const problem = kind === 'problem';
  return h(
    'div',
    { class: 'notice', dataset: { kind }, tabindex: '-1' },
    h('span', { class: 'notice-mark', 'aria-hidden': 'true' }, problem ? '!' : '✓'),
    h(
      'p',
      { class: 'notice-text' },
      problem ? h('span', { class: 'visually-hidden' }, `${t('notice.problem')}: `) : null,
      h('span', { class: 'notice-sentence' }, text),
    ),
    h(
      'div',
      { class: 'notice-actions' },
      actions.map((a) =>
        h(
          'button',
          {
            class: 'button',
            type: 'button',
            dataset: { focusKey: `${a.focusKey}-${key}` },
            onclick: (e) => a.onClick(e.currentTarget),
          },
          a.label,
        ),
      ),
      h(
        'button',
        {
          class: 'button secondary notice-close',
          type: 'button',
          dataset: { focusKey: `dismiss-${key}` },
          onclick: () => onDismiss?.(),
        },
        t('notice.close'),
      ),
    ),
  );
}

const STATUS_CLASS = {
  BOOK_STATUS_AVAILABLE: 'ok',
  BOOK_STATUS_RESERVED: 'ready',
  BOOK_STATUS_ON_LOAN: 'loan',
};

const STAGE_CLASS = {
  JOURNEY_STAGE_WAITING: 'wait',
  JOURNEY_STAGE_READY: 'ready',
  JOURNEY_STAGE_RENTED: 'loan',
  JOURNEY_STAGE_OVERDUE: 'late',
  JOURNEY_STAGE_RETURNED: 'done',
  JOURNEY_STAGE_CANCELLED: 'done',
  JOURNEY_STAGE_EXPIRED: 'done',
  JOURNEY_STAGE_LOST: 'late',
};

export const stageLabel = (stage) => t(`stage.${stage || 'JOURNEY_STAGE_UNSPECIFIED'}`);

export function bookTitle(journey) {
  return journey.bookTitle || t('journey.untitled', { id: String(journey.bookId).slice(0, 8) });
}

/**
 * A catalogue card. `actions.reserve(book, button)` and
 * `actions.addCopies(book, copies, button)` when the caller may do them;
 * `holding` (`{stage, queuePosition}`) when the reader already waits for,
 * holds or has the book, which then shows instead of Reserve; `notice` a
 * notice element for the card; `items` the copies open at the desk
 * (`{items, queue, confirm, highlight}`), whose queue is followed live when
 * `queueLive` is the stream's state (`connecting`, `live`, `reconnecting`).
 */
export function bookCard(
  book,
  actions,
  { holding = null, notice = null, items = null, queueLive = null, selected = false } = {},
) {
  const key = idPart(book.bookId);
  const titleId = `book-${key}-title`;
  const facts = bookFacts(book);
  const buttons = h('div', { class: 'actions' });
  const yours = actions.reserve ? reserveOrYours(book, holding, actions.reserve, buttons, titleId) : null;
  if (actions.addCopies) {
    const inputId = `copies-${key}`;
    const input = h('input', {
      id: inputId,
      type: 'number',
      min: 1,
      max: 1000,
      value: 1,
      required: true,
      dataset: { focusKey: `copies-${key}` },
    });
    buttons.append(
      h(
        'form',
        {
          class: 'add-copies',
          onsubmit: (e) => {
            e.preventDefault();
            actions.addCopies(book, Number(input.value), e.submitter || e.currentTarget);
          },
        },
        h('label', { for: inputId }, t('book.addCopiesLabel')),
        input,
        h(
          'button',
          {
            class: 'button secondary',
            type: 'submit',
            'aria-describedby': titleId,
            dataset: { focusKey: `add-${key}` },
          },
          t('book.addCopies'),
        ),
      ),
    );
  }
  if (actions.toggleItems) {
    buttons.append(
      h(
        'button',
        {
          class: 'button secondary',
          type: 'button',
          'aria-expanded': String(Boolean(items)),
          'aria-controls': `items-${key}`,
          'aria-describedby': titleId,
          dataset: { focusKey: `items-${key}` },
          onclick: (e) => actions.toggleItems(book, e.currentTarget),
        },
        t(items ? 'items.hide' : 'items.show'),
      ),
    );
  }
  if (actions.select) {
    const boxId = `merge-${key}`;
    buttons.append(
      h(
        'span',
        { class: 'select-merge' },
        h('input', {
          id: boxId,
          type: 'checkbox',
          checked: selected,
          'aria-describedby': titleId,
          dataset: { focusKey: boxId },
          onchange: (e) => actions.select(book, e.currentTarget.checked),
        }),
        h('label', { for: boxId }, t('merge.select')),
      ),
    );
  }
  return h(
    'li',
    { class: 'card book', dataset: { bookId: book.bookId, cardKey: key } },
    cardHeading(book.title, titleId, key, bookHref(book.bookId)),
    byline(book),
    availability(book),
    facts,
    yours,
    buttons,
    notice,
    items ? itemList(book, { ...items, live: queueLive }, actions) : null,
  );
}

/** Who wrote a book, and its ISBN. */
function byline(book) {
  return h(
    'p',
    { class: 'byline' },
    h(
      'span',
      { class: 'author' },
      sentenceWith('book.by', 'author', h('span', { lang: textLang(book.author) }, book.author)),
    ),
    book.isbn ? h('span', { class: 'isbn' }, t('book.isbn', { isbn: book.isbn })) : null,
  );
}

/** A book's status, and how many of its copies are free. */
function availability(book) {
  const status = book.status || 'BOOK_STATUS_UNSPECIFIED';
  return h(
    'p',
    { class: 'availability' },
    h('span', { class: `badge ${STATUS_CLASS[status] || 'done'}` }, t(`book.status.${status}`)),
    h('span', { class: 'free' }, t('book.free', { free: book.freeCopies ?? 0, n: book.totalCopies ?? 0 })),
  );
}

/**
 * A book's copies held and on loan and how many wait (`waiting`, when a
 * fresher count than the book's is known), and `more` facts after them.
 */
function bookFacts(book, { waiting = book.waiting ?? 0, more = [] } = {}) {
  return h(
    'dl',
    { class: 'facts' },
    h('div', {}, h('dt', {}, t('book.held')), h('dd', {}, book.heldCopies ?? 0)),
    h('div', {}, h('dt', {}, t('book.onLoan')), h('dd', {}, book.onLoanCopies ?? 0)),
    h(
      'div',
      { class: waiting > 0 ? 'queue busy' : 'queue' },
      h('dt', {}, t('book.queue')),
      h('dd', {}, waiting ? t('book.queueLength', { n: waiting }) : t('book.queueNone')),
    ),
    more,
  );
}

/**
 * What the reader has of a book (`holding`: `{stage, queuePosition}`, they
 * wait for it, hold it or have it), returned as a sentence with "Open My
 * Page" added to `buttons`; or, when they have nothing of it, Reserve added
 * to `buttons` and null returned.
 */
function reserveOrYours(book, holding, reserve, buttons, titleId) {
  const key = idPart(book.bookId);
  if (!holding) {
    buttons.append(
      h(
        'button',
        {
          class: 'button',
          type: 'button',
          'aria-describedby': titleId,
          dataset: { focusKey: `reserve-${key}` },
          onclick: (e) => reserve(book, e.currentTarget),
        },
        t('book.reserve'),
      ),
    );
    return null;
  }
  const stage = holding.stage.replace('JOURNEY_STAGE_', '');
  const text =
    stage === 'WAITING'
      ? holding.queuePosition
        ? t('book.yours.WAITING', { n: holding.queuePosition })
        : t('book.yours.WAITING_NO_PLACE')
      : t(`book.yours.${stage}`);
  buttons.append(
    h(
      'a',
      {
        class: 'button secondary',
        href: '#/mypage',
        'aria-describedby': titleId,
        dataset: { focusKey: `mine-${key}` },
      },
      t('book.toMyPage'),
    ),
  );
  return h(
    'p',
    { class: 'yours' },
    h('span', { class: `badge ${STAGE_CLASS[holding.stage] || 'done'}` }, stageLabel(holding.stage)),
    ' ',
    text,
  );
}

/** A copy's state as a badge, and the sentence that says where it is. */
function itemWhere(item) {
  const state = item.state || 'ITEM_STATE_UNSPECIFIED';
  if (state === 'ITEM_STATE_WITHDRAWN') return { cls: 'done', badge: t('items.state.WITHDRAWN'), who: null };
  if (state === 'ITEM_STATE_LOST') return { cls: 'late', badge: t('items.state.LOST'), who: null };
  if (item.reservationStatus === 'RESERVATION_STATUS_READY') {
    return { cls: 'ready', badge: t('items.state.HELD'), who: ['items.heldFor', item.memberId] };
  }
  if (item.reservationStatus === 'RESERVATION_STATUS_FULFILLED') {
    return { cls: 'loan', badge: t('items.state.ON_LOAN'), who: ['items.onLoanTo', item.memberId] };
  }
  return { cls: 'ok', badge: t('items.state.ON_SHELF'), who: null };
}

/**
 * A book's copies at the desk (`view`: `{items, confirm, highlight}`):
 * barcode, state, who holds or has it, and Withdraw / Mark lost, which ask
 * before they act.
 */
function itemList(book, view, actions) {
  const key = idPart(book.bookId);
  if (!view.items) {
    return h('div', { id: `items-${key}`, class: 'items' }, h('p', { class: 'hint' }, t('items.loading')));
  }
  const rows = view.items.map((item) => {
    const code = idPart(item.barcode);
    const codeId = `item-${key}-${code}`;
    const asking = view.confirm?.barcode === item.barcode ? view.confirm.action : null;
    const inService = (item.state || '') === 'ITEM_STATE_IN_SERVICE';
    const lost = item.state === 'ITEM_STATE_LOST';
    const act = (name, label, cls) =>
      h(
        'button',
        {
          class: `button small ${cls}`,
          type: 'button',
          'aria-describedby': codeId,
          dataset: { focusKey: `${name}-${code}` },
          onclick: () => actions.askItem(book, item, name),
        },
        label,
      );
    let controls = null;
    if (asking) {
      controls = h(
        'div',
        { class: 'confirm', role: 'group', 'aria-labelledby': `${codeId}-ask` },
        h('p', { id: `${codeId}-ask`, class: 'confirm-question' }, t(`items.ask.${asking}`, { barcode: item.barcode })),
        h(
          'button',
          {
            class: 'button small danger',
            type: 'button',
            dataset: { focusKey: `confirm-${code}` },
            onclick: (e) => actions.changeItem(book, item, e.currentTarget),
          },
          t(`items.do.${asking}`),
        ),
        h(
          'button',
          {
            class: 'button small secondary',
            type: 'button',
            dataset: { focusKey: `keep-${code}` },
            onclick: () => actions.keepItem(book, item),
          },
          t('items.keep'),
        ),
      );
    } else if (inService || lost) {
      controls = h(
        'div',
        { class: 'item-actions' },
        act('withdraw', t('items.withdraw'), 'secondary'),
        inService ? act('markLost', t('items.markLost'), 'secondary') : null,
      );
    }
    return h(
      'li',
      { class: view.highlight === item.barcode ? 'item found' : 'item', dataset: { barcode: item.barcode } },
      itemHead(item, codeId),
      controls,
    );
  });
  return h(
    'div',
    { id: `items-${key}`, class: 'items' },
    h('h3', { class: 'items-title' }, t('items.title', { n: view.items.length })),
    rows.length ? h('ul', { class: 'item-list' }, rows) : h('p', { class: 'hint' }, t('items.none')),
    queueSection(book, view.queue, { live: view.live }),
  );
}

/** A copy's barcode (with the id `codeId`), its state, and who holds or has it. */
function itemHead(item, codeId) {
  const where = itemWhere(item);
  const who = where.who ? sentenceWith(where.who[0], 'member', memberLink(where.who[1])) : null;
  return h(
    'p',
    { class: 'item-head' },
    h(
      'span',
      { id: codeId, class: 'barcode', tabindex: '-1', dataset: { focusKey: `item-${idPart(item.barcode)}` } },
      h('span', { class: 'visually-hidden' }, `${t('items.copy')} `),
      item.barcode,
    ),
    h('span', { class: `badge ${where.cls}` }, where.badge),
    who ? h('span', { class: 'holder' }, who) : null,
  );
}

/** A link to a member's page; `focusKey` keeps the focus on it when its list is drawn again. */
export function memberLink(memberId, focusKey = undefined) {
  return h(
    'a',
    {
      class: 'member-link',
      href: `#/members/${encodeURIComponent(memberId || '')}`,
      dataset: focusKey ? { focusKey } : undefined,
    },
    memberId || '?',
  );
}

/** A live stream's state (`connecting`, `live`, `reconnecting`) as a dot and a word. */
function liveEl(status) {
  const word = status === 'live' ? 'mypage.live' : status === 'connecting' ? 'mypage.connecting' : 'mypage.reconnecting';
  return h(
    'p',
    { class: 'live', dataset: { state: status } },
    h('span', { class: 'dot', 'aria-hidden': 'true' }),
    h('span', { class: 'live-text' }, t(word)),
  );
}

/**
 * Who waits for a book, in order (`queue`: GetBookQueue's answer, or
 * undefined while it loads), under a heading of `level`; `live` the state
 * of the stream that follows it, when one does.
 */
function queueSection(book, queue, { live = null, level = 'h3' } = {}) {
  const key = idPart(book.bookId);
  if (!queue) return null;
  const waiting = queue.waiting || [];
  const total = queue.totalWaiting ?? waiting.length;
  const beyond = total - (waiting.length ? waiting[waiting.length - 1].position : 0);
  return h(
    'section',
    { class: 'queue', 'aria-labelledby': `queue-${key}-title`, dataset: { queueOf: book.bookId } },
    h(
      'div',
      { class: 'queue-head' },
      h(level, { id: `queue-${key}-title`, class: 'queue-title' }, total ? t('queue.title', { n: total }) : t('queue.none')),
      live ? liveEl(live) : null,
    ),
    waiting.length
      ? h(
          'ol',
          { class: 'queue-list' },
          waiting.map((w) =>
            h(
              'li',
              { value: w.position, dataset: { memberId: w.memberId } },
              memberLink(w.memberId, `waits-${idPart(w.reservationId)}`),
              ' ',
              h('span', { class: 'hint' }, t('queue.since', { time: formatTime(w.reservedAt) })),
              w.requeued ? h('span', { class: 'badge wait' }, t('queue.requeued')) : null,
            ),
          ),
        )
      : null,
    beyond > 0 && waiting.length ? h('p', { class: 'hint' }, t('queue.beyond', { n: beyond })) : null,
  );
}

/**
 * A book's own page (`#/books/<id>`): `summary`, what anyone may know of it
 * (its copies free, held and on loan, how many wait, when the next copy is
 * expected back from `queue.nextDueAt`) with Reserve or what the reader has
 * of it (`actions.reserve` and `holding`, as in the catalogue); and `staff`,
 * for a librarian, each copy (`items`) with its state and who waits, in
 * order. `queue` is the book's queue as the caller may see it, or null
 * while it loads.
 */
export function bookPage(book, { queue = null, holding = null, items = null, librarian = false, actions = {} }) {
  const key = idPart(book.bookId);
  let next = t('bookPage.loading');
  if (queue) {
    const due = queue.nextDueAt ? Date.parse(queue.nextDueAt) : NaN;
    if (Number.isNaN(due)) next = t('bookPage.nextDueNone');
    else if (due < Date.now()) next = t('bookPage.nextDueLate', { time: formatTime(queue.nextDueAt) });
    else next = timeEl(queue.nextDueAt);
  }
  const buttons = h('div', { class: 'actions' });
  const yours = actions.reserve ? reserveOrYours(book, holding, actions.reserve, buttons, 'book-title') : null;
  const summary = [
    byline(book),
    availability(book),
    bookFacts(book, {
      waiting: queue?.totalWaiting ?? book.waiting ?? 0,
      more: h('div', { class: 'next-due' }, h('dt', {}, t('bookPage.nextDue')), h('dd', {}, next)),
    }),
    yours,
    buttons.childElementCount ? buttons : null,
  ].filter(Boolean);
  if (!librarian) return { summary, staff: [] };
  const copies = items
    ? h(
        'section',
        { class: 'items', 'aria-labelledby': `copies-${key}-title` },
        h('h2', { id: `copies-${key}-title`, class: 'items-title' }, t('items.title', { n: items.length })),
        items.length
          ? h(
              'ul',
              { class: 'item-list' },
              items.map((item) =>
                h(
                  'li',
                  { class: 'item', dataset: { barcode: item.barcode } },
                  itemHead(item, `page-item-${idPart(item.barcode)}`),
                ),
              ),
            )
          : h('p', { class: 'hint' }, t('items.none')),
      )
    : h('p', { class: 'hint' }, t('items.loading'));
  return { summary, staff: [copies, queueSection(book, queue, { level: 'h2' })].filter(Boolean) };
}

/** A READY hold on the hold shelf. */
export function holdRow(entry) {
  return h(
    'li',
    {
      class: entry.toPull ? 'staff-row to-pull' : 'staff-row',
      dataset: { reservationId: entry.reservationId, barcode: entry.barcode || '', memberId: entry.memberId },
    },
    h('span', { class: 'staff-when' }, h('span', { class: 'visually-hidden' }, `${t('shelf.until')} `), timeEl(entry.pickupDeadline)),
    memberLink(entry.memberId, `member-${idPart(entry.reservationId)}`),
    h('span', { class: 'staff-title', lang: textLang(entry.bookTitle) }, entry.bookTitle || t('journey.untitled', { id: String(entry.bookId).slice(0, 8) })),
    entry.barcode ? h('span', { class: 'barcode' }, entry.barcode) : null,
    h('span', { class: `badge ${entry.toPull ? 'wait' : 'ready'}` }, t(entry.toPull ? 'shelf.toPull' : 'shelf.onShelf')),
  );
}

/** A loan in the overdue or due lists. */
export function loanEntryRow(loan) {
  return h(
    'li',
    {
      class: loan.overdue ? 'staff-row late' : 'staff-row',
      dataset: { rentalId: loan.rentalId, barcode: loan.barcode || '', memberId: loan.memberId },
    },
    h('span', { class: 'staff-when' }, h('span', { class: 'visually-hidden' }, `${t('journey.due')} `), timeEl(loan.dueAt)),
    memberLink(loan.memberId, `member-${idPart(loan.rentalId)}`),
    h('span', { class: 'staff-title', lang: textLang(loan.bookTitle) }, loan.bookTitle || t('journey.untitled', { id: String(loan.bookId).slice(0, 8) })),
    loan.barcode ? h('span', { class: 'barcode' }, loan.barcode) : null,
    loan.renewals ? h('span', { class: 'hint' }, t('journey.renewalsValue', { n: loan.renewals })) : null,
    loan.overdue ? h('span', { class: 'badge late' }, t('stage.JOURNEY_STAGE_OVERDUE')) : null,
  );
}

/** A member found by id prefix, with what they hold now. */
export function memberRow(m) {
  return h(
    'li',
    { class: 'staff-row', dataset: { memberId: m.memberId } },
    memberLink(m.memberId),
    h(
      'span',
      { class: 'hint' },
      t('members.summary', {
        open: m.openReservations ?? 0,
        ready: m.ready ?? 0,
        active: m.activeRentals ?? 0,
        overdue: m.overdue ?? 0,
      }),
    ),
  );
}

/** A copy lent at the check-out desk this session (or being lent). */
export function loanRow(loan) {
  const r = loan.rental;
  if (!r) {
    return h(
      'li',
      { class: 'scan-row pending', dataset: { key: loan.key } },
      h('span', { class: 'barcode' }, loan.barcode),
      h('span', { class: 'scan-what' }, t('checkout.lending')),
    );
  }
  return h(
    'li',
    { class: 'scan-row', dataset: { key: loan.key, barcode: r.barcode || loan.barcode } },
    h('span', { class: 'scan-title', lang: textLang(loan.title) }, loan.title),
    h('span', { class: 'barcode' }, r.barcode || loan.barcode),
    h('span', { class: 'scan-what' }, t('checkout.due'), ' ', timeEl(r.dueAt)),
  );
}

/** A copy checked in this session, with what was done with it (`words` from the page). */
export function checkInRow(entry, words) {
  if (!words) {
    return h(
      'li',
      { class: 'scan-row pending', dataset: { key: entry.key } },
      h('span', { class: 'barcode' }, entry.barcode),
      h('span', { class: 'scan-what' }, t('checkin.checking')),
    );
  }
  return h(
    'li',
    { class: `scan-row action-${words.action.toLowerCase()}`, dataset: { key: entry.key, barcode: entry.barcode } },
    h('span', { class: 'scan-title', lang: textLang(entry.title) }, entry.title),
    h('span', { class: 'barcode' }, entry.barcode),
    h('span', { class: 'scan-what' }, words.loud, words.found ? ` · ${t('checkin.foundShort')}` : ''),
    timeEl(entry.at),
  );
}

function fact(label, value, cls) {
  return h('div', { class: cls }, h('dt', {}, label), h('dd', {}, value));
}

function timeEl(value) {
  return h('time', { datetime: value }, formatTime(value));
}

/** Stages after which a journey is history. */
export const FINISHED = new Set([
  'JOURNEY_STAGE_RETURNED',
  'JOURNEY_STAGE_CANCELLED',
  'JOURNEY_STAGE_EXPIRED',
  'JOURNEY_STAGE_LOST',
]);

/**
 * A My Page card. `actions.rent(journey, button)`, `actions.giveBack(...)`,
 * `actions.cancel(...)` and `actions.reserveAgain(...)` when the viewer may
 * do them; `open` when the member has an open journey for the same book
 * (no "Reserve again" then); `notice` a notice element for the card.
 */
export function journeyCard(journey, actions, { open = false, notice = null } = {}) {
  const key = idPart(journey.reservationId);
  const titleId = `journey-${key}-title`;
  const stage = journey.stage || 'JOURNEY_STAGE_UNSPECIFIED';
  const facts = h('dl', { class: 'facts' });
  if (stage === 'JOURNEY_STAGE_WAITING' && journey.queuePosition) {
    facts.append(fact(t('journey.queue'), t('journey.queueValue', { n: journey.queuePosition }), 'queue'));
  }
  if (stage === 'JOURNEY_STAGE_READY' && journey.pickupDeadline) {
    facts.append(fact(t('journey.pickupBy'), timeEl(journey.pickupDeadline), 'deadline'));
  }
  const onLoan = stage === 'JOURNEY_STAGE_RENTED' || stage === 'JOURNEY_STAGE_OVERDUE';
  if (journey.barcode && (stage === 'JOURNEY_STAGE_READY' || onLoan)) {
    facts.append(
      fact(
        t(stage === 'JOURNEY_STAGE_READY' ? 'journey.copyToPickUp' : 'journey.copy'),
        h('span', { class: 'barcode' }, journey.barcode),
        'copy',
      ),
    );
  }
  if ((stage === 'JOURNEY_STAGE_RENTED' || stage === 'JOURNEY_STAGE_OVERDUE') && journey.dueAt) {
    facts.append(fact(t('journey.due'), timeEl(journey.dueAt), stage === 'JOURNEY_STAGE_OVERDUE' ? 'due late' : 'due'));
  }
  if (journey.renewals > 0 && (onLoan || stage === 'JOURNEY_STAGE_RETURNED' || stage === 'JOURNEY_STAGE_LOST')) {
    facts.append(fact(t('journey.renewals'), t('journey.renewalsValue', { n: journey.renewals }), 'renewals'));
  }
  if (stage === 'JOURNEY_STAGE_LOST' && journey.barcode) {
    facts.append(fact(t('journey.copy'), h('span', { class: 'barcode' }, journey.barcode), 'copy'));
  }
  if (journey.returnedAt) {
    facts.append(fact(t('journey.returnedAt'), timeEl(journey.returnedAt), 'returned'));
  }
  const overdue =
    stage === 'JOURNEY_STAGE_OVERDUE'
      ? h(
          'p',
          { class: 'overdue' },
          h('span', { class: 'overdue-mark', 'aria-hidden': 'true' }, '!'),
          t('journey.overdue', { time: formatTime(journey.dueAt) }),
        )
      : null;
  let confirmation = null;
  if (stage === 'JOURNEY_STAGE_LOST') {
    confirmation = h('p', { class: 'confirmation lost' }, t('journey.lostNote'));
  }
  if (stage === 'JOURNEY_STAGE_RETURNED') {
    const confirmed = journey.returnConfirmation === 'RETURN_CONFIRMATION_CONFIRMED';
    confirmation = h(
      'p',
      { class: 'confirmation' },
      confirmed ? t('journey.returnConfirmed') : t('journey.returnPending'),
    );
  }
  const steps = (journey.steps || []).map((step) =>
    h(
      'li',
      { class: 'step' },
      h('span', { class: 'step-name' }, t(`step.${step.kind || 'STEP_KIND_UNSPECIFIED'}`)),
      ' ',
      timeEl(step.at),
    ),
  );
  const buttons = h('div', { class: 'actions' });
  const button = (label, cls, focusKey, handler) =>
    h(
      'button',
      {
        class: cls,
        type: 'button',
        'aria-describedby': titleId,
        dataset: { focusKey: `${focusKey}-${key}` },
        onclick: (e) => handler(journey, e.currentTarget),
      },
      label,
    );
  if (stage === 'JOURNEY_STAGE_READY' && actions.rent) {
    buttons.append(button(t('journey.rent'), 'button', 'rent', actions.rent));
  }
  if (onLoan && actions.giveBack && journey.rentalId) {
    buttons.append(button(t('journey.return'), 'button', 'return', actions.giveBack));
  }
  if (onLoan && actions.renew && journey.rentalId && (journey.renewalsLeft ?? 0) > 0) {
    buttons.append(
      button(t('journey.renew', { n: journey.renewalsLeft }), 'button secondary', 'renew', actions.renew),
    );
  }
  if ((stage === 'JOURNEY_STAGE_WAITING' || stage === 'JOURNEY_STAGE_READY') && actions.cancel) {
    buttons.append(button(t('journey.cancel'), 'button secondary', 'cancel', actions.cancel));
  }
  if (FINISHED.has(stage) && actions.reserveAgain && !open && journey.bookId) {
    buttons.append(button(t('journey.reserveAgain'), 'button secondary', 'again', actions.reserveAgain));
  }
  return h(
    'li',
    {
      class: `card journey stage-${STAGE_CLASS[stage] || 'done'}`,
      dataset: { reservationId: journey.reservationId, stage, cardKey: key },
    },
    h(
      'div',
      { class: 'journey-head' },
      cardHeading(bookTitle(journey), titleId, key),
      h('span', { class: `badge ${STAGE_CLASS[stage] || 'done'}` }, stageLabel(stage)),
    ),
    overdue,
    facts.childElementCount ? facts : null,
    confirmation,
    steps.length
      ? h(
          'div',
          { class: 'steps' },
          h('h3', { class: 'steps-title' }, t('journey.steps')),
          h('ol', {}, steps),
        )
      : null,
    buttons.childElementCount ? buttons : null,
    notice,
  );
}

/**
 * Replaces `container`'s children, keeping the focus on the "same" control
 * and what was typed into the same inputs (a live update must not lose them).
 * When that control is gone (its button was pressed and the card moved on),
 * the focus goes to the same card's heading, else to `fallback`: never to
 * the page's body.
 */
export function replaceKeepingFocus(container, children, fallback = null) {
  const active = document.activeElement;
  const inside = Boolean(active && active !== container && container.contains(active));
  const focusKey = inside ? active.dataset.focusKey : undefined;
  const cardKey = inside ? active.closest('[data-card-key]')?.dataset.cardKey : undefined;
  const typed = new Map();
  for (const input of container.querySelectorAll('input[data-focus-key]')) {
    typed.set(input.dataset.focusKey, input.value);
  }
  container.replaceChildren(...children);
  for (const input of container.querySelectorAll('input[data-focus-key]')) {
    if (typed.has(input.dataset.focusKey)) input.value = typed.get(input.dataset.focusKey);
  }
  if (!inside) return;
  const again = focusKey && container.querySelector(`[data-focus-key="${CSS.escape(focusKey)}"]`);
  if (again) {
    again.focus({ preventScroll: true });
    return;
  }
  const card = cardKey && container.querySelector(`[data-card-key="${CSS.escape(cardKey)}"] .card-title`);
  if (card) {
    card.focus({ preventScroll: true });
  } else if (fallback) {
    if (!fallback.hasAttribute('tabindex')) fallback.setAttribute('tabindex', '-1');
    fallback.focus({ preventScroll: true });
  }
}

const NOTICE_KINDS = ['HOLD_READY', 'DUE_SOON', 'OVERDUE', 'HOLD_EXPIRED'];

const NOTICE_CLASS = { HOLD_READY: 'ready', DUE_SOON: 'wait', OVERDUE: 'late', HOLD_EXPIRED: 'done' };

/** A notice's kind without its prefix (`HOLD_READY`, ...), or `UNSPECIFIED`. */
export function noticeKind(notice) {
  const kind = String(notice.kind || '').replace('NOTICE_KIND_', '');
  return NOTICE_KINDS.includes(kind) ? kind : 'UNSPECIFIED';
}

/**
 * What a notice says, by its kind: "Pick up copy 00001234 of “Kindred” by
 * <deadline>.", "“Kindred” is due on <date>.", ... As text with `plain`,
 * else as children (the title in its own language, the dates as time).
 */
export function noticeWords(notice, { plain = false } = {}) {
  const kind = noticeKind(notice);
  const key = kind === 'HOLD_READY' && !notice.barcode ? 'notices.text.HOLD_READY_NO_COPY' : `notices.text.${kind}`;
  const title = notice.bookTitle || t('journey.untitled', { id: String(notice.bookId || '').slice(0, 8) });
  if (plain) return t(key, { title, barcode: notice.barcode || '', time: formatTime(notice.deadline) });
  return sentenceOf(key, {
    title: h('span', { class: 'inbox-title', lang: textLang(title) }, title),
    barcode: h('span', { class: 'barcode' }, notice.barcode || ''),
    time: timeEl(notice.deadline),
  });
}

/** A notice on My Page: its kind, whether it is new, when it came, and what it says. */
export function noticeRow(notice) {
  const kind = noticeKind(notice);
  const unread = !notice.read;
  return h(
    'li',
    {
      class: unread ? 'inbox-row unread' : 'inbox-row',
      dataset: { noticeId: notice.noticeId, kind, read: String(!unread) },
    },
    h(
      'p',
      { class: 'inbox-meta' },
      h('span', { class: `badge ${NOTICE_CLASS[kind] || 'done'}` }, t(`notices.kind.${kind}`)),
      unread ? h('span', { class: 'badge new' }, t('notices.new')) : null,
      h('span', {}, sentenceOf('notices.sent', { time: timeEl(notice.createdAt) })),
    ),
    h('p', { class: 'inbox-words' }, noticeWords(notice)),
  );
}

/** A notice whose e-mail could not be delivered, at the desk. */
export function failedRow(notice) {
  const kind = noticeKind(notice);
  const title = notice.bookTitle || t('journey.untitled', { id: String(notice.bookId || '').slice(0, 8) });
  return h(
    'li',
    { class: 'staff-row failed-row', dataset: { noticeId: notice.noticeId, memberId: notice.memberId } },
    h('span', { class: 'staff-when' }, timeEl(notice.createdAt)),
    memberLink(notice.memberId, `failed-${idPart(notice.noticeId)}`),
    h('span', { class: `badge ${NOTICE_CLASS[kind] || 'done'}` }, t(`notices.kind.${kind}`)),
    h('span', { class: 'staff-title', lang: textLang(title) }, title),
    notice.barcode ? h('span', { class: 'barcode' }, notice.barcode) : null,
    h(
      'span',
      { class: 'hint failed-why' },
      t('failed.attempts', { n: notice.attempts ?? 0 }),
      notice.lastError ? ' · ' : '',
      notice.lastError ? sentenceOf('failed.lastError', { error: h('span', { lang: 'en' }, notice.lastError) }) : null,
    ),
  );
}

/**
 * A member's notice settings as a librarian reads them (`settings`:
 * GetNoticeSettings' answer): where e-mail goes, in which language, which
 * notices, and when they were last changed.
 */
export function settingsFacts(settings) {
  const wanted = [
    ['holdReady', 'HOLD_READY'],
    ['dueSoon', 'DUE_SOON'],
    ['overdue', 'OVERDUE'],
    ['holdExpired', 'HOLD_EXPIRED'],
  ]
    .filter(([field]) => settings[field])
    .map(([, kind]) => t(`notices.kind.${kind}`));
  const language = has(`settings.lang.${settings.language}`) ? t(`settings.lang.${settings.language}`) : settings.language;
  return [
    fact(t('settings.email'), settings.email || t('settings.noEmail'), 'email'),
    fact(t('settings.language'), language || '', 'language'),
    fact(t('settings.kinds'), wanted.length ? wanted.join(', ') : t('settings.noKinds'), 'kinds'),
    fact(t('settings.changedAt'), settings.updatedAt ? timeEl(settings.updatedAt) : t('settings.defaults'), 'changed'),
  ];
}
