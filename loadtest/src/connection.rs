//! One connection's life: send the prebuilt request on its schedule (open loop) or back to back
//! (closed loop) until the run's end, redialling when the server closes or breaks the
//! connection, and record every exchange in the connection's own tally.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::{sleep_until, timeout, Instant};

use crate::spec::{Mode, Protocol};
use crate::tally::{ErrorKind, Outcome, Tally, Window};
use crate::target::{Body, Target};

/// After a failed dial in closed loop, wait this long before the next one, so that a dead
/// target costs a few hundred attempts a second instead of a busy loop. (Open loop needs no
/// pause: each scheduled request makes one attempt.)
const REDIAL_PAUSE: Duration = Duration::from_millis(10);

/// What every connection of a run shares.
pub(crate) struct Plan {
    pub(crate) target: Arc<Target>,
    pub(crate) protocol: Protocol,
    pub(crate) mode: Mode,
    pub(crate) connections: usize,
    pub(crate) timeout: Duration,
    pub(crate) window: Window,
    /// Exchanges finished so far, all phases; only kept when a progress bar shows it.
    pub(crate) finished: Option<Arc<AtomicU64>>,
}

// === impl Link ===

/// An open client connection: the handle to send on and the task that drives its I/O.
pub(crate) struct Link {
    sender: Sender,
    driver: AbortHandle,
}

enum Sender {
    Http1(http1::SendRequest<Body>),
    Http2(http2::SendRequest<Body>),
}

impl Link {
    /// Connects (TCP_NODELAY) and handshakes, within `limit`.
    pub(crate) async fn dial(
        target: &Target,
        protocol: Protocol,
        limit: Duration,
    ) -> io::Result<Link> {
        match timeout(limit, Link::dial_now(target, protocol)).await {
            Ok(link) => link,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        }
    }

    async fn dial_now(target: &Target, protocol: Protocol) -> io::Result<Link> {
        let stream = TcpStream::connect(target.addr).await?;
        stream.set_nodelay(true)?;
        let io = TokioIo::new(stream);
        let link = match protocol {
            Protocol::Http1 => {
                let (sender, connection) = http1::handshake(io).await.map_err(io::Error::other)?;
                Link {
                    sender: Sender::Http1(sender),
                    driver: tokio::spawn(connection).abort_handle(),
                }
            }
            Protocol::Http2 => {
                let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(io::Error::other)?;
                Link {
                    sender: Sender::Http2(sender),
                    driver: tokio::spawn(connection).abort_handle(),
                }
            }
        };
        Ok(link)
    }

    /// Sends `request` and reads the whole answer (or fails) within `limit`.
    async fn exchange(&mut self, request: Request<Body>, limit: Duration) -> Outcome {
        let answer = async {
            match &mut self.sender {
                Sender::Http1(sender) => read_answer(sender.send_request(request).await?).await,
                Sender::Http2(sender) => read_answer(sender.send_request(request).await?).await,
            }
        };
        outcome(timeout(limit, answer).await)
    }

    /// Waits until the connection can take a request; false if it has closed meanwhile (an
    /// HTTP/1.1 server may close after any answer, and that is no error).
    async fn ready(&mut self) -> bool {
        match &mut self.sender {
            Sender::Http1(sender) => sender.ready().await.is_ok(),
            Sender::Http2(sender) => sender.ready().await.is_ok(),
        }
    }

    fn is_closed(&self) -> bool {
        match &self.sender {
            Sender::Http1(sender) => sender.is_closed(),
            Sender::Http2(sender) => sender.is_closed(),
        }
    }
}

impl Drop for Link {
    /// A dropped link closes its socket now, even if the server never answers.
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Reads the body to its end, frame by frame, without keeping it; returns the status.
async fn read_answer(response: Response<Incoming>) -> hyper::Result<u16> {
    let status = response.status().as_u16();
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        frame?;
    }
    Ok(status)
}

