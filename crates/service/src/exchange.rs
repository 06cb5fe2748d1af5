//! Moves protocol messages between a sans-I/O role and a pair of streams.
//!
//! Every psi [`Party`] is a [`Role`] here, through one generic adapter that encodes what the
//! party polls and decodes what arrives for it; only what is really role-specific (the list
//! provider's withheld evaluations, in [`roles`](crate::roles)) lives elsewhere.
//!
//! The role (the psi matcher or receiver) is driven from the async runtime but every call
//! into it runs on the blocking pool, because the psi roles do heavy, parallel (rayon) work.
//! Sending and receiving run concurrently: while an outgoing message waits for the peer to make
//! room (HTTP/2 flow control), incoming messages are still read and handled, so two sides that
//! both stream large blinded sets at the same time cannot deadlock, and no side ever holds more
//! than one outgoing message beyond the transport's buffers.

use std::future::Future;
use std::time::Duration;

use cleanroom_psi::{Party, Stage, WireMessage};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::{Stream, StreamExt};

/// A protocol role that the exchange can drive.
pub(crate) trait Role: Send + 'static {
    /// The next message to send, encoded, or `None` while the role waits for the peer (or has
    /// finished).
    fn poll(&mut self) -> Option<Vec<u8>>;
    /// Decodes and handles one message of the peer.
    fn handle(&mut self, bytes: &[u8]) -> Result<(), PeerError>;
    /// Whether the role needs nothing more from the peer (checked once `poll` returns `None`).
    fn done(&self) -> bool;
}

/// The one byte adapter of every psi party: messages are encoded on the way out and decoded on
/// the way in as the party's own protocol's messages (bytes of another protocol do not decode), and the party is done with the exchange once it expects nothing more from the
/// peer (the matcher still awaits its release, which the server sends after the exchange).
impl<P: Party + Send + 'static> Role for P {
    fn poll(&mut self) -> Option<Vec<u8>> {
        Party::poll(self).map(|m| m.encode())
    }

    fn handle(&mut self, bytes: &[u8]) -> Result<(), PeerError> {
        let message = P::Message::decode(bytes)?;
        Party::handle(self, message)?;
        Ok(())
    }

    fn done(&self) -> bool {
        self.stage() != Stage::Exchanging
    }
}

/// What the peer sent that the protocol rejects.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// A message that does not decode.
    #[error("malformed protocol message: {0}")]
    Wire(#[from] cleanroom_psi::WireError),
    /// A message that decodes but breaks the protocol (wrong order, wrong sizes, over a limit).
    #[error("protocol violation: {0}")]
    Protocol(#[from] cleanroom_psi::ProtocolError),
}

/// Why an exchange ended early.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The peer sent a message the protocol rejects.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// The peer sent a message larger than any protocol message may be.
    #[error("protocol message of {size} bytes exceeds the maximum of {max} bytes")]
    Oversized {
        /// The message's size.
        size: usize,
        /// The largest size allowed.
        max: usize,
    },
    /// The peer sent a session message that does not belong in the protocol stream.
    #[error("unexpected message in the protocol stream: {0}")]
    Unexpected(&'static str),
    /// The peer closed its stream before the protocol finished.
    #[error("the peer closed the session before the protocol finished")]
    PeerEnded,
    /// The peer stopped reading (it went away).
    #[error("the peer went away")]
    PeerGone,
    /// The transport reported an error (the peer's status, a reset connection).
    #[error("transport: {0}")]
    Transport(tonic::Status),
    /// Nothing moved in either direction for too long.
    #[error("no message in either direction for {0:?}")]
    Idle(Duration),
    /// The peer moved data slower than the minimum rate: it trickles.
    #[error(
        "the peer moved {moved} bytes in {:?} spent waiting for it, under the minimum of \
         {per_second} bytes per second",
        window
    )]
    TooSlow {
        /// Bytes moved (both directions) within the window.
        moved: u64,
        /// The waiting time measured.
        window: Duration,
        /// The minimum rate.
        per_second: u64,
    },
    /// The session ran out of time.
    #[error("the session exceeded its time limit of {0:?}")]
    Deadline(Duration),
    /// A computation of the role panicked.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Protocol messages and bytes moved so far in one session, and the time its computations took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages sent to the peer.
    pub messages_sent: u64,
    /// Payload bytes sent to the peer.
    pub bytes_sent: u64,
    /// Messages received from the peer.
    pub messages_received: u64,
    /// Payload bytes received from the peer.
    pub bytes_received: u64,
    /// Wall-clock time of the computations run off the runtime (`Exchange::blocking`),
    /// measured on the thread that ran each, from its start to its end: the session's compute
    /// time (not CPU time: parallel work inside a computation counts once, and a busy machine
    /// stretches it). A computation given up on (deadline, peer gone) is not counted.
    pub compute: Duration,
}

