//! A [`hyper::rt::Timer`] for long timeouts that almost never fire, such as
//! the HTTP/1.1 header-read timeout, which hyper arms anew for every
//! request on a connection (30 s) and drops as soon as the head is read.
//!
//! With tokio's timer each of those is an entry in tokio's timer wheel, and
//! because its deadline falls before the upstream's pending 60 s ones, the
//! runtime's driver is woken for it (an `eventfd` write): measured at about
//! half a system call and 0.6-0.9 µs of CPU per proxied request. Here a
//! sleep is a slot in a list behind a mutex; one tokio task per timer wakes
//! once a `tick` while any sleep is pending, and stops when none is. A
//! sleep completes on the first tick after its deadline: up to one `tick`
//! late, never early.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};

/// The timer; cheap to clone, clones share their sleeps and their ticker.
#[derive(Clone)]
pub struct CoarseTimer {
    shared: Arc<Shared>,
}

struct Shared {
    tick: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Pending sleeps by slot: their deadline and the waker to call.
    slots: Vec<Option<(Instant, Waker)>>,
    free: Vec<usize>,
    pending: usize,
    ticking: bool,
}

impl CoarseTimer {
    /// Sleeps complete at most `tick` after their deadline. The ticker
    /// runs on the tokio runtime the first pending sleep is polled on.
    pub fn new(tick: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                tick,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// How many sleeps are registered and not yet woken or dropped.
    pub fn pending(&self) -> usize {
        self.shared.lock().pending
    }
}

impl Timer for CoarseTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(CoarseSleep {
            shared: self.shared.clone(),
            deadline,
            slot: None,
        })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<CoarseSleep>() {
            // Keeps its slot: the next poll updates the deadline there.
            Some(mut s) => s.deadline = new_deadline,
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves nothing half-done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes every sleep whose deadline has passed, once a tick, until
    /// none is pending.
    async fn tick(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.tick).await;
            let now = Instant::now();
            let mut due = Vec::new();
            let done = {
                let mut state = self.lock();
                let State {
                    slots,
                    free,
                    pending,
                    ticking,
                } = &mut *state;
                for (i, slot) in slots.iter_mut().enumerate() {
                    if slot.as_ref().is_some_and(|(deadline, _)| *deadline <= now)
                        && let Some((_, waker)) = slot.take()
                    {
                        due.push(waker);
                        free.push(i);
                        *pending -= 1;
                    }
                }
                // Decided under the lock: a sleep registered after it
                // starts a new ticker.
                *ticking = *pending > 0;
                !*ticking
            };
            // Woken outside the lock.
            due.into_iter().for_each(Waker::wake);
            if done {
                return;
            }
        }
    }

    /// Frees slot `i` if it still holds a sleep.
    fn release(&self, i: usize) {
        let mut state = self.lock();
        if state.slots.get_mut(i).and_then(Option::take).is_some() {
            state.free.push(i);
            state.pending -= 1;
        }
    }
}

struct CoarseSleep {
    shared: Arc<Shared>,
    deadline: Instant,
    /// Its slot while it waits for a tick.
    slot: Option<usize>,
}

impl Future for CoarseSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if Instant::now() >= this.deadline {
            if let Some(i) = this.slot.take() {
                this.shared.release(i);
            }
            return Poll::Ready(());
        }
        let mut state = this.shared.lock();
        let entry = (this.deadline, cx.waker().clone());
        match this.slot {
            // Still registered: update it. The ticker may have woken it
            // (emptied the slot) since; then register again.
            Some(i) if state.slots.get(i).is_some_and(Option::is_some) => {
                state.slots[i] = Some(entry);
            }
            _ => {
                let i = match state.free.pop() {
                    Some(i) => {
                        state.slots[i] = Some(entry);
                        i
                    }
                    None => {
                        state.slots.push(Some(entry));
                        state.slots.len() - 1
                    }
                };
                state.pending += 1;
                this.slot = Some(i);
                if !state.ticking {
                    state.ticking = true;
                    tokio::spawn(this.shared.clone().tick());
                }
            }
        }
        Poll::Pending
    }
}

impl Drop for CoarseSleep {
    fn drop(&mut self) {
        if let Some(i) = self.slot.take() {
            self.shared.release(i);
        }
    }
}

impl Sleep for CoarseSleep {}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(20);

    #[tokio::test]
    async fn a_sleep_ends_after_its_deadline_within_a_tick() {
        let timer = CoarseTimer::new(TICK);
        let started = Instant::now();
        timer.sleep(Duration::from_millis(100)).await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(100), "{took:?}");
        assert!(took < Duration::from_millis(100) + 5 * TICK, "{took:?}");
        assert_eq!(timer.pending(), 0);
    }

    #[tokio::test]
    async fn a_dropped_sleep_leaves_nothing_and_the_ticker_stops() {
        let timer = CoarseTimer::new(TICK);
        let many: Vec<_> = (0..100)
            .map(|_| timer.sleep(Duration::from_secs(30)))
            .collect();
        let mut polled = Vec::new();
        for mut s in many {
            let pending = futures_poll_once(&mut s).await;
            assert!(pending);
            polled.push(s);
        }
        assert_eq!(timer.pending(), 100);
        drop(polled);
        assert_eq!(timer.pending(), 0);
        // The ticker ends at its next tick; a new sleep starts another.
        tokio::time::sleep(3 * TICK).await;
        assert!(!timer.shared.lock().ticking);
        timer.sleep(Duration::from_millis(30)).await;
        assert_eq!(timer.pending(), 0);
        // Slots are reused, not grown.
        assert!(timer.shared.lock().slots.len() <= 100);
    }

    #[tokio::test]
    async fn reset_moves_the_deadline() {
        let timer = CoarseTimer::new(TICK);
        let mut sleep = timer.sleep(Duration::from_secs(30));
        assert!(futures_poll_once(&mut sleep).await);
        let started = Instant::now();
        timer.reset(&mut sleep, Instant::now() + Duration::from_millis(50));
        sleep.await;
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(timer.pending(), 0);
    }

    /// Polls `sleep` once; whether it was pending.
    async fn futures_poll_once(sleep: &mut Pin<Box<dyn Sleep>>) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(sleep.as_mut().poll(cx).is_pending())).await
    }
}
