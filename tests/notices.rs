//! Notices (SPEC §10) against a real SMTP server (aiosmtpd, started by the
//! test support): what arrives, in which language, when, and only once;
//! what an SMTP outage and a first start on an old stream do.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use rentalbook_proto::book::v1::RegisterBookRequest;
use rentalbook_proto::events::v1::Envelope;
use rentalbook_proto::events::v1::envelope::Body;
use rentalbook_proto::notice::v1::{
    EmailState, GetNoticeSettingsRequest, ListFailedNoticesRequest, MarkNoticesReadRequest,
    NoticeKind, NoticeSettings, UpdateNoticeSettingsRequest,
};
use rentalbook_proto::rental::v1::CheckOutRequest;
use rentalbook_proto::reserve::v1::{Reservation, ReservationStatus};
use rentalbook_proto::view::v1::{GetMyPageRequest, MyPage};
use rentalbook_testkit::{Mail, SmtpSink};
use support::{Mesh, Options, Store, eventually, eventually_within, librarian, member, req};
use tonic::Code;

fn sink() -> SmtpSink {
    SmtpSink::start().expect("starting aiosmtpd (scripts/test installs it)")
}

/// Registers a book whose copies carry these barcodes, once the desk knows them.
async fn book(mesh: &Mesh, title: &str, barcodes: &[&str]) -> String {
    let book = mesh
        .books()
        .await
        .register_book(req(
            &librarian(),
            RegisterBookRequest {
                title: title.into(),
                author: "Test Author".into(),
                barcodes: barcodes.iter().map(|b| b.to_string()).collect(),
                ..Default::default()
            },
        ))
        .await
        .expect("registering")
        .into_inner();
    book.book_id
}

async fn settings(mesh: &Mesh, who: &str, change: UpdateNoticeSettingsRequest) -> NoticeSettings {
    mesh.notices()
        .await
        .update_notice_settings(req(&member(who), change))
        .await
        .expect("updating notice settings")
        .into_inner()
}

fn email_to(address: &str, language: &str) -> UpdateNoticeSettingsRequest {
    UpdateNoticeSettingsRequest {
        email: Some(address.into()),
        language: Some(language.into()),
        ..Default::default()
    }
}

/// Reserves a book with a free copy: READY at once (the desk learns new
/// books from an event, so it may take a moment).
async fn reserve_ready(mesh: &Mesh, who: &str, book_id: &str) -> Reservation {
    let r = eventually("a reservation", || async {
        mesh.reserve(&member(who), book_id).await.ok()
    })
    .await;
    assert_eq!(r.status, ReservationStatus::Ready as i32, "{r:?}");
    r
}

async fn my_page(mesh: &Mesh, who: &str) -> MyPage {
    mesh.views()
        .await
        .get_my_page(req(&member(who), GetMyPageRequest::default()))
        .await
        .unwrap()
        .into_inner()
}

fn to<'a>(mails: &'a [Mail], address: &str) -> Vec<&'a Mail> {
    mails.iter().filter(|m| m.to == address).collect()
}

