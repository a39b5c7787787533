//! Prometheus metrics in the text exposition format, served on their own
//! address (`--metrics ADDR`): requests by status, a latency histogram,
//! guests restored (or booted), workers busy and idle, queue depth, open
//! connections and those the front refused or closed itself. The
//! format is a few lines of text, so it is written here rather than
//! pulled in with a metrics crate.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default)]
pub struct Metrics {
    by_status: Mutex<BTreeMap<u16, u64>>,
    buckets: [AtomicU64; BUCKETS.len()],
    latency_sum_us: AtomicU64,
    latency_count: AtomicU64,
    /// Guests handed a request: each was restored (or booted) for it alone.
    pub guests: AtomicU64,
    pub busy: AtomicU64,
    pub queued: AtomicU64,
    workers: u64,
    /// Connections refused at accept: over --max-connections, over the
    /// per-peer cap.
    refused_full: AtomicU64,
    refused_peer: AtomicU64,
    /// Connections the front closed: evicted for room, idle keep-alive,
    /// request head too slow, response not taken.
    closed: [AtomicU64; 4],
}

impl Metrics {
    pub fn new(workers: usize) -> Self {
        Self {
            workers: workers as u64,
            ..Self::default()
        }
    }

    /// Counts one answered request.
    pub fn request(&self, status: u16, micros: u64) {
        if let Ok(mut m) = self.by_status.lock() {
            *m.entry(status).or_default() += 1;
        }
        let secs = micros as f64 / 1e6;
        for (b, &le) in self.buckets.iter().zip(BUCKETS.iter()) {
            if secs <= le {
                b.fetch_add(1, Relaxed);
            }
        }
        self.latency_sum_us.fetch_add(micros, Relaxed);
        self.latency_count.fetch_add(1, Relaxed);
    }

    pub fn refused(&self, why: super::conns::Refused) {
        match why {
            super::conns::Refused::Full => &self.refused_full,
            super::conns::Refused::Peer => &self.refused_peer,
        }
        .fetch_add(1, Relaxed);
    }

    pub fn closed(&self, why: super::conns::Closed, n: u64) {
        use super::conns::Closed;
        let i = match why {
            Closed::No => return,
            Closed::Evicted => 0,
            Closed::Idle => 1,
            Closed::HeadTimeout => 2,
            Closed::SendTimeout => 3,
        };
        self.closed[i].fetch_add(n, Relaxed);
    }

    /// The exposition text (`open`: connections open now).
    pub fn render(&self, open: usize) -> String {
        let mut s = String::new();
        s.push_str("# HELP skiff_serve_requests_total HTTP requests answered, by status.\n");
        s.push_str("# TYPE skiff_serve_requests_total counter\n");
        if let Ok(m) = self.by_status.lock() {
            for (code, n) in m.iter() {
                let _ = writeln!(s, "skiff_serve_requests_total{{code=\"{code}\"}} {n}");
            }
        }
        s.push_str("# HELP skiff_serve_request_duration_seconds Time from request head to the end of the response.\n");
        s.push_str("# TYPE skiff_serve_request_duration_seconds histogram\n");
        for (b, le) in self.buckets.iter().zip(BUCKETS.iter()) {
            let _ = writeln!(
                s,
                "skiff_serve_request_duration_seconds_bucket{{le=\"{le}\"}} {}",
                b.load(Relaxed)
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(
            s,
            "skiff_serve_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            s,
            "skiff_serve_request_duration_seconds_sum {}",
            self.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(s, "skiff_serve_request_duration_seconds_count {count}");
        let busy = self.busy.load(Relaxed);
        for (name, help, kind, v) in [
            (
                "skiff_serve_guests_total",
                "Guests restored from the snapshot (or booted) and handed a request, one per request.",
                "counter",
                self.guests.load(Relaxed),
            ),
            ("skiff_serve_workers_busy", "Workers running a request's guest.", "gauge", busy),
            (
                "skiff_serve_workers_idle",
                "Workers free for a request.",
                "gauge",
                self.workers.saturating_sub(busy),
            ),
            (
                "skiff_serve_queue_depth",
                "Requests waiting for a worker.",
                "gauge",
                self.queued.load(Relaxed),
            ),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
        let _ = writeln!(
            s,
            "# HELP skiff_serve_connections_open HTTP connections open.\n\
             # TYPE skiff_serve_connections_open gauge\nskiff_serve_connections_open {open}"
        );
        s.push_str("# HELP skiff_serve_connections_refused_total Connections answered 503 at accept, by the cap reached.\n");
        s.push_str("# TYPE skiff_serve_connections_refused_total counter\n");
        for (cap, n) in [("total", &self.refused_full), ("peer", &self.refused_peer)] {
            let _ = writeln!(
                s,
                "skiff_serve_connections_refused_total{{cap=\"{cap}\"}} {}",
                n.load(Relaxed)
            );
        }
        s.push_str("# HELP skiff_serve_connections_closed_total Connections the server closed: evicted for a newer one, idle keep-alive, request head too slow (408), response not read (send timeout).\n");
        s.push_str("# TYPE skiff_serve_connections_closed_total counter\n");
        for (why, n) in ["evicted", "idle", "header_timeout", "send_timeout"]
            .iter()
            .zip(&self.closed)
        {
            let _ = writeln!(
                s,
                "skiff_serve_connections_closed_total{{reason=\"{why}\"}} {}",
                n.load(Relaxed)
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_buckets_and_gauges() {
        let m = Metrics::new(4);
        m.request(200, 700);
        m.request(200, 3000);
        m.request(504, 2_000_000);
        m.busy.store(1, Relaxed);
        m.refused(crate::serve::conns::Refused::Peer);
        m.closed(crate::serve::conns::Closed::Idle, 2);
        let t = m.render(5);
        assert!(
            t.contains("skiff_serve_requests_total{code=\"200\"} 2\n"),
            "{t}"
        );
        assert!(
            t.contains("skiff_serve_requests_total{code=\"504\"} 1\n"),
            "{t}"
        );
        assert!(t.contains("_bucket{le=\"0.001\"} 1\n"), "{t}");
        assert!(t.contains("_bucket{le=\"0.005\"} 2\n"), "{t}");
        assert!(t.contains("_bucket{le=\"+Inf\"} 3\n"), "{t}");
        assert!(t.contains("skiff_serve_workers_idle 3\n"), "{t}");
        assert!(t.contains("skiff_serve_connections_open 5\n"), "{t}");
        assert!(
            t.contains("skiff_serve_connections_refused_total{cap=\"peer\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("skiff_serve_connections_closed_total{reason=\"idle\"} 2\n"),
            "{t}"
        );
    }
}
