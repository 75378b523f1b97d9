//! `rentalbook check`: compares the truth of reserve-svc (reservations, copy
//! totals) and rental-svc (rentals) with each other, with the projections of
//! book-svc and view-svc and with the event stream, and lists every
//! difference under the name of the invariant it breaks. It reads the
//! services' databases directly, as operator tools may (services never do).
//!
//! With an event bus (`NATS_URL`, or the all-in-one's `events.db`) it also
//! reads the stream: every event applied once by each consumer, nothing
//! waiting, nothing dead-lettered, and My Page equal to a replay of the
//! stream into a fresh read model. With `--history` it checks that every
//! acknowledged call of a recorded workload left its effect.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, ValueEnum};
use prost::Message;
use rentalbook_plumbing::bus::{
    ConsumerSpec, DeadLetter, EventBus, NatsBus, NatsSettings, Outgoing, Stored, Subscription,
};
use rentalbook_plumbing::db::Db;
use rentalbook_plumbing::embedded_bus::{EmbeddedBus, subject_matches};
use rentalbook_plumbing::schema::{inbox, outbox};
use rentalbook_plumbing::time;
use rentalbook_proto::events::v1::Envelope;
use rentalbook_proto::events::v1::envelope::Body;
use sea_orm::{ConnectionTrait, EntityTrait, PaginatorTrait};
use tokio_util::sync::CancellationToken;

use book_svc::domain::Isbn;
use book_svc::store::books;
use rental_svc::domain::confirmation;
use rental_svc::domain::status as rental_status;
use rental_svc::store::rentals;
use rentalbook_plumbing::ids::ERASED_MEMBER;
use reserve_svc::store::{book_stock, item_state, items as desk_items, reservations, status};
use view_svc::domain::stage;
use view_svc::store::{journeys, steps, titles};

/// What the check holds the system to; each difference names one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum Invariant {
    /// Every acknowledged call of `--history` left its effect.
    Acknowledged,
    /// Per book, copies held for pickup plus copies on loan never exceed the total.
    Capacity,
    /// book-svc's numbers equal the lending desk's and the stream's latest snapshot.
    Catalogue,
    /// No two books of the catalogue share an ISBN. Books registered twice
    /// before RegisterBook refused a known ISBN stay until a librarian
    /// merges them; this lists them.
    DuplicateIsbn,
    /// A book's waiting reservations hold distinct places (positions 1..n),
    /// and nobody waits while a copy is free.
    Queue,
    /// A member has at most one open reservation for a book, and none for a
    /// book they have on loan.
    OneOpen,
    /// A FULFILLED reservation has exactly one ACTIVE or RETURNED rental, and
    /// the other way round (R7); reserve-svc knows of every return.
    Loans,
    /// Every event of the stream was applied exactly once by each consumer
    /// it is meant for, with its effect, and no consumer has any left.
    AppliedOnce,
    /// No consumer gave up on an event.
    DeadLetters,
    /// Every item serves at most one reservation: the READY one held for
    /// its member (R9) or the loan it is out on, whose barcode it has, and
    /// only while in service; every hold and loan of a book with items has
    /// one; an ACTIVE rental records the barcode the desk lent.
    Items,
    /// Every returned rental is CONFIRMED by the lending desk.
    Confirmed,
    /// Every event the services committed has been published.
    Outbox,
    /// Each reservation has one journey on My Page, in the stage and queue
    /// position the truth says.
    Journeys,
    /// My Page equals a replay of the stream into a fresh read model.
    Replay,
}

impl Invariant {
    pub fn name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    }
}

#[derive(Args, Clone, Debug)]
pub struct CheckArgs {
    /// The all-in-one's data directory, for the default SQLite databases.
    #[arg(long, env = "RENTALBOOK_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// book-svc's database (default: book.db in the data directory).
    #[arg(long, env = "BOOK_DATABASE_URL")]
    pub book_database_url: Option<String>,
    /// reserve-svc's database.
    #[arg(long, env = "RESERVE_DATABASE_URL")]
    pub reserve_database_url: Option<String>,
    /// rental-svc's database.
    #[arg(long, env = "RENTAL_DATABASE_URL")]
    pub rental_database_url: Option<String>,
    /// view-svc's database.
    #[arg(long, env = "VIEW_DATABASE_URL")]
    pub view_database_url: Option<String>,
    /// Rentals PENDING for less than this are in flight, not a difference.
    #[arg(long, default_value = "30s")]
    pub grace: rentalbook_plumbing::config::PolicyDuration,
    /// NATS JetStream whose stream the services use; without it, the
    /// embedded bus's event log (`--events-db`) if there is one.
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,
    #[arg(long, env = "NATS_STREAM", default_value = "RENTALBOOK")]
    pub nats_stream: String,
    #[arg(long, env = "NATS_SUBJECT_PREFIX", default_value = "rentalbook")]
    pub nats_subject_prefix: String,
    /// The embedded bus's event log (default: events.db in the data
    /// directory, when the databases are the data directory's too).
    #[arg(long)]
    pub events_db: Option<PathBuf>,
    /// view-svc's durable consumer.
    #[arg(long, env = "VIEW_CONSUMER_NAME", default_value = "view-svc")]
    pub view_consumer: String,
    /// A workload's record of calls (tab-separated: a `seq member op book_id
    /// target_id result_id outcome ...` header, then one line per call):
    /// every acknowledged Reserve, CancelReservation, Rent and ReturnRental
    /// must have left its effect.
    #[arg(long)]
    pub history: Option<PathBuf>,
    /// Invariants not to check, comma-separated (the replay takes longest).
    #[arg(long, env = "RENTALBOOK_CHECK_SKIP", value_delimiter = ',')]
    pub skip: Vec<Invariant>,
}

async fn open(given: &Option<String>, args: &CheckArgs, file: &str) -> anyhow::Result<Db> {
    let url = given
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}?mode=ro", args.data_dir.join(file).display()));
    Db::connect(&url, 2)
        .await
        .with_context(|| format!("opening {url}"))
}

/// The differences found, each under the invariant it breaks.
#[derive(Default)]
pub struct Findings {
    skip: Vec<Invariant>,
    pub list: Vec<(Invariant, String)>,
    /// What was looked at, in words.
    pub notes: Vec<String>,
}

impl Findings {
    fn wants(&self, invariant: Invariant) -> bool {
        !self.skip.contains(&invariant)
    }

    fn push(&mut self, invariant: Invariant, detail: String) {
        if self.wants(invariant) {
            self.list.push((invariant, detail));
        }
    }
}