/// Waits until the sink holds `n` messages to `address`, then a moment
/// more to see that no others follow.
async fn mails_to(sink: &SmtpSink, address: &str, n: usize) -> Vec<Mail> {
    eventually(&format!("{n} e-mails to {address}"), || async {
        let all = sink.messages();
        (to(&all, address).len() >= n).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    to(&sink.messages(), address).into_iter().cloned().collect()
}

fn smtp_args(sink: &SmtpSink, more: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--smtp-url".to_owned(),
        sink.url(),
        "--smtp-from".into(),
        "Mapo Library <notices@library.example>".into(),
        "--library-name".into(),
        "Mapo Library".into(),
        "--smtp-timeout".into(),
        "2s".into(),
    ];
    args.extend(more.iter().map(|s| s.to_string()));
    args
}

both_backends!(hold_ready_due_soon_and_overdue_arrive_once_each_in_the_members_language);
async fn hold_ready_due_soon_and_overdue_arrive_once_each_in_the_members_language(store: Store) {
    let sink = sink();
    let mesh = Mesh::start_with(Options {
        store,
        loan_period: "5s",
        notice_args: smtp_args(
            &sink,
            &[
                "--due-soon-before",
                "3s",
                "--overdue-reminder-every",
                "2s",
                "--default-language",
                "en",
            ],
        ),
        ..Options::default()
    })
    .await;
    let ada = settings(&mesh, "ada", email_to("ada@example.org", "ko")).await;
    assert_eq!(ada.language, "ko");
    assert!(ada.hold_ready && ada.due_soon && ada.overdue && ada.hold_expired);
    // Bo wants no hold-ready notices; Cy has no address (My Page only).
    settings(
        &mesh,
        "bo",
        UpdateNoticeSettingsRequest {
            email: Some("bo@example.org".into()),
            hold_ready: Some(false),
            ..Default::default()
        },
    )
    .await;
    // A walk-in borrower at the desk.
    settings(&mesh, "di", email_to("di@example.org", "en")).await;
    let defaults = mesh
        .notices()
        .await
        .get_notice_settings(req(&member("cy"), GetNoticeSettingsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (defaults.email.as_str(), defaults.language.as_str()),
        ("", "en")
    );

    let kindred = book(&mesh, "Kindred", &["N-0001"]).await;
    let ready = reserve_ready(&mesh, "ada", &kindred).await;
    let hold_deadline = chrono::DateTime::from_timestamp(
        ready
            .pickup_deadline
            .expect("a READY hold's deadline")
            .seconds,
        0,
    )
    .unwrap();
    let hold = mails_to(&sink, "ada@example.org", 1).await;
    assert!(hold[0].subject.contains("[Mapo Library]"), "{hold:?}");
    assert!(hold[0].subject.contains("Kindred"), "{hold:?}");
    assert!(hold[0].subject.contains("준비되었습니다"), "{hold:?}");
    assert!(hold[0].body.contains("N-0001"), "{hold:?}");
    // The pickup deadline, in the library's time zone (UTC here).
    let deadline = hold_deadline.format("%Y년 %-m월 %-d일 %H:%M").to_string();
    assert!(hold[0].body.contains(&deadline), "{deadline} in {hold:?}");
    assert_eq!(hold[0].from, "notices@library.example");

    // My Page lists it too, unread until Ada marks it read.
    let page = eventually("the notice on ada's page", || async {
        let page = my_page(&mesh, "ada").await;
        (page.unread_notices == 1).then_some(page)
    })
    .await;
    let notice = &page.notices[0];
    assert_eq!(notice.kind, NoticeKind::HoldReady as i32);
    assert_eq!(
        (
            notice.barcode.as_str(),
            notice.book_title.as_str(),
            notice.read
        ),
        ("N-0001", "Kindred", false)
    );
    assert_eq!(notice.deadline, ready.pickup_deadline);
    mesh.notices()
        .await
        .mark_notices_read(req(
            &member("ada"),
            MarkNoticesReadRequest {
                notice_id: notice.notice_id.clone(),
            },
        ))
        .await
        .unwrap();
    eventually("ada's notice read", || async {
        let page = my_page(&mesh, "ada").await;
        (page.unread_notices == 0 && page.notices[0].read).then_some(())
    })
    .await;
    let unknown = mesh
        .notices()
        .await
        .mark_notices_read(req(
            &member("bo"),
            MarkNoticesReadRequest {
                notice_id: notice.notice_id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "ada's notice is not bo's");

    // Cy gave no address: the notice is on My Page only.
    let fledgling = book(&mesh, "Fledgling", &["N-0009"]).await;
    reserve_ready(&mesh, "cy", &fledgling).await;
    eventually("the notice on cy's page", || async {
        (my_page(&mesh, "cy").await.unread_notices == 1).then_some(())
    })
    .await;

    let dawn = book(&mesh, "Parable of the Sower", &["N-0002"]).await;
    reserve_ready(&mesh, "bo", &dawn).await;

    // Ada borrows: due in 5 s, "due soon" 3 s before, overdue at 5 s, then
    // reminded every 2 s.
    let loan = eventually("ada's loan", || async {
        mesh.rent(&member("ada"), &kindred).await.ok()
    })
    .await;
    let mails = mails_to(&sink, "ada@example.org", 3).await;
    assert!(
        mails[1].subject.contains("반납일이 다가옵니다"),
        "{mails:?}"
    );
    assert!(
        mails[2].subject.contains("반납 기한이 지났습니다"),
        "{mails:?}"
    );
    let mails = mails_to(&sink, "ada@example.org", 4).await;
    assert!(
        mails[3].subject.contains("반납 기한이 지났습니다"),
        "{mails:?}"
    );
    mesh.give_back(&member("ada"), &loan.rental_id)
        .await
        .unwrap();

    // The walk-in loan gets no hold-ready notice, only its loan's.
    let walk_in = book(&mesh, "Wild Seed", &["N-0003"]).await;
    eventually("a walk-in loan", || async {
        mesh.rentals()
            .await
            .check_out(req(
                &librarian(),
                CheckOutRequest {
                    member_id: "di".into(),
                    barcode: "N-0003".into(),
                    request_id: String::new(),
                },
            ))
            .await
            .ok()
    })
    .await;
    let di = mails_to(&sink, "di@example.org", 1).await;
    assert!(
        di[0].subject.starts_with("[Mapo Library] Due soon"),
        "{di:?}"
    );
    let _ = walk_in;

    // Once returned, Ada hears no more; Bo, opted out of hold-ready, heard
    // nothing; every notice is one e-mail.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = sink.messages();
    assert_eq!(to(&all, "ada@example.org").len(), 4, "{all:#?}");
    assert!(all.iter().all(|m| !m.to.contains("cy")), "{all:#?}");
    assert!(to(&all, "bo@example.org").is_empty(), "{all:#?}");
    let mut ids = BTreeMap::new();
    for m in &all {
        *ids.entry(m.message_id.clone()).or_insert(0) += 1;
    }
    assert!(ids.values().all(|n| *n == 1), "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_smtp_outage_delays_the_mail_and_holds_up_nothing_else() {
    let mut sink = sink();
    let mesh = Mesh::start_with(Options {
        store: Store::Postgres,
        notice_args: smtp_args(&sink, &["--notice-send-for", "4s"]),
        ..Options::default()
    })
    .await;
    settings(&mesh, "eve", email_to("eve@example.org", "en")).await;
    settings(&mesh, "fay", email_to("fay@example.org", "en")).await;
    sink.stop();
    let one = book(&mesh, "Lilith's Brood", &["O-1"]).await;
    reserve_ready(&mesh, "eve", &one).await;
    // The consumer goes on: every event is applied while SMTP is down.
    let two = book(&mesh, "Fledgling", &["O-2"]).await;
    reserve_ready(&mesh, "fay", &two).await;
    mesh.settled("notice-svc").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    sink.start_again().unwrap();
    mails_to(&sink, "eve@example.org", 1).await;
    mails_to(&sink, "fay@example.org", 1).await;

    // Down for longer than NOTICE_SEND_FOR: given up, and listed for
    // librarians (and only for them).
    sink.stop();
    let three = book(&mesh, "Mind of My Mind", &["O-3"]).await;
    reserve_ready(&mesh, "eve", &three).await;
    let failed = eventually_within(Duration::from_secs(20), "a failed notice", || async {
        let page = mesh
            .notices()
            .await
            .list_failed_notices(req(&librarian(), ListFailedNoticesRequest::default()))
            .await
            .ok()?
            .into_inner();
        page.notices.into_iter().next()
    })
    .await;
    assert_eq!(failed.member_id, "eve");
    assert_eq!(failed.email_state, EmailState::Failed as i32);
    assert!(failed.attempts >= 2, "{failed:?}");
    assert!(!failed.last_error.is_empty(), "{failed:?}");
    let refused = mesh
        .notices()
        .await
        .list_failed_notices(req(&member("eve"), ListFailedNoticesRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
}

both_backends!(a_first_start_on_an_old_stream_sends_nothing_old);
async fn a_first_start_on_an_old_stream_sends_nothing_old(store: Store) {
    let sink = sink();
    let mesh = Mesh::start_with(Options {
        store,
        ..Options::default()
    })
    .await;
    settings(&mesh, "gus", email_to("gus@example.org", "en")).await;
    let old = book(&mesh, "Survivor", &["P-1"]).await;
    reserve_ready(&mesh, "gus", &old).await;
    mesh.settled("notice-svc").await;

    // A notice-svc with e-mail starts now, on its own database: the whole
    // stream is new to it, but nothing in it is news. It keeps its own
    // settings: Gus tells it his address again.
    let (late, stop) = mesh
        .start_notice_instance_with("notice-late", &smtp_args(&sink, &[]))
        .await;
    let mut client = rentalbook_proto::notice::v1::notice_service_client::NoticeServiceClient::new(
        support::channel(late).await,
    );
    client
        .update_notice_settings(req(&member("gus"), email_to("gus@example.org", "en")))
        .await
        .unwrap();
    mesh.settled("notice-late").await;
    let new = book(&mesh, "Clay's Ark", &["P-2"]).await;
    reserve_ready(&mesh, "gus", &new).await;
    let mails = mails_to(&sink, "gus@example.org", 1).await;
    assert_eq!(mails.len(), 1, "{mails:#?}");
    assert!(mails[0].subject.contains("Clay's Ark"), "{mails:#?}");
    // Nor did it make a notice for My Page of the old hold: the old book's
    // hold was told once, by the first notice-svc.
    mesh.settled("notice-late").await;
    let told: Vec<String> = every_event(&mesh)
        .await
        .into_iter()
        .filter_map(|e| match e.body {
            Some(Body::NoticeSent(n)) => Some(n.book_title),
            _ => None,
        })
        .collect();
    assert_eq!(
        told.iter().filter(|t| t.as_str() == "Survivor").count(),
        1,
        "{told:?}"
    );
    assert_eq!(
        told.iter().filter(|t| t.as_str() == "Clay's Ark").count(),
        2,
        "{told:?}"
    );
    stop.cancel();
}

/// Decodes the stream's events, in order.
async fn every_event(mesh: &Mesh) -> Vec<Envelope> {
    use prost::Message;
    let bus = mesh.event_bus().await;
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let batch = bus.history(after, 500).await.unwrap();
        let Some(last) = batch.last() else {
            return out;
        };
        after = last.seq;
        out.extend(
            batch
                .iter()
                .map(|s| Envelope::decode(s.payload.clone()).unwrap()),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_and_a_redelivery_of_every_event_send_nothing_twice() {
    use std::process::{Command, Stdio};

    let sink = sink();
    let mesh = Mesh::start_with(Options {
        store: Store::Postgres,
        ..Options::default()
    })
    .await;
    // notice-svc with e-mail as a process of its own, to be killed.
    let db = rentalbook_testkit::fresh_postgres_url().await;
    let port = rentalbook_testkit::free_port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_rentalbook"))
            .args(["service", "notice-svc", "--"])
            .args(["--listen-addr", &addr.to_string(), "--metrics-addr", "off"])
            .args(["--database-url", &db, "--consumer-name", "notice-proc"])
            .args(["--nats-url", &mesh.nats_url, "--nats-stream", &mesh.stream])
            .args(["--nats-subject-prefix", &mesh.prefix])
            .args(["--jwt-secret", support::SECRET, "--event-ack-wait", "2s"])
            .args(smtp_args(&sink, &["--notice-clock-interval", "200ms"]))
            .env("LOG_FORMAT", "text")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting notice-svc")
    };
    let mut process = spawn();
    support::wait_serving(addr).await;
    let mut client = rentalbook_proto::notice::v1::notice_service_client::NoticeServiceClient::new(
        support::channel(addr).await,
    );
    let members: Vec<String> = (0..6).map(|i| format!("m{i}")).collect();
    for m in &members {
        client
            .update_notice_settings(req(&member(m), email_to(&format!("{m}@example.org"), "en")))
            .await
            .unwrap();
    }
    let mut books = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let b = book(&mesh, &format!("Book {i}"), &[&format!("K-{i}")]).await;
        books.push((m.clone(), b));
    }
    // Three holds ready and told; then SIGKILL between events.
    for (m, b) in &books[..3] {
        reserve_ready(&mesh, m, b).await;
    }
    for (m, _) in &books[..3] {
        mails_to(&sink, &format!("{m}@example.org"), 1).await;
    }
    process.kill().unwrap();
    process.wait().unwrap();
    // Three more while it is down; it catches up when it is back.
    for (m, b) in &books[3..] {
        reserve_ready(&mesh, m, b).await;
    }
    let mut process = spawn();
    support::wait_serving(addr).await;
    for (m, _) in &books[3..] {
        mails_to(&sink, &format!("{m}@example.org"), 1).await;
    }
    // Every event of the stream again, as a producer repeating itself
    // would send it (new event ids): no occasion is told twice.
    let events = every_event(&mesh).await;
    let again: Vec<rentalbook_plumbing::bus::Outgoing> = events
        .iter()
        .map(|e| {
            use prost::Message;
            let copy = Envelope {
                event_id: uuid::Uuid::now_v7().to_string(),
                ..e.clone()
            };
            rentalbook_plumbing::bus::Outgoing {
                event_id: copy.event_id.clone(),
                subject: copy.subject_suffix().unwrap().into(),
                payload: copy.encode_to_vec().into(),
                traceparent: None,
            }
        })
        .collect();
    mesh.event_bus().await.publish(&again).await.unwrap();
    mesh.settled("notice-proc").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = sink.messages();
    for m in &members {
        assert_eq!(
            to(&all, &format!("{m}@example.org")).len(),
            1,
            "{m}: {all:#?}"
        );
    }
    process.kill().ok();
    process.wait().ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_not_picked_up_is_told_expired_with_its_deadline() {
    let sink = sink();
    let mesh = Mesh::start_with(Options {
        store: Store::Sqlite,
        pickup_window: "1s",
        notice_args: smtp_args(&sink, &["--default-language", "en"]),
        ..Options::default()
    })
    .await;
    settings(&mesh, "hal", email_to("hal@example.org", "en")).await;
    let b = book(&mesh, "Patternmaster", &["E-1"]).await;
    let ready = reserve_ready(&mesh, "hal", &b).await;
    let mails = mails_to(&sink, "hal@example.org", 2).await;
    assert!(mails[0].subject.contains("Ready for you"), "{mails:#?}");
    assert!(
        mails[1]
            .subject
            .starts_with("[Mapo Library] Hold expired: Patternmaster"),
        "{mails:#?}"
    );
    let deadline = chrono::DateTime::from_timestamp(ready.pickup_deadline.unwrap().seconds, 0)
        .unwrap()
        .format("%-d %B %Y, %H:%M")
        .to_string();
    assert!(mails[1].body.contains(&deadline), "{deadline}: {mails:#?}");
}
