//! The request's metadata as the OpenFaaS classic watchdog passes it to a
//! function (`Http_*` variables; see docs/serve.md): every header as
//! `Http_<Canonical_Name>` (first value, Go's canonical capitalisation,
//! dashes to underscores), then `Http_Method`, `Http_ContentLength` and
//! `Http_Content_Length` (-1 when the length is unknown), `Http_Query` and
//! `Http_Path` when not empty, `Http_Transfer_Encoding` when present,
//! `Http_Host`.

use hyper::http::request::Parts;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

/// Go's `CanonicalMIMEHeaderKey`, then `-` to `_`: `content-type` becomes
/// `Content_Type`.
fn canonical(name: &str) -> String {
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            if c == '-' {
                '_'
            } else {
                out
            }
        })
        .collect()
}

fn var(name: String, value: &[u8]) -> (OsString, OsString) {
    (
        OsString::from(format!("Http_{name}")),
        OsString::from_vec(value.to_vec()),
    )
}

/// The variables for a request whose body length is `len` (None: chunked).
pub fn http_vars(req: &Parts, len: Option<u64>) -> Vec<(OsString, OsString)> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for name in req.headers.keys() {
        // Go keeps Host and Transfer-Encoding out of the header map; a
        // chunked request has no Content-Length header there either.
        if matches!(name.as_str(), "host" | "transfer-encoding")
            || (len.is_none() && name.as_str() == "content-length")
        {
            continue;
        }
        if seen.insert(name.as_str()) {
            if let Some(v) = req.headers.get(name) {
                out.push(var(canonical(name.as_str()), v.as_bytes()));
            }
        }
    }
    let length = len.map_or("-1".to_string(), |n| n.to_string());
    out.push(var("Method".into(), req.method.as_str().as_bytes()));
    out.push(var("ContentLength".into(), length.as_bytes()));
    out.push(var("Content_Length".into(), length.as_bytes()));
    if let Some(q) = req.uri.query().filter(|q| !q.is_empty()) {
        out.push(var("Query".into(), q.as_bytes()));
    }
    let path = req.uri.path();
    if !path.is_empty() {
        out.push(var("Path".into(), path.as_bytes()));
    }
    if let Some(te) = req.headers.get(hyper::header::TRANSFER_ENCODING) {
        out.push(var("Transfer_Encoding".into(), te.as_bytes()));
    }
    let host = req
        .headers
        .get(hyper::header::HOST)
        .map(|h| h.as_bytes())
        .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()));
    if let Some(h) = host {
        out.push(var("Host".into(), h));
    }
    // A later duplicate (a client's own `Content-Length` header) loses to
    // the watchdog's value, as Go's exec keeps the last one.
    let mut dedup: Vec<(OsString, OsString)> = Vec::with_capacity(out.len());
    for (k, v) in out.into_iter().rev() {
        if !dedup.iter().any(|(d, _)| *d == k) {
            dedup.push((k, v));
        }
    }
    dedup.reverse();
    dedup
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(vars: &[(OsString, OsString)], k: &str) -> Option<String> {
        vars.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.to_string_lossy().into_owned())
    }

    #[test]
    fn names_are_canonical_as_the_watchdog_makes_them() {
        assert_eq!(canonical("content-type"), "Content_Type");
        assert_eq!(canonical("X-REQUEST-id"), "X_Request_Id");
        assert_eq!(canonical("accept"), "Accept");
    }

    #[test]
    fn a_request_becomes_the_watchdogs_variables() {
        let req = hyper::Request::post("/fn/x?a=1&b=")
            .header("Host", "example:8080")
            .header("Content-Type", "text/plain")
            .header("Content-Length", "5")
            .header("x-custom", "one")
            .header("x-custom", "two")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let v = http_vars(&parts, Some(5));
        assert_eq!(get(&v, "Http_Method").as_deref(), Some("POST"));
        assert_eq!(get(&v, "Http_Path").as_deref(), Some("/fn/x"));
        assert_eq!(get(&v, "Http_Query").as_deref(), Some("a=1&b="));
        assert_eq!(get(&v, "Http_Content_Type").as_deref(), Some("text/plain"));
        assert_eq!(get(&v, "Http_X_Custom").as_deref(), Some("one"));
        assert_eq!(get(&v, "Http_ContentLength").as_deref(), Some("5"));
        assert_eq!(get(&v, "Http_Content_Length").as_deref(), Some("5"));
        assert_eq!(get(&v, "Http_Host").as_deref(), Some("example:8080"));
        assert_eq!(get(&v, "Http_Transfer_Encoding"), None);
        assert_eq!(
            v.iter().filter(|(k, _)| k == "Http_Content_Length").count(),
            1
        );
    }

    #[test]
    fn chunked_requests_have_length_minus_one_and_no_query_when_empty() {
        let req = hyper::Request::put("/")
            .header("Transfer-Encoding", "chunked")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let v = http_vars(&parts, None);
        assert_eq!(get(&v, "Http_ContentLength").as_deref(), Some("-1"));
        assert_eq!(
            get(&v, "Http_Transfer_Encoding").as_deref(),
            Some("chunked")
        );
        assert_eq!(get(&v, "Http_Query"), None);
        assert_eq!(get(&v, "Http_Path").as_deref(), Some("/"));
    }
}