fn outcome(result: Result<hyper::Result<u16>, tokio::time::error::Elapsed>) -> Outcome {
    match result {
        Ok(Ok(status)) => Outcome::Answered(status),
        Ok(Err(_)) => Outcome::Failed(ErrorKind::Io),
        Err(_) => Outcome::Failed(ErrorKind::Timeout),
    }
}

// === impl Schedule ===

/// Open-loop send times of one connection: connection `i` of `n` at a total `rate` sends at
/// `start + (k + i/n) * n/rate`, so the connections interleave evenly.
///
/// Latency counts from the scheduled time, so a request held back by a slow answer to the one
/// before it (HTTP/1.1 sends one at a time) is charged the wait: the coordinated-omission
/// correction. The generator's own delays are not charged: tokio's timer rounds every sleep up
/// to the next millisecond, and a request sent 0.7 ms late for that reason (or stuck behind a
/// predecessor that was) would show 0.7 ms the target never spent. So the schedule tracks when
/// each request would have been sent by a punctual generator, and clocks it from its
/// scheduled time plus the generator's share of the delay.
struct Schedule {
    first: Instant,
    interval_secs: f64,
    next: u64,
    /// When the previous request would have ended, had the generator been punctual.
    free_on_time: Instant,
}

impl Schedule {
    fn new(window: &Window, rate: f64, index: usize, connections: usize) -> Self {
        let interval_secs = connections as f64 / rate;
        let offset = interval_secs * index as f64 / connections as f64;
        Schedule {
            first: window.start + Duration::from_secs_f64(offset),
            interval_secs,
            next: 0,
            free_on_time: window.start,
        }
    }

    /// How many sends from the `next_due` just taken up to `end` (all of them, itself
    /// included) fall in the measured period: the ones a generator that is out of time never
    /// sends.
    fn left_before(&self, window: &Window) -> u64 {
        let at = |k: u64| self.first + Duration::from_secs_f64(k as f64 * self.interval_secs);
        (self.next.saturating_sub(1)..)
            .map(at)
            .take_while(|due| *due < window.end)
            .filter(|due| *due >= window.measure_from)
            .count() as u64
    }

    /// The next send time; computed from `first` each time so rounding never accumulates.
    fn next_due(&mut self) -> Instant {
        let due = self.first + Duration::from_secs_f64(self.next as f64 * self.interval_secs);
        self.next += 1;
        due
    }

    /// Waits for send time `due` (not at all if it has passed) and starts the request's clock.
    async fn wait(&self, due: Instant) -> Slot {
        if Instant::now() < due {
            sleep_until(due).await;
        }
        let punctual = due.max(self.free_on_time);
        let generator_delay = Instant::now().saturating_duration_since(punctual);
        Slot {
            due,
            clock: due + generator_delay,
        }
    }

    /// Notes that the request of `slot` ended at `done`, for the next [`Schedule::wait`].
    fn finished(&mut self, slot: Slot, done: Instant) {
        self.free_on_time = done - (slot.clock - slot.due);
    }
}

// === impl Slot ===

/// When a request was due, and where its latency clock starts: in closed loop both are the
/// moment it is sent; in open loop see [`Schedule`].
#[derive(Clone, Copy, Debug)]
struct Slot {
    due: Instant,
    clock: Instant,
}

impl Slot {
    fn now() -> Slot {
        let now = Instant::now();
        Slot {
            due: now,
            clock: now,
        }
    }
}

// === impl Connection ===

/// One connection's loop state.
struct Connection {
    plan: Arc<Plan>,
    link: Option<Link>,
    tally: Tally,
}

/// Runs connection `index` until the end of the run and returns what it recorded.
/// `link` is the connection opened up front, if that dial succeeded.
pub(crate) async fn drive(plan: Arc<Plan>, index: usize, link: Option<Link>) -> Tally {
    let schedule = match plan.mode {
        Mode::OpenLoop { rate } => Some(Schedule::new(&plan.window, rate, index, plan.connections)),
        Mode::ClosedLoop => None,
    };
    let mut connection = Connection {
        plan,
        link,
        tally: Tally::new(),
    };
    match (schedule, connection.plan.protocol) {
        (Some(schedule), Protocol::Http2) => connection.multiplexed(schedule).await,
        (schedule, _) => connection.sequential(schedule).await,
    }
    connection.tally
}

