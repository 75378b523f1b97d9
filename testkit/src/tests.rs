use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};

use super::*;

async fn create_stream(client: &async_nats::Client, name: &str) -> jetstream::stream::Stream {
    jetstream::new(client.clone())
        .create_stream(stream::Config {
            name: name.to_string(),
            subjects: vec![format!("{}.>", name.to_lowercase())],
            ..Default::default()
        })
        .await
        .expect("create stream")
}

async fn publish(client: &async_nats::Client, subject: String, payload: &'static str) {
    jetstream::new(client.clone())
        .publish(subject, payload.into())
        .await
        .expect("publish")
        .await
        .expect("publish ack");
}

#[test]
fn unique_name_is_a_valid_stream_name_and_subject_token() {
    let a = unique_name("rb-test");
    let b = unique_name("rb-test");
    assert_ne!(a, b);
    assert!(a.starts_with("RB_TEST_"), "{a}");
    assert!(
        a.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'),
        "{a}"
    );
}

#[test]
fn with_database_replaces_only_the_database() {
    use crate::postgres::with_database;
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/postgres", "t_1"),
        "postgres://postgres@127.0.0.1:5432/t_1"
    );
    assert_eq!(
        with_database("postgres://u:p@h:1/db?sslmode=disable", "t_1"),
        "postgres://u:p@h:1/t_1?sslmode=disable"
    );
    assert_eq!(
        with_database("postgres://u@h:1", "t_1"),
        "postgres://u@h:1/t_1"
    );
    assert_eq!(
        with_database("postgres://u@h:1?x=y", "t_1"),
        "postgres://u@h:1/t_1?x=y"
    );
}

#[test]
fn free_port_gives_a_bindable_port() {
    let port = free_port();
    assert_ne!(port, 0);
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("port is free");
}

#[tokio::test]
async fn private_nats_publishes_to_jetstream_and_reads_back() {
    let started = Instant::now();
    let nats = PrivateNats::start_new().await.expect("start nats");
    eprintln!("PrivateNats ready in {:?}", started.elapsed());
    assert_ne!(nats.port(), 4222);

    let client = async_nats::connect(nats.url()).await.expect("connect");
    let name = unique_name("RT");
    let stream = create_stream(&client, &name).await;
    let subject = format!("{}.hello", name.to_lowercase());
    publish(&client, subject.clone(), "one").await;
    publish(&client, subject.clone(), "two").await;

    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("reader".into()),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer
        .fetch()
        .max_messages(2)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .expect("fetch");
    let mut seen = Vec::new();
    while let Some(message) = messages.next().await {
        let message = message.expect("message");
        assert_eq!(message.subject.as_str(), subject);
        seen.push(String::from_utf8(message.payload.to_vec()).unwrap());
        message.ack().await.expect("ack");
    }
    assert_eq!(seen, ["one", "two"]);
}

#[tokio::test]
async fn private_nats_keeps_stream_across_stop_and_start() {
    let mut nats = PrivateNats::start_new().await.expect("start nats");
    let url = nats.url();
    let name = unique_name("RS");
    {
        let client = async_nats::connect(&url).await.expect("connect");
        create_stream(&client, &name).await;
        publish(&client, format!("{}.kept", name.to_lowercase()), "kept").await;
    }

    let stopping = Instant::now();
    nats.stop().await;
    eprintln!("PrivateNats stopped in {:?}", stopping.elapsed());
    assert!(!nats.is_running());
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", nats.port()))
            .await
            .is_err(),
        "port still open after stop"
    );

    let starting = Instant::now();
    nats.start().await.expect("restart nats");
    eprintln!("PrivateNats restarted in {:?}", starting.elapsed());
    assert_eq!(nats.url(), url);

    let client = async_nats::connect(&url).await.expect("reconnect");
    let stream = jetstream::new(client)
        .get_stream(&name)
        .await
        .expect("stream survives restart");
    let message = stream.get_raw_message(1).await.expect("message 1");
    assert_eq!(&message.payload[..], b"kept");

    // A crash (SIGKILL) and restart also works.
    nats.kill().await;
    nats.start().await.expect("restart after kill");
    let client = async_nats::connect(&url).await.expect("reconnect");
    jetstream::new(client)
        .get_stream(&name)
        .await
        .expect("stream survives kill");
}

