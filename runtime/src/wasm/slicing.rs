//! Time slices for running guests: the epoch callback makes every guest yield to tokio once
//! per slice, pauses it when its CPU budget is spent, and interrupts it when it is stopped.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use wasmtime::{Store, UpdateDeadline};

/// How far back the CPU limit looks: the budget refills continuously at the limit's rate and
/// holds at most this much time's worth, so after idling a guest may burst briefly, but over
/// any window of length T it runs at most `rate × (T + CPU_BURST_WINDOW)` plus one slice.
/// 100 ms (Linux CFS's default quota period) keeps a 1 s window within 10% of the limit
/// while pausing a throttled guest for short, frequent stretches rather than long ones.
const CPU_BURST_WINDOW: Duration = Duration::from_millis(100);

/// Marks "not inside a poll" in [`RunMeter::poll_started`].
const NOT_POLLING: u64 = u64::MAX;

/// Time a guest has actually run, measured around every poll of its future.
///
/// A guest's code (wasm and the synchronous part of host calls) only executes while the
/// future driving it is being polled; while it waits on a host future (sleep, I/O), on a
/// throttle pause or in the executor's queue, nobody polls it. So the wall time spent inside
/// `poll` is the guest's CPU time, give or take the host's own preemption of the worker
/// thread, which is counted too (an approximation that errs toward throttling).
#[derive(Debug)]
pub(crate) struct RunMeter {
    base: Instant,
    /// Nanoseconds spent in completed polls.
    busy_nanos: AtomicU64,
    /// Nanoseconds after `base` at which the current poll began, or `NOT_POLLING`.
    poll_started: AtomicU64,
    /// The container's total, which every completed poll is added to as well.
    usage: Option<Arc<super::GuestUsage>>,
}

impl RunMeter {
    /// A meter whose polls are also added to a container's usage.
    pub(crate) fn adding_to(usage: Option<Arc<super::GuestUsage>>) -> Arc<RunMeter> {
        Arc::new(RunMeter {
            base: Instant::now(),
            busy_nanos: AtomicU64::new(0),
            poll_started: AtomicU64::new(NOT_POLLING),
            usage,
        })
    }

    fn nanos_since_base(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// Running time so far, including the poll in progress (the epoch callback runs inside
    /// one).
    pub(crate) fn consumed(&self, now: Instant) -> Duration {
        let mut nanos = self.busy_nanos.load(Ordering::Relaxed);
        let started = self.poll_started.load(Ordering::Relaxed);
        if started != NOT_POLLING {
            nanos += self.nanos_since_base(now).saturating_sub(started);
        }
        Duration::from_nanos(nanos)
    }
}

/// Wraps the future that runs a guest and charges the time spent polling it to a meter.
pub(crate) struct Metered<'a, T> {
    inner: Pin<Box<dyn Future<Output = T> + Send + 'a>>,
    meter: Arc<RunMeter>,
}

impl<'a, T> Metered<'a, T> {
    pub(crate) fn new(
        inner: impl Future<Output = T> + Send + 'a,
        meter: Arc<RunMeter>,
    ) -> Metered<'a, T> {
        Metered {
            inner: Box::pin(inner),
            meter,
        }
    }
}

impl<T> Future for Metered<'_, T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let meter = Arc::clone(&self.meter);
        let start = meter.nanos_since_base(Instant::now());
        meter.poll_started.store(start, Ordering::Relaxed);
        let result = self.inner.as_mut().poll(cx);
        let end = meter.nanos_since_base(Instant::now());
        meter.poll_started.store(NOT_POLLING, Ordering::Relaxed);
        let spent = end.saturating_sub(start);
        meter.busy_nanos.fetch_add(spent, Ordering::Relaxed);
        if let Some(usage) = &meter.usage {
            usage.add_cpu(spent);
        }
        result
    }
}

/// A token bucket of CPU time, refilled at `rate` cores.
#[derive(Debug)]
pub(crate) struct CpuBudget {
    /// Cores (1.0 = one full core).
    rate: f64,
    /// Seconds of running time the guest may still use; negative when it owes time.
    credit: f64,
    capacity: f64,
    last_refill: Instant,
    /// Meter reading at the previous settlement.
    charged: Duration,
}

impl CpuBudget {
    /// `None` for no limit; 0 millicores also means none (as an unset Kubernetes limit).
    pub(crate) fn from_millicores(millicores: Option<u32>, now: Instant) -> Option<CpuBudget> {
        let millicores = millicores.filter(|m| *m > 0)?;
        let rate = f64::from(millicores) / 1000.0;
        let capacity = rate * CPU_BURST_WINDOW.as_secs_f64();
        Some(CpuBudget {
            rate,
            credit: capacity,
            capacity,
            last_refill: now,
            charged: Duration::ZERO,
        })
    }

    /// Charges the running time since the last settlement and returns how long the guest
    /// must pause to pay back any debt.
    pub(crate) fn settle(&mut self, consumed: Duration, now: Instant) -> Duration {
        let ran = consumed.saturating_sub(self.charged);
        self.charged = consumed;
        let refill = now
            .saturating_duration_since(self.last_refill)
            .as_secs_f64()
            * self.rate;
        self.last_refill = now;
        self.credit = (self.credit + refill).min(self.capacity) - ran.as_secs_f64();
        if self.credit >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.credit / self.rate)
        }
    }
}

