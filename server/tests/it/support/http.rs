//! A loopback HTTP(S) file server for download tests.
//!
//! [`FileServer`] serves an in-memory map `path -> file` over HTTP/1.1, plain or
//! TLS with a self-signed certificate made at start. Tests change it at run time
//! (add files, fail or redirect paths, require headers, slow responses down) and
//! inspect what it received (hits, last request headers). It stops on drop: the
//! accept loop and every open connection are aborted.
//!
//! Responses:
//! * a file: 200 with `Content-Length`, `Content-Type` and an `ETag` (hash of the
//!   bytes); 304 when `If-None-Match` names that ETag; HEAD gets the headers only;
//! * [`FileServer::redirect`]: 302 with `Location`;
//! * [`FileServer::fail`]: the given status with a short text body;
//! * [`FileServer::require_header`]: 401 (with `WWW-Authenticate`) unless the
//!   request carries the header with exactly that value;
//! * unknown path: 404; a method other than GET or HEAD: 405.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header,
};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

/// A file to serve.
#[derive(Clone)]
struct File {
    bytes: Bytes,
    etag: String,
    /// Extra or overriding response headers (a `Content-Type` here replaces the
    /// one guessed from the path).
    headers: Vec<(String, String)>,
}

/// What a path answers.
#[derive(Clone)]
enum Route {
    File(File),
    Redirect(String),
    Fail(StatusCode),
}

/// How slowly a path answers.
#[derive(Clone, Copy, Default)]
struct Pace {
    /// Pause before the response headers.
    before_headers: Duration,
    /// Pause between the headers and the first byte of the body.
    before_body: Duration,
    /// Send the body in pieces of this size with this pause between them.
    trickle: Option<(usize, Duration)>,
}

/// Everything the server knows about one path.
#[derive(Default)]
struct PathState {
    route: Option<Route>,
    /// `(name, value)` pairs a request must carry, else 401.
    required: Vec<(HeaderName, HeaderValue)>,
    pace: Pace,
    hits: usize,
    last_headers: Option<HeaderMap>,
}

type Paths = Arc<Mutex<HashMap<String, PathState>>>;

/// The self-signed certificate of an HTTPS [`FileServer`].
#[derive(Clone)]
pub struct TestCert {
    /// PEM, e.g. for a CA bundle file that makes a verifying client trust it.
    pub pem: String,
    pub der: Vec<u8>,
}

pub struct FileServer {
    addr: SocketAddr,
    cert: Option<TestCert>,
    paths: Paths,
    accept: JoinHandle<()>,
}

impl FileServer {
    /// Plain HTTP on `127.0.0.1:<ephemeral>`.
    pub async fn start_http() -> Self {
        Self::start(None).await
    }

    /// HTTPS on `127.0.0.1:<ephemeral>` with a fresh self-signed certificate for
    /// `127.0.0.1` and `localhost` (see [`FileServer::cert`]).
    pub async fn start_https() -> Self {
        let (config, cert) = tls_config();
        let mut server = Self::start(Some(TlsAcceptor::from(Arc::new(config)))).await;
        server.cert = Some(cert);
        server
    }