impl Counters {
    /// Counts one message sent.
    pub fn sent(&mut self, bytes: usize) {
        self.messages_sent += 1;
        self.bytes_sent += bytes as u64;
    }

    /// Counts one message received.
    pub fn received(&mut self, bytes: usize) {
        self.messages_received += 1;
        self.bytes_received += bytes as u64;
    }
}

/// A callback told about every message moved.
pub type ProgressFn<'a> = dyn Fn(&Counters) + Send + Sync + 'a;

/// A minimum data rate: `per_second` bytes, measured over each `window` of time spent waiting
/// for the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinRate {
    /// Bytes per second, in both directions together.
    pub per_second: u64,
    /// The waiting time over which it is measured.
    pub window: Duration,
}

/// The waiting time and bytes of the current window of a [`MinRate`].
#[derive(Debug, Clone, Copy, Default)]
struct RateWindow {
    waited: Duration,
    moved: u64,
}

impl RateWindow {
    /// When the current window closes if the peer moves nothing, waiting from `now`.
    fn closes_at(&self, rate: Option<MinRate>, now: Instant) -> Option<Instant> {
        rate.map(|r| now + r.window.saturating_sub(self.waited))
    }

    /// Counts `waited` and `moved`; when the window is full, checks it and starts the next.
    fn count(
        &mut self,
        rate: Option<MinRate>,
        waited: Duration,
        moved: usize,
    ) -> Result<(), ExchangeError> {
        let Some(rate) = rate else { return Ok(()) };
        self.waited += waited;
        self.moved = self.moved.saturating_add(moved as u64);
        if self.waited < rate.window {
            return Ok(());
        }
        // Whole bytes over the window measured; precision beyond a byte does not matter here.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let needed = (rate.per_second as f64 * rate.window.as_secs_f64()) as u64;
        if self.moved < needed {
            return Err(ExchangeError::TooSlow {
                moved: self.moved,
                window: self.waited,
                per_second: rate.per_second,
            });
        }
        *self = RateWindow::default();
        Ok(())
    }
}

/// Resolves at `at`, or never.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Drives one role against a peer: `T` is the outgoing stream item (`wrap` builds it from an
/// encoded protocol message).
pub(crate) struct Exchange<'a, T> {
    /// Where outgoing items go.
    pub outbound: &'a mpsc::Sender<T>,
    /// Builds an outgoing item from an encoded protocol message.
    pub wrap: fn(Vec<u8>) -> T,
    /// When the whole session must be over, and the limit it comes from (for the error).
    pub deadline: Option<(Instant, Duration)>,
    /// The longest time without a message in either direction.
    pub idle: Option<Duration>,
    /// The largest incoming message accepted.
    pub max_message: usize,
    /// What moved so far.
    pub counters: Counters,
    /// Told after every message.
    pub progress: Option<&'a ProgressFn<'a>>,
    /// The least the peer must move, in bytes per second of waiting for it, measured over
    /// each window of that waiting; `None`: no minimum.
    pub min_rate: Option<MinRate>,
    /// Whether to give up on a computation as soon as the peer stops reading (the server:
    /// its client went away). A client leaves this off: the server ends the call right after
    /// its last message, while the client may still be handling it.
    pub abort_when_peer_gone: bool,
}

