//! `threadline erase --thread ID`: a visitor's right to be forgotten. Removes the thread from
//! the event stream, the set-aside events, the idempotency records and the read model, and
//! tells every role through its `ThreadErased` (the projector's `erase` says how and in which
//! order); prints what it removed, or with `--dry-run` what it would remove.

use super::{CommandError, Outcome};
use clap::Args;
use std::time::Duration;
use threadline_api::idempotency::record_thread;
use threadline_nats::{JetStreamLog, KvIdempotency, NatsSettings};
use threadline_ports::settings::parse_duration;
use threadline_postgres::{DatabaseSettings, PgReadModel};
use threadline_projector::erase::{self, EraseError, Options, Report};
use uuid::Uuid;

/// `threadline erase`.
#[derive(Debug, Clone, Args)]
pub struct EraseSettings {
    /// The thread to erase: its id, as `GET /chat/thread/<id>/` takes it.
    #[arg(long, value_parser = parse_thread)]
    pub thread: Uuid,
    /// Print what would be removed, and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for the projector to fold the erasure (whatever it sets aside of the
    /// thread until then is removed too).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub wait: Duration,
    #[command(flatten)]
    pub nats: NatsSettings,
    #[command(flatten)]
    pub database: DatabaseSettings,
}

/// A thread id: a UUID, in any of its spellings.
fn parse_thread(text: &str) -> Result<Uuid, String> {
    Uuid::try_parse(text.trim()).map_err(|_| format!("{text:?} is not a thread id (a UUID)"))
}

/// Erases the thread and prints what it removed. `Ok(false)` when the projector had not folded
/// the erasure within `--wait`: what it sets aside of the thread later is left for another run.
pub async fn run(settings: &EraseSettings) -> Outcome {
    let log = JetStreamLog::connect(&settings.nats).await?;
    let read = PgReadModel::connect(&settings.database).await?;
    let records = KvIdempotency::existing(&log, &log.settings().idempotency_bucket).await?;
    let (thread, subjects) = (settings.thread, log.subjects().clone());
    let holds_thread = move |record: &[u8]| record_thread(&subjects, record) == Some(thread);
    let options = Options {
        dry_run: settings.dry_run,
        wait: settings.wait,
    };
    let report = erase::erase(
        &log,
        &read,
        records.as_ref(),
        thread,
        &holds_thread,
        options,
    )
    .await
    .map_err(|e| match e {
        EraseError::UnknownThread(_) => CommandError::Invalid(e.to_string()),
        EraseError::Store(e) => e.into(),
    })?;
    if settings.json {
        let json = serde_json::to_string(&report)
            .map_err(|e| CommandError::Invalid(format!("the report: {e}")))?;
        println!("{json}");
    } else {
        print!("{}", text(&report, &log.settings().stream_name));
    }
    Ok(report.projector_folded != Some(false))
}

/// The report for people.
fn text(report: &Report, stream: &str) -> String {
    let mut out = String::new();
    let removed = format!(
        "{} from {stream}, {}, {}, {} and {} from the read model",
        count(report.events, "event"),
        count(report.idempotency_records, "idempotency record"),
        count(report.set_aside, "set-aside event"),
        count(report.thread_rows, "thread row"),
        count(report.message_rows, "message row"),
    );
    let thread = report.thread;
    if report.dry_run {
        out.push_str(&format!(
            "dry run: nothing was removed. Erasing thread {thread} would\n"
        ));
        match report.erased_at {
            Some(at) => out.push_str(&format!(
                "  find its ThreadErased at sequence {at} (it was erased before)\n"
            )),
            None => out.push_str("  append its ThreadErased\n"),
        }
        out.push_str(&format!("  remove {removed}\n"));
        return out;
    }
    let at = report
        .erased_at
        .map_or_else(|| "?".to_owned(), |s| s.to_string());
    if report.already_erased {
        out.push_str(&format!(
            "thread {thread} was erased before (its ThreadErased is at sequence {at}); \
             removed what was left of it\n"
        ));
    } else {
        out.push_str(&format!(
            "erased thread {thread}: its ThreadErased is at sequence {at}\n"
        ));
    }
    out.push_str(&format!("removed {removed}\n"));
    if report.projector_folded == Some(false) {
        out.push_str(
            "the projector has not folded the erasure yet (is it running?): run erase again \
             once it has, to remove what it sets aside of the thread meanwhile\n",
        );
    }
    out.push_str(
        "erase is idempotent: run it again to finish an interrupted run, or to remove what \
         was published for the thread since\n",
    );
    out
}

/// `n thing` or `n things`.
fn count(n: u64, thing: &str) -> String {
    match n {
        1 => format!("1 {thing}"),
        n => format!("{n} {thing}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            thread: Uuid::from_u128(1),
            dry_run: false,
            erased_at: Some(42),
            already_erased: false,
            events: 5,
            idempotency_records: 1,
            set_aside: 0,
            thread_rows: 1,
            message_rows: 4,
            projector_folded: Some(true),
        }
    }

    #[test]
    fn the_report_says_what_went_and_that_erase_can_run_again() {
        let text = text(&report(), "THREADLINE");
        assert!(text.starts_with(
            "erased thread 00000000-0000-0000-0000-000000000001: its ThreadErased is at sequence 42\n"
        ), "{text}");
        assert!(
            text.contains(
                "removed 5 events from THREADLINE, 1 idempotency record, 0 set-aside events, \
             1 thread row and 4 message rows from the read model"
            ),
            "{text}"
        );
        assert!(text.contains("erase is idempotent"), "{text}");
        assert!(!text.contains("has not folded"), "{text}");
    }

    #[test]
    fn a_dry_run_says_it_removed_nothing() {
        let mut dry = report();
        dry.dry_run = true;
        dry.erased_at = None;
        dry.projector_folded = None;
        let text = text(&dry, "THREADLINE");
        assert!(text.starts_with("dry run: nothing was removed."), "{text}");
        assert!(text.contains("append its ThreadErased"), "{text}");
    }

    #[test]
    fn a_projector_behind_is_reported() {
        let mut behind = report();
        behind.projector_folded = Some(false);
        assert!(text(&behind, "THREADLINE").contains("has not folded the erasure yet"));
    }

    #[test]
    fn a_thread_id_is_a_uuid() {
        let id = "4b0e1d4a-c9a6-11ee-8c90-0242ac120002";
        assert_eq!(parse_thread(id).map(|t| t.to_string()), Ok(id.to_owned()));
        assert_eq!(
            parse_thread(&id.to_uppercase()).map(|t| t.to_string()),
            Ok(id.to_owned())
        );
        assert!(parse_thread("nope").is_err());
        assert!(parse_thread("").is_err());
    }
}
