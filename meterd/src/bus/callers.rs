//! Admission of calls: two lanes, a cap per caller, and cancellation when
//! a caller leaves the bus.
//!
//! One shared pool of slots let one mail client wedge the meter (issue 11,
//! hole 3): 300 Postmark calls on pipes that never close took every slot,
//! and `Status` waited behind them. Here:
//! * calls go to one of two lanes, each with its own capacity: [`Lane::Sale`]
//!   (the calls that read a message or sell a piece) and [`Lane::Control`]
//!   (Status, Report, the other reads and administration), so the second
//!   never waits behind the first; properties take no slot at all;
//! * one uid may have at most `max_in_flight_per_caller` calls in flight in
//!   each lane; one more is refused at once with `Busy`, before it waits for
//!   anything or holds anything (its descriptor is dropped with the reply);
//! * every bus client (unique name) with calls in flight has a
//!   [`CancellationToken`], cancelled when the bus says the name left
//!   (`NameOwnerChanged` with no new owner), so that a read stuck on a
//!   descriptor ends when its client exits, not at the deadline. Unique
//!   names are never reused on a bus, so a name seen leaving before its
//!   first call was registered is remembered (a bounded list) and its calls
//!   start cancelled.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use zbus::Connection;

use meter_proto::MeterError;

/// Calls in the control lane at once (Status, Report, reads, administration).
pub const CONTROL_LANE_CAPACITY: usize = 64;

/// Departed unique names remembered (see the module doc).
const DEPARTED_KEPT: usize = 4096;

/// Which capacity a call uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Calls that read a message or sell: Postmark, PostmarkDigest,
    /// Postage, Validate, Sign, Pay.
    Sale,
    /// Everything else: Status, Report, reads and administration.
    Control,
}

impl Lane {
    fn name(self) -> &'static str {
        match self {
            Lane::Sale => "sale",
            Lane::Control => "control",
        }
    }
}

/// The registry of calls in flight. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Callers {
    inner: Arc<Inner>,
}

struct Inner {
    per_caller: usize,
    sale: Arc<Semaphore>,
    control: Arc<Semaphore>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Calls in flight per (uid, lane), including those waiting for a slot.
    in_flight: HashMap<(u32, Lane), usize>,
    /// Clients with calls in flight: their token and how many calls.
    names: HashMap<String, (CancellationToken, usize)>,
    /// Unique names the bus said left, newest last.
    departed: VecDeque<String>,
    departed_set: HashSet<String>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state holds counters only; a panic while holding it (there is
        // no code that can) would leave them usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A call admitted to its lane; releases its slot and its counts on drop.
pub struct CallGuard {
    ticket: Ticket,
    _permit: OwnedSemaphorePermit,
}

impl CallGuard {
    /// Fires when the caller leaves the bus: reads of its message stop.
    pub fn cancel(&self) -> &CancellationToken {
        &self.ticket.token
    }
}

/// The counts of one call, taken before it waits for a slot, so that a
/// caller's waiting calls count against its cap too.
struct Ticket {
    inner: Arc<Inner>,
    uid: u32,
    lane: Lane,
    unique: Option<String>,
    token: CancellationToken,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.inner.state();
        let key = (self.uid, self.lane);
        if let Some(n) = state.in_flight.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.in_flight.remove(&key);
            }
        }
        if let Some(name) = &self.unique {
            if let Some((_, n)) = state.names.get_mut(name) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    state.names.remove(name);
                }
            }
        }
    }
}