impl<T: Send + 'static> Exchange<'_, T> {
    /// Runs `f` on the role in the blocking pool; gives up (leaving the computation to finish
    /// and drop the role on its own) when the session's deadline passes or the peer goes away.
    pub(crate) async fn blocking<R, O>(
        &mut self,
        mut role: R,
        f: impl FnOnce(&mut R) -> O + Send + 'static,
    ) -> Result<(R, O), ExchangeError>
    where
        R: Send + 'static,
        O: Send + 'static,
    {
        let task = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let out = f(&mut role);
            (role, out, started.elapsed())
        });
        let deadline = self.deadline;
        let peer_gone = async {
            if self.abort_when_peer_gone {
                self.outbound.closed().await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let (role, out, took) = tokio::select! {
            joined = task => joined.map_err(|e| ExchangeError::Internal(e.to_string()))?,
            () = until(deadline.map(|d| d.0)) => return Err(ExchangeError::Deadline(deadline.map_or(Duration::ZERO, |d| d.1))),
            () = peer_gone => return Err(ExchangeError::PeerGone),
        };
        self.counters.compute += took;
        Ok((role, out))
    }

    /// Sends one item outside the protocol (session control), within the session's deadline.
    pub(crate) async fn send_item(&self, item: T) -> Result<(), ExchangeError> {
        let deadline = self.deadline;
        tokio::select! {
            sent = self.outbound.send(item) => sent.map_err(|_| ExchangeError::PeerGone),
            () = until(deadline.map(|d| d.0)) => Err(ExchangeError::Deadline(deadline.map_or(Duration::ZERO, |d| d.1))),
        }
    }

    /// Sends one protocol message, counting it.
    pub(crate) async fn send_message(&mut self, bytes: Vec<u8>) -> Result<(), ExchangeError> {
        let len = bytes.len();
        self.send_item((self.wrap)(bytes)).await?;
        self.counters.sent(len);
        self.report();
        Ok(())
    }

    fn report(&self) {
        if let Some(progress) = self.progress {
            progress(&self.counters);
        }
    }

    /// The next item of `inbound`, outside the protocol (session control), within the idle
    /// timeout and the session's deadline: [`ExchangeError::PeerEnded`] when the stream ends.
    pub(crate) async fn receive<S, I>(&mut self, inbound: &mut S) -> Result<I, ExchangeError>
    where
        S: Stream<Item = Result<I, ExchangeError>> + Unpin,
    {
        let idle_at = self.idle.map(|idle| Instant::now() + idle);
        let deadline = self.deadline;
        tokio::select! {
            () = until(deadline.map(|d| d.0)) => {
                Err(ExchangeError::Deadline(deadline.map_or(Duration::ZERO, |d| d.1)))
            }
            () = until(idle_at) => Err(ExchangeError::Idle(self.idle.unwrap_or_default())),
            item = inbound.next() => item.unwrap_or(Err(ExchangeError::PeerEnded)),
        }
    }

    /// Runs the protocol until the role is done, returning it.
    pub(crate) async fn run<R, S>(&mut self, role: R, inbound: &mut S) -> Result<R, ExchangeError>
    where
        R: Role,
        S: Stream<Item = Result<Vec<u8>, ExchangeError>> + Unpin,
    {
        let mut role = role;
        let mut pending: Option<Vec<u8>> = None;
        let mut last_activity = Instant::now();
        let mut rate = RateWindow::default();
        loop {
            if pending.is_none() {
                let (r, next) = self.blocking(role, Role::poll).await?;
                role = r;
                // The role's own computation is not idleness of the peer.
                last_activity = Instant::now();
                match next {
                    Some(bytes) => pending = Some(bytes),
                    None if role.done() => return Ok(role),
                    None => {}
                }
            }
            let idle_at = self.idle.map(|idle| last_activity + idle);
            let deadline = self.deadline;
            let waiting_since = Instant::now();
            let window_closes = rate.closes_at(self.min_rate, waiting_since);
            tokio::select! {
                () = until(deadline.map(|d| d.0)) => {
                    return Err(ExchangeError::Deadline(deadline.map_or(Duration::ZERO, |d| d.1)));
                }
                () = until(idle_at) => {
                    return Err(ExchangeError::Idle(self.idle.unwrap_or_default()));
                }
                () = until(window_closes) => {
                    rate.count(self.min_rate, waiting_since.elapsed(), 0)?;
                }
                permit = self.outbound.reserve(), if pending.is_some() => {
                    let permit = permit.map_err(|_| ExchangeError::PeerGone)?;
                    let mut moved = 0;
                    if let Some(bytes) = pending.take() {
                        moved = bytes.len();
                        self.counters.sent(moved);
                        permit.send((self.wrap)(bytes));
                    }
                    rate.count(self.min_rate, waiting_since.elapsed(), moved)?;
                    last_activity = Instant::now();
                    self.report();
                }
                item = inbound.next() => {
                    let bytes = match item {
                        Some(Ok(bytes)) => bytes,
                        Some(Err(e)) => return Err(e),
                        None => return Err(ExchangeError::PeerEnded),
                    };
                    if bytes.len() > self.max_message {
                        return Err(ExchangeError::Oversized { size: bytes.len(), max: self.max_message });
                    }
                    rate.count(self.min_rate, waiting_since.elapsed(), bytes.len())?;
                    self.counters.received(bytes.len());
                    let (r, handled) = self.blocking(role, move |r| r.handle(&bytes)).await?;
                    role = r;
                    handled?;
                    last_activity = Instant::now();
                    self.report();
                }
            }
        }
    }
}

