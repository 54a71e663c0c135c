//! Counters and timings shared by the intake and the worker. Cheap to update; read by tests, by the local
//! server's `/metrics`, and flushed as CloudWatch embedded-metric-format lines on Lambda.

use std::collections::BTreeMap;
use std::sync::Mutex;

type Labels = Vec<(String, String)>;

/// Observations kept per timing between two drains (CloudWatch takes at most 100 values per metric).
const MAX_OBSERVATIONS: usize = 100;

#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(String, Labels), u64>>,
    observations: Mutex<BTreeMap<String, Vec<f64>>>,
}

/// Everything counted since the last drain.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Drained {
    pub counters: Vec<((String, Labels), u64)>,
    pub observations: Vec<(String, Vec<f64>)>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds 1 to counter `name` with `labels`.
    pub fn incr(&self, name: &str, labels: &[(&str, &str)]) {
        self.add(name, labels, 1);
    }

    pub fn add(&self, name: &str, labels: &[(&str, &str)], value: u64) {
        let key = (name.to_owned(), owned(labels));
        *self
            .counters
            .lock()
            .expect("metrics lock")
            .entry(key)
            .or_default() += value;
    }

    /// Records one timing in milliseconds: counters `<name>_sum` (rounded) and `<name>_count`, and the
    /// value itself for the next drain.
    pub fn observe(&self, name: &str, value_ms: f64) {
        self.add(&format!("{name}_sum"), &[], value_ms.round().max(0.0) as u64);
        self.add(&format!("{name}_count"), &[], 1);
        let mut observations = self.observations.lock().expect("metrics lock");
        let values = observations.entry(name.to_owned()).or_default();
        if values.len() < MAX_OBSERVATIONS {
            values.push(value_ms);
        }
    }

    /// Takes every counter and observation, leaving them empty: for per-invocation flushes on Lambda.
    pub fn drain(&self) -> Drained {
        let counters = std::mem::take(&mut *self.counters.lock().expect("metrics lock"));
        let observations = std::mem::take(&mut *self.observations.lock().expect("metrics lock"));
        Drained {
            counters: counters.into_iter().collect(),
            observations: observations.into_iter().collect(),
        }
    }

    /// The value of one counter with exactly these labels.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let key = (name.to_owned(), owned(labels));
        self.counters
            .lock()
            .expect("metrics lock")
            .get(&key)
            .copied()
            .unwrap_or(0)
    }

    /// The sum of a counter over all its labels.
    pub fn total(&self, name: &str) -> u64 {
        self.counters
            .lock()
            .expect("metrics lock")
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, v)| v)
            .sum()
    }

    /// Every counter: ((name, labels), value).
    pub fn snapshot(&self) -> Vec<((String, Labels), u64)> {
        self.counters
            .lock()
            .expect("metrics lock")
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

impl Metrics {
    /// The counters in Prometheus' text exposition format, each named `intercom_webhooks_<name>`
    /// (counters get a `_total` suffix).
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        let mut last = String::new();
        for ((name, labels), value) in self.snapshot() {
            let metric = if name.ends_with("_sum") || name.ends_with("_count") {
                format!("intercom_webhooks_{name}")
            } else {
                format!("intercom_webhooks_{name}_total")
            };
            if metric != last {
                out.push_str(&format!("# TYPE {metric} counter\n"));
                last.clone_from(&metric);
            }
            let labels = labels
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{k}=\"{}\"",
                        v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
                    )
                })
                .collect::<Vec<_>>()
                .join(",");
            if labels.is_empty() {
                out.push_str(&format!("{metric} {value}\n"));
            } else {
                out.push_str(&format!("{metric}{{{labels}}} {value}\n"));
            }
        }
        out
    }
}

fn owned(labels: &[(&str, &str)]) -> Labels {
    let mut labels: Labels = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_by_labels() {
        let m = Metrics::new();
        m.incr("processed", &[("topic", "a"), ("outcome", "processed")]);
        m.incr("processed", &[("outcome", "processed"), ("topic", "a")]);
        m.incr("processed", &[("topic", "b"), ("outcome", "retry")]);
        assert_eq!(m.get("processed", &[("topic", "a"), ("outcome", "processed")]), 2);
        assert_eq!(m.total("processed"), 3);
        assert_eq!(m.get("missing", &[]), 0);
    }

    #[test]
    fn prometheus_text() {
        let m = Metrics::new();
        m.incr("processed", &[("topic", "a\"b"), ("outcome", "processed")]);
        m.incr("received", &[]);
        m.observe("handler_latency_ms", 12.2);
        let text = m.render_prometheus();
        assert!(
            text.contains("# TYPE intercom_webhooks_processed_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("intercom_webhooks_processed_total{outcome=\"processed\",topic=\"a\\\"b\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("intercom_webhooks_received_total 1\n"), "{text}");
        assert!(
            text.contains("intercom_webhooks_handler_latency_ms_sum 12\n"),
            "{text}"
        );
    }
}