/// Every difference found; empty when everything agrees.
pub async fn differences(args: &CheckArgs) -> anyhow::Result<Findings> {
    let mut found = Findings {
        skip: args.skip.clone(),
        ..Default::default()
    };
    let reserve = open(&args.reserve_database_url, args, "reserve.db").await?;
    let rental = open(&args.rental_database_url, args, "rental.db").await?;
    let book = open(&args.book_database_url, args, "book.db").await?;
    let view = open(&args.view_database_url, args, "view.db").await?;

    let truth = Truth {
        holds: reservations::Entity::find().all(reserve.conn()).await?,
        stock: book_stock::Entity::find().all(reserve.conn()).await?,
        items: desk_items::Entity::find().all(reserve.conn()).await?,
        loans: rentals::Entity::find().all(rental.conn()).await?,
        catalogue: books::Entity::find().all(book.conn()).await?,
        pages: journeys::Entity::find().all(view.conn()).await?,
    };
    loans(&truth, args, &mut found);
    let tally = copies(&truth, &mut found);
    queues(&truth, &tally, &mut found);
    one_open(&truth, &mut found);
    items(&truth, &mut found);
    confirmed(&truth, &mut found);
    pages(&truth, &mut found);
    duplicate_isbns(&truth, &mut found);
    if let Some(path) = &args.history {
        acknowledged(&truth, &read_history(path)?, &mut found);
    }
    for (service, db) in [
        ("book-svc", &book),
        ("reserve-svc", &reserve),
        ("rental-svc", &rental),
        ("view-svc", &view),
    ] {
        let waiting = outbox::Entity::find().count(db.conn()).await?;
        if waiting > 0 {
            found.push(
                Invariant::Outbox,
                format!("{waiting} event(s) of {service} are not published yet"),
            );
        }
    }

    let stream_wanted = [
        Invariant::AppliedOnce,
        Invariant::DeadLetters,
        Invariant::Replay,
        Invariant::Catalogue,
    ]
    .iter()
    .any(|i| found.wants(*i));
    match bus_source(args) {
        Some(source) if stream_wanted => {
            let scratch = Scratch::new()?;
            let bus = source.open(&scratch).await?;
            let stream = read_stream(bus.as_ref()).await?;
            found.notes.push(format!(
                "stream ({}): {} events, {} distinct",
                source.describe(),
                stream.events.len(),
                stream.distinct()
            ));
            let dbs = Dbs {
                book: &book,
                reserve: &reserve,
                rental: &rental,
                view: &view,
            };
            applied_once(&truth, &stream, &dbs, bus.as_ref(), args, &mut found).await?;
            snapshots(&truth, &stream, &mut found);
            if found.wants(Invariant::DeadLetters) {
                for letter in bus.dead_letters().await? {
                    found.push(Invariant::DeadLetters, dead_letter_line(&letter));
                }
            }
            if found.wants(Invariant::Replay) {
                if stream.trimmed {
                    found
                        .notes
                        .push("the stream no longer starts at its first event: no replay".into());
                } else {
                    replay(bus.clone(), &view, &scratch, &mut found).await?;
                }
            }
        }
        Some(_) => {}
        None => found.notes.push(
            "no event bus given (NATS_URL or --events-db): the stream was not checked".into(),
        ),
    }
    Ok(found)
}

/// Prints the differences; the exit status says whether there were any.
pub async fn run(args: CheckArgs) -> anyhow::Result<bool> {
    let found = differences(&args).await?;
    if found.list.is_empty() {
        println!(
            "consistent: reservations, rentals, the catalogue's availability and My Page agree"
        );
    } else {
        println!("{} differences:", found.list.len());
        for (invariant, detail) in &found.list {
            println!("  [{}] {detail}", invariant.name());
        }
    }
    for note in &found.notes {
        println!("note: {note}");
    }
    Ok(found.list.is_empty())
}

// ---- the truth and its projections ------------------------------------------

struct Truth {
    holds: Vec<reservations::Model>,
    stock: Vec<book_stock::Model>,
    items: Vec<desk_items::Model>,
    loans: Vec<rentals::Model>,
    catalogue: Vec<books::Model>,
    pages: Vec<journeys::Model>,
}

impl Truth {
    fn loan_of(&self) -> HashMap<&str, &rentals::Model> {
        self.loans
            .iter()
            .map(|l| (l.rental_id.as_str(), l))
            .collect()
    }
}

fn is_open(r: &reservations::Model) -> bool {
    r.status == status::WAITING || r.status == status::READY
}

fn on_loan(r: &reservations::Model) -> bool {
    r.status == status::FULFILLED && r.returned_at.is_none()
}

/// R9: items and the holds and loans they serve agree.
fn items(truth: &Truth, found: &mut Findings) {
    let hold_of: HashMap<&str, &reservations::Model> = truth
        .holds
        .iter()
        .map(|r| (r.reservation_id.as_str(), r))
        .collect();
    let mut served: HashMap<&str, &desk_items::Model> = HashMap::new();
    for i in &truth.items {
        let Some(rid) = i.reservation_id.as_deref() else {
            continue;
        };
        served.insert(rid, i);
        let what = format!("item {} (book {})", i.barcode, i.book_id);
        if i.state != item_state::IN_SERVICE {
            found.push(
                Invariant::Items,
                format!("{what} is {} but serves reservation {rid}", i.state),
            );
        }
        match hold_of.get(rid) {
            None => found.push(
                Invariant::Items,
                format!("{what} serves reservation {rid}, which does not exist"),
            ),
            Some(r) if r.status != status::READY && !on_loan(r) => found.push(
                Invariant::Items,
                format!(
                    "{what} serves reservation {rid}, which is {} (neither held nor on loan)",
                    r.status
                ),
            ),
            Some(r)
                if r.barcode.as_deref() != Some(i.barcode.as_str()) || r.book_id != i.book_id =>
            {
                found.push(
                    Invariant::Items,
                    format!(
                        "{what} serves reservation {rid}, which names item {:?} of book {}",
                        r.barcode, r.book_id
                    ),
                )
            }
            Some(_) => {}
        }
    }
    let with_items: BTreeSet<&str> = truth.items.iter().map(|i| i.book_id.as_str()).collect();
    let loan_of = truth.loan_of();
    for r in &truth.holds {
        let serves = r.status == status::READY || on_loan(r);
        if serves && with_items.contains(r.book_id.as_str()) && r.barcode.is_some() {
            if !served.contains_key(r.reservation_id.as_str()) {
                found.push(
                    Invariant::Items,
                    format!(
                        "reservation {} ({}) names item {:?}, which does not serve it",
                        r.reservation_id, r.status, r.barcode
                    ),
                );
            }
        } else if serves && with_items.contains(r.book_id.as_str()) && r.status == status::READY {
            found.push(
                Invariant::Items,
                format!(
                    "reservation {} is READY with no item held for it",
                    r.reservation_id
                ),
            );
        }
        if on_loan(r)
            && let Some(l) = r.rental_id.as_deref().and_then(|id| loan_of.get(id))
            && l.status == rental_status::ACTIVE
            && l.barcode.is_some()
            && l.barcode != r.barcode
        {
            found.push(
                Invariant::Items,
                format!(
                    "rental {} records item {:?}, the desk lent {:?}",
                    l.rental_id, l.barcode, r.barcode
                ),
            );
        }
    }
}

