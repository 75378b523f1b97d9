//! `rentalbook check`: compares the truth of reserve-svc (reservations, copy
//! totals) and rental-svc (rentals) with each other and with the projections
//! of book-svc and view-svc, and lists every difference. It reads the
//! services' databases directly, as operator tools may (services never do).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use rentalbook_plumbing::db::Db;
use rentalbook_plumbing::time;
use sea_orm::EntityTrait;

use book_svc::store::books;
use rental_svc::domain::status as rental_status;
use rental_svc::store::rentals;
use reserve_svc::store::{book_stock, reservations, status};
use view_svc::domain::stage;
use view_svc::store::journeys;

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
}

async fn open(given: &Option<String>, args: &CheckArgs, file: &str) -> anyhow::Result<Db> {
    let url = given
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}?mode=ro", args.data_dir.join(file).display()));
    Db::connect(&url, 2)
        .await
        .with_context(|| format!("opening {url}"))
}

/// Every difference found, in words; empty when everything agrees.
pub async fn differences(args: &CheckArgs) -> anyhow::Result<Vec<String>> {
    let reserve = open(&args.reserve_database_url, args, "reserve.db").await?;
    let rental = open(&args.rental_database_url, args, "rental.db").await?;
    let book = open(&args.book_database_url, args, "book.db").await?;
    let view = open(&args.view_database_url, args, "view.db").await?;

    let holds = reservations::Entity::find().all(reserve.conn()).await?;
    let stock = book_stock::Entity::find().all(reserve.conn()).await?;
    let loans = rentals::Entity::find().all(rental.conn()).await?;
    let catalogue = books::Entity::find().all(book.conn()).await?;
    let pages = journeys::Entity::find().all(view.conn()).await?;
    let now = time::now();
    let mut diffs = Vec::new();

    // R7 and R8: reservations and rentals agree.
    let loan_of: HashMap<&str, &rentals::Model> =
        loans.iter().map(|l| (l.rental_id.as_str(), l)).collect();
    let hold_of_rental: HashMap<&str, &reservations::Model> = holds
        .iter()
        .filter_map(|r| r.rental_id.as_deref().map(|id| (id, r)))
        .collect();
    for r in holds.iter().filter(|r| r.status == status::FULFILLED) {
        let rental_id = r.rental_id.as_deref().unwrap_or_default();
        match loan_of.get(rental_id) {
            Some(l) if l.status == rental_status::ACTIVE || l.status == rental_status::RETURNED => {
                if l.status == rental_status::RETURNED && r.returned_at.is_none() {
                    diffs.push(format!(
                        "rental {rental_id} is RETURNED but reserve-svc has not recorded the return"
                    ));
                }
                if l.status == rental_status::ACTIVE && r.returned_at.is_some() {
                    diffs.push(format!("reserve-svc recorded the return of rental {rental_id}, which is still ACTIVE"));
                }
            }
            Some(l)
                if l.status == rental_status::PENDING
                    && (now - l.created_at).to_std().unwrap_or_default() < args.grace.get() => {}
            Some(l) => diffs.push(format!(
                "reservation {} is FULFILLED but rental {rental_id} is {}",
                r.reservation_id, l.status
            )),
            None => diffs.push(format!(
                "reservation {} is FULFILLED by rental {rental_id}, which rental-svc does not know",
                r.reservation_id
            )),
        }
    }
    for l in &loans {
        let fulfilled = hold_of_rental
            .get(l.rental_id.as_str())
            .is_some_and(|r| r.status == status::FULFILLED);
        let settled = l.status == rental_status::ACTIVE || l.status == rental_status::RETURNED;
        if settled && !fulfilled {
            diffs.push(format!(
                "rental {} is {} without a FULFILLED reservation",
                l.rental_id, l.status
            ));
        }
        if l.status == rental_status::PENDING
            && (now - l.created_at).to_std().unwrap_or_default() >= args.grace.get()
        {
            diffs.push(format!(
                "rental {} has been PENDING since {}",
                l.rental_id, l.created_at
            ));
        }
    }

    // book-svc's projection against the desk's truth.
    let mut truth: BTreeMap<&str, (i32, i32, i32, i32)> = stock
        .iter()
        .map(|s| (s.book_id.as_str(), (s.total_copies, 0, 0, 0)))
        .collect();
    for r in &holds {
        let Some(t) = truth.get_mut(r.book_id.as_str()) else {
            diffs.push(format!(
                "reservation {} is for book {}, which the desk does not stock",
                r.reservation_id, r.book_id
            ));
            continue;
        };
        match r.status.as_str() {
            status::READY => t.1 += 1,
            status::FULFILLED if r.returned_at.is_none() => t.2 += 1,
            status::WAITING => t.3 += 1,
            _ => {}
        }
    }
    let listed: HashMap<&str, &books::Model> =
        catalogue.iter().map(|b| (b.book_id.as_str(), b)).collect();
    for (book_id, (total, held, on_loan, waiting)) in &truth {
        match listed.get(book_id) {
            None => diffs.push(format!(
                "book {book_id} is stocked by the desk but not in the catalogue"
            )),
            Some(b) => {
                let shown = (b.total_copies, b.held_copies, b.on_loan_copies, b.waiting);
                if shown != (*total, *held, *on_loan, *waiting) {
                    diffs.push(format!(
                        "book {book_id}: book-svc shows total/held/on loan/waiting {}/{}/{}/{}, the desk {total}/{held}/{on_loan}/{waiting}",
                        shown.0, shown.1, shown.2, shown.3
                    ));
                }
            }
        }
    }
    for b in &catalogue {
        if !truth.contains_key(b.book_id.as_str()) {
            diffs.push(format!(
                "book {} is in the catalogue but unknown to the desk",
                b.book_id
            ));
        }
    }

    // view-svc's journeys against reservations and rentals.
    let journey_of: HashMap<&str, &journeys::Model> = pages
        .iter()
        .map(|j| (j.reservation_id.as_str(), j))
        .collect();
    let waiting_before = |r: &reservations::Model| {
        holds
            .iter()
            .filter(|o| {
                o.book_id == r.book_id && o.status == status::WAITING && o.queue_seq < r.queue_seq
            })
            .count()
    };
    let page_waiting_before = |j: &journeys::Model| {
        pages
            .iter()
            .filter(|o| {
                o.book_id == j.book_id && o.stage == stage::WAITING && o.queue_seq < j.queue_seq
            })
            .count()
    };
    for r in &holds {
        let expected = match r.status.as_str() {
            status::WAITING => stage::WAITING,
            status::READY => stage::READY,
            status::CANCELLED => stage::CANCELLED,
            status::EXPIRED => stage::EXPIRED,
            _ => match r.rental_id.as_deref().and_then(|id| loan_of.get(id)) {
                Some(l) if l.status == rental_status::RETURNED => stage::RETURNED,
                _ => stage::RENTED,
            },
        };
        match journey_of.get(r.reservation_id.as_str()) {
            None => diffs.push(format!(
                "reservation {} has no journey on {}'s page",
                r.reservation_id, r.member_id
            )),
            Some(j) if j.stage != expected => diffs.push(format!(
                "journey {} shows {} but the truth is {expected}",
                r.reservation_id, j.stage
            )),
            Some(j)
                if expected == stage::WAITING && page_waiting_before(j) != waiting_before(r) =>
            {
                diffs.push(format!(
                    "journey {} shows queue position {} but the truth is {}",
                    r.reservation_id,
                    page_waiting_before(j) + 1,
                    waiting_before(r) + 1
                ))
            }
            Some(_) => {}
        }
    }
    let known: std::collections::HashSet<&str> =
        holds.iter().map(|r| r.reservation_id.as_str()).collect();
    for j in &pages {
        if !known.contains(j.reservation_id.as_str()) {
            diffs.push(format!("journey {} has no reservation", j.reservation_id));
        }
    }
    Ok(diffs)
}

/// Prints the differences; the exit status says whether there were any.
pub async fn run(args: CheckArgs) -> anyhow::Result<bool> {
    let diffs = differences(&args).await?;
    if diffs.is_empty() {
        println!(
            "consistent: reservations, rentals, the catalogue's availability and My Page agree"
        );
    } else {
        println!("{} differences:", diffs.len());
        for d in &diffs {
            println!("  {d}");
        }
    }
    Ok(diffs.is_empty())
}
