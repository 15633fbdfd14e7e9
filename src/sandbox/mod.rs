//! Stateful HTTP fakes of the two APIs the sync talks to, for `--demo`, tests and the benchmark.
//!
//! Each fake serves real HTTP on `127.0.0.1:0`, keeps its data behind a mutex, and exposes sync
//! control methods so a test can seed data, inject faults and read statistics between runs:
//! - [`nexudus`]: the source (`/api/sys/users`, Basic auth, 409 throttling, hard deletes);
//! - [`nevis`]: the target (nevisIDM Core REST API v1 users, bearer auth, 422 business errors).
//!
//! This file holds what both share: the [`Fault`] type, the fault/latency/outage controls (with
//! the selective delay, [`RequestLine`]) and the server plumbing (bind, spawn, abort on drop, cut
//! a response off mid-body).

pub mod directory_forms;
pub mod nevis;
pub mod nexudus;

pub use directory_forms::StoredForms;
pub use nevis::{FakeNevis, FakeOAuth, LoggedRequest, NevisFakeConfig, NevisStats};
pub use nexudus::{
    DateForm, FakeNexudus, NexudusFakeConfig, NexudusStats, NexudusUserSpec, RequestRecord,
    Throttle, sample_users,
};

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::StreamExt;
use tokio::task::JoinHandle;

/// Both fakes with their default settings (credentials of `NexudusFakeConfig::default()` and
/// `NevisFakeConfig::default()`), as the demo, the tests and the benchmark use them.
pub async fn start_both() -> std::io::Result<(FakeNexudus, FakeNevis)> {
    let nexudus = FakeNexudus::start(NexudusFakeConfig::default()).await?;
    let nevis = FakeNevis::start(NevisFakeConfig::default()).await?;
    Ok((nexudus, nevis))
}

/// A fault injected into the next request(s) a fake receives (after auth is checked, before handling).
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Answer with this status; Retry-After header (seconds) when given; body as that API shapes errors
    /// (Nexudus 409 throttle = empty body; Nexudus 500 = {"Message":"An error has occurred."};
    /// nevis = {"errors":[{"code":"errors.…","message":"…"}]}).
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Send 200 headers, then abort the connection mid-body; the request is NOT applied.
    Drop,
    /// Apply the request (the write happens), then abort mid-body: the answer is lost.
    DropAfterApply,
    /// Slow loris: send 200 headers and one byte of body, then nothing for this long (longer
    /// than the client's request timeout), then end. The request is NOT applied.
    Stall(Duration),
}

/// The knobs both fakes share: queued faults, added latency, a selective delay and a simulated
/// outage.
#[derive(Debug, Default)]
struct Controls {
    faults: VecDeque<Fault>,
    latency: Duration,
    slow: Option<Slow>,
    /// Requests the selective delay picked so far (counted on arrival).
    slowed: usize,
    /// Requests answered late *after* they were applied (a write made, its answer held back):
    /// a test can kill the client between nevisIDM's write and the client's checkpoint.
    slow_answer: Option<Slow>,
    /// Requests `slow_answer` picked so far (counted once applied).
    answered_late: usize,
    down: Option<u16>,
}

impl Controls {
    fn push_faults(&mut self, n: usize, fault: Fault) {
        self.faults.extend(std::iter::repeat_n(fault, n));
    }

    /// How long to hold `request` back before answering it: the latency of every request, plus
    /// the selective delay when it picks this one.
    fn delay(&mut self, request: &RequestLine<'_>) -> Duration {
        match &self.slow {
            Some(slow) if (slow.picks)(request) => {
                self.slowed += 1;
                self.latency + slow.delay
            }
            _ => self.latency,
        }
    }

    fn set_slow(&mut self, slow: Option<Slow>) {
        self.slow = slow;
        self.slowed = 0;
    }

    /// How long to hold back the answer to `request` once it was applied.
    fn answer_delay(&mut self, request: &RequestLine<'_>) -> Duration {
        match &self.slow_answer {
            Some(slow) if (slow.picks)(request) => {
                self.answered_late += 1;
                slow.delay
            }
            _ => Duration::ZERO,
        }
    }

    fn set_slow_answer(&mut self, slow: Option<Slow>) {
        self.slow_answer = slow;
        self.answered_late = 0;
    }
}

/// A request as the selective delay (`set_slow` on either fake) sees it.
#[derive(Debug, Clone, Copy)]
pub struct RequestLine<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The query string, without the `?` (empty when there is none).
    pub query: &'a str,
}

/// Which requests to answer late, and how late: one phase of a run made slow (the deletion
/// probe, a look-up, nevisIDM's listing, a PATCH) so that a test can stop the run in it.
struct Slow {
    delay: Duration,
    picks: Arc<dyn Fn(&RequestLine<'_>) -> bool + Send + Sync>,
}

impl Slow {
    fn new(
        delay: Duration,
        picks: impl Fn(&RequestLine<'_>) -> bool + Send + Sync + 'static,
    ) -> Slow {
        Slow {
            delay,
            picks: Arc::new(picks),
        }
    }
}

impl std::fmt::Debug for Slow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slow")
            .field("delay", &self.delay)
            .finish_non_exhaustive()
    }
}

/// A running axum server; the serving task is aborted when this is dropped.
#[derive(Debug)]
struct Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(router: Router) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, router).await {
                tracing::warn!(%err, "sandbox server stopped");
            }
        });
        Ok(Self { addr, task })
    }

    fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Keeps the status and headers of `response` but replaces its body with a stream that yields the
/// first half of the body and then fails, so hyper resets the connection mid-body and the client
/// sees an error while reading the body.
async fn cut_off(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let half = bytes.slice(..bytes.len() / 2);
    let first = if half.is_empty() {
        Bytes::from_static(b"{")
    } else {
        half
    };
    // The pause between the chunk and the error lets hyper flush the headers and the chunk first:
    // the client must get the status line and then lose the body, not lose the whole response.
    let stream = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(first) }).chain(
        futures::stream::once(async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "sandbox fault: connection dropped mid-body",
            ))
        }),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from_stream(stream))
}

/// 200 headers, one byte of body, then silence for `pause` before the body ends (unfinished).
fn stalled(pause: Duration) -> Response {
    let stream =
        futures::stream::once(async { Ok::<Bytes, std::io::Error>(Bytes::from_static(b"{")) })
            .chain(futures::stream::once(async move {
                tokio::time::sleep(pause).await;
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "sandbox fault: stalled body",
                ))
            }));
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// A response with a JSON body; `retry_after` adds a `Retry-After` header in seconds.
fn json_response(status: u16, body: &serde_json::Value, retry_after: Option<u64>) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status_code(status);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    set_retry_after(&mut response, retry_after);
    response
}

/// A response with no body.
fn empty_response(status: u16, retry_after: Option<u64>) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status_code(status);
    set_retry_after(&mut response, retry_after);
    response
}

fn set_retry_after(response: &mut Response, retry_after: Option<u64>) {
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
}

/// Out-of-range codes become 500 rather than a panic: the status comes from test code.
fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A deterministic UUID-looking string (version 4 layout) derived from `id`.
fn fake_uuid(id: u64) -> String {
    let a = splitmix64(id);
    let b = splitmix64(a ^ id);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:x}{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        8 | (b >> 62),
        (b >> 48) & 0xfff,
        b & 0xffff_ffff_ffff,
    )
}

fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
