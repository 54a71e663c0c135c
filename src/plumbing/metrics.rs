//! Counters and timings shared by the intake and the worker. Cheap to update; read by tests, by the local
//! server's `/metrics`, and flushed as CloudWatch embedded-metric-format lines on Lambda.

use std::collections::BTreeMap;
use std::sync::Mutex;

type Labels = Vec<(String, String)>;

/// Observations kept per timing between two drains (CloudWatch takes at most 100 values per metric).
const MAX_OBSERVATIONS: usize = 100;

#[derive(Debug, Default)]
pub struct Metrics {
    /// By name, each label set with its value. A name has a few label sets, so an update finds its
    /// counter by comparing strings and allocates only for a label set it has not seen before.
    counters: Mutex<BTreeMap<String, Vec<(Labels, u64)>>>,
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
        let mut counters = self.counters.lock().expect("metrics lock");
        let series = match counters.get_mut(name) {
            Some(series) => series,
            None => counters.entry(name.to_owned()).or_default(),
        };
        match series.iter_mut().find(|(owned, _)| same_labels(owned, labels)) {
            Some((_, counter)) => *counter += value,
            None => series.push((owned(labels), value)),
        }
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
            counters: flatten(counters.iter()),
            observations: observations.into_iter().collect(),
        }
    }

    /// The value of one counter with exactly these labels.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.counters
            .lock()
            .expect("metrics lock")
            .get(name)
            .and_then(|series| series.iter().find(|(owned, _)| same_labels(owned, labels)))
            .map_or(0, |(_, value)| *value)
    }

    /// The sum of a counter over all its labels.
    pub fn total(&self, name: &str) -> u64 {
        self.counters
            .lock()
            .expect("metrics lock")
            .get(name)
            .map_or(0, |series| series.iter().map(|(_, value)| value).sum())
    }

    /// Every counter: ((name, labels), value).
    pub fn snapshot(&self) -> Vec<((String, Labels), u64)> {
        flatten(self.counters.lock().expect("metrics lock").iter())
    }
}

impl Metrics {
    /// The counters in Prometheus' text exposition format, each named `intercom_webhooks_<name>`
    /// (counters get a `_total` suffix).
    pub fn render_prometheus(&self) -> String {
        self.render_prometheus_with(&[])
    }

    /// As [`Metrics::render_prometheus`], with counters kept elsewhere and read now (name, value; no
    /// labels) among them.
    pub fn render_prometheus_with(&self, others: &[(&str, u64)]) -> String {
        let mut counters = self.snapshot();
        counters.extend(
            others
                .iter()
                .map(|(name, value)| (((*name).to_owned(), Labels::new()), *value)),
        );
        counters.sort();
        let mut out = String::new();
        let mut last = String::new();
        for ((name, labels), value) in counters {
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

/// Every counter as ((name, labels), value), ordered by name, then labels.
fn flatten<'a>(
    counters: impl Iterator<Item = (&'a String, &'a Vec<(Labels, u64)>)>,
) -> Vec<((String, Labels), u64)> {
    let mut flat = Vec::new();
    for (name, series) in counters {
        let mut series = series.clone();
        series.sort();
        flat.extend(
            series
                .into_iter()
                .map(|(labels, value)| ((name.clone(), labels), value)),
        );
    }
    flat
}

/// Whether `labels`, in any order, are the label set `owned`.
fn same_labels(owned: &Labels, labels: &[(&str, &str)]) -> bool {
    owned.len() == labels.len()
        && labels
            .iter()
            .all(|(k, v)| owned.iter().any(|(ok, ov)| ok == k && ov == v))
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
        assert_eq!(
            m.get("processed", &[("topic", "a")]),
            0,
            "a subset of the labels is another counter"
        );

        // Ordered by name, then labels, whatever the order they were first counted in.
        m.incr("enqueued", &[]);
        let keys: Vec<(String, Vec<String>)> = m
            .snapshot()
            .into_iter()
            .map(|((name, labels), _)| (name, labels.into_iter().map(|(_, v)| v).collect()))
            .collect();
        let expected = [
            ("enqueued", vec![]),
            ("processed", vec!["processed", "a"]),
            ("processed", vec!["retry", "b"]),
        ];
        let expected: Vec<(String, Vec<String>)> = expected
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v.into_iter().map(String::from).collect()))
            .collect();
        assert_eq!(keys, expected);
        assert_eq!(m.drain().counters.len(), 3);
        assert_eq!(m.total("processed"), 0, "drained");
    }

    #[test]
    fn counters_kept_elsewhere_are_rendered_among_the_others_in_name_order() {
        let m = Metrics::new();
        m.incr("received", &[]);
        m.incr("enqueued", &[]);
        let text = m.render_prometheus_with(&[("wal_syncs", 7), ("processed", 3)]);
        let names: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(' ').next().unwrap_or_default())
            .collect();
        assert_eq!(
            names,
            [
                "intercom_webhooks_enqueued_total",
                "intercom_webhooks_processed_total",
                "intercom_webhooks_received_total",
                "intercom_webhooks_wal_syncs_total"
            ]
        );
        assert!(
            text.contains(
                "# TYPE intercom_webhooks_wal_syncs_total counter\nintercom_webhooks_wal_syncs_total 7\n"
            ),
            "{text}"
        );
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
