//! The load: virtual members going through whole journeys (reserve, wait
//! for READY, rent, return) while watching their My Page, readers asking
//! for books and pages, and the single-call loops of the ceiling phases.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rentalbook_plumbing::auth::{Role, mint};
use rentalbook_plumbing::ids::MemberId;
use rentalbook_proto::rental::v1::RentalStatus;
use rentalbook_proto::reserve::v1::ReservationStatus;
use rentalbook_proto::view::v1::JourneyStage;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::Code;

use crate::client::{CallError, Client, Transport};
use crate::stats::Recorder;

/// How a member waiting in a queue learns that its reservation is READY.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadyWait {
    /// From its WatchMyPage stream (with a GetReservation every 500 ms as a safety net).
    Watch,
    /// By asking GetReservation every 10 ms.
    Poll,
}

/// What the workers of a run share.
pub struct Ctx {
    pub transport: Arc<dyn Transport>,
    pub secret: String,
    pub run_id: String,
    pub books: Vec<String>,
    pub librarian: String,
    pub member_journeys: u32,
    pub ready_wait: ReadyWait,
    /// The identity generation of each virtual member, for readers to name
    /// a member's current page; shared by the contexts of every transport,
    /// so that no phase takes up an identity an earlier one used.
    pub generations: Arc<Vec<AtomicU32>>,
}

pub fn token(secret: &str, who: &str, role: Role) -> String {
    let id = MemberId::parse(who).expect("a valid member id");
    mint(secret, &id, role, Duration::from_secs(12 * 3600)).expect("minting a token")
}

impl Ctx {
    fn member_id(&self, member: usize, generation: u32) -> String {
        format!("bench-{}-m{member}-g{generation}", self.run_id)
    }
}

/// A small, fast, seeded generator (xorshift64*): which book, which page.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n.max(1)
    }
}

/// Spaces a worker's iterations `interval` apart; no catching up in bursts.
pub struct Pace {
    interval: Option<Duration>,
    next: Instant,
}

impl Pace {
    pub fn new(interval: Option<Duration>, offset: Duration) -> Self {
        Self {
            interval,
            next: Instant::now() + offset,
        }
    }

    pub async fn wait(&mut self) {
        if let Some(i) = self.interval {
            let now = Instant::now();
            if self.next > now {
                tokio::time::sleep_until(self.next.into()).await;
            }
            self.next = self.next.max(now) + i;
        }
    }
}

// ---- watching My Page -------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Present,
    Ready,
    Rented,
    Returned,
}

fn satisfied(stage: i32, want: Want) -> bool {
    let s = JourneyStage::try_from(stage).unwrap_or(JourneyStage::Unspecified);
    use JourneyStage::*;
    match want {
        Want::Present => s != Unspecified,
        Want::Ready => matches!(s, Ready | Rented | Overdue | Returned),
        Want::Rented => matches!(s, Rented | Overdue | Returned),
        Want::Returned => s == Returned,
    }
}

struct Expect {
    reservation_id: String,
    want: Want,
    since: Instant,
    what: &'static str,
}

#[derive(Default)]
struct PageState {
    /// Each journey's stage on the latest page.
    stages: HashMap<String, i32>,
    pending: Vec<Expect>,
    lag: Recorder,
}

/// One member identity with its WatchMyPage stream open.
struct Session {
    token: String,
    state: Arc<Mutex<PageState>>,
    version: watch::Receiver<u64>,
    watcher: JoinHandle<()>,
}

