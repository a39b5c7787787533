//! One HTTP request: health, limits, a worker's guest, the response.
//!
//! The response head waits until the guest has written [`COMMIT`] bytes
//! or ended, so a small response gets the status its guest earned (500
//! for a non-zero HALT or a fault); a larger one streams as the guest
//! writes it, and a failure after that point ends the body abnormally
//! (the client sees a truncated chunked body, never a clean one).

use super::body::{plain, RespBody};
use super::conns::Conn;
use super::guest::{parse_head, Guest, GuestError, Head};
use super::State;
use bytes::Bytes;
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant as Deadline;

/// Response bytes held back before the head is sent.
const COMMIT: usize = 64 << 10;
/// Bytes per read of the guest's response.
const CHUNK: usize = 256 << 10;

/// How reading the request body (and feeding it to the guest) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fed {
    All,
    TooLarge,
    /// Not all in within --body-timeout.
    TooSlow,
    ClientGone,
    GuestGone,
}

/// The request body as read before it takes a worker: all of it (`rest`
/// is `None`), or its first `--body-buffer` bytes and the rest to stream.
struct Buffered {
    first: Vec<u8>,
    rest: Option<Incoming>,
}

/// Reads the body until its end or `buffer` bytes, before `deadline`.
async fn buffer(
    mut body: Incoming,
    buffer: usize,
    max: u64,
    deadline: Deadline,
) -> Result<Buffered, Fed> {
    use http_body_util::BodyExt;
    let mut first = Vec::new();
    while first.len() < buffer {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(Fed::TooSlow),
            Ok(None) => return Ok(Buffered { first, rest: None }),
            Ok(Some(Err(_))) => return Err(Fed::ClientGone),
            Ok(Some(Ok(f))) => f,
        };
        if let Ok(data) = frame.into_data() {
            if (first.len() + data.len()) as u64 > max {
                return Err(Fed::TooLarge);
            }
            first.extend_from_slice(&data);
        }
    }
    // Exactly at the end: no need to keep the body.
    let rest = (!body.is_end_stream()).then_some(body);
    Ok(Buffered { first, rest })
}

/// The answer to a body that could not be read (`guest`: a guest had
/// started, and is stopped): status, log reason, response (which closes
/// the connection: the rest of the body is not read).
fn body_failed(f: Fed, guest: bool) -> (Option<StatusCode>, &'static str, Response<RespBody>) {
    let (code, text, why) = match f {
        Fed::TooLarge => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large\n",
            ["(over --max-body)", "(over --max-body; guest stopped)"],
        ),
        Fed::TooSlow => (
            StatusCode::REQUEST_TIMEOUT,
            "request body too slow\n",
            [
                "(body not in within --body-timeout)",
                "(body not in within --body-timeout; guest stopped)",
            ],
        ),
        _ => (
            StatusCode::BAD_REQUEST,
            "request body cut short\n",
            ["(client went away)", "(client went away; guest stopped)"],
        ),
    };
    let mut r = plain(code, text);
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    (Some(code), why[guest as usize], r)
}

/// Aborts a task when dropped: the body feeder never outlives its request.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Holds a worker slot; gives it back (and the busy gauge) when dropped.
struct Slot {
    state: Arc<State>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.state.metrics.busy.fetch_sub(1, Relaxed);
    }
}

/// What the log line and metrics need.
struct Done {
    method: hyper::Method,
    path: String,
    start: Instant,
}

impl Done {
    fn finish(&self, state: &State, status: u16, bytes: u64, why: &str) {
        let us = self.start.elapsed().as_micros() as u64;
        state.metrics.request(status, us);
        let sep = if why.is_empty() { "" } else { " " };
        crate::diag::line(
            &state.prog,
            &format_args!(
                "{} {} {status} {bytes} B {us} us{sep}{why}",
                self.method, self.path
            ),
        );
    }
}