/// R7 and R8: reservations and rentals agree.
fn loans(truth: &Truth, args: &CheckArgs, found: &mut Findings) {
    let now = time::now();
    let grace = args.grace.get();
    let young = |l: &rentals::Model| (now - l.created_at).to_std().unwrap_or_default() < grace;
    let loan_of = truth.loan_of();
    let hold_of_rental: HashMap<&str, &reservations::Model> = truth
        .holds
        .iter()
        .filter_map(|r| r.rental_id.as_deref().map(|id| (id, r)))
        .collect();
    for r in truth.holds.iter().filter(|r| r.status == status::FULFILLED) {
        let rental_id = r.rental_id.as_deref().unwrap_or_default();
        match loan_of.get(rental_id) {
            Some(l) if l.status == rental_status::ACTIVE || l.status == rental_status::RETURNED => {
                if l.status == rental_status::RETURNED && r.returned_at.is_none() {
                    found.push(
                        Invariant::Loans,
                        format!("rental {rental_id} is RETURNED but reserve-svc has not recorded the return"),
                    );
                }
                if l.status == rental_status::ACTIVE && r.returned_at.is_some() {
                    found.push(
                        Invariant::Loans,
                        format!("reserve-svc recorded the return of rental {rental_id}, which is still ACTIVE"),
                    );
                }
                if l.reservation_id.as_deref() != Some(r.reservation_id.as_str()) {
                    found.push(
                        Invariant::Loans,
                        format!(
                            "rental {rental_id} names reservation {:?}, but reservation {} names it",
                            l.reservation_id, r.reservation_id
                        ),
                    );
                }
            }
            Some(l) if l.status == rental_status::PENDING && young(l) => {}
            // R13: a copy lost on loan ends the loan on both sides.
            Some(l) if l.status == rental_status::LOST && r.returned_at.is_some() => {}
            Some(l) => found.push(
                Invariant::Loans,
                format!(
                    "reservation {} is FULFILLED but rental {rental_id} is {}",
                    r.reservation_id, l.status
                ),
            ),
            None => found.push(
                Invariant::Loans,
                format!(
                    "reservation {} is FULFILLED by rental {rental_id}, which rental-svc does not know",
                    r.reservation_id
                ),
            ),
        }
    }
    for l in &truth.loans {
        let fulfilled = hold_of_rental
            .get(l.rental_id.as_str())
            .is_some_and(|r| r.status == status::FULFILLED);
        let settled = l.status == rental_status::ACTIVE
            || l.status == rental_status::RETURNED
            || l.status == rental_status::LOST;
        if settled && !fulfilled {
            found.push(
                Invariant::Loans,
                format!(
                    "rental {} is {} without a FULFILLED reservation",
                    l.rental_id, l.status
                ),
            );
        }
        if l.status == rental_status::PENDING && !young(l) {
            found.push(
                Invariant::Loans,
                format!(
                    "rental {} has been PENDING since {}",
                    l.rental_id, l.created_at
                ),
            );
        }
    }
}

/// A book's copies as the desk's reservations say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Copies {
    total: i32,
    held: i32,
    on_loan: i32,
    waiting: i32,
}

/// Capacity, and book-svc's projection against the desk's truth.
fn copies<'a>(truth: &'a Truth, found: &mut Findings) -> BTreeMap<&'a str, Copies> {
    let mut tally: BTreeMap<&str, Copies> = truth
        .stock
        .iter()
        .map(|s| {
            (
                s.book_id.as_str(),
                Copies {
                    total: s.total_copies,
                    ..Default::default()
                },
            )
        })
        .collect();
    for r in &truth.holds {
        let Some(t) = tally.get_mut(r.book_id.as_str()) else {
            found.push(
                Invariant::Catalogue,
                format!(
                    "reservation {} is for book {}, which the desk does not stock",
                    r.reservation_id, r.book_id
                ),
            );
            continue;
        };
        match r.status.as_str() {
            status::READY => t.held += 1,
            status::FULFILLED if r.returned_at.is_none() => t.on_loan += 1,
            status::WAITING => t.waiting += 1,
            _ => {}
        }
    }
    for (book_id, c) in &tally {
        if c.held + c.on_loan > c.total {
            found.push(
                Invariant::Capacity,
                format!(
                    "book {book_id}: {} held + {} on loan is more than its {} copies",
                    c.held, c.on_loan, c.total
                ),
            );
        }
    }
    let listed: HashMap<&str, &books::Model> = truth
        .catalogue
        .iter()
        .map(|b| (b.book_id.as_str(), b))
        .collect();
    for (book_id, c) in &tally {
        match listed.get(book_id) {
            None => found.push(
                Invariant::Catalogue,
                format!("book {book_id} is stocked by the desk but not in the catalogue"),
            ),
            Some(b) => {
                let shown = Copies {
                    total: b.circulating_copies,
                    held: b.held_copies,
                    on_loan: b.on_loan_copies,
                    waiting: b.waiting,
                };
                if shown != *c {
                    found.push(
                        Invariant::Catalogue,
                        format!(
                            "book {book_id}: book-svc shows total/held/on loan/waiting {}/{}/{}/{}, the desk {}/{}/{}/{}",
                            shown.total, shown.held, shown.on_loan, shown.waiting,
                            c.total, c.held, c.on_loan, c.waiting
                        ),
                    );
                }
            }
        }
    }
    for b in &truth.catalogue {
        if !tally.contains_key(b.book_id.as_str()) {
            found.push(
                Invariant::Catalogue,
                format!(
                    "book {} is in the catalogue but unknown to the desk",
                    b.book_id
                ),
            );
        }
    }
    tally
}