    async fn start(tls: Option<TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let paths = Paths::default();
        let accept = tokio::spawn(accept_loop(listener, tls, paths.clone()));
        FileServer {
            addr,
            cert: None,
            paths,
            accept,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/path` (`https://…` for TLS); `path` may start with
    /// `/` or not.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.cert.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// The certificate of an HTTPS server (`None` for plain HTTP).
    pub fn cert(&self) -> Option<&TestCert> {
        self.cert.as_ref()
    }

    /// Adds or replaces a file; the content type is guessed from the path.
    pub fn put(&self, path: &str, bytes: impl Into<Vec<u8>>) {
        self.put_with_headers(path, bytes, Vec::new());
    }

    /// Adds or replaces a file with extra response headers (a `Content-Type`
    /// among them replaces the guessed one).
    pub fn put_with_headers(
        &self,
        path: &str,
        bytes: impl Into<Vec<u8>>,
        headers: Vec<(String, String)>,
    ) {
        let bytes = Bytes::from(bytes.into());
        let etag = format!("\"{}\"", &hex::encode(Sha256::digest(&bytes))[..16]);
        let file = File {
            bytes,
            etag,
            headers,
        };
        self.with_path(path, |p| p.route = Some(Route::File(file)));
    }

    /// Removes whatever `path` answered (it answers 404 again).
    pub fn remove(&self, path: &str) {
        self.with_path(path, |p| p.route = None);
    }

    /// Answers `path` with `302 Found` to `to_url` (any URL, also another server).
    pub fn redirect(&self, from: &str, to_url: &str) {
        let to = to_url.to_string();
        self.with_path(from, |p| p.route = Some(Route::Redirect(to)));
    }

    /// Answers `path` with `status` (e.g. 500) and a short text body.
    pub fn fail(&self, path: &str, status: u16) {
        let status = StatusCode::from_u16(status).expect("a valid HTTP status");
        self.with_path(path, |p| p.route = Some(Route::Fail(status)));
    }

    /// Requests for `path` without header `name: value` get 401. Several calls
    /// add several required headers.
    pub fn require_header(&self, path: &str, name: &str, value: &str) {
        let name = HeaderName::try_from(name).expect("a valid header name");
        let value = HeaderValue::try_from(value).expect("a valid header value");
        self.with_path(path, |p| p.required.push((name, value)));
    }

    /// Requires `Authorization: Basic base64(user:password)` on `path`.
    pub fn require_basic_auth(&self, path: &str, user: &str, password: &str) {
        let encoded = super::git::base64(format!("{user}:{password}").as_bytes());
        self.require_header(path, "authorization", &format!("Basic {encoded}"));
    }

    /// Requires `Authorization: Bearer <token>` on `path`.
    pub fn require_bearer(&self, path: &str, token: &str) {
        self.require_header(path, "authorization", &format!("Bearer {token}"));
    }

    /// Sends the headers of `path` at once, then waits `delay` before the body:
    /// a stalled download (use a long delay for "never"; dropping the server
    /// still ends the connection).
    pub fn set_delay(&self, path: &str, delay: Duration) {
        self.with_path(path, |p| p.pace.before_body = delay);
    }

    /// Waits `delay` before even the response headers (a slow or silent server).
    pub fn set_header_delay(&self, path: &str, delay: Duration) {
        self.with_path(path, |p| p.pace.before_headers = delay);
    }

    /// Sends the body of `path` in pieces of `chunk` bytes, the first at once and
    /// each further one after `interval`: a download that progresses slowly.
    pub fn set_trickle(&self, path: &str, chunk: usize, interval: Duration) {
        assert!(chunk > 0, "chunk size must be positive");
        self.with_path(path, |p| p.pace.trickle = Some((chunk, interval)));
    }

    /// How many requests `path` got (any method, any answer).
    pub fn hits(&self, path: &str) -> usize {
        self.lock().get(&normalize(path)).map_or(0, |p| p.hits)
    }

    /// The headers of the last request for `path`.
    pub fn last_request_headers(&self, path: &str) -> Option<HeaderMap> {
        self.lock()
            .get(&normalize(path))
            .and_then(|p| p.last_headers.clone())
    }

    fn with_path(&self, path: &str, f: impl FnOnce(&mut PathState)) {
        f(self.lock().entry(normalize(path)).or_default());
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, PathState>> {
        lock(&self.paths)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a JoinSet): aborting it
        // closes every connection too, including stalled responses.
        self.accept.abort();
    }
}

/// Paths are stored with a leading `/`, as they appear in request URIs.
fn normalize(path: &str) -> String {
    format!("/{}", path.trim_start_matches('/'))
}

/// A panicking test thread must not make every later call panic too.
fn lock(paths: &Paths) -> MutexGuard<'_, HashMap<String, PathState>> {
    paths.lock().unwrap_or_else(|e| e.into_inner())
}

/// A rustls server configuration with a fresh self-signed certificate. The
/// provider is given explicitly (aws-lc-rs, as reqwest uses), so no process-wide
/// default provider is needed.
fn tls_config() -> (rustls::ServerConfig, TestCert) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let certified = rcgen::generate_simple_self_signed(names).expect("self-signed certificate");
    let cert = TestCert {
        pem: certified.cert.pem(),
        der: certified.cert.der().to_vec(),
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(cert.der.clone())], key)
        .expect("server certificate");
    // HTTP/1.1 only: every response then lives in its connection's task, which
    // the server can abort on drop.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (config, cert)
}

async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, paths: Paths) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        connections.spawn(serve_connection(stream, tls.clone(), paths.clone()));
        // Forget finished connections so the set does not grow over a long test.
        while connections.try_join_next().is_some() {}
    }
}

async fn serve_connection(stream: TcpStream, tls: Option<TlsAcceptor>, paths: Paths) {
    match tls {
        // A failed handshake (e.g. a client that refuses the certificate) just
        // ends the connection.
        Some(acceptor) => {
            if let Ok(stream) = acceptor.accept(stream).await {
                serve_http1(stream, paths).await;
            }
        }
        None => serve_http1(stream, paths).await,
    }
}

