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
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_writer(std::io::stderr),
            )
            .try_init()?,
        LogFormat::Json => {
            registry.with(fmt::layer().json().flatten_event(true).with_writer(std::io::stderr)).try_init()?
        }
    }
    Ok(handle)
}

/// The log filter in effect.
pub fn current_filter(handle: &FilterHandle) -> anyhow::Result<String> {
    handle.with_current(|f| f.to_string()).map_err(|e| anyhow::anyhow!("reading the log filter: {e}"))
}

/// Replaces the log filter (EnvFilter syntax); returns the filter now in effect.
pub fn set_filter(handle: &FilterHandle, filter: &str) -> anyhow::Result<String> {
    if filter.is_empty() {
        anyhow::bail!("empty log filter: send e.g. `info` or `info,benchkite=debug`");
    }
    let parsed = EnvFilter::try_new(filter).map_err(|e| anyhow::anyhow!("invalid log filter {filter:?}: {e}"))?;
    handle.reload(parsed).map_err(|e| anyhow::anyhow!("changing the log filter: {e}"))?;
    current_filter(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_changes_at_runtime_and_bad_filters_are_refused() {
        let (layer, handle) = reload::Layer::new(EnvFilter::new("info"));
        let _subscriber = tracing_subscriber::registry().with(layer);
        assert_eq!(current_filter(&handle).unwrap_or_default(), "info");
        // EnvFilter prints its directives most specific first.
        assert_eq!(set_filter(&handle, "warn,benchkite=debug").unwrap_or_default(), "benchkite=debug,warn");
        assert!(set_filter(&handle, "").is_err());
        assert!(set_filter(&handle, "benchkite=notalevel").is_err());
        assert_eq!(current_filter(&handle).unwrap_or_default(), "benchkite=debug,warn");
    }
}
