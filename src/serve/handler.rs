//! One HTTP request: health, limits, a worker's guest, the response.
//!
//! The response head waits until the guest has written [`COMMIT`] bytes
//! or ended, so a small response gets the status its guest earned (500
//! for a non-zero HALT or a fault); a larger one streams as the guest
//! writes it, and a failure after that point ends the body abnormally
//! (the client sees a truncated chunked body, never a clean one).

use super::guest::{parse_head, Guest, GuestError, Head};
use super::State;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant as Deadline;

/// Response bytes held back before the head is sent.
const COMMIT: usize = 64 << 10;
/// Bytes per read of the guest's response.
const CHUNK: usize = 256 << 10;

/// A response body: whole, or streamed from the guest.
pub enum RespBody {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Result<Bytes, std::io::Error>>),
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            RespBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RespBody::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, RespBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RespBody::Stream(_) => SizeHint::default(),
        }
    }
}

/// How feeding the request body to the guest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fed {
    All,
    TooLarge,
    ClientGone,
    GuestGone,
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

fn plain(status: StatusCode, text: &'static str) -> Response<RespBody> {
    let mut r = Response::new(RespBody::Full(Some(Bytes::from_static(text.as_bytes()))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// Answers one request (never fails: every problem is a status).
pub async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, std::convert::Infallible> {
    let done = Done {
        method: req.method().clone(),
        path: req.uri().path().to_string(),
        start: Instant::now(),
    };
    if req.uri().path() == "/_/health" {
        return Ok(match state.pool_alive() {
            true => plain(StatusCode::OK, "OK\n"),
            false => plain(StatusCode::SERVICE_UNAVAILABLE, "no workers\n"),
        });
    }
    let (status, why, resp) = answer(&state, req, &done).await;
    if let Some(status) = status {
        let bytes = resp.body().size_hint().exact().unwrap_or(0);
        done.finish(&state, status.as_u16(), bytes, why);
    }
    Ok(resp)
}

/// The response, and its status and reason when it is complete here (a
/// streamed one is logged by its streaming task).
async fn answer(
    state: &Arc<State>,
    req: Request<Incoming>,
    done: &Done,
) -> (Option<StatusCode>, &'static str, Response<RespBody>) {
    let deadline = Deadline::now() + state.cfg.timeout;
    let (parts, body) = req.into_parts();
    let len = body.size_hint().exact();
    if len.is_some_and(|n| n > state.cfg.max_body) {
        let mut r = plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return (Some(r.status()), "(over --max-body)", r);
    }
    let Some(slot) = take_slot(state, deadline).await else {
        let r = plain(StatusCode::SERVICE_UNAVAILABLE, "all workers busy\n");
        return (Some(r.status()), "(queue full)", r);
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
    let feeder = AbortOnDrop(tokio::spawn(feed(body, stdin, state.cfg.max_body, fed_tx)));
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
                    Fed::TooLarge => {
                        let mut r = plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
                        r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
                        return (Some(r.status()), "(over --max-body; guest stopped)", r);
                    }
                    Fed::ClientGone => {
                        let r = plain(StatusCode::BAD_REQUEST, "request body cut short\n");
                        return (Some(r.status()), "(client went away; guest stopped)", r);
                    }
                    Fed::All | Fed::GuestGone => {}
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
            let mut r = Response::new(RespBody::Full(Some(Bytes::from(buf))));
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

/// Waits (bounded queue, until the deadline) for a free worker.
async fn take_slot(state: &Arc<State>, deadline: Deadline) -> Option<Slot> {
    let permit = match state.slots.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            if state.metrics.queued.fetch_add(1, Relaxed) >= state.cfg.queue as u64 {
                state.metrics.queued.fetch_sub(1, Relaxed);
                return None;
            }
            let p = tokio::time::timeout_at(deadline, state.slots.clone().acquire_owned()).await;
            state.metrics.queued.fetch_sub(1, Relaxed);
            p.ok()?.ok()?
        }
    };
    state.metrics.busy.fetch_add(1, Relaxed);
    Some(Slot {
        state: state.clone(),
        _permit: permit,
    })
}

/// Copies the request body into the guest's stdin, then closes it.
async fn feed(
    mut body: Incoming,
    mut stdin: tokio::net::unix::pipe::Sender,
    max: u64,
    done: oneshot::Sender<Fed>,
) {
    use http_body_util::BodyExt;
    let mut total = 0u64;
    let outcome = loop {
        match body.frame().await {
            None => break Fed::All,
            Some(Err(_)) => break Fed::ClientGone,
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                total += data.len() as u64;
                if total > max {
                    break Fed::TooLarge;
                }
                if stdin.write_all(&data).await.is_err() {
                    break Fed::GuestGone;
                }
            }
        }
    };
    drop(stdin);
    let _ = done.send(outcome);
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
    let mut r = Response::new(RespBody::Stream(rx));
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
