//! The signal that ends a node's long-lived streams and connections (the
//! internal service's streams, client pipelines, framed connections) when
//! it shuts down.

/// Completes once `stopping` is true (never, if its sender is gone
/// without saying so).
pub(crate) async fn stopped(stopping: &mut tokio::sync::watch::Receiver<bool>) {
    if stopping.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}