/// Books sharing an ISBN, each group named once.
fn duplicate_isbns(truth: &Truth, found: &mut Findings) {
    let mut holders: BTreeMap<String, Vec<&books::Model>> = BTreeMap::new();
    for b in &truth.catalogue {
        let Some(isbn) = b.isbn.as_deref().filter(|i| !i.is_empty()) else {
            continue;
        };
        // Stored ISBN-13 since it is normalised; parsed again all the same.
        let isbn = Isbn::parse(isbn).map_or_else(|_| isbn.to_owned(), |i| i.as_str().to_owned());
        holders.entry(isbn).or_default().push(b);
    }
    for (isbn, mut books) in holders {
        if books.len() < 2 {
            continue;
        }
        books.sort_by(|a, b| a.book_id.cmp(&b.book_id));
        let named: Vec<String> = books
            .iter()
            .map(|b| format!("{} \"{}\"", b.book_id, b.title))
            .collect();
        found.push(
            Invariant::DuplicateIsbn,
            format!(
                "ISBN {isbn} is shared by {} books: {}",
                books.len(),
                named.join(", ")
            ),
        );
    }
}

/// Queue places are distinct per book, and the head of a queue is served
/// whenever a copy is free (R3, R5).
fn queues(truth: &Truth, tally: &BTreeMap<&str, Copies>, found: &mut Findings) {
    let mut places: BTreeMap<(&str, i64), Vec<&str>> = BTreeMap::new();
    for r in truth.holds.iter().filter(|r| r.status == status::WAITING) {
        places
            .entry((r.book_id.as_str(), r.queue_seq))
            .or_default()
            .push(r.reservation_id.as_str());
    }
    for ((book_id, seq), ids) in &places {
        if ids.len() > 1 {
            found.push(
                Invariant::Queue,
                format!(
                    "book {book_id}: waiting reservations {} share queue place {seq}, so their positions are not 1..n",
                    ids.join(", ")
                ),
            );
        }
    }
    for (book_id, c) in tally {
        let free = c.total - c.held - c.on_loan;
        if free > 0 && c.waiting > 0 {
            found.push(
                Invariant::Queue,
                format!(
                    "book {book_id}: {free} copies are free while {} members wait",
                    c.waiting
                ),
            );
        }
    }
}

/// R2: one open reservation per member and book, none for a book on loan.
fn one_open(truth: &Truth, found: &mut Findings) {
    let mut open: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for r in truth.holds.iter().filter(|r| is_open(r)) {
        open.entry((r.member_id.as_str(), r.book_id.as_str()))
            .or_default()
            .push(r.reservation_id.as_str());
    }
    for ((member, book_id), ids) in &open {
        if ids.len() > 1 {
            found.push(
                Invariant::OneOpen,
                format!(
                    "member {member} has {} open reservations for book {book_id}: {}",
                    ids.len(),
                    ids.join(", ")
                ),
            );
        }
    }
    for r in truth.holds.iter().filter(|r| on_loan(r)) {
        if let Some(ids) = open.get(&(r.member_id.as_str(), r.book_id.as_str())) {
            found.push(
                Invariant::OneOpen,
                format!(
                    "member {} has book {} on loan (rental {}) and an open reservation for it: {}",
                    r.member_id,
                    r.book_id,
                    r.rental_id.as_deref().unwrap_or_default(),
                    ids.join(", ")
                ),
            );
        }
    }
}

/// Every returned rental's confirmation came.
fn confirmed(truth: &Truth, found: &mut Findings) {
    for l in truth
        .loans
        .iter()
        .filter(|l| l.status == rental_status::RETURNED)
    {
        if l.return_confirmation.as_deref() != Some(confirmation::CONFIRMED) {
            found.push(
                Invariant::Confirmed,
                format!(
                    "rental {} was returned but its return is {}",
                    l.rental_id,
                    l.return_confirmation.as_deref().unwrap_or("unconfirmed")
                ),
            );
        }
    }
}

/// view-svc's journeys against reservations and rentals.
fn pages(truth: &Truth, found: &mut Findings) {
    let loan_of = truth.loan_of();
    let journey_of: HashMap<&str, &journeys::Model> = truth
        .pages
        .iter()
        .map(|j| (j.reservation_id.as_str(), j))
        .collect();
    let waiting_before = |r: &reservations::Model| {
        truth
            .holds
            .iter()
            .filter(|o| {
                o.book_id == r.book_id && o.status == status::WAITING && o.queue_seq < r.queue_seq
            })
            .count()
    };
    let page_waiting_before = |j: &journeys::Model| {
        truth
            .pages
            .iter()
            .filter(|o| {
                o.book_id == j.book_id && o.stage == stage::WAITING && o.queue_seq < j.queue_seq
            })
            .count()
    };
    for r in &truth.holds {
        let loan = r.rental_id.as_deref().and_then(|id| loan_of.get(id));
        let expected = match r.status.as_str() {
            status::WAITING => stage::WAITING,
            status::READY => stage::READY,
            status::CANCELLED => stage::CANCELLED,
            status::EXPIRED => stage::EXPIRED,
            _ => match loan {
                Some(l) if l.status == rental_status::RETURNED => stage::RETURNED,
                Some(l) if l.status == rental_status::LOST => stage::LOST,
                _ => stage::RENTED,
            },
        };
        match journey_of.get(r.reservation_id.as_str()) {
            // Erased history (HISTORY_RETENTION, EraseMyHistory): the desk
            // names nobody and My Page has forgotten the journey.
            None if r.member_id == ERASED_MEMBER => {}
            None => found.push(
                Invariant::Journeys,
                format!(
                    "reservation {} has no journey on {}'s page",
                    r.reservation_id, r.member_id
                ),
            ),
            Some(j) if j.stage != expected => found.push(
                Invariant::Journeys,
                format!(
                    "journey {} shows {} but the truth is {expected}",
                    r.reservation_id, j.stage
                ),
            ),
            Some(j)
                if expected == stage::WAITING && page_waiting_before(j) != waiting_before(r) =>
            {
                found.push(
                    Invariant::Journeys,
                    format!(
                        "journey {} shows queue position {} but the truth is {}",
                        r.reservation_id,
                        page_waiting_before(j) + 1,
                        waiting_before(r) + 1
                    ),
                )
            }
            Some(j) if expected == stage::RETURNED => {
                let truth_says = loan.and_then(|l| l.return_confirmation.as_deref());
                if j.return_confirmation.as_deref() != truth_says {
                    found.push(
                        Invariant::Journeys,
                        format!(
                            "journey {} shows the return {} but rental-svc says {}",
                            r.reservation_id,
                            j.return_confirmation.as_deref().unwrap_or("unconfirmed"),
                            truth_says.unwrap_or("unconfirmed")
                        ),
                    );
                }
            }
            Some(_) => {}
        }
    }
    let known: HashSet<&str> = truth
        .holds
        .iter()
        .map(|r| r.reservation_id.as_str())
        .collect();
    for j in &truth.pages {
        if !known.contains(j.reservation_id.as_str()) {
            found.push(
                Invariant::Journeys,
                format!("journey {} has no reservation", j.reservation_id),
            );
        }
    }
}