async fn serve_http1(stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static, paths: Paths) {
    let service = service_fn(move |request: Request<Incoming>| {
        let paths = paths.clone();
        async move { Ok::<_, Infallible>(respond(&paths, request).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Records the request, then answers it as configured.
async fn respond(paths: &Paths, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_string();
    let (route, required, pace) = {
        let mut paths = lock(paths);
        let state = paths.entry(path.clone()).or_default();
        state.hits += 1;
        state.last_headers = Some(request.headers().clone());
        (state.route.clone(), state.required.clone(), state.pace)
    };
    tokio::time::sleep(pace.before_headers).await;
    let method = request.method();
    if method != Method::GET && method != Method::HEAD {
        return status_response(StatusCode::METHOD_NOT_ALLOWED);
    }
    let authorized = required
        .iter()
        .all(|(name, value)| request.headers().get(name) == Some(value));
    if !authorized {
        let mut response = status_response(StatusCode::UNAUTHORIZED);
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"test\""),
        );
        return response;
    }
    match route {
        None => status_response(StatusCode::NOT_FOUND),
        Some(Route::Fail(status)) => status_response(status),
        Some(Route::Redirect(to)) => {
            let mut response = status_response(StatusCode::FOUND);
            let location = HeaderValue::try_from(to).expect("a valid redirect URL");
            response.headers_mut().insert(header::LOCATION, location);
            response
        }
        Some(Route::File(file)) => file_response(&path, &file, request.headers(), pace),
    }
}

fn status_response(status: StatusCode) -> Response<Body> {
    let text = format!("{status}\n");
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(text))
        .expect("a valid response")
}

fn file_response(path: &str, file: &File, request: &HeaderMap, pace: Pace) -> Response<Body> {
    let mut response = Response::builder()
        .header(header::ETAG, &file.etag)
        .header(header::CONTENT_TYPE, guess_content_type(path));
    for (name, value) in &file.headers {
        let headers = response.headers_mut().expect("builder without errors");
        let name = HeaderName::try_from(name.as_str()).expect("a valid header name");
        headers.insert(
            name,
            HeaderValue::try_from(value).expect("a valid header value"),
        );
    }
    if etag_matches(request, &file.etag) {
        return response
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .expect("a valid response");
    }
    response
        .status(StatusCode::OK)
        // Set explicitly: a paced body is a stream of unknown length to hyper.
        .header(header::CONTENT_LENGTH, file.bytes.len())
        .body(paced_body(file.bytes.clone(), pace))
        .expect("a valid response")
}

/// `If-None-Match: "a", W/"b"` or `*` naming the file's current ETag.
fn etag_matches(request: &HeaderMap, etag: &str) -> bool {
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == "*" || tag == etag)
}

/// The body, delayed and/or trickled as configured.
fn paced_body(bytes: Bytes, pace: Pace) -> Body {
    if pace.before_body.is_zero() && pace.trickle.is_none() {
        return Body::from(bytes);
    }
    let (chunk, interval) = pace.trickle.unwrap_or((bytes.len().max(1), Duration::ZERO));
    let pieces: Vec<Bytes> = (0..bytes.len())
        .step_by(chunk)
        .map(|start| bytes.slice(start..(start + chunk).min(bytes.len())))
        .collect();
    let stream = futures::stream::unfold(
        (pieces.into_iter(), 0usize),
        move |(mut rest, n)| async move {
            let piece = rest.next()?;
            let pause = if n == 0 { pace.before_body } else { interval };
            tokio::time::sleep(pause).await;
            Some((Ok::<_, Infallible>(piece), (rest, n + 1)))
        },
    );
    Body::from_stream(stream)
}

/// The content type a static file server would send for `path`.
fn guess_content_type(path: &str) -> &'static str {
    let types = [
        (".tar.gz", "application/gzip"),
        (".tgz", "application/gzip"),
        (".gz", "application/gzip"),
        (".tar", "application/x-tar"),
        (".zip", "application/zip"),
        (".json", "application/json"),
        (".yaml", "application/yaml"),
        (".yml", "application/yaml"),
        (".txt", "text/plain"),
    ];
    types
        .iter()
        .find(|(suffix, _)| path.ends_with(suffix))
        .map_or("application/octet-stream", |(_, t)| t)
}

mod smoke {
    use super::*;

