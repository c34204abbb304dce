//! One HTTP connection per request in flight, and none opened idle.
//!
//! reqwest (hyper-util's pool) answers a request that finds no idle connection by racing a
//! new connection against one that another request is giving back; when the give-back wins,
//! the new connection is still opened and parked idle, without a request. The give-back is
//! a task of its own that runs just after an answer's last byte, and a drain sends its next
//! reading right then: a pool shared by the drain races all the time. A threaded server
//! gives every accepted connection a thread until its first request arrives (gunicorn's
//! gthread waits up to 5 s, older releases until the client sends or closes; a sync worker
//! blocks its whole process until the arbiter's timeout kills it, 30 s by default):
//! after an outage, a fleet's idle connections held every thread of the test server's 2 x 4
//! for seconds at a time, the server idle with 20-50 requests waiting (BENCHMARKS, issue 12
//! E).
//!
//! So each request takes a lane: a client of its own, used by one request at a time, whose
//! pool keeps at most its one connection. A lane given back rests for [`REST`] (for its
//! connection's own give-back to finish) before it is taken again: a request that finds no
//! rested lane gets a new one, whose connection carries that request at once. Among the
//! rested lanes the one given back last is taken: a gateway sending a reading every few
//! seconds keeps using one connection, kept alive.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a lane rests after its request: far longer than hyper takes to put the
/// connection back in the lane's pool (microseconds), and short enough that a drain of a
/// few hundred readings a second needs only a few lanes more than its requests in flight.
pub(super) const REST: Duration = Duration::from_millis(10);
/// The most lanes built while some are free; past it a lane still resting is taken (and
/// may race as reqwest alone would). Well above `upload.max_concurrency`'s default (32) and the token calls.
pub(super) const MAX_LANES: usize = 96;

/// How to build one more lane's client (for [`super::Api`], a `reqwest::Client`: each has
/// a connection pool of its own).
pub(super) type Recipe<C> = dyn Fn() -> Result<C, String> + Send + Sync;

/// The lanes of one [`super::Api`].
pub(super) struct Lanes<C> {
    recipe: Box<Recipe<C>>,
    /// The first client built: lent when a new lane cannot be built (it could once, so
    /// this does not happen), sharing its pool as reqwest alone would.
    spare: C,
    rest: Duration,
    max: usize,
    state: Mutex<Free<C>>,
}

struct Free<C> {
    /// The lanes not in use with when each was given back (never: the first, rested from
    /// the start), the oldest first.
    lanes: Vec<(Option<Instant>, C)>,
    built: usize,
}

impl<C: Clone> Lanes<C> {
    /// Lanes built by `recipe`, which is called once now: its error is the caller's.
    pub(super) fn new(recipe: Box<Recipe<C>>) -> Result<Arc<Lanes<C>>, String> {
        Lanes::with(recipe, REST, MAX_LANES)
    }

    fn with(recipe: Box<Recipe<C>>, rest: Duration, max: usize) -> Result<Arc<Lanes<C>>, String> {
        let first = recipe()?;
        Ok(Arc::new(Lanes {
            recipe,
            spare: first.clone(),
            rest,
            max,
            state: Mutex::new(Free {
                lanes: vec![(None, first)],
                built: 1,
            }),
        }))
    }

    /// A lane for one request.
    pub(super) fn take(self: &Arc<Self>) -> Lane<C> {
        let client = self.pick(Instant::now());
        Lane {
            client: Some(client),
            home: Arc::clone(self),
        }
    }

    fn pick(&self, now: Instant) -> C {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        // Kept in the order given back: the rested ones are the first `rested` of the list.
        let rested = state.lanes.partition_point(|(back, _)| {
            back.is_none_or(|back| now.saturating_duration_since(back) >= self.rest)
        });
        if rested > 0 {
            return state.lanes.remove(rested - 1).1;
        }
        if state.built < self.max || state.lanes.is_empty() {
            state.built += 1;
            drop(state);
            return (self.recipe)().unwrap_or_else(|_| self.spare.clone());
        }
        state.lanes.remove(0).1
    }

    fn give_back(&self, client: C, now: Instant) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        // In order even when two requests ending at once take the lock in the other order.
        let at = state.lanes.partition_point(|(back, _)| *back <= Some(now));
        state.lanes.insert(at, (Some(now), client));
    }
}

/// A client lent to one request; given back when dropped, once the request is over.
pub(super) struct Lane<C: Clone> {
    client: Option<C>,
    home: Arc<Lanes<C>>,
}

impl<C: Clone> std::ops::Deref for Lane<C> {
    type Target = C;
    fn deref(&self) -> &C {
        // Only `drop` takes the client out.
        self.client.as_ref().unwrap_or(&self.home.spare)
    }
}

