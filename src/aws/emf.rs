//! CloudWatch embedded metric format: on Lambda, the counters of each invocation are printed as JSON
//! documents that CloudWatch turns into metrics (namespace `IntercomWebhooks`, dimension `Service`), with
//! no API call and no IAM permission.

use serde_json::{json, Map, Value};

use crate::plumbing::metrics::{Drained, Metrics};

pub const NAMESPACE: &str = "IntercomWebhooks";

/// Internal counter name → CloudWatch metric name. Counters not listed are not published.
const NAMES: &[(&str, &str)] = &[
    ("received", "Received"),
    ("rejected", "Rejected"),
    ("enqueued", "Enqueued"),
    ("enqueue_failed", "EnqueueFailed"),
    ("pings", "Pings"),
    ("duplicates", "Duplicate"),
    ("duplicate_payload_mismatch", "DuplicatePayloadMismatch"),
    ("processed", "Processed"),
    ("dead_lettered", "DeadLettered"),
    ("verified_by_secret", "VerifiedBySecret"),
    ("mirror_writes", "MirrorWrites"),
    ("mirror_truncated", "MirrorTruncated"),
    ("eventbridge_entries", "EventBridgeEntries"),
    ("eventbridge_truncated", "EventBridgeTruncated"),
];

/// Label → dimension. Labels not listed are summed over (kept out of CloudWatch to keep dimensions few).
const DIMENSIONS: &[(&str, &str)] = &[
    ("reason", "Reason"),
    ("topic", "Topic"),
    ("outcome", "Outcome"),
    ("secret_index", "SecretIndex"),
    ("result", "Result"),
];

/// Dimension name and value pairs of one document.
type Dimensions = Vec<(&'static str, String)>;

/// The EMF documents for what was counted, one per metric and dimension values.
pub fn documents(drained: &Drained, service: &str, timestamp_ms: i64) -> Vec<Value> {
    let mut sums: std::collections::BTreeMap<(&str, Dimensions), u64> = Default::default();
    for ((name, labels), value) in &drained.counters {
        let Some((_, metric)) = NAMES.iter().find(|(n, _)| n == name) else {
            continue;
        };
        let mut dimensions: Dimensions = labels
            .iter()
            .filter_map(|(k, v)| {
                DIMENSIONS
                    .iter()
                    .find(|(l, _)| l == k)
                    .map(|(_, d)| (*d, v.clone()))
            })
            .collect();
        dimensions.sort();
        *sums.entry((metric, dimensions)).or_default() += value;
    }
    let mut out = Vec::new();
    for ((metric, dimensions), value) in sums {
        let mut names = vec!["Service"];
        names.extend(dimensions.iter().map(|(d, _)| *d));
        names.sort_unstable();
        let mut doc = document(timestamp_ms, &names, metric, "Count");
        doc.insert("Service".into(), service.into());
        for (d, v) in dimensions {
            doc.insert(d.into(), v.into());
        }
        doc.insert(metric.into(), value.into());
        out.push(Value::Object(doc));
    }
    for (name, values) in &drained.observations {
        if name == "handler_latency_ms" && !values.is_empty() {
            let mut doc = document(timestamp_ms, &["Service"], "HandlerLatency", "Milliseconds");
            doc.insert("Service".into(), service.into());
            doc.insert("HandlerLatency".into(), json!(values));
            out.push(Value::Object(doc));
        }
    }
    out
}

fn document(timestamp_ms: i64, dimensions: &[&str], metric: &str, unit: &str) -> Map<String, Value> {
    let mut doc = Map::new();
    doc.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [dimensions],
                "Metrics": [{"Name": metric, "Unit": unit}]
            }]
        }),
    );
    doc
}

/// Prints (to stdout, where Lambda's log agent reads it) everything counted since the last flush.
pub fn flush(metrics: &Metrics, service: &str) {
    use std::io::Write;
    let docs = documents(&metrics.drain(), service, crate::plumbing::clock::unix_ms_now());
    if docs.is_empty() {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    for doc in docs {
        let _ = writeln!(stdout, "{doc}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_become_emf_documents_with_few_dimensions() {
        let m = Metrics::new();
        m.incr("received", &[]);
        m.incr("received", &[]);
        m.incr("rejected", &[("reason", "signature_mismatch")]);
        m.incr("dead_lettered", &[("stage", "receiver")]);
        m.incr("dead_lettered", &[]);
        m.incr(
            "processed",
            &[("topic", "contact.created"), ("outcome", "processed")],
        );
        m.incr("verified_by_secret", &[("secret_index", "1")]);
        m.incr("not_published", &[]);
        m.observe("handler_latency_ms", 3.5);
        let docs = documents(&m.drain(), "worker", 1_700_000_000_000);
        let find = |metric: &str| docs.iter().find(|d| d.get(metric).is_some()).unwrap().clone();

        let received = find("Received");
        assert_eq!(received["Received"], 2);
        assert_eq!(received["Service"], "worker");
        assert_eq!(received["_aws"]["Timestamp"], 1_700_000_000_000i64);
        assert_eq!(
            received["_aws"]["CloudWatchMetrics"][0]["Namespace"],
            "IntercomWebhooks"
        );
        assert_eq!(
            received["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Service"]])
        );

        let rejected = find("Rejected");
        assert_eq!(rejected["Reason"], "signature_mismatch");
        assert_eq!(
            rejected["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Reason", "Service"]])
        );
        assert_eq!(
            find("DeadLettered")["DeadLettered"],
            2,
            "the stage label is summed over"
        );
        let processed = find("Processed");
        assert_eq!(
            processed["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Outcome", "Service", "Topic"]])
        );
        assert_eq!(find("VerifiedBySecret")["SecretIndex"], "1");
        let latency = find("HandlerLatency");
        assert_eq!(latency["HandlerLatency"], json!([3.5]));
        assert_eq!(
            latency["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Unit"],
            "Milliseconds"
        );
        assert_eq!(docs.len(), 6);
    }
}