// ---- a workload's history -----------------------------------------------------

/// One recorded call.
#[derive(Clone, Debug)]
struct Call {
    line: usize,
    member: String,
    op: String,
    book_id: String,
    target_id: String,
    result_id: String,
    outcome: String,
}

fn read_history(path: &Path) -> anyhow::Result<Vec<Call>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.starts_with('#') && !l.trim().is_empty());
    let (_, header) = lines.next().context("the history has no header line")?;
    let columns: Vec<&str> = header.split('\t').collect();
    let at = |name: &str| {
        columns
            .iter()
            .position(|c| *c == name)
            .with_context(|| format!("the history has no `{name}` column"))
    };
    let (member, op, book_id, target_id, result_id, outcome) = (
        at("member")?,
        at("op")?,
        at("book_id")?,
        at("target_id")?,
        at("result_id")?,
        at("outcome")?,
    );
    lines
        .map(|(n, l)| {
            let fields: Vec<&str> = l.split('\t').collect();
            let field = |i: usize| fields.get(i).copied().unwrap_or_default().to_owned();
            anyhow::ensure!(
                fields.len() == columns.len(),
                "history line {}: {} fields, the header has {}",
                n + 1,
                fields.len(),
                columns.len()
            );
            Ok(Call {
                line: n + 1,
                member: field(member),
                op: field(op),
                book_id: field(book_id),
                target_id: field(target_id),
                result_id: field(result_id),
                outcome: field(outcome),
            })
        })
        .collect()
}

/// Every acknowledged change is there with its effect. Calls that failed
/// with a transport error or a timeout may have happened or not: either is
/// allowed.
fn acknowledged(truth: &Truth, calls: &[Call], found: &mut Findings) {
    let hold: HashMap<&str, &reservations::Model> = truth
        .holds
        .iter()
        .map(|r| (r.reservation_id.as_str(), r))
        .collect();
    let loan_of = truth.loan_of();
    let mut acked = 0usize;
    for c in calls.iter().filter(|c| c.outcome == "OK") {
        let wrong = match c.op.as_str() {
            "Reserve" => {
                acked += 1;
                match hold.get(c.result_id.as_str()) {
                    None => Some("is not there".to_owned()),
                    Some(r) if r.member_id != c.member || r.book_id != c.book_id => {
                        Some(format!("belongs to {} for book {}", r.member_id, r.book_id))
                    }
                    Some(_) => None,
                }
            }
            "CancelReservation" => {
                acked += 1;
                match hold.get(c.target_id.as_str()) {
                    None => Some("is not there".to_owned()),
                    Some(r) if r.status != status::CANCELLED => Some(format!("is {}", r.status)),
                    Some(_) => None,
                }
            }
            "Rent" => {
                acked += 1;
                match loan_of.get(c.result_id.as_str()) {
                    None => Some("is not there".to_owned()),
                    Some(l) if l.member_id != c.member || l.book_id != c.book_id => {
                        Some(format!("belongs to {} for book {}", l.member_id, l.book_id))
                    }
                    Some(l)
                        if l.status != rental_status::ACTIVE
                            && l.status != rental_status::RETURNED =>
                    {
                        Some(format!("is {}", l.status))
                    }
                    Some(_) => None,
                }
            }
            "CheckOut" => {
                acked += 1;
                match loan_of.get(c.result_id.as_str()) {
                    None => Some("is not there".to_owned()),
                    Some(l) if l.member_id != c.member || l.book_id != c.book_id => {
                        Some(format!("belongs to {} for book {}", l.member_id, l.book_id))
                    }
                    Some(l) if l.barcode.as_deref() != Some(c.target_id.as_str()) => {
                        Some(format!("lent item {:?}, not {}", l.barcode, c.target_id))
                    }
                    Some(l)
                        if l.status != rental_status::ACTIVE
                            && l.status != rental_status::RETURNED =>
                    {
                        Some(format!("is {}", l.status))
                    }
                    Some(_) => None,
                }
            }
            // A copy not on loan changes nothing; one that was is returned.
            "CheckIn" if !c.result_id.is_empty() => {
                acked += 1;
                match loan_of.get(c.result_id.as_str()) {
                    None => Some("is not there".to_owned()),
                    Some(l) if l.status != rental_status::RETURNED => {
                        Some(format!("is {}", l.status))
                    }
                    Some(_) => None,
                }
            }
            "RenewRental" => {
                acked += 1;
                match loan_of.get(c.target_id.as_str()) {
                    None => Some("is not there".to_owned()),
                    Some(l) if l.renewals < 1 => Some("was never renewed".to_owned()),
                    Some(_) => None,
                }
            }
            "ReturnRental" => {
                acked += 1;
                match loan_of.get(c.target_id.as_str()) {
                    None => Some("is not there".to_owned()),
                    Some(l) if l.status != rental_status::RETURNED => {
                        Some(format!("is {}", l.status))
                    }
                    Some(_) => None,
                }
            }
            _ => None,
        };
        if let Some(wrong) = wrong {
            let id = if c.result_id.is_empty() {
                &c.target_id
            } else {
                &c.result_id
            };
            found.push(
                Invariant::Acknowledged,
                format!(
                    "history line {}: {} by {} was acknowledged, but {id} {wrong}",
                    c.line, c.op, c.member
                ),
            );
        }
    }
    found.notes.push(format!(
        "history: {} calls, {acked} acknowledged changes",
        calls.len()
    ));
}

// ---- the stream ----------------------------------------------------------------

/// Where the events are.
enum BusSource {
    Nats(NatsSettings),
    Embedded(PathBuf),
}

fn bus_source(args: &CheckArgs) -> Option<BusSource> {
    if let Some(url) = &args.nats_url {
        return Some(BusSource::Nats(NatsSettings {
            url: url.clone(),
            stream: args.nats_stream.clone(),
            subject_prefix: args.nats_subject_prefix.clone(),
            max_age: None,
            replicas: 1,
            client_name: "rentalbook check".into(),
        }));
    }
    if let Some(file) = &args.events_db {
        return Some(BusSource::Embedded(file.clone()));
    }
    let own_databases = args.book_database_url.is_none()
        && args.reserve_database_url.is_none()
        && args.rental_database_url.is_none()
        && args.view_database_url.is_none();
    let file = args.data_dir.join("events.db");
    (own_databases && file.exists()).then_some(BusSource::Embedded(file))
}