#[tokio::test]
async fn shared_nats_url_serves_jetstream() {
    let url = nats_url().await;
    assert!(
        !url.ends_with(":4222"),
        "must not use the machine's NATS: {url}"
    );
    let client = async_nats::connect(&url).await.expect("connect");
    let name = unique_name("SH");
    let stream = create_stream(&client, &name).await;
    publish(&client, format!("{}.x", name.to_lowercase()), "x").await;
    let message = stream.get_raw_message(1).await.expect("message 1");
    assert_eq!(&message.payload[..], b"x");
    // Same server for the whole process.
    assert_eq!(nats_url().await, url);
}

async fn query_i32(url: &str, sql: &str) -> i32 {
    let db = Database::connect(url).await.expect("connect");
    let row = db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, sql.to_string()))
        .await
        .expect("query")
        .expect("a row");
    let value: i32 = row.try_get_by_index(0).expect("an int");
    db.close().await.expect("close");
    value
}

#[tokio::test]
async fn fresh_postgres_urls_are_distinct_empty_databases() {
    let started = Instant::now();
    let a = fresh_postgres_url().await;
    eprintln!("first fresh database in {:?}", started.elapsed());
    let started = Instant::now();
    let b = fresh_postgres_url().await;
    eprintln!("second fresh database in {:?}", started.elapsed());
    assert_ne!(a, b);
    assert!(
        !a.contains(":5432/"),
        "must not use the machine's PostgreSQL: {a}"
    );
    assert_eq!(query_i32(&a, "SELECT 1").await, 1);
    assert_eq!(query_i32(&b, "SELECT 1").await, 1);

    let db = Database::connect(&a).await.expect("connect a");
    db.execute_unprepared("CREATE TABLE only_in_a (id int)")
        .await
        .expect("create table");
    db.close().await.expect("close");
    let in_b = "SELECT count(*)::int FROM information_schema.tables WHERE table_name = 'only_in_a'";
    assert_eq!(query_i32(&b, in_b).await, 0);
    assert_eq!(query_i32(&a, in_b).await, 1);
}

#[tokio::test]
async fn private_postgres_keeps_rows_and_settings_across_stop_and_start() {
    let started = Instant::now();
    let setting = "SELECT current_setting('max_locks_per_transaction')::int";
    let mut pg = PrivatePostgres::start_with_settings(false, &["max_locks_per_transaction=77"])
        .await
        .expect("start postgres");
    eprintln!("PrivatePostgres ready in {:?}", started.elapsed());
    let url = pg.url();
    assert_ne!(pg.port(), 5432);

    let mut options = sea_orm::ConnectOptions::new(url.clone());
    options
        .acquire_timeout(Duration::from_secs(1))
        .sqlx_logging(false);
    let db = Database::connect(options).await.expect("connect");
    db.execute_unprepared("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
        .await
        .expect("insert");
    // An open session must not keep stop() from stopping the server.
    let stopping = Instant::now();
    pg.stop().await;
    eprintln!("PrivatePostgres stopped in {:?}", stopping.elapsed());
    assert!(!pg.is_running());
    assert!(db.execute_unprepared("SELECT 1").await.is_err());
    drop(db);

    let starting = Instant::now();
    pg.start().await.expect("restart postgres");
    eprintln!("PrivatePostgres restarted in {:?}", starting.elapsed());
    assert_eq!(pg.url(), url);
    assert_eq!(query_i32(&url, "SELECT v FROM kept").await, 42);
    assert_eq!(query_i32(&url, setting).await, 77);

    // A crash (immediate shutdown) and restart runs recovery and comes back.
    let killing = Instant::now();
    pg.kill().await;
    pg.start().await.expect("restart after kill");
    eprintln!(
        "PrivatePostgres killed and restarted in {:?}",
        killing.elapsed()
    );
    assert_eq!(query_i32(&url, "SELECT v FROM kept").await, 42);
}
