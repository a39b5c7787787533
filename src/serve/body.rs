//! The response body serve hands hyper: whole, or streamed from the
//! guest as it writes.

use super::conns::Busy;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// A response body: whole, or streamed from the guest. It keeps its
/// connection busy (not idle, so neither evicted nor timed out) until
/// hyper has sent its last byte and drops it.
pub struct RespBody {
    data: Data,
    pub(super) busy: Option<Busy>,
}

enum Data {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Result<Bytes, std::io::Error>>),
}

impl RespBody {
    pub fn full(b: Bytes) -> Self {
        RespBody {
            data: Data::Full(Some(b)),
            busy: None,
        }
    }

    pub(super) fn stream(rx: mpsc::Receiver<Result<Bytes, std::io::Error>>) -> Self {
        RespBody {
            data: Data::Stream(rx),
            busy: None,
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match &mut self.get_mut().data {
            Data::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Data::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.data, Data::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.data {
            Data::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Data::Stream(_) => SizeHint::default(),
        }
    }
}

/// A short text/plain answer.
pub(super) fn plain(status: StatusCode, text: &'static str) -> Response<RespBody> {
    let mut r = Response::new(RespBody::full(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}
