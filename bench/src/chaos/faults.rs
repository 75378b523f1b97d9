//! The faults a campaign injects and their seeded schedule: one fault at a
//! time, each ended and recovered from before the next.

use std::time::Duration;

use crate::workload::Rng;

use super::proxy::Mode;
use super::system::{ALL_IN_ONE, Backend, SERVICES, SQLITE_FILES};

/// The kinds of fault, as `--kinds` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// SIGKILL a process, start it again.
    Kill,
    /// SIGSTOP a process (hung, its connections open), then SIGCONT.
    Stop,
    /// Mesh: take a service's database away. All-in-one: an outside writer
    /// holds a SQLite file's write lock.
    Db,
    /// Mesh: stop nats-server, start it again.
    Nats,
    /// Mesh: delay, drop or reset traffic between rental-svc and reserve-svc.
    Proxy,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::Kill, Kind::Stop, Kind::Db, Kind::Nats, Kind::Proxy];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::Stop => "stop",
            Kind::Db => "db",
            Kind::Nats => "nats",
            Kind::Proxy => "proxy",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Whether the backend can suffer it.
    pub fn applies_to(self, backend: &Backend) -> bool {
        match backend {
            Backend::Mesh { .. } => true,
            Backend::AllInOne => matches!(self, Kind::Kill | Kind::Stop | Kind::Db),
        }
    }
}

