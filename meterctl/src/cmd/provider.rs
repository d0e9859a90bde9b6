//! The HTTP client `meterctl sync` talks to its provider with: plain
//! HTTP/1.1 (hyper's connection API over a tokio socket, one connection per
//! request), every request bounded by a timeout (connect, send and the
//! whole answer) and every answer by a size, and each failure named:
//! unreachable, timed out, too large, or the provider's status and text.
//!
//! Plain `http://` only: the meter's objects are signed end to end (a
//! voucher, an order, an acknowledgement mean nothing to another meter), so
//! the channel carries no secret; a provider reached across networks sits
//! behind a local TLS proxy.

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

use crate::error::CtlError;

/// Where the provider is: `http://host[:port][/prefix]`.
#[derive(Debug, Clone)]
pub struct Provider {
    url: String,
    authority: String,
    host: String,
    port: u16,
    prefix: String,
    timeout: Duration,
}

/// An answer: status, the headers sync reads, body.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// `meter-findings`, when present.
    pub findings: Option<String>,
    /// `meter-pending-token`, when present: the upload's proof that lets
    /// this meter read its pending objects.
    pub pending_token: Option<String>,
    /// The body.
    pub body: Bytes,
}

impl Provider {
    /// Parses the provider's URL; `timeout` bounds each request.
    pub fn parse(url: &str, timeout: Duration) -> Result<Provider, CtlError> {
        let url = url.trim().trim_end_matches('/').to_owned();
        let bad = |why: &str| CtlError::Usage(format!("provider URL {url:?}: {why}"));
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some(("https", _)) => return Err(bad(
                "https is not spoken by meterctl sync; reach the provider over a local TLS proxy",
            )),
            _ => return Err(bad("give http://HOST[:PORT][/PREFIX]")),
        };
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| bad("bad port"))?)
            }
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || authority.contains('@') {
            return Err(bad("no host (and no user info)"));
        }
        Ok(Provider {
            authority: authority.to_owned(),
            host: host.to_owned(),
            port,
            prefix: prefix.to_owned(),
            timeout,
            url,
        })
    }

    /// The URL, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn error(&self, message: String) -> CtlError {
        CtlError::Provider {
            url: self.url.clone(),
            message,
        }
    }

    /// One request: `path` under the URL's prefix, `body` of type `media`,
    /// `bearer` as `Authorization: Bearer`; an answer of at most `max` bytes.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        media: Option<&str>,
        bearer: Option<&str>,
        body: Vec<u8>,
        max: usize,
    ) -> Result<Answer, CtlError> {
        let call = self.call_now(method, path, media, bearer, body, max);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(self.error(format!(
                "no complete answer to {path} within {} s",
                self.timeout.as_secs()
            ))),
        }
    }

    async fn call_now(
        &self,
        method: Method,
        path: &str,
        media: Option<&str>,
        bearer: Option<&str>,
        body: Vec<u8>,
        max: usize,
    ) -> Result<Answer, CtlError> {
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| self.error(format!("unreachable: {e}")))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.error(format!("HTTP handshake: {e}")))?;
        let conn = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(HOST, &self.authority)
            .header(CONTENT_LENGTH, body.len());
        if let Some(m) = media {
            req = req.header(CONTENT_TYPE, m);
        }
        if let Some(t) = bearer {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| self.error(format!("request: {e}")))?;
        let result = async {
            let resp = send
                .send_request(req)
                .await
                .map_err(|e| self.error(format!("the request failed: {e}")))?;
            let status = resp.status().as_u16();
            let text = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let (findings, pending_token) = (text("meter-findings"), text("meter-pending-token"));
            let declared = resp
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > max as u64) {
                return Err(self.error(format!("answer larger than {max} bytes")));
            }
            let body = Limited::new(resp.into_body(), max)
                .collect()
                .await
                .map_err(|e| self.error(format!("answer unreadable or over {max} bytes: {e}")))?
                .to_bytes();
            Ok(Answer {
                status,
                findings,
                pending_token,
                body,
            })
        }
        .await;
        conn.abort();
        result
    }

    /// The provider's error status as a named failure, with its text.
    pub fn refused(&self, what: &str, a: &Answer) -> CtlError {
        let text: String = String::from_utf8_lossy(&a.body).chars().take(500).collect();
        let kind = match a.status {
            400..=499 => "refused",
            500..=599 => "failed",
            _ => "answered",
        };
        self.error(format!(
            "{what}: {kind} with HTTP {}: {}",
            a.status,
            text.trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_or_are_refused_by_name() {
        let t = Duration::from_secs(1);
        let p = Provider::parse("http://127.0.0.1:8080/", t).unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.prefix.as_str()),
            ("127.0.0.1", 8080, "")
        );
        let p = Provider::parse("http://provider.example/meterd", t).unwrap();
        assert_eq!((p.port, p.prefix.as_str()), (80, "/meterd"));
        let p = Provider::parse("http://[::1]:81", t).unwrap();
        assert_eq!((p.host.as_str(), p.port), ("::1", 81));
        for bad in [
            "https://x",
            "x:80",
            "http://",
            "http://u@h",
            "http://h:port",
        ] {
            assert!(Provider::parse(bad, t).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_provider_is_named() {
        // Port 9 on loopback: nothing listens (discard is not run here).
        let p = Provider::parse("http://127.0.0.1:9", Duration::from_secs(5)).unwrap();
        let e = p
            .call(Method::GET, "/healthz", None, None, Vec::new(), 10)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("unreachable"), "{e}");
    }
}
