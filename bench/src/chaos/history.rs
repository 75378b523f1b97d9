//! The record of every call the campaign's members made and what came of
//! it, written as tab-separated lines for `rentalbook check --history`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use tonic::Code;

/// The columns, in order; `rentalbook check` finds them by name.
pub const HEADER: &str =
    "seq\tstart_ms\tend_ms\tmember\top\tbook_id\ttarget_id\tresult_id\tstatus\toutcome\trequest_id";

/// One call.
#[derive(Clone, Debug, Default)]
pub struct Call {
    pub member: String,
    /// The RPC's name: Reserve, CancelReservation, Rent, ReturnRental,
    /// GetReservation, ListReservations, ListRentals.
    pub op: &'static str,
    pub book_id: String,
    /// What the call was about: the reservation cancelled, the rental returned.
    pub target_id: String,
    /// What the answer named: the reservation placed, the rental opened.
    pub result_id: String,
    /// The status in the answer (READY, ACTIVE, ...), empty for a failure.
    pub status: String,
    /// `OK`, or the gRPC code's name.
    pub outcome: String,
    pub request_id: String,
}

/// What a failed call tells about its effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// The service refused: nothing changed.
    Refused,
    /// The call may or may not have taken effect (the connection broke, the
    /// deadline passed, the service was away).
    Indeterminate,
}

pub fn verdict(code: Option<Code>) -> Verdict {
    match code {
        None => Verdict::Ok,
        Some(
            Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::NotFound
            | Code::PermissionDenied
            | Code::InvalidArgument
            | Code::Unauthenticated,
        ) => Verdict::Refused,
        Some(_) => Verdict::Indeterminate,
    }
}

/// `OK` or the code in the words of the gRPC specification (UNAVAILABLE, ...).
pub fn outcome_name(code: Option<Code>) -> String {
    let Some(code) = code else {
        return "OK".into();
    };
    let camel = format!("{code:?}");
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

struct Entry {
    start_ms: f64,
    end_ms: f64,
    call: Call,
}

/// Calls as they end, from every member.
pub struct History {
    origin: Instant,
    entries: Mutex<Vec<Entry>>,
}

impl History {
    pub fn new(origin: Instant) -> Self {
        Self {
            origin,
            entries: Mutex::new(Vec::new()),
        }
    }

    pub fn record(&self, started: Instant, call: Call) {
        let ms = |t: Instant| t.saturating_duration_since(self.origin).as_secs_f64() * 1000.0;
        let entry = Entry {
            start_ms: ms(started),
            end_ms: ms(Instant::now()),
            call,
        };
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(entry);
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls by operation and outcome.
    pub fn tally(&self) -> BTreeMap<(String, String), u64> {
        let mut tally = BTreeMap::new();
        for e in self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            *tally
                .entry((e.call.op.to_owned(), e.call.outcome.clone()))
                .or_default() += 1;
        }
        tally
    }

    /// The statuses acknowledged calls of `op` answered, counted.
    pub fn answered(&self, op: &str) -> BTreeMap<String, u64> {
        let mut by = BTreeMap::new();
        for e in self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            if e.call.op == op && e.call.outcome == "OK" {
                *by.entry(e.call.status.clone()).or_default() += 1;
            }
        }
        by
    }

    /// Writes the history, one line per call in the order they ended.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        writeln!(out, "# rentalbook chaos history: one line per call")?;
        writeln!(out, "{HEADER}")?;
        let clean = |s: &str| s.replace(['\t', '\n'], " ");
        for (i, e) in self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .enumerate()
        {
            let c = &e.call;
            writeln!(
                out,
                "{}\t{:.1}\t{:.1}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                i + 1,
                e.start_ms,
                e.end_ms,
                clean(&c.member),
                c.op,
                clean(&c.book_id),
                clean(&c.target_id),
                clean(&c.result_id),
                clean(&c.status),
                clean(&c.outcome),
                clean(&c.request_id)
            )?;
        }
        out.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_named_as_grpc_names_them() {
        assert_eq!(outcome_name(None), "OK");
        assert_eq!(
            outcome_name(Some(Code::DeadlineExceeded)),
            "DEADLINE_EXCEEDED"
        );
        assert_eq!(outcome_name(Some(Code::Unavailable)), "UNAVAILABLE");
    }

    #[test]
    fn transport_failures_are_indeterminate_and_refusals_are_not() {
        assert_eq!(verdict(Some(Code::Unknown)), Verdict::Indeterminate);
        assert_eq!(verdict(Some(Code::Unavailable)), Verdict::Indeterminate);
        assert_eq!(verdict(Some(Code::AlreadyExists)), Verdict::Refused);
        assert_eq!(verdict(None), Verdict::Ok);
    }
}
