//! The time controllers read: the system's, or (for end-to-end tests only, behind
//! `skiff server --fake-clock`) the system's plus an offset that an admin moves forward
//! with `POST /skiff/v1/clock`, waking whatever waits on the clock.
//!
//! A fake clock keeps flowing at the real rate between jumps, so a controller that
//! requeues with an ordinary timer for "the rest of the wait" still fires on time; a
//! jump additionally wakes it through [`Clock::jumps`].

use std::sync::{Arc, Mutex};

use jiff::{SignedDuration, Timestamp};
use tokio::sync::watch;

/// A clock: cheap to clone, shared by the API server and its controllers.
#[derive(Clone, Default)]
pub struct Clock {
    fake: Option<Arc<Fake>>,
}

/// How far a fake clock is ahead of the system's, and a channel that ticks on each jump.
struct Fake {
    offset: Mutex<SignedDuration>,
    jumped: watch::Sender<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClockError {
    #[error("the clock is the system's; start the server with --fake-clock to move it")]
    NotFake,
    #[error("the clock only moves forward: {0} is before its current time {1}")]
    Backwards(Timestamp, Timestamp),
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.fake {
            None => f.write_str("Clock::System"),
            Some(_) => write!(f, "Clock::Fake({})", self.now()),
        }
    }
}

impl Clock {
    /// The system's clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// A clock that starts at the system's time and that [`Clock::advance`] and
    /// [`Clock::set`] move forward. For tests only.
    pub fn fake() -> Clock {
        Clock {
            fake: Some(Arc::new(Fake {
                offset: Mutex::new(SignedDuration::ZERO),
                jumped: watch::Sender::new(0),
            })),
        }
    }

    pub fn is_fake(&self) -> bool {
        self.fake.is_some()
    }

    pub fn now(&self) -> Timestamp {
        let real = Timestamp::now();
        match &self.fake {
            None => real,
            Some(fake) => {
                let offset = *fake.offset.lock().unwrap_or_else(|p| p.into_inner());
                real.checked_add(offset).unwrap_or(Timestamp::MAX)
            }
        }
    }

    /// Moves a fake clock forward by `by` (negative moves are refused) and returns the
    /// new time.
    pub fn advance(&self, by: SignedDuration) -> Result<Timestamp, ClockError> {
        self.move_to(|now| now.checked_add(by).unwrap_or(Timestamp::MAX))
    }

    /// Moves a fake clock forward to `to` and returns it.
    pub fn set(&self, to: Timestamp) -> Result<Timestamp, ClockError> {
        self.move_to(|_| to)
    }

    /// Moves a fake clock to `target(its current time)`, read and moved under one lock
    /// so that real time passing in between cannot make a forward move look backward.
    fn move_to(
        &self,
        target: impl FnOnce(Timestamp) -> Timestamp,
    ) -> Result<Timestamp, ClockError> {
        let fake = self.fake.as_ref().ok_or(ClockError::NotFake)?;
        let to = {
            let mut offset = fake.offset.lock().unwrap_or_else(|p| p.into_inner());
            let real = Timestamp::now();
            let current = real.checked_add(*offset).unwrap_or(Timestamp::MAX);
            let to = target(current);
            if to < current {
                return Err(ClockError::Backwards(to, current));
            }
            *offset = to.duration_since(real);
            to
        };
        fake.jumped.send_modify(|n| *n += 1);
        Ok(to)
    }

    /// A receiver that changes each time a fake clock jumps; None for the system clock,
    /// which never does.
    pub fn jumps(&self) -> Option<watch::Receiver<u64>> {
        self.fake.as_ref().map(|f| f.jumped.subscribe())
    }

    /// Waits until the clock reads `deadline` or later, whether real time gets there or
    /// a jump does.
    pub async fn sleep_until(&self, deadline: Timestamp) {
        let mut jumps = self.jumps();
        loop {
            let left = deadline.duration_since(self.now());
            if left <= SignedDuration::ZERO {
                return;
            }
            let timer = tokio::time::sleep(left.unsigned_abs());
            match jumps.as_mut() {
                Some(rx) => {
                    tokio::select! {
                        _ = timer => {}
                        changed = rx.changed() => {
                            if changed.is_err() {
                                jumps = None;
                            }
                        }
                    }
                }
                None => timer.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_system_clock_cannot_be_moved() {
        let clock = Clock::system();
        assert!(!clock.is_fake());
        assert_eq!(
            clock.advance(SignedDuration::from_secs(60)),
            Err(ClockError::NotFake)
        );
        assert!(clock.jumps().is_none());
    }

    #[test]
    fn a_fake_clock_moves_forward_only() {
        let clock = Clock::fake();
        let start = clock.now();
        let later = clock.advance(SignedDuration::from_hours(3)).unwrap();
        assert!(later.duration_since(start) >= SignedDuration::from_hours(3));
        assert!(clock.now() >= later);
        assert!(matches!(clock.set(start), Err(ClockError::Backwards(..))));
        let target = later + SignedDuration::from_hours(24);
        assert_eq!(clock.set(target).unwrap(), target);
        assert!(clock.now() >= target);
    }

    #[tokio::test]
    async fn a_jump_wakes_a_sleeper() {
        let clock = Clock::fake();
        let deadline = clock.now() + SignedDuration::from_hours(1);
        let sleeper = tokio::spawn({
            let clock = clock.clone();
            async move { clock.sleep_until(deadline).await }
        });
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(SignedDuration::from_hours(2)).unwrap();
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("the jump wakes it")
            .unwrap();
    }
}
