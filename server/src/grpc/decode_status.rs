//! A request message that is not valid protobuf is the caller's mistake:
//! INVALID_ARGUMENT, naming the decode problem.
//!
//! tonic's codec answers INTERNAL for these (its decoder cannot tell a request from a
//! response), for every service on the port: PackService, health and reflection. One
//! response filter over the whole router rewrites exactly those statuses — in the
//! headers of a trailers-only answer (unary and server-streaming calls fail before the
//! handler runs) and in the trailers of a streaming one (reflection's bidirectional
//! stream) — and leaves every other status and every valid call untouched.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use axum::{body::Body, response::Response};
use bytes::Bytes;
use http_body::Frame;
use tonic::{
    Code,
    codegen::http::{HeaderMap, HeaderValue},
};

/// Messages tonic gives a request body it cannot decode: a malformed message, a
/// message cut short, no message at all, or an impossible compression flag.
const DECODE_FAILURES: &[&str] = &[
    "failed to decode Protobuf message",
    "Unexpected EOF decoding stream",
    "Missing request message",
    "protocol error: received message with invalid compression flag",
];

/// Response filter (`axum::middleware::map_response`) for the whole router.
pub async fn malformed_requests_are_invalid_arguments(mut response: Response) -> Response {
    let grpc = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if !grpc {
        return response;
    }
    if response.headers().contains_key("grpc-status") {
        rewrite(response.headers_mut());
        return response;
    }
    response.map(|body| Body::new(RewriteTrailers { inner: body }))
}

/// INTERNAL caused by an undecodable request becomes INVALID_ARGUMENT.
fn rewrite(headers: &mut HeaderMap) {
    let internal = (Code::Internal as i32).to_string();
    if headers.get("grpc-status").and_then(|v| v.to_str().ok()) != Some(internal.as_str()) {
        return;
    }
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(percent_decoded)
        .unwrap_or_default();
    if DECODE_FAILURES.iter().any(|m| message.starts_with(m)) {
        headers.insert(
            "grpc-status",
            HeaderValue::from(Code::InvalidArgument as i32),
        );
    }
}

fn percent_decoded(value: &str) -> String {
    url::form_urlencoded::parse(format!("m={value}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The body of a streaming gRPC answer, with its trailers passed through [`rewrite`].
struct RewriteTrailers {
    inner: Body,
}

impl http_body::Body for RewriteTrailers {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        polled.map(|frame| {
            frame.map(|frame| {
                frame.map(|frame| match frame.into_trailers() {
                    Ok(mut trailers) => {
                        rewrite(&mut trailers);
                        Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                })
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_headers(code: Code, message: &str) -> HeaderMap {
        let status = tonic::Status::new(code, message);
        let mut headers = HeaderMap::new();
        status.add_header(&mut headers).unwrap();
        headers
    }

    #[test]
    fn decode_failures_become_invalid_argument_and_keep_their_message() {
        let mut headers = status_headers(
            Code::Internal,
            "failed to decode Protobuf message: invalid wire type: ThirtyTwoBit (expected LengthDelimited)",
        );
        rewrite(&mut headers);
        assert_eq!(headers["grpc-status"], "3");
        assert!(
            percent_decoded(headers["grpc-message"].to_str().unwrap())
                .contains("invalid wire type")
        );
    }

    #[test]
    fn other_internal_errors_are_left_alone() {
        let mut headers = status_headers(Code::Internal, "database exploded");
        rewrite(&mut headers);
        assert_eq!(headers["grpc-status"], "13");
        let mut headers = status_headers(Code::NotFound, "failed to decode Protobuf message");
        rewrite(&mut headers);
        assert_eq!(headers["grpc-status"], "5");
    }
}
