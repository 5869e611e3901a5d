//! Logging: text or JSON, level from `--log-level` / `RUST_LOG`.

use tracing_subscriber::{EnvFilter, fmt, prelude::*, reload};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Handle to change the log filter at runtime.
pub type FilterHandle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// Installs the global subscriber; returns a handle to change the level at runtime.
pub fn init(format: LogFormat, level: &str) -> anyhow::Result<FilterHandle> {
    let filter = EnvFilter::try_new(level).map_err(|e| anyhow::anyhow!("invalid log level {level:?}: {e}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry.with(fmt::layer().with_writer(std::io::stderr)).try_init()?,
        LogFormat::Json => {
            registry.with(fmt::layer().json().flatten_event(true).with_writer(std::io::stderr)).try_init()?
        }
    }
    Ok(handle)
}
