//! Subscription bookkeeping for the pub/sub layer: per Redis host, the
//! groups local sockets need (wanted) and the groups Redis has confirmed on
//! the host's current connection (held), and when to try again after a
//! failed `SUBSCRIBE` or `UNSUBSCRIBE`.
//!
//! It is the gateway's own account of what it is subscribed to, kept true:
//! a subscription counts as held only once Redis confirmed it on the
//! connection in use, a new connection holds nothing, and a change whose
//! outcome cannot be known (the connection changed under it) is assumed to
//! have gone whichever way makes the next round repeat it, since both
//! commands are idempotent. No I/O and no clock of its own: the caller
//! passes the time in and sends the commands.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// First wait after a failure; doubled per failure in a row, up to
/// [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// Changes to send to one host, taken with [`SubscriptionBook::changes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostChanges {
    pub host: usize,
    /// The connection the changes are for; pass it back with the outcome.
    pub connection: u64,
    pub unsubscribe: Vec<Arc<str>>,
    pub subscribe: Vec<Arc<str>>,
    /// Groups wanted on the host: what Redis holds for the connection once
    /// the changes took effect.
    pub wanted: usize,
}

#[derive(Default)]
struct HostBook {
    wanted: HashSet<Arc<str>>,
    /// Confirmed by Redis on connection `connection`.
    held: HashSet<Arc<str>>,
    connection: u64,
    /// Failures in a row, and when the next try is due after the last one.
    failures: u32,
    retry_at: Option<Instant>,
    /// Since when some wanted group is not held.
    missing_since: Option<Instant>,
}

impl HostBook {
    fn has_changes(&self) -> bool {
        self.wanted.len() != self.held.len() || !self.wanted.is_subset(&self.held)
    }

    fn refresh_missing(&mut self, now: Instant) {
        if self.wanted.is_subset(&self.held) {
            self.missing_since = None;
        } else {
            self.missing_since.get_or_insert(now);
        }
    }

    fn failed(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let doublings = self.failures.saturating_sub(1).min(16);
        let wait = RETRY_FIRST.saturating_mul(1 << doublings).min(RETRY_MAX);
        self.retry_at = Some(now + wait);
    }
}

/// Wanted and held subscriptions of every host (see the module docs).
pub struct SubscriptionBook {
    hosts: Vec<HostBook>,
}

impl SubscriptionBook {
    pub fn new(hosts: usize) -> SubscriptionBook {
        SubscriptionBook {
            hosts: (0..hosts).map(|_| HostBook::default()).collect(),
        }
    }

    /// Whether local sockets need `group` (on `host`) now.
    pub fn want(&mut self, host: usize, group: &Arc<str>, wanted: bool, now: Instant) {
        let Some(book) = self.hosts.get_mut(host) else {
            return;
        };
        if wanted {
            if !book.wanted.contains(group) {
                book.wanted.insert(group.clone());
            }
        } else {
            book.wanted.remove(group);
        }
        book.refresh_missing(now);
    }

    /// Nothing is wanted any more (shutdown): every held group is to be
    /// unsubscribed.
    pub fn want_nothing(&mut self, now: Instant) {
        for book in &mut self.hosts {
            book.wanted.clear();
            book.refresh_missing(now);
        }
    }

    /// `host` is on connection `connection` now. A connection not seen
    /// before holds nothing (Redis forgets subscriptions with the
    /// connection), and is tried at once.
    pub fn connection(&mut self, host: usize, connection: u64, now: Instant) {
        let Some(book) = self.hosts.get_mut(host) else {
            return;
        };
        if book.connection == connection {
            return;
        }
        book.connection = connection;
        book.held.clear();
        book.failures = 0;
        book.retry_at = None;
        book.refresh_missing(now);
    }

    /// The changes due now: for every host that differs from what is
    /// wanted and is not waiting out a failure, unless `urgent` says
    /// someone waits on that host (a join).
    pub fn changes(&self, now: Instant, urgent: impl Fn(usize) -> bool) -> Vec<HostChanges> {
        let mut due = Vec::new();
        for (host, book) in self.hosts.iter().enumerate() {
            if !book.has_changes() {
                continue;
            }
            let waited = book.retry_at.is_none_or(|at| now >= at);
            if !waited && !urgent(host) {
                continue;
            }
            due.push(HostChanges {
                host,
                connection: book.connection,
                unsubscribe: book.held.difference(&book.wanted).cloned().collect(),
                subscribe: book.wanted.difference(&book.held).cloned().collect(),
                wanted: book.wanted.len(),
            });
        }
        due
    }