impl Session {
    async fn open(ctx: &Ctx, client: &Arc<dyn Client>, id: String) -> Result<Session, CallError> {
        let token = token(&ctx.secret, &id, Role::Member);
        let state = Arc::new(Mutex::new(PageState::default()));
        let (tx, mut version) = watch::channel(0u64);
        let mut stream = client.watch_my_page(&token).await?;
        let shared = state.clone();
        let watcher = tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                let now = Instant::now();
                let mut st = shared.lock().unwrap_or_else(|e| e.into_inner());
                match item {
                    Ok(page) => {
                        st.stages = page
                            .journeys
                            .into_iter()
                            .map(|j| (j.reservation_id, j.stage))
                            .collect();
                        let PageState {
                            stages,
                            pending,
                            lag,
                        } = &mut *st;
                        pending.retain(|e| {
                            let hit = stages
                                .get(&e.reservation_id)
                                .is_some_and(|s| satisfied(*s, e.want));
                            if hit {
                                lag.lag(e.what, now.saturating_duration_since(e.since));
                            }
                            !hit
                        });
                    }
                    Err(e) => {
                        st.lag.error("WatchMyPage", &e);
                        break;
                    }
                }
                drop(st);
                tx.send_modify(|v| *v += 1);
            }
        });
        // The stream sends the page at once: wait for it, so that no change
        // is measured against a stream that was not open yet.
        let first = tokio::time::timeout(Duration::from_secs(10), version.changed()).await;
        if !matches!(first, Ok(Ok(()))) {
            watcher.abort();
            return Err(CallError {
                code: Code::DeadlineExceeded,
                message: "WatchMyPage sent no first page within 10 s".into(),
            });
        }
        Ok(Session {
            token,
            state,
            version,
            watcher,
        })
    }

    /// Starts timing how long until the page shows `want` for the journey.
    fn expect(&self, reservation_id: &str, want: Want, what: &'static str, since: Instant) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st
            .stages
            .get(reservation_id)
            .is_some_and(|s| satisfied(*s, want))
        {
            // The page was there before the answer: no lag.
            st.lag.lag(what, Duration::ZERO);
            return;
        }
        st.pending.push(Expect {
            reservation_id: reservation_id.to_owned(),
            want,
            since,
            what,
        });
    }

    fn drop_expectations(&self, reservation_id: &str) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.pending.retain(|e| e.reservation_id != reservation_id);
    }

    fn shows(&self, reservation_id: &str, want: Want) -> bool {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.stages
            .get(reservation_id)
            .is_some_and(|s| satisfied(*s, want))
    }

    /// Waits up to `grace` for the changes still expected, then closes the
    /// stream; the lag it measured, with what never arrived counted missed.
    async fn close(self, grace: Duration) -> Recorder {
        let deadline = Instant::now() + grace;
        let mut version = self.version.clone();
        loop {
            let pending = {
                let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                st.pending.len()
            };
            if pending == 0 || Instant::now() >= deadline {
                break;
            }
            let _ = tokio::time::timeout_at(deadline.into(), version.changed()).await;
        }
        self.watcher.abort();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut rec = std::mem::take(&mut st.lag);
        rec.lag_missed += st.pending.len() as u64;
        rec
    }
}

// ---- a virtual member ---------------------------------------------------------

/// How long a member waits for READY before it gives up the journey.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after a phase (or a change of identity) the lag of its last
/// changes may still arrive.
pub const LAG_GRACE: Duration = Duration::from_secs(3);

async fn timed<T, F>(
    rec: &mut Recorder,
    rpc: &'static str,
    call: F,
) -> (Result<T, CallError>, Instant)
where
    F: std::future::Future<Output = Result<T, CallError>>,
{
    let started = Instant::now();
    let r = call.await;
    rec.call(rpc, started, &r);
    (r, Instant::now())
}