/// Answers one request (never fails: every problem is a status).
pub async fn handle(
    state: Arc<State>,
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, std::convert::Infallible> {
    let busy = conn.busy();
    let mut resp = respond(state, conn.peer, req).await;
    resp.body_mut().busy = Some(busy);
    Ok(resp)
}

async fn respond(
    state: Arc<State>,
    peer: std::net::IpAddr,
    req: Request<Incoming>,
) -> Response<RespBody> {
    let done = Done {
        method: req.method().clone(),
        path: req.uri().path().to_string(),
        start: Instant::now(),
    };
    if req.uri().path() == "/_/health" {
        return match state.pool_alive() {
            true => plain(StatusCode::OK, "OK\n"),
            false => plain(StatusCode::SERVICE_UNAVAILABLE, "no workers\n"),
        };
    }
    let (status, why, resp) = answer(&state, peer, req, &done).await;
    if let Some(status) = status {
        let bytes = resp.body().size_hint().exact().unwrap_or(0);
        done.finish(&state, status.as_u16(), bytes, why);
    }
    resp
}

/// The response, and its status and reason when it is complete here (a
/// streamed one is logged by its streaming task).
async fn answer(
    state: &Arc<State>,
    peer: std::net::IpAddr,
    req: Request<Incoming>,
    done: &Done,
) -> (Option<StatusCode>, &'static str, Response<RespBody>) {
    let cfg = &state.cfg;
    let (parts, body) = req.into_parts();
    let len = body.size_hint().exact();
    if len.is_some_and(|n| n > cfg.max_body) {
        return body_failed(Fed::TooLarge, false);
    }
    // The body (up to --body-buffer) is in before the request waits for a
    // worker: a slow client holds a connection, never a guest.
    let body_deadline = Deadline::now() + cfg.body_timeout;
    let body = match buffer(body, cfg.body_buffer, cfg.max_body, body_deadline).await {
        Ok(b) => b,
        Err(f) => return body_failed(f, false),
    };
    let deadline = Deadline::now() + cfg.timeout;
    let slot = match take_slot(state, peer, deadline).await {
        Ok(s) => s,
        Err(why) => {
            let mut r = plain(StatusCode::SERVICE_UNAVAILABLE, "all workers busy\n");
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            return (Some(r.status()), why, r);
        }
    };
    let vars = super::vars::http_vars(&parts, len);
    let (mut guest, stdin) = match Guest::dispatch(&state.pool, &vars, state.cfg.warm) {
        Ok(g) => g,
        Err(GuestError::Proto(crate::pool::proto::ProtoError::TooLarge(_))) => {
            let r = plain(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request headers too large\n",
            );
            return (Some(r.status()), "(Http_* variables over 64 KiB)", r);
        }
        Err(e) => {
            crate::diag::line(&state.prog, &format_args!("{e}"));
            let r = plain(StatusCode::SERVICE_UNAVAILABLE, "no worker\n");
            return (Some(r.status()), "(no worker)", r);
        }
    };
    state.metrics.guests.fetch_add(1, Relaxed);
    let (fed_tx, mut fed) = oneshot::channel();
    let feeder = AbortOnDrop(tokio::spawn(feed(
        body,
        stdin,
        state.cfg.max_body,
        body_deadline,
        fed_tx,
    )));
    let ctype = parts.headers.get(CONTENT_TYPE).cloned();

    // The head frame, then up to COMMIT bytes or the end.
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
    let mut head: Option<Head> = None;
    let mut fed_done = false;
    let eof = loop {
        if head.is_some() && buf.len() >= COMMIT {
            break false;
        }
        buf.reserve(CHUNK);
        tokio::select! {
            r = guest.stdout.read_buf(&mut buf) => match r {
                Ok(0) => break true,
                Ok(_) => {}
                Err(_) => break true,
            },
            f = &mut fed, if !fed_done => {
                fed_done = true;
                match f.unwrap_or(Fed::ClientGone) {
                    Fed::All | Fed::GuestGone => {}
                    f => return body_failed(f, true),
                }
            },
            _ = tokio::time::sleep_until(deadline) => return timed_out(),
        }
        if head.is_none() {
            match parse_head(&buf) {
                Ok(Some((h, n))) => {
                    buf.drain(..n);
                    head = Some(h);
                }
                Ok(None) => {}
                Err(e) => return failed(state, &e.to_string()),
            }
        }
    };
    if !eof {
        let head = head.unwrap_or(Head {
            status: 0,
            content_type: Vec::new(),
        });
        let guest = Running {
            guest,
            slot,
            feeder,
        };
        let resp = streamed(state, guest, buf, &head, ctype, deadline, done);
        return (None, "", resp);
    }
    if head.is_none() && !buf.is_empty() {
        return failed(state, &GuestError::Head.to_string());
    }
    let status = tokio::select! {
        s = guest.status() => s,
        _ = tokio::time::sleep_until(deadline) => return timed_out(),
    };
    drop(slot);
    match status {
        Ok(0) => {
            let head = head.unwrap_or(Head {
                status: 0,
                content_type: Vec::new(),
            });
            let mut r = Response::new(RespBody::full(Bytes::from(buf)));
            set_head(&mut r, &head, ctype);
            (Some(r.status()), "", r)
        }
        Ok(n) => {
            crate::diag::line(
                &state.prog,
                &format_args!("the function ended with status {n}"),
            );
            let r = plain(StatusCode::INTERNAL_SERVER_ERROR, "function failed\n");
            (Some(r.status()), "(non-zero exit)", r)
        }
        Err(e) => failed(state, &e.to_string()),
    }
}

fn timed_out() -> (Option<StatusCode>, &'static str, Response<RespBody>) {
    let r = plain(StatusCode::GATEWAY_TIMEOUT, "function timed out\n");
    (Some(r.status()), "(--timeout; guest stopped)", r)
}

fn failed(state: &State, why: &str) -> (Option<StatusCode>, &'static str, Response<RespBody>) {
    crate::diag::line(&state.prog, &format_args!("{why}"));
    let r = plain(StatusCode::INTERNAL_SERVER_ERROR, "function failed\n");
    (Some(r.status()), "(worker failed)", r)
}

fn set_head(r: &mut Response<RespBody>, head: &Head, req_type: Option<HeaderValue>) {
    *r.status_mut() = StatusCode::from_u16(head.status).unwrap_or(StatusCode::OK);
    // The classic watchdog answers with the caller's content type unless
    // told otherwise; the function's own (RESP_HEAD) wins.
    let ctype = match head.content_type.is_empty() {
        true => req_type,
        false => HeaderValue::from_bytes(&head.content_type).ok(),
    };
    if let Some(t) = ctype {
        r.headers_mut().insert(CONTENT_TYPE, t);
    }
}

/// A place in the queue for a worker, given back when dropped.
struct Queued<'a> {
    state: &'a State,
    peer: std::net::IpAddr,
}