impl Callers {
    /// A registry with `sale_capacity` sale slots (`max_in_flight`) and at
    /// most `per_caller` calls per uid and lane (`max_in_flight_per_caller`).
    pub fn new(sale_capacity: usize, per_caller: usize) -> Callers {
        Callers {
            inner: Arc::new(Inner {
                per_caller: per_caller.max(1),
                sale: Arc::new(Semaphore::new(sale_capacity.max(1))),
                control: Arc::new(Semaphore::new(CONTROL_LANE_CAPACITY)),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Admits a call from `unique_name` (None on a peer-to-peer connection)
    /// of user `uid` to `lane`: refused at once with `Busy` when the user
    /// already has its cap of calls in flight there; otherwise waits for a
    /// slot of the lane (ending early if the caller leaves).
    pub async fn enter(
        &self,
        unique_name: Option<&str>,
        uid: u32,
        lane: Lane,
    ) -> Result<CallGuard, MeterError> {
        let ticket = self.ticket(unique_name, uid, lane)?;
        let sem = match lane {
            Lane::Sale => Arc::clone(&self.inner.sale),
            Lane::Control => Arc::clone(&self.inner.control),
        };
        let permit = tokio::select! {
            biased;
            _ = ticket.token.cancelled() => {
                return Err(MeterError::Busy("the caller left the bus".into()));
            }
            permit = sem.acquire_owned() => permit
                .map_err(|_| MeterError::Busy("the meter is shutting down".into()))?,
        };
        Ok(CallGuard {
            ticket,
            _permit: permit,
        })
    }

    fn ticket(&self, unique: Option<&str>, uid: u32, lane: Lane) -> Result<Ticket, MeterError> {
        let mut state = self.inner.state();
        let n = state.in_flight.entry((uid, lane)).or_insert(0);
        if *n >= self.inner.per_caller {
            let cap = self.inner.per_caller;
            tracing::warn!(
                uid,
                lane = lane.name(),
                cap,
                "call refused: caller at its cap"
            );
            return Err(MeterError::Busy(format!(
                "{cap} calls of uid {uid} are in flight in the {} lane, the most one user may have \
                 (max_in_flight_per_caller); retry when one has been answered",
                lane.name()
            )));
        }
        *n += 1;
        let token = match unique {
            Some(name) => {
                let departed = state.departed_set.contains(name);
                let (token, calls) = state
                    .names
                    .entry(name.to_owned())
                    .or_insert_with(|| (CancellationToken::new(), 0));
                *calls += 1;
                if departed {
                    token.cancel();
                }
                token.clone()
            }
            // Peer-to-peer: the connection is the caller; only the deadline
            // bounds its reads.
            None => CancellationToken::new(),
        };
        Ok(Ticket {
            inner: Arc::clone(&self.inner),
            uid,
            lane,
            unique: unique.map(str::to_owned),
            token,
        })
    }

    /// The bus says `name` left: cancel its calls, and remember it.
    pub fn departed(&self, name: &str) {
        let mut state = self.inner.state();
        if let Some((token, _)) = state.names.get(name) {
            tracing::info!(name, "caller left the bus; cancelling its calls");
            token.cancel();
        }
        if state.departed_set.insert(name.to_owned()) {
            state.departed.push_back(name.to_owned());
            while state.departed.len() > DEPARTED_KEPT {
                if let Some(old) = state.departed.pop_front() {
                    state.departed_set.remove(&old);
                }
            }
        }
    }

    /// Calls of `uid` in flight in `lane` (for tests).
    #[cfg(test)]
    pub fn in_flight(&self, uid: u32, lane: Lane) -> usize {
        self.inner
            .state()
            .in_flight
            .get(&(uid, lane))
            .copied()
            .unwrap_or(0)
    }

    /// Subscribes to `NameOwnerChanged` on `conn` and spawns the task that
    /// cancels the calls of clients that leave. Returns once the bus has
    /// the match rule, so no departure after it is missed. Fails on a
    /// peer-to-peer connection (no bus); calls then end at their deadline.
    pub async fn watch(&self, conn: &Connection) -> zbus::Result<()> {
        let proxy = zbus::fdo::DBusProxy::new(conn).await?;
        let mut stream = proxy.receive_name_owner_changed().await?;
        let callers = self.clone();
        tokio::spawn(async move {
            // The stream ends when the connection closes.
            while let Some(signal) = stream.next().await {
                let Ok(args) = signal.args() else { continue };
                if args.new_owner().is_none() && args.name().as_str().starts_with(':') {
                    callers.departed(args.name().as_str());
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn per_caller_cap_refuses_at_once_and_releases_on_drop() {
        let c = Callers::new(100, 2);
        let a = c.enter(Some(":1.1"), 1000, Lane::Sale).await.unwrap();
        let _b = c.enter(Some(":1.2"), 1000, Lane::Sale).await.unwrap();
        let e = c.enter(Some(":1.3"), 1000, Lane::Sale).await.err().unwrap();
        assert!(matches!(e, MeterError::Busy(_)), "{e:?}");
        // Another user, and the same user's control lane, are not affected.
        let _o = c.enter(Some(":1.4"), 1001, Lane::Sale).await.unwrap();
        let _s = c.enter(Some(":1.1"), 1000, Lane::Control).await.unwrap();
        assert_eq!(c.in_flight(1000, Lane::Sale), 2);
        drop(a);
        assert_eq!(c.in_flight(1000, Lane::Sale), 1);
        let _again = c.enter(Some(":1.3"), 1000, Lane::Sale).await.unwrap();
    }

    #[tokio::test]
    async fn a_full_sale_lane_does_not_hold_the_control_lane() {
        let c = Callers::new(1, 10);
        let _sale = c.enter(Some(":1.1"), 1, Lane::Sale).await.unwrap();
        let waiting = tokio::time::timeout(
            Duration::from_millis(100),
            c.enter(Some(":1.2"), 2, Lane::Sale),
        )
        .await;
        assert!(waiting.is_err(), "the second sale waits for the slot");
        assert_eq!(
            c.in_flight(2, Lane::Sale),
            0,
            "a dropped wait releases its count"
        );
        tokio::time::timeout(
            Duration::from_millis(100),
            c.enter(Some(":1.2"), 2, Lane::Control),
        )
        .await
        .expect("control lane answers at once")
        .unwrap();
    }

    #[tokio::test]
    async fn departure_cancels_running_and_waiting_calls() {
        let c = Callers::new(1, 10);
        let running = c.enter(Some(":1.7"), 5, Lane::Sale).await.unwrap();
        let c2 = c.clone();
        let waiting = tokio::spawn(async move { c2.enter(Some(":1.7"), 5, Lane::Sale).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!running.cancel().is_cancelled());
        c.departed(":1.7");
        assert!(running.cancel().is_cancelled());
        let r = waiting.await.unwrap();
        assert!(matches!(r, Err(MeterError::Busy(_))));
        // Another client is not touched.
        drop(running);
        let other = c.enter(Some(":1.8"), 5, Lane::Sale).await.unwrap();
        assert!(!other.cancel().is_cancelled());
    }

    #[tokio::test]
    async fn a_name_that_left_before_its_call_starts_cancelled() {
        let c = Callers::new(4, 4);
        c.departed(":1.9");
        let e = c.enter(Some(":1.9"), 5, Lane::Sale).await.err().unwrap();
        assert!(matches!(e, MeterError::Busy(_)), "{e:?}");
        assert_eq!(c.in_flight(5, Lane::Sale), 0);
    }

    #[tokio::test]
    async fn departed_names_are_bounded() {
        let c = Callers::new(4, 4);
        for i in 0..(DEPARTED_KEPT + 10) {
            c.departed(&format!(":1.{i}"));
        }
        let state = c.inner.state();
        assert_eq!(state.departed.len(), DEPARTED_KEPT);
        assert_eq!(state.departed_set.len(), DEPARTED_KEPT);
        assert!(!state.departed_set.contains(":1.0"));
    }
}