impl BusSource {
    fn describe(&self) -> String {
        match self {
            BusSource::Nats(s) => format!("NATS JetStream {} at {}", s.stream, s.url),
            BusSource::Embedded(file) => format!("embedded, {}", file.display()),
        }
    }

    /// The bus. The embedded one is a consistent copy of the log taken now,
    /// so the replay's consumer never touches the live one.
    async fn open(&self, scratch: &Scratch) -> anyhow::Result<Arc<dyn EventBus>> {
        Ok(match self {
            BusSource::Nats(settings) => {
                let bus: Arc<dyn EventBus> = NatsBus::connect(settings.clone())
                    .await
                    .with_context(|| format!("connecting to NATS at {}", settings.url))?;
                bus
            }
            BusSource::Embedded(file) => {
                anyhow::ensure!(file.exists(), "no event log at {}", file.display());
                let live =
                    sea_orm::Database::connect(format!("sqlite://{}?mode=ro", file.display()))
                        .await
                        .with_context(|| format!("opening {}", file.display()))?;
                let copy = scratch.0.join("events.db");
                live.execute_unprepared(&format!(
                    "VACUUM INTO '{}'",
                    copy.display().to_string().replace('\'', "''")
                ))
                .await
                .with_context(|| format!("copying {}", file.display()))?;
                live.close().await?;
                let bus: Arc<dyn EventBus> =
                    EmbeddedBus::open(&format!("sqlite://{}", copy.display())).await?;
                bus
            }
        })
    }
}

/// A directory of the check's own, removed when it ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "rentalbook-check-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Event {
    subject: String,
    /// None when the payload is not an event envelope.
    envelope: Option<Envelope>,
}

struct Stream {
    events: Vec<Event>,
    /// The stream no longer holds its first events (retention by age).
    trimmed: bool,
}

impl Stream {
    fn distinct(&self) -> usize {
        self.events
            .iter()
            .filter_map(|e| e.envelope.as_ref().map(|e| e.event_id.as_str()))
            .collect::<HashSet<_>>()
            .len()
    }

    fn bodies(&self) -> impl Iterator<Item = &Body> {
        self.events
            .iter()
            .filter_map(|e| e.envelope.as_ref().and_then(|e| e.body.as_ref()))
    }
}

async fn read_stream(bus: &dyn EventBus) -> anyhow::Result<Stream> {
    const PAGE: usize = 1000;
    let mut events = Vec::new();
    let mut after = 0;
    let mut first: Option<u64> = None;
    loop {
        let page: Vec<Stored> = bus.history(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        first.get_or_insert(page[0].seq);
        events.extend(page.into_iter().map(|s| Event {
            envelope: Envelope::decode(s.payload.as_ref()).ok(),
            subject: s.subject,
        }));
    }
    Ok(Stream {
        events,
        trimmed: first.is_some_and(|f| f > 1),
    })
}

struct Dbs<'a> {
    book: &'a Db,
    reserve: &'a Db,
    rental: &'a Db,
    view: &'a Db,
}

/// Each consumer's inbox holds exactly the stream's events of its filter,
/// the bus has none left for it, and the effects that can be read off the
/// stream are there.
async fn applied_once(
    truth: &Truth,
    stream: &Stream,
    dbs: &Dbs<'_>,
    bus: &dyn EventBus,
    args: &CheckArgs,
    found: &mut Findings,
) -> anyhow::Result<()> {
    if !found.wants(Invariant::AppliedOnce) {
        return Ok(());
    }
    for e in stream.events.iter().filter(|e| e.envelope.is_none()) {
        found.push(
            Invariant::AppliedOnce,
            format!(
                "the stream holds something that is not an event, on {}",
                e.subject
            ),
        );
    }
    let in_stream: HashSet<&str> = stream
        .events
        .iter()
        .filter_map(|e| e.envelope.as_ref().map(|e| e.event_id.as_str()))
        .collect();
    let services: [(&str, &Db); 4] = [
        ("book-svc", dbs.book),
        ("reserve-svc", dbs.reserve),
        ("rental-svc", dbs.rental),
        ("view-svc", dbs.view),
    ];
    let mut rows_of: HashMap<&str, Vec<inbox::Model>> = HashMap::new();
    for (service, db) in services {
        rows_of.insert(service, inbox::Entity::find().all(db.conn()).await?);
    }
    let consumers: [(&str, &str, &str); 9] = [
        ("book-svc", "book-svc", "reservation.>"),
        ("reserve-svc-books", "reserve-svc", "book.>"),
        ("reserve-svc-returns", "reserve-svc", "rental.returned"),
        (
            "reserve-svc-erasures",
            "reserve-svc",
            "member.history_erased",
        ),
        ("rental-svc", "rental-svc", "reservation.return_recorded"),
        ("rental-svc-losses", "rental-svc", "reservation.item_lost"),
        ("rental-svc-books", "rental-svc", "book.merged"),
        ("rental-svc-erasures", "rental-svc", "member.history_erased"),
        (args.view_consumer.as_str(), "view-svc", ""),
    ];
    for (durable, service, filter) in &consumers {
        let mut subject_of: BTreeMap<&str, &str> = BTreeMap::new();
        for e in &stream.events {
            if let Some(env) = &e.envelope
                && subject_matches(filter, &e.subject)
            {
                subject_of.insert(env.event_id.as_str(), e.subject.as_str());
            }
        }
        let applied: HashSet<&str> = rows_of[service]
            .iter()
            .filter(|r| r.consumer == *durable)
            .map(|r| r.event_id.as_str())
            .collect();
        for (event_id, subject) in &subject_of {
            if !applied.contains(event_id) {
                found.push(
                    Invariant::AppliedOnce,
                    format!("{durable} has not applied event {event_id} ({subject})"),
                );
            }
        }
        for event_id in &applied {
            if !subject_of.contains_key(event_id) {
                let why = if in_stream.contains(event_id) {
                    "which is not one of its subjects"
                } else if stream.trimmed {
                    continue;
                } else {
                    "which is not in the stream"
                };
                found.push(
                    Invariant::AppliedOnce,
                    format!("{durable} records applying event {event_id}, {why}"),
                );
            }
        }
        match bus.pending(durable).await? {
            Some(0) => {}
            Some(n) => found.push(
                Invariant::AppliedOnce,
                format!("{durable} has {n} event(s) not acknowledged yet"),
            ),
            None if subject_of.is_empty() => {}
            None => found.push(
                Invariant::AppliedOnce,
                format!("the bus has no consumer {durable}"),
            ),
        }
    }
    for (service, _) in services {
        for row in &rows_of[service] {
            let its_own = consumers
                .iter()
                .any(|(durable, of, _)| *of == service && *durable == row.consumer);
            if !its_own {
                found.push(
                    Invariant::AppliedOnce,
                    format!(
                        "{service}'s inbox has event {} of consumer {}, which is not one of {service}'s",
                        row.event_id, row.consumer
                    ),
                );
            }
        }
    }

    // Effects that can be read off the stream.
    let mut totals: BTreeMap<&str, i32> = BTreeMap::new();
    let mut returned: BTreeSet<&str> = BTreeSet::new();
    let mut recorded: BTreeSet<&str> = BTreeSet::new();
    for body in stream.bodies() {
        match body {
            Body::BookRegistered(b) => {
                totals.insert(&b.book_id, b.total_copies);
            }
            Body::CopiesAdded(c) => {
                totals.insert(&c.book_id, c.total_copies);
            }
            // The merged books' copies are the kept book's from then on.
            Body::BooksMerged(m) => {
                for id in &m.merged_book_ids {
                    totals.remove(id.as_str());
                }
                totals.insert(&m.into_book_id, m.total_copies);
            }
            Body::BookReturned(r) => {
                returned.insert(&r.rental_id);
            }
            Body::ReturnRecorded(r) => {
                recorded.insert(&r.rental_id);
            }
            _ => {}
        }
    }
    let stock: HashMap<&str, i32> = truth
        .stock
        .iter()
        .map(|s| (s.book_id.as_str(), s.registered_copies))
        .collect();
    for (book_id, total) in &totals {
        match stock.get(book_id) {
            Some(t) if t == total => {}
            Some(t) => found.push(
                Invariant::AppliedOnce,
                format!("the desk stocks {t} copies of book {book_id}, its events say {total}"),
            ),
            None => found.push(
                Invariant::AppliedOnce,
                format!("the desk never learnt of book {book_id}"),
            ),
        }
    }
    let hold_of_rental: HashMap<&str, &reservations::Model> = truth
        .holds
        .iter()
        .filter_map(|r| r.rental_id.as_deref().map(|id| (id, r)))
        .collect();
    for rental_id in &returned {
        if hold_of_rental
            .get(rental_id)
            .is_some_and(|r| r.returned_at.is_none())
        {
            found.push(
                Invariant::AppliedOnce,
                format!("rental {rental_id} was returned, but the desk has not recorded it"),
            );
        }
    }
    let loan_of = truth.loan_of();
    for rental_id in &recorded {
        if loan_of
            .get(rental_id)
            .is_some_and(|l| l.return_confirmation.as_deref() != Some(confirmation::CONFIRMED))
        {
            found.push(
                Invariant::AppliedOnce,
                format!("the desk recorded the return of rental {rental_id}, but rental-svc has not confirmed it"),
            );
        }
    }
    Ok(())
}