/// Waits until the reservation is READY: true, or false when it will not be.
async fn wait_ready(
    ctx: &Ctx,
    client: &Arc<dyn Client>,
    me: &mut Session,
    reservation_id: &str,
    rec: &mut Recorder,
) -> bool {
    let started = Instant::now();
    let give_up = started + READY_TIMEOUT;
    let check = |status: i32| match ReservationStatus::try_from(status) {
        Ok(ReservationStatus::Ready) => Some(true),
        Ok(ReservationStatus::Waiting) => None,
        _ => Some(false),
    };
    let ready = match ctx.ready_wait {
        ReadyWait::Watch => loop {
            if me.shows(reservation_id, Want::Ready) {
                break true;
            }
            if Instant::now() >= give_up {
                break false;
            }
            let woke = tokio::time::timeout(Duration::from_millis(500), me.version.changed()).await;
            if !matches!(woke, Ok(Ok(()))) {
                // The safety net: ask the desk itself.
                let (r, _) = timed(
                    rec,
                    "GetReservation",
                    client.get_reservation(&me.token, reservation_id),
                )
                .await;
                if let Ok(Some(done)) = r.map(|r| check(r.status)) {
                    break done;
                }
                if woke.is_ok() {
                    // The stream ended: poll from now on.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        },
        ReadyWait::Poll => loop {
            let (r, _) = timed(
                rec,
                "GetReservation",
                client.get_reservation(&me.token, reservation_id),
            )
            .await;
            if let Ok(Some(done)) = r.map(|r| check(r.status)) {
                break done;
            }
            if Instant::now() >= give_up {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        },
    };
    if ready {
        rec.ready_wait
            .saturating_record((started.elapsed().as_micros() as u64).max(1));
    }
    ready
}

async fn give_up(client: &Arc<dyn Client>, me: &Session, reservation_id: &str, rec: &mut Recorder) {
    me.drop_expectations(reservation_id);
    rec.journeys_abandoned += 1;
    let _ = timed(
        rec,
        "CancelReservation",
        client.cancel_reservation(&me.token, reservation_id),
    )
    .await;
}

/// One journey: reserve, wait for READY, rent, return.
async fn journey(
    ctx: &Ctx,
    client: &Arc<dyn Client>,
    me: &mut Session,
    rng: &mut Rng,
    rec: &mut Recorder,
) {
    let started = Instant::now();
    let book = &ctx.books[rng.below(ctx.books.len())];
    let (r, at) = timed(rec, "Reserve", client.reserve(&me.token, book)).await;
    let reservation = match r {
        Ok(r) => r,
        Err(_) => {
            rec.journeys_abandoned += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            return;
        }
    };
    let rid = reservation.reservation_id.clone();
    me.expect(&rid, Want::Present, "Reserve→page", at);
    if reservation.status != ReservationStatus::Ready as i32
        && !wait_ready(ctx, client, me, &rid, rec).await
    {
        give_up(client, me, &rid, rec).await;
        return;
    }
    let (r, at) = timed(rec, "Rent", client.rent(&me.token, book)).await;
    let rental = match r {
        Ok(l) if l.status == RentalStatus::Active as i32 => l,
        _ => {
            give_up(client, me, &rid, rec).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
            return;
        }
    };
    me.expect(&rid, Want::Rented, "Rent→page", at);
    let (r, at) = timed(
        rec,
        "ReturnRental",
        client.return_rental(&me.token, &rental.rental_id),
    )
    .await;
    if r.is_err() {
        me.drop_expectations(&rid);
        rec.journeys_abandoned += 1;
        return;
    }
    me.expect(&rid, Want::Returned, "Return→page", at);
    rec.journeys += 1;
    rec.journey_time
        .saturating_record((started.elapsed().as_micros() as u64).max(1));
}

/// A virtual member until `until`: journeys back to back (or paced), a
/// fresh identity every `member_journeys` journeys. Returns what it saw and
/// when its last journey ended.
pub async fn member(
    ctx: Arc<Ctx>,
    index: usize,
    until: Instant,
    interval: Option<Duration>,
    seed: u64,
) -> (Recorder, Instant) {
    let client = ctx.transport.client(index);
    let mut rec = Recorder::default();
    let mut rng = Rng::new(seed);
    let mut closing: Vec<JoinHandle<Recorder>> = Vec::new();
    let offset = interval.map_or(Duration::ZERO, |i| {
        i.mul_f64(rng.below(1000) as f64 / 1000.0)
    });
    let mut pace = Pace::new(interval, offset);
    let mut session: Option<Session> = None;
    let mut done_here = 0u32;
    while Instant::now() < until {
        if session.is_none() {
            let generation = ctx.generations[index].fetch_add(1, Ordering::Relaxed) + 1;
            let started = Instant::now();
            let opened = Session::open(&ctx, &client, ctx.member_id(index, generation)).await;
            rec.call("WatchMyPage (open)", started, &opened);
            match opened {
                Ok(s) => session = Some(s),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
            done_here = 0;
        }
        let Some(me) = session.as_mut() else { continue };
        pace.wait().await;
        if Instant::now() >= until {
            break;
        }
        journey(&ctx, &client, me, &mut rng, &mut rec).await;
        done_here += 1;
        if ctx.member_journeys > 0
            && done_here >= ctx.member_journeys
            && let Some(old) = session.take()
        {
            closing.push(tokio::spawn(old.close(LAG_GRACE)));
        }
    }
    let finished = Instant::now();
    if let Some(s) = session.take() {
        rec.merge(&s.close(LAG_GRACE).await);
    }
    for c in closing {
        if let Ok(r) = c.await {
            rec.merge(&r);
        }
    }
    (rec, finished)
}

/// A reader until `until`: GetBook and, when there are members, GetMyPage of
/// one of them (as a librarian), in turn.
pub async fn reader(
    ctx: Arc<Ctx>,
    index: usize,
    slot: usize,
    until: Instant,
    interval: Option<Duration>,
    seed: u64,
) -> (Recorder, Instant) {
    let client = ctx.transport.client(slot);
    let mut rec = Recorder::default();
    let mut rng = Rng::new(seed);
    let me = token(
        &ctx.secret,
        &format!("bench-{}-r{index}", ctx.run_id),
        Role::Member,
    );
    let mut pace = Pace::new(interval, Duration::ZERO);
    let mut i = 0u64;
    while Instant::now() < until {
        pace.wait().await;
        i += 1;
        let members = ctx.generations.len();
        if members == 0 || i % 2 == 1 {
            let book = &ctx.books[rng.below(ctx.books.len())];
            let _ = timed(&mut rec, "GetBook", client.get_book(&me, book)).await;
        } else {
            let m = rng.below(members);
            let generation = ctx.generations[m].load(Ordering::Relaxed).max(1);
            let id = ctx.member_id(m, generation);
            let _ = timed(
                &mut rec,
                "GetMyPage",
                client.get_my_page(&ctx.librarian, &id),
            )
            .await;
        }
    }
    (rec, Instant::now())
}

/// What a worker of a ceiling phase starts with: its client, an empty
/// recorder, its random numbers and the token of a member of its own
/// (`kind` tells readers and writers apart).
fn ceiling_worker(
    ctx: &Ctx,
    index: usize,
    kind: char,
    seed: u64,
) -> (Arc<dyn Client>, Recorder, Rng, String) {
    let me = token(
        &ctx.secret,
        &format!("bench-{}-{kind}{index}", ctx.run_id),
        Role::Member,
    );
    (
        ctx.transport.client(index),
        Recorder::default(),
        Rng::new(seed),
        me,
    )
}

/// GetBook back to back: the read ceiling of the product.
pub async fn book_reader(
    ctx: Arc<Ctx>,
    index: usize,
    until: Instant,
    seed: u64,
) -> (Recorder, Instant) {
    let (client, mut rec, mut rng, me) = ceiling_worker(&ctx, index, 'r', seed);
    while Instant::now() < until {
        let book = &ctx.books[rng.below(ctx.books.len())];
        let _ = timed(&mut rec, "GetBook", client.get_book(&me, book)).await;
    }
    (rec, Instant::now())
}

/// Reserve then CancelReservation, back to back: the write ceiling of the
/// desk. Each worker is a member of its own, so it never meets the limit of
/// open reservations.
pub async fn reserver(
    ctx: Arc<Ctx>,
    index: usize,
    until: Instant,
    seed: u64,
) -> (Recorder, Instant) {
    let (client, mut rec, mut rng, me) = ceiling_worker(&ctx, index, 'w', seed);
    while Instant::now() < until {
        let book = &ctx.books[rng.below(ctx.books.len())];
        let (r, _) = timed(&mut rec, "Reserve", client.reserve(&me, book)).await;
        match r {
            Ok(r) => {
                let _ = timed(
                    &mut rec,
                    "CancelReservation",
                    client.cancel_reservation(&me, &r.reservation_id),
                )
                .await;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    (rec, Instant::now())
}

/// Registers the books and waits until the lending desk has learnt of each
/// from its registration event.
pub async fn register_books(
    client: &Arc<dyn Client>,
    librarian: &str,
    secret: &str,
    run_id: &str,
    count: usize,
    copies: i32,
) -> anyhow::Result<Vec<String>> {
    let mut books = Vec::with_capacity(count);
    for i in 0..count {
        let b = client
            .register_book(
                librarian,
                &format!("Bench book {i} of run {run_id}"),
                copies,
            )
            .await
            .map_err(|e| anyhow::anyhow!("registering a book: {e}"))?;
        books.push(b.book_id);
    }
    let probe = token(secret, &format!("bench-{run_id}-probe"), Role::Member);
    let deadline = Instant::now() + Duration::from_secs(30);
    for b in &books {
        loop {
            match client.reserve(&probe, b).await {
                Ok(r) => {
                    client
                        .cancel_reservation(&probe, &r.reservation_id)
                        .await
                        .map_err(|e| anyhow::anyhow!("cancelling the probe: {e}"))?;
                    break;
                }
                Err(e) if Instant::now() > deadline => {
                    anyhow::bail!("the lending desk did not learn of book {b} in 30 s: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }
    Ok(books)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_satisfy_what_comes_before_them() {
        let s = |st: JourneyStage| st as i32;
        assert!(satisfied(s(JourneyStage::Waiting), Want::Present));
        assert!(!satisfied(s(JourneyStage::Waiting), Want::Ready));
        assert!(satisfied(s(JourneyStage::Returned), Want::Rented));
        assert!(!satisfied(s(JourneyStage::Cancelled), Want::Ready));
        assert!(satisfied(s(JourneyStage::Returned), Want::Returned));
    }

    #[test]
    fn the_generator_stays_in_range() {
        let mut r = Rng::new(7);
        assert!((0..1000).all(|_| r.below(3) < 3));
    }
}