impl Connection {
    /// One exchange at a time: HTTP/1.1 always, HTTP/2 in closed loop. In open loop a request
    /// whose time passed while the previous one was still out goes at once, and its latency
    /// still counts from its scheduled time (see [`Schedule`]).
    async fn sequential(&mut self, mut schedule: Option<Schedule>) {
        let end = self.plan.window.end;
        loop {
            let slot = match &mut schedule {
                Some(schedule) => {
                    let due = schedule.next_due();
                    if due >= end {
                        break;
                    }
                    if Instant::now() >= end {
                        // Behind a target slower than the rate: what is still due is never
                        // sent, so the run ends on time; it is counted as missed (as wrk2).
                        self.tally.missed += schedule.left_before(&self.plan.window);
                        break;
                    }
                    schedule.wait(due).await
                }
                None => Slot::now(),
            };
            if slot.due >= end {
                break;
            }
            let outcome = self.exchange().await;
            let done = Instant::now();
            self.record(slot, done, outcome);
            if let Some(schedule) = &mut schedule {
                schedule.finished(slot, done);
            }
            if schedule.is_none() && outcome == Outcome::Failed(ErrorKind::Connect) {
                sleep_until((Instant::now() + REDIAL_PAUSE).min(end)).await;
            }
        }
    }

    /// HTTP/2 open loop: every scheduled request goes out on time as its own stream, however
    /// many are still unanswered; answers are recorded as they come in.
    async fn multiplexed(&mut self, mut schedule: Schedule) {
        let end = self.plan.window.end;
        let mut in_flight: JoinSet<(Slot, Outcome, Instant)> = JoinSet::new();
        loop {
            let due = schedule.next_due();
            if due >= end {
                break;
            }
            if Instant::now() >= end {
                self.tally.missed += schedule.left_before(&self.plan.window);
                break;
            }
            // Streams never wait for one another, so `free_on_time` stays at the start and any
            // lateness here is the generator's own.
            let slot = schedule.wait(due);
            tokio::pin!(slot);
            let slot = loop {
                tokio::select! {
                    biased;
                    slot = &mut slot => break slot,
                    Some(joined) = in_flight.join_next() => self.record_joined(joined),
                }
            };
            let Some(Sender::Http2(sender)) = self.open_link().await.map(|link| &link.sender)
            else {
                self.record(slot, Instant::now(), Outcome::Failed(ErrorKind::Connect));
                continue;
            };
            let mut sender = sender.clone();
            let request = self.plan.target.request();
            let limit = self.plan.timeout;
            in_flight.spawn(async move {
                let answer = async { read_answer(sender.send_request(request).await?).await };
                let outcome = outcome(timeout(limit, answer).await);
                (slot, outcome, Instant::now())
            });
        }
        while let Some(joined) = in_flight.join_next().await {
            self.record_joined(joined);
        }
    }

    /// Sends one request on the open link (dialling first if there is none), reading the whole
    /// answer. A link that failed or timed out is dropped: an HTTP/1.1 connection with an
    /// unread answer cannot carry the next request.
    async fn exchange(&mut self) -> Outcome {
        let request = self.plan.target.request();
        let (limit, protocol) = (self.plan.timeout, self.plan.protocol);
        let Some(link) = self.open_link().await else {
            return Outcome::Failed(ErrorKind::Connect);
        };
        let outcome = link.exchange(request, limit).await;
        let broken = match outcome {
            Outcome::Answered(_) => false,
            Outcome::Failed(_) => protocol == Protocol::Http1 || link.is_closed(),
        };
        if broken {
            self.link = None;
        }
        outcome
    }

