//! Shared by the load drivers (`latency_probe`, `soak`): an open-loop sender and the signed POST each of
//! its requests sends.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::template::Template;

/// Issues `rate` requests a second for `secs` seconds, open loop: request `n` (from 1) goes out when it is
/// due, never waiting for earlier answers. A request due while `max_in_flight` are unanswered is not made.
/// Returns when every request made has finished, with the number not made.
pub async fn open_loop<F, Fut>(rate: u32, secs: u64, max_in_flight: usize, mut request: F) -> usize
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(tokio::sync::Semaphore::new(max_in_flight));
    let total = rate as u64 * secs;
    let start = Instant::now();
    let mut issued = 0u64;
    let mut skipped = 0;
    let mut tasks = tokio::task::JoinSet::new();
    while issued < total {
        // Everything due by now goes out now (the timer's granularity is about 1 ms).
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64 + 1).min(total);
        while issued < due {
            issued += 1;
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                skipped += 1;
                continue;
            };
            let request = request(issued);
            tasks.spawn(async move {
                request.await;
                drop(permit);
            });
        }
        while tasks.try_join_next().is_some() {}
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    while tasks.join_next().await.is_some() {}
    skipped
}

/// The POST of the template's body for `id` (and `object`, see [`Template::body`]) to `url`, signed as
/// Intercom signs it, ready to send: a caller that times the request starts its clock after this.
pub fn signed_post(
    client: &reqwest::Client,
    url: &str,
    template: &Template,
    id: &str,
    object: Option<&str>,
) -> reqwest::RequestBuilder {
    let (body, signature) = template.body(id, object);
    client
        .post(url)
        .header("content-type", "application/json")
        .header("x-hub-signature", signature)
        .body(body)
}
