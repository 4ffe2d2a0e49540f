//! The relay: publishes the outbox to RabbitMQ, in cursor order, at least once.
//!
//! An event is marked published only after the broker confirmed it (publisher
//! confirms), so a crash, a lost connection or a refused message means it is sent
//! again (consumers deduplicate on `message_id`), never that it is lost. While the
//! broker cannot be reached the relay retries with exponential backoff, and events
//! wait in the outbox. On PostgreSQL one process at a time publishes (a lease held
//! while it publishes a batch), so that several servers sharing a database neither
//! interleave out of order nor send every event once each.
//!
//! The same task prunes the outbox (`events.retain`, `events.retain_max_events`).

use std::time::{Duration, Instant};

use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions},
    types::FieldTable,
    uri::{AMQPScheme, AMQPUri},
};
use tokio::task::JoinHandle;

use crate::{
    config::EventsSection,
    shutdown::Stopping,
    store::{
        Db, StoreError,
        outbox::{OutboxEvent, Retention},
    },
};

/// How often the outbox is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Why `events.amqp_url` cannot be used. Never carries the URL: it may hold a password.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BrokerUrlError {
    #[error("not a URL ({0}); expected amqp://user:password@host:5672/vhost")]
    Malformed(String),
    #[error(
        "scheme '{0}' is not supported: use amqp:// (amqps:// is not built in; reach a TLS broker through a local TLS tunnel)"
    )]
    Scheme(String),
    #[error("no host; expected amqp://user:password@host:5672/vhost")]
    NoHost,
    #[error("unusable query or credentials: {0}")]
    Invalid(String),
}

/// A parsed `events.amqp_url`, and how it may be named in logs (no credentials).
#[derive(Clone)]
pub struct BrokerAddress {
    uri: AMQPUri,
    target: String,
}

impl std::fmt::Debug for BrokerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BrokerAddress").field(&self.target).finish()
    }
}

impl BrokerAddress {
    pub fn parse(url: &str) -> Result<Self, BrokerUrlError> {
        let parsed = url::Url::parse(url).map_err(|e| BrokerUrlError::Malformed(e.to_string()))?;
        match parsed.scheme() {
            "amqp" => {}
            other => return Err(BrokerUrlError::Scheme(other.to_string())),
        }
        let host = match parsed.host() {
            None => return Err(BrokerUrlError::NoHost),
            Some(url::Host::Domain("")) => return Err(BrokerUrlError::NoHost),
            Some(host) => host,
        };
        // Its errors may quote the whole URL, password included: only the kind is kept.
        let mut uri: AMQPUri = url.parse().map_err(|e: String| {
            BrokerUrlError::Invalid(
                e.split(':')
                    .next()
                    .unwrap_or("invalid parameter")
                    .to_string(),
            )
        })?;
        // amq-protocol-uri reads only DNS names as hosts: an IP literal would silently
        // become its default, `localhost`.
        match host {
            url::Host::Ipv4(ip) => uri.authority.host = ip.to_string(),
            url::Host::Ipv6(ip) => uri.authority.host = ip.to_string(),
            url::Host::Domain(_) => {}
        }
        debug_assert_eq!(uri.scheme, AMQPScheme::AMQP);
        let target = format!(
            "{}:{} vhost '{}'",
            parsed.host_str().unwrap_or_default(),
            uri.authority.port,
            uri.vhost
        );
        Ok(Self { uri, target })
    }

    /// `host:port vhost '…'`: what logs and errors name.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The parsed URI, credentials included (what lapin connects with).
    pub fn uri(&self) -> AMQPUri {
        self.uri.clone()
    }

    /// The password, for the log scrubber.
    pub fn password(&self) -> &str {
        &self.uri.authority.userinfo.password
    }
}

/// A topic exchange RabbitMQ accepts and this relay may declare.
pub fn check_exchange_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty (the default exchange cannot route by topic)".into());
    }
    if name.len() > 255 {
        return Err("must be at most 255 bytes".into());
    }
    if name.starts_with("amq.") {
        return Err("names starting with 'amq.' are reserved by the broker".into());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(format!(
            "'{}' is not allowed: use letters, digits, '-', '_', '.' and ':'",
            bad.escape_default()
        ));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot connect to the broker at {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: Box<lapin::Error>,
    },
    #[error("cannot declare the topic exchange '{exchange}' at {target}: {source}")]
    Declare {
        exchange: String,
        target: String,
        #[source]
        source: Box<lapin::Error>,
    },
    #[error("no answer from the broker at {target} within {} s (events.publish_timeout)", timeout.as_secs_f32())]
    Timeout { target: String, timeout: Duration },
    #[error("publishing event {cursor} to {target} failed: {source}")]
    Publish {
        cursor: i64,
        target: String,
        #[source]
        source: Box<lapin::Error>,
    },
    #[error("the broker at {target} refused event {cursor} (negative confirm); it is sent again")]
    Refused { cursor: i64, target: String },
    #[error("cannot read or update the event outbox: {0}")]
    Store(#[from] StoreError),
}

/// What the relay needs from `events:`.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub broker: Option<BrokerAddress>,
    pub exchange: String,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub publish_timeout: Duration,
    pub poll_interval: Duration,
    pub batch_size: u32,
    pub retain: Duration,
    pub retain_max_events: u64,
}