/// The per-store state behind the epoch deadline callback.
pub(crate) struct Slicer {
    slice_ticks: u64,
    stop: CancellationToken,
    meter: Arc<RunMeter>,
    cpu: Option<CpuBudget>,
    /// Running time after which the guest is interrupted (one HTTP request's budget).
    cpu_deadline: Option<Duration>,
    interrupted: bool,
    timed_out: bool,
}

impl Slicer {
    pub(crate) fn new(
        slice_ticks: u64,
        stop: CancellationToken,
        meter: Arc<RunMeter>,
        cpu_limit_millicores: Option<u32>,
    ) -> Slicer {
        Slicer {
            slice_ticks: slice_ticks.max(1),
            stop,
            meter,
            cpu: CpuBudget::from_millicores(cpu_limit_millicores, Instant::now()),
            cpu_deadline: None,
            interrupted: false,
            timed_out: false,
        }
    }

    /// Interrupts the guest once it has run for `limit` (checked at slice boundaries).
    pub(crate) fn with_cpu_deadline(mut self, limit: Duration) -> Slicer {
        self.cpu_deadline = Some(limit);
        self
    }

    /// Whether the callback trapped the guest for running past its CPU deadline.
    pub(crate) fn timed_out(&self) -> bool {
        self.timed_out
    }

    /// Whether the callback trapped the guest because it was stopped.
    pub(crate) fn interrupted(&self) -> bool {
        self.interrupted
    }

    /// Sets the first deadline and the callback on a fresh store; `slicer` projects the
    /// store's data to this state.
    pub(crate) fn install<T: 'static>(store: &mut Store<T>, slicer: fn(&mut T) -> &mut Slicer) {
        let ticks = slicer(store.data_mut()).slice_ticks;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_callback(move |mut ctx| Ok(slicer(ctx.data_mut()).on_deadline()));
    }

    fn on_deadline(&mut self) -> UpdateDeadline {
        if self.stop.is_cancelled() {
            self.interrupted = true;
            return UpdateDeadline::Interrupt;
        }
        let now = Instant::now();
        let consumed = self.meter.consumed(now);
        if self.cpu_deadline.is_some_and(|limit| consumed >= limit) {
            self.timed_out = true;
            return UpdateDeadline::Interrupt;
        }
        let pause = match &mut self.cpu {
            Some(budget) => budget.settle(consumed, now),
            None => Duration::ZERO,
        };
        // Always yield, even with budget left: other guests and the agent's own tasks share
        // these worker threads, and a guest that never yields would starve them.
        let resume: Pin<Box<dyn Future<Output = ()> + Send>> = if pause.is_zero() {
            Box::pin(tokio::task::yield_now())
        } else {
            Box::pin(tokio::time::sleep(pause))
        };
        UpdateDeadline::YieldCustom(self.slice_ticks, resume)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn no_or_zero_millicores_means_unlimited() {
        assert!(CpuBudget::from_millicores(None, Instant::now()).is_none());
        assert!(CpuBudget::from_millicores(Some(0), Instant::now()).is_none());
    }

    #[test]
    fn a_spinner_at_100m_gets_a_tenth_of_the_time() {
        let start = Instant::now();
        let mut budget = CpuBudget::from_millicores(Some(100), start).expect("limited");
        let (mut now, mut consumed, mut ran) = (start, Duration::ZERO, Duration::ZERO);
        // Simulate 10 s of a guest that runs 10 ms slices and pauses as told.
        while now < start + 10 * 1000 * MS {
            now += 10 * MS;
            consumed += 10 * MS;
            ran += 10 * MS;
            now += budget.settle(consumed, now);
        }
        let share = ran.as_secs_f64() / now.duration_since(start).as_secs_f64();
        assert!((0.09..=0.11).contains(&share), "share {share}");
    }

    #[test]
    fn idle_time_refills_only_up_to_the_burst_window() {
        let start = Instant::now();
        let mut budget = CpuBudget::from_millicores(Some(500), start).expect("limited");
        // After a long idle stretch the guest may run 50 ms (500m × 100 ms) without pause...
        let later = start + 60_000 * MS;
        assert_eq!(budget.settle(50 * MS, later), Duration::ZERO);
        // ...and 10 ms more must be paid back at half a core: 20 ms.
        let pause = budget.settle(60 * MS, later);
        assert!(pause >= 19 * MS && pause <= 21 * MS, "pause {pause:?}");
    }

    #[tokio::test]
    async fn meter_counts_only_time_inside_poll() {
        let meter = RunMeter::adding_to(None);
        let work = async {
            std::thread::sleep(20 * MS); // "running"
            tokio::time::sleep(100 * MS).await; // suspended: not counted
            std::thread::sleep(20 * MS);
        };
        Metered::new(work, Arc::clone(&meter)).await;
        let consumed = meter.consumed(Instant::now());
        assert!(consumed >= 40 * MS && consumed < 90 * MS, "{consumed:?}");
    }
}