impl<'a> Queued<'a> {
    /// A place, if the queue and this peer's share of it have room.
    fn take(state: &'a State, peer: std::net::IpAddr) -> Result<Self, &'static str> {
        let mut by_peer = state.queued.lock().unwrap_or_else(|e| e.into_inner());
        if state.metrics.queued.load(Relaxed) >= state.cfg.queue as u64 {
            return Err("(queue full)");
        }
        let mine = by_peer.entry(peer).or_default();
        if *mine >= state.cfg.queue_per_peer {
            return Err("(this peer's share of the queue is full)");
        }
        *mine += 1;
        state.metrics.queued.fetch_add(1, Relaxed);
        Ok(Queued { state, peer })
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        let mut by_peer = self.state.queued.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                by_peer.remove(&self.peer);
            }
        }
        self.state.metrics.queued.fetch_sub(1, Relaxed);
    }
}

/// Waits (bounded queue, a bounded share of it per peer address, until
/// the deadline) for a free worker; `Err`: why not.
async fn take_slot(
    state: &Arc<State>,
    peer: std::net::IpAddr,
    deadline: Deadline,
) -> Result<Slot, &'static str> {
    let permit = match state.slots.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            let _place = Queued::take(state, peer)?;
            let p = tokio::time::timeout_at(deadline, state.slots.clone().acquire_owned()).await;
            match p {
                Ok(Ok(p)) => p,
                _ => return Err("(no worker free within --timeout)"),
            }
        }
    };
    state.metrics.busy.fetch_add(1, Relaxed);
    Ok(Slot {
        state: state.clone(),
        _permit: permit,
    })
}

