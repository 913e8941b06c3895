//! How the gateway treats the control plane's answers: which failures mean
//! "no answer" (the request may or may not have been applied, so it is
//! retried), and the retry loop for requests a job cannot go on without.

use std::future::Future;
use std::time::Duration;

use crate::job_context::Shutdown;

/// No answer, or an answer that says "try again" (transport error, 5xx,
/// 408, 429): the request may or may not have been applied.
pub fn is_unanswered(e: &panorama_supabase::Error) -> bool {
    matches!(e, panorama_supabase::Error::Transport { .. })
        || e.status().is_some_and(|s| s >= 500 || s == 408 || s == 429)
}

/// Runs a hub request (a write, or a read) again while the hub gives no
/// answer, with a capped backoff, until it answers or the gateway asks its
/// jobs to stop: a blip of the hub must not fail a run that has not started
/// yet, nor a cancel. Returns the last result and whether an earlier attempt
/// went unanswered (it may have been applied).
pub async fn retry_unanswered<T, Fut>(
    shutdown: &Shutdown,
    what: &str,
    mut op: impl FnMut() -> Fut,
) -> (Result<T, panorama_supabase::Error>, bool)
where
    Fut: Future<Output = Result<T, panorama_supabase::Error>>,
{
    let mut delay = Duration::from_millis(100);
    let mut unanswered = false;
    loop {
        match op().await {
            Err(e) if is_unanswered(&e) && shutdown.reason().is_none() => {
                tracing::warn!(error = %e, request = what, delay_ms = delay.as_millis() as u64, "Hub request got no answer; retrying");
                unanswered = true;
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.requested() => return (Err(e), unanswered),
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            result => return (result, unanswered),
        }
    }
}