/// Runs `fut` unless the deadline passes first.
pub(crate) async fn within<F: Future>(
    deadline: Option<(Instant, Duration)>,
    fut: F,
) -> Result<F::Output, ExchangeError> {
    tokio::select! {
        out = fut => Ok(out),
        () = until(deadline.map(|d| d.0)) => Err(ExchangeError::Deadline(deadline.map_or(Duration::ZERO, |d| d.1))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::wrappers::ReceiverStream;

    /// A toy role: sends `count` messages of `size` bytes, then expects as many from the peer;
    /// done when it has sent and received them all.
    struct Burst {
        to_send: u32,
        size: usize,
        to_receive: u32,
    }

    impl Role for Burst {
        fn poll(&mut self) -> Option<Vec<u8>> {
            if self.to_send == 0 {
                return None;
            }
            self.to_send -= 1;
            Some(vec![7; self.size])
        }
        fn handle(&mut self, bytes: &[u8]) -> Result<(), PeerError> {
            assert!(bytes.iter().all(|b| *b == 7));
            self.to_receive -= 1;
            Ok(())
        }
        fn done(&self) -> bool {
            self.to_send == 0 && self.to_receive == 0
        }
    }

    /// Sends `to_send` messages of `size` bytes and expects `to_receive`.
    fn burst(to_send: u32, size: usize, to_receive: u32) -> Burst {
        Burst {
            to_send,
            size,
            to_receive,
        }
    }

    /// Runs `role` against the peer's messages arriving on `rx`; the run must fail.
    async fn failure(
        ex: &mut Exchange<'_, Result<Vec<u8>, ExchangeError>>,
        role: impl Role,
        rx: mpsc::Receiver<Result<Vec<u8>, ExchangeError>>,
    ) -> ExchangeError {
        ex.run(role, &mut ReceiverStream::new(rx))
            .await
            .err()
            .expect("the exchange fails")
    }

    fn ok(bytes: Vec<u8>) -> Result<Vec<u8>, ExchangeError> {
        Ok(bytes)
    }

    fn exchange(
        outbound: &mpsc::Sender<Result<Vec<u8>, ExchangeError>>,
    ) -> Exchange<'_, Result<Vec<u8>, ExchangeError>> {
        Exchange {
            outbound,
            wrap: ok,
            deadline: None,
            idle: Some(Duration::from_secs(10)),
            max_message: 1 << 20,
            counters: Counters::default(),
            progress: None,
            min_rate: None,
            abort_when_peer_gone: false,
        }
    }

    #[tokio::test]
    async fn two_sides_streaming_at_once_do_not_deadlock() {
        // Channels of one slot: each side must read while its own sends are blocked.
        let (a_tx, b_rx) = mpsc::channel(1);
        let (b_tx, a_rx) = mpsc::channel(1);
        let side = |tx: mpsc::Sender<_>, rx: mpsc::Receiver<_>| async move {
            let mut ex = exchange(&tx);
            let role = burst(200, 1000, 200);
            let mut inbound = ReceiverStream::new(rx);
            let role = ex.run(role, &mut inbound).await.unwrap();
            (role.done(), ex.counters)
        };
        let (a, b) = tokio::time::timeout(Duration::from_secs(30), async {
            tokio::join!(
                tokio::spawn(side(a_tx, a_rx)),
                tokio::spawn(side(b_tx, b_rx))
            )
        })
        .await
        .expect("deadlock");
        let (a_done, a_counters) = a.unwrap();
        let (b_done, b_counters) = b.unwrap();
        assert!(a_done && b_done);
        assert_eq!(a_counters.messages_sent, 200);
        assert_eq!(a_counters.bytes_sent, 200_000);
        assert_eq!(b_counters.messages_received, 200);
        assert_eq!(b_counters.bytes_received, 200_000);
    }

    #[tokio::test]
    async fn silent_peer_hits_the_idle_timeout() {
        let (tx, _rx) = mpsc::channel(4);
        let (_peer_tx, rx) = mpsc::channel::<Result<Vec<u8>, ExchangeError>>(4);
        let mut ex = exchange(&tx);
        ex.idle = Some(Duration::from_millis(100));
        let role = burst(1, 10, 1);
        let err = failure(&mut ex, role, rx).await;
        assert!(matches!(err, ExchangeError::Idle(d) if d == Duration::from_millis(100)));
    }

    #[tokio::test]
    async fn total_deadline_applies_even_with_traffic() {
        let (tx, mut rx_out) = mpsc::channel(4);
        let (peer_tx, rx) = mpsc::channel::<Result<Vec<u8>, ExchangeError>>(4);
        // A chatty peer: one message every 20 ms, never enough to finish.
        tokio::spawn(async move {
            for _ in 0..1000 {
                if peer_tx.send(Ok(vec![7; 4])).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        tokio::spawn(async move { while rx_out.recv().await.is_some() {} });
        let mut ex = exchange(&tx);
        ex.deadline = Some((
            Instant::now() + Duration::from_millis(300),
            Duration::from_millis(300),
        ));
        let role = burst(0, 0, 100_000);
        let err = failure(&mut ex, role, rx).await;
        assert!(matches!(err, ExchangeError::Deadline(_)));
    }

    /// A peer that sends `size`-byte messages every `every`, `count` times.
    fn trickle(
        size: usize,
        every: Duration,
        count: u32,
    ) -> mpsc::Receiver<Result<Vec<u8>, ExchangeError>> {
        let (peer_tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for _ in 0..count {
                if peer_tx.send(Ok(vec![7; size])).await.is_err() {
                    break;
                }
                tokio::time::sleep(every).await;
            }
        });
        rx
    }

    #[tokio::test]
    async fn a_trickling_peer_is_cut_off_and_a_steady_one_is_not() {
        let rate = MinRate {
            per_second: 10_000,
            window: Duration::from_millis(400),
        };
        // 40 bytes every 50 ms (800 B/s): each message beats the idle timeout, not the rate.
        let (tx, _rx) = mpsc::channel(4);
        let mut ex = exchange(&tx);
        ex.min_rate = Some(rate);
        let started = Instant::now();
        let err = failure(
            &mut ex,
            burst(0, 0, 1000),
            trickle(40, Duration::from_millis(50), 1000),
        )
        .await;
        assert!(
            matches!(err, ExchangeError::TooSlow { moved, per_second: 10_000, .. } if moved < 4_000),
            "{err:?}"
        );
        assert!(started.elapsed() >= rate.window);
        assert!(
            err.to_string()
                .contains("minimum of 10000 bytes per second")
        );

        // 4 KiB every 50 ms (80 KiB/s): well over the minimum, finishes.
        let (tx, _rx) = mpsc::channel(4);
        let mut ex = exchange(&tx);
        ex.min_rate = Some(rate);
        let role = ex
            .run(
                burst(0, 0, 30),
                &mut ReceiverStream::new(trickle(4096, Duration::from_millis(50), 30)),
            )
            .await
            .expect("a steady peer finishes");
        assert!(role.done());
    }

    #[tokio::test]
    async fn early_end_and_oversize_are_errors() {
        let (tx, _rx) = mpsc::channel(4);
        let (peer_tx, rx) = mpsc::channel::<Result<Vec<u8>, ExchangeError>>(4);
        drop(peer_tx);
        let mut ex = exchange(&tx);
        let role = burst(0, 0, 1);
        let err = failure(&mut ex, role, rx).await;
        assert!(matches!(err, ExchangeError::PeerEnded));

        let (peer_tx, rx) = mpsc::channel::<Result<Vec<u8>, ExchangeError>>(4);
        peer_tx.send(Ok(vec![7; 2 << 20])).await.unwrap();
        let mut ex = exchange(&tx);
        let role = burst(0, 0, 1);
        let err = failure(&mut ex, role, rx).await;
        assert!(matches!(err, ExchangeError::Oversized { size, .. } if size == 2 << 20));
    }

    /// A role whose every poll takes long.
    struct Slow;

    impl Role for Slow {
        fn poll(&mut self) -> Option<Vec<u8>> {
            std::thread::sleep(Duration::from_millis(300));
            Some(vec![1])
        }
        fn handle(&mut self, _: &[u8]) -> Result<(), PeerError> {
            Ok(())
        }
        fn done(&self) -> bool {
            false
        }
    }

    #[tokio::test]
    async fn vanished_peer_interrupts_a_computation() {
        let (tx, rx_out) = mpsc::channel(1);
        let (_peer_tx, rx) = mpsc::channel::<Result<Vec<u8>, ExchangeError>>(4);
        let mut ex = exchange(&tx);
        ex.abort_when_peer_gone = true;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(rx_out);
        });
        // `Slow` never finishes: the run ends only because the vanished peer interrupts it (the
        // generous bound turns a regression into a failure instead of a hang).
        let err = tokio::time::timeout(
            Duration::from_secs(30),
            ex.run(Slow, &mut ReceiverStream::new(rx)),
        )
        .await
        .expect("the computation is interrupted")
        .err()
        .unwrap();
        assert!(matches!(err, ExchangeError::PeerGone));
    }

    #[tokio::test]
    async fn vanished_peer_is_detected() {
        let (tx, rx_out) = mpsc::channel(1);
        let (_peer_tx, rx) = mpsc::channel::<Result<Vec<u8>, ExchangeError>>(4);
        drop(rx_out);
        let mut ex = exchange(&tx);
        let role = burst(3, 10, 0);
        let err = failure(&mut ex, role, rx).await;
        assert!(matches!(err, ExchangeError::PeerGone));
    }
}
