//! One reconcile pass: for each type, page through the search for objects updated in the range, turn
//! each into a synthetic notification, and enqueue them in batches; after a complete pass of a type,
//! advance its watermark to the range's end.

use std::collections::HashSet;
use std::time::Duration;

use super::search::{identity, SearchClient, SearchError, Window};
use super::synthetic::{notification, Reconciled};
use super::target::{Target, BATCH};
use super::watermark::{WatermarkError, Watermarks};
use super::ObjectType;
use crate::processing::mirror::Mirror;

/// Where a pass starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Since {
    /// A time (Unix ms).
    At(i64),
    /// The stored watermark of each (app, type).
    Last,
    /// The stored watermark, or this time (Unix ms) for a type without one (the scheduled reconciler's
    /// first pass).
    LastOr(i64),
}

/// What to reconcile.
#[derive(Clone, Debug)]
pub struct Plan {
    pub types: Vec<ObjectType>,
    pub since: Since,
    /// The range's end (Unix ms), usually now.
    pub until_ms: i64,
    /// Subtracted from the start: search results lag writes by minutes, so ranges overlap.
    pub overlap: Duration,
    /// Count what would be enqueued; enqueue nothing, advance no watermark.
    pub dry_run: bool,
}

/// The default overlap of consecutive ranges.
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(600);

/// What a pass did for one type.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TypeReport {
    pub kind: String,
    /// The range searched (Unix ms), the overlap included.
    pub since_ms: i64,
    pub until_ms: i64,
    pub pages: u64,
    /// Objects in the range (each version once).
    pub objects: u64,
    /// Returned by the day-granular search but outside the range.
    pub outside_range: u64,
    /// Without an `id` or `updated_at`: not reconcilable.
    pub unversioned: u64,
    pub enqueued: u64,
    /// The mirror already holds this version or a newer one: not enqueued.
    pub already_current: u64,
    /// Objects (by id) that could not be enqueued, and why; a failed search is named with an empty id.
    pub failed: Vec<(String, String)>,
    /// Every page was read and every object enqueued.
    pub complete: bool,
    /// The watermark was advanced to `until_ms`.
    pub watermark_advanced: bool,
    /// Why a complete pass did not advance the watermark, when it did not.
    pub watermark_kept: Option<String>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    pub app_id: String,
    pub types: Vec<TypeReport>,
}

impl Report {
    pub fn failed(&self) -> bool {
        self.types.iter().any(|t| !t.complete)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Search(#[from] SearchError),
    #[error(transparent)]
    Watermark(#[from] WatermarkError),
    #[error("no watermark for {kind} of app {app_id}: no complete pass has been recorded yet; run once with --since TIME (e.g. --since 3d)")]
    NoWatermark { app_id: String, kind: ObjectType },
    #[error(
        "--since last needs a watermark store: give --db, or --table for the DynamoDB idempotency table"
    )]
    NoWatermarkStore,
}

pub struct Reconciler<'a> {
    pub search: &'a SearchClient,
    pub target: &'a dyn Target,
    pub watermarks: Option<&'a dyn Watermarks>,
    /// When given, objects it already holds at this version or newer are not enqueued.
    pub mirror: Option<&'a dyn Mirror>,
    /// Called after every page, with the type's report so far.
    pub progress: &'a (dyn Fn(&TypeReport) + Sync),
}