    fn client() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().build().unwrap()
    }

    fn lenient_client() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap()
    }

    register_test!(http_serves_a_file_and_counts_hits);
    async fn http_serves_a_file_and_counts_hits() {
        let server = FileServer::start_http().await;
        server.put("pack.tar.gz", b"archive bytes".to_vec());
        assert!(server.url("/pack.tar.gz").starts_with("http://127.0.0.1:"));
        let response = client()
            .get(server.url("pack.tar.gz"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/gzip");
        assert_eq!(response.headers()["content-length"], "13");
        assert!(response.headers().contains_key("etag"));
        assert_eq!(response.bytes().await.unwrap(), "archive bytes");
        assert_eq!(server.hits("pack.tar.gz"), 1);
        assert_eq!(server.hits("/pack.tar.gz"), 1);

        let missing = client().get(server.url("nope")).send().await.unwrap();
        assert_eq!(missing.status(), 404);
        assert_eq!(server.hits("nope"), 1);
    }

    register_test!(https_needs_an_accepting_or_trusting_client);
    async fn https_needs_an_accepting_or_trusting_client() {
        let server = FileServer::start_https().await;
        server.put("index.json", "{}");
        let url = server.url("index.json");
        assert!(url.starts_with("https://127.0.0.1:"));

        let refused = client().get(&url).send().await;
        assert!(refused.is_err(), "{refused:?}");

        let response = lenient_client().get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "{}");

        // A client that trusts the test certificate verifies it.
        let cert = reqwest::Certificate::from_pem(server.cert().unwrap().pem.as_bytes()).unwrap();
        let trusting = reqwest::Client::builder()
            .no_proxy()
            .tls_certs_only([cert])
            .build()
            .unwrap();
        let response = trusting.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }

    register_test!(etag_gives_not_modified);
    async fn etag_gives_not_modified() {
        let server = FileServer::start_http().await;
        server.put("a.zip", vec![1, 2, 3]);
        let first = client().get(server.url("a.zip")).send().await.unwrap();
        let etag = first.headers()["etag"].clone();
        let again = client()
            .get(server.url("a.zip"))
            .header("if-none-match", etag.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304);
        assert_eq!(again.headers()["etag"], etag);
        // New content, new ETag: a full answer again.
        server.put("a.zip", vec![4, 5, 6]);
        let changed = client()
            .get(server.url("a.zip"))
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(changed.status(), 200);
        assert_eq!(server.hits("a.zip"), 3);
    }

    register_test!(redirect_fail_and_auth);
    async fn redirect_fail_and_auth() {
        let server = FileServer::start_http().await;
        let other = FileServer::start_http().await;
        other.put("new", "moved here");
        server.redirect("old", &other.url("new"));
        let followed = client().get(server.url("old")).send().await.unwrap();
        assert_eq!(followed.text().await.unwrap(), "moved here");
        let manual = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let response = manual.get(server.url("old")).send().await.unwrap();
        assert_eq!(response.status(), 302);
        assert_eq!(response.headers()["location"], other.url("new").as_str());

        server.fail("broken", 500);
        let broken = client().get(server.url("broken")).send().await.unwrap();
        assert_eq!(broken.status(), 500);

        server.put_with_headers(
            "private",
            "secret",
            vec![("content-type".into(), "text/x-test".into())],
        );
        server.require_bearer("private", "tok");
        let denied = client().get(server.url("private")).send().await.unwrap();
        assert_eq!(denied.status(), 401);
        let allowed = client()
            .get(server.url("private"))
            .bearer_auth("tok")
            .send()
            .await
            .unwrap();
        assert_eq!(allowed.status(), 200);
        assert_eq!(allowed.headers()["content-type"], "text/x-test");
        let seen = server.last_request_headers("private").unwrap();
        assert_eq!(seen["authorization"], "Bearer tok");

        server.require_basic_auth("basic", "u", "p");
        server.put("basic", "x");
        let ok = client()
            .get(server.url("basic"))
            .basic_auth("u", Some("p"))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
    }

    register_test!(slow_bodies_arrive_late_and_drop_ends_stalls);
    async fn slow_bodies_arrive_late_and_drop_ends_stalls() {
        let server = FileServer::start_http().await;
        server.put("slow", vec![7u8; 10]);
        server.set_trickle("slow", 4, Duration::from_millis(100));
        let start = std::time::Instant::now();
        let body = client()
            .get(server.url("slow"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(body.len(), 10);
        assert!(start.elapsed() >= Duration::from_millis(200));

        server.put("stalled", "never");
        server.set_delay("stalled", Duration::from_secs(3600));
        let response = client().get(server.url("stalled")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let body = tokio::time::timeout(Duration::from_millis(300), response.bytes()).await;
        assert!(body.is_err(), "the body must stall");

        let response = client().get(server.url("stalled")).send().await.unwrap();
        drop(server);
        let body = tokio::time::timeout(Duration::from_secs(10), response.bytes()).await;
        assert!(
            matches!(body, Ok(Err(_))),
            "dropping the server ends the stall: {body:?}"
        );
    }
}
