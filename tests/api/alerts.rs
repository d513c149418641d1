//! The chart's alerts watch metrics the service exports: an alert on a misspelled or renamed
//! metric selects nothing, and stays silent for good.

use std::collections::BTreeSet;

use crate::helpers::TestApp;

/// The alerting rules the chart's PrometheusRule is rendered from.
const ALERTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/helm/product-size-service/files/alerts.yaml"
);
const PREFIX: &str = "product_size_";

fn is_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
}

/// Every metric name in `text` that starts with the service's prefix.
fn metric_names(text: &str) -> BTreeSet<&str> {
    text.match_indices(PREFIX)
        .filter(|(start, _)| !text[..*start].ends_with(is_name_char))
        .map(|(start, _)| {
            let rest = &text[start..];
            &rest[..rest.find(|c| !is_name_char(c)).unwrap_or(rest.len())]
        })
        .collect()
}

/// The series names an OpenMetrics exposition has, by its `# TYPE` lines (a counter's samples
/// end in `_total`, a histogram's in `_bucket`, `_sum` and `_count`).
fn series_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.split_once(' '))
        .flat_map(|(family, kind)| {
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                _ => &[""],
            };
            suffixes
                .iter()
                .map(move |suffix| format!("{family}{suffix}"))
        })
        .collect()
}

#[test]
fn series_are_named_as_their_family_type_has_them() {
    let exposition = "# TYPE product_size_reads counter\n\
                      # TYPE product_size_http_request_duration_seconds histogram\n\
                      # TYPE product_size_cache_up gauge\n";

    let names = series_names(exposition);

    for name in [
        "product_size_reads_total",
        "product_size_http_request_duration_seconds_bucket",
        "product_size_cache_up",
    ] {
        assert!(names.contains(name), "{name} in {names:?}");
    }
    assert!(!names.contains("product_size_reads"));
}

#[tokio::test]
async fn every_metric_the_alerts_watch_is_exported() {
    let rules = std::fs::read_to_string(ALERTS).unwrap();
    let watched = metric_names(&rules);
    assert!(!watched.is_empty(), "no {PREFIX}* metric in {ALERTS}");
    let app = TestApp::spawn().await;
    // A labelled family is exported only once it has a child: a read gives the request and
    // cache lookup counters theirs.
    app.get(&app.sku("alerts")).await;

    let exported = series_names(&app.scrape_metrics().await);

    let missing: Vec<_> = watched
        .iter()
        .filter(|name| !exported.contains(**name))
        .collect();
    assert!(
        missing.is_empty(),
        "the alerts watch series /metrics does not have: {missing:?}\nit has: {exported:?}"
    );
}