    /// The open link, redialled if the server closed the previous one; `None` if dialling failed.
    async fn open_link(&mut self) -> Option<&mut Link> {
        if let Some(link) = &mut self.link {
            if !link.ready().await {
                self.link = None;
            }
        }
        if self.link.is_none() {
            let plan = &self.plan;
            self.link = Link::dial(&plan.target, plan.protocol, plan.timeout)
                .await
                .ok();
        }
        self.link.as_mut()
    }

    fn record_joined(&mut self, joined: Result<(Slot, Outcome, Instant), tokio::task::JoinError>) {
        match joined {
            Ok((slot, outcome, done)) => self.record(slot, done, outcome),
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => {}
        }
    }

    fn record(&mut self, slot: Slot, done: Instant, outcome: Outcome) {
        if let Some(finished) = &self.plan.finished {
            finished.fetch_add(1, Ordering::Relaxed);
        }
        if self.plan.window.records(slot.due, done) {
            self.tally
                .record(outcome, done.saturating_duration_since(slot.clock));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// One connection at 100 requests/second: due every 10 ms from now.
    fn schedule() -> (Instant, Schedule) {
        let start = Instant::now();
        let window = Window::new(start, Duration::ZERO, Duration::from_secs(1));
        (start, Schedule::new(&window, 100.0, 0, 1))
    }

    #[tokio::test(start_paused = true)]
    async fn sends_left_at_the_end_are_counted_within_the_measured_period_only() {
        let start = Instant::now();
        // 1 s warm-up, 1 s measured, 10 requests/second: sends at 0, 100, …, 1900 ms.
        let window = Window::new(start, Duration::from_secs(1), Duration::from_secs(1));
        let mut schedule = Schedule::new(&window, 10.0, 0, 1);
        for _ in 0..5 {
            schedule.next_due();
        }
        // Taken: the send at 400 ms. Of 400…1900 ms, the ten at 1000…1900 ms are measured.
        assert_eq!(schedule.left_before(&window), 10);
        for _ in 0..10 {
            schedule.next_due();
        }
        // Taken: 1400 ms; left: 1400…1900 ms.
        assert_eq!(schedule.left_before(&window), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn connections_interleave_evenly_over_the_interval() {
        let start = Instant::now();
        let window = Window::new(start, Duration::ZERO, Duration::from_secs(1));
        let mut second = Schedule::new(&window, 200.0, 1, 2);
        assert_eq!(second.next_due(), start + 5 * MS);
        assert_eq!(second.next_due(), start + 15 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn request_held_back_by_a_slow_answer_is_clocked_from_its_scheduled_time() {
        let (start, mut schedule) = schedule();
        let due = schedule.next_due();
        let first = schedule.wait(due).await;
        tokio::time::advance(25 * MS).await;
        schedule.finished(first, Instant::now());
        let due = schedule.next_due();
        let second = schedule.wait(due).await;
        assert_eq!(second.due, start + 10 * MS);
        assert_eq!(second.clock, start + 10 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn request_sent_late_by_the_generator_is_clocked_from_its_send() {
        let (start, mut schedule) = schedule();
        let due = schedule.next_due();
        tokio::time::advance(2 * MS).await;
        let slot = schedule.wait(due).await;
        assert_eq!(slot.due, start);
        assert_eq!(slot.clock, start + 2 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn delay_inherited_from_a_late_predecessor_is_not_charged() {
        let (start, mut schedule) = schedule();
        let due = schedule.next_due();
        tokio::time::advance(2 * MS).await;
        let first = schedule.wait(due).await;
        // Answered 11 ms after its (late) send, 1 ms past the next due time; sent on time it
        // would have ended at 11 ms, so the next request would have waited 1 ms for it.
        tokio::time::advance(11 * MS).await;
        schedule.finished(first, Instant::now());
        let due = schedule.next_due();
        let second = schedule.wait(due).await;
        assert_eq!(second.due, start + 10 * MS);
        assert_eq!(second.clock, start + 12 * MS);
    }
}
