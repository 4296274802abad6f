//! Admission control for the routes that run a model outside the chat scheduler
//! (`/v1/moderations`, `/v1/guard/moderate`, `/v1/compress`, the released compression route,
//! `/pooling`): a bounded number of jobs run at once, a bounded number wait, the rest get 429 at
//! once; a request names at most `max_items` inputs (400 beyond). Chat has the same shape of
//! control in the scheduler (queue, 429, KV budget); these models batch a request's inputs in
//! one forward pass, so the item cap bounds a job's memory as the KV budget bounds chat's.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::StatusCode;
use axum::response::Response;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api_error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Jobs that run at once (they share the CPU with chat, so one by default).
    pub running: usize,
    /// Jobs that may wait for a slot; more get 429.
    pub waiting: usize,
    /// Inputs one request may carry (moderation inputs or conversations, compression batch).
    pub max_items: usize,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            running: 1,
            waiting: 16,
            max_items: 64,
        }
    }
}

/// Why the gate turned a request away; each route renders it in its own shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
    /// The request field at fault (too many items).
    pub param: Option<String>,
}

impl Refusal {
    /// The OpenAI-shaped error.
    pub fn openai(&self) -> Response {
        let code = (self.status == StatusCode::TOO_MANY_REQUESTS).then_some("rate_limit_exceeded");
        api_error(self.status, &self.message, self.param.as_deref(), code)
    }
}

/// The gate shared by every model route of one server.
#[derive(Debug, Clone)]
pub struct Admission {
    config: AdmissionConfig,
    slots: Arc<Semaphore>,
    /// Running plus waiting jobs.
    admitted: Arc<AtomicUsize>,
}

/// A job's place: its slot is freed when this drops.
#[derive(Debug)]
pub struct Admitted {
    _slot: OwnedSemaphorePermit,
    admitted: Arc<AtomicUsize>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admitted.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Decrements the count if the request gives up (client gone) while waiting.
struct Waiting(Option<Arc<AtomicUsize>>);

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(a) = self.0.take() {
            a.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Admission {
    pub fn new(config: AdmissionConfig) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(config.running.max(1))),
            admitted: Arc::default(),
            config,
        }
    }

    pub fn config(&self) -> AdmissionConfig {
        self.config
    }

    /// Jobs running or waiting now.
    pub fn admitted(&self) -> usize {
        self.admitted.load(Ordering::SeqCst)
    }

    /// 400 when a request carries more than `max_items` inputs; `param` names the field.
    pub fn check_items(&self, count: usize, param: &str) -> Result<(), Refusal> {
        if count > self.config.max_items {
            return Err(Refusal {
                status: StatusCode::BAD_REQUEST,
                message: format!(
                    "`{param}` has {count} items; this server takes at most {} per request",
                    self.config.max_items
                ),
                param: Some(param.into()),
            });
        }
        Ok(())
    }

    /// A job of `count` inputs (field `param`): refused when it carries too many, else
    /// [`Admission::enter`].
    pub async fn admit(&self, count: usize, param: &str) -> Result<Admitted, Refusal> {
        self.check_items(count, param)?;
        self.enter().await
    }

    /// Waits for a slot, or answers 429 at once when the queue is full.
    pub async fn enter(&self) -> Result<Admitted, Refusal> {
        let limit = self.config.running.max(1) + self.config.waiting;
        let before = self.admitted.fetch_add(1, Ordering::SeqCst);
        let mut waiting = Waiting(Some(self.admitted.clone()));
        if before >= limit {
            return Err(Refusal {
                status: StatusCode::TOO_MANY_REQUESTS,
                message: format!(
                    "the server is busy ({before} model jobs running or queued); retry later"
                ),
                param: None,
            });
        }
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        Ok(Admitted {
            _slot: slot,
            admitted: waiting.0.take().expect("still counted"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_is_429_and_slots_come_back() {
        let gate = Admission::new(AdmissionConfig {
            running: 1,
            waiting: 1,
            max_items: 2,
        });
        let first = gate.enter().await.unwrap();
        // The second waits for the first's slot.
        let g = gate.clone();
        let second = tokio::spawn(async move { g.enter().await.map(|_| ()) });
        tokio::task::yield_now().await;
        while gate.admitted() < 2 {
            tokio::task::yield_now().await;
        }
        let third = gate.enter().await.unwrap_err();
        assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(third.openai().status(), StatusCode::TOO_MANY_REQUESTS);
        drop(first);
        second.await.unwrap().unwrap();
        assert_eq!(gate.admitted(), 0, "every slot is back");
        assert!(gate.enter().await.is_ok());
        assert!(gate.check_items(2, "input").is_ok());
        let too_many = gate.check_items(3, "input").unwrap_err();
        assert_eq!(
            (too_many.status, too_many.param.as_deref()),
            (StatusCode::BAD_REQUEST, Some("input"))
        );
    }

    #[tokio::test]
    async fn a_request_that_gives_up_while_waiting_frees_its_place() {
        let gate = Admission::new(AdmissionConfig {
            running: 1,
            waiting: 1,
            max_items: 1,
        });
        let held = gate.enter().await.unwrap();
        let g = gate.clone();
        let waiter = tokio::spawn(async move { g.enter().await.map(|_| ()) });
        while gate.admitted() < 2 {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(gate.admitted(), 1);
        drop(held);
        assert_eq!(gate.admitted(), 0);
    }
}