impl Reconciler<'_> {
    /// Runs the plan. A failed search or enqueue ends that type's pass incomplete (named in its report)
    /// and the others still run; only a missing watermark or an unreachable `GET /me` fails the whole run.
    pub async fn run(&self, plan: &Plan, now_s: i64) -> Result<Report, ReconcileError> {
        let app_id = self.search.app_id().await?;
        let mut report = Report {
            app_id: app_id.clone(),
            types: Vec::new(),
        };
        for &kind in &plan.types {
            let since_ms = match plan.since {
                Since::At(ms) => ms,
                Since::Last | Since::LastOr(_) => {
                    let store = self.watermarks.ok_or(ReconcileError::NoWatermarkStore)?;
                    match (store.get(&app_id, kind).await?, plan.since) {
                        (Some(watermark), _) => watermark,
                        (None, Since::LastOr(first)) => first,
                        (None, _) => {
                            return Err(ReconcileError::NoWatermark {
                                app_id: app_id.clone(),
                                kind,
                            })
                        }
                    }
                }
            };
            let window = Window {
                since_ms: since_ms - plan.overlap.as_millis() as i64,
                until_ms: plan.until_ms,
            };
            // A range that starts after the stored watermark leaves a gap behind it: completing it must
            // not move the watermark past the gap (the next `--since last` would never cover it).
            let stored = match (plan.since, self.watermarks) {
                (Since::At(_), Some(store)) => store.get(&app_id, kind).await?,
                _ => None,
            };
            let mut done = self.one_type(&app_id, kind, &window, plan.dry_run, now_s).await;
            if done.complete && !plan.dry_run {
                if let Some(store) = self.watermarks {
                    match stored {
                        Some(watermark) if window.since_ms > watermark => {
                            done.watermark_kept = Some(format!(
                                "the range starts after the stored watermark ({}); reconcile from it to advance it",
                                crate::processing::mirror::rfc3339(watermark)
                            ));
                        }
                        _ => match store.advance(&app_id, kind, plan.until_ms).await {
                            Ok(()) => done.watermark_advanced = true,
                            Err(error) => done
                                .failed
                                .push((String::new(), format!("watermark not stored: {error}"))),
                        },
                    }
                }
            }
            report.types.push(done);
        }
        Ok(report)
    }

    async fn one_type(
        &self,
        app_id: &str,
        kind: ObjectType,
        window: &Window,
        dry_run: bool,
        now_s: i64,
    ) -> TypeReport {
        let mut report = TypeReport {
            kind: kind.plural().to_owned(),
            since_ms: window.since_ms,
            until_ms: window.until_ms,
            ..TypeReport::default()
        };
        let mut seen: HashSet<(String, i64)> = HashSet::new();
        let mut pending: Vec<Reconciled> = Vec::with_capacity(BATCH);
        let mut cursor: Option<String> = None;
        loop {
            let page = match self.search.page(kind, window, cursor.as_deref()).await {
                Ok(page) => page,
                Err(error) => {
                    report.failed.push((String::new(), error.to_string()));
                    break;
                }
            };
            report.pages += 1;
            for object in &page.objects {
                let Some((id, updated_at_ms)) = identity(object) else {
                    report.unversioned += 1;
                    continue;
                };
                if !window.contains(updated_at_ms) {
                    report.outside_range += 1;
                    continue;
                }
                if !seen.insert((id.clone(), updated_at_ms)) {
                    continue;
                }
                report.objects += 1;
                if self.is_current(app_id, kind, &id, updated_at_ms).await {
                    report.already_current += 1;
                    continue;
                }
                match notification(app_id, kind, &id, updated_at_ms, object, now_s) {
                    Ok(n) => pending.push(n),
                    Err(error) => report.failed.push((id, error.to_string())),
                }
                if pending.len() == BATCH {
                    self.flush(&mut pending, dry_run, &mut report).await;
                }
            }
            (self.progress)(&report);
            match page.next {
                Some(next) if !page.objects.is_empty() => cursor = Some(next),
                _ => {
                    self.flush(&mut pending, dry_run, &mut report).await;
                    report.complete = report.failed.is_empty();
                    break;
                }
            }
        }
        (self.progress)(&report);
        report
    }

    async fn is_current(&self, app_id: &str, kind: ObjectType, id: &str, updated_at_ms: i64) -> bool {
        let Some(mirror) = self.mirror else {
            return false;
        };
        match mirror.get(kind.item_type(), id).await {
            Ok(found) => found
                .iter()
                .any(|e| e.key.app_id == app_id && e.version.at_ms >= updated_at_ms),
            // Unknown: enqueue it; the mirror's own conditional write decides.
            Err(_) => false,
        }
    }

    async fn flush(&self, pending: &mut Vec<Reconciled>, dry_run: bool, report: &mut TypeReport) {
        if pending.is_empty() {
            return;
        }
        if dry_run {
            report.enqueued += pending.len() as u64;
            pending.clear();
            return;
        }
        let results = self.target.enqueue(pending).await;
        for (n, result) in pending.drain(..).zip(results) {
            match result {
                Ok(()) => report.enqueued += 1,
                Err(reason) => report.failed.push((n.object_id, reason)),
            }
        }
    }
}
