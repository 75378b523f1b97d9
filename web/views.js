// Rendering: books and journeys as DOM elements built from data (never from
// HTML strings, so no title can inject markup).

import { formatTime, t } from './i18n.js';

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
const idPart = (id) => String(id).replace(/[^A-Za-z0-9_-]/g, '');

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
};

export const stageLabel = (stage) => t(`stage.${stage || 'JOURNEY_STAGE_UNSPECIFIED'}`);

export function bookTitle(journey) {
  return journey.bookTitle || t('journey.untitled', { id: String(journey.bookId).slice(0, 8) });
}

/**
 * A catalogue card. `actions.reserve(book, button)` and
 * `actions.addCopies(book, copies, button)` when the caller may do them.
 */
export function bookCard(book, actions) {
  const key = idPart(book.bookId);
  const titleId = `book-${key}-title`;
  const status = book.status || 'BOOK_STATUS_UNSPECIFIED';
  const total = book.totalCopies ?? 0;
  const facts = h(
    'dl',
    { class: 'facts' },
    h('div', {}, h('dt', {}, t('book.held')), h('dd', {}, book.heldCopies ?? 0)),
    h('div', {}, h('dt', {}, t('book.onLoan')), h('dd', {}, book.onLoanCopies ?? 0)),
    h(
      'div',
      { class: (book.waiting ?? 0) > 0 ? 'queue busy' : 'queue' },
      h('dt', {}, t('book.queue')),
      h('dd', {}, book.waiting ? t('book.queueLength', { n: book.waiting }) : t('book.queueNone')),
    ),
  );
  const buttons = h('div', { class: 'actions' });
  if (actions.reserve) {
    buttons.append(
      h(
        'button',
        {
          class: 'button',
          type: 'button',
          'aria-describedby': titleId,
          dataset: { focusKey: `reserve-${key}` },
          onclick: (e) => actions.reserve(book, e.currentTarget),
        },
        t('book.reserve'),
      ),
    );
  }
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
  return h(
    'li',
    { class: 'card book', dataset: { bookId: book.bookId } },
    h('h2', { id: titleId, class: 'card-title' }, book.title),
    h(
      'p',
      { class: 'byline' },
      t('book.by', { author: book.author }),
      book.isbn ? h('span', { class: 'isbn' }, t('book.isbn', { isbn: book.isbn })) : null,
    ),
    h(
      'p',
      { class: 'availability' },
      h('span', { class: `badge ${STATUS_CLASS[status] || 'done'}` }, t(`book.status.${status}`)),
      h('span', { class: 'free' }, t('book.free', { free: book.freeCopies ?? 0, n: total })),
    ),
    facts,
    buttons,
  );
}

function fact(label, value, cls) {
  return h('div', { class: cls }, h('dt', {}, label), h('dd', {}, value));
}

function timeEl(value) {
  return h('time', { datetime: value }, formatTime(value));
}

/**
 * A My Page card. `actions.rent(journey, button)`, `actions.giveBack(...)`
 * and `actions.cancel(...)` when the viewer may do them.
 */
export function journeyCard(journey, actions) {
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
  if ((stage === 'JOURNEY_STAGE_RENTED' || stage === 'JOURNEY_STAGE_OVERDUE') && journey.dueAt) {
    facts.append(fact(t('journey.due'), timeEl(journey.dueAt), stage === 'JOURNEY_STAGE_OVERDUE' ? 'due late' : 'due'));
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
  if ((stage === 'JOURNEY_STAGE_RENTED' || stage === 'JOURNEY_STAGE_OVERDUE') && actions.giveBack && journey.rentalId) {
    buttons.append(button(t('journey.return'), 'button', 'return', actions.giveBack));
  }
  if ((stage === 'JOURNEY_STAGE_WAITING' || stage === 'JOURNEY_STAGE_READY') && actions.cancel) {
    buttons.append(button(t('journey.cancel'), 'button secondary', 'cancel', actions.cancel));
  }
  return h(
    'li',
    {
      class: `card journey stage-${STAGE_CLASS[stage] || 'done'}`,
      dataset: { reservationId: journey.reservationId, stage },
    },
    h(
      'div',
      { class: 'journey-head' },
      h('h2', { id: titleId, class: 'card-title' }, bookTitle(journey)),
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
  );
}

/**
 * Replaces `container`'s children, keeping the focus on the "same" control
 * and what was typed into the same inputs (a live update must not lose them).
 */
export function replaceKeepingFocus(container, children) {
  const active = document.activeElement;
  const focusKey = active && container.contains(active) ? active.dataset.focusKey : undefined;
  const typed = new Map();
  for (const input of container.querySelectorAll('input[data-focus-key]')) {
    typed.set(input.dataset.focusKey, input.value);
  }
  container.replaceChildren(...children);
  for (const input of container.querySelectorAll('input[data-focus-key]')) {
    if (typed.has(input.dataset.focusKey)) input.value = typed.get(input.dataset.focusKey);
  }
  if (focusKey) {
    const again = container.querySelector(`[data-focus-key="${CSS.escape(focusKey)}"]`);
    if (again) again.focus({ preventScroll: true });
  }
}
