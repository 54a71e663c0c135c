//! A handler whose behaviour each test scripts by notification id: fail the first calls (and how),
//! panic, or stall on the first call. It counts every call.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use intercom_webhooks::processing::handler::{Handler, HandlerContext, HandlerError};
use intercom_webhooks::receiving::notification::Notification;

#[derive(Default)]
pub struct Scripted {
    calls: Mutex<HashMap<String, usize>>,
    fail_first: Mutex<HashMap<String, (usize, HandlerError)>>,
    pub panic_on: Mutex<Vec<String>>,
    /// Sleeps this long on the first call, by notification id.
    pub stall_first: Mutex<HashMap<String, Duration>>,
    /// How long every call takes, so that concurrent duplicates overlap; without it a call only
    /// yields, letting the other records of the batch run meanwhile.
    pause: Option<Duration>,
}

impl Scripted {
    /// Every call takes `pause` (real time).
    pub fn with_pause(pause: Duration) -> Self {
        Self {
            pause: Some(pause),
            ..Self::default()
        }
    }

    pub fn calls(&self, id: &str) -> usize {
        self.calls.lock().unwrap().get(id).copied().unwrap_or(0)
    }

    /// The first `times` calls for `id` fail with `error`.
    pub fn fail(&self, id: &str, times: usize, error: HandlerError) {
        self.fail_first.lock().unwrap().insert(id.into(), (times, error));
    }
}

#[async_trait]
impl Handler for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }

    async fn handle(&self, n: &Notification, _: &HandlerContext) -> Result<(), HandlerError> {
        let id = n.id.to_string();
        let call = {
            let mut calls = self.calls.lock().unwrap();
            let c = calls.entry(id.clone()).or_default();
            *c += 1;
            *c
        };
        if self.panic_on.lock().unwrap().contains(&id) {
            panic!("boom in {id}");
        }
        let stall = self.stall_first.lock().unwrap().get(&id).copied();
        if let (Some(stall), 1) = (stall, call) {
            tokio::time::sleep(stall).await;
        }
        match self.pause {
            Some(pause) => tokio::time::sleep(pause).await,
            None => tokio::task::yield_now().await,
        }
        if let Some((times, error)) = self.fail_first.lock().unwrap().get(&id) {
            if call <= *times {
                return Err(error.clone());
            }
        }
        Ok(())
    }
}
