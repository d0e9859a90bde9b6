//! The endpoint on the bus: `org.meterd.TimeStamp1` with read-only
//! properties `Urls` and `AnonymousLoopback`, so that `meterctl status`
//! can say where the time-stamp endpoint listens, and that it runs at all
//! (the name is owned only while meter-tsa runs).
//!
//! Published on the connection meter-tsa already has to meterd. Failing to
//! own the name (an old bus policy, another owner) is logged and ignored:
//! the endpoint matters more than the status line.

use std::net::SocketAddr;

use meter_proto::timestamp::{BUS_NAME, OBJECT_PATH};

/// The status object.
struct TimeStamp1 {
    urls: Vec<String>,
    anonymous_loopback: bool,
}

#[zbus::interface(name = "org.meterd.TimeStamp1")]
impl TimeStamp1 {
    /// The URLs the endpoint listens on, without credentials.
    #[zbus(property)]
    fn urls(&self) -> Vec<String> {
        self.urls.clone()
    }

    /// True when loopback clients without credentials are served.
    #[zbus(property)]
    fn anonymous_loopback(&self) -> bool {
        self.anonymous_loopback
    }
}

/// The URL a client uses to reach `local` (`http://127.0.0.1:3180/`,
/// `http://[::1]:3180/`).
pub fn url(local: SocketAddr) -> String {
    format!("http://{local}/")
}

/// Serves the status object on `conn` and asks for the well-known name;
/// logs a warning instead of failing.
pub async fn publish(conn: &zbus::Connection, local: SocketAddr, anonymous_loopback: bool) {
    let object = TimeStamp1 {
        urls: vec![url(local)],
        anonymous_loopback,
    };
    if let Err(e) = conn.object_server().at(OBJECT_PATH, object).await {
        tracing::warn!(error = %e, "cannot serve {OBJECT_PATH}: meterctl status will not show the endpoint");
        return;
    }
    match conn.request_name(BUS_NAME).await {
        Ok(()) => tracing::info!("owns {BUS_NAME}"),
        Err(e) => tracing::warn!(
            error = %e,
            "cannot own {BUS_NAME} (bus policy?): serving anyway; meterctl status will say not running"
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn urls_carry_no_credentials_and_bracket_ipv6() {
        assert_eq!(
            url("127.0.0.1:3180".parse().unwrap()),
            "http://127.0.0.1:3180/"
        );
        assert_eq!(url("[::1]:3180".parse().unwrap()), "http://[::1]:3180/");
    }
}