    /// What became of one host's changes: whether the `UNSUBSCRIBE` and the
    /// `SUBSCRIBE` were confirmed (a change with nothing to send counts as
    /// confirmed).
    pub fn outcome(
        &mut self,
        changes: HostChanges,
        unsubscribed: bool,
        subscribed: bool,
        now: Instant,
    ) {
        let Some(book) = self.hosts.get_mut(changes.host) else {
            return;
        };
        if book.connection != changes.connection {
            // Sent on one connection, perhaps carried out on the next: make
            // the next round repeat what matters. A group still wanted
            // counts as not held (subscribe again); one no longer wanted
            // that may have been subscribed counts as held (unsubscribe
            // again).
            for group in changes.subscribe {
                if !book.wanted.contains(&group) {
                    book.held.insert(group);
                }
            }
            book.refresh_missing(now);
            return;
        }
        if unsubscribed {
            for group in &changes.unsubscribe {
                book.held.remove(group);
            }
        }
        if subscribed {
            book.held.extend(changes.subscribe);
        }
        if unsubscribed && subscribed {
            book.failures = 0;
            book.retry_at = None;
        } else {
            book.failed(now);
        }
        book.refresh_missing(now);
    }

    /// Whether Redis confirmed `group` on `host`'s current connection.
    pub fn holds(&self, host: usize, group: &Arc<str>) -> bool {
        self.hosts
            .get(host)
            .is_some_and(|book| book.held.contains(group))
    }

    /// When the next retry after a failure is due, if one is.
    pub fn next_retry(&self) -> Option<Instant> {
        self.hosts
            .iter()
            .filter(|book| book.has_changes())
            .filter_map(|book| book.retry_at)
            .min()
    }

    /// Since when some wanted group has not been held, on any host.
    pub fn missing_since(&self) -> Option<Instant> {
        self.hosts
            .iter()
            .filter_map(|book| book.missing_since)
            .min()
    }

    /// Groups wanted, held, and wanted but not held, over all hosts.
    pub fn counts(&self) -> SubscriptionCounts {
        let mut counts = SubscriptionCounts::default();
        for book in &self.hosts {
            counts.wanted += book.wanted.len();
            counts.held += book.held.len();
            counts.missing += book.wanted.difference(&book.held).count();
        }
        counts
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionCounts {
    pub wanted: usize,
    pub held: usize,
    pub missing: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    fn sorted(mut groups: Vec<Arc<str>>) -> Vec<Arc<str>> {
        groups.sort();
        groups
    }

    #[test]
    fn a_subscription_is_held_only_once_confirmed() {
        let now = Instant::now();
        let mut book = SubscriptionBook::new(2);
        book.want(1, &group("a"), true, now);
        book.want(1, &group("b"), true, now);
        assert_eq!(book.missing_since(), Some(now));
        let due = book.changes(now, |_| false);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].host, 1);
        assert_eq!(sorted(due[0].subscribe.clone()), [group("a"), group("b")]);
        assert!(!book.holds(1, &group("a")), "not before Redis confirms");
        book.outcome(due[0].clone(), true, true, now);
        assert!(book.holds(1, &group("a")) && book.holds(1, &group("b")));
        assert_eq!(book.missing_since(), None);
        assert!(
            book.changes(now, |_| false).is_empty(),
            "nothing more to do"
        );
        assert_eq!(
            book.counts(),
            SubscriptionCounts {
                wanted: 2,
                held: 2,
                missing: 0
            }
        );
    }

    #[test]
    fn a_failed_subscribe_is_not_held_and_is_retried_with_growing_waits() {
        let start = Instant::now();
        let mut book = SubscriptionBook::new(1);
        book.want(0, &group("a"), true, start);
        let due = book.changes(start, |_| false);
        book.outcome(due[0].clone(), true, false, start);
        assert!(!book.holds(0, &group("a")));
        assert_eq!(book.counts().missing, 1);
        assert_eq!(book.missing_since(), Some(start));
        assert_eq!(book.next_retry(), Some(start + RETRY_FIRST));
        assert!(
            book.changes(start, |_| false).is_empty(),
            "waits out the backoff"
        );
        assert_eq!(
            book.changes(start, |_| true).len(),
            1,
            "unless a join waits on the host"
        );

        let later = start + RETRY_FIRST;
        let due = book.changes(later, |_| false);
        assert_eq!(due.len(), 1, "due again");
        book.outcome(due[0].clone(), true, false, later);
        assert_eq!(book.next_retry(), Some(later + RETRY_FIRST * 2), "doubled");
        let mut at = later;
        for _ in 0..20 {
            at += RETRY_MAX;
            let due = book.changes(at, |_| false);
            book.outcome(due[0].clone(), true, false, at);
        }
        assert_eq!(book.next_retry(), Some(at + RETRY_MAX), "capped");

        at += RETRY_MAX;
        let due = book.changes(at, |_| false);
        book.outcome(due[0].clone(), true, true, at);
        assert!(book.holds(0, &group("a")));
        assert_eq!(book.next_retry(), None);
        assert_eq!(book.missing_since(), None, "missing from start until now");
    }