impl RelaySettings {
    /// From a validated configuration section.
    pub fn from_config(section: &EventsSection) -> Self {
        Self {
            broker: section
                .amqp_url
                .as_ref()
                .and_then(|url| BrokerAddress::parse(url.expose()).ok()),
            exchange: section.exchange.clone(),
            retry_initial: section.retry_initial,
            retry_max: section.retry_max,
            publish_timeout: section.publish_timeout,
            poll_interval: section.poll_interval,
            batch_size: section.batch_size,
            retain: section.retain,
            retain_max_events: section.retain_max_events,
        }
    }

    /// What the outbox may lose at `now_ms`.
    pub fn retention(&self, now_ms: i64) -> Retention {
        Retention {
            created_before_ms: now_ms.saturating_sub(self.retain.as_millis() as i64),
            max_events: self.retain_max_events,
            unpublished_too: self.broker.is_none(),
        }
    }
}

/// Starts the relay (and pruning) for `db`; it ends once `stopping` is triggered.
pub fn spawn(db: Db, settings: RelaySettings, stopping: Stopping) -> JoinHandle<()> {
    tokio::spawn(async move { Relay { db, settings }.run(stopping).await })
}

/// One connection and a confirming channel on it, with the exchange declared.
struct Broker {
    connection: Connection,
    channel: Channel,
}

impl Broker {
    async fn connect(address: &BrokerAddress, exchange: &str) -> Result<Self, RelayError> {
        let properties =
            ConnectionProperties::default().with_connection_name("attune-packs event relay".into());
        let connection = Connection::connect_uri(address.uri.clone(), properties)
            .await
            .map_err(|source| RelayError::Connect {
                target: address.target.clone(),
                source: Box::new(source),
            })?;
        let declared = async {
            let channel = connection.create_channel().await?;
            channel
                .exchange_declare(
                    exchange.into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>(channel)
        }
        .await;
        match declared {
            Ok(channel) => Ok(Self {
                connection,
                channel,
            }),
            Err(source) => {
                let _ = connection.close(200, "exchange not declared".into()).await;
                Err(RelayError::Declare {
                    exchange: exchange.to_string(),
                    target: address.target.clone(),
                    source: Box::new(source),
                })
            }
        }
    }

    fn usable(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    /// Publishes `events` in order (pipelined) and waits for their confirms in order,
    /// counting in `acked` the prefix the broker confirmed.
    async fn publish(
        &self,
        events: &[OutboxEvent],
        exchange: &str,
        target: &str,
        acked: &mut usize,
    ) -> Result<(), RelayError> {
        let mut confirms = Vec::with_capacity(events.len());
        for event in events {
            let properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_message_id(event.event_id.as_str().into())
                .with_type(event.event_type.as_str().into())
                .with_timestamp(u64::try_from(event.created_at_ms / 1000).unwrap_or_default())
                .with_app_id("attune-packs".into());
            let confirm = self
                .channel
                .basic_publish(
                    exchange.into(),
                    event.event_type.as_str().into(),
                    BasicPublishOptions::default(),
                    event.payload.as_bytes(),
                    properties,
                )
                .await
                .map_err(|source| RelayError::Publish {
                    cursor: event.id,
                    target: target.to_string(),
                    source: Box::new(source),
                })?;
            confirms.push((event.id, confirm));
        }
        for (cursor, confirm) in confirms {
            match confirm.await {
                Ok(Confirmation::Ack(_)) => *acked += 1,
                Ok(Confirmation::Nack(_) | Confirmation::NotRequested) => {
                    return Err(RelayError::Refused {
                        cursor,
                        target: target.to_string(),
                    });
                }
                Err(source) => {
                    return Err(RelayError::Publish {
                        cursor,
                        target: target.to_string(),
                        source: Box::new(source),
                    });
                }
            }
        }
        Ok(())
    }

    async fn close(self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.connection.close(200, "attune-packs stopping".into()),
        )
        .await;
    }
}

/// What one relay round achieved.
enum Round {
    /// A full batch went out; there may be more.
    More,
    /// Nothing is left to publish.
    CaughtUp,
    /// Another process holds the lease.
    Leased,
}

struct Relay {
    db: Db,
    settings: RelaySettings,
}

impl Relay {
    async fn run(self, stopping: Stopping) {
        let mut commits = super::commits();
        let mut broker: Option<Broker> = None;
        let mut backoff = self.settings.retry_initial;
        let mut failures: u32 = 0;
        let mut next_prune = Instant::now();
        if let Some(address) = &self.settings.broker {
            tracing::info!(
                broker = address.target(),
                exchange = %self.settings.exchange,
                "event relay started"
            );
        }
        loop {
            if stopping.is_triggered() {
                break;
            }
            if Instant::now() >= next_prune {
                self.prune().await;
                next_prune = Instant::now() + PRUNE_EVERY;
            }
            // Marked seen before reading: a commit from now on wakes the next wait.
            commits.borrow_and_update();
            let (wait, on_commit) = match &self.settings.broker {
                None => (PRUNE_EVERY, false),
                Some(address) => match self.round(&mut broker, address).await {
                    Ok(round) => {
                        if failures > 0 {
                            tracing::info!(
                                broker = address.target(),
                                failures,
                                "event relay publishing again"
                            );
                        }
                        failures = 0;
                        backoff = self.settings.retry_initial;
                        match round {
                            Round::More => continue,
                            Round::CaughtUp | Round::Leased => (self.settings.poll_interval, true),
                        }
                    }
                    Err(error) => {
                        failures = failures.saturating_add(1);
                        tracing::warn!(
                            error = %error,
                            failures,
                            retry_in_ms = backoff.as_millis() as u64,
                            "event relay cannot publish; events wait in the outbox"
                        );
                        if let Some(b) = broker.take() {
                            b.close().await;
                        }
                        let wait = backoff;
                        backoff = (backoff * 2).min(self.settings.retry_max);
                        (wait, false)
                    }
                },
            };
            let wait = wait.min(next_prune.saturating_duration_since(Instant::now()));
            tokio::select! {
                _ = stopping.triggered() => break,
                _ = tokio::time::sleep(wait) => {}
                _ = commits.changed(), if on_commit => {}
            }
        }
        if let Some(b) = broker.take() {
            b.close().await;
        }
    }