/// One fault of the schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    Kill(String),
    Stop(String),
    /// A mesh service's database away.
    DatabaseAway(&'static str),
    /// An all-in-one SQLite file's write lock held from outside.
    WriteLock(&'static str),
    NatsDown,
    Proxy(Mode),
}

impl Fault {
    pub fn kind(&self) -> Kind {
        match self {
            Fault::Kill(_) => Kind::Kill,
            Fault::Stop(_) => Kind::Stop,
            Fault::DatabaseAway(_) | Fault::WriteLock(_) => Kind::Db,
            Fault::NatsDown => Kind::Nats,
            Fault::Proxy(_) => Kind::Proxy,
        }
    }

    /// A short name for the report: `kill reserve-svc`, `proxy delay 300ms`.
    pub fn label(&self) -> String {
        match self {
            Fault::Kill(p) => format!("kill {p}"),
            Fault::Stop(p) => format!("stop {p}"),
            Fault::DatabaseAway(s) => format!("db {s}"),
            Fault::WriteLock(f) => format!("lock {f}"),
            Fault::NatsDown => "nats down".into(),
            Fault::Proxy(Mode::Delay(d)) => format!("proxy delay {}ms", d.as_millis()),
            Fault::Proxy(Mode::Drop) => "proxy drop".into(),
            Fault::Proxy(Mode::Reset) => "proxy reset".into(),
            Fault::Proxy(Mode::Pass) => "proxy pass".into(),
        }
    }
}

/// Every fault the backend can suffer of the given kinds, once each.
pub fn repertoire(backend: &Backend, kinds: &[Kind]) -> Vec<Fault> {
    let mut all = Vec::new();
    let processes: Vec<String> = match backend {
        Backend::Mesh { .. } => SERVICES.iter().map(|s| s.to_string()).collect(),
        Backend::AllInOne => vec![ALL_IN_ONE.to_owned()],
    };
    for kind in kinds.iter().filter(|k| k.applies_to(backend)) {
        match kind {
            Kind::Kill => all.extend(processes.iter().cloned().map(Fault::Kill)),
            Kind::Stop => all.extend(processes.iter().cloned().map(Fault::Stop)),
            Kind::Db => match backend {
                Backend::Mesh { .. } => all.extend(SERVICES.iter().map(|s| Fault::DatabaseAway(s))),
                Backend::AllInOne => all.extend(SQLITE_FILES.iter().map(|f| Fault::WriteLock(f))),
            },
            Kind::Nats => all.push(Fault::NatsDown),
            Kind::Proxy => all.extend([
                // The delay is fixed per fault; the schedule's seed picks it.
                Fault::Proxy(Mode::Delay(Duration::ZERO)),
                Fault::Proxy(Mode::Drop),
                Fault::Proxy(Mode::Reset),
            ]),
        }
    }
    all
}

/// A fault with how long it lasts and the pause before it.
#[derive(Clone, Debug)]
pub struct Planned {
    pub fault: Fault,
    pub after: Duration,
    pub lasting: Duration,
}

/// The seeded schedule. Each round injects every kind once, in an order of
/// its own; each kind goes through its targets (every service, every file)
/// in a shuffled cycle, so a short run sees every kind and a long one every
/// fault of every kind.
pub struct Schedule {
    rng: Rng,
    /// Each kind's faults, and what is left of its current cycle.
    kinds: Vec<(Vec<Fault>, Vec<Fault>)>,
    /// Kinds (indexes into `kinds`) left in this round.
    round: Vec<usize>,
    pub lasting: (Duration, Duration),
    pub gap: (Duration, Duration),
}

impl Schedule {
    pub fn new(
        seed: u64,
        repertoire: Vec<Fault>,
        lasting: (Duration, Duration),
        gap: (Duration, Duration),
    ) -> Self {
        let mut kinds: Vec<(Kind, Vec<Fault>)> = Vec::new();
        for fault in repertoire {
            match kinds.iter_mut().find(|(k, _)| *k == fault.kind()) {
                Some((_, faults)) => faults.push(fault),
                None => kinds.push((fault.kind(), vec![fault])),
            }
        }
        Self {
            rng: Rng::new(seed ^ 0xFA17_5EED),
            kinds: kinds.into_iter().map(|(_, f)| (f, Vec::new())).collect(),
            round: Vec::new(),
            lasting,
            gap,
        }
    }

    fn between(&mut self, (lo, hi): (Duration, Duration)) -> Duration {
        let span = hi.saturating_sub(lo).as_millis() as usize;
        lo + Duration::from_millis(self.rng.below(span + 1) as u64)
    }

    /// `items` in a seeded order, to be taken from the end.
    fn shuffled<T>(&mut self, mut items: Vec<T>) -> Vec<T> {
        for i in (1..items.len()).rev() {
            let j = self.rng.below(i + 1);
            items.swap(i, j);
        }
        items
    }
}

impl Iterator for Schedule {
    type Item = Planned;

    fn next(&mut self) -> Option<Planned> {
        if self.kinds.is_empty() {
            return None;
        }
        if self.round.is_empty() {
            self.round = self.shuffled((0..self.kinds.len()).collect());
        }
        let kind = self.round.pop()?;
        if self.kinds[kind].1.is_empty() {
            let cycle = self.kinds[kind].0.clone();
            self.kinds[kind].1 = self.shuffled(cycle);
        }
        let mut fault = self.kinds[kind].1.pop()?;
        if let Fault::Proxy(Mode::Delay(_)) = fault {
            // Past rental-svc's deadline for the desk sometimes, within it others.
            let ms = [200u64, 600, 1500][self.rng.below(3)];
            fault = Fault::Proxy(Mode::Delay(Duration::from_millis(ms)));
        }
        let after = self.between(self.gap);
        let lasting = self.between(self.lasting);
        Some(Planned {
            fault,
            after,
            lasting,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(seed: u64, n: usize) -> Vec<(String, Duration, Duration)> {
        let backend = Backend::Mesh {
            database_url_base: None,
        };
        Schedule::new(
            seed,
            repertoire(&backend, &Kind::ALL),
            (Duration::from_millis(300), Duration::from_secs(2)),
            (Duration::from_millis(200), Duration::from_secs(1)),
        )
        .take(n)
        .map(|p| (p.fault.label(), p.after, p.lasting))
        .collect()
    }

    #[test]
    fn a_seed_gives_the_same_schedule_and_another_seed_another() {
        assert_eq!(plan(7, 40), plan(7, 40));
        assert_ne!(plan(7, 40), plan(8, 40));
    }

    #[test]
    fn every_kind_comes_in_each_round_and_every_fault_in_time() {
        let backend = Backend::Mesh {
            database_url_base: None,
        };
        let all = repertoire(&backend, &Kind::ALL);
        assert_eq!(all.len(), 4 + 4 + 4 + 1 + 3);
        let kind_of = |label: &str| Kind::parse(label.split(' ').next().unwrap()).unwrap();
        let planned = plan(3, 5 * 4);
        for round in planned.chunks(5) {
            let mut kinds: Vec<Kind> = round.iter().map(|(l, _, _)| kind_of(l)).collect();
            kinds.sort();
            assert_eq!(kinds, Kind::ALL.to_vec(), "{round:?}");
        }
        let targets = |kind: &str| {
            let mut t: Vec<&str> = planned
                .iter()
                .map(|(l, _, _)| l.as_str())
                .filter(|l| l.starts_with(kind))
                .collect();
            t.sort();
            t
        };
        assert_eq!(
            targets("kill"),
            [
                "kill book-svc",
                "kill rental-svc",
                "kill reserve-svc",
                "kill view-svc"
            ]
        );
        assert_eq!(
            targets("db"),
            [
                "db book-svc",
                "db rental-svc",
                "db reserve-svc",
                "db view-svc"
            ]
        );
    }

    #[test]
    fn the_all_in_one_suffers_kill_stop_and_write_locks_only() {
        let all = repertoire(&Backend::AllInOne, &Kind::ALL);
        assert!(
            all.iter()
                .all(|f| matches!(f, Fault::Kill(_) | Fault::Stop(_) | Fault::WriteLock(_)))
        );
        assert_eq!(all.len(), 1 + 1 + SQLITE_FILES.len());
    }
}