    #[test]
    fn a_failed_unsubscribe_stays_held_until_it_succeeds() {
        let now = Instant::now();
        let mut book = SubscriptionBook::new(1);
        book.want(0, &group("a"), true, now);
        let due = book.changes(now, |_| false);
        book.outcome(due[0].clone(), true, true, now);
        book.want(0, &group("a"), false, now);
        let due = book.changes(now, |_| false);
        assert_eq!(due[0].unsubscribe, [group("a")]);
        book.outcome(due[0].clone(), false, true, now);
        assert!(book.holds(0, &group("a")), "Redis may still send it");
        assert_eq!(book.missing_since(), None, "nothing wanted is missing");
        let retry = book.next_retry().expect("retry due");
        let due = book.changes(retry, |_| false);
        assert_eq!(due[0].unsubscribe, [group("a")]);
        book.outcome(due[0].clone(), true, true, retry);
        assert_eq!(book.counts(), SubscriptionCounts::default());
    }

    #[test]
    fn a_new_connection_holds_nothing_and_is_tried_at_once() {
        let now = Instant::now();
        let mut book = SubscriptionBook::new(1);
        book.want(0, &group("a"), true, now);
        let due = book.changes(now, |_| false);
        book.outcome(due[0].clone(), true, true, now);
        // A failure is being waited out when the connection is replaced.
        book.want(0, &group("b"), true, now);
        let due = book.changes(now, |_| false);
        book.outcome(due[0].clone(), true, false, now);
        assert!(book.next_retry().is_some());

        let reconnected = now + Duration::from_millis(10);
        book.connection(0, 1, reconnected);
        assert!(!book.holds(0, &group("a")), "Redis forgot it");
        assert_eq!(book.missing_since(), Some(now), "b was missing before");
        let due = book.changes(reconnected, |_| false);
        assert_eq!(due.len(), 1, "no backoff on a new connection");
        assert_eq!(sorted(due[0].subscribe.clone()), [group("a"), group("b")]);
        assert_eq!(due[0].connection, 1);
        book.connection(0, 1, reconnected);
        assert_eq!(book.changes(reconnected, |_| false).len(), 1, "same one");
    }

    #[test]
    fn changes_sent_on_an_old_connection_are_repeated() {
        let now = Instant::now();
        let mut book = SubscriptionBook::new(1);
        book.want(0, &group("kept"), true, now);
        book.want(0, &group("left"), true, now);
        let due = book.changes(now, |_| false);
        // Meanwhile the connection is replaced and "left" loses its socket.
        book.connection(0, 7, now);
        book.want(0, &group("left"), false, now);
        book.outcome(due[0].clone(), true, true, now);
        assert!(!book.holds(0, &group("kept")), "subscribe again");
        assert!(book.holds(0, &group("left")), "unsubscribe in case");
        let due = book.changes(now, |_| false);
        assert_eq!(due[0].subscribe, [group("kept")]);
        assert_eq!(due[0].unsubscribe, [group("left")]);
    }

    #[test]
    fn wanting_nothing_unsubscribes_everything_held() {
        let now = Instant::now();
        let mut book = SubscriptionBook::new(2);
        for (host, name) in [(0, "a"), (1, "b"), (1, "c")] {
            book.want(host, &group(name), true, now);
        }
        for due in book.changes(now, |_| false) {
            book.outcome(due, true, true, now);
        }
        book.want_nothing(now);
        let due = book.changes(now, |_| false);
        let unsubscribed: usize = due.iter().map(|host| host.unsubscribe.len()).sum();
        assert_eq!(unsubscribed, 3);
        assert!(due.iter().all(|host| host.subscribe.is_empty()));
    }
}
