//! Every gRPC connection the crate makes (the SDK, node to node, `kvctl`,
//! `kv-bench`'s checker) is built here: timeouts, HTTP/2 keepalives, TLS
//! and the message size limit in one place, so the callers differ only in
//! the [`ConnectSettings`] they pick.

use std::time::Duration;

use tonic::codegen::{Body, Bytes, StdError};
use tonic::transport::{ClientTlsConfig, Endpoint};

use crate::proto::admin_client::AdminClient;
use crate::proto::internal_client::InternalClient;
use crate::proto::kv_client::KvClient;

/// Largest message either side sends or accepts (64 MiB: a value of up to
/// 16 MiB with its siblings).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// How one kind of connection behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectSettings {
    /// Time to set up the connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Deadline of each call; `None` for long-lived streams.
    pub request_timeout: Option<Duration>,
    /// An HTTP/2 ping this often, also while idle...
    pub keepalive_interval: Duration,
    /// ...and the connection counts as broken when a ping goes unanswered
    /// this long (a paused or vanished peer is noticed without a call).
    pub keepalive_timeout: Duration,
}

impl ConnectSettings {
    /// A client of the `Kv` service (the SDK, the load generator).
    pub fn client(connect_timeout: Duration, request_timeout: Duration) -> Self {
        ConnectSettings {
            connect_timeout,
            request_timeout: Some(request_timeout),
            keepalive_interval: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(2),
        }
    }

    /// A node calling a peer: `timeout` bounds the connection set-up (at
    /// most 2 s) and, with `deadline`, each call; streams go without. A
    /// peer is pinged every 500 ms so that a dead one fails its streams
    /// within a second and a half.
    pub fn peer(timeout: Duration, deadline: bool) -> Self {
        ConnectSettings {
            connect_timeout: timeout.min(Duration::from_secs(2)),
            request_timeout: deadline.then_some(timeout),
            keepalive_interval: Duration::from_millis(500),
            keepalive_timeout: Duration::from_secs(1),
        }
    }

    /// An operator's command (`kvctl`): joins and leaves stream data and
    /// may take minutes.
    pub fn operator() -> Self {
        ConnectSettings {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Some(Duration::from_secs(600)),
            keepalive_interval: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(2),
        }
    }

    /// An endpoint for `url` with these settings, over `tls` when given.
    ///
    /// # Errors
    /// The URL or the TLS settings are refused.
    pub fn endpoint(&self, url: String, tls: Option<ClientTlsConfig>) -> Result<Endpoint, String> {
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| format!("address {url:?}: {e}"))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(self.keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout)
            .keep_alive_while_idle(true);
        if let Some(timeout) = self.request_timeout {
            endpoint = endpoint.timeout(timeout);
        }
        match tls {
            Some(tls) => endpoint
                .tls_config(tls)
                .map_err(|e| format!("TLS for {url}: {e}")),
            None => Ok(endpoint),
        }
    }
}

/// A constructor of a generated client with the message size limit (the
/// generated clients share no trait that would let one function serve).
macro_rules! limited_client {
    ($(#[$doc:meta])* $name:ident -> $client:ident) => {
        $(#[$doc])*
        pub fn $name<T>(channel: T) -> $client<T>
        where
            T: tonic::client::GrpcService<tonic::body::Body>,
            T::Error: Into<StdError>,
            T::ResponseBody: Body<Data = Bytes> + Send + 'static,
            <T::ResponseBody as Body>::Error: Into<StdError> + Send,
        {
            $client::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        }
    };
}

limited_client!(
    /// A `Kv` client over `channel` that sends and accepts messages up to
    /// [`MAX_MESSAGE_BYTES`].
    kv_client -> KvClient
);
limited_client!(
    /// An `Internal` client over `channel` with the message size limit.
    internal_client -> InternalClient
);
limited_client!(
    /// An `Admin` client over `channel` with the message size limit.
    admin_client -> AdminClient
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_connects_within_two_seconds_and_streams_have_no_deadline() {
        let long = ConnectSettings::peer(Duration::from_secs(30), false);
        assert_eq!(long.connect_timeout, Duration::from_secs(2));
        assert_eq!(long.request_timeout, None);
        let short = ConnectSettings::peer(Duration::from_millis(200), true);
        assert_eq!(short.connect_timeout, Duration::from_millis(200));
        assert_eq!(short.request_timeout, Some(Duration::from_millis(200)));
    }

    #[test]
    fn a_bad_address_is_an_error_naming_it() {
        let settings = ConnectSettings::operator();
        let err = settings.endpoint("not a url".into(), None).unwrap_err();
        assert!(err.contains("not a url"), "{err}");
        assert!(settings.endpoint("http://127.0.0.1:1".into(), None).is_ok());
    }
}
