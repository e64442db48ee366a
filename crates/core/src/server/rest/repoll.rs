//! Polls a connection again at once when it wakes itself during its own poll.
//!
//! When a handler takes a request's body, hyper's body channel tells the sender that there is
//! room again by waking the connection's task, from inside that task's poll. tokio treats a
//! task woken during its own poll as one that yielded: it goes to the back of the run queue
//! and an idle worker is woken to steal it. On a VM that wake-up of a halted vCPU costs tens of
//! µs, and every request with a body paid it: point reads through a `POST` endpoint over TCP
//! took 0.116-0.125 ms at p50 with two workers, 0.075 ms with one (nobody to wake) and 0.074
//! ms with [`Repoll`] (docs/performance.md, item 20). [`Repoll`] keeps such a wake inside the
//! task and polls the connection again in the same turn, a bounded number of times.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// How often one poll may poll the inner future again before the wake goes to the scheduler.
/// A request needs one; hyper itself yields (a self-wake too) after 16 rounds of reading and
/// writing on a busy connection, and more repolls would only delay the tasks waiting behind it.
const REPOLLS: usize = 2;

/// Not being polled: a wake goes to the task.
const IDLE: u8 = 0;
/// Being polled: a wake is noted and answered by polling again.
const POLLING: u8 = 1;
/// Woken while being polled.
const WOKEN: u8 = 2;

/// A future polled again at once when it woke itself while being polled.
pub(super) struct Repoll<F> {
    inner: Pin<Box<F>>,
    relay: Arc<Relay>,
    waker: Waker,
}

/// The waker the inner future sees.
#[derive(Debug)]
struct Relay {
    state: AtomicU8,
    /// The task's own waker, for wakes that come while the inner future is not being polled.
    task: Mutex<Option<Waker>>,
}

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        match self.state.compare_exchange(POLLING, WOKEN, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) | Err(WOKEN) => {}
            Err(_) => {
                if let Some(task) = &*self.task.lock().unwrap_or_else(PoisonError::into_inner) {
                    task.wake_by_ref();
                }
            }
        }
    }
}

impl<F: Future> Repoll<F> {
    pub(super) fn new(inner: F) -> Repoll<F> {
        let relay = Arc::new(Relay { state: AtomicU8::new(IDLE), task: Mutex::new(None) });
        let waker = Waker::from(relay.clone());
        Repoll { inner: Box::pin(inner), relay, waker }
    }

    /// The wrapped future (e.g. to start a graceful shutdown of a connection).
    pub(super) fn inner(&mut self) -> Pin<&mut F> {
        self.inner.as_mut()
    }
}

impl<F: Future> Future for Repoll<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        {
            let mut task = this.relay.task.lock().unwrap_or_else(PoisonError::into_inner);
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        let mut inner_cx = Context::from_waker(&this.waker);
        for _ in 0..=REPOLLS {
            this.relay.state.store(POLLING, Ordering::Release);
            let poll = this.inner.as_mut().poll(&mut inner_cx);
            // The swap closes the window in which a wake could be noted and then missed.
            let woken = this.relay.state.swap(IDLE, Ordering::AcqRel) == WOKEN;
            if poll.is_ready() || !woken {
                return poll;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Counts the wakes of the task.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Wakes itself in each of its first `wakes` polls, then is ready with the number of polls.
    struct SelfWaking {
        wakes: usize,
        polls: usize,
    }

    impl Future for SelfWaking {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            self.polls += 1;
            if self.polls > self.wakes {
                return Poll::Ready(self.polls);
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    fn poll_once<F: Future>(future: &mut Repoll<F>, count: &Arc<Count>) -> Poll<F::Output> {
        let waker = Waker::from(count.clone());
        Pin::new(future).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn a_wake_during_the_poll_is_answered_in_the_same_turn() {
        let count = Arc::new(Count::default());
        let mut future = Repoll::new(SelfWaking { wakes: REPOLLS, polls: 0 });
        assert_eq!(poll_once(&mut future, &count), Poll::Ready(REPOLLS + 1));
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "the task was never rescheduled");
    }

    #[test]
    fn a_future_that_keeps_waking_itself_goes_back_to_the_scheduler() {
        let count = Arc::new(Count::default());
        let mut future = Repoll::new(SelfWaking { wakes: usize::MAX, polls: 0 });
        assert_eq!(poll_once(&mut future, &count), Poll::Pending);
        assert_eq!(future.inner.polls, REPOLLS + 1);
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the task is woken once to run again later");
    }

    #[test]
    fn a_wake_between_polls_reaches_the_task() {
        let count = Arc::new(Count::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
        let mut future = Repoll::new(rx);
        assert!(poll_once(&mut future, &count).is_pending());
        tx.send(7).unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll_once(&mut future, &count), Poll::Ready(Ok(7)));
    }
}