/// book-svc shows each book's latest snapshot in the stream, and the desk
/// published every change of a book (its sequence is the stream's latest).
fn snapshots(truth: &Truth, stream: &Stream, found: &mut Findings) {
    if !found.wants(Invariant::Catalogue) || stream.trimmed {
        return;
    }
    let mut latest: BTreeMap<&str, (i64, Copies)> = BTreeMap::new();
    for body in stream.bodies() {
        let Some((book_id, a)) = book_svc::events::snapshot(body) else {
            continue;
        };
        let snapshot = Copies {
            total: a.total,
            held: a.held,
            on_loan: a.on_loan,
            waiting: a.waiting,
        };
        let entry = latest.entry(book_id).or_insert((a.book_seq, snapshot));
        if a.book_seq >= entry.0 {
            *entry = (a.book_seq, snapshot);
        }
    }
    let desk_seq: HashMap<&str, i64> = truth
        .stock
        .iter()
        .map(|s| (s.book_id.as_str(), s.book_seq))
        .collect();
    let listed: HashMap<&str, &books::Model> = truth
        .catalogue
        .iter()
        .map(|b| (b.book_id.as_str(), b))
        .collect();
    for (book_id, (seq, snapshot)) in &latest {
        if let Some(desk) = desk_seq.get(book_id)
            && desk != seq
        {
            found.push(
                Invariant::Catalogue,
                format!("book {book_id}: the desk is at change {desk}, the stream's latest snapshot is {seq}"),
            );
        }
        if let Some(b) = listed.get(book_id) {
            let shown = Copies {
                total: b.circulating_copies,
                held: b.held_copies,
                on_loan: b.on_loan_copies,
                waiting: b.waiting,
            };
            if b.availability_seq != *seq
                || shown.held != snapshot.held
                || shown.on_loan != snapshot.on_loan
                || shown.waiting != snapshot.waiting
            {
                found.push(
                    Invariant::Catalogue,
                    format!(
                        "book {book_id}: book-svc shows snapshot {} (held/on loan/waiting {}/{}/{}), the stream's latest is {seq} ({}/{}/{})",
                        b.availability_seq, shown.held, shown.on_loan, shown.waiting,
                        snapshot.held, snapshot.on_loan, snapshot.waiting
                    ),
                );
            }
        }
    }
}

fn dead_letter_line(letter: &DeadLetter) -> String {
    let event_id = Envelope::decode(letter.payload.as_ref())
        .ok()
        .map(|e| e.event_id)
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| "(not an event)".into());
    format!(
        "{} gave up on event {event_id} ({}): {} (dead letter {})",
        letter.consumer, letter.subject, letter.reason, letter.id
    )
}

// ---- My Page replayed ---------------------------------------------------------------

/// How long the replay may go without applying anything before the check
/// gives up on it.
const REPLAY_STALL: Duration = Duration::from_secs(60);

