//! `GET /api/v1/events`: the event log over WatchEvents.
//!
//! JSON (the default): one page of stored events after a cursor, and the cursor to
//! ask from next; it never waits. With `Accept: text/event-stream`: server-sent
//! events, the stored ones then live, each with `id:` = its cursor, so that an
//! EventSource reconnecting with `Last-Event-ID` misses nothing and repeats nothing.

use std::convert::Infallible;

use attune_packs_proto::v1::{self as pb, pack_service_server::PackService};
use axum::{
    Json,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode},
    response::{
        IntoResponse, Response,
        sse::{self, KeepAlive, Sse},
    },
};
use futures::{Stream, StreamExt};
use serde_json::{Value, json};

use super::{ApiError, RestState, wants_sse};
use crate::grpc::STARTS_AFTER;

/// Events in one JSON page when the request names no `limit`.
const DEFAULT_PAGE: u32 = 100;
/// Largest `limit`.
const MAX_LIMIT: u32 = 1000;

/// The query, checked.
#[derive(Debug, Default, PartialEq, Eq)]
struct Query {
    after: u64,
    only_new: bool,
    follow: bool,
    limit: Option<u32>,
}

fn bad(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

fn parse_query(raw: Option<&str>) -> Result<Query, ApiError> {
    let mut query = Query {
        follow: true,
        ..Default::default()
    };
    let mut seen: Vec<String> = Vec::new();
    for (key, value) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if seen.iter().any(|k| *k == key) {
            return Err(bad(format!("query parameter `{key}` is given twice")));
        }
        seen.push(key.to_string());
        let boolean = |value: &str| match value {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(bad(format!(
                "query parameter `{key}` must be true or false"
            ))),
        };
        match key.as_ref() {
            "after" => {
                query.after = value.parse().map_err(|_| {
                    bad("query parameter `after` must be an event cursor (a number, 0 for the oldest kept)".into())
                })?
            }
            "only_new" => query.only_new = boolean(&value)?,
            "follow" => query.follow = boolean(&value)?,
            "limit" => {
                let limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        bad(format!(
                            "query parameter `limit` must be a number from 1 to {MAX_LIMIT}"
                        ))
                    })?;
                query.limit = Some(limit);
            }
            other => {
                return Err(bad(format!(
                    "unknown query parameter `{other}`; expected after, only_new, follow or limit"
                )));
            }
        }
    }
    Ok(query)
}

/// The cursor an EventSource reconnects from.
fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| bad("Last-Event-ID must be an event cursor (a decimal number)".into()))?;
    let text = text.trim();
    // An empty value is how EventSource says "no event seen yet".
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| bad("Last-Event-ID must be an event cursor (a decimal number)".into()))
}

/// One event as JSON: the payload as an object, not a string.
fn event_json(event: &pb::PackEvent) -> Value {
    let payload = serde_json::from_str::<Value>(&event.payload_json)
        .unwrap_or_else(|_| Value::String(event.payload_json.clone()));
    json!({
        "cursor": event.cursor,
        "event_id": event.event_id,
        "event_type": event.event_type,
        "payload": payload,
        "created_at_ms": event.created_at_ms,
    })
}

pub(super) async fn events(
    State(s): State<RestState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let principal = super::authenticate(&s, &headers)?;
    let query = parse_query(raw.as_deref())?;
    let sse = wants_sse(&headers);
    let resume = last_event_id(&headers)?;
    let message = pb::WatchEventsRequest {
        // A reconnect resumes after the last event seen, whatever the URL says.
        after: resume.unwrap_or(query.after),
        only_new: query.only_new && resume.is_none(),
        stored_only: !sse || !query.follow,
        limit: match (sse, query.limit) {
            (_, Some(limit)) => limit,
            (false, None) => DEFAULT_PAGE,
            (true, None) => 0,
        },
    };
    let request = super::authenticated(principal, &headers, message);
    let response = s.service.watch_events(request).await?;
    let starts_after: u64 = response
        .metadata()
        .get(STARTS_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_default();
    let mut stream = response.into_inner();
    if sse {
        return Ok(sse_events(stream).into_response());
    }
    let mut events = Vec::new();
    let mut next_cursor = starts_after;
    while let Some(item) = stream.next().await {
        let event = item?;
        next_cursor = event.cursor;
        events.push(event_json(&event));
    }
    Ok(Json(json!({
        "data": { "events": events, "next_cursor": next_cursor }
    }))
    .into_response())
}

/// Each event as `id: <cursor>`, `event: <event type>`, `data: <event JSON>`; a
/// failure as one `event: error` carrying the error envelope, which ends the stream.
fn sse_events(
    stream: super::EventStream<pb::PackEvent>,
) -> Sse<impl Stream<Item = Result<sse::Event, Infallible>>> {
    let events = stream.map(|item| {
        let event = match item {
            Ok(event) => sse::Event::default()
                .id(event.cursor.to_string())
                .event(event.event_type.clone())
                .json_data(event_json(&event)),
            Err(status) => sse::Event::default()
                .event("error")
                .json_data(ApiError::from(status).body()),
        };
        Ok(event.unwrap_or_else(|e| sse::Event::default().event("error").data(e.to_string())))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok<T>(result: Result<T, ApiError>) -> T {
        result.unwrap_or_else(|e| panic!("{}", e.message))
    }

    #[test]
    fn queries() {
        assert_eq!(
            ok(parse_query(None)),
            Query {
                follow: true,
                ..Default::default()
            }
        );
        assert_eq!(
            ok(parse_query(Some(
                "after=7&only_new=false&follow=false&limit=3"
            ))),
            Query {
                after: 7,
                only_new: false,
                follow: false,
                limit: Some(3)
            }
        );
        for (bad, needle) in [
            ("after=-1", "after"),
            ("after=x", "after"),
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("follow=yes", "follow"),
            ("after=1&after=2", "twice"),
            ("cursor=3", "unknown"),
        ] {
            let Err(e) = parse_query(Some(bad)) else {
                panic!("{bad} is refused")
            };
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.contains(needle), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn last_event_ids() {
        let mut h = HeaderMap::new();
        assert_eq!(ok(last_event_id(&h)), None);
        h.insert("last-event-id", "42".parse().unwrap());
        assert_eq!(ok(last_event_id(&h)), Some(42));
        h.insert("last-event-id", "".parse().unwrap());
        assert_eq!(ok(last_event_id(&h)), None);
        h.insert("last-event-id", "x1".parse().unwrap());
        assert!(last_event_id(&h).is_err());
    }
}
