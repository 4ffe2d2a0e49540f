//! Pack events end to end, on SQLite and PostgreSQL: the outbox, the relay to a real
//! RabbitMQ broker (`TEST_AMQP_URL`) with publisher confirms, what happens while the
//! broker cannot be reached, and WatchEvents / `GET /api/v1/events` resuming from a
//! cursor.

use std::{path::PathBuf, time::Duration};

use attune_packs_client::pb;
use attune_packs_server::{
    events::{PackEvent, relay::BrokerAddress},
    store::{Db, outbox::Retention},
};
use futures::StreamExt;
use lapin::{
    Channel, Connection, ConnectionProperties, Consumer, ExchangeKind,
    message::Delivery,
    options::{
        BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::FieldTable,
};
use serde_json::{Value, json};
use tonic::Code;

use crate::{
    common::{Backend, TestServer, amqp_url, on_both_backends, path_str},
    support::packs::write_tree,
};

/// How long a message or event may take to arrive.
const ARRIVAL: Duration = Duration::from_secs(15);
/// How long nothing more must arrive after the expected events.
const QUIET: Duration = Duration::from_millis(700);

/// A pack declaring the `shell` runtime, with one action; with `test_passes`, a
/// `testing` block whose script passes or fails.
fn pack_files(pack_ref: &str, version: &str, test_passes: Option<bool>) -> Vec<(String, String)> {
    let mut yaml = format!(
        "ref: {pack_ref}\nlabel: {pack_ref}\nversion: \"{version}\"\nruntime_deps: [shell]\n"
    );
    let mut files = vec![
        (
            "actions/hello.yaml".to_string(),
            format!("ref: {pack_ref}.hello\nrunner_type: shell\nentry_point: hello.sh\n"),
        ),
        (
            "actions/hello.sh".to_string(),
            format!("echo {pack_ref} {version}\n"),
        ),
    ];
    if let Some(passes) = test_passes {
        yaml.push_str(
            "testing:\n  enabled: true\n  runners:\n    shell:\n      type: script\n      entry_point: tests/run.sh\n",
        );
        let (passed, failed) = if passes { (1, 0) } else { (0, 1) };
        files.push((
            "tests/run.sh".to_string(),
            format!(
                "echo 'Total Tests: 1'\necho 'Passed: {passed}'\necho 'Failed: {failed}'\nexit {failed}\n"
            ),
        ));
    }
    files.push(("pack.yaml".to_string(), yaml));
    files
}

/// Writes a pack source directory below the server's root and returns it.
fn source(server: &TestServer, pack_ref: &str, version: &str, tests: Option<bool>) -> PathBuf {
    let dir = server
        .root
        .path()
        .canonicalize()
        .unwrap()
        .join("src")
        .join(format!("{pack_ref}-{version}"))
        .join(pack_ref);
    write_tree(&dir, &pack_files(pack_ref, version, tests));
    dir
}

fn registered(pack_id: i64, pack_ref: &str, version: &str) -> (String, Value) {
    (
        "pack.registered".into(),
        json!({
            "pack_id": pack_id,
            "pack_ref": pack_ref,
            "version": version,
            "runtime_names": ["shell"],
        }),
    )
}

/// Registers one pack (replacing it with `force`); the event it must announce.
async fn register(
    server: &TestServer,
    pack_ref: &str,
    version: &str,
    force: bool,
) -> (String, Value) {
    let dir = source(server, pack_ref, version, None);
    let result = server
        .client()
        .await
        .register_batch(pb::RegisterBatchRequest {
            pack_paths: vec![path_str(&dir)],
            force: Some(force),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        result.registered_packs.len(),
        1,
        "{:#?}",
        result.failed_packs
    );
    registered(result.registered_packs[0].pack_id, pack_ref, version)
}

/// One step of a scripted lifecycle sequence.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// A first install of `(ref, version)`.
    Install(&'static str, &'static str),
    /// RegisterBatch with force over an installed pack.
    Upgrade(&'static str, &'static str),
    /// RollbackPack to the most recently kept version, `(ref, from, to)`.
    Rollback(&'static str, &'static str, &'static str),
    /// RemovePacks of one pack.
    Remove(&'static str),
}

impl Step {
    /// Runs the step; returns the events it must publish, in order, as
    /// `(event type, payload)`.
    async fn run(self, server: &TestServer) -> Vec<(String, Value)> {
        match self {
            Step::Install(pack_ref, version) => {
                vec![register(server, pack_ref, version, false).await]
            }
            Step::Upgrade(pack_ref, version) => {
                vec![register(server, pack_ref, version, true).await]
            }
            Step::Rollback(pack_ref, from, to) => {
                let result = server
                    .client()
                    .await
                    .rollback_pack(pb::RollbackPackRequest {
                        r#ref: pack_ref.into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                assert!(result.success, "{result:#?}");
                assert_eq!(
                    (result.from_version.as_str(), result.to_version.as_str()),
                    (from, to)
                );
                vec![
                    registered(result.pack_id, pack_ref, to),
                    (
                        "pack.rolled_back".into(),
                        json!({
                            "pack_id": result.pack_id,
                            "pack_ref": pack_ref,
                            "from_version": from,
                            "to_version": to,
                        }),
                    ),
                ]
            }
            Step::Remove(pack_ref) => {
                let result = server
                    .client()
                    .await
                    .remove_packs(pb::RemovePacksRequest {
                        refs: vec![pack_ref.into()],
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                assert!(result.success, "{result:#?}");
                let pack_id = result.removed[0].pack_id;
                vec![(
                    "pack.deleted".into(),
                    json!({ "pack_id": pack_id, "pack_ref": pack_ref }),
                )]
            }
        }
    }
}

/// The scripted sequence: one line per step.
const SEQUENCE: &[Step] = &[
    Step::Install("ev_alpha", "1.0.0"),
    Step::Install("ev_beta", "0.1.0"),
    Step::Upgrade("ev_alpha", "2.0.0"),
    Step::Upgrade("ev_beta", "0.2.0"),
    Step::Rollback("ev_alpha", "2.0.0", "1.0.0"),
    Step::Remove("ev_beta"),
];

/// A consumer with a fresh exclusive queue bound to every routing key of a fresh
/// topic exchange (declared here first, so nothing the server publishes is unrouted).
struct Listener {
    connection: Connection,
    channel: Channel,
    consumer: Consumer,
    exchange: String,
}

impl Listener {
    async fn bind(url: &str) -> Listener {
        let mut suffix = [0u8; 6];
        getrandom::fill(&mut suffix).unwrap();
        let exchange = format!("attune.packs.test.{}", hex::encode(suffix));
        let uri = BrokerAddress::parse(url).expect("TEST_AMQP_URL").uri();
        let connection = Connection::connect_uri(uri, ConnectionProperties::default())
            .await
            .expect("connect to TEST_AMQP_URL");
        let channel = connection.create_channel().await.unwrap();
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "attune-packs-events-test".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        Listener {
            connection,
            channel,
            consumer,
            exchange,
        }
    }

    /// Exactly `n` messages: each within [`ARRIVAL`], then none for [`QUIET`].
    async fn exactly(&mut self, n: usize) -> Vec<Delivery> {
        let mut got = Vec::new();
        while got.len() < n {
            match tokio::time::timeout(ARRIVAL, self.consumer.next()).await {
                Ok(Some(Ok(delivery))) => got.push(delivery),
                other => panic!(
                    "expected {n} messages, got {} and then {other:?}",
                    got.len()
                ),
            }
        }
        self.nothing_more().await;
        got
    }

    async fn nothing_more(&mut self) {
        if let Ok(Some(extra)) = tokio::time::timeout(QUIET, self.consumer.next()).await {
            panic!("unexpected message: {extra:?}");
        }
    }

    async fn close(self) {
        let _ = self
            .channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
        let _ = self.connection.close(200, "test done".into()).await;
    }
}

/// Every stored event, in cursor order (WatchEvents, stored only).
async fn stored_events(server: &TestServer) -> Vec<pb::PackEvent> {
    let mut stream = server
        .client()
        .await
        .watch_events(pb::WatchEventsRequest {
            stored_only: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        events.push(event.unwrap());
    }
    events
}

/// `published_at` of every outbox row, in cursor order.
async fn published_at(db: &Db) -> Vec<Option<i64>> {
    const SQL: &str = "SELECT published_at FROM event_outbox ORDER BY id";
    match db {
        Db::Sqlite(pool) => sqlx::query_scalar(SQL).fetch_all(pool).await.unwrap(),
        Db::Postgres(pool) => sqlx::query_scalar(SQL).fetch_all(pool).await.unwrap(),
    }
}

/// The messages are the expected events, in order, each carrying the outbox event's
/// id, type, JSON content type, persistence and timestamp.
fn assert_messages(messages: &[Delivery], expected: &[(String, Value)], stored: &[pb::PackEvent]) {
    assert_eq!(messages.len(), expected.len());
    assert_eq!(stored.len(), expected.len());
    for ((message, (event_type, payload)), event) in messages.iter().zip(expected).zip(stored) {
        let body: Value = serde_json::from_slice(&message.data).unwrap();
        assert_eq!(&body, payload, "message body");
        assert_eq!(message.routing_key.as_str(), event_type);
        let p = &message.properties;
        assert_eq!(
            p.message_id().as_ref().map(|s| s.as_str()),
            Some(event.event_id.as_str())
        );
        assert_eq!(
            p.kind().as_ref().map(|s| s.as_str()),
            Some(event_type.as_str())
        );
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(*p.delivery_mode(), Some(2), "persistent");
        assert_eq!(
            *p.timestamp(),
            Some((event.created_at_ms / 1000) as u64),
            "timestamp"
        );
        assert_eq!(&event.event_type, event_type);
        assert_eq!(
            serde_json::from_str::<Value>(&event.payload_json).unwrap(),
            *payload
        );
    }
    let mut ids: Vec<&str> = stored.iter().map(|e| e.event_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), stored.len(), "event ids are unique");
}

fn with_broker(url: &str, exchange: &str) -> impl FnOnce(&mut attune_packs_server::config::Config) {
    let url = url.to_string();
    let exchange = exchange.to_string();
    move |c| {
        c.events.amqp_url = Some(attune_packs_server::config::Secret::new(url));
        c.events.exchange = exchange;
        c.events.retry_initial = Duration::from_millis(50);
        c.events.retry_max = Duration::from_millis(250);
        c.events.publish_timeout = Duration::from_secs(5);
    }
}

async fn a_consumer_receives_exactly_the_scripted_events(backend: Backend) {
    let url = amqp_url();
    let mut listener = Listener::bind(&url).await;
    let server = TestServer::start_with(backend, with_broker(&url, &listener.exchange)).await;
    let mut expected = Vec::new();
    for step in SEQUENCE {
        expected.extend(step.run(&server).await);
    }
    let messages = listener.exactly(expected.len()).await;
    assert_messages(&messages, &expected, &stored_events(&server).await);
    // Marked published only once confirmed: every row is by now.
    let published = published_at(&server.state.db).await;
    assert!(published.iter().all(Option::is_some), "{published:?}");
    listener.close().await;
    server.stop().await;
}
on_both_backends!(
    a_consumer_receives_exactly_the_scripted_events,
    requires = [RabbitMq]
);

async fn events_wait_for_an_unreachable_broker_and_arrive_after_a_restart(backend: Backend) {
    let url = amqp_url();
    let mut listener = Listener::bind(&url).await;
    // A port nothing listens on.
    let closed = {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap().port()
    };
    let unreachable = format!("amqp://guest:guest@127.0.0.1:{closed}/%2f");
    let server =
        TestServer::start_with(backend, with_broker(&unreachable, &listener.exchange)).await;
    let mut expected = Vec::new();
    for step in SEQUENCE {
        expected.extend(step.run(&server).await);
    }
    // The registrations succeeded; their events wait, through several retries.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let published = published_at(&server.state.db).await;
    assert_eq!(published, vec![None; expected.len()]);
    listener.nothing_more().await;
    // WatchEvents does not depend on the broker.
    assert_eq!(stored_events(&server).await.len(), expected.len());

    // The configuration is fixed and the server restarted on the same data.
    let server = server
        .restart_with(|c| {
            c.events.amqp_url = Some(attune_packs_server::config::Secret::new(url.clone()))
        })
        .await;
    let messages = listener.exactly(expected.len()).await;
    assert_messages(&messages, &expected, &stored_events(&server).await);
    let published = published_at(&server.state.db).await;
    assert!(published.iter().all(Option::is_some), "{published:?}");
    // Published events are not sent again by a later start.
    let server = server.restart_with(|_| {}).await;
    listener.nothing_more().await;
    listener.close().await;
    server.stop().await;
}
on_both_backends!(
    events_wait_for_an_unreachable_broker_and_arrive_after_a_restart,
    requires = [RabbitMq]
);

async fn a_registration_that_is_rolled_back_announces_nothing(backend: Backend) {
    let url = amqp_url();
    let mut listener = Listener::bind(&url).await;
    let server = TestServer::start_with(backend, with_broker(&url, &listener.exchange)).await;
    // Its test fails: not registered, no event.
    let failing = source(&server, "ev_failing", "1.0.0", Some(false));
    let result = server
        .client()
        .await
        .register_batch(pb::RegisterBatchRequest {
            pack_paths: vec![path_str(&failing)],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(result.failed_packs.len(), 1, "{result:#?}");
    assert_eq!(result.failed_packs[0].error_stage, "testing");
    // A write that appended an event and then rolled back leaves no row.
    let mut write = server
        .state
        .db
        .begin_packs_write(&["ev_ghost"])
        .await
        .unwrap();
    write
        .append_event(
            &PackEvent::Deleted {
                pack_id: 999,
                pack_ref: "ev_ghost".into(),
            },
            0,
        )
        .await
        .unwrap();
    write.rollback().await;
    // A passing one is announced, and only it.
    let passing = source(&server, "ev_passing", "1.0.0", Some(true));
    let result = server
        .client()
        .await
        .register_batch(pb::RegisterBatchRequest {
            pack_paths: vec![path_str(&passing)],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(result.registered_packs.len(), 1, "{result:#?}");
    let expected = vec![registered(
        result.registered_packs[0].pack_id,
        "ev_passing",
        "1.0.0",
    )];
    let messages = listener.exactly(1).await;
    let stored = stored_events(&server).await;
    assert_messages(&messages, &expected, &stored);
    assert_eq!(published_at(&server.state.db).await.len(), 1);
    listener.close().await;
    server.stop().await;
}
on_both_backends!(
    a_registration_that_is_rolled_back_announces_nothing,
    requires = [RabbitMq]
);

/// Reads `n` events from a live watch, each within [`ARRIVAL`].
async fn take(
    stream: &mut std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<pb::PackEvent, tonic::Status>> + Send>,
    >,
    n: usize,
) -> Vec<pb::PackEvent> {
    let mut got = Vec::new();
    while got.len() < n {
        let event = tokio::time::timeout(ARRIVAL, stream.next())
            .await
            .expect("an event in time")
            .expect("the stream goes on")
            .expect("an event");
        got.push(event);
    }
    got
}

fn cursors(events: &[pb::PackEvent]) -> Vec<u64> {
    events.iter().map(|e| e.cursor).collect()
}

async fn watch_events_resumes_without_gaps_or_repeats(backend: Backend) {
    // No broker: the embedded default; the outbox still fills.
    let server = TestServer::start(backend).await;
    for n in 1..=3 {
        register(&server, &format!("ev_w{n}"), "1.0.0", false).await;
    }
    let all = stored_events(&server).await;
    assert_eq!(all.len(), 3);
    assert!(all.windows(2).all(|w| w[0].cursor < w[1].cursor));

    // Read two live, go away, more events are committed, come back with the cursor.
    let mut client = server.client().await;
    let mut live = client
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .unwrap();
    let first = take(&mut live, 2).await;
    assert_eq!(cursors(&first), cursors(&all[..2]));
    drop(live);
    for n in 4..=5 {
        register(&server, &format!("ev_w{n}"), "1.0.0", false).await;
    }
    let mut resumed = client
        .watch_events(pb::WatchEventsRequest {
            after: first[1].cursor,
            ..Default::default()
        })
        .await
        .unwrap();
    let rest = take(&mut resumed, 3).await;
    let all = stored_events(&server).await;
    assert_eq!(all.len(), 5);
    assert_eq!(cursors(&rest), cursors(&all[2..]));
    assert_eq!(
        rest.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>(),
        all[2..]
            .iter()
            .map(|e| e.event_id.as_str())
            .collect::<Vec<_>>()
    );
    // Then live: a new commit arrives on the open stream, nothing else.
    register(&server, "ev_w6", "1.0.0", false).await;
    let live_one = take(&mut resumed, 1).await;
    assert!(live_one[0].payload_json.contains("ev_w6"));
    assert!(
        tokio::time::timeout(QUIET, resumed.next()).await.is_err(),
        "nothing more"
    );

    // only_new starts at the tip: only what is committed afterwards.
    let mut tip = client
        .watch_events(pb::WatchEventsRequest {
            only_new: true,
            ..Default::default()
        })
        .await
        .unwrap();
    register(&server, "ev_w7", "1.0.0", false).await;
    let new = take(&mut tip, 1).await;
    assert!(new[0].payload_json.contains("ev_w7"), "{new:?}");
    assert!(new[0].cursor > live_one[0].cursor);

    // `limit` ends the stream after that many events.
    let mut limited = client
        .watch_events(pb::WatchEventsRequest {
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(take(&mut limited, 2).await.len(), 2);
    assert!(limited.next().await.is_none(), "ended after the limit");

    // Retention deletes the oldest; a cursor before what was kept is refused, naming
    // the oldest kept, rather than silently skipping.
    let all = stored_events(&server).await;
    let deleted = server
        .state
        .db
        .prune_outbox(Retention {
            created_before_ms: 0,
            max_events: 3,
            unpublished_too: true,
        })
        .await
        .unwrap();
    assert_eq!(deleted, 4);
    let kept = stored_events(&server).await;
    assert_eq!(cursors(&kept), cursors(&all[4..]));
    let expired = match client
        .watch_events(pb::WatchEventsRequest {
            after: all[1].cursor,
            ..Default::default()
        })
        .await
    {
        Err(e) => e.status().cloned().expect("a status"),
        Ok(_) => panic!("an expired cursor is refused"),
    };
    assert_eq!(expired.code(), Code::OutOfRange, "{expired:?}");
    assert!(
        expired.message().contains(&kept[0].cursor.to_string()),
        "{}",
        expired.message()
    );
    // The cursor just before the oldest kept is still whole.
    let mut edge = client
        .watch_events(pb::WatchEventsRequest {
            after: all[3].cursor,
            stored_only: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(cursors(&take(&mut edge, 3).await), cursors(&kept));
    // A cursor beyond the newest event is not one of this log's.
    let ahead = match client
        .watch_events(pb::WatchEventsRequest {
            after: kept[2].cursor + 1000,
            ..Default::default()
        })
        .await
    {
        Err(e) => e.status().cloned().expect("a status"),
        Ok(_) => panic!("a cursor ahead of the log is refused"),
    };
    assert_eq!(ahead.code(), Code::OutOfRange, "{ahead:?}");
    server.stop().await;
}
on_both_backends!(watch_events_resumes_without_gaps_or_repeats);

async fn the_rest_event_log_pages_and_streams_with_last_event_id(backend: Backend) {
    let server = TestServer::start(backend).await;
    for n in 1..=3 {
        register(&server, &format!("ev_r{n}"), "1.0.0", false).await;
    }
    let all = stored_events(&server).await;
    let http = reqwest::Client::new();
    let auth = format!("Bearer {}", server.token());
    let get = |query: &str| {
        http.get(format!("{}/api/v1/events{query}", server.url()))
            .header("authorization", &auth)
    };
    async fn json(request: reqwest::RequestBuilder) -> Value {
        let text = request.send().await.unwrap().text().await.unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    // JSON: one page, and where to go on from.
    let page = json(get("?limit=2")).await;
    let events = page["data"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["cursor"], all[0].cursor);
    assert_eq!(events[0]["event_type"], "pack.registered");
    assert_eq!(events[0]["payload"]["pack_ref"], "ev_r1");
    assert_eq!(page["data"]["next_cursor"], all[1].cursor);
    let next = json(get(&format!("?after={}", all[1].cursor))).await;
    assert_eq!(next["data"]["events"].as_array().unwrap().len(), 1);
    assert_eq!(next["data"]["next_cursor"], all[2].cursor);
    let tip = json(get("?only_new=true")).await;
    assert_eq!(tip["data"]["events"].as_array().unwrap().len(), 0);
    assert_eq!(tip["data"]["next_cursor"], all[2].cursor);
    let bad = get("?after=-1").send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let ahead = get(&format!("?after={}", all[2].cursor + 100))
        .send()
        .await
        .unwrap();
    assert_eq!(ahead.status(), 400);
    let body: Value = serde_json::from_str(&ahead.text().await.unwrap()).unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("ahead"),
        "{body}"
    );

    // SSE: an EventSource reconnecting with Last-Event-ID gets what followed, live.
    let response = get("?after=0")
        .header("accept", "text/event-stream")
        .header("last-event-id", all[0].cursor.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let mut wanted = vec![all[1].cursor, all[2].cursor];
    register(&server, "ev_r4", "1.0.0", false).await;
    let newest = stored_events(&server).await.last().unwrap().cursor;
    wanted.push(newest);
    let ids = |text: &str| -> Vec<u64> {
        text.lines()
            .filter_map(|l| l.strip_prefix("id: "))
            .map(|v| v.trim().parse().unwrap())
            .collect()
    };
    while ids(&text).len() < wanted.len() {
        let chunk = tokio::time::timeout(ARRIVAL, body.next())
            .await
            .expect("SSE in time")
            .expect("the stream goes on")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert_eq!(ids(&text), wanted, "{text}");
    assert!(text.contains("event: pack.registered"), "{text}");
    assert!(text.contains("\"pack_ref\":\"ev_r4\""), "{text}");
    drop(body);

    // follow=false ends the stream after the stored events.
    let finished = get("?follow=false")
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(ids(&finished).len(), 4, "{finished}");
    server.stop().await;
}
on_both_backends!(the_rest_event_log_pages_and_streams_with_last_event_id);

register_test!(
    two_servers_sharing_postgres_publish_each_event_once_in_order,
    requires = [Postgres, RabbitMq]
);
/// Two server processes' worth of relays on one PostgreSQL database, both writing
/// events: each event reaches the broker once, in cursor order.
async fn two_servers_sharing_postgres_publish_each_event_once_in_order() {
    let url = amqp_url();
    let mut listener = Listener::bind(&url).await;
    let first =
        TestServer::start_with(Backend::Postgres, with_broker(&url, &listener.exchange)).await;
    let database_url = first.state.config.database_url();
    let broker = with_broker(&url, &listener.exchange);
    // Its own data dir, the first one's database (which the first one drops at the end).
    let second = TestServer::start_with(Backend::Sqlite, move |c| {
        broker(c);
        c.database_url = Some(attune_packs_server::config::Secret::new(database_url));
    })
    .await;
    let mut expected = Vec::new();
    for n in 1..=6 {
        let server = if n % 2 == 0 { &first } else { &second };
        expected.push(register(server, &format!("ev_shared{n}"), "1.0.0", false).await);
    }
    let messages = listener.exactly(expected.len()).await;
    let stored = stored_events(&first).await;
    assert_eq!(stored_events(&second).await, stored);
    assert_messages(&messages, &expected, &stored);
    listener.close().await;
    second.stop().await;
    first.stop().await;
}

/// A TCP relay between the server and the broker that the test can cut: existing
/// connections are dropped and new ones refused until it is restored.
struct Cuttable {
    port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cuts: tokio::sync::watch::Sender<u64>,
}

impl Cuttable {
    async fn start(target: std::net::SocketAddr) -> Cuttable {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cuts, _) = tokio::sync::watch::channel(0u64);
        let (accepting, watching) = (open.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !accepting.load(Ordering::SeqCst) {
                    continue;
                }
                let mut cut = watching.subscribe();
                tokio::spawn(async move {
                    let Ok(mut broker) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut broker) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Cuttable { port, open, cuts }
    }

    fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Waits until every outbox row is marked published.
async fn all_published(db: &Db) {
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    loop {
        let published = published_at(db).await;
        if published.iter().all(Option::is_some) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all published: {published:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_broker_connection_lost_mid_sequence_loses_nothing(backend: Backend) {
    let url = amqp_url();
    let mut listener = Listener::bind(&url).await;
    let uri = BrokerAddress::parse(&url).unwrap().uri();
    let target = tokio::net::lookup_host((uri.authority.host.as_str(), uri.authority.port))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = Cuttable::start(target).await;
    let vhost: String = url::form_urlencoded::byte_serialize(uri.vhost.as_bytes()).collect();
    let via_proxy = format!(
        "amqp://{}:{}@127.0.0.1:{}/{vhost}",
        uri.authority.userinfo.username, uri.authority.userinfo.password, proxy.port
    );
    let server = TestServer::start_with(backend, with_broker(&via_proxy, &listener.exchange)).await;
    let (before, after) = SEQUENCE.split_at(SEQUENCE.len() / 2);
    let mut expected = Vec::new();
    for step in before {
        expected.extend(step.run(&server).await);
    }
    let mut messages = listener.exactly(expected.len()).await;
    all_published(&server.state.db).await;

    // The connection drops; changes go on and their events wait.
    proxy.cut();
    let waiting = expected.len();
    for step in after {
        expected.extend(step.run(&server).await);
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let published = published_at(&server.state.db).await;
    assert!(
        published[waiting..].iter().all(Option::is_none),
        "{published:?}"
    );
    listener.nothing_more().await;

    // Back: the relay reconnects by itself and sends the rest, in order.
    proxy.restore();
    messages.extend(listener.exactly(expected.len() - waiting).await);
    assert_messages(&messages, &expected, &stored_events(&server).await);
    all_published(&server.state.db).await;
    listener.close().await;
    server.stop().await;
}
on_both_backends!(
    a_broker_connection_lost_mid_sequence_loses_nothing,
    requires = [RabbitMq]
);