impl<C: Clone> Drop for Lane<C> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            self.home.give_back(client, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    const HOUR: Duration = Duration::from_secs(3600);

    /// Lanes whose clients are numbers, in the order they were built.
    fn numbered(rest: Duration, max: usize) -> Arc<Lanes<u32>> {
        let built = AtomicU32::new(0);
        Lanes::with(
            Box::new(move || Ok(built.fetch_add(1, Ordering::SeqCst))),
            rest,
            max,
        )
        .unwrap()
    }

    fn built(lanes: &Lanes<u32>) -> usize {
        lanes.state.lock().unwrap().built
    }

    #[test]
    fn requests_in_flight_at_once_each_have_a_lane() {
        let lanes = numbered(Duration::ZERO, 8);
        let (a, b, c) = (lanes.take(), lanes.take(), lanes.take());
        assert_eq!((*a, *b, *c), (0, 1, 2), "three at once: three clients");
        drop((a, b, c));
        for _ in 0..10 {
            let _one = lanes.take();
        }
        let (x, y) = (lanes.take(), lanes.take());
        assert_ne!(*x, *y, "two at once never share a client");
        assert_eq!(
            built(&lanes),
            3,
            "rested at once: never more than were in flight"
        );
    }

    #[test]
    fn a_lane_just_given_back_is_not_taken_again_a_new_one_is() {
        // With an hour's rest, "just" is certain however slow the machine.
        let lanes = numbered(HOUR, 8);
        let first = *lanes.take();
        assert_eq!(first, 0, "the lane built at the start is rested");
        let second = *lanes.take();
        assert_ne!(second, first, "the first is still resting: a new lane");
        assert_eq!(built(&lanes), 2);
    }

    #[test]
    fn the_rested_lane_given_back_last_is_taken_so_a_slow_sender_keeps_one_connection() {
        let lanes = numbered(HOUR, 8);
        let t0 = Instant::now();
        let (a, b, c) = (lanes.take(), lanes.take(), lanes.take());
        let (na, nb, nc) = (*a, *b, *c);
        // Lent clients, given back in the order c, a, b (the Drop of a lane does the same
        // with the time of its drop).
        std::mem::forget((a, b, c));
        lanes.give_back(nc, t0);
        lanes.give_back(na, t0 + Duration::from_secs(1));
        lanes.give_back(nb, t0 + Duration::from_secs(2));
        // Two hours on all three have rested: the last given back (b) comes first.
        let later = t0 + 2 * HOUR;
        assert_eq!(lanes.pick(later), nb);
        assert_eq!(lanes.pick(later), na);
        assert_eq!(lanes.pick(later), nc);
        // At a moment when only c (given back first) has rested, c is taken.
        lanes.give_back(nc, t0);
        lanes.give_back(na, t0 + 2 * HOUR);
        assert_eq!(lanes.pick(t0 + HOUR + Duration::from_secs(1)), nc);
    }

    #[test]
    fn lanes_given_back_out_of_order_are_kept_in_the_order_of_their_times() {
        // Two requests end at once and take the lock in the other order than their times.
        let lanes = numbered(HOUR, 8);
        let t0 = Instant::now();
        let (a, b) = (lanes.take(), lanes.take());
        let (na, nb) = (*a, *b);
        std::mem::forget((a, b));
        lanes.give_back(nb, t0 + Duration::from_secs(2));
        lanes.give_back(na, t0 + Duration::from_secs(1));
        // Only a (given back at 1 s) has rested an hour at 1 h 1.5 s.
        assert_eq!(lanes.pick(t0 + HOUR + Duration::from_millis(1500)), na);
        assert_eq!(lanes.pick(t0 + 2 * HOUR), nb);
    }

    #[test]
    fn past_the_most_lanes_the_oldest_is_taken_even_resting() {
        let lanes = numbered(HOUR, 2);
        let t0 = Instant::now();
        let (a, b) = (lanes.take(), lanes.take());
        let (na, nb) = (*a, *b);
        std::mem::forget((a, b));
        lanes.give_back(na, t0 + Duration::from_secs(5));
        lanes.give_back(nb, t0 + Duration::from_secs(6));
        assert_eq!(lanes.pick(t0 + Duration::from_secs(7)), na);
        assert_eq!(built(&lanes), 2, "no third lane");
    }

    #[test]
    fn a_recipe_that_fails_later_lends_the_spare() {
        let calls = AtomicU32::new(0);
        let lanes = Lanes::with(
            Box::new(move || match calls.fetch_add(1, Ordering::SeqCst) {
                0 => Ok(7u32),
                _ => Err("no more".to_string()),
            }),
            Duration::ZERO,
            8,
        )
        .unwrap();
        let (a, b) = (lanes.take(), lanes.take());
        assert_eq!(
            (*a, *b),
            (7, 7),
            "the second request shares the first client"
        );
        drop((a, b));
        // The spare is given back as a lane too: later requests still find a client.
        assert_eq!(lanes.state.lock().unwrap().lanes.len(), 2);
    }

    #[test]
    fn a_recipe_that_fails_at_once_is_the_callers_error() {
        let lanes = Lanes::<u32>::new(Box::new(|| Err("no TLS".to_string())));
        assert_eq!(lanes.err(), Some("no TLS".to_string()));
    }
}