    async fn round(
        &self,
        broker: &mut Option<Broker>,
        address: &BrokerAddress,
    ) -> Result<Round, RelayError> {
        let timeout = self.settings.publish_timeout;
        let timed_out = || RelayError::Timeout {
            target: address.target.clone(),
            timeout,
        };
        if !broker.as_ref().is_some_and(Broker::usable) {
            if let Some(b) = broker.take() {
                b.close().await;
            }
            // Connected before the lease is taken: no lease waits on a dead broker.
            let connected =
                tokio::time::timeout(timeout, Broker::connect(address, &self.settings.exchange))
                    .await
                    .map_err(|_| timed_out())??;
            *broker = Some(connected);
        }
        let broker = broker.as_ref().expect("connected above");
        let Some((lease, events)) = self.db.claim_unpublished(self.settings.batch_size).await?
        else {
            return Ok(Round::Leased);
        };
        if events.is_empty() {
            lease.release().await;
            return Ok(Round::CaughtUp);
        }
        let mut acked = 0;
        let outcome = tokio::time::timeout(
            timeout,
            broker.publish(
                &events,
                &self.settings.exchange,
                &address.target,
                &mut acked,
            ),
        )
        .await
        .unwrap_or_else(|_| Err(timed_out()));
        let ids: Vec<i64> = events[..acked].iter().map(|e| e.id).collect();
        lease.mark_published(&ids, now_ms()).await?;
        if !ids.is_empty() {
            tracing::debug!(
                published = ids.len(),
                through = ids.last().copied(),
                "events published"
            );
        }
        outcome?;
        Ok(if events.len() == self.settings.batch_size as usize {
            Round::More
        } else {
            Round::CaughtUp
        })
    }

    async fn prune(&self) {
        match self
            .db
            .prune_outbox(self.settings.retention(now_ms()))
            .await
        {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "old events pruned from the outbox"),
            Err(error) => tracing::warn!(error = %error, "cannot prune the event outbox"),
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_are_parsed_without_leaking_the_password() {
        let a = BrokerAddress::parse("amqp://guest:s3cret@127.0.0.1:5673/%2f").unwrap();
        assert_eq!(a.uri.authority.host, "127.0.0.1");
        assert_eq!(a.uri.authority.port, 5673);
        assert_eq!(a.uri.vhost, "/");
        assert_eq!(a.password(), "s3cret");
        assert!(!a.target().contains("s3cret"), "{}", a.target());
        assert!(!format!("{a:?}").contains("s3cret"));
        let v6 = BrokerAddress::parse("amqp://u:p@[::1]/prod").unwrap();
        assert_eq!(v6.uri.authority.host, "::1");
        assert_eq!(v6.uri.authority.port, 5672);
        assert_eq!(v6.uri.vhost, "prod");
        let named = BrokerAddress::parse("amqp://rabbit.internal").unwrap();
        assert_eq!(named.uri.authority.host, "rabbit.internal");
        assert_eq!(named.uri.vhost, "/");
        for (bad, needle) in [
            ("amqps://u:s3cret@h/", "amqps"),
            ("http://u:s3cret@h/", "http"),
            ("u:s3cret@h", "scheme"),
            ("rabbit host", "not a URL"),
            ("amqp://u:s3cret@h/?heartbeat=x", "unusable"),
        ] {
            let e = BrokerAddress::parse(bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
            assert!(!e.contains("s3cret"), "{bad}: {e}");
        }
    }

    #[test]
    fn exchange_names() {
        assert!(check_exchange_name("attune.packs").is_ok());
        assert!(check_exchange_name("a-b_c:d").is_ok());
        for bad in ["", "amq.topic", "with space", "é", &"x".repeat(256)] {
            assert!(check_exchange_name(bad).is_err(), "{bad}");
        }
    }
}