/// Copies the request body (its buffered part, then the rest as it
/// comes, until `deadline`) into the guest's stdin, then closes it.
async fn feed(
    body: Buffered,
    mut stdin: tokio::net::unix::pipe::Sender,
    max: u64,
    deadline: Deadline,
    done: oneshot::Sender<Fed>,
) {
    let outcome = match stdin.write_all(&body.first).await {
        Err(_) => Fed::GuestGone,
        Ok(()) => match body.rest {
            None => Fed::All,
            Some(rest) => {
                stream_rest(rest, &mut stdin, body.first.len() as u64, max, deadline).await
            }
        },
    };
    drop(stdin);
    let _ = done.send(outcome);
}

/// The body past its buffered part, as it arrives, until `deadline`.
async fn stream_rest(
    mut body: Incoming,
    stdin: &mut tokio::net::unix::pipe::Sender,
    mut total: u64,
    max: u64,
    deadline: Deadline,
) -> Fed {
    use http_body_util::BodyExt;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Fed::TooSlow,
            Ok(None) => return Fed::All,
            Ok(Some(Err(_))) => return Fed::ClientGone,
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len() as u64;
        if total > max {
            return Fed::TooLarge;
        }
        if stdin.write_all(&data).await.is_err() {
            return Fed::GuestGone;
        }
    }
}

/// A guest whose response streams: it keeps its worker slot and its body
/// feeder (the request may still be arriving) until the response ends.
struct Running {
    guest: Guest,
    slot: Slot,
    feeder: AbortOnDrop,
}

/// Sends the head now and the rest of the guest's response as it comes.
fn streamed(
    state: &Arc<State>,
    running: Running,
    first: Vec<u8>,
    head: &Head,
    req_type: Option<HeaderValue>,
    deadline: Deadline,
    done: &Done,
) -> Response<RespBody> {
    let (tx, rx) = mpsc::channel(4);
    let mut r = Response::new(RespBody::stream(rx));
    set_head(&mut r, head, req_type);
    let code = r.status().as_u16();
    let state = state.clone();
    let done = Done {
        method: done.method.clone(),
        path: done.path.clone(),
        start: done.start,
    };
    tokio::spawn(async move {
        let Running {
            mut guest,
            slot: _slot,
            feeder: _feeder,
        } = running;
        let mut bytes = first.len() as u64;
        let mut why = "";
        let mut ok = tx.send(Ok(Bytes::from(first))).await.is_ok();
        while ok {
            let mut buf = Vec::with_capacity(CHUNK);
            let r = tokio::select! {
                r = guest.stdout.read_buf(&mut buf) => r,
                _ = tokio::time::sleep_until(deadline) => {
                    why = "(--timeout after the head; body cut, guest stopped)";
                    ok = false;
                    break;
                }
            };
            match r {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    bytes += n as u64;
                    ok = tx.send(Ok(Bytes::from(buf))).await.is_ok();
                    if !ok {
                        why = "(client went away; guest stopped)";
                    }
                }
            }
        }
        if ok {
            match tokio::time::timeout_at(deadline, guest.status()).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => {
                    crate::diag::line(
                        &state.prog,
                        &format_args!("the function ended with status {n}"),
                    );
                    why = "(non-zero exit after the head; body cut)";
                    ok = false;
                }
                Ok(Err(e)) => {
                    crate::diag::line(&state.prog, &format_args!("{e}"));
                    why = "(worker failed after the head; body cut)";
                    ok = false;
                }
                Err(_) => {
                    why = "(--timeout after the head; body cut, guest stopped)";
                    ok = false;
                }
            }
        }
        if !ok {
            let _ = tx.send(Err(std::io::Error::other(why))).await;
        }
        drop(guest);
        done.finish(&state, code, bytes, why);
    });
    r
}
