//! Checks of the repository's Buildkite manifests against the product (tests only).
//!
//! `manifests/buildkite/pipeline.yml` documents the pipeline benchkite creates for a queue:
//! its YAML must be exactly what `benchkite::buildkite::render_configuration` renders for
//! queue `nvidia-h100` with the defaults, so the file can never drift from what the
//! controller writes to Buildkite.

#[cfg(test)]
mod tests {
    use benchkite::buildkite::{ManagedStep, render_configuration};

    const QUEUE: &str = "nvidia-h100";

    fn pipeline_yml() -> String {
        let path = benchkite_e2e::repo_root().join("manifests/buildkite/pipeline.yml");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    #[test]
    fn the_documented_pipeline_is_what_benchkite_creates_for_the_queue() {
        let rendered = render_configuration(&ManagedStep::new(QUEUE));
        let file = pipeline_yml();
        let Some(header) = file.strip_suffix(rendered.as_str()) else {
            panic!(
                "manifests/buildkite/pipeline.yml must end with render_configuration(&ManagedStep::new({QUEUE:?})) \
                 exactly; it renders as:\n{rendered}"
            );
        };
        assert!(
            header.lines().all(|l| l.is_empty() || l.starts_with('#')),
            "only comments may precede the rendered steps:\n{header}"
        );
        assert!(header.contains("benchkite creates"), "the header says that benchkite creates this pipeline itself");
    }

    #[test]
    fn the_documented_pipeline_routes_on_real_buildkite() {
        let doc: serde_yaml::Value = serde_yaml::from_str(&pipeline_yml()).expect("pipeline.yml is YAML");
        let step = &doc["steps"][0];
        assert_eq!(step["agents"]["queue"].as_str(), Some(QUEUE), "the queue is named literally");
        assert_eq!(step["checkout"]["skip"].as_bool(), Some(true), "no checkout");
        assert!(!pipeline_yml().lines().filter(|l| !l.starts_with('#')).any(|l| l.contains("${")), "no interpolation");
    }
}
