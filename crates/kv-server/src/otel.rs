//! OpenTelemetry export of request spans (feature `otel`): the spans of
//! traced client requests (`kv_coordinator::trace`) go to a collector
//! over OTLP/gRPC, one trace per request, its steps as child spans.
//!
//! `kvd --otlp-endpoint http://collector:4317` turns it on. What is
//! exported is what is traced: one request in `trace_every`. A replica's
//! own work is not a span of the request (it batches many requests'
//! messages), so a trace is the coordinator's view: the round trip to
//! each replica, the local engine call, the hop to the key's coordinator.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// An exporter to one collector; [`OtelExport::shutdown`] sends what is
/// buffered.
#[derive(Debug)]
pub struct OtelExport {
    provider: SdkTracerProvider,
}

impl OtelExport {
    /// Exports to the collector at `endpoint` (`http://host:4317`) as
    /// service `kvd`, instance `node`. Call it inside a tokio runtime (the
    /// exporter's connection runs on it).
    ///
    /// # Errors
    ///
    /// The endpoint does not parse or the exporter cannot be built.
    pub fn start(endpoint: &str, node: u64) -> Result<Self, String> {
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(format!(
                "otlp endpoint {endpoint:?}: give a URL such as http://127.0.0.1:4317"
            ));
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| format!("otlp endpoint {endpoint}: {e}"))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("kvd")
            .with_attribute(opentelemetry::KeyValue::new(
                "service.instance.id",
                node.to_string(),
            ))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        Ok(OtelExport { provider })
    }

    /// The layer that turns request spans into OpenTelemetry spans (give
    /// it `kv_server::trace::SlowRequests::filter()`).
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer("kv"))
    }

    /// Sends the spans still buffered and stops. Blocks until the
    /// collector answered or the export timed out: call it off the
    /// runtime's threads (`spawn_blocking`).
    ///
    /// # Errors
    ///
    /// The last export failed or timed out.
    pub fn shutdown(self) -> Result<(), String> {
        self.provider
            .shutdown()
            .map_err(|e| format!("otlp export: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::trace::v1::Span;
    use tracing_subscriber::layer::SubscriberExt as _;

    /// A collector that keeps every span it is sent.
    #[derive(Clone, Default)]
    struct Collector(std::sync::Arc<parking_lot::Mutex<Vec<Span>>>);

    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let spans = request
                .into_inner()
                .resource_spans
                .into_iter()
                .flat_map(|r| r.scope_spans)
                .flat_map(|s| s.spans);
            self.0.lock().extend(spans);
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    fn attribute(span: &Span, key: &str) -> Option<String> {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        span.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref()?.value.as_ref())
            .map(|v| match v {
                Value::StringValue(s) => s.clone(),
                Value::IntValue(i) => i.to_string(),
                other => format!("{other:?}"),
            })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_and_its_steps_reach_the_collector_as_one_trace() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collector = Collector::default();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector.clone()))
                .serve_with_incoming(tokio_stream_of(listener)),
        );
        let export = OtelExport::start(&format!("http://{addr}"), 7).unwrap();
        let subscriber = tracing_subscriber::registry().with(
            export
                .layer()
                .with_filter(crate::trace::SlowRequests::filter()),
        );
        tracing::subscriber::with_default(subscriber, || {
            // The coordinator's shape: a request never entered, its steps
            // naming it as their parent.
            let request = tracing::info_span!(target: "kv::request", "request", op = "put", key_hash = 11u64, outcome = tracing::field::Empty);
            let engine = tracing::info_span!(target: "kv::request", parent: &request, "engine_write", outcome = tracing::field::Empty);
            engine.record("outcome", "ok");
            drop(engine);
            let replica = tracing::info_span!(target: "kv::request", parent: &request, "replicate", peer = 2u64);
            drop(replica);
            // Not a request span: filtered out.
            drop(tracing::info_span!(target: "kv_server::other", "other"));
            request.record("outcome", "ok");
        });
        tokio::task::spawn_blocking(move || export.shutdown())
            .await
            .unwrap()
            .unwrap();
        let spans = collector.0.lock().clone();
        server.abort();
        let named = |name: &str| spans.iter().find(|s| s.name == name).cloned();
        let request = named("request").unwrap_or_else(|| panic!("{spans:?}"));
        assert_eq!(spans.len(), 3, "{spans:?}");
        assert!(request.parent_span_id.is_empty(), "{request:?}");
        assert_eq!(attribute(&request, "op").as_deref(), Some("put"));
        assert_eq!(attribute(&request, "outcome").as_deref(), Some("ok"));
        for step in ["engine_write", "replicate"] {
            let s = named(step).unwrap_or_else(|| panic!("{step}: {spans:?}"));
            assert_eq!(s.trace_id, request.trace_id, "{step}");
            assert_eq!(s.parent_span_id, request.span_id, "{step}");
            assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
        }
        let replica = named("replicate").unwrap();
        assert_eq!(attribute(&replica, "peer").as_deref(), Some("2"));
    }

    /// The listener's connections as the stream tonic's server takes.
    fn tokio_stream_of(
        listener: tokio::net::TcpListener,
    ) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
        futures_util::stream::unfold(listener, |listener| async move {
            let accepted = listener.accept().await.map(|(s, _)| s);
            Some((accepted, listener))
        })
    }

    #[test]
    fn an_endpoint_that_is_no_url_is_refused() {
        let err = OtelExport::start("127.0.0.1:4317", 1).unwrap_err();
        assert!(err.contains("http://"), "{err}");
    }
}
