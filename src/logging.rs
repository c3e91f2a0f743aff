//! Logging and trace export. Logs go to stderr as text or JSON lines, filtered by `PGWEIR_LOG`
//! (EnvFilter syntax, default `info`). Each client session runs in a `session` span (client id,
//! user, database, peer) and each request in a `request` span (fingerprint, route, pool wait,
//! server time) at debug level, so they cost nothing unless someone listens. Built with the
//! `otlp` feature and with `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) set, the spans
//! are also exported over OTLP/HTTP, filtered by `PGWEIR_OTLP_LOG` (default `pgweir=debug`).

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

type Boxed = Box<dyn Layer<Registry> + Send + Sync>;

/// Keeps the exporter alive; dropping it flushes the spans not yet sent.
pub struct LogGuard {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs the process's subscriber (call once, before the runtime starts).
pub fn init(json: bool) -> LogGuard {
    let filter = EnvFilter::try_from_env("PGWEIR_LOG").unwrap_or_else(|_| "info".into());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt: Boxed = if json { fmt.json().with_filter(filter).boxed() } else { fmt.with_filter(filter).boxed() };
    #[cfg_attr(not(feature = "otlp"), allow(unused_mut))]
    let mut layers = vec![fmt];
    #[cfg(feature = "otlp")]
    let provider = match otlp::layer() {
        Ok(Some((layer, provider))) => {
            layers.push(layer);
            Some(provider)
        }
        Ok(None) => None,
        Err(e) => {
            eprintln!("pgweir: OTLP export disabled: {e}");
            None
        }
    };
    tracing_subscriber::registry().with(layers).init();
    LogGuard {
        #[cfg(feature = "otlp")]
        provider,
    }
}

#[cfg(feature = "otlp")]
mod otlp {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::{EnvFilter, Layer};

    use super::Boxed;

    /// The export layer, when an endpoint is configured.
    pub(super) fn layer() -> Result<Option<(Boxed, SdkTracerProvider)>, String> {
        let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
        if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().build().map_err(|e| e.to_string())?;
        let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "pgweir".into());
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(name).build())
            .build();
        let filter = EnvFilter::try_from_env("PGWEIR_OTLP_LOG").unwrap_or_else(|_| "pgweir=debug".into());
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("pgweir")).with_filter(filter).boxed();
        Ok(Some((layer, provider)))
    }
}
