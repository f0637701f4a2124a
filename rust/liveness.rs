//! When a connection must act on time alone: the handshake timeout, the idle timeout and the
//! keepalive ping. No clock of its own — the caller passes the time in (seconds, any monotonic
//! origin) and gets back what to do and when to ask again, so the rules are tested with a
//! fake clock.
//!
//! The rules:
//! - the handshake must be over within `handshake_timeout` of opening;
//! - a peer silent for `idle_timeout` is cut off;
//! - a peer silent for the `keepalive` interval is pinged, and pinged again each interval it
//!   stays silent (until the idle timeout, if any, ends the connection).

/// What the connection must do now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Due {
    /// Nothing yet.
    Nothing,
    /// Send a keepalive ping.
    Ping,
    /// The handshake took longer than `handshake_timeout`: close.
    HandshakeTimedOut,
    /// The peer has been silent this long, past `idle_timeout`: close.
    IdleTimedOut { idle: f64 },
}

/// One connection's timing rules.
#[derive(Debug, Clone)]
pub struct Liveness {
    handshake_timeout: Option<f64>,
    idle_timeout: Option<f64>,
    keepalive: Option<f64>,
    opened_at: f64,
    handshaking: bool,
    /// When the last ping went out (pings repeat an interval apart while the peer is silent).
    pinged_at: Option<f64>,
}

impl Liveness {
    /// The rules for a connection opened at `now`; a timeout or interval that is None (or not
    /// positive) does not apply.
    pub fn new(now: f64, handshake_timeout: Option<f64>, idle_timeout: Option<f64>, keepalive: Option<f64>) -> Self {
        let positive = |t: Option<f64>| t.filter(|t| *t > 0.0);
        Liveness {
            handshake_timeout: positive(handshake_timeout),
            idle_timeout: positive(idle_timeout),
            keepalive: positive(keepalive),
            opened_at: now,
            handshaking: true,
            pinged_at: None,
        }
    }

    /// The handshake is over: its timeout no longer applies.
    pub fn handshake_done(&mut self) {
        self.handshaking = false;
    }

    /// Whether the caller needs to note when data last arrived (some rule depends on it).
    pub fn watches_silence(&self) -> bool {
        self.idle_timeout.is_some() || self.keepalive.is_some()
    }

    /// What to do at `now`, the peer's last data having arrived at `last_received`.
    pub fn poll(&mut self, now: f64, last_received: f64) -> Due {
        if self.handshaking {
            if let Some(timeout) = self.handshake_timeout {
                if now - self.opened_at >= timeout {
                    return Due::HandshakeTimedOut;
                }
            }
        }
        let idle = now - last_received;
        if let Some(timeout) = self.idle_timeout {
            if idle >= timeout {
                return Due::IdleTimedOut { idle };
            }
        }
        if let Some(interval) = self.keepalive {
            // Due once the peer has been silent an interval and the last ping (if it came in
            // this silence) is an interval old.
            let since = self.pinged_at.filter(|&at| at >= last_received).unwrap_or(last_received);
            if now - since >= interval {
                self.pinged_at = Some(now);
                return Due::Ping;
            }
        }
        Due::Nothing
    }

    /// When to poll next (None: never, nothing applies any more).
    pub fn next_poll(&self, last_received: f64) -> Option<f64> {
        let handshake = self.handshake_timeout.filter(|_| self.handshaking).map(|t| self.opened_at + t);
        let idle = self.idle_timeout.map(|t| last_received + t);
        let ping = self.keepalive.map(|interval| {
            let since = self.pinged_at.filter(|&at| at >= last_received).unwrap_or(last_received);
            since + interval
        });
        [handshake, idle, ping].into_iter().flatten().reduce(f64::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake clock driving `l` as an event loop would: poll at each `next_poll`, with data
    /// arriving at the times in `arrivals`; returns what happened, with when.
    fn drive(l: &mut Liveness, arrivals: &[f64], until: f64) -> Vec<(f64, Due)> {
        let mut last = 0.0;
        let mut seen = Vec::new();
        let mut arrivals = arrivals.iter().copied().peekable();
        while let Some(mut at) = l.next_poll(last) {
            // Data that arrives before the poll moves the silence, and so the poll, on.
            while let Some(t) = arrivals.next_if(|t| *t <= at) {
                last = t;
                at = l.next_poll(last).expect("still polling");
            }
            if at > until {
                break;
            }
            let due = l.poll(at, last);
            if due != Due::Nothing {
                seen.push((at, due));
            }
            if matches!(due, Due::HandshakeTimedOut | Due::IdleTimedOut { .. }) {
                break;
            }
        }
        seen
    }

    #[test]
    fn a_handshake_that_never_ends_times_out() {
        let mut l = Liveness::new(0.0, Some(5.0), None, None);
        assert_eq!(l.poll(4.9, 0.0), Due::Nothing);
        assert_eq!(l.next_poll(0.0), Some(5.0));
        assert_eq!(l.poll(5.0, 4.0), Due::HandshakeTimedOut);
    }

    #[test]
    fn a_finished_handshake_stops_its_clock() {
        let mut l = Liveness::new(0.0, Some(5.0), None, None);
        l.handshake_done();
        assert_eq!(l.next_poll(0.0), None);
        assert_eq!(l.poll(100.0, 0.0), Due::Nothing);
    }

    #[test]
    fn a_silent_peer_is_cut_off_at_the_idle_timeout() {
        let mut l = Liveness::new(0.0, None, Some(10.0), None);
        assert!(l.watches_silence());
        assert_eq!(drive(&mut l, &[3.0, 7.0], 100.0), vec![(17.0, Due::IdleTimedOut { idle: 10.0 })]);
    }

    #[test]
    fn pings_repeat_each_interval_of_silence() {
        let mut l = Liveness::new(0.0, None, None, Some(2.0));
        l.handshake_done();
        let pings: Vec<f64> = drive(&mut l, &[1.0, 3.5], 10.0).into_iter().map(|(t, _)| t).collect();
        // Silent from 1.0: a ping at 3.0; data at 3.5; then pings at 5.5, 7.5, 9.5.
        assert_eq!(pings, vec![3.0, 5.5, 7.5, 9.5]);
    }

    #[test]
    fn pings_then_the_idle_timeout() {
        let mut l = Liveness::new(0.0, None, Some(5.0), Some(2.0));
        l.handshake_done();
        let seen = drive(&mut l, &[], 100.0);
        assert_eq!(seen, vec![(2.0, Due::Ping), (4.0, Due::Ping), (5.0, Due::IdleTimedOut { idle: 5.0 })]);
    }

    #[test]
    fn data_resets_the_silence() {
        let mut l = Liveness::new(0.0, None, Some(5.0), None);
        let arrivals: Vec<f64> = (1..50).map(|i| i as f64).collect();
        assert_eq!(drive(&mut l, &arrivals, 40.0), vec![]);
    }

    #[test]
    fn rules_that_are_off_never_fire() {
        let mut l = Liveness::new(0.0, Some(0.0), None, Some(-1.0));
        assert!(!l.watches_silence());
        assert_eq!(l.next_poll(0.0), None);
        assert_eq!(l.poll(1e9, 0.0), Due::Nothing);
    }
}