/// Runs view-svc on a fresh SQLite database with a durable consumer of its
/// own from the first event until it has nothing left, then compares its
/// read model with the live one, row by row and field by field.
async fn replay(
    bus: Arc<dyn EventBus>,
    live: &Db,
    scratch: &Scratch,
    found: &mut Findings,
) -> anyhow::Result<()> {
    let durable = format!("rentalbook-check-{}", uuid::Uuid::new_v4().simple());
    let url = format!("sqlite://{}", scratch.0.join("replay-view.db").display());
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let config = view_svc::Config::try_parse_from([
        "view-svc",
        "--listen-addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "off",
        "--database-url",
        &url,
        "--consumer-name",
        &durable,
        "--jwt-secret",
        &secret,
    ])?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let replaying: Arc<dyn EventBus> = Arc::new(Replaying(bus.clone()));
    let app = view_svc::App::build_with(config, listener, replaying).await?;
    let stop = CancellationToken::new();
    let running = tokio::spawn(app.run(stop.clone()));
    let started = Instant::now();
    let caught_up = wait_caught_up(bus.as_ref(), &durable).await;
    let compared = match caught_up {
        Ok(()) => compare_pages(live, &url, found).await,
        Err(e) => Err(e),
    };
    stop.cancel();
    let _ = running.await;
    let removed = bus.reset(&durable).await;
    compared?;
    removed.with_context(|| format!("removing the replay's consumer {durable}"))?;
    found.notes.push(format!(
        "My Page replayed from the stream into a fresh read model in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

async fn wait_caught_up(bus: &dyn EventBus, durable: &str) -> anyhow::Result<()> {
    let mut last = None;
    let mut progress = Instant::now();
    loop {
        let pending = bus.pending(durable).await?;
        if pending == Some(0) {
            return Ok(());
        }
        if pending != last {
            last = pending;
            progress = Instant::now();
        }
        anyhow::ensure!(
            progress.elapsed() < REPLAY_STALL,
            "the replay of My Page stopped with {pending:?} events left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn compare_pages(live: &Db, replayed_url: &str, found: &mut Findings) -> anyhow::Result<()> {
    let replayed = Db::connect(replayed_url, 2).await?;
    let mut differences = Vec::new();
    differences.extend(compare(
        "journey",
        journeys::Entity::find().all(live.conn()).await?,
        journeys::Entity::find().all(replayed.conn()).await?,
        |j| j.reservation_id.clone(),
        |j| {
            vec![
                ("member", j.member_id.clone()),
                ("book", j.book_id.clone()),
                ("stage", j.stage.clone()),
                ("queue_seq", j.queue_seq.to_string()),
                ("pickup_deadline", format!("{:?}", j.pickup_deadline)),
                ("rental", format!("{:?}", j.rental_id)),
                ("due_at", format!("{:?}", j.due_at)),
                ("returned_at", format!("{:?}", j.returned_at)),
                (
                    "return_confirmation",
                    format!("{:?}", j.return_confirmation),
                ),
                ("stage_seq", j.stage_seq.to_string()),
                ("hold_barcode", j.hold_barcode.clone()),
                ("trapped_at", format!("{:?}", j.trapped_at)),
                ("loan_barcode", j.loan_barcode.clone()),
                ("renewals", j.renewals.to_string()),
                ("release_seq", format!("{:?}", j.release_seq)),
            ]
        },
    ));
    differences.extend(compare(
        "step of journey",
        steps::Entity::find().all(live.conn()).await?,
        steps::Entity::find().all(replayed.conn()).await?,
        |s| format!("{} kind {}", s.reservation_id, s.kind),
        |s| vec![("at", s.at.to_string())],
    ));
    differences.extend(compare(
        "title of book",
        titles::Entity::find().all(live.conn()).await?,
        titles::Entity::find().all(replayed.conn()).await?,
        |t| t.book_id.clone(),
        |t| vec![("title", t.title.clone())],
    ));
    for d in differences {
        found.push(Invariant::Replay, d);
    }
    Ok(())
}

type Fields = Vec<(&'static str, String)>;

/// Pairs the live and the replayed rows by key and tells every row that is
/// only on one side and every field that differs.
fn compare<T>(
    what: &str,
    live: Vec<T>,
    replayed: Vec<T>,
    key: impl Fn(&T) -> String,
    fields: impl Fn(&T) -> Fields,
) -> Vec<String> {
    let mut pairs: BTreeMap<String, (Option<Fields>, Option<Fields>)> = BTreeMap::new();
    for row in &live {
        pairs.entry(key(row)).or_default().0 = Some(fields(row));
    }
    for row in &replayed {
        pairs.entry(key(row)).or_default().1 = Some(fields(row));
    }
    pairs
        .into_iter()
        .filter_map(|(k, sides)| match sides {
            (Some(l), Some(r)) => {
                let differing: Vec<String> = l
                    .iter()
                    .zip(&r)
                    .filter(|(a, b)| a.1 != b.1)
                    .map(|(a, b)| format!("{} live {}, replayed {}", a.0, a.1, b.1))
                    .collect();
                (!differing.is_empty()).then(|| format!("{what} {k}: {}", differing.join("; ")))
            }
            (Some(_), None) => Some(format!("{what} {k} is live but not in the replay")),
            (None, Some(_)) => Some(format!("{what} {k} is in the replay but not live")),
            (None, None) => None,
        })
        .collect()
}

type BusFuture<'a, T> = Pin<Box<dyn Future<Output = anyhow::Result<T>> + Send + 'a>>;

/// The bus as the replay sees it: it reads and consumes, publishes nothing
/// and tells no live replica of what it applies.
struct Replaying(Arc<dyn EventBus>);

impl EventBus for Replaying {
    fn publish<'a, 'b, 'c>(&'a self, _events: &'b [Outgoing]) -> BusFuture<'c, ()>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        Box::pin(async { anyhow::bail!("the check's replay publishes nothing") })
    }

    fn subscribe<'a, 'b, 'c>(
        &'a self,
        spec: &'b ConsumerSpec,
    ) -> BusFuture<'c, Box<dyn Subscription>>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        self.0.subscribe(spec)
    }

    fn reset<'a, 'b, 'c>(&'a self, durable: &'b str) -> BusFuture<'c, ()>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        self.0.reset(durable)
    }

    fn pending<'a, 'b, 'c>(&'a self, durable: &'b str) -> BusFuture<'c, Option<u64>>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        self.0.pending(durable)
    }

    fn history<'a, 'c>(&'a self, after: u64, max: usize) -> BusFuture<'c, Vec<Stored>>
    where
        'a: 'c,
        Self: 'c,
    {
        self.0.history(after, max)
    }

    fn dead_letters<'a, 'c>(&'a self) -> BusFuture<'c, Vec<DeadLetter>>
    where
        'a: 'c,
        Self: 'c,
    {
        self.0.dead_letters()
    }

    fn replay_dead_letter<'a, 'c>(&'a self, _id: u64) -> BusFuture<'c, bool>
    where
        'a: 'c,
        Self: 'c,
    {
        Box::pin(async { anyhow::bail!("the check's replay replays no dead letter") })
    }
}
